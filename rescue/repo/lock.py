"""One writer at a time, on any backend: the lock is an object, `lock.json`, created only if
absent, holding who holds it (host, pid, the process's start, the boot) and when it was last
refreshed. A job refreshes it every REFRESH seconds while it runs, and checks before it
commits anything that the lock is still its own and was refreshed in time.

Taken from restic's lock files (host, pid, time; a lock not refreshed for a while is stale;
`unlock` removes only stale ones) with two changes: there is one exclusive lock, since every
job that changes a repository (capture, delete, prune, copy into it) must exclude prune, which
is how restic and borg made prune safe against a backup running beside it; and a lock of this
same boot of the same machine whose process is gone is stale at once, as borg checks for a
dead process on the same host (not another boot: every rescue ISO is called "rescue"). A local
repository's job, which holds the directory's flock first, also takes over a lock older than
STALE: no writer of this machine can be alive then (a stick moved after a crash)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from rescue import processes
from rescue.errors import RepoError
from rescue.repo.storage import ObjectMissing, ObjectProblem, Storage

KEY = "lock.json"
REFRESH = 60.0  # seconds between refreshes of a held lock
STALE = 2 * REFRESH  # a lock not refreshed for this long belongs to a job that is gone
SETTLE = 2.0  # seconds before a lock made without an exclusive create is looked at again
CHECK_EVERY = 5.0  # seconds between reads of the lock by check()


@dataclass(frozen=True)
class Holder:
    job: str  # "capture", "prune" ...
    host: str
    pid: int
    process_start: int | None  # clock ticks after boot (tells the pid from a later one)
    boot_id: str
    token: str  # this lock, told apart from any other
    started: float  # seconds since the epoch
    refreshed: float

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.refreshed

    def gone(self) -> bool:
        """A job of this very boot of this machine whose process no longer runs. Not "another
        boot": every rescue ISO has the same host name, so a lock of another boot may be
        another live machine's; only its age tells."""
        if self.host != socket.gethostname() or self.boot_id != processes.boot_id():
            return False
        return processes.process_start(self.pid) != self.process_start

    def stale(self) -> bool:
        return self.gone() or self.age() > STALE

    def describe(self) -> str:
        if not self.token:
            return "an unreadable lock.json (not rescue's, or damaged)"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.job} by pid {self.pid} on {self.host}, since {when}, refreshed {self.age():.0f} s ago"


def read(storage: Storage) -> Holder | None:
    """Who holds the repository's lock; None when nobody does. A lock that cannot be read
    (damaged, from another program) is a holder of unknown identity, never no lock."""
    try:
        body = json.loads(storage.get(KEY, 64 << 10))
        return Holder(**{k: body[k] for k in Holder.__dataclass_fields__})
    except ObjectMissing:
        return None
    except (ObjectProblem, ValueError, KeyError, TypeError):
        return Holder("unknown", "an unknown host", 0, None, "", "", 0.0, 0.0)


class Lock:
    """The repository's lock for `job`, held inside `with`, refreshed by a thread meanwhile.
    `take_over_stale`: a lock older than STALE is this job's to take (a local repository,
    whose flock this job already holds: no writer of this machine is alive)."""

    def __init__(self, storage: Storage, job: str, *, take_over_stale: bool = False):
        self.storage, self.job, self.take_over_stale = storage, job, take_over_stale
        now = time.time()
        pid = os.getpid()
        self.holder = Holder(
            job,
            socket.gethostname(),
            pid,
            processes.process_start(pid),
            processes.boot_id(),
            uuid.uuid4().hex,
            now,
            now,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._checked = 0.0  # monotonic time check() last read the lock
        self._lost: str | None = None

    def _body(self) -> bytes:
        return (json.dumps(asdict(self.holder)) + "\n").encode()

    def __enter__(self) -> Lock:
        if not self._created():
            other = read(self.storage)
            if other is not None and (other.gone() or (self.take_over_stale and other.stale())):
                self.storage.delete(KEY)
                if self._created():
                    return self._started()
                other = read(self.storage)
            who = other.describe() if other is not None else "another job"
            raise RepoError(
                f"{self.storage.where} is busy: locked by {who}"
                + (" (stale: `rescue unlock` removes it)" if other is not None and other.stale() else "")
            )
        return self._started()

    def _created(self) -> bool:
        """put_new of the lock, and on a server whose put_new is not exclusive, a look again
        after SETTLE seconds: of writers that raced, only the one whose object is there goes
        on (a racer's HEAD and PUT are a round trip apart, far less than SETTLE)."""
        if not self.storage.put_new(KEY, self._body()):
            return False
        if self.storage.exclusive_create:
            return True
        time.sleep(SETTLE)
        held = read(self.storage)
        return held is not None and held.token == self.holder.token

    def _started(self) -> Lock:
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001, S110 - a refresh that keeps failing is judged by check()
                pass

    def _late(self) -> bool:
        """Whether the lock may have gone stale in others' eyes: never rewrite it then (it may
        be someone else's by now), and stop before the next write that counts."""
        return time.monotonic() - self._last_ok > STALE - REFRESH / 2

    def _still_mine(self) -> bool:
        current = read(self.storage)
        if current is None or current.token != self.holder.token:
            self._lost = "its lock was removed or taken by another job (rescue unlock?)"
            return False
        return True

    def refresh(self) -> None:
        if self._late() or not self._still_mine():
            return
        started = time.monotonic()
        self.holder = dataclasses.replace(self.holder, refreshed=time.time())
        self.storage.put(KEY, self._body())
        if self._still_mine():  # a put that took long may have landed on another's lock
            self._last_ok = started

    def check(self) -> None:
        """RepoError when this job can no longer be sure it is the only writer: its lock is
        not its own any more, or could not be refreshed for so long that another job may have
        taken it. The lock is read again at most every few seconds (prune calls this before
        each chunk it removes)."""
        if not self._lost and not self._late() and time.monotonic() - self._checked > CHECK_EVERY:
            self._checked = time.monotonic()
            self._still_mine()
        if self._lost:
            raise RepoError(f"{self.storage.where}: {self.job} stopped: {self._lost}")
        if self._late():
            raise RepoError(f"{self.storage.where}: {self.job} stopped: its lock could not be refreshed in time")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a refresh stuck on a silent server must not hold the job
        if self._late():
            return  # maybe another's by now: it goes stale, `unlock` removes it
        try:
            current = read(self.storage)
            if current is not None and current.token == self.holder.token:
                self.storage.delete(KEY)
        except (RepoError, OSError):
            pass  # the server is gone or the drive read-only: the lock goes stale, `unlock` removes it


def unlock(storage: Storage, *, force: bool = False) -> str:
    """Remove a stale lock (or any, with `force`); returns what was done, one line."""
    holder = read(storage)
    if holder is None:
        return f"{storage.where} is not locked"
    if not (force or holder.stale()):
        raise RepoError(
            f"{storage.where} is locked by {holder.describe()}: it is not stale "
            f"(refreshed within {STALE:.0f} s); --force removes it anyway, if you know that job is gone"
        )
    try:
        storage.delete(KEY)
    except OSError as e:
        raise RepoError(f"{storage.where}/{KEY} cannot be removed ({e.strerror})") from None
    return f"removed the lock of {holder.describe()}"

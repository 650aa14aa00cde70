"""Patience with servers: every network request of a remote repository goes through `attempt`,
which retries what may pass (a timeout, a dropped connection, a 5xx answer) with growing
pauses, logs each retry, and gives up with one line naming the server once the server has
not answered for `Patience.give_up` seconds. While it waits, `waiting()` says so, and the
progress line shows it: a server that stops answering is never a silent hang. Once a job has
given up on a server, its other requests there fail at once for as long again (the tidying
after a failure must not wait the limit anew for each request).

Like restic's backend retries (exponential backoff, each retry reported) and rclone's
--low-level-retries, but bounded by time without an answer rather than by a count: a capture
of hours survives a server restart, and a server gone for good ends the job within the limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rescue.repo.storage import StorageUnavailable

T = TypeVar("T")
log = logging.getLogger("rescue.repo")


class Transient(Exception):
    """A failure worth retrying; its text says what happened, without secrets."""


@dataclass(frozen=True)
class Patience:
    timeout: float = 30.0  # seconds one request may take without an answer
    give_up: float = 300.0  # seconds without any success before the job ends
    first_pause: float = 0.5
    max_pause: float = 15.0


DEFAULT = Patience()
_current = DEFAULT


def configure(patience: Patience) -> None:
    """The patience every repository opened from now on gets (the configuration's [network])."""
    global _current
    _current = patience


def current() -> Patience:
    return _current


_lock = threading.Lock()
_waiting: dict[str, tuple[float, int]] = {}  # server -> (when the first unanswered retry began, how many wait)
_gone: dict[str, float] = {}  # server -> when a job last gave up on it


def waiting() -> str | None:
    """ "waiting for <server> (N s)" while a request to a server is being retried, else None."""
    with _lock:
        if not _waiting:
            return None
        server, (since, _) = min(_waiting.items(), key=lambda item: item[1][0])
    return f"waiting for {server} ({time.monotonic() - since:.0f} s)"


def attempt(server: str, what: str, call: Callable[[], T], patience: Patience = DEFAULT) -> T:
    """`call()`, retried while it raises Transient, until `patience.give_up` seconds have
    passed since the first failure: then StorageUnavailable("<server>: cannot <what>: <last
    error> (no answer for N s)"). Anything else `call` raises goes through untouched."""
    with _lock:
        gave_up = _gone.get(server)
    if gave_up is not None and time.monotonic() - gave_up < patience.give_up:
        # Given up on a moment ago: what follows is tidying after the failure (removing new
        # chunks, releasing the lock), which must not wait the whole limit again for each
        # request. What it leaves, prune and a stale lock's unlock clear.
        raise StorageUnavailable(f"{server}: cannot {what}: it stopped answering")
    pause, started = patience.first_pause, None
    while True:
        try:
            result = call()
        except Transient as e:
            now = time.monotonic()
            if started is None:
                started = now
                with _lock:
                    since, count = _waiting.get(server, (now, 0))
                    _waiting[server] = (since, count + 1)
            waited = now - started
            if waited >= patience.give_up:
                _done(server)
                with _lock:
                    _gone[server] = time.monotonic()
                raise StorageUnavailable(f"{server}: cannot {what}: {e} (no answer for {waited:.0f} s)") from None
            log.warning("%s: %s failed (%s); retrying in %.1f s", server, what, e, pause)
            time.sleep(min(pause, max(0.0, patience.give_up - waited)))
            pause = min(pause * 2, patience.max_pause)
            continue
        except BaseException:
            if started is not None:
                _done(server)
            raise
        if started is not None:
            _done(server)
        if gave_up is not None:
            with _lock:
                _gone.pop(server, None)
        return result


def forget_failures() -> None:
    """A new job starts with every server given another chance (the wizard runs many jobs)."""
    with _lock:
        _gone.clear()


def _done(server: str) -> None:
    with _lock:
        since, count = _waiting.get(server, (0.0, 1))
        if count > 1:
            _waiting[server] = (since, count - 1)
        else:
            _waiting.pop(server, None)

"""What rescue owns on this machine, so that the next run clears what a killed one left, and
which drives an interrupted restore or clone left partly written.

Why: a process killed with SIGKILL (or by the OOM killer, or a terminal closed under it)
runs no `finally`. Its loop devices stay attached (over the target, over a FUSE file that
no longer answers), its mounts stay mounted, its scratch and staging files stay on disk,
and the drive it was writing is half an image that will not boot. Nothing inside the dead
process can undo that; the next run can, if it knows what was whose.

The registry: /run/rescue/owned/ (RAM, cleared at boot; with $RESCUE_STATE_DIR, the
browsing sessions' state directory, its parent instead of /run/rescue), one small JSON file
per thing set up, written *before* it is set up and removed after it is torn down, named
after the thing and its owner (two processes racing for one free loop device each keep
their own):

    loop-loop3-<pid>-<start>.json     a loop device: OurLoop ("pending" until attached)
    mount-<hash>-<pid>-<start>.json   a mount: OurMount
    file-<hash>-...json               a scratch or staging file we created (path and inode)
    dir-<hash>-...json                a directory we created (path and inode), with its contents
    process-<pid>-...json             a helper process of ours (the split-device server)
    tempfiles-<hash>-...json          files matching patterns under a directory, cleared only
                                      while a lock file can be taken (nobody writes there)

Each names its owner: a pid, that process's start time (/proc/PID/stat, field 22) and the
boot id, so a pid reused by another program is never taken for ours. An owner is usually
the process that set the thing up; a browsing session's mounts belong to its FUSE server,
whose life is the session's. Teardown drops the entry whoever does it (`rescue umount` for
a session `rescue mount` set up).

`clear_leftovers()` (called by every command and at wizard start, through
rescue.browse.mounts.clear_leftovers) takes every entry whose owner is dead, newest first
(the reverse of the order things were set up), and undoes it only while it is still ours,
through rescue.hw.mounts' checks: a loop device only while it shows the file, offset and
size limit we attached, a mount only while its topmost mount has our source, a file or
directory only while it is the inode we created, a process only while pid and start time
agree. What an ownership check refuses is left alone and reported, once: an owner that is
dead can never make anything ours again. An entry is kept for the next run only when its
undoing could not be tried (a busy mount, a failing tool, a writer's lock held).

Partly written drives: /run/rescue/partly-written/<key>.json, written by
imaging/apply.execute before the first action that writes a target and removed when the
execution completes. The key comes from the drive's identity (model and serial; a loop
device's backing file; the device number), so `rescue disks` and the wizard find the marker
for the same drive under another name, and a later successful restore or clone onto it
clears it. A failed, cancelled or killed job keeps it; `partly_written_words` is the one
wording of what that means. clear_leftovers notes a killed job's marker once (in its log and
its one line) and drops the marker of a loop device whose backing file is gone (that drive
is no more)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rescue.errors import RescueError
from rescue.hw import devices
from rescue.processes import boot_id, parse_stat, process_start  # noqa: F401 - also used from here

log = logging.getLogger(__name__)

RUN_DIR = "/run/rescue"
OWNED = "owned"
PARTLY_WRITTEN = "partly-written"
STOP_WAIT = 5.0  # seconds a leftover helper process gets to stop after SIGTERM

KINDS = ("loop", "mount", "file", "dir", "process", "tempfiles")


def run_dir() -> Path:
    """Where rescue keeps its state: /run/rescue; with $RESCUE_STATE_DIR (the browsing
    sessions' state directory, rescue.browse.mounts.state_root) its parent, so a test or a
    second installation keeps everything in one place of its own."""
    env = os.environ.get("RESCUE_STATE_DIR")
    return Path(env).parent if env else Path(RUN_DIR)


def owned_dir() -> Path:
    return run_dir() / OWNED


def marker_dir() -> Path:
    return run_dir() / PARTLY_WRITTEN


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Owner:
    """A process, told apart from any later process with the same pid."""

    pid: int
    start: int  # clock ticks after boot, /proc/PID/stat field 22
    boot: str = ""  # the boot it ran in ("" when unknown)

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        """Process `pid` as it runs now; None when it does not run."""
        start = process_start(pid)
        return None if start is None else cls(pid, start, boot_id())

    @classmethod
    def me(cls) -> Owner:
        me = cls.of(os.getpid())
        assert me is not None, "this process reads its own /proc entry"
        return me

    def alive(self) -> bool:
        """The same process still runs (same pid, same start time, same boot)."""
        if self.boot and self.boot != boot_id():
            return False
        return process_start(self.pid) == self.start

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @classmethod
    def from_json(cls, data: object) -> Owner:
        if not isinstance(data, dict):
            raise ValueError(f"not an owner: {data!r}")
        pid, start, boot = data.get("pid"), data.get("start"), data.get("boot", "")
        if not (isinstance(pid, int) and isinstance(start, int) and isinstance(boot, str)):
            raise ValueError(f"not an owner: {data!r}")
        return cls(pid, start, boot)


# --------------------------------------------------------------------------- the registry


@dataclass
class Entry:
    """One thing set up, as kept in its file."""

    kind: str
    key: str  # the file's name without .json
    owner: Owner
    seq: int  # when it was recorded (ns): things are undone newest first
    data: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "owner": self.owner.to_json(), "seq": self.seq, **self.data}

    @classmethod
    def load(cls, path: Path) -> Entry | None:
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                return None
            kind, seq = raw.pop("kind", None), raw.pop("seq", 0)
            owner = Owner.from_json(raw.pop("owner", None))
        except (OSError, ValueError):
            return None
        if kind not in KINDS or not isinstance(seq, int):
            return None
        return cls(kind, path.stem, owner, seq, {str(k): v for k, v in raw.items()})


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Atomically (a reader sees the old file or the new one, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "x") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record(kind: str, stem: str, data: dict[str, object], owner: Owner | None = None) -> str:
    """Keep an entry before setting the thing up; returns its key (`stem` and the owner:
    two processes racing for the same loop device each keep their own). Where the registry
    cannot be written (no /run/rescue for an unprivileged user) the thing is set up
    unrecorded, as before the registry existed: a note in the log, no failure."""
    assert kind in KINDS, kind
    who = owner or Owner.me()
    key = f"{stem}-{who.pid}-{who.start}"
    entry = Entry(kind, key, who, time.time_ns(), data)
    try:
        owned_dir().mkdir(parents=True, exist_ok=True)
        _write_json(owned_dir() / f"{key}.json", entry.to_json())
    except OSError as e:
        log.info("not recorded in %s (%s): %s", owned_dir(), e.strerror, key)
    return key


def update(key: str, **data: object) -> None:
    """Change fields of an entry (when the thing is set up: its device, its inode)."""
    path = owned_dir() / f"{key}.json"
    entry = Entry.load(path)
    if entry is None:
        return
    entry.data.update(data)
    with contextlib.suppress(OSError):
        _write_json(path, entry.to_json())


def forget(key: str) -> None:
    """The thing was torn down (or was never set up): drop its entry."""
    with contextlib.suppress(OSError):
        (owned_dir() / f"{key}.json").unlink()


def forget_all(stem: str, field_name: str, value: object) -> None:
    """Drop every entry of `stem` whose `field_name` is `value`, whoever recorded it: the
    thing was torn down (perhaps by another process than the one that set it up: `rescue
    umount` for a browsing session)."""
    try:
        paths = list(owned_dir().glob(f"{glob.escape(stem)}-*.json"))
    except OSError:
        return
    for p in paths:
        entry = Entry.load(p)
        if entry is not None and entry.data.get(field_name) == value:
            with contextlib.suppress(OSError):
                p.unlink()


def entries() -> list[Entry]:
    root = owned_dir()
    try:
        paths = sorted(root.glob("*.json"))
    except OSError:
        return []
    return [e for p in paths if (e := Entry.load(p)) is not None]


def loop_stem(device: str) -> str:
    return f"loop-{os.path.basename(device)}"


def mount_stem(source: str, where: str) -> str:
    return f"mount-{_digest(source, where)}"


# --------------------------------------------------------------------------- files we create


def _identity(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _dir_stem(path: Path) -> str:
    return f"dir-{_digest(str(path))}"


def make_dir(parent: str | os.PathLike[str], prefix: str) -> tuple[Path, str]:
    """A new private directory in `parent` (like tempfile.mkdtemp), recorded before it is
    made: (its path, its registry key). forget(key) or forget_dir(path) once it is removed."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        key = record("dir", _dir_stem(path), {"path": str(path), "what": "temporary directory"})
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            forget(key)
            continue
        except OSError:
            forget(key)
            raise
        update(key, identity=_identity(path))
        return path, key
    raise FileExistsError(errno.EEXIST, f"no free name for a directory in {parent}")


def forget_dir(path: str | os.PathLike[str]) -> None:
    """The directory make_dir made is removed."""
    forget_all(_dir_stem(Path(path)), "path", str(path))


def make_file(parent: str | os.PathLike[str], prefix: str, suffix: str, what: str) -> tuple[Path, int, str]:
    """A new file in `parent` (like tempfile.mkstemp), recorded before it is created as a
    `what` ("scratch file"): (its path, an open read-write descriptor, its registry key)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        key = record("file", f"file-{_digest(str(path))}", {"path": str(path), "what": what})
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            forget(key)
            continue
        except OSError:
            forget(key)
            raise
        update(key, identity=_identity(path))
        return path, fd, key
    raise FileExistsError(errno.EEXIST, f"no free name for a file in {parent}")


@contextlib.contextmanager
def temp_files(directory: str | os.PathLike[str], patterns: list[str], lock: str | os.PathLike[str]) -> Iterator[None]:
    """For the block, files matching `patterns` (globs relative to `directory`, e.g.
    "chunks/*/.*.tmp") are temporary files of this process: if it dies inside the block, a
    later clear_leftovers removes those it finds while it can take `lock` (flock, as the
    writer holds it: nobody is writing there then)."""
    key = record(
        "tempfiles",
        f"tempfiles-{_digest(os.fspath(directory))}",
        {"dir": os.fspath(directory), "patterns": list(patterns), "lock": os.fspath(lock)},
    )
    try:
        yield
    finally:
        forget(key)


# --------------------------------------------------------------------------- partly written drives


@dataclass(frozen=True)
class DriveIdentity:
    """What tells a drive apart under any name: what the marker keeps of its target."""

    path: str
    name: str
    model: str | None = None
    serial: str | None = None
    size: int = 0
    devnum: int | None = None
    backing_file: str | None = None  # a loop device's

    @classmethod
    def of_drive(cls, d: devices.Drive) -> DriveIdentity:
        backing = d.backing_file
        if backing and backing.endswith(" (deleted)"):
            backing = backing[: -len(" (deleted)")]
        return cls(d.path, d.name, d.model, d.serial, d.size, d.devnum, backing)

    @classmethod
    def of_path(cls, path: str) -> DriveIdentity:
        try:
            return cls.of_drive(devices.drive_info(path))
        except (RescueError, OSError):
            return cls(path, os.path.basename(path))

    def key(self) -> str:
        """The marker's file name: the same for the same drive under any name. Model and
        serial when the drive has a serial (it may come back as another /dev/sdX); a loop
        device's backing file (it may come back as another /dev/loopN); else the device
        number; an image file by its real path. The size takes part: a loop device over
        another range, or a drive whose serial lies, is another drive."""
        if self.serial:
            basis: tuple[object, ...] = ("serial", self.model or "", self.serial, self.size)
        elif self.backing_file:
            basis = ("loop", self.backing_file, self.size)
        elif self.devnum is not None:
            basis = ("dev", os.major(self.devnum), os.minor(self.devnum), self.size)
        else:
            basis = ("path", os.path.realpath(self.path))
        return _digest(*basis)


def partly_written_words(target: str, kind: str) -> str:
    """The one wording of what an unfinished restore or clone means for its target."""
    return f"{target} is partly written and will not boot: {kind} onto it again before using it"


@dataclass
class Marker:
    """A restore or clone that started writing a target and has not completed."""

    key: str
    target: str
    identity: DriveIdentity
    kind: str  # "restore" or "clone"
    source: str  # the image's name, or the source drive
    started: str  # local time, "2024-05-01 12:00:03"
    log: str  # the job's log, "" when it has none
    owner: Owner
    state: str = "writing"  # writing, failed, interrupted
    ended: str = ""
    error: str = ""

    @property
    def file(self) -> Path:
        return marker_dir() / f"{self.key}.json"

    def words(self) -> str:
        return partly_written_words(self.target, self.kind)

    def note(self) -> str:
        """For a drive list: "restore of web01 interrupted at 2024-05-01 12:00:03"."""
        what = f"{self.kind} of {self.source}"
        if self.state == "writing" and self.owner.alive():
            return f"{what} in progress since {self.started} (pid {self.owner.pid})"
        if self.state == "failed":
            return f"{what} failed at {self.ended or self.started}"
        if self.ended:
            return f"{what} interrupted at {self.ended}"
        return f"{what} interrupted (started {self.started})"

    def save(self) -> None:
        data = asdict(self)
        data["owner"] = self.owner.to_json()
        _write_json(self.file, data)

    @classmethod
    def load(cls, path: Path) -> Marker | None:
        try:
            data = json.loads(path.read_text())
            data["owner"] = Owner.from_json(data.get("owner"))
            data["identity"] = DriveIdentity(**data["identity"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def mark_partly_written(target: str, kind: str, source: str, log_path: str) -> Marker | None:
    """Before the first write to `target`: the marker that says it is partly written until
    finished() removes it. None when it cannot be kept (no writable /run): the job goes
    on; its own error messages still say what a failure leaves."""
    ident = DriveIdentity.of_path(target)
    marker = Marker(ident.key(), target, ident, kind, source, _now(), log_path, Owner.me())
    try:
        marker_dir().mkdir(parents=True, exist_ok=True)
        marker.save()
    except OSError as e:
        log.warning("cannot keep the partly-written marker in %s: %s", marker_dir(), e.strerror)
        return None
    return marker


def ended(marker: Marker, state: str, error: str = "") -> None:
    """The job stopped before it completed: failed (an error) or interrupted (cancelled,
    Ctrl-C). The marker stays."""
    marker.state, marker.ended, marker.error = state, _now(), error
    with contextlib.suppress(OSError):
        marker.save()


def finished(marker: Marker) -> None:
    """The job completed: the drive is whole again."""
    with contextlib.suppress(OSError):
        marker.file.unlink()


def markers() -> list[Marker]:
    try:
        paths = sorted(marker_dir().glob("*.json"))
    except OSError:
        return []
    return [m for p in paths if (m := Marker.load(p)) is not None]


def partly_written(drive: devices.Drive) -> Marker | None:
    """The marker of an unfinished restore or clone onto this drive, if any."""
    return Marker.load(marker_dir() / f"{DriveIdentity.of_drive(drive).key()}.json")


def mine() -> list[Marker]:
    """Markers of jobs this process started and did not finish."""
    me = Owner.me()
    return [m for m in markers() if m.owner == me]


# --------------------------------------------------------------------------- clearing


@dataclass
class Cleared:
    """What clear_leftovers did, for one line."""

    done: dict[int, list[str]] = field(default_factory=dict)  # owner pid -> things undone
    left: list[str] = field(default_factory=list)  # refused by an ownership check
    partly: list[Marker] = field(default_factory=list)  # interrupted jobs found

    def add(self, pid: int, what: str) -> None:
        self.done.setdefault(pid, []).append(what)

    def merge(self, other: Cleared) -> None:
        for pid, things in other.done.items():
            self.done.setdefault(pid, []).extend(things)
        self.left += other.left
        self.partly += other.partly

    def __bool__(self) -> bool:
        return bool(self.done or self.left or self.partly)

    def line(self) -> str:
        """One line ("" when nothing was found), e.g. "cleared leftovers of an interrupted
        run (pid 812): loop device /dev/loop3, mount /run/rescue/x/mnt, 1 scratch file"."""
        parts = []
        if self.done:
            pids = sorted(self.done)
            if len(pids) == 1:
                whose = f"an interrupted run (pid {pids[0]})"
            else:
                whose = f"interrupted runs (pids {', '.join(map(str, pids))})"
            things = [w for p in pids for w in self.done[p]]
            parts.append(f"cleared leftovers of {whose}: {', '.join(_counted(things))}")
        if self.left:
            parts.append(f"left alone (no longer ours): {', '.join(self.left)}")
        for m in self.partly:
            parts.append(f"{m.kind} of {m.source} (pid {m.owner.pid}) was interrupted: {m.words()}")
        return "; ".join(parts)


def _counted(things: list[str]) -> list[str]:
    """Devices and mounts by name; files and directories counted ("2 scratch files")."""
    named = [t for t in things if not t.startswith("#")]
    counts: dict[str, int] = {}
    for t in things:
        if t.startswith("#"):
            counts[t[1:]] = counts.get(t[1:], 0) + 1
    return named + [f"{n} {what}{'' if n == 1 else 's'}" for what, n in counts.items()]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """An exclusive flock on `path` if it can be had at once: True; False when another
    process holds it (or it cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True  # no lock file: nobody ever locked it
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def clear_leftovers() -> Cleared:
    """Undo what dead owners left (see the module's docstring) and note the jobs they left
    unfinished. Never raises: whatever cannot be undone is reported in the result."""
    out = Cleared()
    root = owned_dir()
    if root.is_dir():
        try:
            (root / ".lock").touch()
            lock_ok = True
        except OSError:
            lock_ok = False  # not ours to clear (an unprivileged user)
        if lock_ok:
            with _locked(root / ".lock") as got:
                if got:  # else another process is clearing right now
                    dead = [e for e in entries() if not e.owner.alive()]
                    for entry in sorted(dead, key=lambda e: e.seq, reverse=True):
                        if _clear(entry, out):
                            forget(entry.key)
    for m in markers():
        backing = m.identity.backing_file
        if backing and not os.path.exists(backing) and not (m.state == "writing" and m.owner.alive()):
            finished(m)  # a loop device over a file that is gone: that drive is no more
            continue
        if m.state == "writing" and not m.owner.alive():
            m.state = "interrupted"  # when exactly is not known: it said nothing more
            try:
                m.save()
            except OSError:
                continue  # not ours to note (an unprivileged user): `rescue disks` still shows it
            _log_line(m.log, f"INTERRUPTED: the process (pid {m.owner.pid}) was killed; {m.words()}")
            out.partly.append(m)
    return out


def _log_line(path: str, message: str) -> None:
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _clear(entry: Entry, out: Cleared) -> bool:
    """Undo one entry of a dead owner if it is still ours. False keeps the entry, to try
    again next time: a lock that someone holds, a tool that failed."""
    from rescue.hw import mounts as hwmounts

    pid, data = entry.owner.pid, entry.data
    what = f"{entry.kind} {entry.key}"
    try:
        if entry.kind == "loop":
            ours = hwmounts.OurLoop.from_json(data.get("loop"))
            what = f"loop device {ours.device}"
            was = hwmounts.detach(ours)
            if was is hwmounts.Outcome.DONE:
                out.add(pid, what)
            elif was is hwmounts.Outcome.NOT_OURS and not data.get("pending"):
                out.left.append(f"{what} (attached to something else now)")
        elif entry.kind == "mount":
            m = hwmounts.OurMount.from_json(data.get("mount"))
            what = f"mount {m.where}"
            was = hwmounts.unmount(m, lazy=True, timeout=120)
            if was is hwmounts.Outcome.DONE:
                out.add(pid, what)
            elif was is hwmounts.Outcome.NOT_OURS:
                out.left.append(f"{what} (something else is mounted there now)")
            elif was is hwmounts.Outcome.BUSY:
                out.left.append(f"{what} (busy)")
                return False
        elif entry.kind == "process":
            proc = Owner.from_json(data.get("process"))
            if _stop(proc):
                out.add(pid, f"{data.get('what') or 'process'} (pid {proc.pid})")
        elif entry.kind in ("file", "dir"):
            return _remove(entry, out)
        elif entry.kind == "tempfiles":
            return _remove_temp_files(entry, out)
    except ValueError:
        return True  # a damaged entry: nothing in it can be proven ours
    except (RescueError, OSError) as e:
        out.left.append(f"{what} ({e})")
        return False
    return True


def _stop(proc: Owner) -> bool:
    """Stop a leftover helper of ours (it is that very process: pid, start time and boot
    agree): SIGTERM, then SIGKILL. True when it ran."""
    if not proc.alive():
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(proc.pid, sig)
        deadline = time.monotonic() + STOP_WAIT
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not proc.alive():
            break
    return True


def _remove(entry: Entry, out: Cleared) -> bool:
    """A file or directory we created, if it is still the one (its inode, when it was
    recorded after creation; a directory with nothing mounted inside)."""
    from rescue.hw import mounts as hwmounts

    data_path = entry.data.get("path")
    if not isinstance(data_path, str):
        return True
    path = Path(data_path)
    want = entry.data.get("identity")
    try:
        st = os.lstat(path)
    except OSError:
        return True  # gone, or never made
    if want is not None and want != [st.st_dev, st.st_ino]:
        out.left.append(f"{path} (replaced since)")
        return True
    what = str(entry.data.get("what") or entry.kind)
    if entry.kind == "file":
        if not stat.S_ISREG(st.st_mode):
            out.left.append(f"{path} (not a regular file)")
            return True
        path.unlink()
        out.add(entry.owner.pid, f"#{what}")
        return True
    if not stat.S_ISDIR(st.st_mode):
        out.left.append(f"{path} (not a directory)")
        return True
    inside = [m.mountpoint for m in hwmounts.mount_table() if (m.mountpoint + "/").startswith(f"{path}/")]
    if inside:
        out.left.append(f"{path} (still mounted: {inside[0]})")
        return False  # its mounts may be cleared later (a browsing session's): try again then
    shutil.rmtree(path)
    out.add(entry.owner.pid, f"#{what}")
    return True


def _remove_temp_files(entry: Entry, out: Cleared) -> bool:
    directory, patterns, lock = entry.data.get("dir"), entry.data.get("patterns"), entry.data.get("lock")
    if not (isinstance(directory, str) and isinstance(patterns, list) and isinstance(lock, str)):
        return True
    if not os.path.isdir(directory):
        return True
    with _locked(Path(lock)) as free:
        if not free:
            return False  # someone writes there now: their files may look alike
        for pattern in patterns:
            for name in glob.glob(os.path.join(glob.escape(directory), str(pattern))):
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(os.lstat(name).st_mode):
                        os.unlink(name)
                        out.add(entry.owner.pid, "#temporary file")
    return True

"""Mounts and loop devices: the one module that runs `mount`, `umount` and `losetup`.

Everything it sets up is described by a record of what is ours (`OurLoop`, `OurMount`), and
everything it undoes is checked against the kernel first: a loop device is detached only
while it still shows the file, offset and size limit we attached, a mount point is
unmounted only while its topmost mount still has the source we mounted. Between our setup
and our teardown anything may have happened (a crash, a `losetup -d` by hand, another
program taking the freed /dev/loopN, a mount stacked on ours): a teardown that finds
someone else's device leaves it alone (`Outcome.NOT_OURS`) instead of breaking it.

The kernel's state is read through rescue.hw.devices, the one parser of mountinfo
(`parse_mountinfo`, which decodes the kernel's octal escapes as bytes) and of the loop
devices' sysfs attributes (`Snapshot.from_record(record())`, always the live kernel).

Two ways to use it:
- context managers for what lives inside one block: `loop_attached`, `mounted`;
- `attach`/`detach` and `mount`/`unmount` with the records, for what outlives a call (the
  repositories the wizard finds stay mounted; a browsing session's mounts are recorded in a
  state file and torn down by a later command).

Every loop device and mount is also kept in rescue.hw.leftovers' registry, with its owner
(this process unless the caller names another: a browsing session's FUSE server), from
before it is set up until it is torn down, so a process killed in between leaves a record
and the next run detaches or unmounts it, with the same checks. To have that record before
the device exists, attach picks a free /dev/loopN (`losetup --find`), records it, then
attaches that very device; when another program takes it first, it tries the next."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rescue.errors import DeviceError, FilesystemError, RefusedError, RescueError
from rescue.hw import devices, leftovers
from rescue.hw.run import run

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
DELETED = " (deleted)"  # the kernel's suffix on a loop device's backing file that was unlinked
ATTACH_TRIES = 20  # free loop devices taken by someone else between find and attach


class Outcome(enum.Enum):
    """What a teardown step did."""

    DONE = "done"  # detached / unmounted
    ABSENT = "absent"  # nothing there any more (already detached or unmounted)
    NOT_OURS = "not ours"  # the device or mount point now holds someone else's: left alone
    BUSY = "busy"  # still mounted: in use, and not asked to detach it lazily


# --------------------------------------------------------------------------- the mount table


def mount_table() -> list[devices.Mount]:
    """The kernel's mounts as this process sees them, in mount order. Read as bytes and
    decoded like file names (os.fsdecode), so a name that is not UTF-8 cannot fail the read;
    parsed by devices.parse_mountinfo."""
    try:
        with open(MOUNTINFO, "rb") as f:
            text = os.fsdecode(f.read())
    except OSError:
        return []
    return devices.parse_mountinfo(text)


def _norm(path: str | os.PathLike[str]) -> str:
    """Absolute and normalized, without resolving symbolic links: realpath would stat
    every component, and a dead FUSE mount answers ENOTCONN (a hung one never answers)."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def mount_at(where: str | os.PathLike[str], table: list[devices.Mount] | None = None) -> devices.Mount | None:
    """The topmost mount at `where` (the one umount would remove), or None. From mountinfo,
    not os.path.ismount: that says False for a dead FUSE mount (stat fails with ENOTCONN)."""
    path = _norm(where)
    found = None
    for m in mount_table() if table is None else table:
        if m.mountpoint == path:
            found = m
    return found


def is_mountpoint(where: str | os.PathLike[str]) -> bool:
    return mount_at(where) is not None


def _same_source(a: str, b: str) -> bool:
    """Mount sources name the same thing: equal, or device paths that resolve alike."""
    if a == b:
        return True
    return a.startswith("/") and b.startswith("/") and os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------- loop devices


@dataclass(frozen=True)
class OurLoop:
    """A loop device we attached, and what we attached it to: enough to tell later whether
    /dev/loopN is still ours. Plain data (a browsing session keeps it in its state file)."""

    device: str  # "/dev/loop3"
    backing_file: str  # the file or device, as the kernel names it (symbolic links resolved)
    offset: int
    sizelimit: int  # 0: to the end of the backing file
    backing: devices.Node | None = None  # its identity when attached (inode, or device number)

    def to_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "backing_file": self.backing_file,
            "offset": self.offset,
            "sizelimit": self.sizelimit,
            "backing": list(self.backing) if self.backing is not None else None,
        }

    @classmethod
    def from_json(cls, data: object) -> OurLoop:
        """From to_json's dict; ValueError for anything else (a damaged state file)."""
        if not isinstance(data, dict):
            raise ValueError(f"not a loop device record: {data!r}")
        device, backing_file = data.get("device"), data.get("backing_file")
        offset, sizelimit, backing = data.get("offset", 0), data.get("sizelimit", 0), data.get("backing")
        if not (isinstance(device, str) and isinstance(backing_file, str)):
            raise ValueError(f"not a loop device record: {data!r}")
        if not (isinstance(offset, int) and isinstance(sizelimit, int)):
            raise ValueError(f"not a loop device record: {data!r}")
        return cls(device, backing_file, offset, sizelimit, _node(backing))


def _node(value: object) -> devices.Node | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value[1:]):
        if len(value) == 2 and value[0] == "dev":
            return ("dev", value[1])
        if len(value) == 3 and value[0] == "file":
            return ("file", value[1], value[2])
    return None


def _kernel_loops() -> list[devices.Loop]:
    """The loop devices as the kernel shows them now, through devices' one reader and parser
    of them. Always the live kernel, never a recorded machine (devices.replay): what is
    detached here is real."""
    return devices.Snapshot.from_record(devices.record(), live=True).loops


def _loop_now(device: str) -> devices.Loop | None:
    """What the kernel says /dev/loopN is attached to now; None when it is free."""
    name = os.path.basename(device)
    return next((lo for lo in _kernel_loops() if lo.name == name), None)


def _loop_left(ours: OurLoop) -> Outcome | None:
    """None while the device still shows what we attached (same backing file, offset and
    size limit, and the same inode when it can be told); else ABSENT (free) or NOT_OURS. A
    file deleted since shows as "PATH (deleted)" and has no inode to compare: the path then
    decides."""
    now = _loop_now(ours.device)
    if now is None:
        return Outcome.ABSENT
    path = now.backing_file
    if path.endswith(DELETED) and now.backing is None:
        path = path[: -len(DELETED)]
    same = (
        path == ours.backing_file
        and now.offset == ours.offset
        and now.sizelimit == ours.sizelimit
        and (now.backing is None or ours.backing is None or now.backing == ours.backing)
    )
    return None if same else Outcome.NOT_OURS


def loop_is_ours(ours: OurLoop) -> bool:
    return _loop_left(ours) is None


def attach(
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    size: int | None = None,
    read_only: bool = False,
    direct_io: bool = False,
    error: type[RescueError] = DeviceError,
    owner: leftovers.Owner | None = None,
) -> OurLoop:
    """A loop device over bytes [offset, offset + size) of `path` (to its end without a
    size). With `direct_io`, direct I/O where the kernel takes it, else without. Recorded
    in the leftovers registry before it is attached, as `owner`'s (default: this
    process's), until detach."""
    path = os.fspath(path)
    backing = devices.identity(path)
    real = os.path.realpath(path)
    opts = ["--offset", str(offset)]
    if size is not None:
        opts += ["--sizelimit", str(size)]
    if read_only:
        opts.append("--read-only")
    for _ in range(ATTACH_TRIES):
        free = run(["losetup", "--find"], error=error).stdout.decode(errors="replace").strip()
        ours = OurLoop(free, real, offset, size or 0, backing)
        key = leftovers.record("loop", leftovers.loop_stem(free), {"loop": ours.to_json(), "pending": True}, owner)
        if direct_io:
            if _losetup(ours, [*opts, "--direct-io=on"], path, error).returncode == 0:
                leftovers.update(key, pending=False)
                return ours
            if _loop_left(ours) is None:  # attached, then refused direct I/O: detach, then plain
                _detach_device(ours, error)
        proc = _losetup(ours, opts, path, error)
        if proc.returncode == 0:
            leftovers.update(key, pending=False)
            return ours
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        # Taken by another program between find and attach; or busy with nothing attached: a
        # loop device someone just detached is free to --find before the kernel has let it
        # go (its last opener, often udev's probe, still closing it). Both: try another.
        busy = bool(lines) and lines[-1].endswith("Device or resource busy")
        taken = _loop_left(ours) is Outcome.NOT_OURS
        leftovers.forget(key)
        if not (taken or busy):
            raise error(f"losetup failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
        if busy and not taken:
            time.sleep(0.1)
    raise error(f"no loop device for {path}: each free one was taken by another program first")


def _losetup(ours: OurLoop, opts: list[str], path: str, error: type[RescueError]) -> subprocess.CompletedProcess[bytes]:
    """Attach exactly ours.device (busy: someone else was quicker, and losetup fails)."""
    return run(["losetup", *opts, ours.device, path], check=False, error=error)


def _detach_device(ours: OurLoop, error: type[RescueError]) -> None:
    proc = run(["losetup", "--detach", ours.device], check=False, error=error)
    if proc.returncode != 0 and _loop_now(ours.device) is not None:
        raise error(f"cannot detach {ours.device}: {proc.stderr.decode(errors='replace').strip()}")


def detach(ours: OurLoop, *, error: type[RescueError] = DeviceError) -> Outcome:
    """Detach the loop device if it is still ours (see _loop_left). A device still open
    by someone is detached by the kernel when they close it (autoclear). Raises `error`
    when losetup refuses. Its leftovers entry goes with it (whoever recorded it)."""
    found = _loop_left(ours)
    if found is None:
        _detach_device(ours, error)
        found = Outcome.DONE
    elif found is Outcome.NOT_OURS:
        log.warning("%s no longer shows %s: left attached", ours.device, ours.backing_file)
    leftovers.forget_all(leftovers.loop_stem(ours.device), "loop", ours.to_json())
    return found


def detach_loops_over(path: str | os.PathLike[str]) -> list[str]:
    """Detach every loop device whose backing file is `path`, whoever attached it: for a
    file private to its owner (a FUSE server's own file). Returns the devices detached;
    failures are skipped."""
    real = os.path.realpath(os.fspath(path))
    done = []
    for lo in _kernel_loops():
        if lo.backing_file in (real, real + DELETED):
            dev = f"/dev/{lo.name}"
            with contextlib.suppress(RescueError):
                if run(["losetup", "--detach", dev], check=False, timeout=60, error=DeviceError).returncode == 0:
                    done.append(dev)
    return done


def direct_io(device: str) -> bool:
    """Whether the loop device does direct I/O on its backing file."""
    try:
        with open(f"/sys/block/{os.path.basename(device)}/loop/dio") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@contextlib.contextmanager
def loop_attached(
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    size: int | None = None,
    read_only: bool = False,
    direct_io: bool = False,
    error: type[RescueError] = DeviceError,
) -> Iterator[str]:
    """A loop device over a byte range of `path` for the block; detached on exit (also on an
    exception) if it is still ours. Yields the device path."""
    ours = attach(path, offset=offset, size=size, read_only=read_only, direct_io=direct_io, error=error)
    try:
        yield ours.device
    finally:
        try:
            detach(ours, error=error)
        except RescueError as e:  # the block's own exception, if any, is the one that matters
            log.warning("%s", e)


# --------------------------------------------------------------------------- mounts


@dataclass(frozen=True)
class OurMount:
    """A mount we made (or a FUSE server of ours made): its source as mountinfo shows it
    (the device, or a FUSE file system's fsname) and where."""

    source: str
    where: str

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "where": self.where}

    @classmethod
    def from_json(cls, data: object) -> OurMount:
        if not isinstance(data, dict):
            raise ValueError(f"not a mount record: {data!r}")
        source, where = data.get("source"), data.get("where")
        if not (isinstance(source, str) and isinstance(where, str)):
            raise ValueError(f"not a mount record: {data!r}")
        return cls(source, where)


def _mount_left(ours: OurMount, table: list[devices.Mount] | None = None) -> Outcome | None:
    """None while the topmost mount at ours.where has our source; else ABSENT (nothing
    mounted there) or NOT_OURS (something else is: ours may be under it, or gone)."""
    found = mount_at(ours.where, table)
    if found is None:
        return Outcome.ABSENT
    return None if _same_source(found.source, ours.source) else Outcome.NOT_OURS


def mount_is_ours(ours: OurMount) -> bool:
    return _mount_left(ours) is None


def _options(options: str, read_only: bool) -> str:
    opts = [o for o in options.split(",") if o]
    if read_only:
        opts = ["ro", *(o for o in opts if o not in ("ro", "rw"))]
    return ",".join(opts)


def _mount_failure(stderr: bytes) -> str:
    """mount's own line, not its "dmesg(1) may have more information" afterthought."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln and "dmesg(1)" not in ln]
    return lines[0] if lines else "see dmesg"


def mount(
    device: str,
    where: str | os.PathLike[str],
    fstype: str | None,
    options: str = "",
    *,
    read_only: bool = False,
    what: str | None = None,
    error: type[RescueError] = FilesystemError,
    timeout: float | None = 600,
    owner: leftovers.Owner | None = None,
) -> OurMount:
    """Mount `device` at `where` (which must exist) with `fstype` (None: mount probes it)
    and `options`; `read_only` makes sure the options say ro. Recorded in the leftovers
    registry before mounting, as `owner`'s (default: this process's), until unmount.
    Then the kernel must show
    `device` as the source there: btrfs may hand back an already mounted filesystem with the
    same UUID (another device) instead. That mount, just made by us, is undone and
    RefusedError raised. A failing mount raises `error` ("mounting WHAT failed: mount's
    message"; WHAT defaults to "DEVICE (FSTYPE)")."""
    target = os.path.realpath(where)  # as mountinfo will name it (an existing directory of ours)
    ours = OurMount(device, target)
    key = leftovers.record("mount", leftovers.mount_stem(device, target), {"mount": ours.to_json()}, owner)
    opts = _options(options, read_only)
    argv = ["mount", *(["-t", fstype] if fstype else []), *(["-o", opts] if opts else []), device, target]
    try:
        proc = run(argv, check=False, timeout=timeout, error=error)
    except BaseException:
        if not mount_is_ours(ours):
            leftovers.forget(key)
        raise
    if proc.returncode != 0:
        leftovers.forget(key)
        name = what or (f"{device} ({fstype})" if fstype else device)
        raise error(f"mounting {name} failed: {_mount_failure(proc.stderr)}")
    found = mount_at(target)
    if found is None or not _same_source(found.source, device):
        if found is not None:  # the mount our command made, whatever it shows
            unmount(OurMount(found.source, target), lazy=True)
        leftovers.forget(key)
        raise RefusedError(
            f"{target}: the kernel mounted {found.source if found else 'nothing'} instead of "
            f"{device} (a mounted filesystem with the same UUID?); unmounted again"
        )
    return ours


def unmount(ours: OurMount, *, lazy: bool = False, timeout: float | None = 600) -> Outcome:
    """Unmount ours.where if its topmost mount is still ours (see _mount_left). When it is
    busy: with `lazy` detach it now and let the kernel finish when it is no longer used,
    else BUSY (still mounted). Unless BUSY, its leftovers entry goes (whoever recorded it)."""
    found = _unmount(ours, lazy=lazy, timeout=timeout)
    if found is not Outcome.BUSY:
        leftovers.forget_all(leftovers.mount_stem(ours.source, ours.where), "mount", ours.to_json())
    return found


def _unmount(ours: OurMount, *, lazy: bool, timeout: float | None) -> Outcome:
    found = _mount_left(ours)
    if found is not None:
        if found is Outcome.NOT_OURS:
            log.warning("%s no longer shows %s: left mounted", ours.where, ours.source)
        return found
    if run(["umount", ours.where], check=False, timeout=timeout, error=DeviceError).returncode == 0:
        return Outcome.DONE
    if _mount_left(ours) is not None:  # umount failed, yet ours is gone
        return Outcome.DONE
    if not lazy:
        return Outcome.BUSY
    run(["umount", "-l", ours.where], check=False, error=DeviceError)
    return Outcome.DONE if _mount_left(ours) is not None else Outcome.BUSY


@contextlib.contextmanager
def mounted(
    device: str,
    where: str | os.PathLike[str],
    fstype: str | None,
    options: str = "",
    *,
    read_only: bool = False,
    what: str | None = None,
    error: type[RescueError] = FilesystemError,
    timeout: float | None = 600,
) -> Iterator[str]:
    """`device` mounted at `where` for the block (see mount); unmounted on exit (also on an
    exception), lazily when still busy, and only while the mount there is still ours.
    Yields the mount point."""
    ours = mount(device, where, fstype, options, read_only=read_only, what=what, error=error, timeout=timeout)
    try:
        yield ours.where
    finally:
        try:
            unmount(ours, lazy=True, timeout=None)
        except RescueError as e:  # the block's own exception, if any, is the one that matters
            log.warning("%s", e)

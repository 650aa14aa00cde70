"""Mounting an image read-only: one FUSE process (rescue.browse.imagefs) shows the areas as
files, a read-only loop device over each partition's file makes it a block device, and the
kernel's driver (or a FUSE driver) mounts it read-only at MOUNTPOINT/p<N>.

    MOUNTPOINT/p2  ext2/3/4  ro,noload          (no journal replay: nothing is written)
    MOUNTPOINT/p3  xfs       ro,norecovery,nouuid  (nouuid: the source may be mounted too)
    MOUNTPOINT/p4  btrfs     ro,rescue=nologreplay
    MOUNTPOINT/p5  FAT       the kernel's vfat, ro, where it has one (the rescue ISO's
                             Debian kernel); else fusefat -o ro (FUSE) over the same
                             read-only loop device; else not mounted, and `rescue extract`
                             copies from FAT with mtools (reading the partition's file).
    MOUNTPOINT/p6  ntfs      ntfs-3g ro

fusefat runs as a daemon of its own (it daemonizes once mounted), so its pid is recorded
next to the mount, and its mount's source is named after our loop device (-o fsname=) so
the same "is this ours" check covers it.

Loop devices and mounts are made and undone through rescue.hw.mounts, which records what
is ours (`OurLoop`, `OurMount`, kept in the state file) and checks it against the kernel
before detaching or unmounting anything.

Why a state file per mount (/run/rescue/mounts/<key>.json, written before and after every
step): the FUSE process outlives the `rescue mount` command, and when it or a `rescue
extract` dies, its loop devices and mounts are left behind ("Transport endpoint is not
connected"). `rescue umount` and every later `rescue mount`/`extract` read the state files
and clear what a dead process left. Everything recorded is checked before it is undone (the
loop device's backing file is ours, the mount's source is our loop device, the pid runs our
FUSE server), so a recycled loop device or pid is never touched.

Every mount is checked after mounting: the kernel must show our loop device as its source
(btrfs may otherwise hand back an already-mounted filesystem with the same UUID: the live
system instead of the image).

A session is stale when the process that owns it is gone: the `rescue extract` (or the
wizard) that opened it privately, the FUSE server of a `rescue mount` session, or the
process that was still setting it up (`setup`: a `rescue mount` killed half-way leaves no
session anyone asked for). Every command clears stale sessions first (`clear_leftovers`,
with the leftovers registry of rescue.hw.leftovers: the loop devices and mounts of a
session are kept there too, as its FUSE server's, or its extracting process's)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rescue.errors import FilesystemError, RefusedError, RescueError, UsageError
from rescue.filesystems import lookup
from rescue.hw import leftovers
from rescue.hw import mounts as hwmounts
from rescue.hw.fuseproc import python_with_llfuse
from rescue.hw.mounts import OurLoop, OurMount
from rescue.hw.run import run
from rescue.imaging.verify import load_indexes
from rescue.repo.manifest import Area, Manifest
from rescue.repo.storage import is_url
from rescue.repo.store import Repository

SERVER_MODULE = "rescue.browse.imagefs"
START_TIMEOUT = 30.0
FUSEFAT = "fusefat"
# -s: one thread (fusefat is old code; a race there could mean wrong bytes). It writes only
# when given rw+; ro says so to the kernel too, which then refuses every write (EROFS).
FUSEFAT_ARGS = ("-s", "-o", "ro,subtype=fusefat")


def state_root() -> Path:
    return Path(os.environ.get("RESCUE_STATE_DIR", "/run/rescue/mounts"))


@dataclass
class MountState:
    """What one browsing session set up, in the order it was set up."""

    mountpoint: str
    repo: str
    image: str
    key: str
    fuse_pid: int | None = None
    owner_pid: int | None = None  # extract: when this process is gone, everything is a leftover
    owner_start: int | None = None  # its start time (leftovers.Owner): a reused pid is not it
    setup: dict[str, object] | None = None  # the process setting it up (leftovers.Owner), until done
    loops: list[OurLoop] = field(default_factory=list)
    mounts: list[OurMount] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    helpers: dict[str, int] = field(default_factory=dict)  # mount -> pid of its FUSE daemon (fusefat)

    @property
    def work(self) -> Path:
        return state_root() / self.key

    @property
    def fuse_dir(self) -> Path:
        return self.work / "areas"

    @property
    def log(self) -> Path:
        return self.work / "imagefs.log"

    @property
    def file(self) -> Path:
        return state_root() / f"{self.key}.json"

    def save(self) -> None:
        data = asdict(self)
        data["loops"] = [lo.to_json() for lo in self.loops]
        data["mounts"] = [m.to_json() for m in self.mounts]
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.file)

    @classmethod
    def load(cls, path: Path) -> MountState | None:
        try:
            data = json.loads(path.read_text())
            data["loops"] = [OurLoop.from_json(x) for x in data.get("loops", [])]
            data["mounts"] = [OurMount.from_json(x) for x in data.get("mounts", [])]
            return cls(**data)
        except (OSError, ValueError, TypeError, AttributeError):
            return None


@dataclass
class PartMount:
    area: str  # "p2"
    fstype: str | None
    path: str | None  # where its files are, None when not mounted
    note: str = ""  # why not, or a hint


def key_for(mountpoint: str) -> str:
    return hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


# -- what the kernel says ------------------------------------------------------------------


def _pid_runs(pid: int | None, *needles: str) -> bool:
    """The pid is alive (not a zombie) and its command line holds every needle."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and all(n in cmd for n in needles)


def fuse_alive(state: MountState) -> bool:
    return _pid_runs(state.fuse_pid, SERVER_MODULE, str(state.fuse_dir))


def _gone(owner: dict[str, object] | None) -> bool:
    try:
        return owner is not None and not leftovers.Owner.from_json(owner).alive()
    except ValueError:
        return True


def is_stale(state: MountState) -> bool:
    if state.owner_pid is not None and not _pid_runs(state.owner_pid, ""):
        return True
    if state.owner_pid is not None and state.owner_start is not None:
        if _gone({"pid": state.owner_pid, "start": state.owner_start}):
            return True
    if _gone(state.setup):  # killed while setting it up
        return True
    if not fuse_alive(state):
        return True
    try:
        os.stat(state.fuse_dir)
    except OSError:  # ENOTCONN: the server is gone or hung up
        return True
    return False


# -- locking and leftovers ---------------------------------------------------------------


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Mounting and unmounting one at a time (not the browsing in between)."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def states() -> list[MountState]:
    root = state_root()
    if not root.is_dir():
        return []
    return [s for p in sorted(root.glob("*.json")) if (s := MountState.load(p)) is not None]


def clear_stale() -> list[str]:
    """Tear down what dead browsing processes left. Returns the mountpoints cleared.
    Call with the lock held."""
    cleared = []
    for s in states():
        if is_stale(s):
            teardown(s, lazy=True)
            cleared.append(s.mountpoint)
    return cleared


def _whose(state: MountState) -> int:
    """The pid to name for a stale session: whoever was setting it up, else its owner."""
    pid = state.setup.get("pid") if state.setup else None
    return pid if isinstance(pid, int) else state.owner_pid or state.fuse_pid or 0


_cleared_here: set[str] = set()  # mountpoints whose stale sessions this process tore down


def clear_leftovers() -> leftovers.Cleared:
    """Everything interrupted runs of rescue left on this machine, for the front ends to
    call first: browsing sessions whose owner died (torn down from their state files),
    then whatever else dead owners left in the leftovers registry (rescue.hw.leftovers:
    loop devices, mounts, scratch and staging files, partly written drives). Never waits
    for a lock another process holds (it is setting up a session: not a leftover), never
    raises."""
    cleared = leftovers.Cleared()
    root = state_root()
    if root.is_dir():
        try:
            with open(root / ".lock", "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass  # someone is mounting or unmounting: they clear stale sessions themselves
                else:
                    for s in states():
                        if not is_stale(s):
                            continue
                        try:
                            teardown(s, lazy=True)
                            cleared.add(_whose(s), f"image mount {s.mountpoint}")
                            _cleared_here.add(s.mountpoint)
                        except (RescueError, OSError) as e:
                            cleared.left.append(f"image mount {s.mountpoint} ({e})")
        except OSError:
            pass  # not ours to clear (an unprivileged user)
    cleared.merge(leftovers.clear_leftovers())
    return cleared


def find_state(mountpoint: str) -> MountState | None:
    path = state_root() / f"{key_for(mountpoint)}.json"
    return MountState.load(path) if path.exists() else None


# -- setting up ----------------------------------------------------------------------------


def start_server(state: MountState, areas: list[str]) -> None:
    state.work.mkdir(parents=True, exist_ok=True)
    state.fuse_dir.mkdir(exist_ok=True)
    runner = [python_with_llfuse(), "-m", SERVER_MODULE]
    argv = [*runner, state.repo, state.image, str(state.fuse_dir), "--areas", ",".join(areas)]
    from rescue.repo import keys

    secrets = keys.export()  # an encrypted repository's key, unlocked here: on a pipe, never in argv
    if secrets:
        argv.append("--keys-on-stdin")
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
    with open(state.log, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if secrets else subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.write(secrets)
        proc.stdin.close()
    state.fuse_pid = proc.pid
    state.save()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FilesystemError(f"the image file system did not start: {last_log_line(state.log)}")
        if hwmounts.is_mountpoint(state.fuse_dir) and all((state.fuse_dir / a).exists() for a in areas):
            return
        time.sleep(0.05)
    raise FilesystemError(f"the image file system did not start within {START_TIMEOUT:.0f} s (see {state.log})")


def last_log_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "no message"
    return lines[-1].split(": ", 1)[-1] if "rescue imagefs: " in lines[-1] else lines[-1]


def damage_lines(log: Path) -> list[str]:
    """The imagefs log's reports of damaged chunks (the first line of each)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [ln.split("rescue imagefs: ", 1)[-1] for ln in text.splitlines() if "fail with EIO" in ln]


def _hw_owner(state: MountState) -> leftovers.Owner | None:
    """Whose the session's loop devices and mounts are in the leftovers registry: the
    extracting process's (None: this process) or, for `rescue mount`, the FUSE server's,
    which lives as long as the session."""
    if state.owner_pid is not None or state.fuse_pid is None:
        return None
    return leftovers.Owner.of(state.fuse_pid)


def attach_loop(state: MountState, area: str) -> str:
    """A read-only loop device over the area's file, with direct I/O where the kernel
    allows it. Why direct I/O: each block request then reaches imagefs at its own offset and
    size, so a damaged chunk fails only the requests that touch it. Through the page cache of
    the FUSE file, a read-ahead window crossing into a damaged chunk would fail pages of the
    good chunk before it too."""
    ours = hwmounts.attach(
        state.fuse_dir / area, read_only=True, direct_io=True, error=FilesystemError, owner=_hw_owner(state)
    )
    state.loops.append(ours)
    state.save()
    return ours.device


def mount_fs(state: MountState, area: Area, dev: str, target: Path) -> None:
    """Read-only, with the options its filesystem class gives for looking without writing
    (Filesystem.mount_ro: no journal or log replay); a type no class knows gets plain ro."""
    fstype = (area.fs or {}).get("type") or ""
    fs = lookup(fstype)
    kind, opts = (fs.mount_type, fs.mount_ro or "ro") if fs is not None and fs.mount_type else (fstype, "ro")
    if not target.exists():
        target.mkdir()
        state.created_dirs.append(str(target))
    ours = OurMount(dev, str(target))
    state.mounts.append(ours)  # before mounting: a crash in between leaves a record
    state.save()
    try:
        hwmounts.mount(
            dev,
            target,
            kind,
            opts,
            read_only=True,
            what=f"{area.name} ({fstype})",
            error=FilesystemError,
            timeout=120,
            owner=_hw_owner(state),
        )
    except RescueError:
        state.mounts.remove(ours)
        state.save()
        raise


def kernel_has(fs: str) -> bool:
    """Whether the kernel lists a driver (after a mount attempt, a module that could be
    loaded has been)."""
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return False
    return any(ln.split()[-1] == fs for ln in lines if ln.split())


def mount_fat(state: MountState, area: Area, dev: str, target: Path) -> str:
    """The kernel's vfat first (ours on the rescue ISO, faithful names and times); where the
    kernel has none, fusefat. Returns a hint for the listing ("" for the kernel)."""
    try:
        mount_fs(state, area, dev, target)
        return ""
    except FilesystemError as e:
        kernel = "this kernel has no FAT driver" if not kernel_has("vfat") else f"the kernel's vfat failed ({e})"
    try:
        mount_fusefat(state, area, dev, target)
    except FilesystemError as e:
        raise FilesystemError(f"{area.name} (FAT): {kernel} and {e}: copy files with 'rescue extract'") from None
    return f"read with fusefat: {kernel}"


def mount_fusefat(state: MountState, area: Area, dev: str, target: Path) -> None:
    """fusefat, read-only, over our read-only loop device. fsname=DEV makes the mount's
    source our loop device: what teardown checks before it unmounts anything."""
    import shutil

    if shutil.which(FUSEFAT) is None:
        raise FilesystemError("fusefat is not installed")
    argv = [FUSEFAT, *FUSEFAT_ARGS, "-o", f"fsname={dev}", dev, str(target)]
    ours = OurMount(dev, str(target))
    state.mounts.append(ours)
    state.save()
    proc = run(argv, check=False, timeout=120)
    if proc.returncode != 0:
        state.mounts.remove(ours)
        state.save()
        raise FilesystemError(f"fusefat could not mount {area.name}: {_fusefat_reason(proc)}")
    pid = _find_process(argv)
    if pid is not None:
        state.helpers[str(target)] = pid
        state.save()
    if not hwmounts.mount_is_ours(ours):
        found = hwmounts.mount_at(target)
        raise FilesystemError(
            f"fusefat did not mount {area.name} (the kernel shows {found.source if found else 'nothing'} at {target})"
        )


def _fusefat_reason(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        return f"it stopped with signal {-proc.returncode} (a damaged or unusual FAT?)"
    lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _find_process(argv: list[str]) -> int | None:
    """The pid of the daemon that runs exactly argv (fusefat forks and its parent exits)."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == want:
                    return int(entry.name)
    return None


def helper_alive(state: MountState, target: str) -> bool:
    """The recorded pid still runs fusefat for this mount (a recycled pid is never ours)."""
    return _pid_runs(state.helpers.get(target), FUSEFAT, f"\0{target}\0")


def select_areas(manifest: Manifest, partition: int | None) -> list[Area]:
    parts = [a for a in manifest.areas if a.partition is not None]
    if partition is None:
        return parts
    chosen = [a for a in parts if a.partition == partition]
    if not chosen:
        have = ", ".join(str(a.partition) for a in parts) or "none"
        raise UsageError(f"image {manifest.name} has no partition {partition} (partitions: {have})")
    return chosen


def check_mountpoint(mountpoint: str) -> Path:
    path = Path(mountpoint)
    if not path.exists():
        raise UsageError(f"mount point {mountpoint} does not exist")
    if not path.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    return Path(os.path.realpath(path))


def open_image(repo_path: str, name: str) -> tuple[Repository, Manifest]:
    """Open for reading only, and check the manifest and every index before anything is
    mounted, so a damaged image is reported here in one line, not by the FUSE process."""
    repo = Repository.open(repo_path)
    manifest, _ = load_indexes(repo, name)
    return repo, manifest


def start_session(
    repo_path: str, name: str, mountpoint: Path, areas: list[Area], owner_pid: int | None = None
) -> MountState:
    """Clear leftovers, refuse a mount point in use, start the FUSE server. Lock held by caller."""
    clear_stale()
    existing = find_state(str(mountpoint))
    if existing is not None:
        raise UsageError(f"{mountpoint} already shows image {existing.image}: run 'rescue umount {mountpoint}' first")
    if hwmounts.is_mountpoint(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point; choose an empty directory")
    me = leftovers.Owner.me()
    state = MountState(
        str(mountpoint),
        repo_path if is_url(repo_path) else str(Path(repo_path).resolve()),
        name,
        key_for(str(mountpoint)),
        owner_pid=owner_pid,
        owner_start=me.start if owner_pid == me.pid else None,
        setup=me.to_json(),
    )
    state.save()
    try:
        start_server(state, [a.name for a in areas])
    except BaseException:
        teardown(state, lazy=True)
        raise
    return state


def open_private(
    repo_path: str, name: str, area: Area, kind: str, prefix: str, *, mount: bool = True, fusefat: bool = True
) -> tuple[MountState, Path]:
    """One partition of an image for this process alone (extract, the wizard's browsing), in
    a fresh directory under /run/rescue/<kind>: the image filesystem, and with `mount` the
    partition mounted at <dir>/<area>. Whatever was set up is undone if a step fails. The
    directory is kept in the leftovers registry: a killed process's is removed by the next
    command, after its session is torn down."""
    work = state_root().parent / kind
    work.mkdir(parents=True, exist_ok=True)
    mnt = leftovers.make_dir(work, prefix)[0]
    state = None
    try:
        with locked():
            state = start_session(repo_path, name, mnt, [area], owner_pid=os.getpid())
            if mount:
                mount_areas(state, [area], strict=True, fusefat=fusefat)
            _set_up(state)
    except BaseException:
        close_private(state, mnt)
        raise
    return state, mnt


def close_private(state: MountState | None, mnt: Path) -> None:
    """Undo open_private (lazily: a copy interrupted mid-file may still hold a file open)."""
    try:
        if state is not None:
            with locked():
                teardown(state, lazy=True)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()
            leftovers.forget_dir(mnt)


def mount_areas(state: MountState, areas: list[Area], strict: bool, fusefat: bool = True) -> list[PartMount]:
    """Loop + mount each partition. A failure is a note unless `strict` (one partition
    asked for by number): one damaged filesystem must not hide the others. Without
    `fusefat`, FAT is mounted by the kernel or not at all."""
    out = []
    root = Path(state.mountpoint)
    for area in areas:
        fstype = (area.fs or {}).get("type")
        if not fstype or fstype == "raw":
            out.append(PartMount(area.name, None, None, "no filesystem"))
            continue
        fs = lookup(fstype)
        if fs is not None and fs.no_files:
            out.append(PartMount(area.name, fstype, None, fs.no_files))
            continue
        target = root / area.name
        try:
            dev = attach_loop(state, area.name)
            if fs is not None and fs.mtools and fusefat:  # FAT: the kernel's vfat, else fusefat
                note = mount_fat(state, area, dev, target)
            else:
                mount_fs(state, area, dev, target)
                note = ""
        except RescueError as e:
            if strict:
                raise
            _drop_dir(state, target)
            out.append(PartMount(area.name, fstype, None, str(e)))
            continue
        out.append(PartMount(area.name, fstype, str(target), note))
    return out


def _drop_dir(state: MountState, target: Path) -> None:
    """A partition that could not be mounted leaves no empty MOUNTPOINT/pN to puzzle over."""
    if str(target) in state.created_dirs and not hwmounts.is_mountpoint(target):
        with contextlib.suppress(OSError):
            target.rmdir()
            state.created_dirs.remove(str(target))
            state.save()


@dataclass
class MountResult:
    state: MountState
    parts: list[PartMount]


def mount_image(repo_path: str, name: str, mountpoint: str, partition: int | None = None) -> MountResult:
    target = check_mountpoint(mountpoint)
    _, manifest = open_image(repo_path, name)
    areas = select_areas(manifest, partition)
    with locked():
        state = start_session(repo_path, name, target, areas)
        try:
            parts = mount_areas(state, areas, strict=partition is not None)
        except BaseException:
            teardown(state, lazy=True)
            raise
        if not any(p.path for p in parts):
            teardown(state, lazy=True)
            why = "; ".join(f"{p.area}: {p.note}" for p in parts)
            raise FilesystemError(f"nothing to mount in image {name}: {why}")
        _set_up(state)
    return MountResult(state, parts)


def _set_up(state: MountState) -> None:
    """The session is complete: from now on it lives as long as its owner (or server)."""
    state.setup = None
    state.save()


# -- tearing down --------------------------------------------------------------------------


def umount_one(mount: OurMount, lazy: bool) -> None:
    """Unmount one partition if the mount there is still ours (hw.mounts checks)."""
    if hwmounts.unmount(mount, lazy=lazy) is hwmounts.Outcome.BUSY and not lazy:
        raise RefusedError(
            f"{mount.where} is in use (a shell or program has files open there): close it and run 'rescue umount' again"
        )


def teardown(state: MountState, lazy: bool = False) -> None:
    """Undo a session in reverse order; each step only if it is still ours (rescue.hw.mounts
    checks the mount's source and the loop device's backing file). `lazy` for leftovers:
    detach what is busy instead of refusing."""
    for mount in reversed(state.mounts):
        umount_one(mount, lazy)
    _stop_helpers(state)
    for lo in reversed(state.loops):
        with contextlib.suppress(RescueError):
            hwmounts.detach(lo, error=FilesystemError)
    # The image file system: imagefs names its mount rescue:IMAGE (fsname).
    with contextlib.suppress(RescueError):
        hwmounts.unmount(OurMount(f"rescue:{state.image}", str(state.fuse_dir)), lazy=True, timeout=120)
    _stop_server(state)
    for d in reversed(state.created_dirs):
        with contextlib.suppress(OSError):
            os.rmdir(d)
    with contextlib.suppress(OSError):
        state.file.unlink()
    for p in (state.log, state.fuse_dir, state.work):
        with contextlib.suppress(OSError):
            p.rmdir() if p.is_dir() else p.unlink()


def _stop_helpers(state: MountState) -> None:
    """fusefat exits once unmounted; one that hangs (or whose mount was torn down lazily)
    is signalled, so it lets go of the loop device before that is detached."""
    for target in list(state.helpers):
        _wait_or_kill(lambda t=target: helper_alive(state, t), state.helpers[target])
        del state.helpers[target]
    if state.file.exists():
        state.save()


def _wait_or_kill(alive: Callable[[], bool], pid: int | None) -> None:
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            return
        with contextlib.suppress(OSError):
            os.kill(pid, sig)  # type: ignore[arg-type]
        deadline = time.monotonic() + 3
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def _stop_server(state: MountState) -> None:
    """The server exits by itself once unmounted; a hung or orphaned one is signalled."""
    _wait_or_kill(lambda: fuse_alive(state), state.fuse_pid)


def umount_image(mountpoint: str) -> MountState:
    """Unmount what `rescue mount` set up at MOUNTPOINT. A session whose server died is
    cleared lazily; a live one refuses while a program still uses its files."""
    real = os.path.realpath(mountpoint)
    with locked():
        state = find_state(real)
        if state is None:
            cleared = clear_stale()
            if real in cleared or real in _cleared_here:  # a dead session, cleared just now
                return MountState(real, "", "", key_for(real))
            raise UsageError(f"no image is mounted at {mountpoint} by rescue")
        teardown(state, lazy=is_stale(state))
        clear_stale()
    return state

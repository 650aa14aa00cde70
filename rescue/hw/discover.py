"""Finding image repositories, and the places images could go, on the machine's drives, the
way the wizard's first step needs them: every filesystem that is not mounted yet is mounted
read-only under /run/rescue/repos/<name>, searched and measured (size, free space), and kept
mounted only if it holds a repository. Filesystems already mounted are searched where they
are, never remounted. A whole drive with no partition table and no filesystem is a blank
drive: a place once it is prepared (rescue.hw.destination).

Read-only because the drive being searched may be the very drive the person wants to
restore to or capture from: looking must not change it."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rescue.errors import DeviceError, RescueError
from rescue.filesystems import lookup
from rescue.hw import devices as hwdev
from rescue.hw import mounts as hwmounts
from rescue.hw.netmount import NfsExport, SmbShare
from rescue.hw.run import run

log = logging.getLogger(__name__)

RUN_DIR = "/run/rescue/repos"
MARKER = "rescue-repo.json"  # the file that makes a directory a repository (rescue/repo/store.py)

# Filesystems rescue has no class for (rescue.filesystems) that a FUSE driver mounts where
# the kernel has no driver: mount then runs /sbin/mount.exfat-fuse.
_WITHOUT_KERNEL_DRIVER = {"exfat": "exfat-fuse"}


def mount_type(fstype: str) -> str:
    """What `mount -t` is given for a filesystem blkid calls `fstype`: the class's answer
    (NTFS through ntfs-3g), else the type itself or its FUSE driver."""
    fs = lookup(fstype)
    if fs is not None and fs.mount_type:
        return fs.mount_type
    if fstype in _WITHOUT_KERNEL_DRIVER and not _kernel_has(fstype):
        return _WITHOUT_KERNEL_DRIVER[fstype]
    return fstype


def _kernel_has(fstype: str) -> bool:
    """Whether the kernel mounts `fstype` itself: built in, or a module modprobe finds."""
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == [fstype] for line in f):
                return True
    except OSError:
        return True
    try:
        return run(["modprobe", "--quiet", "--", fstype], check=False, timeout=30).returncode == 0
    except RescueError:  # no modprobe: no modules either
        return False


# Skipped outright: not filesystems, or nothing a repository could be stored on.
_NOT_FS = {
    "swap",
    "LVM2_member",
    "linux_raid_member",
    "crypto_LUKS",
    "zfs_member",
    "squashfs",
    "bcache",
    "ddf_raid_member",
    "isw_raid_member",
}
_SKIP_NAMES = ("ram", "zram", "fd", "dm-", "md", "mtdblock", "nbd")


@dataclass
class RepoLocation:
    path: str  # the repository directory
    drive: str | None  # kernel name of the whole drive ("sdb"), None if unknown
    device: str  # the block device holding the filesystem ("/dev/sdb1", "/dev/loop3")
    mountpoint: str
    mounted_by_us: bool  # release() unmounts only these
    read_only: bool
    clonezilla: bool = False  # a Clonezilla image directory (rescue.clonezilla), not a repository


@dataclass
class Place:
    """A filesystem images can be stored on (or a blank drive to prepare), as the person
    chooses it: which drive, which filesystem, its label, size and free space, and the
    repositories already on it."""

    device: str  # "/dev/sdb1"; a blank drive's own node
    drive: str | None  # kernel name of the whole drive ("sdb")
    fstype: str  # blkid's TYPE ("exfat", "ntfs", "ext4", ...); "" for a blank drive
    label: str
    size: int  # bytes: the filesystem's when it could be measured, else the device's
    free: int | None  # bytes; None when not known (blank, or it would not mount)
    mountpoint: str | None  # where it is mounted while this is known, else None
    mounted_by_us: bool  # by the survey (read-only); release() unmounts only these
    read_only: bool  # mounted read-only (by us: always)
    repos: list[str]  # repository directories on it
    # A network share: what to mount it again with (holds the password: never recorded).
    share: SmbShare | NfsExport | None = field(default=None, repr=False)
    clonezilla: list[str] = field(default_factory=list)  # Clonezilla image directories on it (read only)

    @property
    def blank(self) -> bool:
        return not self.fstype


def repo_dirs(top: str) -> list[str]:
    """Repositories at `top` or one directory level below it, sorted."""
    return _dirs(top, lambda path: os.path.isfile(os.path.join(path, MARKER)))


def clonezilla_dir(path: str) -> bool:
    """A Clonezilla image directory: what ocs-sr's own check looks for, a `disk` or `parts`
    file beside a partition table dump (`*-pt.sf`)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return ("disk" in names or "parts" in names) and any(n.endswith("-pt.sf") for n in names)


def clonezilla_dirs(top: str) -> list[str]:
    """Clonezilla image directories at `top` or one level below it (where Clonezilla puts
    them: the drive it saves to is its /home/partimag), sorted."""
    return _dirs(top, clonezilla_dir)


def _dirs(top: str, wanted: Callable[[str], bool]) -> list[str]:
    found = [top] if wanted(top) else []
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return found
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False) and wanted(e.path):
                found.append(e.path)
        except OSError:
            continue
    return found


def fs_type(d: hwdev.DeviceDict) -> str | None:
    """The filesystem on a device: udev's ID_FS_TYPE in the live system, a low-level blkid
    probe where the udev database is empty."""
    props = d["props"]
    if props.get("ID_FS_TYPE"):
        return props["ID_FS_TYPE"] if props.get("ID_FS_USAGE", "filesystem") == "filesystem" else None
    found = probe(d["node"])
    if found.get("USAGE") != "filesystem":
        return None
    return found.get("TYPE")


def probe(node: str, offset: int | None = None, size: int | None = None) -> dict[str, str]:
    """blkid's low-level probe of a device, or of `size` bytes at `offset` in it (a partition
    the kernel has no node for): TYPE, LABEL, UUID, USAGE... ({} when it finds nothing)."""
    at = [] if offset is None else ["--offset", str(offset)] + ([] if size is None else ["--size", str(size)])
    proc = run(["blkid", "-p", "-o", "export", *at, "--", node], check=False, timeout=60)
    found = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def _candidates(snap: hwdev.Snapshot, paths: list[str] | None, include_loop: bool) -> list[hwdev.DeviceDict]:
    if paths is not None:
        out = []
        for p in paths:
            ident = snap.identity(p)
            if ident is None or ident[0] != "dev" or ident[1] not in snap.devices:
                raise DeviceError(f"{p} is not a block device")
            out.append(snap.devices[ident[1]])
        return out
    out = []
    for d in snap.devices.values():
        name = d["name"]
        if name.startswith(_SKIP_NAMES) or int(d["attrs"].get("size") or 0) == 0:
            continue
        if name.startswith("loop"):
            whole = snap.whole_disk(d["devnum"]) or d
            if not (include_loop and whole["attrs"].get("loop/backing_file")):
                continue
        out.append(d)
    return sorted(out, key=lambda d: d["name"])


def _mount_ro(d: hwdev.DeviceDict, fstype: str, run_dir: str) -> str | None:
    target = os.path.join(run_dir, d["name"])
    os.makedirs(target, exist_ok=True)
    if hwmounts.is_mountpoint(target):  # something else is mounted there: never stack on it
        log.warning("%s is already a mountpoint; skipping %s", target, d["node"])
        return None
    # Plain "ro" still replays an ext4 journal and xfs refuses a dirty log: looking for a
    # repository must never change a drive (the class's read-only options say how not to).
    fs = lookup(fstype)
    options = (fs.mount_ro or "") if fs is not None else ""
    try:
        return hwmounts.mount(d["node"], target, mount_type(fstype), options, read_only=True, timeout=120).where
    except RescueError as e:
        log.info("%s", e)
        _rmdir(target)
        return None


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _umount(device: str, mountpoint: str) -> bool:
    """Unmount what _mount_ro mounted, if the mount there is still ours (a mount of someone
    else's is left alone, and so is its directory). False when it is busy."""
    done = hwmounts.unmount(hwmounts.OurMount(device, mountpoint), timeout=120)
    if done is hwmounts.Outcome.BUSY:
        return False
    if done is not hwmounts.Outcome.NOT_OURS:
        _rmdir(mountpoint)
    return True


def _blank(d: hwdev.DeviceDict, snap: hwdev.Snapshot) -> bool:
    """A whole drive with nothing on it: no partitions, no table, no filesystem or other
    signature blkid knows (a RAID member, LVM, LUKS all have one)."""
    if d["parent"] or d["partitions"] or snap.mounts_of(d["devnum"]) or d["holders"]:
        return False
    found = probe(d["node"])
    return not (found.get("TYPE") or found.get("PTTYPE"))


def _measure(path: str) -> tuple[int, int] | None:
    """(size, free bytes) of the filesystem at a mount point; None when it does not answer."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def survey(run_dir: str = RUN_DIR, devices: list[str] | None = None, *, include_loop: bool = False) -> list[Place]:
    """Every filesystem on the machine's drives (and every blank drive), measured and searched
    for repositories. `devices` limits the search to those device paths (loop devices
    included); otherwise every drive and partition is tried, loop devices only with
    include_loop. A filesystem this mounts and finds no repository on is unmounted again
    before it returns (its place keeps the size and free space measured)."""
    snap = hwdev.snapshot()
    found: list[Place] = []
    for d in _candidates(snap, devices, include_loop):
        mounted = snap.mounts_of(d["devnum"])
        if mounted:
            m = mounted[0]
            fstype = fs_type(d) or m.fstype
            # Under run_dir: mounted read-only by an earlier look of ours (a repository kept
            # mounted for Restore or Browse), which a job that writes may take over.
            ours = m.mountpoint.startswith(os.path.join(run_dir, ""))
            found.append(_place(d, snap, fstype, m.mountpoint, ours, m.read_only, repo_dirs(m.mountpoint)))
            continue
        found_type = fs_type(d)
        if not found_type:
            if _blank(d, snap):
                found.append(_place(d, snap, "", None, False, False, []))
            continue
        if found_type in _NOT_FS:
            continue
        mountpoint = _mount_ro(d, found_type, run_dir)
        if mountpoint is None:
            found.append(_place(d, snap, found_type, None, False, True, []))
            continue
        repos = repo_dirs(mountpoint)
        p = _place(d, snap, found_type, mountpoint, True, True, repos)
        if not repos and not p.clonezilla:
            _umount(d["node"], mountpoint)
            p.mountpoint, p.mounted_by_us = None, False
        found.append(p)
    return found


def _place(
    d: hwdev.DeviceDict, snap: hwdev.Snapshot, fstype: str, where: str | None, ours: bool, ro: bool, repos: list[str]
) -> Place:
    """One place; its Clonezilla image directories are looked for here."""
    whole = snap.whole_disk(d["devnum"])
    measured = _measure(where) if where else None
    label = d["props"].get("ID_FS_LABEL") or (probe(d["node"]).get("LABEL") or "" if fstype else "")
    return Place(
        device=d["node"],
        drive=whole["name"] if whole else None,
        fstype=fstype,
        label=label,
        size=measured[0] if measured else int(d["attrs"].get("size") or 0) * hwdev.SECTOR,
        free=measured[1] if measured else None,
        mountpoint=where,
        mounted_by_us=ours,
        read_only=ro,
        repos=repos,
        clonezilla=clonezilla_dirs(where) if where else [],
    )


def share_dir(share: SmbShare | NfsExport, run_dir: str = RUN_DIR) -> str:
    """A mount point of its own for a share, named after it."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", str(share)).strip("-")[:60]
    return os.path.join(run_dir, f"share-{name}")


def mount_share(share: SmbShare | NfsExport, run_dir: str = RUN_DIR) -> Place:
    """Mount a share read-only (looking never writes), measure it and search it for
    repositories; it stays mounted (release_place) whatever it holds: the person chose it."""
    from rescue.hw import netmount

    where = share_dir(share, run_dir)
    os.makedirs(where, exist_ok=True)
    if hwmounts.is_mountpoint(where):
        raise DeviceError(f"{where} is already a mount point; not mounting {share} over it")
    try:
        if isinstance(share, SmbShare):
            mounted = netmount.mount_smb(share, where, read_only=True)
        else:
            mounted = netmount.mount_nfs(share, where, read_only=True)
    except BaseException:
        _rmdir(where)
        raise
    measured = _measure(where)
    fstype = "cifs" if isinstance(share, SmbShare) else "nfs"
    return Place(
        device=mounted.place,
        drive=None,
        fstype=fstype,
        label=mounted.protocol,
        size=measured[0] if measured else 0,
        free=measured[1] if measured else None,
        mountpoint=where,
        mounted_by_us=True,
        read_only=True,
        repos=repo_dirs(where),
        share=share,
        clonezilla=clonezilla_dirs(where),
    )


def find_repositories(
    run_dir: str = RUN_DIR, devices: list[str] | None = None, *, include_loop: bool = False
) -> list[RepoLocation]:
    """Every repository on the machine's filesystems (see survey); what it mounts stays
    mounted until release()."""
    return locations(survey(run_dir, devices, include_loop=include_loop))


def locations(places: list[Place]) -> list[RepoLocation]:
    """The repositories and Clonezilla image directories of surveyed places."""
    return [
        RepoLocation(path, p.drive, p.device, p.mountpoint, p.mounted_by_us, p.read_only, path in p.clonezilla)
        for p in places
        if p.mountpoint is not None
        for path in p.repos + p.clonezilla
    ]


def release_place(place: Place) -> None:
    """Unmount the survey's read-only mount of one place (before it is mounted to write)."""
    if place.mounted_by_us and place.mountpoint:
        if not _umount(place.device, place.mountpoint):
            raise DeviceError(f"cannot unmount {place.mountpoint} (still in use?)")
        place.mountpoint, place.mounted_by_us = None, False


def release(locations: list[RepoLocation]) -> None:
    """Unmount what find_repositories mounted (once per filesystem), and remove the
    mountpoints. Filesystems that were mounted before are left alone."""
    failed = []
    for mnt, device in dict.fromkeys((loc.mountpoint, loc.device) for loc in locations if loc.mounted_by_us):
        if not _umount(device, mnt):
            failed.append(mnt)
    if failed:
        raise DeviceError(f"cannot unmount {', '.join(failed)} (still in use?)")

"""Finding image repositories on the machine's drives, the way the wizard's first step
needs them: every filesystem that is not mounted yet is mounted read-only under
/run/rescue/repos/<name>, searched, and kept mounted only if it holds a repository.
Filesystems already mounted are searched where they are, never remounted.

Read-only because the drive being searched may be the very drive the person wants to
restore to or capture from: looking must not change it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from rescue.errors import DeviceError, RescueError
from rescue.hw import devices as hwdev
from rescue.hw import mounts as hwmounts
from rescue.hw.run import run

log = logging.getLogger(__name__)

RUN_DIR = "/run/rescue/repos"
MARKER = "rescue-repo.json"  # the file that makes a directory a repository (rescue/repo/store.py)

# blkid TYPE -> mount -t value, where they differ (no NTFS kernel driver: ntfs-3g over FUSE).
_MOUNT_TYPE = {"ntfs": "ntfs-3g"}
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


def repo_dirs(top: str) -> list[str]:
    """Repositories at `top` or one directory level below it, sorted."""
    found = []
    if os.path.isfile(os.path.join(top, MARKER)):
        found.append(top)
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError:
        return found
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, MARKER)):
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


def probe(node: str) -> dict[str, str]:
    """blkid's low-level probe of a device: TYPE, LABEL, UUID, USAGE... ({} when it finds
    nothing)."""
    proc = run(["blkid", "-p", "-o", "export", "--", node], check=False, timeout=60)
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


def _location(
    path: str, d: hwdev.DeviceDict, snap: hwdev.Snapshot, mountpoint: str, ours: bool, ro: bool
) -> RepoLocation:
    whole = snap.whole_disk(d["devnum"])
    return RepoLocation(
        path=path,
        drive=whole["name"] if whole else None,
        device=d["node"],
        mountpoint=mountpoint,
        mounted_by_us=ours,
        read_only=ro,
    )


def _mount_ro(d: hwdev.DeviceDict, fstype: str, run_dir: str) -> str | None:
    target = os.path.join(run_dir, d["name"])
    os.makedirs(target, exist_ok=True)
    if hwmounts.is_mountpoint(target):  # something else is mounted there: never stack on it
        log.warning("%s is already a mountpoint; skipping %s", target, d["node"])
        return None
    # Plain "ro" still replays an ext4 journal and xfs refuses a dirty log: looking for a
    # repository must never change a drive.
    options = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}.get(fstype, "")
    try:
        return hwmounts.mount(
            d["node"], target, _MOUNT_TYPE.get(fstype, fstype), options, read_only=True, timeout=120
        ).where
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


def find_repositories(
    run_dir: str = RUN_DIR, devices: list[str] | None = None, *, include_loop: bool = False
) -> list[RepoLocation]:
    """Every repository on the machine's filesystems. `devices` limits the search to those
    device paths (loop devices included); otherwise every drive and partition is tried,
    loop devices only with include_loop. Filesystems this mounts and finds no repository
    on are unmounted again before it returns."""
    snap = hwdev.snapshot()
    found: list[RepoLocation] = []
    for d in _candidates(snap, devices, include_loop):
        mounted = snap.mounts_of(d["devnum"])
        if mounted:
            for m in mounted[:1]:
                found += [_location(p, d, snap, m.mountpoint, False, m.read_only) for p in repo_dirs(m.mountpoint)]
            continue
        fstype = fs_type(d)
        if not fstype or fstype in _NOT_FS:
            continue
        mountpoint = _mount_ro(d, fstype, run_dir)
        if mountpoint is None:
            continue
        repos = repo_dirs(mountpoint)
        if not repos:
            _umount(d["node"], mountpoint)
            continue
        found += [_location(p, d, snap, mountpoint, True, True) for p in repos]
    return found


def release(locations: list[RepoLocation]) -> None:
    """Unmount what find_repositories mounted (once per filesystem), and remove the
    mountpoints. Filesystems that were mounted before are left alone."""
    failed = []
    for mnt, device in dict.fromkeys((loc.mountpoint, loc.device) for loc in locations if loc.mounted_by_us):
        if not _umount(device, mnt):
            failed.append(mnt)
    if failed:
        raise DeviceError(f"cannot unmount {', '.join(failed)} (still in use?)")

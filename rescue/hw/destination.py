"""Where a capture or a copy writes: a surveyed place (rescue.hw.discover) opened read-write
for the one job that writes, and a blank drive prepared to hold images.

Read-write only for that job: looking mounts read-only, because the drive looked at may be
the one being restored or captured. A USB disk pulled out after the done screen must hold
every byte, so each finished file is fsynced as it is written (rescue.repo), and closing
syncs the filesystem and unmounts it before the front end says done. Mounts go through
rescue.hw.mounts, which records them in the leftovers registry: a crash leaves nothing the
next start does not clear.

A prepared drive gets one MBR partition over all of it, type 07, formatted exFAT: the
filesystem Windows, macOS and Linux all read and write, with no 4 GiB file limit, and an
MBR because every firmware and every operating system reads one on a USB stick."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from rescue.errors import DeviceError, FilesystemError, RefusedError, RepoError
from rescue.filesystems import lookup
from rescue.hw import devices
from rescue.hw import mounts as hwmounts
from rescue.hw.discover import Place, mount_type, release_place, share_dir
from rescue.hw.run import run

RUN_DIR = "/run/rescue/dest"
REPO_FOLDER = "rescue-images"  # the repository made on a place that has none
REPO_FILES = "rescue-files"  # where files copied out of images go, one folder per copy
LABEL = "RESCUE"  # a prepared drive's exFAT label (at most 11 characters)

# Filesystems rescue has no class for (rescue.filesystems: their `image_store` says) that
# Linux writes safely, shares included. Not hfsplus (only without its journal), never
# iso9660 or squashfs: not offered.
OTHER_WRITABLE = frozenset({"exfat", "f2fs", "jfs", "udf", "cifs", "nfs"})


def _store_options(fstype: str) -> str | None:
    """Mount options for storing images on `fstype`; None when rescue does not write it."""
    fs = lookup(fstype)
    if fs is not None:
        return fs.image_store
    return "noatime" if fstype in OTHER_WRITABLE else None


@dataclass
class Opened:
    """A place mounted read-write for one job, and where on it the job writes."""

    place: Place
    where: str  # the filesystem's mount point
    path: str  # the repository directory, or the folder made for copied files
    mount: hwmounts.OurMount | None  # ours to unmount at close; None: mounted read-write by someone else


def writable_refusal(place: Place) -> str | None:
    """Why images cannot be written onto this place, by what it is; None when they can."""
    if place.blank:
        return None
    if _store_options(place.fstype) is None:
        return f"rescue does not write to {place.fstype} filesystems"
    if place.mountpoint and not place.mounted_by_us and place.read_only:
        return f"it is mounted read-only at {place.mountpoint}"
    return None


def open_for_writing(
    place: Place, repo: str | None = None, folder: str | None = None, run_dir: str = RUN_DIR
) -> Opened:
    """Mount `place` read-write (unless someone already has it mounted so) and open the
    repository `repo` on it (a path the survey found), or REPO_FOLDER, made when missing; or
    with `folder` (a relative path), make that folder and open no repository."""
    from rescue.repo.store import Repository

    reason = writable_refusal(place)
    if reason or place.blank:
        raise RefusedError(f"{place.device}: {reason or 'a blank drive must be prepared first'}")
    relative = os.path.relpath(repo, place.mountpoint) if repo and place.mountpoint else folder or REPO_FOLDER
    if relative.startswith("..") or os.path.isabs(relative):
        raise RepoError(f"{repo} is not on {place.device}")
    ours = None
    if place.mountpoint and not place.mounted_by_us:
        where = place.mountpoint  # mounted read-write by the person or the system: used there
    else:
        if place.mountpoint:
            release_place(place)  # the survey's read-only mount
        where = (
            share_dir(place.share, run_dir) if place.share else os.path.join(run_dir, os.path.basename(place.device))
        )
        os.makedirs(where, exist_ok=True)
        if hwmounts.is_mountpoint(where):
            raise RefusedError(f"{where} is already a mount point; not mounting {place.device} over it")
        ours = _mount_rw(place, where)
    opened = Opened(place, where, os.path.join(where, relative), ours)
    try:
        if folder:
            os.makedirs(opened.path, exist_ok=True)
        elif not os.path.exists(os.path.join(opened.path, "rescue-repo.json")):
            if repo:
                raise RepoError(f"{opened.path} is no longer a repository")
            Repository.create(opened.path)
        else:
            Repository.open(opened.path)
    except BaseException:
        close(opened)
        raise
    return opened


def _mount_rw(place: Place, where: str) -> hwmounts.OurMount:
    from rescue.hw import netmount

    if isinstance(place.share, netmount.SmbShare):
        return netmount.mount_smb(place.share, where, read_only=False).ours
    if isinstance(place.share, netmount.NfsExport):
        return netmount.mount_nfs(place.share, where, read_only=False).ours
    return hwmounts.mount(
        place.device, where, mount_type(place.fstype), _store_options(place.fstype) or "", timeout=120
    )


def close(opened: Opened) -> None:
    """Write everything to the drive and unmount what open_for_writing mounted: after this
    returns, the drive can be pulled out."""
    run(["sync", "--file-system", "--", opened.where], check=False, timeout=600)
    if opened.mount is None:
        return
    done = hwmounts.unmount(opened.mount, timeout=600)
    if done is hwmounts.Outcome.BUSY:
        raise DeviceError(f"cannot unmount {opened.where} (still in use); the drive is not safe to remove yet")
    try:
        os.rmdir(opened.where)
    except OSError:
        pass


def prepare(path: str, label: str = LABEL) -> str:
    """Partition and format a blank drive for images (see the module's docstring); returns
    the new partition's node. The caller has asked the safety rules (check_target) first."""
    script = b"label: dos\nstart=2048, type=7\n"
    run(
        ["sfdisk", "--quiet", "--wipe", "always", "--no-reread", "--no-tell-kernel", "--", path],
        input=script,
        error=DeviceError,
    )
    # The kernel learns of the partition from BLKPG (partx), which works on drives that
    # cannot re-read their table as a whole (loop devices without partition scanning).
    run(["partx", "--update", "--", path], error=DeviceError)
    node = _first_partition(path)
    run(["mkfs.exfat", "--volume-label", label, "--", node], error=FilesystemError, timeout=600)
    return node


def _first_partition(path: str, wait: float = 10.0) -> str:
    """Partition 1's node, once the kernel (and devtmpfs or udev) shows it."""
    deadline = time.monotonic() + wait
    while True:
        snap = devices.snapshot()
        ident = snap.identity(path)
        d = snap.devices.get(ident[1]) if ident and ident[0] == "dev" else None
        disk = d["name"] if d else ""
        for name in d["partitions"] if d else []:
            part = snap.by_name(name)
            if part and name in (f"{disk}1", f"{disk}p1") and os.path.exists(part["node"]):
                return part["node"]
        if time.monotonic() > deadline:
            raise DeviceError(f"{path}: the kernel shows no partition 1 after partitioning it")
        time.sleep(0.2)

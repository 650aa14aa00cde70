"""Growing and shrinking a filesystem to a new partition size, for restores onto a smaller or
larger drive.

Each filesystem is resized by its own tool; this module only knows how to drive them safely:
- ext2/3/4: `e2fsck -fy` first (resize2fs refuses an unchecked filesystem), then resize2fs.
- XFS: grows only, and only while mounted; shrinking is refused before anything is touched.
- btrfs: resized while mounted (`btrfs filesystem resize`).
- NTFS: `ntfsresize` (dry run first); the chkdsk mark it sets is cleared if the volume
  was clean before (see _ntfs).
- FAT: done here, not by fatresize (see _fat for why): a grow leaves the filesystem as it
  is, a shrink cuts it short in place when every used cluster already lies below the end.
- swap: recreated with the same UUID and label; it holds nothing worth moving.

Sizes are always passed to the tools explicitly, never "fill the device", so that a device
larger than intended (the staging file of a shrink, a partition rounded up) never decides
the result.

Shrinking during a restore runs on a device of the old size whose first new_size bytes are
the target partition and whose tail is a scratch file (rescue.hw.splitdev, driven by
rescue.imaging.apply)."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
from typing import Callable, Iterator

from rescue.errors import FilesystemError
from rescue.hw.run import output, run

EXT = ("ext2", "ext3", "ext4")
FAT = ("vfat", "msdos", "fat", "fat12", "fat16", "fat32")
MiB = 1 << 20
# The kernel's btrfs_resize() answers EINVAL below this, whatever the data.
BTRFS_MIN_RESIZE = 256 * MiB


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def family(fstype: str) -> str:
    """The resize method for a blkid TYPE: ext, xfs, btrfs, ntfs, fat or swap."""
    if fstype in EXT:
        return "ext"
    if fstype in FAT:
        return "fat"
    if fstype in ("xfs", "btrfs", "ntfs", "swap"):
        return fstype
    raise FilesystemError(f"cannot resize a {fstype} filesystem: no resize method for this type")


def shrink_plan_check(fstype: str, min_size: int | None, new_size: int, *,
                      current_size: int | None = None) -> None:
    """Refuse a size the filesystem cannot reach, before anything is written. min_size is
    FsInfo.min_size from the image (None: unknown, the resize itself decides); current_size
    lets XFS, which cannot shrink at all, be refused here rather than halfway through.

    FAT is shrunk without moving data, so for FAT pass the end of the used data
    (fat.end_of_used), not fat's min_size, which assumes the clusters could be moved."""
    kind = family(fstype)
    if kind == "xfs" and current_size is not None and new_size < current_size:
        raise FilesystemError(f"cannot shrink xfs from {_mib(current_size)} to {_mib(new_size)}: "
                              f"XFS can only grow; choose a partition of at least {_mib(current_size)}")
    if kind == "btrfs" and new_size < BTRFS_MIN_RESIZE:
        raise FilesystemError(f"cannot resize btrfs to {_mib(new_size)}: the kernel resizes btrfs to no less "
                              f"than {_mib(BTRFS_MIN_RESIZE)}")
    if min_size is not None and new_size < min_size:
        raise FilesystemError(f"cannot shrink {fstype} to {_mib(new_size)} ({new_size} bytes): "
                              f"it needs at least {_mib(min_size)} ({min_size} bytes)")


def device_size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def resize_filesystem(fstype: str, device: str, new_size: int, *, label: str | None = None,
                      uuid: str | None = None) -> str:
    """Make the filesystem on `device` fill new_size bytes (rounded down to what the
    filesystem can address). `device` must be at least new_size bytes. label and uuid are
    used only by swap, which is recreated; when absent they are read from the old header.
    Returns one line for the log."""
    kind = family(fstype)
    have = device_size(device)
    if have < new_size:
        raise FilesystemError(f"cannot resize {fstype} on {device} to {_mib(new_size)}: "
                              f"the device holds only {_mib(have)}")
    return _METHODS[kind](fstype, device, new_size, label, uuid)


def _tool(argv: list[str], device: str, *, input: bytes | None = None) -> None:
    """Run a resize tool to the end: no timeout, since checking or moving data on a large
    filesystem takes hours. On failure the message quotes the tool's own "ERROR" line when
    there is one (ntfsresize's last line is only advice), else its last line."""
    proc = run(argv, input=input, check=False, timeout=None)
    if proc.returncode == 0:
        return
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"(error|fatal)\b", ln, re.I) or ": error" in ln.lower()]
    why = (errors or lines or [f"exit status {proc.returncode}"])[0 if errors else -1]
    raise FilesystemError(f"{argv[0]} failed on {device}: {why}")


def _done(fstype: str, device: str, old: int, new: int, tool: str) -> str:
    verb = "grown" if new > old else "shrunk" if new < old else "kept"
    return f"{fstype} on {device} {verb} from {_mib(old)} to {_mib(new)} ({tool})"


@contextlib.contextmanager
def private_mount(device: str, fstype: str, options: str) -> Iterator[str]:
    """A private mount of a restored filesystem (for tools that work only on mounted ones,
    and for rewriting files on it). A restored btrfs shares its fsid with the original and
    other copies: every unmounted btrfs device the kernel saw is forgotten and this one is
    pinned (device=), or the mount may use another; afterwards this one is forgotten too,
    since a stale entry for a loop device detached next makes a later mount pick it."""
    if fstype == "btrfs":
        run(["btrfs", "device", "scan", "--forget"], check=False)
        options = f"{options},device={device}"
    mnt = tempfile.mkdtemp(prefix="rescue-mount-")
    try:
        run(["mount", "-t", fstype, "-o", options, device, mnt])
        try:
            yield mnt
        finally:
            if run(["umount", mnt], check=False, timeout=None).returncode != 0:
                run(["umount", "-l", mnt], check=False)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mnt)
        if fstype == "btrfs":
            run(["btrfs", "device", "scan", "--forget", device], check=False)


# --- ext2/3/4 ------------------------------------------------------------------------------

def ext_size(device: str) -> tuple[int, int]:
    """(block count, block size) from the superblock."""
    text = output(["dumpe2fs", "-h", device])
    count = re.search(r"^Block count:\s+(\d+)", text, re.M)
    bsize = re.search(r"^Block size:\s+(\d+)", text, re.M)
    if not count or not bsize:
        raise FilesystemError(f"dumpe2fs gave no block count for {device}")
    return int(count.group(1)), int(bsize.group(1))


def _ext(fstype: str, device: str, new_size: int, label, uuid) -> str:
    # e2fsck: 0 clean, 1 errors corrected; anything else means the filesystem is not fit to resize.
    proc = run(["e2fsck", "-fy", device], check=False, timeout=None)
    if proc.returncode not in (0, 1):
        last = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        raise FilesystemError(f"e2fsck found errors it could not fix on {device} (exit {proc.returncode})"
                              + (f": {last[-1]}" if last else ""))
    blocks, bsize = ext_size(device)
    old = blocks * bsize
    new_blocks = new_size // bsize
    if new_blocks != blocks:
        _tool(["resize2fs", device, f"{new_blocks * bsize // 1024}K"], device)
    return _done(fstype, device, old, ext_size(device)[0] * bsize, "resize2fs")


# --- XFS -----------------------------------------------------------------------------------

def xfs_size(device: str) -> tuple[int, int]:
    """(data blocks, block size) from the primary superblock."""
    text = output(["xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", device])
    found = dict(re.findall(r"^(\w+) = (\d+)", text, re.M))
    if "dblocks" not in found or "blocksize" not in found:
        raise FilesystemError(f"xfs_db gave no size for {device}")
    return int(found["dblocks"]), int(found["blocksize"])


def _xfs(fstype: str, device: str, new_size: int, label, uuid) -> str:
    blocks, bsize = xfs_size(device)
    old = blocks * bsize
    new_blocks = new_size // bsize
    if new_blocks < blocks:
        shrink_plan_check(fstype, None, new_size, current_size=old)
    if new_blocks == blocks:
        return _done(fstype, device, old, old, "xfs_growfs not needed")
    # nouuid: the source of a clone, with the same UUID, may be mounted at the same time.
    with private_mount(device, "xfs", "nouuid") as mnt:
        _tool(["xfs_growfs", "-D", str(new_blocks), mnt], device)
    return _done(fstype, device, old, xfs_size(device)[0] * bsize, "xfs_growfs")


# --- btrfs ---------------------------------------------------------------------------------

def btrfs_size(device: str) -> int:
    """This device's size as the filesystem records it (dev_item.total_bytes)."""
    text = output(["btrfs", "inspect-internal", "dump-super", device])
    found = re.search(r"^dev_item\.total_bytes\s+(\d+)", text, re.M)
    if not found:
        raise FilesystemError(f"btrfs dump-super gave no device size for {device}")
    return int(found.group(1))


def _btrfs(fstype: str, device: str, new_size: int, label, uuid) -> str:
    old = btrfs_size(device)
    new = new_size // 4096 * 4096  # btrfs sizes are whole sectors
    if new < old:
        shrink_plan_check(fstype, None, new)
    elif new < BTRFS_MIN_RESIZE:
        # The kernel refuses any resize to less than 256 MiB, growing included; the
        # filesystem stays valid at its old size inside the larger partition.
        return f"{fstype} on {device} kept at {_mib(old)}: btrfs cannot be resized below {_mib(BTRFS_MIN_RESIZE)}"
    if new != old:
        with private_mount(device, "btrfs", "rw") as mnt:
            _tool(["btrfs", "filesystem", "resize", str(new), mnt], device)
    return _done(fstype, device, old, btrfs_size(device), "btrfs filesystem resize")


# --- NTFS ----------------------------------------------------------------------------------

def ntfs_size(device: str) -> int:
    """Bytes the volume spans: its sector count plus the backup boot sector after them."""
    from rescue.filesystems.ntfs import parse_boot

    with open(device, "rb") as f:
        boot = parse_boot(f.read(512))
    return (boot.total_sectors + 1) * boot.bytes_per_sector


def ntfs_dirty(device: str) -> bool:
    """Whether the volume is marked for chkdsk (--force: ntfsinfo refuses such a volume)."""
    found = re.search(r"Volume Flags:\s*0x([0-9a-fA-F]+)", output(["ntfsinfo", "--force", "--mft", device]))
    if not found:
        raise FilesystemError(f"ntfsinfo gave no volume flags for {device}")
    return bool(int(found.group(1), 16) & 0x0001)


def _ntfs(fstype: str, device: str, new_size: int, label, uuid) -> str:
    """ntfsresize marks the volume dirty so that Windows runs chkdsk at the next boot. When
    the volume was clean before, we clear that flag again with `ntfsfix -d`: ntfsresize
    checked the whole volume before touching it and refuses an inconsistent one, so the
    chkdsk would only cost the person a long first boot (ntfs-3g mounts it either way). A
    volume that Windows itself had marked for chkdsk keeps the mark."""
    old = ntfs_size(device)
    if old == new_size:
        return _done(fstype, device, old, old, "ntfsresize not needed")
    was_dirty = ntfs_dirty(device)
    base = ["ntfsresize", "--force", "--no-progress-bar", "--size", str(new_size)]
    _tool(base + ["--no-action", device], device, input=b"y\n")
    _tool(base + [device], device, input=b"y\n")
    if not was_dirty:
        _tool(["ntfsfix", "--clear-dirty", device], device)
    note = "; still marked for chkdsk, as before" if was_dirty else ""
    return _done(fstype, device, old, ntfs_size(device), "ntfsresize") + note


# --- FAT -----------------------------------------------------------------------------------

def _fat(fstype: str, device: str, new_size: int, label, uuid) -> str:
    """fatresize (libparted's FAT code) was tried and is not fit for this: on a device
    without a partition table it aborts (libparted assertion); given a partition table it
    refuses 512-byte and 2 KiB clusters ("cannot resize this partition to this size"),
    silently converts FAT16 to FAT32 (breaking boot code), and once made a filesystem
    larger than the size it was asked for, ending past its partition.

    So, without moving any data:
    - grow: the filesystem is left as it is. It stays valid in a larger partition (the boot
      sector says how big it is); making it larger needs a larger FAT, which moves the data
      area and every cluster.
    - shrink: allowed when every used cluster already lies below the new end and the
      cluster count stays within its FAT type (Windows decides FAT12/16/32 by the count
      alone). The boot sector, its FAT32 backup and the FSInfo free count are rewritten;
      the FAT keeps its size (larger than needed is valid) and its unused tail."""
    from rescue.filesystems import fat
    from rescue.filesystems.base import Volume

    vol = Volume(device, 0, device_size(device))
    bpb = fat.read_bpb(vol)
    bps = bpb.bytes_per_sector
    old = bpb.total_sectors * bps
    new_sectors = new_size // bps
    if new_sectors >= bpb.total_sectors:
        return (f"{fstype} on {device} left at {_mib(old)} in {_mib(new_size)}: growing FAT needs a larger "
                f"table and moving every cluster; the filesystem is valid as it is")
    flags = fat.used_flags_all(bpb, fat.read_fats(vol, bpb))
    used_end = fat.end_of_used(bpb, flags)
    new_clusters = (new_sectors - bpb.first_data_sector) // bpb.sectors_per_cluster
    floor = {12: 1, 16: fat.MIN_FAT16_CLUSTERS, 32: fat.MIN_FAT32_CLUSTERS}[bpb.fat_bits]
    if used_end > new_size:
        raise FilesystemError(f"cannot shrink FAT{bpb.fat_bits} on {device} to {_mib(new_size)} ({new_size} bytes): "
                              f"data lies up to {_mib(used_end)} ({used_end} bytes) and FAT is not shrunk by "
                              f"moving data")
    if new_clusters < floor:
        least = bpb.data_offset + floor * bpb.cluster_bytes
        raise FilesystemError(f"cannot shrink FAT{bpb.fat_bits} on {device} to {_mib(new_size)} ({new_size} bytes): "
                              f"FAT{bpb.fat_bits} needs at least {floor} clusters, {_mib(least)} ({least} bytes)")
    new_sectors = bpb.first_data_sector + new_clusters * bpb.sectors_per_cluster  # no partial cluster
    free = new_clusters - flags.count(1)
    fd = os.open(device, os.O_RDWR)
    try:
        boot = bytearray(os.pread(fd, bps, 0))
        _set_total(boot, new_sectors, bpb.fat_bits)
        os.pwrite(fd, bytes(boot), 0)
        if bpb.fat_bits == 32:
            fsinfo, backup = struct.unpack_from("<HH", boot, 48)
            for sector in (fsinfo, backup + 1 if backup not in (0, 0xFFFF) else 0):
                if 0 < sector < bpb.reserved_sectors:
                    _update_fsinfo(fd, sector * bps, free, new_clusters)
            if backup not in (0, 0xFFFF) and backup < bpb.reserved_sectors:
                copy = bytearray(os.pread(fd, bps, backup * bps))
                if copy[510:512] == b"\x55\xaa":
                    _set_total(copy, new_sectors, 32)
                    os.pwrite(fd, bytes(copy), backup * bps)
        os.fsync(fd)
    finally:
        os.close(fd)
    return _done(fstype, device, old, new_sectors * bps, "boot sector rewritten, no data moved")


def _set_total(boot: bytearray, sectors: int, fat_bits: int) -> None:
    """Both total-sector fields: the 16-bit one when it fits (FAT12/16), else the 32-bit one."""
    if fat_bits != 32 and sectors < 0x10000:
        struct.pack_into("<H", boot, 19, sectors)
        struct.pack_into("<I", boot, 32, 0)
    else:
        struct.pack_into("<H", boot, 19, 0)
        struct.pack_into("<I", boot, 32, sectors)


def _update_fsinfo(fd: int, offset: int, free: int, clusters: int) -> None:
    """FSInfo's free count and next-free hint are only hints, but Windows trusts them: a
    free count past the new end would promise space that does not exist."""
    info = bytearray(os.pread(fd, 512, offset))
    if info[0:4] != b"RRaA" or info[484:488] != b"rrAa":
        return
    hint = struct.unpack_from("<I", info, 492)[0]
    if hint != 0xFFFFFFFF and hint >= clusters + 2:
        hint = 0xFFFFFFFF
    struct.pack_into("<II", info, 488, free, hint)
    os.pwrite(fd, bytes(info), offset)


# --- swap ----------------------------------------------------------------------------------

def _swap(fstype: str, device: str, new_size: int, label, uuid) -> str:
    """Nothing in swap survives a reboot; a fresh header of the new size is the resize."""
    from rescue.filesystems.swap import HEADER_SPAN, parse_header

    if uuid is None or label is None:
        with open(device, "rb") as f:
            head = f.read(HEADER_SPAN)
        with contextlib.suppress(FilesystemError):
            old = parse_header(head)
            uuid = uuid or old.uuid
            label = label if label is not None else old.label
    argv = ["mkswap"]
    if uuid:
        argv += ["-U", uuid]
    if label:
        argv += ["-L", label]
    run(argv + [device, str(new_size // 1024)])  # size in KiB, not the device's
    return f"swap on {device} recreated with {_mib(new_size)} (mkswap, same UUID and label)"


_METHODS: dict[str, Callable[..., str]] = {
    "ext": _ext, "xfs": _xfs, "btrfs": _btrfs, "ntfs": _ntfs, "fat": _fat, "swap": _swap,
}

"""Low-level access to a drive or an image file: sizes, sector sizes, zeroing, flushing.

Everything here works on a file descriptor of a whole drive; the engine reads and writes
partitions at byte offsets, never through partition nodes (which may not exist)."""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from rescue.errors import DeviceError

BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
BLKFLSBUF = 0x1261
BLKRRPART = 0x125F
BLKZEROOUT = 0x127F


def is_block(fd: int) -> bool:
    return stat.S_ISBLK(os.fstat(fd).st_mode)


def open_drive(path: str, write: bool = False) -> int:
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC
    if write:
        flags |= os.O_EXCL if _is_block_path(path) else 0
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise DeviceError(f"{path} does not exist") from None
    except OSError as e:
        if e.errno == 16:
            raise DeviceError(f"{path} is busy (opened exclusively by something else)") from None
        raise DeviceError(f"cannot open {path}: {e.strerror}") from None


def _is_block_path(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def size_of(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _ioctl_int(fd: int, request: int, default: int) -> int:
    if not is_block(fd):
        return default
    buf = fcntl.ioctl(fd, request, b"\0" * 4)
    (value,) = struct.unpack("I", buf)
    return int(value)


def logical_sector_size(fd: int) -> int:
    return _ioctl_int(fd, BLKSSZGET, 512)


def physical_sector_size(fd: int) -> int:
    return _ioctl_int(fd, BLKPBSZGET, 512)


ZEROS = bytes(4 << 20)


def write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until every byte is written. The error names the device the descriptor is
    open on (a staging file, a loop device or the target drive), never just "the target"."""
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise DeviceError(f"write error at byte {offset} of {_name(fd)} ({e.strerror})") from None


def _name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "the target"


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read as zeros: BLKZEROOUT on a drive (loop devices turn it
    into a hole punch; disks may use WRITE SAME), plain writes otherwise."""
    if is_block(fd):
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            return
        except OSError:
            pass
    while length > 0:
        n = min(length, len(ZEROS))
        os.pwrite(fd, ZEROS[:n], offset)
        offset += n
        length -= n


def flush(fd: int) -> None:
    """Data on stable storage and the kernel's cached copy dropped, so a read-back reads the
    medium and not what we just wrote into the page cache."""
    os.fsync(fd)
    if is_block(fd):
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError:
            pass


def reread_partitions(fd: int) -> None:
    if is_block(fd):
        try:
            fcntl.ioctl(fd, BLKRRPART, 0)
        except OSError:
            pass  # loop devices without partscan, or partitions busy: the table is on disk anyway

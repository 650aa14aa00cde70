"""Files of a repository on a local filesystem, read and written the careful way: only a regular
file, never through a symbolic link, never more than it can hold; written under a temporary
name, fsynced, renamed. Kept apart from rescue.repo.local so anything that writes files the
repository way (a log, a bad-sector map) uses the same rules."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

MAX_FILE = (4 << 30) - 1  # the largest file FAT32 holds; every repository file stays far below


class FileProblem(Exception):
    """A repository file that must not be read: `reason` says what it is instead."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def kind_of_mode(mode: int) -> str:
    """What a file with these mode bits is, in words: "a FIFO", "a symbolic link", "a file"..."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def kind_of(path: Path) -> str | None:
    """What `path` is, without following a symbolic link; None when it does not exist."""
    try:
        return kind_of_mode(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable ({e.strerror})"


def read_file(path: Path, limit: int, *, confined: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, opened without following a
    symbolic link in its last two components (the file and, when `confined`, the directory
    holding it: a directory inside the repository; the repository itself may be reached
    through a link). FileNotFoundError when it is missing, FileProblem for anything else."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if confined else 0)
    try:
        dir_fd = os.open(path.parent, dir_flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise FileProblem(f"is in {_dir_problem(path.parent, e)}") from None
    try:
        fd = os.open(path.name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileProblem("is a symbolic link") from None
        raise FileProblem(f"is unreadable ({e.strerror})") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(f"is {kind_of_mode(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise FileProblem(f"is {st.st_size} bytes, more than the {limit} it can be")
        parts, left = [], limit + 1
        while left > 0:
            block = os.read(fd, min(left, 16 << 20))
            if not block:
                break
            parts.append(block)
            left -= len(block)
        if left <= 0:
            raise FileProblem(f"grows beyond the {limit} bytes it can be")
        return b"".join(parts)
    except OSError as e:
        raise FileProblem(f"is unreadable ({e.strerror})") from None
    finally:
        os.close(fd)


def _dir_problem(path: Path, e: OSError) -> str:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{path.name}, which is {kind_of(path) or 'missing'}, not a directory"
    return f"{path.name}, which is unreadable ({e.strerror})"


def temp_name(path: Path) -> Path:
    """Where `path` is written before its rename: a hidden name of the same directory, valid on
    FAT, exFAT and NTFS (no ':' or '~', at most 64 + 14 characters for a chunk) and matched by
    rescue.imaging.capture.TEMP_PATTERNS, so a killed writer's leftovers are found."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, and fsync it: written in one go, never
    reopened for appending (fusefat, the FUSE FAT driver tests use, refuses appends)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable. Some FUSE filesystems answer fsync of a directory
    with EINVAL (they have nothing to flush there, or cannot): that one answer is taken as
    done, since the files themselves were fsynced; any other error is a real one."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize

"""A block device of a filesystem's OLD size whose first NEW_SIZE bytes are the target drive
(at the partition's final place) and whose remaining bytes are a sparse scratch file, so that
a filesystem can be shrunk while it is being restored onto a smaller partition.

Why: restoring onto a smaller drive must shrink a filesystem whose image is larger than its
new partition. Shrinking a full-size copy in a staging file costs the whole filesystem in
scratch space (RAM on the live ISO). Here the bytes that lie inside the new partition are
written straight to the target, and only the bytes past its end go to the scratch file. The
resize tool (resize2fs, ntfsresize, btrfs, our FAT code) sees one device of the old size:

    device bytes [0, new_size)         -> target, bytes [target_offset, target_offset + new_size)
    device bytes [new_size, old_size)  -> scratch file, bytes [0, old_size - new_size)

It moves the tail's used blocks into the front; afterwards the whole shrunk filesystem is on
the target and the scratch file is deleted. Scratch space used = what lay past the new end
plus what the tool writes there, not the size of the data.

How: this host kernel (and many others) has neither device-mapper nor nbd, so the
concatenation is a FUSE file (`dev`) served by this module run as a program, with a loop
device over it. The server is a separate process, never a thread of the caller:
- the loop driver's I/O then never waits on a thread of the process that issued it (a
  loop device over a FUSE file served by the same process deadlocks as soon as that
  process blocks in the kernel on the device, e.g. in fsync or close);
- a crash of the server (or of llfuse) cannot take the caller down: the device then fails
  every request with an error, and the caller reports it;
- the server marks itself PR_SET_IO_FLUSHER, so its own memory allocations never wait on
  the writeback of the loop device it serves (the classic loop-over-FUSE reclaim deadlock).
  That needs CAP_SYS_RESOURCE: root on the live system has it; where it is missing (some
  containers) the server logs a note and goes on.

The FUSE mount point and the server's log live in a private directory under /run/rescue
(RAM, cleared at boot); the scratch file wherever the caller says (it is the one that grows).
The work directory, the scratch file, the FUSE mount, the server and the loop device are
each kept in rescue.hw.leftovers' registry from before they exist until they are gone: when
the caller and the server are both killed, the next run of rescue clears them.

The server exits with status 1 if any I/O failed during its life (each failure is logged
to its stderr with the file and byte), so a failed write that the resize tool ignored or
did not see still fails the session (split_device raises when the block ends).

Run as a program by split_device:
    python3 -m rescue.hw.splitdev TARGET OFFSET NEW_SIZE OLD_SIZE SCRATCH_FILE MOUNTPOINT [--owner PID]
It stays in the foreground until unmounted or sent SIGTERM; messages go to stderr. With
--owner, it also stops (detaching loop devices over its file and deleting the scratch file)
when that process is gone, so a caller killed with SIGKILL leaves no device behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from rescue.errors import DeviceError, RescueError
from rescue.hw import leftovers
from rescue.hw import mounts as hwmounts
from rescue.hw.fuseproc import STOP_TIMEOUT, first_error, python_with_llfuse, serve_main

PROGRAM = "rescue splitdev"
SERVER_MODULE = "rescue.hw.splitdev"
DEV_NAME = "dev"
FSNAME = "rescue-splitdev"  # the FUSE mount's source in mountinfo
DEV_INODE = 2  # llfuse.ROOT_INODE is 1
SECTOR = 512
# libfuse 2 (llfuse) receives at most 128 KiB per request, and the kernel sends no more
# without FUSE_MAX_PAGES (libfuse 3 only): big_writes + max_write at that size means one
# request per 128 KiB instead of one per 4 KiB page.
MAX_IO = 128 * 1024
START_TIMEOUT = 30.0
SERVER_THREADS = 4
PR_SET_IO_FLUSHER = 57


class Piece(NamedTuple):
    """One part of a device range that lies in one backing file."""

    scratch: bool  # False: the target, True: the scratch file
    offset: int  # byte offset in that file
    start: int  # where the piece starts within the request
    length: int


def split_range(pos: int, length: int, new_size: int, target_offset: int) -> list[Piece]:
    """The target and scratch parts of device bytes [pos, pos + length), in order. A range
    that straddles new_size gives two pieces."""
    pieces = []
    end = pos + length
    if pos < new_size:
        n = min(end, new_size) - pos
        pieces.append(Piece(False, target_offset + pos, 0, n))
    if end > new_size:
        lo = max(pos, new_size)
        pieces.append(Piece(True, lo - new_size, lo - pos, end - lo))
    return pieces


class SplitIO:
    """Reads and writes device bytes on the two backing files. Used by the FUSE server and
    by SplitDevice.write (the caller's fast path), so both route bytes the same way.

    Never a short read: the kernel would fill the rest of the page with zeros and the resize
    tool would take them for data. A read or write that cannot be completed raises OSError
    whose message names the file and its byte."""

    def __init__(
        self,
        target: str,
        target_fd: int,
        target_offset: int,
        new_size: int,
        old_size: int,
        scratch: str,
        scratch_fd: int,
    ):
        self.target, self.tfd, self.target_offset = target, target_fd, target_offset
        self.scratch, self.sfd = scratch, scratch_fd
        self.new_size, self.old_size = new_size, old_size

    def _where(self, piece: Piece) -> tuple[int, str]:
        return (self.sfd, self.scratch) if piece.scratch else (self.tfd, self.target)

    def read(self, pos: int, length: int) -> bytes:
        parts = []
        for piece in split_range(pos, length, self.new_size, self.target_offset):
            fd, name = self._where(piece)
            parts.append(_pread_full(fd, piece.length, piece.offset, name))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for piece in split_range(pos, len(view), self.new_size, self.target_offset):
            fd, name = self._where(piece)
            _pwrite_full(fd, view[piece.start : piece.start + piece.length], piece.offset, name)

    def fsync(self) -> None:
        for fd, name in ((self.tfd, self.target), (self.sfd, self.scratch)):
            try:
                os.fsync(fd)
            except OSError as e:
                raise OSError(e.errno, f"fsync of {name} failed: {e.strerror}") from None


def _pread_full(fd: int, length: int, offset: int, name: str) -> bytes:
    buf = bytearray()
    while len(buf) < length:
        at = offset + len(buf)
        try:
            data = os.pread(fd, length - len(buf), at)
        except OSError as e:
            raise OSError(e.errno, f"read of {name} at byte {at} failed: {e.strerror}") from None
        if not data:
            raise OSError(errno.EIO, f"read of {name} at byte {at} failed: the file ends there")
        if not buf and len(data) == length:
            return data
        buf += data
    return bytes(buf)


def _pwrite_full(fd: int, data: memoryview, offset: int, name: str) -> None:
    done = 0
    while done < len(data):
        at = offset + done
        try:
            n = os.pwrite(fd, data[done:], at)
        except OSError as e:
            raise OSError(e.errno, f"write of {name} at byte {at} failed: {e.strerror}") from None
        if n <= 0:
            raise OSError(errno.ENOSPC, f"write of {name} at byte {at} failed: no space")
        done += n


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {PROGRAM}: {msg}", file=sys.stderr, flush=True)


def _file_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def check_sizes(target_offset: int, new_size: int, old_size: int) -> None:
    """Sizes in whole sectors (the loop device has 512-byte sectors, and partitions are
    sector-aligned anyway), and a real shrink."""
    if target_offset < 0 or target_offset % SECTOR:
        raise DeviceError(f"split device: target offset {target_offset} is not a multiple of {SECTOR}")
    if new_size <= 0 or new_size % SECTOR or old_size % SECTOR:
        raise DeviceError(f"split device: sizes {new_size} and {old_size} must be positive multiples of {SECTOR}")
    if new_size >= old_size:
        raise DeviceError(f"split device: new size {new_size} is not smaller than the old size {old_size}")


# -- the server (its own process) ------------------------------------------------------------


def _io_flusher() -> str:
    """Mark this process as part of the I/O path (PR_SET_IO_FLUSHER, Linux 5.6, root):
    its allocations then never wait for the writeback of the device it serves. Called
    before llfuse starts its worker threads, which inherit the flag."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
            return os.strerror(ctypes.get_errno())
    except OSError as e:
        return str(e)
    return ""


def _watch_owner(owner: int, mountpoint: str, scratch: str, orphaned: threading.Event) -> None:
    """Wait until the owner process is gone (a pidfd: exact, whatever pids are reused),
    then undo what it can no longer undo and stop serving."""
    try:
        pidfd = os.pidfd_open(owner)
    except OSError:
        pidfd = None
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll()
    else:  # pidfd_open needs Linux 5.3; poll the pid instead
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
    log(f"the owner process {owner} is gone: detaching loop devices over {mountpoint}/{DEV_NAME} and stopping")
    # Any loop device over our file is the owner's (the kernel autoclears one still open by
    # someone when they close it).
    hwmounts.detach_loops_over(os.path.join(mountpoint, DEV_NAME))
    with contextlib.suppress(OSError):
        os.unlink(scratch)
    orphaned.set()
    os.kill(os.getpid(), signal.SIGTERM)  # llfuse.main returns on SIGTERM


def serve(
    target: str,
    target_offset: int,
    new_size: int,
    old_size: int,
    scratch: str,
    mountpoint: str,
    owner: int | None = None,
    workers: int = SERVER_THREADS,
) -> int:
    """Serve the split file until unmounted. Returns the exit status: 0, or 1 when any
    I/O failed (each failure was logged)."""
    import llfuse  # only the server process needs it

    check_sizes(target_offset, new_size, old_size)
    try:
        tfd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise DeviceError(f"cannot open the target {target}: {e.strerror}") from None
    try:
        sfd = os.open(scratch, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        os.close(tfd)
        raise DeviceError(f"cannot open the scratch file {scratch}: {e.strerror}") from None
    if _file_size(tfd) < target_offset + new_size:
        raise DeviceError(
            f"{target} holds {_file_size(tfd)} bytes, less than offset {target_offset} + new size {new_size}"
        )
    if _file_size(sfd) < old_size - new_size:
        raise DeviceError(
            f"scratch file {scratch} holds {_file_size(sfd)} bytes, less than the "
            f"{old_size - new_size} past the new end"
        )
    io = SplitIO(target, tfd, target_offset, new_size, old_size, scratch, sfd)
    started = time.time_ns()
    failures = [0]

    def failed(what: str, e: OSError) -> llfuse.FUSEError:
        failures[0] += 1
        log(f"error: {what}: {e.strerror or e}")
        # ENOSPC stays ENOSPC (the loop driver turns it into BLK_STS_NOSPC and the tool says
        # "No space left"); every other failure is EIO, as a failing drive would give.
        return llfuse.FUSEError(errno.ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO)

    class SplitFS(llfuse.Operations):  # type: ignore[misc]  # llfuse has no type information
        def _attr(self, inode: int) -> llfuse.EntryAttributes:
            a = llfuse.EntryAttributes()
            a.st_ino = inode
            if inode == llfuse.ROOT_INODE:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o700, 2, 0
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o600, 1, old_size
            a.st_uid = a.st_gid = 0
            a.st_blksize = MAX_IO
            a.st_blocks = (a.st_size + 511) // 512
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = started
            a.attr_timeout = a.entry_timeout = 3600
            return a

        def getattr(self, inode: int, ctx: llfuse.RequestContext | None = None) -> llfuse.EntryAttributes:
            if inode not in (llfuse.ROOT_INODE, DEV_INODE):
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inode)

        def setattr(
            self,
            inode: int,
            attr: llfuse.EntryAttributes,
            fields: llfuse.SetattrFields,
            fh: int | None,
            ctx: llfuse.RequestContext,
        ) -> llfuse.EntryAttributes:
            # The device's size is fixed: a truncate to another size is refused, times are
            # accepted and ignored.
            if inode != DEV_INODE and fields.update_size:
                raise llfuse.FUSEError(errno.EISDIR)
            if fields.update_size and attr.st_size != old_size:
                raise llfuse.FUSEError(errno.EPERM)
            return self._attr(inode)

        def lookup(self, parent: int, name: bytes, ctx: llfuse.RequestContext | None = None) -> llfuse.EntryAttributes:
            if parent != llfuse.ROOT_INODE or name != DEV_NAME.encode():
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(DEV_INODE)

        def opendir(self, inode: int, ctx: llfuse.RequestContext) -> int:
            if inode != llfuse.ROOT_INODE:
                raise llfuse.FUSEError(errno.ENOTDIR)
            return inode

        def readdir(self, fh: int, off: int) -> Iterator[tuple[bytes, llfuse.EntryAttributes, int]]:
            if off == 0:
                yield DEV_NAME.encode(), self._attr(DEV_INODE), 1

        def open(self, inode: int, flags: int, ctx: llfuse.RequestContext) -> int:
            if inode != DEV_INODE:
                raise llfuse.FUSEError(errno.EISDIR)
            return inode

        def read(self, fh: int, off: int, size: int) -> bytes:
            size = min(size, old_size - off)
            if size <= 0:
                return b""
            try:
                with llfuse.lock_released:
                    return io.read(off, size)
            except OSError as e:
                raise failed(f"read of {size} bytes at device byte {off}", e) from None

        def write(self, fh: int, off: int, buf: bytes) -> int:
            if off + len(buf) > old_size:
                log(f"error: write of {len(buf)} bytes at device byte {off} goes past the end ({old_size})")
                failures[0] += 1
                raise llfuse.FUSEError(errno.ENOSPC)
            try:
                with llfuse.lock_released:
                    io.write(off, buf)
            except OSError as e:
                raise failed(f"write of {len(buf)} bytes at device byte {off}", e) from None
            return len(buf)

        def fsync(self, fh: int, datasync: bool) -> None:
            self._sync()

        def flush(self, fh: int) -> None:
            self._sync()

        def _sync(self) -> None:
            try:
                with llfuse.lock_released:
                    io.fsync()
            except OSError as e:
                raise failed("fsync", e) from None

        def release(self, fh: int) -> None:
            pass

        def statfs(self, ctx: llfuse.RequestContext) -> llfuse.StatvfsData:
            s = llfuse.StatvfsData()
            s.f_bsize = s.f_frsize = SECTOR
            s.f_blocks = old_size // SECTOR
            s.f_bfree = s.f_bavail = 0
            s.f_files, s.f_ffree, s.f_favail = 2, 0, 0
            s.f_namemax = 255
            return s

    why = _io_flusher()
    if why:
        log(f"PR_SET_IO_FLUSHER not set ({why}); continuing")
    options = set(llfuse.default_options) | {
        f"fsname={FSNAME}",
        "subtype=rescue-splitdev",
        f"max_write={MAX_IO}",
        f"max_read={MAX_IO}",
    }
    options.discard("default_permissions")  # only root uses it, and no check is needed per call
    llfuse.init(SplitFS(), mountpoint, options)
    log(
        f"serving {target} bytes {target_offset}+{new_size} and {scratch} as a {old_size}-byte device at "
        f"{mountpoint}/{DEV_NAME} (pid {os.getpid()})"
    )
    orphaned = threading.Event()
    if owner is not None:
        threading.Thread(target=_watch_owner, args=(owner, mountpoint, scratch, orphaned), daemon=True).start()
    try:
        llfuse.main(workers=workers)
    finally:
        llfuse.close(unmount=True)
        try:
            io.fsync()
        except OSError as e:
            failed("final fsync", e)
        os.close(tfd)
        os.close(sfd)
        if orphaned.is_set():  # nobody else will; the log beside it stays as the record
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
    log(f"stopped ({failures[0]} failed requests)")
    return 1 if failures[0] else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python3 -m {SERVER_MODULE}", description="Serve a target range plus a scratch file as one file (FUSE)."
    )
    p.add_argument("target")
    p.add_argument("offset", type=int)
    p.add_argument("new_size", type=int)
    p.add_argument("old_size", type=int)
    p.add_argument("scratch")
    p.add_argument("mountpoint")
    p.add_argument("--owner", type=int, help="stop when this process is gone")
    p.add_argument("--threads", type=int, default=SERVER_THREADS)
    args = p.parse_args(argv)
    return serve_main(
        lambda: serve(
            args.target,
            args.offset,
            args.new_size,
            args.old_size,
            args.scratch,
            args.mountpoint,
            args.owner,
            max(1, args.threads),
        ),
        args.mountpoint,
        log,
    )


# -- the caller's side -----------------------------------------------------------------------


@dataclass
class SplitDevice:
    """The device of a split_device block. `path` is the loop device of old_size bytes;
    `scratch` the file that holds the bytes past new_size."""

    target: str
    target_offset: int
    new_size: int
    old_size: int
    scratch: Path
    server_pid: int
    _io: SplitIO = field(repr=False)
    _loop: str | None = field(default=None, repr=False)
    _dio: bool = field(default=False, repr=False)
    fuse_file: Path | None = field(default=None, repr=False)  # what the loop device reads and writes

    @property
    def path(self) -> str:
        if self._loop is None:
            raise DeviceError(
                f"the split device over {self.target} has no loop device yet (write_into runs before it is attached)"
            )
        return self._loop

    @property
    def direct_io(self) -> bool:
        """Whether the loop device reads and writes the FUSE file with O_DIRECT."""
        return self._dio

    def scratch_bytes(self) -> int:
        """Bytes the scratch file occupies on its filesystem (allocated, not its size)."""
        try:
            return os.stat(self.scratch).st_blocks * 512
        except OSError as e:
            raise DeviceError(f"cannot stat the scratch file {self.scratch}: {e.strerror}") from None

    def write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes of the old-size filesystem at device byte `pos` straight to the target
        (below new_size) and the scratch file (past it), not through FUSE: the fast path for
        the image's chunks before the resize runs.

        Caches: bytes written inside split_device's write_into (before the loop device is
        attached) need nothing, since no cache of the device exists yet; that is the way to
        use it. Written later, the range is dropped from the loop device's page cache and,
        when the loop device reads its file without direct I/O, from the FUSE file's page
        cache (POSIX_FADV_DONTNEED, which drops clean pages; FUSE writes are write-through
        here, so its pages are never dirty). A page that something reads through the
        device at the same moment, or that was written through the device and not yet
        synced, can still hold the old bytes: never mix the two ways of writing a range."""
        if pos < 0 or pos + len(data) > self.old_size:
            raise DeviceError(
                f"split device over {self.target}: write of {len(data)} bytes at {pos} is outside "
                f"its {self.old_size} bytes"
            )
        try:
            self._io.write(pos, data)
        except OSError as e:
            raise DeviceError(str(e.strerror or e)) from None
        if self._loop is not None:
            self._drop_cached(pos, len(data))

    def read(self, pos: int, length: int) -> bytes:
        """Device bytes read straight from the target and scratch file (not through FUSE)."""
        try:
            return self._io.read(pos, min(length, max(0, self.old_size - pos)))
        except OSError as e:
            raise DeviceError(str(e.strerror or e)) from None

    def _drop_cached(self, pos: int, length: int) -> None:
        page = 4096
        lo, hi = pos // page * page, -(-(pos + length) // page) * page
        paths = [self.path] + ([] if self._dio or self.fuse_file is None else [str(self.fuse_file)])
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise DeviceError(f"cannot open {p} to drop its cache: {e.strerror}") from None
            try:
                os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def sync(self) -> None:
        """Flush the direct writes of `write` to the target and scratch file."""
        try:
            self._io.fsync()
        except OSError as e:
            raise DeviceError(str(e.strerror or e)) from None


class _Session:
    """What split_device set up, undone in reverse order by close(), each step only if it
    was done, whatever failed before."""

    def __init__(self, target: str, work: Path):
        self.target = target
        self.work = work
        self.mnt = work / "mnt"
        self.log = work / "server.log"
        self.scratch: Path | None = None
        self.tfd: int | None = None
        self.sfd: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.loop: hwmounts.OurLoop | None = None
        self.work_key = ""  # leftovers registry keys of what is ours
        self.scratch_key = ""
        self.server_key = ""

    @property
    def fuse_file(self) -> Path:
        return self.mnt / DEV_NAME

    def server_gone(self) -> str:
        """Why the server is not running ("" while it runs)."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        rc = self.proc.returncode
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        why = first_error(self.log, PROGRAM)
        return f"the split-device server for {self.target} {how}" + (f": {why}" if why else "")

    def start_server(self, argv: list[str]) -> int:
        """Start the server process and wait until its FUSE file is there; its pid."""
        self.mnt.mkdir()
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        fuse = hwmounts.OurMount(FSNAME, str(self.mnt))
        leftovers.record("mount", leftovers.mount_stem(fuse.source, fuse.where), {"mount": fuse.to_json()})
        with open(self.log, "ab") as logf:
            proc = self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env, cwd="/", start_new_session=True
            )
        server = leftovers.Owner.of(proc.pid)
        if server is not None:
            self.server_key = leftovers.record(
                "process", f"process-{proc.pid}", {"process": server.to_json(), "what": "split-device server"}
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            gone = self.server_gone()
            if gone:
                raise DeviceError(gone)
            if hwmounts.is_mountpoint(self.mnt) and self.fuse_file.exists():
                return proc.pid
            time.sleep(0.02)
        raise DeviceError(
            f"the split-device server for {self.target} did not start within {START_TIMEOUT:.0f} s (see {self.log})"
        )

    def attach(self) -> tuple[str, bool]:
        """A loop device over the FUSE file, with direct I/O when the kernel takes it. Why
        direct I/O: the loop driver then sends each request to the server at once, at its
        own offset and size, and keeps no second page cache of the FUSE file that the
        caller's direct writes would have to invalidate."""
        self.loop = hwmounts.attach(self.fuse_file, direct_io=True, error=DeviceError)
        return self.loop.device, hwmounts.direct_io(self.loop.device)

    def detach_loop(self) -> list[str]:
        ours, self.loop = self.loop, None
        if ours is None:
            return []
        hwmounts.detach(ours, error=DeviceError)  # only while it is still ours
        return []

    def sync_loop(self) -> list[str]:
        """fsync of the loop device: its page cache to the FUSE file, then a flush, which the
        server answers with fsync of the target and the scratch file."""
        if self.loop is None:
            return []
        dev = self.loop.device
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            return [f"cannot open {dev} to sync it: {e.strerror}"]
        try:
            os.fsync(fd)
        except OSError as e:
            return [f"syncing {dev} (the split device over {self.target}) failed: {e.strerror}"]
        finally:
            os.close(fd)
        return []

    def unmount(self) -> None:
        """The server's FUSE mount (its fsname names it), lazily when busy."""
        hwmounts.unmount(hwmounts.OurMount(FSNAME, str(self.mnt)), lazy=True)

    def stop_server(self) -> list[str]:
        """The server exits by itself once unmounted; a hung one is signalled. Its exit
        status says whether any of its I/O failed."""
        if self.proc is None:
            return []
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        signalled = False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            signalled = True
            with contextlib.suppress(OSError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            return [f"the split-device server for {self.target} (pid {self.proc.pid}) does not stop"]
        if self.server_key:
            leftovers.forget(self.server_key)
        if self.proc.returncode != 0 and not signalled:
            return [self.server_gone()]
        if signalled:
            return [f"the split-device server for {self.target} did not stop when unmounted (see {self.log})"]
        return []

    def close(self) -> list[str]:
        """Undo everything; return what went wrong (nothing raised, so that the error of
        the block, if any, is the one the caller sees)."""
        dead = self.server_gone()  # before teardown: the cause comes first, not its effects
        problems: list[str] = [dead] if dead else []
        steps: list[Callable[[], list[str] | None]] = [
            self.sync_loop,
            self.sync_own,
            self.detach_loop,
            self.unmount,
            self.stop_server,
            self.remove_files,
        ]
        for step in steps:
            try:
                problems += step() or []
            except (RescueError, OSError) as e:
                problems.append(str(e))
        return list(dict.fromkeys(problems))

    def sync_own(self) -> list[str]:
        problems = []
        for fd, name in ((self.tfd, self.target), (self.sfd, str(self.scratch))):
            if fd is None:
                continue
            try:
                os.fsync(fd)
            except OSError as e:
                problems.append(f"fsync of {name} failed: {e.strerror}")
            os.close(fd)
        self.tfd = self.sfd = None
        return problems

    def remove_files(self) -> None:
        if self.scratch is not None:
            with contextlib.suppress(FileNotFoundError):
                self.scratch.unlink()
            leftovers.forget(self.scratch_key)
        if not hwmounts.is_mountpoint(self.mnt):
            with contextlib.suppress(OSError):
                self.mnt.rmdir()
        # The log goes with the work directory; its first error is already in the message.
        if not self.mnt.exists():
            with contextlib.suppress(FileNotFoundError):
                self.log.unlink()
            with contextlib.suppress(OSError):
                self.work.rmdir()
        if not self.work.exists():
            leftovers.forget(self.work_key)


def _work_root() -> Path:
    """/run/rescue (leftovers.run_dir) when we may write there (RAM on every system,
    cleared at boot), else the default temporary directory."""
    root = leftovers.run_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(os.path.realpath(root))
    except OSError:
        return Path(os.path.realpath(tempfile.gettempdir()))


@contextlib.contextmanager
def split_device(
    target: str,
    target_offset: int,
    new_size: int,
    old_size: int,
    scratch_dir: str | os.PathLike[str],
    write_into: Callable[[SplitDevice], None] | None = None,
) -> Iterator[SplitDevice]:
    """A block device of old_size bytes: [0, new_size) is `target` from byte target_offset,
    [new_size, old_size) a sparse scratch file in scratch_dir. Shrink a filesystem on
    SplitDevice.path to at most new_size (e.g. resize.resize_filesystem) and its bytes are
    all on the target when the block ends.

    write_into(sd), if given, runs before the loop device is attached: write the image's
    bytes there with sd.write (straight to the files, no cache to invalidate).

    On exit (also on an exception or KeyboardInterrupt) the device is synced, the loop
    device detached, the FUSE file unmounted, the server stopped and the scratch file and
    work directory deleted. A block that ended normally raises DeviceError when data may not
    have reached the target (a failed sync, or I/O that failed in the server); a block
    that failed keeps its own error, prefixed by the server's death when that is the cause."""
    check_sizes(target_offset, new_size, old_size)
    scratch_dir = Path(scratch_dir)
    if not scratch_dir.is_dir():
        raise DeviceError(f"scratch directory {scratch_dir} does not exist")
    work, work_key = leftovers.make_dir(_work_root(), "splitdev-")
    sess = _Session(target, work)
    sess.work_key = work_key
    ok = False
    try:
        try:
            sess.tfd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"cannot open the target {target}: {e.strerror}") from None
        have = _file_size(sess.tfd)
        if have < target_offset + new_size:
            raise DeviceError(f"{target} holds {have} bytes, too few for {new_size} bytes at offset {target_offset}")
        scratch, fd, sess.scratch_key = leftovers.make_file(scratch_dir, "rescue-split-", ".scratch", "scratch file")
        name = str(scratch)
        sess.scratch, sess.sfd = scratch, fd
        try:
            os.ftruncate(fd, old_size - new_size)
        except OSError as e:
            raise DeviceError(
                f"cannot size the scratch file {name} to {old_size - new_size} bytes: "
                f"{e.strerror} (it needs sparse files)"
            ) from None
        pid = sess.start_server(
            [
                python_with_llfuse(),
                "-m",
                SERVER_MODULE,
                target,
                str(target_offset),
                str(new_size),
                str(old_size),
                name,
                str(sess.mnt),
                "--owner",
                str(os.getpid()),
            ]
        )
        sd = SplitDevice(
            target,
            target_offset,
            new_size,
            old_size,
            sess.scratch,
            pid,
            SplitIO(target, sess.tfd, target_offset, new_size, old_size, name, fd),
            fuse_file=sess.fuse_file,
        )
        if write_into is not None:
            write_into(sd)
        sd._loop, sd._dio = sess.attach()
        yield sd
        ok = True
    except (RescueError, OSError) as e:
        # The tool's error ("Input/output error", "No space left") says little; what the
        # device failed at says why: the server's death, or its first failed request (a full
        # scratch directory, a failing target).
        cause = sess.server_gone() or first_error(sess.log, PROGRAM, any_line=False)
        if cause and cause not in str(e):
            raise DeviceError(f"{cause}; then: {e}") from e
        raise
    finally:
        problems = sess.close()
    if ok and problems:
        raise DeviceError(problems[0])


if __name__ == "__main__":
    raise SystemExit(main())

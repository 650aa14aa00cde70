"""A real block device with bad sectors, for tests: no dm-error, scsi_debug or nbd here.

A small FUSE filesystem (llfuse, run in its own process) shows one file, `disk`, whose
reads return a backing file's bytes, except that any read touching a bad range fails
with EIO (after `bad_delay` seconds, as a dying drive takes 0.5-2 s to give up on a sector)
and any read touching a slow range is delayed. A read-only loop device over
that file is then a block device whose bad sectors behave like a failing drive's: the
error reaches the reader through the block layer, not through a mock. Its twin without
root or kernel is tests/unit/test_badpass.py's MemoryDevice, a block source for the
bad-sector passes alone (rescue.model.badpass): this one tests the adapter, O_DIRECT and
the timeouts of rescue.hw.badread on a real block device.

Run as a program (the fixture does this):
    python3 tests/faulty_disk.py BACKING MOUNTPOINT --bad START:LEN ... --slow START:LEN:SECONDS
        [--bad-delay SECONDS]
Ranges are in bytes; `--bad-delay` is what each failed read costs (default 0: tests keep
CI fast; tests/bench/badsectors.py uses a real drive's pace). `--log FILE` records every
read request the kernel sent (offset, size, result), which is how the loop/FUSE behaviour
described in faulty_block_device was found.

Why the loop device uses direct I/O: the page cache in front of a FUSE file turns one bad
512-byte sector into a failed 4 KiB page (and reads ahead around it). llfuse (libfuse2's
low-level API) cannot set FOPEN_DIRECT_IO on open nor accept a `direct_io` mount option,
so the loop device is attached with `--direct-io=on`: it then reads the FUSE file with
O_DIRECT and every read reaches this process at the offset and size the loop driver asked
for. If the kernel refuses direct I/O, the fixture falls back to a plain loop, and errors
then show in 4 KiB pages (tests read /sys/block/loopN/loop/dio to know which).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SECTOR = 512
DISK_INODE = 2
DISK_NAME = b"disk"


class _Ranges:
    """Sorted, non-overlapping byte ranges with a fast 'does [off, end) touch one' query."""

    def __init__(self, ranges: Sequence[tuple[int, int, float]]):
        self.items = sorted((s, s + n, v) for s, n, v in ranges if n > 0)
        self.starts = [s for s, _, _ in self.items]

    def touching(self, off: int, end: int) -> list[tuple[int, int, float]]:
        i = max(0, bisect.bisect_right(self.starts, off) - 1)
        out = []
        while i < len(self.items) and self.items[i][0] < end:
            s, e, v = self.items[i]
            if e > off:
                out.append((s, e, v))
            i += 1
        return out


def _serve(
    backing: str,
    mountpoint: str,
    bad: list[tuple[int, int]],
    slow: list[tuple[int, int, float]],
    log: str | None,
    bad_delay: float = 0.0,
) -> None:
    import llfuse  # only the server process needs it

    fd = os.open(backing, os.O_RDONLY)
    size = os.fstat(fd).st_size
    bad_ranges = _Ranges([(s, n, 0.0) for s, n in bad])
    slow_ranges = _Ranges(slow)
    logf = open(log, "a", buffering=1) if log else None

    class Faulty(llfuse.Operations):
        def _attr(self, inode: int) -> llfuse.EntryAttributes:
            a = llfuse.EntryAttributes()
            a.st_ino = inode
            if inode == llfuse.ROOT_INODE:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o555, 2, 0
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, size
            a.st_uid, a.st_gid = os.getuid(), os.getgid()
            a.st_blksize, a.st_blocks = SECTOR, (a.st_size + SECTOR - 1) // SECTOR
            a.attr_timeout = a.entry_timeout = 3600
            return a

        def getattr(self, inode, ctx=None):
            if inode not in (llfuse.ROOT_INODE, DISK_INODE):
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inode)

        def lookup(self, parent, name, ctx=None):
            if parent != llfuse.ROOT_INODE or name != DISK_NAME:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(DISK_INODE)

        def opendir(self, inode, ctx):
            if inode != llfuse.ROOT_INODE:
                raise llfuse.FUSEError(errno.ENOTDIR)
            return inode

        def readdir(self, fh, off):
            if off == 0:
                yield DISK_NAME, self._attr(DISK_INODE), 1

        def open(self, inode, flags, ctx):
            if inode != DISK_INODE:
                raise llfuse.FUSEError(errno.EISDIR)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise llfuse.FUSEError(errno.EROFS)
            return inode

        def read(self, fh, off, length):
            end = off + length
            failed = bad_ranges.touching(off, end)
            delay = max((v for _, _, v in slow_ranges.touching(off, end)), default=0.0)
            if failed:
                delay = max(delay, bad_delay)
            if delay:
                # llfuse runs handlers under one global lock: release it so that a slow (or
                # failing) read delays only the requests that touch the slow range. (The loop driver sends
                # one request at a time anyway, so later reads of the device still wait, as
                # they do behind a real drive busy retrying a sector.)
                with llfuse.lock_released:
                    time.sleep(delay)
            data = b"" if failed else os.pread(fd, length, off)
            if logf:
                logf.write(f"{off} {length} {'EIO' if failed else 'ok'}\n")
            if failed:
                raise llfuse.FUSEError(errno.EIO)
            return data

        def statfs(self, ctx):
            s = llfuse.StatvfsData()
            s.f_bsize = s.f_frsize = SECTOR
            s.f_blocks = (size + SECTOR - 1) // SECTOR
            s.f_bfree = s.f_bavail = 0
            s.f_files, s.f_ffree, s.f_favail = 2, 0, 0
            s.f_namemax = 255
            return s

    options = set(llfuse.default_options) | {"fsname=faultydisk", "ro"}
    options.discard("default_permissions")
    llfuse.init(Faulty(), mountpoint, options)
    try:
        llfuse.main(workers=4)  # several workers: one slow read must not stall the others
    finally:
        llfuse.close(unmount=True)
        os.close(fd)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    def pair(text: str) -> tuple[int, int]:
        start, length = text.split(":")
        return int(start, 0), int(length, 0)

    def triple(text: str) -> tuple[int, int, float]:
        start, length, seconds = text.split(":")
        return int(start, 0), int(length, 0), float(seconds)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("--bad", type=pair, action="append", default=[], metavar="START:LEN")
    p.add_argument("--bad-file", help="file of 'START LEN' lines (for thousands of ranges)")
    p.add_argument("--slow", type=triple, action="append", default=[], metavar="START:LEN:SECONDS")
    p.add_argument("--bad-delay", type=float, default=0.0, metavar="SECONDS", help="time each failed read takes")
    p.add_argument("--log")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    bad = list(args.bad)
    if args.bad_file:
        for line in Path(args.bad_file).read_text().split("\n"):
            if line.strip():
                s, n = line.split()
                bad.append((int(s), int(n)))
    _serve(args.backing, args.mountpoint, bad, args.slow, args.log, args.bad_delay)


# ---------------------------------------------------------------------------------------------
# The fixture side (runs in the test process).


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _attach_loop(path: str) -> str:
    """Read-only loop over `path`, with direct I/O when the kernel accepts it (it then reads
    the FUSE file with O_DIRECT, so the loop's own page cache of the file is out of play)."""
    proc = _sh("losetup", "--find", "--show", "--read-only", "--direct-io=on", path, check=False)
    if proc.returncode != 0:
        proc = _sh("losetup", "--find", "--show", "--read-only", path)
    return proc.stdout.strip()


def _wait_mounted(mnt: Path, proc: subprocess.Popen, errlog: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = errlog.read_text(errors="replace")
            raise AssertionError(f"faulty_disk.py exited with {proc.returncode}: {err.strip()}")
        if os.path.ismount(mnt) and (mnt / "disk").exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"faulty_disk.py did not mount {mnt} within {timeout:.0f} s")


def _unmount(mnt: Path) -> None:
    if not os.path.ismount(mnt):
        return
    if _sh("fusermount", "-u", str(mnt), check=False).returncode != 0:
        _sh("fusermount", "-u", "-z", str(mnt), check=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def faulty_block_device(
    loops,
    backing_path: str | os.PathLike,
    bad: Sequence[tuple[int, int]] = (),
    slow: Sequence[tuple[int, int, float]] = (),
    log: str | os.PathLike | None = None,
    bad_delay: float = 0.0,
) -> Iterator[str]:
    """Yield "/dev/loopN": a read-only block device with the bytes of `backing_path`, where
    reads touching a `bad` (start, length) byte range fail with EIO, each after `bad_delay`
    seconds (a dying drive's 0.5-2 s; 0 keeps tests fast), and reads touching a `slow`
    (start, length, seconds) range are delayed. `log` gets one line per read request the
    kernel sent: "OFFSET SIZE ok|EIO" (how tests count the reads a job made).

    What a reader sees (kernel 6.18, loop with --direct-io=on over the FUSE file):
    - an O_DIRECT read reaches FUSE at the reader's offset and size (split into 128 KiB FUSE
      requests), so one good sector next to a bad one reads fine and a read covering a bad
      sector fails as a whole with EIO; nothing is cached, a second try fails again;
    - buffered reads of /dev/loopN go through the block device's page cache in 4 KiB pages
      with read-ahead: an error covers the whole page around the bad sector, and read-ahead
      into a bad area fails silently. Sector precision needs O_DIRECT (rescue.hw.badread);
    - without loop direct I/O the loop reads the FUSE file through its page cache: errors
      then come in 4 KiB pages even for O_DIRECT readers of the loop device;
    - a failed read whose error lies past its first 128 KiB FUSE request fails in FUSE
      twice or more (each costing `bad_delay`): FUSE answers the loop driver with the good
      bytes before the error (a short read), and the loop driver asks again for the rest;
    - the loop device serves one request at a time: while a slow read sleeps in FUSE, every
      other read of the device waits behind it (FUSE itself would serve them), much like a
      real drive busy retrying a sector.

    Everything is undone on exit, also when the test fails: loop detached, FUSE unmounted
    (lazily if still busy), server process stopped."""
    root = Path(loops.root)
    n = sum(1 for _ in root.glob("faulty-mnt*"))
    mnt = root / f"faulty-mnt{n}"
    mnt.mkdir()
    argv = [sys.executable, os.path.abspath(__file__), os.fspath(backing_path), str(mnt)]
    bad_file = None
    if len(bad) > 50:
        bad_file = root / f"faulty-bad{n}.txt"
        bad_file.write_text("".join(f"{s} {ln}\n" for s, ln in bad))
        argv += ["--bad-file", str(bad_file)]
    else:
        for s, ln in bad:
            argv += ["--bad", f"{s}:{ln}"]
    for s, ln, secs in slow:
        argv += ["--slow", f"{s}:{ln}:{secs}"]
    if log is not None:
        argv += ["--log", os.fspath(log)]
    if bad_delay:
        argv += ["--bad-delay", str(bad_delay)]
    errlog = root / f"faulty-server{n}.log"
    with open(errlog, "wb") as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
    dev = None
    try:
        _wait_mounted(mnt, proc, errlog)
        dev = _attach_loop(str(mnt / "disk"))
        yield dev
    finally:
        if dev is not None:
            _sh("losetup", "--detach", dev, check=False)
        _unmount(mnt)
        _stop(proc)


if __name__ == "__main__":
    main()

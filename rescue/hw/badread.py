"""Reading a drive that has bad sectors, the way GNU ddrescue does, simplified.

The imaging engine reads a drive chunk by chunk (4 MiB). On a healthy drive each chunk is
one large read. When a read fails, this module finds out which sectors are bad without
hammering them, because every failed read on a dying drive costs seconds and wears it:

1. copy   - read() tries the chunk in one read. When that fails, the chunk is halved, and
            the halves halved, down to 64 KiB blocks: a few bad sectors in a 4 MiB chunk cost
            a dozen reads instead of one per block. When a half reads fine, its failed
            parent says the other half holds the error, so that half is split without
            being read. A failed block is marked non-trimmed ('*'). After `skip_after`
            failed blocks in a row the rest of the chunk is skipped (left non-tried, '?'):
            a cluster of damage is left for later instead of being ground through now.
            A chunk read that times out is read block by block instead, in order: halving
            would meet the stuck area once per level, at a timeout each.
            If nothing was skipped, the failed blocks are trimmed at once (step 2), which
            settles a chunk with a few isolated bad sectors in the same call.
2. trim   - each '*' block is searched from its leading edge for its first bad sector
            (binary search: reads of a good prefix, about 8 reads for 128 sectors), then
            from its trailing edge for its last one. Those sectors become bad ('-'), what
            lies between becomes non-scraped ('/'): a block with one bad sector is settled.
3. scrape - read the '/' areas in 4 KiB steps, and sector by sector inside a failing step.
4. retry  - `retries` passes re-reading each bad sector.

finish() runs what read() deferred, in ddrescue's order (all copying first, then all
trimming, ...) over the areas that read() was asked for, and returns the bytes it
recovered so the engine can store those chunks again. Areas read() was never asked for stay
non-tried in the map.

Never hang: every read runs in a worker thread and the caller waits at most `timeout`
seconds. A read that times out makes its area bad-for-now ('-', not split further, since
each piece could time out again; the retry pass tries it again as a whole) and the reader
moves on with a fresh worker. Limits:
- a thread stuck in the kernel (an uninterruptible read of a dead drive) cannot be killed:
  it is abandoned and keeps its buffer until the kernel gives the read back;
- a drive (and a loop device) answers one request at a time, so the next read queues behind
  the stuck one anyway. The reader therefore waits for stuck reads to come back before its
  next read, at most `stall_limit` seconds, and then declares the drive gone (DeviceError)
  rather than hang or pile up stuck threads;
- what a timed-out read returns late is not used; the retry pass reads the area again.

Reads use O_DIRECT with page-aligned (mmap) buffers: the page cache would turn one bad 512
byte sector into a failed 4 KiB page, read ahead into bad areas, and could serve stale
copies. Files on filesystems without O_DIRECT (tmpfs) are read through the cache.

Unreadable bytes come back as zeros; Read.bad says where they are.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import stat
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

from rescue.errors import DeviceError, UsageError
from rescue.model.badmap import BAD, FINISHED, NON_SCRAPED, NON_TRIED, NON_TRIMMED, BadSectorMap
from rescue.model.extents import normalize

KiB = 1024
MiB = 1 << 20
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272

# Errors that mean "this area could not be read", as opposed to a programming error
# (EINVAL: misaligned) or a vanished device (ENODEV, ENXIO, ENOTCONN), which stop the job.
MEDIA_ERRORS = frozenset({errno.EIO, errno.ENODATA, errno.EILSEQ, errno.EBADMSG, errno.EREMOTEIO, errno.ETIMEDOUT})

# finish()'s progress callback: (phase name, bytes done in this phase, bytes in this phase).
PhaseProgress = Callable[[str, int, int], None]
Sink = Callable[[int, bytes], None]


class Read(NamedTuple):
    data: bytes  # the area's bytes; unreadable ones are zero
    bad: list[tuple[int, int]]  # (device offset, length) of every byte not read fine


@dataclass
class ReadStats:
    reads: int = 0  # read calls issued to the device
    read_errors: int = 0  # of which failed with a media error
    timeouts: int = 0  # of which did not answer within the timeout
    retries: int = 0  # reads made by the retry passes
    bytes_read: int = 0  # bytes read fine (re-reads counted again)
    seconds: float = 0.0  # time spent inside read() and finish()


class _TimedOut(Exception):
    pass


class _Skipped(Exception):
    """Halving met `skip_after` failed blocks in a row: the rest is left for finish()."""


FAILED = "failed"
TIMED_OUT = "timed out"


class _Worker:
    """A thread that makes the preadv calls, so that the caller can stop waiting for one.
    Its buffer is its own: an abandoned worker may still be writing into it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.buf = mmap.mmap(-1, 64 * KiB)
        self.thread = threading.Thread(target=self._run, name="badread", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.run(self)

    def stop(self) -> None:
        self.jobs.put(None)


class _Job:
    def __init__(self, offset: int, nbytes: int):
        self.offset, self.nbytes = offset, nbytes
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: OSError | None = None

    def run(self, worker: _Worker) -> None:
        try:
            if len(worker.buf) < self.nbytes:
                worker.buf = mmap.mmap(-1, self.nbytes)
            with memoryview(worker.buf) as mv, mv[:self.nbytes] as view:
                got = os.preadv(worker.fd, [view], self.offset)
                self.data = bytes(view[:got])
        except OSError as e:
            self.error = e
        finally:
            self.done.set()


def _device_geometry(fd: int) -> tuple[int, int | None]:
    """(size in bytes, logical sector size or None for a regular file)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        sector = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        return size, sector
    return st.st_size, None


class TolerantReader:
    """Reads a drive, zero-filling what cannot be read, and keeps the drive's bad-sector
    map. Not thread-safe: one engine thread calls read() chunk after chunk, then finish()."""

    def __init__(self, path: str, sector_size: int | None = None, *, retries: int = 1, timeout: float | None = 30.0,
                 block_size: int = 64 * KiB, trim_step: int = 4 * KiB, skip_after: int = 3,
                 stall_limit: float = 300.0):
        try:
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
                self.direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self.direct = False
        except OSError as e:
            raise DeviceError(f"cannot open {path}: {e.strerror}") from None
        self.path = path
        self.size, detected = _device_geometry(self.fd)
        self.sector_size = sector_size or detected or 512
        if block_size % self.sector_size or trim_step % self.sector_size or trim_step > block_size:
            os.close(self.fd)
            raise UsageError(f"block size {block_size} and trim step {trim_step} must be multiples of the "
                             f"{self.sector_size}-byte sector, trim step not above block size")
        self.retries, self.timeout = retries, timeout
        self.block_size, self.trim_step, self.skip_after = block_size, trim_step, skip_after
        self.stall_limit = stall_limit
        self.map = BadSectorMap.new(self.size)
        self.stats = ReadStats()
        self.phase, self.pos, self.pass_ = NON_TRIED, 0, 1  # for the mapfile's status line
        self._pending: list[tuple[int, int]] = []  # areas read() left unfinished, for finish()
        self._timed_out: list[tuple[int, int]] = []
        self._worker: _Worker | None = None
        self._abandoned: list[_Worker] = []

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker.thread.join(timeout=self.timeout)
            self._worker = None
        for w in self._abandoned:
            w.stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "TolerantReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the engine calls ---------------------------------------------------------------

    def read(self, offset: int, length: int) -> Read:
        """The bytes of [offset, offset+length) (clipped to the drive), with what is not
        read fine zero-filled and listed in Read.bad. Parts may be recovered by finish()."""
        if offset % self.sector_size or offset < 0:
            raise UsageError(f"read at {offset} is not aligned to the {self.sector_size}-byte sector")
        t0 = time.monotonic()
        end = min(offset + length, self.size)
        out = bytearray(max(0, end - offset))

        def sink(off: int, data: bytes) -> None:
            out[off - offset:off - offset + len(data)] = data

        self.phase, self.pass_, self.pos = NON_TRIED, 1, offset
        if end > offset:
            got = self._try(offset, end - offset)
            if isinstance(got, bytes) and len(got) == len(out):
                # The healthy-drive path: one read, no copies.
                self._good(offset, got, lambda off, data: None)
                self.pos = end
                self.stats.seconds += time.monotonic() - t0
                return Read(got, [])
            if isinstance(got, bytes):
                self._good(offset, got, sink)
            else:
                skipped = self._split(offset, end, sink, got, skip=True)
                if not skipped:
                    self._trim(offset, end, sink)
                if self.map.missing_ranges(offset, end):
                    self._pending.append((offset, end))
        self.pos = end
        self.stats.seconds += time.monotonic() - t0
        return Read(bytes(out), self.map.missing_ranges(offset, end))

    def finish(self, progress: PhaseProgress | None = None) -> list[tuple[int, bytes]]:
        """Run the deferred passes over the areas read() could not finish and return
        (offset, bytes) for every run of bytes they recovered, in offset order. `progress`
        is called before each area of each pass; it may raise (e.g. Cancelled) to stop."""
        t0 = time.monotonic()
        self._pending = [(e.start, e.end) for e in normalize((a, b - a) for a, b in self._pending)]
        recovered: dict[int, bytes] = {}

        def sink(off: int, data: bytes) -> None:
            recovered[off] = data

        def run_phase(status: str, name: str, work: Callable[[int, int], None]) -> None:
            self.phase = status
            areas = [r for a, b in self._pending for r in self.map.ranges(status, a, b)]
            total, done = sum(n for _, n in areas), 0
            for s, n in areas:
                self.pos = s
                if progress:
                    progress(name, done, total)
                work(s, s + n)
                done += n
            if progress and total:
                progress(name, total, total)

        run_phase(NON_TRIED, "copy", lambda s, e: self._copy_area(s, e, sink))
        run_phase(NON_TRIMMED, "trim", lambda s, e: self._trim(s, e, sink))
        run_phase(NON_SCRAPED, "scrape", lambda s, e: self._scrape(s, e, sink))
        for retry in range(1, self.retries + 1):
            self.pass_ = retry
            run_phase(BAD, "retry", lambda s, e: self._retry(s, e, sink))
        self.phase, self.pos = FINISHED, 0
        self._pending = [(a, b) for a, b in self._pending if self.map.missing_ranges(a, b)]
        self.stats.seconds += time.monotonic() - t0
        return _merge_runs(recovered)

    def mapfile(self, **header) -> str:
        """The bad-sector map as a ddrescue mapfile, with where the reader is."""
        return self.map.to_mapfile(self.pos, self.phase, self.pass_, **header)

    @property
    def sectors_read(self) -> int:
        return self.map.totals()[FINISHED] // self.sector_size

    @property
    def sectors_lost(self) -> int:
        """Sectors of the areas read() was asked for that are not read fine (yet)."""
        return sum(n for a, b in self._pending for _, n in self.map.missing_ranges(a, b)) // self.sector_size

    # -- the passes --------------------------------------------------------------------------

    def _copy_area(self, start: int, end: int, sink: Sink) -> None:
        """finish()'s copy pass over an area read() skipped: one read, then halving."""
        got = self._try(start, end - start)
        if isinstance(got, bytes):
            self._good(start, got, sink)
        else:
            self._split(start, end, sink, got, skip=False)

    def _split(self, start: int, end: int, sink: Sink, why: str, *, skip: bool) -> bool:
        """Find the failed blocks of [start, end), whose one read just failed for `why`.
        Return True if the rest was skipped after `skip_after` failed blocks in a row."""
        if why is TIMED_OUT:
            return self._copy(start, end, sink, skip=skip)
        fails = 0

        def halve(lo: int, hi: int) -> None:
            """[lo, hi) holds an error (its read failed, or its sibling read fine)."""
            nonlocal fails
            mid = _align_down(lo + (hi - lo) // 2, self.block_size)
            if mid <= lo:
                mid = _align_up(lo + 1, self.block_size)
            if hi - lo <= self.block_size or mid >= hi:
                self.map.mark(lo, hi - lo, NON_TRIMMED)
                fails += 1
                if skip and fails >= self.skip_after and hi < end:
                    self.map.mark(hi, end - hi, NON_TRIED)
                    raise _Skipped()
                return
            left = self._try(lo, mid - lo)
            if isinstance(left, bytes):
                self._good(lo, left, sink)
                fails = 0
                return halve(mid, hi)
            if left is TIMED_OUT:
                self._copy(lo, mid, sink, skip=False)
            else:
                halve(lo, mid)
            right = self._try(mid, hi - mid)
            if isinstance(right, bytes):
                self._good(mid, right, sink)
                fails = 0
            elif right is TIMED_OUT:
                self._copy(mid, hi, sink, skip=False)
            else:
                halve(mid, hi)

        try:
            halve(start, end)
        except _Skipped:
            return True
        return False

    def _copy(self, start: int, end: int, sink: Sink, *, skip: bool) -> bool:
        """Read [start, end) block by block, in order; failed blocks become '*'. Return True
        if the rest was skipped after `skip_after` failures in a row."""
        fails, pos = 0, start
        while pos < end:
            n = min(_align_up(pos + 1, self.block_size), end) - pos
            got = self._try(pos, n)
            if isinstance(got, bytes):
                self._good(pos, got, sink)
                fails = 0
            else:
                self._failed(pos, n, got, NON_TRIMMED)
                fails += 1
            pos += n
            if skip and fails >= self.skip_after and pos < end:
                self.map.mark(pos, end - pos, NON_TRIED)
                return True
        return False

    def _trim(self, start: int, end: int, sink: Sink) -> None:
        """Each failed block on its own: blocks next to each other may each hold one bad
        sector, and trimming them as one area would leave all between to scraping."""
        for s, n in self.map.ranges(NON_TRIMMED, start, end):
            pos = s
            while pos < s + n:
                block_end = min(_align_up(pos + 1, self.block_size), s + n)
                lo, hi = self._trim_forward(pos, block_end, sink), block_end
                if lo < hi:
                    hi = self._trim_backward(lo, hi, sink)
                if lo < hi:
                    self.map.mark(lo, hi - lo, NON_SCRAPED)
                pos = block_end

    def _trim_forward(self, lo: int, hi: int, sink: Sink) -> int:
        """Binary search of [lo, hi), which failed to read, for its first bad sector: good
        prefixes are read and kept. Return the end of that sector."""
        while hi - lo > self.sector_size:
            mid = lo + max(self.sector_size, _align_down((hi - lo) // 2, self.sector_size))
            got = self._try(lo, mid - lo)
            if isinstance(got, bytes):
                self._good(lo, got, sink)
                lo = mid
            elif got is TIMED_OUT:
                self._failed(lo, mid - lo, got, BAD)
                return mid
            else:
                hi = mid
        self.map.mark(lo, hi - lo, BAD)  # what is left of an area that failed
        return hi

    def _trim_backward(self, lo: int, hi: int, sink: Sink) -> int:
        """The same from the trailing edge: [lo, hi) is read whole first, since it may hold
        no error at all. Return the start of its last bad sector (lo if none)."""
        got = self._try(lo, hi - lo)
        if isinstance(got, bytes):
            self._good(lo, got, sink)
            return lo
        if got is TIMED_OUT:
            self._failed(lo, hi - lo, got, BAD)
            return lo
        while hi - lo > self.sector_size:
            mid = hi - max(self.sector_size, _align_down((hi - lo) // 2, self.sector_size))
            got = self._try(mid, hi - mid)
            if isinstance(got, bytes):
                self._good(mid, got, sink)
                hi = mid
            elif got is TIMED_OUT:
                self._failed(mid, hi - mid, got, BAD)
                return mid
            else:
                lo = mid
        self.map.mark(lo, hi - lo, BAD)
        return lo

    def _scrape(self, start: int, end: int, sink: Sink) -> None:
        step = start
        while step < end:
            step_end = min(_align_up(step + 1, self.trim_step), end)
            got = self._try(step, step_end - step)
            if isinstance(got, bytes):
                self._good(step, got, sink)
            elif got is TIMED_OUT:
                self._failed(step, step_end - step, got, BAD)
            else:
                for sec in range(step, step_end, self.sector_size):
                    n = min(self.sector_size, step_end - sec)
                    got = self._try(sec, n)
                    if isinstance(got, bytes):
                        self._good(sec, got, sink)
                    else:
                        self._failed(sec, n, got, BAD)
            step = step_end

    def _retry(self, start: int, end: int, sink: Sink) -> None:
        """Bad sectors one by one; an area that timed out once is tried again as a whole,
        since sector by sector it could cost a timeout per sector."""
        timed_out = [(max(s, start), min(s + n, end)) for s, n in self._timed_out if s < end and s + n > start]
        pos = start
        for ts, te in timed_out + [(end, end)]:
            for sec in range(pos, ts, self.sector_size):
                n = min(self.sector_size, ts - sec)
                self.stats.retries += 1
                got = self._try(sec, n)
                if isinstance(got, bytes):
                    self._good(sec, got, sink)
            if te > ts:
                self.stats.retries += 1
                got = self._try(ts, te - ts)
                if isinstance(got, bytes):
                    self._good(ts, got, sink)
            pos = max(pos, te)

    # -- one read ----------------------------------------------------------------------------

    def _good(self, offset: int, data: bytes, sink: Sink) -> None:
        sink(offset, data)
        self.map.mark(offset, len(data), FINISHED)
        if self._timed_out:
            self._timed_out = [(s, n) for s, n in self._timed_out if not (offset <= s and s + n <= offset + len(data))]

    def _failed(self, offset: int, nbytes: int, why: str, status: str) -> None:
        if why is TIMED_OUT:
            status = BAD  # never split an area that does not answer: each piece could time out
            self._timed_out.append((offset, nbytes))
        self.map.mark(offset, nbytes, status)

    def _try(self, offset: int, nbytes: int) -> bytes | str:
        """The bytes, or FAILED (media error) or TIMED_OUT. Other errors stop the job."""
        self.stats.reads += 1
        want = min(nbytes, self.size - offset)
        try:
            data = self._pread(offset, _align_up(want, self.sector_size))
        except _TimedOut:
            self.stats.timeouts += 1
            return TIMED_OUT
        except OSError as e:
            if e.errno in MEDIA_ERRORS:
                self.stats.read_errors += 1
                return FAILED
            raise DeviceError(f"reading {self.path} at byte {offset}: {e.strerror}") from None
        if len(data) < want:  # the drive shrank or ended early: count it as unreadable
            self.stats.read_errors += 1
            return FAILED
        self.stats.bytes_read += want
        return data[:want] if len(data) > want else data

    def _pread(self, offset: int, nbytes: int) -> bytes:
        if self.fd < 0:
            raise DeviceError(f"{self.path} is closed")
        if self._abandoned:
            self._drain()
        if self._worker is None:
            self._worker = _Worker(self.fd)
        job = _Job(offset, nbytes)
        self._worker.jobs.put(job)
        if not job.done.wait(self.timeout):
            self._worker.stop()  # it exits once the kernel gives the read back, if ever
            self._abandoned.append(self._worker)
            self._worker = None
            raise _TimedOut()
        if job.error is not None:
            raise job.error
        assert job.data is not None
        return job.data


    def _drain(self) -> None:
        """Wait for timed-out reads to come back: the drive serves nothing else meanwhile."""
        deadline = time.monotonic() + self.stall_limit
        for w in self._abandoned:
            w.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(w.thread.is_alive() for w in self._abandoned):
            raise DeviceError(f"{self.path} stopped answering: a read has been stuck for over "
                              f"{self.stall_limit:.0f} s")
        self._abandoned = []


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _align_down(n: int, a: int) -> int:
    return n // a * a


def _merge_runs(pieces: dict[int, bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytearray]] = []
    for off in sorted(pieces):
        data = pieces[off]
        if out and out[-1][0] + len(out[-1][1]) == off:
            out[-1][1].extend(data)
        else:
            out.append((off, bytearray(data)))
    return [(off, bytes(buf)) for off, buf in out]

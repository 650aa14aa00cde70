"""Reading a drive that has bad sectors, the way GNU ddrescue does, simplified.

The imaging engine reads a drive chunk by chunk (4 MiB). On a healthy drive each chunk is
one large read. When a read fails, this module finds out which sectors are bad without
hammering them, because every failed read on a dying drive costs seconds and wears it:

1. copy   - read() tries the chunk in one read. When that fails, the chunk is read in 256
            KiB pieces, and a failed piece in 64 KiB blocks: a bad sector costs three failed
            reads and a few dozen good ones (not one read per block of the chunk). When all
            pieces but the last of a failed range read fine, the last one holds the error and
            is not read again as a whole. A failed block is marked non-trimmed ('*'). After
            `skip_after` failed blocks in a row, the chunk's further failed pieces are
            skipped (left non-tried, '?'): a cluster of damage is left for later instead of
            being ground through now, while the good pieces around it are kept. A piece whose
            read times out is read block by block (under the same skip rule): each smaller
            read of a stuck area would time out again.
            If nothing was skipped, the failed blocks are trimmed at once (step 2), which
            settles a chunk with a few isolated bad sectors in the same call.
2. trim   - each '*' block on its own, from its leading edge: 4 KiB steps until one fails,
            then sector by sector inside it until a sector fails; then the rest of the block
            in one read and, if that fails, the same from the trailing edge. The first and
            last bad sectors become bad ('-'), what lies between non-scraped ('/'). A block
            with one bad sector is settled with two failed reads. A sector is marked bad only
            after its own read failed.
3. scrape - read the '/' areas in 4 KiB steps, and sector by sector inside a failing step.
4. retry  - `retries` passes re-reading each bad sector.

Failed reads are what this design saves first: on a dying drive a failed read takes seconds
(the drive's own retries), a good one a fraction of a millisecond. Runs of small reads go to
the reader thread as one job (see _Job), since handing each over costs as much as the read.

finish() runs what read() deferred, in ddrescue's order (all copying first, then all
trimming, ...) over the areas that read() was asked for, and returns the bytes it
recovered so the engine can store those chunks again. Areas read() was never asked for stay
non-tried in the map.

Never hang: every read runs in a worker thread and the caller waits at most `timeout`
seconds. A block or smaller read that times out makes its area bad-for-now ('-', not split
further, since each piece could time out again; the retry pass tries it again as a whole)
and the reader moves on with a fresh worker. Limits:
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
PIECE = 256 * KiB  # the copy pass's first split of a failed chunk
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
    """Reads made one after another by the worker, each result handed over as it comes: one
    thread hand-off for a run of small reads instead of one per read (the hand-off costs as
    much as a small read itself). With `stop_on_error` the run ends at the first error."""

    def __init__(self, reads: list[tuple[int, int]], stop_on_error: bool):
        self.reads, self.stop_on_error = reads, stop_on_error
        self.results: list[bytes | OSError] = []
        self.finished = False
        self.abandoned = False
        self.cond = threading.Condition()

    def run(self, worker: _Worker) -> None:
        for offset, nbytes in self.reads:
            if self.abandoned:
                break
            try:
                if len(worker.buf) < nbytes:
                    worker.buf = mmap.mmap(-1, nbytes)
                with memoryview(worker.buf) as mv, mv[:nbytes] as view:
                    got = os.preadv(worker.fd, [view], offset)
                    result: bytes | OSError = bytes(view[:got])
            except OSError as e:
                result = e
            with self.cond:
                self.results.append(result)
                self.cond.notify()
            if isinstance(result, OSError) and self.stop_on_error:
                break
        with self.cond:
            self.finished = True
            self.cond.notify()


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

    def unsettled(self, start: int, end: int) -> bool:
        """Whether finish() will still copy, trim or scrape in [start, end) (and not only
        retry bad sectors): bytes there may yet come back."""
        return any(self.map.ranges(st, start, end) for st in (NON_TRIED, NON_TRIMMED, NON_SCRAPED))

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
        """finish()'s copy pass over an area read() skipped: one read, then pieces."""
        got = self._try(start, end - start)
        if isinstance(got, bytes):
            self._good(start, got, sink)
        else:
            self._split(start, end, sink, got, skip=False)

    def _split(self, start: int, end: int, sink: Sink, why: str, *, skip: bool) -> bool:
        """Find the failed blocks of [start, end), whose one read just failed for `why`.
        Return True if failed pieces were skipped (left non-tried) after `skip_after` failed
        blocks in a row."""
        if why is TIMED_OUT:
            return self._copy(start, end, sink, skip=skip)
        fails, skipping = 0, False
        for lo, hi, got in self._pieces(start, end, PIECE, sink):
            if isinstance(got, bytes):
                fails = 0
            elif skipping:
                self.map.mark(lo, hi - lo, NON_TRIED)
            elif got is TIMED_OUT:
                skipping = self._copy(lo, hi, sink, skip=skip)
            else:
                for blo, bhi, bgot in self._pieces(lo, hi, self.block_size, sink):
                    if isinstance(bgot, bytes):
                        fails = 0
                    else:
                        self._failed(blo, bhi - blo, bgot, NON_TRIMMED)
                        fails += 1
                skipping = skip and fails >= self.skip_after
        return skipping

    def _pieces(self, start: int, end: int, size: int, sink: Sink) -> list[tuple[int, int, bytes | str]]:
        """Read [start, end), known to hold an error, in pieces aligned to `size`: (lo, hi,
        bytes or FAILED or TIMED_OUT) each, good bytes already kept. The last piece, when
        every other one read fine (or it is the only one), is FAILED without a read."""
        pieces = _steps(start, end, size)
        got = self._try_many(pieces[:-1])
        if all(isinstance(g, bytes) for g in got):  # also when it is the only piece
            got.append(FAILED)
        else:
            got += self._try_many(pieces[-1:])
        for (lo, _), g in zip(pieces, got):
            if isinstance(g, bytes):
                self._good(lo, g, sink)
        return [(lo, hi, g) for (lo, hi), g in zip(pieces, got)]

    def _copy(self, start: int, end: int, sink: Sink, *, skip: bool) -> bool:
        """Read [start, end) block by block, in order; failed blocks become '*'. Return True
        if the rest was skipped after `skip_after` failures in a row."""
        fails = 0
        for lo, hi in _steps(start, end, self.block_size):
            got = self._try(lo, hi - lo)
            if isinstance(got, bytes):
                self._good(lo, got, sink)
                fails = 0
            else:
                self._failed(lo, hi - lo, got, NON_TRIMMED)
                fails += 1
            if skip and fails >= self.skip_after and hi < end:
                self.map.mark(hi, end - hi, NON_TRIED)
                return True
        return False

    def _trim(self, start: int, end: int, sink: Sink) -> None:
        """Each failed block on its own: blocks next to each other may each hold one bad
        sector, and trimming them as one area would leave all between to scraping."""
        blocks = [b for s, n in self.map.ranges(NON_TRIMMED, start, end) for b in _steps(s, s + n, self.block_size)]
        for pos, block_end in blocks:
            lo = self._trim_edge(pos, block_end, sink, forward=True)
            hi = block_end
            if lo < hi:
                got = self._try(lo, hi - lo)  # the rest: most often it reads
                if isinstance(got, bytes):
                    self._good(lo, got, sink)
                    hi = lo
                elif got is TIMED_OUT:
                    self._failed(lo, hi - lo, got, BAD)
                    hi = lo
                else:
                    hi = self._trim_edge(lo, hi, sink, forward=False)
            if lo < hi:
                self.map.mark(lo, hi - lo, NON_SCRAPED)

    def _trim_edge(self, lo: int, hi: int, sink: Sink, *, forward: bool) -> int:
        """Read [lo, hi) from one edge until a sector fails: trim steps first, sector by
        sector inside the first step that fails. Forward, return the end of the bad
        sector found; backward, its start; the other edge if everything read."""
        def in_order(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
            return ranges if forward else ranges[::-1]

        steps = in_order(_steps(lo, hi, self.trim_step))
        for (s, e), got in zip(steps, self._try_many(steps, stop_on_error=True)):
            if isinstance(got, bytes):
                self._good(s, got, sink)
                continue
            if got is TIMED_OUT:
                self._failed(s, e - s, got, BAD)
                return e if forward else s
            sectors = in_order(_steps(s, e, self.sector_size))
            for (a, b), sec in zip(sectors, self._try_many(sectors, stop_on_error=True)):
                if isinstance(sec, bytes):
                    self._good(a, sec, sink)
                    continue
                self._failed(a, b - a, sec, BAD)
                return b if forward else a
        return hi if forward else lo

    def _scrape(self, start: int, end: int, sink: Sink) -> None:
        steps = _steps(start, end, self.trim_step)
        for (step, step_end), got in zip(steps, self._try_many(steps)):
            if isinstance(got, bytes):
                self._good(step, got, sink)
            elif got is TIMED_OUT:
                self._failed(step, step_end - step, got, BAD)
            else:
                sectors = _steps(step, step_end, self.sector_size)
                for (sec, sec_end), one in zip(sectors, self._try_many(sectors)):
                    if isinstance(one, bytes):
                        self._good(sec, one, sink)
                    else:
                        self._failed(sec, sec_end - sec, one, BAD)

    def _retry(self, start: int, end: int, sink: Sink) -> None:
        """Bad sectors one by one; an area that timed out once is tried again as a whole,
        since sector by sector it could cost a timeout per sector."""
        timed_out = [(max(s, start), min(s + n, end)) for s, n in self._timed_out if s < end and s + n > start]
        reads, pos = [], start
        for ts, te in timed_out + [(end, end)]:
            reads += _steps(pos, ts, self.sector_size) if pos < ts else []
            if te > ts:
                reads.append((ts, te))
            pos = max(pos, te)
        self.stats.retries += len(reads)
        for (s, e), got in zip(reads, self._try_many(reads)):
            if isinstance(got, bytes):
                self._good(s, got, sink)

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
        return self._try_many([(offset, offset + nbytes)])[0]

    def _try_many(self, ranges: list[tuple[int, int]], stop_on_error: bool = False) -> list[bytes | str]:
        """_try for each [start, end), in order; with `stop_on_error` the list ends at the
        first one that did not read."""
        out: list[bytes | str] = []
        while len(out) < len(ranges):
            todo = ranges[len(out):]
            wants = [min(end, self.size) - off for off, end in todo]
            got = self._pread_many([(off, _align_up(w, self.sector_size)) for (off, _), w in zip(todo, wants)],
                                   stop_on_error)
            for (off, _), want, res in zip(todo, wants, got):
                self.stats.reads += 1
                if res is None:
                    self.stats.timeouts += 1
                    out.append(TIMED_OUT)
                elif isinstance(res, OSError):
                    if res.errno not in MEDIA_ERRORS:
                        raise DeviceError(f"reading {self.path} at byte {off}: {res.strerror}") from None
                    self.stats.read_errors += 1
                    out.append(FAILED)
                elif len(res) < want:  # the drive shrank or ended early: count it as unreadable
                    self.stats.read_errors += 1
                    out.append(FAILED)
                else:
                    self.stats.bytes_read += want
                    out.append(res[:want] if len(res) > want else res)
            if stop_on_error and out and not isinstance(out[-1], bytes):
                break
        return out

    def _pread_many(self, reads: list[tuple[int, int]], stop_on_error: bool) -> list[bytes | OSError | None]:
        """The worker's results, in order; a read that gives nothing back within `timeout`
        ends the list with None (the worker is abandoned with it)."""
        if self.fd < 0:
            raise DeviceError(f"{self.path} is closed")
        if self._abandoned:
            self._drain()
        if self._worker is None:
            self._worker = _Worker(self.fd)
        job = _Job(reads, stop_on_error)
        self._worker.jobs.put(job)
        with job.cond:
            while not job.finished:
                seen = len(job.results)
                if not job.cond.wait_for(lambda: job.finished or len(job.results) > seen, self.timeout):
                    job.abandoned = True
                    self._worker.stop()  # it exits once the kernel gives the read back, if ever
                    self._abandoned.append(self._worker)
                    self._worker = None
                    return [*job.results, None]
            return list(job.results)

    def _drain(self) -> None:
        """Wait for timed-out reads to come back: the drive serves nothing else meanwhile."""
        deadline = time.monotonic() + self.stall_limit
        for w in self._abandoned:
            w.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(w.thread.is_alive() for w in self._abandoned):
            raise DeviceError(f"{self.path} stopped answering: a read has been stuck for over "
                              f"{self.stall_limit:.0f} s")
        self._abandoned = []


def _steps(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) cut at multiples of `size`."""
    out, pos = [], lo
    while pos < hi:
        end = min(_align_up(pos + 1, size), hi)
        out.append((pos, end))
        pos = end
    return out


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

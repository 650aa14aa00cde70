"""Reading a drive that has bad sectors: the adapter between a real drive and the bad-sector
passes (rescue.model.badpass, GNU ddrescue's copy/trim/scrape/retry, a pure algorithm over a
block source; its docstring says which reads it makes and what they cost).

What this module adds is everything that needs the kernel:

Never hang: every read runs in a worker thread and the caller waits at most `timeout`
seconds. A read that gives nothing back in time is answered to the passes as timed out
(they mark its area bad-for-now and try it again as a whole in the retry pass) and the
reader moves on with a fresh worker. Limits:
- a thread stuck in the kernel (an uninterruptible read of a dead drive) cannot be killed:
  it is abandoned and keeps its buffer until the kernel gives the read back;
- a drive (and a loop device) answers one request at a time, so the next read queues behind
  the stuck one anyway. The reader therefore waits for stuck reads to come back before its
  next read, at most `stall_limit` seconds, and then declares the drive gone (DeviceError)
  rather than hang or pile up stuck threads;
- what a timed-out read returns late is not used; the retry pass reads the area again.

Runs of small reads go to the reader thread as one job (see _Job), since handing each over
costs as much as the read.

Read-ahead: a caller that knows which reads come next (capture: the used chunks of an area)
says so with read_ahead(). A thread then reads them in order, each as the one read the passes
would make, at most READ_AHEAD bytes ahead, so the drive is busy while the caller compresses.
The passes see exactly the answers they would have had: a read they ask for that was read
ahead is answered from there (its bytes, or its media error), any other goes to the worker as
before. Read-ahead stops at the first error or timeout, and the passes' careful reads take
over: a dying drive is never read ahead of them. A capture resumed from a map that names
failed areas reads nothing ahead; one resumed from a map of good reads only reads ahead the
chunks the map does not know (those the passes read whole). The one exception to "exactly the
same reads": a resumed run whose first failure comes in a chunk the map knew may have read up
to READ_AHEAD bytes past it whole, where the passes then read block by block.

Reads use O_DIRECT with page-aligned (mmap) buffers: the page cache would turn one bad 512
byte sector into a failed 4 KiB page, read ahead into bad areas, and could serve stale
copies. Files on filesystems without O_DIRECT (tmpfs) are read through the cache.

Media errors (EIO and its kin) are answers about the drive's sectors; any other error (a
vanished device, EINVAL) stops the job with DeviceError.

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
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType

from rescue.errors import DeviceError, UsageError
from rescue.model.badmap import BAD, FINISHED, NON_SCRAPED, NON_TRIMMED, BadSectorMap
from rescue.model.badpass import BLOCK, TRIM_STEP, Passes, PhaseProgress, Read, ReadFailed, ReadStats

__all__ = ["MEDIA_ERRORS", "PhaseProgress", "Read", "ReadStats", "TolerantReader"]

KiB = 1024
READ_AHEAD = 16 << 20  # bytes read ahead of the caller, at the most
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272

# Errors that mean "this area could not be read", as opposed to a programming error
# (EINVAL: misaligned) or a vanished device (ENODEV, ENXIO, ENOTCONN), which stop the job.
MEDIA_ERRORS = frozenset({errno.EIO, errno.ENODATA, errno.EILSEQ, errno.EBADMSG, errno.EREMOTEIO, errno.ETIMEDOUT})


class _Worker:
    """A thread that makes the preadv calls, so that the caller can stop waiting for one.
    Its buffer is its own: an abandoned worker may still be writing into it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
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

    def __init__(self, reads: Sequence[tuple[int, int]], stop_on_error: bool):
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


class _ReadAhead:
    """Reads `reads` in order on its own thread, each once, at most `limit` bytes ahead of
    take(). Each answer is what the worker would have answered (bytes or the OSError); after
    the first error it stops. Its buffers are its own (see _Worker)."""

    def __init__(self, fd: int, reads: Sequence[tuple[int, int]], sector_size: int, limit: int):
        self.fd, self.sector_size, self.limit = fd, sector_size, limit
        self.todo: deque[tuple[int, int]] = deque(reads)
        self.ready: deque[tuple[int, int, bytes | OSError]] = deque()
        self.held = 0  # bytes in `ready` and being read
        self.stopped = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="readahead", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = mmap.mmap(-1, 64 * KiB)
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stopped or not self.todo or self.held < self.limit)
                if self.stopped or not self.todo:
                    self.stopped = True
                    self.cond.notify_all()
                    return
                offset, nbytes = self.todo.popleft()
                self.held += nbytes
            size = _align_up(nbytes, self.sector_size)
            if len(buf) < size:
                buf = mmap.mmap(-1, size)
            try:
                with memoryview(buf) as mv, mv[:size] as view:
                    got = os.preadv(self.fd, [view], offset)
                    result: bytes | OSError = bytes(view[: min(got, nbytes)])
            except OSError as e:
                result = e
            with self.cond:
                self.ready.append((offset, nbytes, result))
                if isinstance(result, OSError) or len(result) < nbytes:
                    self.stopped = True  # the passes take over from here
                self.cond.notify_all()

    def take(self, offset: int, nbytes: int, timeout: float | None) -> bytes | OSError | None:
        """The answer for the read of [offset, offset+nbytes) if it was read ahead; None when
        it is not one of `reads` (or read-ahead stopped before it). Raises TimeoutError when
        the read gives nothing back within `timeout` (read-ahead is then stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                while self.ready and self.ready[0][0] < offset:  # not asked for: the caller moved on
                    self._drop()
                if self.ready or self.stopped:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.stopped = True
                    self.cond.notify_all()
                    raise TimeoutError
                self.cond.wait(left)
            if not self.ready or self.ready[0][:2] != (offset, nbytes):
                return None
            return self._drop()

    def _drop(self) -> bytes | OSError:
        offset, nbytes, result = self.ready.popleft()
        self.held -= nbytes
        self.cond.notify_all()
        return result

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ready.clear()
            self.cond.notify_all()


def _device_geometry(fd: int) -> tuple[int, int | None]:
    """(size in bytes, logical sector size or None for a regular file)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        size: int = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        sector: int = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        return size, sector
    return st.st_size, None


class _Drive:
    """An open drive as a block source for the passes: O_DIRECT reads of sector-aligned
    lengths into page-aligned buffers, on a worker thread, each waited for at most
    `timeout` seconds."""

    def __init__(self, fd: int, path: str, size: int, sector_size: int, timeout: float | None, stall_limit: float):
        self.fd, self.path, self.size, self.sector_size = fd, path, size, sector_size
        self.timeout, self.stall_limit = timeout, stall_limit
        self._worker: _Worker | None = None
        self._abandoned: list[_Worker | _ReadAhead] = []
        self.ahead: _ReadAhead | None = None

    def read_ahead(self, reads: Sequence[tuple[int, int]], limit: int) -> None:
        self.stop_ahead()
        if reads:
            self.ahead = _ReadAhead(self.fd, reads, self.sector_size, limit)

    def stop_ahead(self) -> None:
        if self.ahead is not None:
            self.ahead.stop()
            self.ahead = None

    def _take_ahead(self, offset: int, nbytes: int) -> bytes | OSError | None:
        """The read-ahead's answer (None: there is none, ask the worker); a read-ahead that
        timed out is abandoned like a stuck worker (_drain waits for it)."""
        ahead = self.ahead
        if ahead is None:
            return None
        try:
            got = ahead.take(offset, nbytes, self.timeout)
        except TimeoutError:
            self._abandoned.append(ahead)
            self.ahead = None
            raise
        if ahead.stopped and not ahead.ready:
            self.ahead = None
        return got

    def read(self, offset: int, length: int) -> bytes:
        got = self.read_many([(offset, length)], False)[0]
        if isinstance(got, ReadFailed):
            raise got
        return got

    def read_many(self, reads: Sequence[tuple[int, int]], stop_on_error: bool) -> list[bytes | ReadFailed]:
        """Answers for a prefix of `reads`: all of them, or up to the first that timed out
        (the passes ask again for the rest), or with `stop_on_error` up to the first failure.
        Lengths are rounded up to whole sectors for O_DIRECT (the last sector of a file
        whose size is not a multiple of it) and the answer cut back to what was asked."""
        got: list[bytes | OSError | None] = []
        if len(reads) == 1:
            try:
                ahead = self._take_ahead(*reads[0])
            except TimeoutError:
                ahead = None
                got = [None]
            if ahead is not None:
                got = [ahead]
        if not got:
            got = self._pread_many([(off, _align_up(n, self.sector_size)) for off, n in reads], stop_on_error)
            if not all(isinstance(r, bytes) for r in got):
                self.stop_ahead()  # the passes read carefully from here: nothing ahead of them
        out: list[bytes | ReadFailed] = []
        for (off, n), res in zip(reads, got, strict=False):  # a prefix after a timeout
            if res is None:
                out.append(ReadFailed(off, n, timed_out=True, reason=f"no answer within {self.timeout} s"))
            elif isinstance(res, OSError):
                if res.errno not in MEDIA_ERRORS:
                    raise DeviceError(f"reading {self.path} at byte {off}: {res.strerror}") from None
                out.append(ReadFailed(off, n, reason=res.strerror or "I/O error"))
            else:
                out.append(res[:n] if len(res) > n else res)  # a short answer: the passes count it failed
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

                def answered(seen: int = len(job.results)) -> bool:  # the next result, or the end
                    return job.finished or len(job.results) > seen

                if not job.cond.wait_for(answered, self.timeout):
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
            raise DeviceError(f"{self.path} stopped answering: a read has been stuck for over {self.stall_limit:.0f} s")
        self._abandoned = []

    def close(self) -> None:
        self.stop_ahead()
        if self._worker is not None:
            self._worker.stop()
            self._worker.thread.join(timeout=self.timeout)
            self._worker = None
        for w in self._abandoned:
            w.stop()
        self._abandoned = []


class TolerantReader:
    """Reads a drive, zero-filling what cannot be read, and keeps the drive's bad-sector
    map. Not thread-safe: one engine thread calls read() chunk after chunk, then finish().
    `check` is called before every request to the drive and may raise (e.g. Cancelled) to
    stop; see rescue.model.badpass for what an interrupted reader keeps."""

    def __init__(
        self,
        path: str,
        sector_size: int | None = None,
        *,
        retries: int = 1,
        timeout: float | None = 30.0,
        block_size: int = BLOCK,
        trim_step: int = TRIM_STEP,
        skip_after: int = 3,
        stall_limit: float = 300.0,
        check: Callable[[], None] | None = None,
    ):
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
        self.retries, self.timeout = retries, timeout
        self.block_size, self.trim_step, self.skip_after = block_size, trim_step, skip_after
        self.stall_limit = stall_limit
        self._drive = _Drive(self.fd, path, self.size, self.sector_size, timeout, stall_limit)
        try:
            self.passes = Passes(
                self._drive,
                retries=retries,
                block_size=block_size,
                trim_step=trim_step,
                skip_after=skip_after,
                check=check,
            )
        except UsageError:
            os.close(self.fd)
            raise

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._drive.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = self._drive.fd = -1

    def __enter__(self) -> TolerantReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what the engine calls ---------------------------------------------------------------

    def read_ahead(self, reads: Sequence[tuple[int, int]], limit: int = READ_AHEAD) -> None:
        """The (offset, length) of the reads read() is asked for next, in order (each as
        read() clips it to the drive); they are read ahead, at most `limit` bytes, on a
        thread of their own. Replaces the previous ones; read() of anything else still works."""
        totals = self.map.totals()
        if any(totals.get(st) for st in (NON_TRIMMED, NON_SCRAPED, BAD)):
            self._drive.stop_ahead()  # resumed on a failing drive: every read the careful way
            return
        # What the map knows (read fine by an interrupted run) the passes read in parts.
        spans = [(o, min(o + n, self.size)) for o, n in reads if o < self.size]
        self._drive.read_ahead([(o, e - o) for o, e in spans if not self.map.ranges(FINISHED, o, e)], limit)

    def read(self, offset: int, length: int) -> Read:
        """The bytes of [offset, offset+length) (clipped to the drive), with what is not
        read fine zero-filled and listed in Read.bad. Parts may be recovered by finish()."""
        t0 = time.monotonic()
        try:
            return self.passes.read(offset, length)
        finally:
            self.stats.seconds += time.monotonic() - t0

    def finish(self, progress: PhaseProgress | None = None) -> list[tuple[int, bytes]]:
        """Run the deferred passes over the areas read() could not finish and return
        (offset, bytes) for every run of bytes they recovered, in offset order. `progress`
        is called before each area of each pass; it may raise (e.g. Cancelled) to stop."""
        t0 = time.monotonic()
        try:
            return self.passes.finish(progress)
        finally:
            self.stats.seconds += time.monotonic() - t0

    def unsettled(self, start: int, end: int) -> bool:
        """Whether finish() will still copy, trim or scrape in [start, end) (and not only
        retry bad sectors): bytes there may yet come back."""
        return self.passes.unsettled(start, end)

    def resume(self, earlier: BadSectorMap) -> None:
        """Go on from the map an interrupted job saved (rescue.imaging.resume): what it
        found bad is not read again but by the retry pass (rescue.model.badpass)."""
        self.passes.resume(earlier)

    def mapfile(
        self,
        *,
        program: str = "rescue",
        command_line: str | None = None,
        start_time: str | None = None,
        current_time: str | None = None,
    ) -> str:
        """The bad-sector map as a ddrescue mapfile, with where the reader is."""
        p = self.passes
        return p.map.to_mapfile(
            p.pos,
            p.phase,
            p.pass_,
            program=program,
            command_line=command_line,
            start_time=start_time,
            current_time=current_time,
        )

    @property
    def map(self) -> BadSectorMap:
        return self.passes.map

    @property
    def stats(self) -> ReadStats:
        return self.passes.stats

    @property
    def sectors_read(self) -> int:
        return self.passes.sectors_read

    @property
    def sectors_lost(self) -> int:
        """Sectors of the areas read() was asked for that are not read fine (yet)."""
        return self.passes.sectors_lost


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a

"""Finding a drive's bad sectors the way GNU ddrescue does, simplified: the passes as a pure
algorithm over a block source.

Why pure, and why in rescue/model: which reads to make, in which order, and what each answer
says about the map is the part of bad-sector reading that must be right, and it is the part
a real failing drive tests worst (a FUSE device under a loop device needs root, each run
shows one map, and a stuck read costs real seconds). Here it only talks to a BlockSource,
so tests drive it with an in-memory failing device over thousands of random bad-sector maps
without root (tests/unit/test_badpass.py). rescue.hw.badread.TolerantReader is the adapter
that feeds it a real drive: O_DIRECT, page-aligned buffers, a reader thread and timeouts.
Nothing here touches os, ioctl, threads or the clock.

The imaging engine reads a drive chunk by chunk (4 MiB). On a healthy drive each chunk is
one large read. When a read fails, the passes find out which sectors are bad without
hammering them, because every failed read on a dying drive costs seconds and wears it:

1. copy   - read() tries the chunk in one read. When that fails, the chunk is read in
            `block_size` (64 KiB) blocks, in order: a bad sector costs two failed reads
            (the chunk, its block) and 63 good ones. When all blocks but the last of a
            failed range read fine, the last one holds the error and is not read. A failed
            block is marked non-trimmed ('*'). After `skip_after` failed blocks in a row,
            the rest of the chunk is skipped (left non-tried, '?'): a cluster of damage is
            left for later instead of being ground through now. A block whose read times
            out is bad-for-now (below). After any failed read, the next `cautious` bytes
            (64 MiB) are read block by block from the start, as ddrescue always reads:
            damage comes in clusters, and a chunk read that fails is one failed read more.
            If nothing was skipped, the failed blocks are trimmed at once (step 2), which
            settles a chunk with a few isolated bad sectors in the same call.
2. trim   - each '*' block on its own, ddrescue's way: sector by sector from its leading
            edge until a sector fails, and on through the sectors that share its trim step
            (4 KiB: a bad physical sector) while they fail; then the rest of the block in
            one read and, if that fails, sector by sector from the trailing edge. The first
            and last bad sectors become bad ('-'), what lies between non-scraped ('/'). A
            block with one bad sector is settled with one failed read, a bad 4 KiB physical
            sector with eight: one per sector, the least there can be.
3. scrape - read the '/' areas sector by sector.
4. retry  - `retries` passes re-reading each bad sector.

A sector is marked bad only after a read of it failed: of its own (trim, scrape), or of a
whole area that timed out (below). So on a source whose failures are its bad sectors, the
finished map names exactly those sectors, and every other byte was read.

The bound on failed reads (what this design saves first: on a dying drive a failed read
takes seconds, a good one a fraction of a millisecond, so good reads are spent to save
failed ones). Without timeouts, each bad sector is touched by at most 5 + `retries` failed
reads:
- copy, 3 at most: the chunk and its block, or - when the block was skipped - the chunk, the
  skipped area and its block in finish();
- trim and scrape, 2 at most: the read of the rest of the block, then the sector itself (as
  the trailing edge, or scraped); the first bad sector of a block and those after it in its
  trim step are read once, on their own;
- one per retry pass.
An isolated bad sector costs 3 + `retries` (chunk, block, sector), 2 + `retries` within
`cautious` bytes of an earlier failure, as with ddrescue (cluster, sector); fewer when its
block is the last one of a failed range (it fails without a read).
tests/unit/test_badpass.py asserts the bound per sector over random maps.

Timeouts: a source may answer a read with "timed out" (ReadFailed.timed_out). That area
becomes bad-for-now ('-') when it is a block or smaller, is not split further (each part
could time out again), and the retry pass tries it again as a whole; a larger read that
times out (a chunk, a skipped area) is read block by block instead.

finish() runs what read() deferred, in ddrescue's order (all copying first, then all
trimming, ...) over the areas that read() was asked for, and returns the bytes it recovered
so the engine can store those chunks again. Areas read() was never asked for stay non-tried.

Cancelling: `check` (called before every request to the source) and finish()'s progress
callback may raise (e.g. Cancelled). The exception leaves the passes consistent: the map is
true, the interrupted area stays pending, and the bytes read but not yet handed over come
back from the next finish(), which completes the job: the same bytes and the same map as
without the interruption (only a retry pass may run once more).

Unreadable bytes come back as zeros; Read.bad says where they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from rescue.errors import UsageError
from rescue.model.badmap import BAD, FINISHED, NON_SCRAPED, NON_TRIED, NON_TRIMMED, BadSectorMap
from rescue.model.extents import normalize

KiB = 1024
MiB = 1024 * KiB
BLOCK = 64 * KiB
TRIM_STEP = 4 * KiB
CAUTIOUS = 64 * MiB  # read block by block for this long after a failed read

# The failed reads that touch one bad sector, at most, besides one per retry pass (see above).
FAILED_READS_PER_BAD_SECTOR = 5

# finish()'s progress callback: (phase name, bytes done in this phase, bytes in this phase).
PhaseProgress = Callable[[str, int, int], None]
Sink = Callable[[int, bytes], None]


class ReadFailed(Exception):
    """A read of [offset, offset+length) did not give its bytes: a media error, a short read,
    or no answer in time (`timed_out`). Any other failure (a vanished device, a programming
    error) is not a ReadFailed: it stops the job."""

    def __init__(self, offset: int, length: int, *, timed_out: bool = False, reason: str = ""):
        self.offset, self.length, self.timed_out = offset, length, timed_out
        self.reason = reason or ("timed out" if timed_out else "I/O error")
        super().__init__(f"read of {length} bytes at {offset}: {self.reason}")


class BlockSource(Protocol):
    """What the passes read from. Offsets are multiples of `sector_size`; a read never goes
    past `size`, and may end off a sector boundary only at `size`."""

    @property
    def size(self) -> int: ...

    @property
    def sector_size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes, or raise ReadFailed."""
        ...

    def read_many(self, reads: Sequence[tuple[int, int]], stop_on_error: bool) -> list[bytes | ReadFailed]:
        """read() of each (offset, length) in order, failures as values: one call for a run
        of small reads (handing each one to a reader thread costs as much as the read). It
        answers a prefix of `reads`, at least one: it may stop after any failure (the
        passes ask again for the rest), and stops after the first with `stop_on_error`."""
        ...


class OneByOne:
    """read_many() for a source that only has read()."""

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def read_many(self, reads: Sequence[tuple[int, int]], stop_on_error: bool) -> list[bytes | ReadFailed]:
        out: list[bytes | ReadFailed] = []
        for offset, length in reads:
            try:
                out.append(self.read(offset, length))
            except ReadFailed as e:
                out.append(e)
                if stop_on_error:
                    break
        return out


class Read(NamedTuple):
    data: bytes  # the area's bytes; unreadable ones are zero
    bad: list[tuple[int, int]]  # (device offset, length) of every byte not read fine


@dataclass
class ReadStats:
    reads: int = 0  # reads asked of the source
    read_errors: int = 0  # of which failed (media error, short read)
    timeouts: int = 0  # of which did not answer in time
    retries: int = 0  # reads made by the retry passes
    bytes_read: int = 0  # bytes read fine (re-reads counted again)
    seconds: float = 0.0  # time spent reading: kept by the adapter that owns a clock


class Passes:
    """The passes over one source, and the source's bad-sector map. Not thread-safe: one
    caller calls read() chunk after chunk, then finish(). `check` is called before every
    request to the source and may raise to stop (see Cancelling above)."""

    def __init__(
        self,
        source: BlockSource,
        *,
        retries: int = 1,
        block_size: int = BLOCK,
        trim_step: int = TRIM_STEP,
        skip_after: int = 3,
        cautious: int = CAUTIOUS,
        check: Callable[[], None] | None = None,
    ):
        self.source = source
        self.size, self.sector_size = source.size, source.sector_size
        if block_size % self.sector_size or trim_step % self.sector_size or trim_step > block_size:
            raise UsageError(
                f"block size {block_size} and trim step {trim_step} must be multiples of the "
                f"{self.sector_size}-byte sector, trim step not above block size"
            )
        self.retries, self.block_size, self.trim_step = retries, block_size, trim_step
        self.skip_after, self.cautious, self.check = skip_after, cautious, check
        self._cautious_until = 0  # read() reads block by block before this offset
        self.map = BadSectorMap.new(self.size)
        self.stats = ReadStats()
        self.phase, self.pos, self.pass_ = NON_TRIED, 0, 1  # for the mapfile's status line
        self._pending: list[tuple[int, int]] = []  # areas read() left unfinished, for finish()
        self._timed_out: list[tuple[int, int]] = []  # (offset, length) to retry as a whole
        self._recovered: dict[int, bytes] = {}  # read, not handed over yet (after a cancel)
        self._resumed = False  # the map came from an interrupted run: read() honours it

    def resume(self, earlier: BadSectorMap) -> None:
        """Go on from the map of an interrupted run over the same source (ddrescue's mapfile
        resume; rescue.imaging.resume keeps it): read() then reads again only what read fine
        (the caller did not keep those bytes) and what was never tried, and leaves the failed
        and bad areas to finish() as they are, so no failed read is made twice. (A retry pass
        that the interrupted run had begun is made again from its start.)"""
        if earlier.size != self.size:
            raise UsageError(f"the earlier map covers {earlier.size} bytes, the source {self.size}")
        self.map = BadSectorMap(earlier.size, list(earlier.blocks))
        self._resumed = True

    # -- what the engine calls ---------------------------------------------------------------

    def read(self, offset: int, length: int) -> Read:
        """The bytes of [offset, offset+length) (clipped to the source), with what is not
        read fine zero-filled and listed in Read.bad. Parts may be recovered by finish()."""
        if offset % self.sector_size or offset < 0:
            raise UsageError(f"read at {offset} is not aligned to the {self.sector_size}-byte sector")
        end = min(offset + length, self.size)
        self.phase, self.pass_, self.pos = NON_TRIED, 1, offset
        if end <= offset:
            return Read(b"", [])
        out = bytearray(end - offset)
        kept: list[tuple[int, int]] = []

        def sink(off: int, data: bytes) -> None:
            out[off - offset : off - offset + len(data)] = data
            kept.append((off, len(data)))

        try:
            if self._resumed and self.map.ranges(FINISHED + NON_TRIMMED + NON_SCRAPED + BAD, offset, end):
                self._read_known(offset, end, sink)
            elif offset < self._cautious_until:
                if not self._split(offset, end, sink, None, skip=True):
                    self._trim(offset, end, sink)
            else:
                got = self._try(offset, end - offset)
                if isinstance(got, bytes):  # the healthy-drive path: one read, no copies
                    self._good(offset, got, None)
                    self.pos = end
                    return Read(got, [])
                if not self._split(offset, end, sink, got, skip=True):
                    self._trim(offset, end, sink)
        except BaseException:
            # Cancelled (or stopped) halfway: finish() takes the area over, and hands back
            # what was read of it so far.
            self._pending.append((offset, end))
            for off, n in kept:
                self._recovered[off] = bytes(out[off - offset : off - offset + n])
            raise
        missing = self.map.missing_ranges(offset, end)
        if missing:
            self._pending.append((offset, end))
        self.pos = end
        return Read(bytes(out), missing)

    def finish(self, progress: PhaseProgress | None = None) -> list[tuple[int, bytes]]:
        """Run the deferred passes over the areas read() could not finish and return
        (offset, bytes) for every run of bytes they recovered, in offset order. `progress`
        is called before each area of each pass; it may raise (e.g. Cancelled) to stop, and
        a later finish() runs the passes again over what is still missing."""
        self._pending = [(e.start, e.end) for e in normalize((a, b - a) for a, b in self._pending)]
        recovered = self._recovered

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
        self._recovered = {}
        return _merge_runs(recovered)

    def unsettled(self, start: int, end: int) -> bool:
        """Whether finish() will still copy, trim or scrape in [start, end) (and not only
        retry bad sectors): bytes there may yet come back."""
        return any(self.map.ranges(st, start, end) for st in (NON_TRIED, NON_TRIMMED, NON_SCRAPED))

    @property
    def sectors_read(self) -> int:
        return self.map.totals()[FINISHED] // self.sector_size

    @property
    def sectors_lost(self) -> int:
        """Sectors of the areas read() was asked for that are not read fine (yet); the
        short last sector of a source that ends off a sector boundary counts as one."""
        return -(-sum(n for a, b in self._pending for _, n in self.map.missing_ranges(a, b)) // self.sector_size)

    # -- the passes --------------------------------------------------------------------------

    def _read_known(self, start: int, end: int, sink: Sink) -> None:
        """read() of an area the resumed map knows: each run that read fine, then each run
        never tried, read as read() reads a chunk; failed and bad runs are left as they are."""
        for status in (FINISHED, NON_TRIED):
            for s, n in self.map.ranges(status, start, end):
                got = self._try(s, n)
                if isinstance(got, bytes):
                    self._good(s, got, sink)
                elif not self._split(s, s + n, sink, got, skip=True):
                    self._trim(s, s + n, sink)

    def _copy_area(self, start: int, end: int, sink: Sink) -> None:
        """finish()'s copy pass over an area read() skipped: one read, then blocks."""
        got = self._try(start, end - start)
        if isinstance(got, bytes):
            self._good(start, got, sink)
        else:
            self._split(start, end, sink, got, skip=False)

    def _split(self, start: int, end: int, sink: Sink, why: ReadFailed | None, *, skip: bool) -> bool:
        """Read [start, end) block by block, in order; failed blocks become '*'. After `why`,
        a failed read of the whole, the last block fails without a read when every other
        one read. With `skip`, the rest is left non-tried after `skip_after` failed blocks in
        a row; return True if it was."""
        blocks = _steps(start, end, self.block_size)
        known_bad = why is not None and not why.timed_out  # some block of it fails
        fails, i = 0, 0
        while i < len(blocks):
            if known_bad and i == len(blocks) - 1:
                lo, hi = blocks[i]
                self.map.mark(lo, hi - lo, NON_TRIMMED)  # the error left in this block
                return False
            todo = blocks[i : len(blocks) - 1] if known_bad else blocks[i:]
            for (lo, hi), got in zip(todo, self._try_many(todo, stop_on_error=True), strict=False):
                i += 1
                if isinstance(got, bytes):
                    self._good(lo, got, sink)
                    fails = 0
                    continue
                self._failed(lo, hi - lo, got, NON_TRIMMED)
                known_bad, fails = False, fails + 1
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
                elif got.timed_out:
                    self._failed(lo, hi - lo, got, BAD)
                    hi = lo
                else:
                    hi = self._trim_edge(lo, hi, sink, forward=False)
            if lo < hi:
                self.map.mark(lo, hi - lo, NON_SCRAPED)

    def _trim_edge(self, lo: int, hi: int, sink: Sink, *, forward: bool) -> int:
        """Read [lo, hi) sector by sector from one edge until a sector fails (ddrescue's
        trim: a failed read costs seconds, a good one a fraction of a millisecond, so the
        edge is found with one failed read). Forward, the sectors after the bad one that
        share its trim step (a bad physical sector) are read on until one reads: each is
        tried once, now, instead of twice later (the rest of the block, then a scrape).
        Forward, return where the unread rest of the area begins; backward, the start of
        the bad sector found; the other edge if everything read."""
        sectors = _steps(lo, hi, self.sector_size)
        if not forward:
            sectors.reverse()
        while sectors:
            answers = self._try_many(sectors, stop_on_error=True)
            for (a, b), got in zip(sectors, answers, strict=False):  # answers stop at a failure
                if isinstance(got, bytes):
                    self._good(a, got, sink)
                    continue
                self._failed(a, b - a, got, BAD)
                if not forward or got.timed_out:
                    return b if forward else a
                return self._through_bad(b, min(_align_up(b, self.trim_step), hi), sink)
            sectors = sectors[len(answers) :]
        return hi if forward else lo

    def _through_bad(self, lo: int, hi: int, sink: Sink) -> int:
        """Sectors from `lo` on, up to `hi`, while they fail, and the first one that reads:
        where the unread rest begins."""
        for a, b in _steps(lo, hi, self.sector_size):
            got = self._try(a, b - a)
            if isinstance(got, bytes):
                self._good(a, got, sink)
                return b
            self._failed(a, b - a, got, BAD)
            if got.timed_out:
                return b
        return hi

    def _scrape(self, start: int, end: int, sink: Sink) -> None:
        """Every sector between the first and the last bad one of a block, one by one: each
        is tried once (most of them are bad: they lie inside a damaged run)."""
        sectors = _steps(start, end, self.sector_size)
        for (sec, sec_end), one in zip(sectors, self._try_many(sectors), strict=True):
            if isinstance(one, bytes):
                self._good(sec, one, sink)
            else:
                self._failed(sec, sec_end - sec, one, BAD)

    def _retry(self, start: int, end: int, sink: Sink) -> None:
        """Bad sectors one by one; an area that timed out once is tried again as a whole,
        since sector by sector it could cost a timeout per sector."""
        timed_out = sorted((max(s, start), min(s + n, end)) for s, n in self._timed_out if s < end and s + n > start)
        reads: list[tuple[int, int]] = []
        pos = start
        for ts, te in timed_out + [(end, end)]:
            reads += _steps(pos, ts, self.sector_size) if pos < ts else []
            if te > max(ts, pos):
                reads.append((max(ts, pos), te))
            pos = max(pos, te)
        self.stats.retries += len(reads)
        for (s, _), got in zip(reads, self._try_many(reads), strict=True):
            if isinstance(got, bytes):
                self._good(s, got, sink)

    # -- one read ----------------------------------------------------------------------------

    def _good(self, offset: int, data: bytes, sink: Sink | None) -> None:
        if sink is not None:
            sink(offset, data)
        self.map.mark(offset, len(data), FINISHED)
        if self._timed_out:
            self._timed_out = [(s, n) for s, n in self._timed_out if not (offset <= s and s + n <= offset + len(data))]

    def _failed(self, offset: int, nbytes: int, why: ReadFailed, status: str) -> None:
        self._cautious_until = max(self._cautious_until, offset + nbytes + self.cautious)
        if why.timed_out:
            status = BAD  # never split an area that does not answer: each part could time out
            self._timed_out.append((offset, nbytes))
        self.map.mark(offset, nbytes, status)

    def _try(self, offset: int, nbytes: int) -> bytes | ReadFailed:
        return self._try_many([(offset, offset + nbytes)])[0]

    def _try_many(self, ranges: list[tuple[int, int]], stop_on_error: bool = False) -> list[bytes | ReadFailed]:
        """The source's answer for each [start, end), in order; with `stop_on_error` the
        list ends at the first one that did not read."""
        out: list[bytes | ReadFailed] = []
        while len(out) < len(ranges):
            if self.check is not None:
                self.check()
            todo = [(off, min(end, self.size) - off) for off, end in ranges[len(out) :]]
            got = self.source.read_many(todo, stop_on_error)
            if not got:
                raise RuntimeError(f"block source answered none of {len(todo)} reads")
            for (off, want), res in zip(todo, got, strict=False):  # a prefix: ask again for the rest
                self.stats.reads += 1
                if isinstance(res, ReadFailed):
                    if res.timed_out:
                        self.stats.timeouts += 1
                    else:
                        self.stats.read_errors += 1
                elif len(res) < want:  # the source shrank or ended early: unreadable
                    self.stats.read_errors += 1
                    res = ReadFailed(off, want, reason=f"short read ({len(res)} bytes)")
                else:
                    self.stats.bytes_read += want
                    res = res[:want] if len(res) > want else res
                out.append(res)
                if stop_on_error and isinstance(res, ReadFailed):
                    return out
        return out


def _steps(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) cut at multiples of `size`."""
    out: list[tuple[int, int]] = []
    pos = lo
    while pos < hi:
        end = min(_align_up(pos + 1, size), hi)
        out.append((pos, end))
        pos = end
    return out


def _align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _merge_runs(pieces: dict[int, bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytearray]] = []
    for off in sorted(pieces):
        data = pieces[off]
        if out and out[-1][0] + len(out[-1][1]) == off:
            out[-1][1].extend(data)
        else:
            out.append((off, bytearray(data)))
    return [(off, bytes(buf)) for off, buf in out]

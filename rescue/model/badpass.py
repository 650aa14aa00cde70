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
            `piece` (256 KiB) pieces, and a failed piece in `block_size` (64 KiB) blocks:
            a bad sector costs three failed reads and a few dozen good ones (not one read
            per block of the chunk). When all pieces but the last of a failed range read
            fine, the last one holds the error and is not read again as a whole. A failed
            block is marked non-trimmed ('*'). After `skip_after` failed blocks in a row,
            the chunk's further failed pieces are skipped (left non-tried, '?'): a cluster
            of damage is left for later instead of being ground through now, while the good
            pieces around it are kept. A piece whose read times out is read block by block
            (under the same skip rule): each smaller read of a stuck area would time out
            again. If nothing was skipped, the failed blocks are trimmed at once (step 2),
            which settles a chunk with a few isolated bad sectors in the same call.
2. trim   - each '*' block on its own, from its leading edge: `trim_step` (4 KiB) steps
            until one fails, then sector by sector inside it until a sector fails; then the
            rest of the block in one read and, if that fails, the same from the trailing
            edge. The first and last bad sectors become bad ('-'), what lies between
            non-scraped ('/'). A block with one bad sector is settled with two failed reads.
3. scrape - read the '/' areas in trim steps, and sector by sector inside a failing step.
4. retry  - `retries` passes re-reading each bad sector.

A sector is marked bad only after a read of it failed: of its own (trim, scrape), or of a
whole area that timed out (below). So on a source whose failures are its bad sectors, the
finished map names exactly those sectors, and every other byte was read.

The bound on failed reads (what this design saves first: on a dying drive a failed read
takes seconds, a good one a fraction of a millisecond). Without timeouts, each bad sector
is touched by at most 10 + `retries` failed reads, so a job never makes more than that many
failed reads per bad sector, and the bound is reached:
- copy, 5 at most: the chunk, its piece, and then either its block, or - when the piece was
  skipped - the skipped area, its piece and its block again in finish();
- trim, 2 for the first bad sector of a block (the failing leading step, the sector
  itself; what is read after it starts behind it), 4 for the last one (the leading step
  when it is the same step, the rest of the block, the failing trailing step, the sector
  itself), 3 for one between (the leading and trailing steps when they hold it, the rest);
- scrape, 2 for a sector between the first and last (its step, itself);
- one per retry pass.
The worst is a sector between the first and the last bad sector of a block, all three in
one trim step, in a skipped piece: 5 + 3 + 2. An isolated bad sector costs 5 + `retries` at
most (chunk, piece, block, leading step, sector), fewer when a piece or block is the last
one of a failed range (it fails without a read). tests/unit/test_badpass.py asserts the
bound per sector over random maps.

Timeouts: a source may answer a read with "timed out" (ReadFailed.timed_out). That area
becomes bad-for-now ('-') when it is a block or smaller, is not split further (each piece
could time out again), and the retry pass tries it again as a whole; a larger read that
times out (a chunk, a piece) is read block by block instead.

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
PIECE = 256 * KiB  # the copy pass's first split of a failed chunk
BLOCK = 64 * KiB
TRIM_STEP = 4 * KiB

# The failed reads that touch one bad sector, at most, besides one per retry pass (see above).
FAILED_READS_PER_BAD_SECTOR = 10

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
        piece: int = PIECE,
        check: Callable[[], None] | None = None,
    ):
        self.source = source
        self.size, self.sector_size = source.size, source.sector_size
        if (
            block_size % self.sector_size
            or trim_step % self.sector_size
            or trim_step > block_size
            or piece < block_size
        ):
            raise UsageError(
                f"block size {block_size} and trim step {trim_step} must be multiples of the "
                f"{self.sector_size}-byte sector, trim step not above block size, "
                f"piece {piece} not below it"
            )
        self.retries, self.block_size, self.trim_step = retries, block_size, trim_step
        self.skip_after, self.piece, self.check = skip_after, piece, check
        self.map = BadSectorMap.new(self.size)
        self.stats = ReadStats()
        self.phase, self.pos, self.pass_ = NON_TRIED, 0, 1  # for the mapfile's status line
        self._pending: list[tuple[int, int]] = []  # areas read() left unfinished, for finish()
        self._timed_out: list[tuple[int, int]] = []  # (offset, length) to retry as a whole
        self._recovered: dict[int, bytes] = {}  # read, not handed over yet (after a cancel)

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

    def _copy_area(self, start: int, end: int, sink: Sink) -> None:
        """finish()'s copy pass over an area read() skipped: one read, then pieces."""
        got = self._try(start, end - start)
        if isinstance(got, bytes):
            self._good(start, got, sink)
        else:
            self._split(start, end, sink, got, skip=False)

    def _split(self, start: int, end: int, sink: Sink, why: ReadFailed, *, skip: bool) -> bool:
        """Find the failed blocks of [start, end), whose one read just failed for `why`.
        Return True if failed pieces were skipped (left non-tried) after `skip_after` failed
        blocks in a row."""
        if why.timed_out:
            return self._copy(start, end, sink, skip=skip)
        fails, skipping, skipped = 0, False, False
        for lo, hi, got in self._pieces(start, end, self.piece, sink):
            if isinstance(got, bytes):
                fails = 0
            elif skipping:
                self.map.mark(lo, hi - lo, NON_TRIED)
                skipped = True
            elif got.timed_out:
                skipping = skipped = self._copy(lo, hi, sink, skip=skip)
            else:
                for blo, bhi, bgot in self._pieces(lo, hi, self.block_size, sink):
                    if isinstance(bgot, bytes):
                        fails = 0
                    else:
                        self._failed(blo, bhi - blo, bgot, NON_TRIMMED)
                        fails += 1
                skipping = skip and fails >= self.skip_after
        return skipped

    def _pieces(self, start: int, end: int, size: int, sink: Sink) -> list[tuple[int, int, bytes | ReadFailed]]:
        """Read [start, end), known to hold an error, in pieces aligned to `size`: (lo, hi,
        bytes or ReadFailed) each, good bytes already kept. The last piece, when every other
        one read fine (or it is the only one), fails without a read."""
        pieces = _steps(start, end, size)
        got = self._try_many(pieces[:-1])
        if all(isinstance(g, bytes) for g in got):  # also when it is the only piece
            lo, hi = pieces[-1]
            got.append(ReadFailed(lo, hi - lo, reason="the error left in this piece"))
        else:
            got += self._try_many(pieces[-1:])
        for (lo, _), g in zip(pieces, got, strict=True):
            if isinstance(g, bytes):
                self._good(lo, g, sink)
        return [(lo, hi, g) for (lo, hi), g in zip(pieces, got, strict=True)]

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
                elif got.timed_out:
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
        while steps:
            answers = self._try_many(steps, stop_on_error=True)
            for (s, e), got in zip(steps, answers, strict=False):  # answers may stop early
                if isinstance(got, bytes):
                    self._good(s, got, sink)
                    continue
                if got.timed_out:
                    self._failed(s, e - s, got, BAD)
                    return e if forward else s
                sectors = in_order(_steps(s, e, self.sector_size))
                for (a, b), sec in zip(sectors, self._try_many(sectors, stop_on_error=True), strict=False):
                    if isinstance(sec, bytes):
                        self._good(a, sec, sink)
                        continue
                    self._failed(a, b - a, sec, BAD)
                    return b if forward else a
                # Every sector of the failed step read after all (a sector that fails only
                # sometimes): go on from the next step.
            steps = steps[len(answers) :]
        return hi if forward else lo

    def _scrape(self, start: int, end: int, sink: Sink) -> None:
        steps = _steps(start, end, self.trim_step)
        for (step, step_end), got in zip(steps, self._try_many(steps), strict=True):
            if isinstance(got, bytes):
                self._good(step, got, sink)
            elif got.timed_out:
                self._failed(step, step_end - step, got, BAD)
            else:
                sectors = _steps(step, step_end, self.sector_size)
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
        if why.timed_out:
            status = BAD  # never split an area that does not answer: each piece could time out
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

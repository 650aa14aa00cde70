"""The bad-sector passes (rescue.model.badpass) over an in-memory failing device: properties
over random bad-sector maps, no root, no kernel. The real block layer is tested beside this
in tests/system/test_badread.py (a FUSE file under a loop device).

The properties, for every map hypothesis draws:
- every good byte comes back exactly as stored: from read() unless it lists it in Read.bad,
  from finish() otherwise;
- the finished map names every bad sector and nothing else ('-' exactly there, '+'
  everywhere else, nothing left non-tried, non-trimmed or non-scraped);
- each bad sector is touched by at most FAILED_READS_PER_BAD_SECTOR + retries failed reads
  (the bound the module's docstring derives), so failed reads per bad sector are bounded;
- with sectors that never answer in time, nothing is waited for more than a bounded number
  of times, and only blocks holding such a sector are given up as bad besides bad sectors;
- a cancel stops before the next read, and a later finish() completes the job to the same
  bytes and the same map.

Small geometry (512-byte sectors, 2 KiB trim steps, 4 KiB blocks, 64 KiB chunks) keeps each
example fast while the structure (chunk > block > step > sector) is the real one; the
properties run with and without the cautious reading after a failure; a few tests use the
real sizes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rescue.errors import Cancelled, UsageError
from rescue.model.badmap import BAD, FINISHED
from rescue.model.badpass import FAILED_READS_PER_BAD_SECTOR, OneByOne, Passes, Read, ReadFailed

SECTOR = 512
KiB = 1024
MiB = 1 << 20
SMALL = dict(block_size=4 * KiB, trim_step=2 * KiB)
CAUTIOUS = st.sampled_from([0, 64 * KiB, MiB])  # read block by block after a failure: never, some, always
SMALL_CHUNK = 64 * KiB

PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class MemoryDevice(OneByOne):
    """A failing drive in memory: `data`, with `bad` sectors that always fail, `stuck` ones
    that never answer in time (a read touching one times out), and `flaky` ones that fail
    their first n reads. Every read is logged as (offset, length, "ok" | "EIO" | "timeout").
    Like the real adapter, read_many() stops after a timeout (the passes ask for the rest)."""

    data: bytes = field(repr=False)
    bad: frozenset[int] = frozenset()
    stuck: frozenset[int] = frozenset()
    flaky: dict[int, int] = field(default_factory=dict)
    sector_size: int = SECTOR
    log: list[tuple[int, int, str]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:  # what a failing example needs to be rebuilt
        return f"MemoryDevice(size={self.size}, bad={sorted(self.bad)}, stuck={sorted(self.stuck)}, flaky={self.flaky})"

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        assert offset % self.sector_size == 0 and 0 <= offset < end <= self.size, (offset, length)
        assert end % self.sector_size == 0 or end == self.size, (offset, length)
        touched = range(offset // self.sector_size, -(-end // self.sector_size))
        if any(s in self.stuck for s in touched):
            self.log.append((offset, length, "timeout"))
            raise ReadFailed(offset, length, timed_out=True)
        flaky = [s for s in touched if self.flaky.get(s, 0) > 0]
        for s in flaky:
            self.flaky[s] -= 1
        if flaky or any(s in self.bad for s in touched):
            self.log.append((offset, length, "EIO"))
            raise ReadFailed(offset, length)
        self.log.append((offset, length, "ok"))
        return self.data[offset:end]

    def read_many(self, reads: Sequence[tuple[int, int]], stop_on_error: bool) -> list[bytes | ReadFailed]:
        out: list[bytes | ReadFailed] = []
        for offset, length in reads:
            try:
                out.append(self.read(offset, length))
            except ReadFailed as e:
                out.append(e)
                if stop_on_error or e.timed_out:
                    break
        return out

    def failed_reads_touching(self, sector: int, what: str = "EIO") -> int:
        lo, hi = sector * self.sector_size, (sector + 1) * self.sector_size
        return sum(1 for off, n, res in self.log if res == what and off < hi and off + n > lo)


def sectors_of(ranges: Iterable[tuple[int, int]], sector: int = SECTOR) -> set[int]:
    return {s for off, n in ranges for s in range(off // sector, -(-(off + n) // sector))}


def run_job(passes: Passes, chunk: int, on_cancel: Callable[[], None] | None = None) -> tuple[bytearray, list[Read]]:
    """What the capture engine does: read() every chunk, then finish(), patching the chunks
    with what finish() recovered. A Cancelled from read() or finish() is handed to
    `on_cancel` (it must stop the cancelling) and the job goes on, as a resumed job would."""
    image = bytearray(passes.size)
    firsts: list[Read] = []
    for off in range(0, passes.size, chunk):
        try:
            got = passes.read(off, chunk)
        except Cancelled:
            assert on_cancel is not None
            on_cancel()
            continue
        assert len(got.data) == min(chunk, passes.size - off)
        image[off : off + len(got.data)] = got.data
        firsts.append(got)
    while True:
        try:
            recovered = passes.finish()
            break
        except Cancelled:
            assert on_cancel is not None
            on_cancel()
    for off, data in recovered:
        image[off : off + len(data)] = data
    return image, firsts


def with_holes(data: bytes, sectors: Iterable[int]) -> bytes:
    out = bytearray(data)
    for s in sectors:
        out[s * SECTOR : (s + 1) * SECTOR] = bytes(len(out[s * SECTOR : (s + 1) * SECTOR]))
    return bytes(out)


@st.composite
def drives(draw: st.DrawFn, max_sectors: int = 1024, stuck: bool = False, flaky: bool = False) -> MemoryDevice:
    """A device of up to `max_sectors` sectors (its size not always a multiple of the chunk,
    sometimes ending off a sector boundary) with clusters and single bad sectors; optionally
    stuck and flaky sectors."""
    nsect = draw(st.integers(1, max_sectors))
    tail = draw(st.sampled_from([0, 0, 0, 100]))
    size = nsect * SECTOR - (tail if nsect > 1 else 0)
    seed = draw(st.integers(0, 2**32 - 1))
    data = random.Random(seed).randbytes(size)
    last = -(-size // SECTOR) - 1

    def sector_sets() -> st.SearchStrategy[set[int]]:
        cluster = st.tuples(st.integers(0, last), st.integers(1, 48))
        clusters = st.lists(cluster, max_size=6).map(
            lambda cs: {s for a, n in cs for s in range(a, min(a + n, last + 1))}
        )
        singles = st.sets(st.integers(0, last), max_size=24)
        return st.tuples(clusters, singles).map(lambda t: t[0] | t[1])

    bad = draw(sector_sets())
    stuck_set = draw(sector_sets()) - bad if stuck else set()
    flaky_map = {}
    if flaky:
        flaky_map = {
            s: draw(st.integers(1, 3))
            for s in draw(st.sets(st.integers(0, last), max_size=12))
            if s not in bad and s not in stuck_set
        }
    return MemoryDevice(data, frozenset(bad), frozenset(stuck_set), flaky_map)


# -- the properties --------------------------------------------------------------------------


@PROPERTIES
@given(dev=drives(), retries=st.integers(0, 2), skip_after=st.integers(1, 4), cautious=CAUTIOUS)
def test_good_bytes_come_back_and_the_map_names_exactly_the_bad_sectors(dev, retries, skip_after, cautious):
    passes = Passes(dev, retries=retries, skip_after=skip_after, cautious=cautious, **SMALL)
    image, firsts = run_job(passes, SMALL_CHUNK)

    assert image == with_holes(dev.data, dev.bad)
    assert sectors_of(passes.map.bad_ranges()) == dev.bad
    assert passes.map.totals()[FINISHED] + passes.map.totals()[BAD] == dev.size  # nothing else left
    assert passes.sectors_lost == len(dev.bad)
    # read() already gave every byte it does not list as bad, and listed every bad sector.
    for got, off in zip(firsts, range(0, dev.size, SMALL_CHUNK), strict=True):
        listed = sectors_of(got.bad)
        assert {s for s in dev.bad if off <= s * SECTOR < off + len(got.data)} <= listed
        assert got.data == with_holes(dev.data, listed)[off : off + len(got.data)]
    # Failed reads: bounded per bad sector, and none that touched no bad sector.
    bound = FAILED_READS_PER_BAD_SECTOR + retries
    for s in dev.bad:
        assert dev.failed_reads_touching(s) <= bound, (s, [r for r in dev.log if r[2] == "EIO"])
    failed = [r for r in dev.log if r[2] == "EIO"]
    assert all(sectors_of([(off, n)]) & dev.bad for off, n, _ in failed)
    assert len(failed) <= bound * len(dev.bad)
    # The stats say what the device saw.
    assert passes.stats.reads == len(dev.log)
    assert passes.stats.read_errors == len(failed)
    assert passes.stats.timeouts == 0
    assert passes.stats.bytes_read == sum(n for _, n, res in dev.log if res == "ok")


@PROPERTIES
@given(dev=drives(stuck=True, flaky=True), retries=st.integers(0, 2), skip_after=st.integers(1, 4), cautious=CAUTIOUS)
def test_stuck_and_flaky_sectors_never_give_wrong_bytes_or_an_unfinished_map(dev, retries, skip_after, cautious):
    """A sector that does not answer in time takes its whole block with it (bad for now,
    never split: each part could time out again); a flaky one ends read or bad."""
    flaky = set(dev.flaky)
    passes = Passes(dev, retries=retries, skip_after=skip_after, cautious=cautious, **SMALL)
    image, _ = run_job(passes, SMALL_CHUNK)

    block = SMALL["block_size"] // SECTOR
    stuck_blocks = {s for t in dev.stuck for s in range(t // block * block, (t // block + 1) * block)}
    lost = sectors_of(passes.map.bad_ranges())
    assert passes.map.totals()[FINISHED] + passes.map.totals()[BAD] == dev.size, (passes.map.blocks, dev.log)
    assert image == with_holes(dev.data, lost)  # every byte given back is the stored one
    assert dev.bad | dev.stuck <= lost <= dev.bad | dev.stuck | stuck_blocks | flaky
    for t in dev.stuck:  # waited for: the chunk, the skipped area, its block, each retry
        assert dev.failed_reads_touching(t, "timeout") <= 3 + retries
    assert passes.stats.timeouts == sum(1 for r in dev.log if r[2] == "timeout")


@PROPERTIES
@given(dev=drives(max_sectors=512), retries=st.integers(0, 2), data=st.data())
def test_a_cancel_stops_at_once_and_the_job_resumes_to_the_same_result(dev, retries, data):
    assume(dev.bad)
    calls = {"n": 0}
    cancel_at = set(data.draw(st.sets(st.integers(1, 60), min_size=1, max_size=3)))
    log_at_cancel: list[int] = []

    def check() -> None:
        calls["n"] += 1
        if calls["n"] in cancel_at:
            log_at_cancel.append(len(dev.log))
            raise Cancelled("cancelled by the test")

    def on_cancel() -> None:
        assert len(dev.log) == log_at_cancel[-1]  # no read after the cancel

    passes = Passes(dev, retries=retries, check=check, **SMALL)
    image, _ = run_job(passes, SMALL_CHUNK, on_cancel)
    assert image == with_holes(dev.data, dev.bad)
    assert sectors_of(passes.map.bad_ranges()) == dev.bad
    assert passes.map.totals()[FINISHED] + passes.map.totals()[BAD] == dev.size


@PROPERTIES
@given(dev=drives(max_sectors=512), stop_after=st.integers(0, 40))
def test_a_cancel_from_finish_progress_resumes_too(dev, stop_after):
    passes = Passes(dev, retries=1, **SMALL)
    image = bytearray(dev.size)
    for off in range(0, dev.size, SMALL_CHUNK):
        got = passes.read(off, SMALL_CHUNK)
        image[off : off + len(got.data)] = got.data
    calls = {"n": 0}

    def progress(name: str, done: int, total: int) -> None:
        assert 0 <= done <= total
        calls["n"] += 1
        if calls["n"] == stop_after:
            raise Cancelled("cancelled by the test")

    try:
        recovered = passes.finish(progress)
    except Cancelled:
        recovered = passes.finish()
    for off, data in recovered:
        image[off : off + len(data)] = data
    assert image == with_holes(dev.data, dev.bad)
    assert sectors_of(passes.map.bad_ranges()) == dev.bad


# -- the real sizes, and the counts the system tests assert ------------------------------------


def real_device(size: int, bad: Iterable[int] = (), stuck: Iterable[int] = ()) -> MemoryDevice:
    return MemoryDevice(random.Random(size).randbytes(size), frozenset(bad), frozenset(stuck))


def test_an_isolated_bad_sector_costs_three_failed_reads_and_one_retry():
    """The chunk, its block, then the sector itself, found by reading the block sector by
    sector from its start: settled by read() alone, so the engine stores the chunk once.
    Then one retry. The next one, read block by block after this failure, costs two (its
    block, itself), as with ddrescue."""
    bad = (4 * MiB + 1 * MiB + 7 * KiB) // SECTOR  # mid-chunk, mid-block, mid-step
    dev = real_device(8 * MiB, [bad])
    passes = Passes(dev)
    first = passes.read(4 * MiB, 4 * MiB)
    assert first.bad == [(bad * SECTOR, SECTOR)]
    assert not passes.unsettled(4 * MiB, 8 * MiB)
    assert dev.failed_reads_touching(bad) == 3
    passes.finish()
    assert dev.failed_reads_touching(bad) == 4
    assert passes.stats.retries == 1

    dev = real_device(16 * MiB, [bad, bad + 4 * MiB // SECTOR])
    passes = Passes(dev)
    passes.read(4 * MiB, 4 * MiB)
    second = passes.read(8 * MiB, 4 * MiB)
    assert second.bad == [(bad * SECTOR + 4 * MiB, SECTOR)]
    assert dev.failed_reads_touching(bad + 4 * MiB // SECTOR) == 2


def test_a_healthy_device_is_one_read_per_chunk():
    dev = real_device(16 * MiB)
    passes = Passes(dev)
    image, firsts = run_job(passes, 4 * MiB)
    assert image == dev.data
    assert all(f.bad == [] for f in firsts)
    assert passes.stats.reads == 4 and len(dev.log) == 4
    assert passes.map.ranges(FINISHED) == [(0, 16 * MiB)]


def test_a_cluster_is_skipped_by_read_and_settled_by_finish():
    """Five failed blocks in a row: after skip_after (3) failed blocks the rest of the chunk
    is left non-tried, for finish()."""
    start = 8 * MiB
    bad = {(start + k * 64 * KiB) // SECTOR for k in range(5)}
    bad |= {(start + 8 * KiB) // SECTOR, (start + 16 * KiB) // SECTOR}
    dev = real_device(16 * MiB, bad)
    passes = Passes(dev)
    first = passes.read(start, 4 * MiB)
    assert first.bad == [(start, 4 * MiB)]
    assert passes.map.ranges("*") == [(start, 192 * KiB)]
    assert passes.map.ranges("?") == [(0, start), (start + 192 * KiB, 8 * MiB - 192 * KiB)]
    phases: list[tuple[str, int, int]] = []
    recovered = passes.finish(lambda *p: phases.append(p))
    assert list(dict.fromkeys(p[0] for p in phases)) == ["copy", "trim", "scrape", "retry"]
    chunk = bytearray(first.data)
    for off, part in recovered:
        chunk[off - start : off - start + len(part)] = part
    assert sectors_of(passes.map.bad_ranges()) == bad
    assert bytes(chunk) == with_holes(dev.data, bad)[start : start + 4 * MiB]
    assert "\n0x00000000     +               1\n" in passes.map.to_mapfile(passes.pos, passes.phase, passes.pass_)


def test_an_area_that_never_answers_is_bad_as_a_block_and_waited_for_three_times():
    """As tests/system/test_badread.py asserts with a real timeout: the chunk read, its
    64 KiB block, the retry."""
    stuck = range((50 * MiB) // SECTOR, (50 * MiB + 64 * KiB) // SECTOR)
    dev = real_device(56 * MiB, stuck=stuck)
    passes = Passes(dev)
    firsts = [passes.read(off, 4 * MiB) for off in range(48 * MiB, 56 * MiB, 4 * MiB)]
    assert [b for f in firsts for b in f.bad] == [(50 * MiB, 64 * KiB)]
    assert passes.finish() == []
    assert passes.map.bad_ranges() == [(50 * MiB, 64 * KiB)]
    assert passes.stats.timeouts == 3


def test_the_last_sector_of_a_device_that_ends_off_a_sector_boundary():
    dev = MemoryDevice(random.Random(1).randbytes(10 * SECTOR + 100), frozenset({10}))
    passes = Passes(dev, **SMALL)
    image, _ = run_job(passes, SMALL_CHUNK)
    assert image == dev.data[: 10 * SECTOR] + bytes(100)
    assert passes.map.bad_ranges() == [(10 * SECTOR, 100)]


def test_a_short_answer_counts_as_a_failed_read():
    class Short(MemoryDevice):
        def read(self, offset: int, length: int) -> bytes:
            return (
                super().read(offset, length)[:-1]
                if offset <= 3 * SECTOR < offset + length
                else super().read(offset, length)
            )

    dev = Short(bytes(range(256)) * 64)
    passes = Passes(dev, **SMALL)
    image, _ = run_job(passes, SMALL_CHUNK)
    assert passes.map.bad_ranges() == [(3 * SECTOR, SECTOR)]
    assert image == with_holes(dev.data, {3})


def test_geometry_and_alignment_are_checked():
    dev = real_device(MiB)
    with pytest.raises(UsageError):
        Passes(dev, block_size=1000)
    with pytest.raises(UsageError):
        Passes(dev, trim_step=128 * KiB)
    with pytest.raises(UsageError):
        Passes(dev).read(100, SECTOR)
    assert Passes(dev).read(MiB, SECTOR) == Read(b"", [])


def test_a_sector_that_fails_only_sometimes_does_not_stop_the_trim():
    """Found by the properties above: a sector that fails its first reads (the chunk's, its
    block's, its own in the trim) is marked bad for now; the trim goes on past it and reads
    the rest of the block, and the retry pass reads the sector."""
    bad = (192 * KiB + 3 * SECTOR) // SECTOR
    flaky = (256 * KiB + 71 * KiB) // SECTOR
    dev = MemoryDevice(random.Random(3).randbytes(4 * MiB), frozenset({bad}), flaky={flaky: 3})
    passes = Passes(dev, skip_after=1, cautious=0)
    image, _ = run_job(passes, 4 * MiB)
    assert dev.failed_reads_touching(flaky) == 3
    assert passes.map.bad_ranges() == [(bad * SECTOR, SECTOR)]
    assert passes.map.totals()[FINISHED] == 4 * MiB - SECTOR
    assert image == with_holes(dev.data, {bad})


def test_areas_that_never_answer_are_retried_as_wholes_whatever_order_they_timed_out_in():
    """Found by the properties above: a stuck run across a chunk boundary times out in the
    second chunk's read() before finish() copies what the first chunk skipped. The retry
    pass must still try each timed-out block once, not the later ones sector by sector
    (each a timeout: 30 s on a real drive)."""
    first = 4 * MiB - 5 * 64 * KiB  # three stuck blocks, then the chunk's rest is skipped
    stuck = range(first // SECTOR, (4 * MiB + 64 * KiB) // SECTOR)
    dev = real_device(8 * MiB, stuck=stuck)
    passes = Passes(dev)
    run_job(passes, 4 * MiB)
    assert passes.map.bad_ranges() == [(first, 6 * 64 * KiB)]
    retried = [r for r in dev.log[-6:]]
    assert retried == [(first + k * 64 * KiB, 64 * KiB, "timeout") for k in range(6)]
    # the first chunk and its first three stuck blocks, the second chunk's stuck block (read
    # block by block after a failure), the skipped area and its two blocks, the retries
    assert passes.stats.timeouts == 1 + 3 + 1 + 1 + 2 + 6

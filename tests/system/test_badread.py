"""Reading a real block device with bad sectors (a loop device over a FUSE file that fails
chosen reads with EIO, see tests/faulty_disk.py): what comes back must be the drive's bytes
wherever a sector can be read, and the map must name exactly the sectors that cannot."""

from __future__ import annotations

import errno
import mmap
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from faulty_disk import faulty_block_device

from rescue.errors import Cancelled, UsageError
from rescue.hw.badread import TolerantReader
from rescue.model.badmap import parse_mapfile
from rescue.model.extents import normalize

pytestmark = pytest.mark.root

MiB = 1 << 20
KiB = 1 << 10
SIZE = 64 * MiB
CHUNK = 4 * MiB


@pytest.fixture(scope="module")
def backing(tmp_path_factory) -> tuple[Path, bytes]:
    """64 MiB of random bytes: any misplaced, stale or zeroed sector shows."""
    path = tmp_path_factory.mktemp("faulty") / "backing.img"
    data = random.Random(2024).randbytes(SIZE)
    path.write_bytes(data)
    return path, data


def dio_granularity(dev: str) -> int:
    """The unit in which errors show on this loop device: the sector with loop direct I/O
    (each O_DIRECT read reaches FUSE as asked), a 4 KiB page when the loop reads through the
    FUSE file's page cache (a kernel that refused --direct-io=on)."""
    name = os.path.basename(dev)
    return 512 if Path(f"/sys/block/{name}/loop/dio").read_text().strip() == "1" else 4096


def expected_bad(bad: list[tuple[int, int]], unit: int) -> list[tuple[int, int]]:
    widened = [(s // unit * unit, (s + n + unit - 1) // unit * unit - s // unit * unit) for s, n in bad]
    return [(e.start, e.length) for e in normalize(widened, SIZE)]


def image_with_holes(data: bytes, bad: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for s, n in bad:
        out[s : s + n] = bytes(n)
    return bytes(out)


def read_whole_device(reader: TolerantReader) -> tuple[bytearray, list[list[tuple[int, int]]]]:
    """What the capture engine does: read() per 4 MiB chunk, then finish() and patch the
    chunks with what it recovered."""
    image = bytearray(reader.size)
    first_pass_bad = []
    for off in range(0, reader.size, CHUNK):
        res = reader.read(off, CHUNK)
        assert len(res.data) == min(CHUNK, reader.size - off)
        image[off : off + len(res.data)] = res.data
        first_pass_bad.append(res.bad)
    for off, data in reader.finish():
        image[off : off + len(data)] = data
    return image, first_pass_bad


def check_rescue(dev: str, data: bytes, bad: list[tuple[int, int]], **reader_args) -> TolerantReader:
    want = expected_bad(bad, dio_granularity(dev))
    with TolerantReader(dev, **reader_args) as reader:
        image, _ = read_whole_device(reader)
        assert reader.map.bad_ranges() == want
        assert reader.map.totals()["+"] == SIZE - sum(n for _, n in want)
        assert reader.sectors_lost * 512 == sum(n for _, n in want)
        assert image == image_with_holes(data, want)  # every good sector exact, bad ones zero
    return reader


def test_fixture_fails_exactly_the_bad_sector(loops, backing):
    path, data = backing
    bad_at = 5 * MiB + 3 * 512
    with faulty_block_device(loops, path, bad=[(bad_at, 512)]) as dev:
        assert Path(dev).is_block_device()
        fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 4096)
            with memoryview(buf) as mv:
                assert os.preadv(fd, [mv[:512]], bad_at - 512) == 512
                assert buf[:512] == data[bad_at - 512 : bad_at]
                for _ in range(2):  # a failed read is not remembered as good (or as zeros)
                    with pytest.raises(OSError) as err:
                        os.preadv(fd, [mv[:512]], bad_at)
                    assert err.value.errno == errno.EIO
                with pytest.raises(OSError) as err:  # a larger read that covers it fails whole
                    os.preadv(fd, [mv[:4096]], bad_at // 4096 * 4096)
                assert err.value.errno == errno.EIO
                if dio_granularity(dev) == 512:
                    assert os.preadv(fd, [mv[:512]], bad_at + 512) == 512
                    assert buf[:512] == data[bad_at + 512 : bad_at + 1024]
        finally:
            os.close(fd)
        # Through the page cache the error shows too (for the whole page around it).
        with open(dev, "rb", buffering=0) as f:
            f.seek(bad_at)
            with pytest.raises(OSError) as err:
                f.read(512)
            assert err.value.errno == errno.EIO
            f.seek(0)
            assert f.read(4096) == data[:4096]


def test_single_bad_sectors_are_found_while_reading_their_chunk(loops, backing):
    path, data = backing
    bad = [
        (0, 512),  # the very first sector (the MBR)
        (SIZE - 512, 512),  # the very last one
        (9 * MiB + 7 * 512, 512),  # one in the middle of a chunk
        (16 * MiB + 64 * KiB - 512, 1024),  # two straddling a 64 KiB block boundary
        (CHUNK * 5 - 512, 1024),
    ]  # two straddling a chunk boundary
    with faulty_block_device(loops, path, bad=bad) as dev:
        unit = dio_granularity(dev)
        want = expected_bad(bad, unit)
        with TolerantReader(dev) as reader:
            image, first_pass_bad = read_whole_device(reader)
            # Isolated bad sectors are settled by read() itself: the engine stores each chunk once.
            assert [r for chunk in first_pass_bad for r in chunk] == [(s, n) for s, n in _split_at_chunks(want)]
            assert reader.map.bad_ranges() == want
            assert reader.sectors_lost * 512 == sum(n for _, n in want)
            assert image == image_with_holes(data, want)
            text = reader.mapfile()
        assert parse_mapfile(text) == reader.map
        if shutil.which("ddrescuelog"):
            listed = subprocess.run(
                ["ddrescuelog", "-b", "512", "-l", "-", "-"], input=text, capture_output=True, text=True
            )
            assert listed.returncode == 0, listed.stderr
            assert [int(x) * 512 for x in listed.stdout.split()] == [s + k for s, n in want for k in range(0, n, 512)]


def _split_at_chunks(ranges):
    for s, n in ranges:
        while n > 0:
            part = min(n, (s // CHUNK + 1) * CHUNK - s)
            yield s, part
            s, n = s + part, n - part


def test_a_cluster_of_1000_bad_sectors(loops, backing):
    path, data = backing
    bad = [(20 * MiB + 3 * 4096 + 512, 1000 * 512)]  # unaligned to anything the reader uses
    with faulty_block_device(loops, path, bad=bad) as dev:
        reader = check_rescue(dev, data, bad)
    assert reader.stats.read_errors >= 1000 // (4096 // 512)  # each bad sector was tried
    assert reader.stats.retries >= 1000  # and retried once


def test_1000_scattered_bad_sectors(loops, backing):
    path, data = backing
    rnd = random.Random(99)
    bad = [(s * 512, 512) for s in sorted(rnd.sample(range(SIZE // 512), 1000))]
    with faulty_block_device(loops, path, bad=bad) as dev:
        check_rescue(dev, data, bad)


def test_no_retry_pass_still_finds_every_bad_sector(loops, backing):
    path, data = backing
    bad = [(3 * MiB, 512), (30 * MiB, 100 * 512), (30 * MiB + 64 * KiB * 3, 4096)]
    with faulty_block_device(loops, path, bad=bad) as dev:
        reader = check_rescue(dev, data, bad, retries=0)
    assert reader.stats.retries == 0


def test_slow_region_is_read_not_skipped(loops, backing):
    path, data = backing
    slow = [(40 * MiB + 12345 // 512 * 512, 64 * KiB, 0.5)]  # spans two 64 KiB blocks
    bad = [(41 * MiB, 512)]
    with faulty_block_device(loops, path, bad=bad, slow=slow) as dev:
        reader = check_rescue(dev, data, bad)
    assert reader.stats.timeouts == 0


def test_an_area_that_never_answers_in_time_is_bad_and_the_reader_moves_on(loops, backing):
    path, data = backing
    stuck = (50 * MiB, 64 * KiB)
    first, last = 48 * MiB, 56 * MiB  # two chunks around it are enough: each stall costs seconds
    with faulty_block_device(loops, path, slow=[(*stuck, 2.0)]) as dev:
        with TolerantReader(dev, timeout=1.0) as reader:
            results = [reader.read(off, CHUNK) for off in range(first, last, CHUNK)]
            image = bytearray(b"".join(r.data for r in results))
            assert [bad for r in results for bad in r.bad] == [stuck]
            assert reader.finish() == []
            assert reader.map.bad_ranges() == [stuck]
            assert reader.map.ranges("+") == [(first, stuck[0] - first), (sum(stuck), last - sum(stuck))]
            assert image == image_with_holes(data, [stuck])[first:last]
            assert reader.stats.timeouts == 3  # the chunk read, its 64 KiB block, the retry


def test_ddrescue_finds_the_same_bad_sectors(loops, backing, tmp_path):
    """GNU ddrescue is the reference: on the same device its map names the same sectors."""
    if shutil.which("ddrescue") is None:
        pytest.skip("gddrescue not installed (config/apt-test.txt)")
    path, data = backing
    rnd = random.Random(5)
    bad = [(s * 512, 512) for s in sorted(rnd.sample(range(SIZE // 512), 100))]
    bad += [(33 * MiB + 1536, 300 * 512)]
    with faulty_block_device(loops, path, bad=bad) as dev:
        ours = check_rescue(dev, data, bad)
        proc = subprocess.run(
            ["ddrescue", "-d", "-r1", "-q", dev, str(tmp_path / "out"), str(tmp_path / "map")],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    theirs = parse_mapfile((tmp_path / "map").read_text())
    assert theirs.bad_ranges() == ours.map.bad_ranges()
    assert theirs == ours.map


def test_a_healthy_image_file_reads_in_one_pass(backing):
    path, data = backing
    phases = []
    with TolerantReader(str(path)) as reader:
        image, first_pass_bad = read_whole_device(reader)
        assert reader.finish(lambda *p: phases.append(p)) == []
        assert image == data
        assert first_pass_bad == [[]] * (SIZE // CHUNK)
        assert reader.stats.reads == SIZE // CHUNK
        assert reader.map.ranges("+") == [(0, SIZE)]
        assert reader.sectors_lost == 0
        assert phases == []
        with pytest.raises(UsageError):
            reader.read(100, 512)


def test_finish_reports_progress_per_pass(loops, backing):
    path, data = backing
    bad = [(8 * MiB + k * 64 * KiB, 512) for k in range(5)]  # five blocks in a row: the rest is skipped
    bad += [(8 * MiB + 8 * KiB, 512), (8 * MiB + 16 * KiB, 512)]  # three in the first block
    with faulty_block_device(loops, path, bad=bad) as dev:
        with TolerantReader(dev) as reader:
            first = reader.read(8 * MiB, CHUNK)
            # Three failed blocks in a row: the rest of the chunk is skipped, for finish().
            assert first.bad == [(8 * MiB, CHUNK)]
            assert reader.map.ranges("*") == [(8 * MiB, 192 * KiB)]
            assert reader.map.ranges("?") == [(0, 8 * MiB), (8 * MiB + 192 * KiB, SIZE - 8 * MiB - 192 * KiB)]
            phases = []
            recovered = reader.finish(lambda *p: phases.append(p))
        names = [p[0] for p in phases]
        # In ddrescue's order. Trimming the first block from its two edges finds the bad
        # sectors at 0 and 16 KiB and leaves the one between to scraping.
        assert list(dict.fromkeys(names)) == ["copy", "trim", "scrape", "retry"]
        assert all(done <= total for _, done, total in phases)
        chunk = bytearray(first.data)
        for off, part in recovered:
            chunk[off - 8 * MiB : off - 8 * MiB + len(part)] = part
        want = expected_bad(bad, dio_granularity(dev))
        assert reader.map.bad_ranges() == want
        assert bytes(chunk) == image_with_holes(data, want)[8 * MiB : 8 * MiB + CHUNK]
        assert "\n0x00000000     +               1\n" in reader.mapfile()


def test_a_cancel_stops_before_the_next_read_and_finish_resumes(loops, backing):
    """`check` is asked before every request to the drive: raising there (the engine's
    cancel) stops the reader at once, in the middle of a chunk with bad sectors, and a
    later finish() still gives every good byte and the exact map (rescue.model.badpass)."""
    path, data = backing
    bad = [(12 * MiB + 5 * 512, 512), (12 * MiB + 300 * KiB, 512)]
    calls: list[int] = []

    def check():
        calls.append(reader.stats.reads)
        if len(calls) == 6:  # chunks 0-2 and 3, chunk 3's blocks up to its first failed one, then the trim
            raise Cancelled("capture cancelled by the user")

    with faulty_block_device(loops, path, bad=bad) as dev:
        want = expected_bad(bad, dio_granularity(dev))
        with TolerantReader(dev, check=check) as reader:
            image = bytearray(SIZE)
            cancelled = []
            for off in range(0, SIZE, CHUNK):
                try:
                    got = reader.read(off, CHUNK)
                except Cancelled:
                    cancelled.append(off)
                    assert reader.stats.reads == calls[-1]  # nothing read after the cancel
                    continue
                image[off : off + len(got.data)] = got.data
            assert cancelled == [12 * MiB]
            for off, part in reader.finish():
                image[off : off + len(part)] = part
            assert reader.map.bad_ranges() == want
            assert reader.sectors_lost * 512 == sum(n for _, n in want)
            assert image == image_with_holes(data, want)


def test_fixture_undoes_everything_when_the_test_fails(loops, backing):
    path, _ = backing
    with pytest.raises(RuntimeError):
        with faulty_block_device(loops, path, bad=[(0, 512)]) as dev:
            mnt = Path(
                subprocess.run(
                    ["losetup", "--noheadings", "--output", "BACK-FILE", dev], capture_output=True, text=True
                ).stdout.strip()
            ).parent
            assert os.path.ismount(mnt)
            raise RuntimeError("the test failed")
    assert not os.path.ismount(mnt)
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True, text=True
    ).stdout
    assert str(mnt) not in listed
    assert subprocess.run(["pgrep", "-f", f"faulty_disk.py .* {mnt}"]).returncode == 1

"""Read-ahead on a drive with bad sectors (the FUSE failing device of tests/faulty_disk.py):
the passes must get exactly the answers they get without it, so the map, the bytes and the
number of failed reads are the same, and a read that hangs is timed out as before."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from faulty_disk import faulty_block_device
from test_badread import CHUNK, SIZE, KiB, MiB, image_with_holes, read_whole_device

from rescue.hw.badread import TolerantReader

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def backing(tmp_path_factory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("ahead") / "backing.img"
    data = random.Random(2025).randbytes(SIZE)
    path.write_bytes(data)
    return path, data


def rescued(dev: str, ahead: bool, **reader_args) -> tuple[bytes, list, int, int]:
    with TolerantReader(dev, **reader_args) as reader:
        if ahead:
            reader.read_ahead([(off, CHUNK) for off in range(0, reader.size, CHUNK)])
        image, _ = read_whole_device(reader)
        return bytes(image), reader.map.bad_ranges(), reader.stats.reads, reader.stats.read_errors


def test_read_ahead_changes_nothing_the_passes_see(loops, backing):
    path, data = backing
    bad = [(0, 512), (9 * MiB + 7 * 512, 512), (CHUNK * 5 - 512, 1024), (40 * MiB, 300 * 512), (SIZE - 512, 512)]
    with faulty_block_device(loops, path, bad=bad) as dev:
        plain = rescued(dev, False)
        ahead = rescued(dev, True)
    assert ahead == plain
    image, found = plain[:2]
    assert image == image_with_holes(data, found)
    assert sum(n for _, n in found) >= sum(n for _, n in bad)


def test_a_read_ahead_that_hangs_times_out_like_any_read(loops, backing):
    path, data = backing
    stuck = (50 * MiB, 64 * KiB)
    with faulty_block_device(loops, path, slow=[(*stuck, 2.0)]) as dev:
        with TolerantReader(dev, timeout=1.0) as reader:
            reader.read_ahead([(off, CHUNK) for off in range(48 * MiB, 56 * MiB, CHUNK)])
            results = [reader.read(off, CHUNK) for off in range(48 * MiB, 56 * MiB, CHUNK)]
            assert [bad for r in results for bad in r.bad] == [stuck]
            assert reader.finish() == []
            assert reader.map.bad_ranges() == [stuck]
            assert b"".join(r.data for r in results) == image_with_holes(data, [stuck])[48 * MiB : 56 * MiB]
            assert reader.stats.timeouts == 3  # the chunk read, its 64 KiB block, the retry

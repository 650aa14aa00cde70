"""Read-ahead in the tolerant reader (rescue.hw.badread), on a plain file: what read() gives
is the file's bytes whether or not it was read ahead, a read nobody announced still works,
and no more than the limit is held. (Failing drives: tests/system/test_readahead.py.)"""

from __future__ import annotations

import random
import time

import pytest

from rescue.hw.badread import TolerantReader

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 256 * KiB


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[str, bytes]:
    data = random.Random(7).randbytes(8 * MiB + 3 * 512)  # ends off a chunk boundary
    path = tmp_path_factory.mktemp("ahead") / "drive.img"
    path.write_bytes(data)
    return str(path), data


def test_announced_reads_give_the_drives_bytes(source):
    path, data = source
    offsets = list(range(0, len(data), CHUNK))
    with TolerantReader(path) as reader:
        reader.read_ahead([(off, CHUNK) for off in offsets])
        for off in offsets:
            got = reader.read(off, CHUNK)
            assert got.bad == []
            assert got.data == data[off : off + CHUNK]
        assert reader.map.totals()["+"] == len(data)
        assert reader.stats.reads == len(offsets)


def test_reads_out_of_the_announced_order_are_still_right(source):
    path, data = source
    announced = [(off, CHUNK) for off in range(0, 4 * MiB, CHUNK)]
    with TolerantReader(path) as reader:
        reader.read_ahead(announced)
        asked = [(CHUNK, CHUNK), (0, 512), (3 * CHUNK, 4096), (5 * CHUNK, CHUNK), (6 * MiB, CHUNK), (CHUNK, CHUNK)]
        for off, n in asked:  # skipped, earlier, partial, announced, past the end, again
            assert reader.read(off, n).data == data[off : off + n]


def test_no_more_than_the_limit_is_read_ahead(source):
    path, data = source
    with TolerantReader(path) as reader:
        reader.read_ahead([(off, CHUNK) for off in range(0, len(data), CHUNK)], limit=2 * CHUNK)
        ahead = reader._drive.ahead
        assert ahead is not None
        time.sleep(0.2)  # time to read everything, were it not bounded
        assert ahead.held <= 2 * CHUNK
        assert len(ahead.ready) == 2
        assert reader.read(0, CHUNK).data == data[:CHUNK]
        time.sleep(0.2)
        assert [off for off, _, _ in ahead.ready] == [CHUNK, 2 * CHUNK]

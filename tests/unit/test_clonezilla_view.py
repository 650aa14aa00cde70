"""rescue.clonezilla.view's AreaReader: random reads over a partition's sequential stream give
the partition's bytes, and start the stream again only when they must (a chunk it passed and
no longer holds, never read before). The stream here is a stand-in with the shape of
ClonezillaImage.chunks (the real one is read by tests/system/test_clonezilla_shrink.py)."""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass

import pytest

from rescue.clonezilla.view import RECENT, AreaReader
from rescue.errors import IntegrityError
from rescue.repo.index import Index, Kind

CHUNK = 256 << 10
COUNT = 40
SIZE = COUNT * CHUNK - 4096  # a shorter last chunk


@dataclass
class Area:
    index: Index
    size: int
    label: str = "p1 (ext4)"


class Stream:
    """A partition's bytes served in order, chunk by chunk, the way ClonezillaImage.chunks
    gives them (DATA chunks only), counting how often it was started and how far it read."""

    chunk_size = CHUNK

    def __init__(self, data: bytes, area: Area, damaged: int | None = None):
        self.data, self.area, self.damaged = data, area, damaged
        self.starts = 0
        self.chunks_read = 0

    def chunks(self, area: Area) -> Generator[tuple[int, bytes], None, None]:
        self.starts += 1
        for i, kind in enumerate(area.index.kinds):
            if kind == Kind.DATA:
                if i == self.damaged:
                    raise IntegrityError(f"{area.label}: CRC32 checksum mismatch in chunk {i}")
                self.chunks_read += 1
                yield i, self.data[i * CHUNK : (i + 1) * CHUNK]


def partition(unused: set[int]) -> tuple[bytes, Area]:
    rnd = random.Random(5)
    index = Index.empty(CHUNK, SIZE)
    data = bytearray(rnd.randbytes(SIZE))
    for i in range(index.count):
        if i in unused:
            start, length = index.span(i)
            data[start : start + length] = bytes(length)
        else:
            index.set(i, Kind.DATA)
    return bytes(data), Area(index, SIZE)


@pytest.fixture
def reader(tmp_path):
    data, area = partition(unused={3, 4, 17})
    stream = Stream(data, area)
    r = AreaReader(stream, area, tmp_path / "cache")  # type: ignore[arg-type]
    yield r, stream, data
    r.close()


def test_reads_anywhere_give_the_partition_bytes(reader):
    r, stream, data = reader
    rnd = random.Random(1)
    for _ in range(300):
        off = rnd.randrange(SIZE)
        n = rnd.choice([512, 4096, 65536, 131072, 3 * CHUNK])
        assert r.read(off, n) == data[off : off + n], (off, n)
    assert r.read(SIZE - 100, 4096) == data[-100:] and r.read(SIZE, 512) == b""


def test_the_stream_starts_again_only_for_what_it_passed_and_dropped(reader):
    r, stream, data = reader
    assert r.read(3 * CHUNK, 2 * CHUNK) == bytes(2 * CHUNK) and stream.starts == 0, "free chunks need no stream"
    r.read(0, 4096)
    r.read(30 * CHUNK, 4096)
    assert stream.starts == 1 and stream.chunks_read == 28, "forward, once, to chunk 30"
    r.read(0, 4096)
    r.read(25 * CHUNK + 8192, 4096)  # read before, and passed recently: both still held
    assert stream.starts == 1
    r.read(35 * CHUNK, 4096)
    assert r.read(0, 4096) == data[:4096] and r.read(30 * CHUNK, 4096) == data[30 * CHUNK : 30 * CHUNK + 4096]
    assert stream.starts == 1, "what a tool read before comes from the cache file"
    assert r.read(30 * CHUNK - RECENT * CHUNK, 4096) == data[(30 - RECENT) * CHUNK :][:4096]
    assert stream.starts == 2, "a chunk passed, dropped and never read: from the start again"
    assert len(r.kept) == 5, "only the 64 KiB granules read are kept"


def test_damage_in_the_stream_fails_the_read(tmp_path):
    data, area = partition(unused=set())
    stream = Stream(data, area, damaged=6)
    r = AreaReader(stream, area, tmp_path / "cache")  # type: ignore[arg-type]
    try:
        assert r.read(5 * CHUNK, 512) == data[5 * CHUNK :][:512]
        for _ in range(2):  # and again: the stream starts over, and fails the same way
            with pytest.raises(IntegrityError, match="checksum mismatch in chunk 6"):
                r.read(6 * CHUNK, 512)
    finally:
        r.close()

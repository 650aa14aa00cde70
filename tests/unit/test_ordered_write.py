"""Writing an area's chunks (rescue.imaging.apply.write_chunks and the O_DIRECT writer of
write_area): fetched ahead on worker threads, written in order, consecutive chunks merged;
the file must hold exactly the image's bytes, on a filesystem that takes O_DIRECT (ext4
under tmp_path here) and on one that does not (tmpfs), and a failed fetch stops the writes."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from rescue.errors import IntegrityError
from rescue.imaging.apply import AreaSource, write_area
from rescue.imaging.progress import Meter
from rescue.repo.index import Index, Kind

KiB = 1 << 10
CHUNK = 64 * KiB
BASE = 4096  # where the area starts in the file


def area(kinds: list[Kind], size: int, broken: int | None = None) -> tuple[AreaSource, bytes]:
    """An area of `kinds` whose DATA chunks are random bytes; `broken`: fetching it fails."""
    rng = random.Random(5)
    index = Index.empty(CHUNK, size)
    want = bytearray(size)
    chunks = {}
    for i, kind in enumerate(kinds):
        start, length = index.span(i)
        index.set(i, kind, bytes(32))
        if kind == Kind.DATA:
            chunks[i] = rng.randbytes(length)
            want[start : start + length] = chunks[i]
        elif kind == Kind.UNUSED:
            want[start : start + length] = b"\xee" * length  # left as it was
    fetched: list[int] = []

    def fetch(i: int) -> bytes:
        if i == broken:
            raise IntegrityError(f"chunk {i} is damaged")
        fetched.append(i)
        return chunks[i]

    return AreaSource("p1", "p1", size, None, index, fetch), bytes(want)


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
def test_the_area_is_written_whole_and_exact(where, tmp_path):
    kinds = [Kind.DATA] * 40 + [Kind.ZERO, Kind.UNUSED, Kind.DATA, Kind.UNUSED] + [Kind.DATA] * 300 + [Kind.DATA]
    size = (len(kinds) - 1) * CHUNK + 3 * 512  # a short last chunk: off O_DIRECT's alignment
    src, want = area(kinds, size)
    base = tmp_path if where == "tmp_path" else Path(where)
    path = base / f"target-{os.getpid()}-{threading.get_ident()}.img"
    path.write_bytes(b"\xee" * (BASE + size + 4096))
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            write_area(fd, src, BASE, Meter("restore", src.write_bytes()), workers=3)
        finally:
            os.close(fd)
        got = path.read_bytes()
    finally:
        path.unlink()
    assert got[:BASE] == b"\xee" * BASE and got[BASE + size :] == b"\xee" * 4096
    assert got[BASE : BASE + size] == want


def test_a_chunk_that_fails_its_check_stops_the_writes_before_it(tmp_path):
    kinds = [Kind.DATA] * 200
    src, want = area(kinds, len(kinds) * CHUNK, broken=50)
    path = tmp_path / "target.img"
    path.write_bytes(bytes(len(want)))
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(IntegrityError, match="chunk 50"):
            write_area(fd, src, 0, Meter("restore", src.write_bytes()), workers=2)
    finally:
        os.close(fd)
    got = path.read_bytes()
    assert got[50 * CHUNK :] == bytes(150 * CHUNK)  # nothing from the damaged chunk on (in order)

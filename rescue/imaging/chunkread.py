"""Reading an area's used chunks from the source drive: the one reader capture and clone share.

Both walk an area in fixed-size chunks aligned to its start, read only the chunks that hold
bytes the filesystem uses (every byte when there is no map), and zero the free bytes inside a
chunk before anything else sees them: a capture compresses and deduplicates better, and a
clone writes the same bytes a restore of that capture would. Unreadable sectors come back as
zeros, listed in UsedChunk.bad (rescue.hw.badread); what the reader's later passes recover
is patched in with patch().
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from rescue.hw.badread import TolerantReader
from rescue.model.extents import Extent, in_range
from rescue.repo.index import Index, Kind


class UsedArea(Protocol):
    """What the reader needs of an area (capture's AreaPlan is one)."""

    offset: int  # on the drive
    size: int
    used: list[Extent] | None  # normalized, relative to the area; None: every byte


@dataclass(frozen=True)
class UsedChunk:
    data: bytes  # the chunk, free and unreadable bytes zeroed
    used: int  # bytes of it the filesystem uses (what a progress meter counts)
    bad: list[tuple[int, int]]  # (drive offset, length) of the bytes the drive did not give


def used_parts(area: UsedArea, start: int, length: int) -> list[Extent]:
    """The used parts of [start, start+length) of the area, relative to `start`."""
    return [Extent(0, length)] if area.used is None else in_range(area.used, start, start + length)


def used_chunks(area: UsedArea, chunk_size: int) -> list[int]:
    """The numbers of the area's chunks that hold used bytes, in order: walked from the map,
    so that the time does not grow with the empty space (a 2 TiB drive has 2 million chunks)."""
    if area.used is None:
        return list(range(-(-area.size // chunk_size)))
    out: list[int] = []
    for e in area.used:
        if e.length > 0:
            first = e.start // chunk_size
            out.extend(range(first if not out or out[-1] < first else out[-1] + 1, (e.end - 1) // chunk_size + 1))
    return out


_ZEROS = memoryview(bytes(4 << 20))


def _zeros(n: int) -> memoryview | bytes:
    return _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)


def keep_only(data: bytes, parts: list[Extent]) -> bytes:
    """`data` with every byte outside `parts` zeroed (`data` itself when they cover it)."""
    if len(parts) == 1 and parts[0].start == 0 and parts[0].length == len(data):
        return data
    # One copy, then the free runs zeroed: a chunk passes through here on every capture, and
    # copying the used parts into a zeroed buffer and that into bytes costs twice as much.
    out = bytearray(data)
    pos = 0
    for p in [*parts, Extent(len(out), 0)]:
        end = min(p.start, len(out))
        if end > pos:
            out[pos:end] = _zeros(end - pos)
        pos = p.end
    return out


def patch(chunk: bytes, base: int, runs: list[tuple[int, bytes]]) -> bytes:
    """`chunk` (drive bytes from `base` on) with the (drive offset, bytes) runs that overlap
    it copied in: what the reader's later passes recovered."""
    out = bytearray(chunk)
    for offset, data in runs:
        lo, hi = max(offset, base), min(offset + len(data), base + len(out))
        if lo < hi:
            out[lo - base : hi - base] = data[lo - offset : hi - offset]
    return bytes(out)


class UsedChunkReader:
    """Used chunks of areas of one drive, through one TolerantReader. Safe to call from
    several threads (clone fetches from its writer threads): reads take turns, since the
    reader is not thread-safe and a drive answers one request at a time anyway."""

    def __init__(self, reader: TolerantReader, chunk_size: int):
        self.reader, self.chunk_size = reader, chunk_size
        self._lock = threading.Lock()

    def index(self, area: UsedArea) -> Index:
        """An index of the area with DATA for every chunk holding used bytes, UNUSED for the
        others: which chunks read() will be asked for."""
        index = Index.empty(self.chunk_size, area.size)
        for i in used_chunks(area, self.chunk_size):
            index.set(i, Kind.DATA)
        return index

    def read_ahead(self, area: UsedArea, chunks: list[int]) -> None:
        """Chunks `chunks` of the area (in order) are read() next: the drive reads them
        ahead, while the caller works on the ones before (TolerantReader.read_ahead)."""
        cs = self.chunk_size
        with self._lock:
            self.reader.read_ahead([(area.offset + i * cs, min(cs, area.size - i * cs)) for i in chunks])

    def read(self, area: UsedArea, start: int, length: int) -> UsedChunk | None:
        """Bytes [start, start+length) of the area with its free bytes zeroed, or None when
        the filesystem uses none of them (nothing is read)."""
        parts = used_parts(area, start, length)
        if not parts:
            return None
        with self._lock:
            got = self.reader.read(area.offset + start, length)
        return UsedChunk(keep_only(got.data, parts), sum(p.length for p in parts), got.bad)

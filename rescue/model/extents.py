"""Byte ranges, the currency between filesystems (what is used) and the imaging engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, order=True)
class Extent:
    start: int  # byte offset within the area
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def normalize(extents: Iterable[tuple[int, int] | Extent], limit: int | None = None) -> list[Extent]:
    """Sort, merge overlapping or touching ranges, and clip to [0, limit).

    Filesystem readers emit ranges in whatever order their metadata gives; the engine wants
    a canonical list it can walk once."""
    pairs = sorted((e.start, e.length) if isinstance(e, Extent) else (e[0], e[1]) for e in extents)
    out: list[list[int]] = []
    for start, length in pairs:
        end = start + length
        if limit is not None:
            start, end = max(0, start), min(end, limit)
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [Extent(s, e - s) for s, e in out]


def total(extents: Iterable[Extent]) -> int:
    return sum(e.length for e in extents)


def with_edges(extents: Iterable[Extent], size: int, edge: int = MiB) -> list[Extent]:
    """Add the first and last `edge` bytes of an area whatever the map says: boot sectors,
    NTFS's backup boot sector and other signatures live there."""
    extra = [Extent(0, min(edge, size)), Extent(max(0, size - edge), min(edge, size))]
    return normalize(list(extents) + extra, size)


def in_range(extents: list[Extent], start: int, end: int) -> list[Extent]:
    """The parts of `extents` inside [start, end), relative to `start`. `extents` is normalized."""
    import bisect

    out = []
    i = bisect.bisect_right(extents, start, key=lambda e: e.end)  # O(log n): called per chunk
    while i < len(extents) and extents[i].start < end:
        s, e = max(extents[i].start, start), min(extents[i].end, end)
        if e > s:
            out.append(Extent(s - start, e - s))
        i += 1
    return out

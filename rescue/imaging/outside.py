"""Writing the bytes outside partitions (model/gaps.py) onto a target whose table is already
written, and reading them back.

Why after the table: writing a table with libparted clears other table types' signatures,
which zeroes sectors 1-18 of the gap after the MBR, exactly where GRUB's core image starts.
So the gaps are written once the table is there, each cut to the room it has on the target and
never over the table's own structures or a partition; then every byte written is read back
and compared with the image, so a drive missing its boot code can never be reported restored.
`rescue verify REPO NAME DISK` runs the same comparison on a drive restored earlier."""

from __future__ import annotations

import os

from rescue.errors import IntegrityError
from rescue.hw import blockdev
from rescue.hw.partitions import gpt_usable
from rescue.model import gaps
from rescue.model.extents import Extent, in_range
from rescue.model.layout import DiskLayout
from rescue.repo.index import Kind


def protected(target: str, written: DiskLayout, size: int) -> list[Extent]:
    """What the table on `target` owns, read back from the drive for GPT's exact bounds."""
    usable = gpt_usable(target, written.sector_size) if written.table == "gpt" else None
    return gaps.table_structures(written, size, usable)


def pieces(offset: int, length: int, written: DiskLayout, keep_out: list[Extent]) -> list[Extent]:
    """The target byte ranges (absolute) an area placed at `offset` with `length` bytes of
    room may write."""
    return gaps.writable(offset, length, written, keep_out)


def _chunks(src, offset: int, allowed: list[Extent]):
    """(chunk number, [(area position, target position, bytes)]) for every chunk of `src`
    with something to write; DATA and ZERO only (gaps hold no UNUSED chunks)."""
    rel = [Extent(e.start - offset, e.length) for e in allowed]
    index = src.index
    for i, kind in enumerate(index.kinds):
        if kind not in (Kind.DATA, Kind.ZERO):
            continue
        start, length = index.span(i)
        parts = in_range(rel, start, start + length)
        if parts:
            yield i, [(p.start, offset + start + p.start, p.length) for p in parts]


def write(fd: int, src, offset: int, allowed: list[Extent], meter) -> None:
    """Write `src`'s chunks (an AreaSource) at `offset`, only inside `allowed`."""
    meter.begin_area(src.label, sum(e.length for e in allowed))
    for i, parts in _chunks(src, offset, allowed):
        data = src.fetch(i) if src.index.kinds[i] == Kind.DATA else None
        for at, where, n in parts:
            if data is None:
                blockdev.zero_range(fd, where, n)
            else:
                blockdev.write_all(fd, data[at : at + n], where)
            meter.advance(n)


def mismatch(fd: int, src, offset: int, allowed: list[Extent], target: str, expect=lambda i, data: data) -> str | None:
    """The first byte in `allowed` that does not hold what the image says, as a sentence; None
    when all match. `expect(i, bytes)` may adjust a chunk for changes made on purpose after
    writing (GRUB's boot code pointed at a moved core image)."""
    for i, parts in _chunks(src, offset, allowed):
        start, length = src.index.span(i)
        data = expect(i, src.fetch(i) if src.index.kinds[i] == Kind.DATA else bytes(length))
        for at, where, n in parts:
            got = os.pread(fd, n, where)
            if got != data[at : at + n]:
                bad = next(k for k in range(len(got) + 1) if k == len(got) or got[k] != data[at + k])
                return (
                    f"{target}: byte {where + bad} ({src.label}, byte {start + at + bad} of the area) "
                    f"does not hold what the image holds"
                )
    return None


def check(target: str, sources, placements, written: DiskLayout, keep_out: list[Extent]) -> None:
    """Read back every gap written onto `target`; raise IntegrityError naming the first wrong
    byte. Runs before the steps after writing (which may patch GRUB's pointers on purpose)."""
    fd = blockdev.open_drive(target)
    try:
        for src in sources:
            place = placements[src.name]
            problem = mismatch(fd, src, place.offset, pieces(place.offset, place.size, written, keep_out), target)
            if problem:
                raise IntegrityError(f"{problem}; the target is written but would not boot as the source did")
    finally:
        os.close(fd)

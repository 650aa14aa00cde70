"""Writing a planned layout onto a drive, from any source of chunks: an image (restore) or
another drive (clone). The only engine code that writes to a target drive.

Order: the partition table, the bytes outside partitions (imaging/outside.py: boot code in
the gap after the MBR, which writing a table clears), every partition's chunks at its planned
offset; then, with the drive closed, filesystems grown in place or shrunk (never writing past
the end of a smaller partition: a shrink writes the bytes past the new end to a scratch file,
hw/splitdev.py); last, the bytes outside partitions read back and compared."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from rescue.errors import RescueError
from rescue.hw import blockdev
from rescue.hw.loop import attached
from rescue.hw.partitions import apply_layout
from rescue.imaging import outside as outside_bytes
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, fmt_bytes
from rescue.model.extents import Extent, total
from rescue.model.layout import DiskLayout
from rescue.repo.index import Index, Kind


@dataclass
class Placement:
    """Where one area lands on the target and what happens to its filesystem."""

    offset: int  # bytes on the target
    size: int  # bytes of the new partition (the area's own size when not resized)
    action: str  # keep | move | grow | shrink
    fstype: str | None = None


@dataclass
class AreaFacts:
    """What planning needs to know of an area, whether it comes from an image or a drive."""

    name: str
    partition: int | None
    size: int
    fs: dict | None
    held: list[Extent] | None = None  # byte ranges holding data, normalized; None: every byte

    def data_end(self) -> int:
        """Where the area's last byte of data ends."""
        return self.size if self.held is None else (self.held[-1].end if self.held else 0)


@dataclass
class AreaSource:
    """One area's chunks: the index says which to write (DATA) or zero (ZERO); fetch(i)
    returns chunk i's bytes, checked, and may be called from several threads."""

    name: str
    label: str
    size: int
    fs: dict | None
    index: Index
    fetch: Callable[[int], bytes]

    def write_bytes(self) -> int:
        return sum(self.index.span(i)[1] for i, k in enumerate(self.index.kinds) if k in (Kind.DATA, Kind.ZERO))


def write_drive(target: str, layout: DiskLayout, sources: list[AreaSource], placements: dict[str, Placement],
                meter: Meter, workers: int, log: JobLog, scratch_dir: str) -> None:
    outside = [s for s in sources if placements[s.name].action == "gap"]
    shrinks = [s for s in sources if placements[s.name].action == "shrink"]
    grows = [s for s in sources if placements[s.name].action == "grow"]
    keep_out: list[Extent] = []
    written = False  # once anything reached the target, an error must say so
    try:
        if layout.table != "none":
            written = True
            for note in apply_layout(target, layout):
                log(note)
            log(f"partition table written ({layout.table}, {len(layout.partitions)} partitions)")
            keep_out = outside_bytes.protected(target, layout, layout.size)
        fd = blockdev.open_drive(target, write=True)
        written = True
        try:
            for src in outside:  # after the table: writing a table clears the gap after the MBR
                place = placements[src.name]
                allowed = outside_bytes.pieces(place.offset, place.size, layout, keep_out)
                outside_bytes.write(fd, src, place.offset, allowed, meter)
                log(f"{src.label}: {fmt_bytes(total(allowed))} written at byte {place.offset}")
            for src in sources:
                if src not in outside and src not in shrinks:
                    place = placements[src.name]
                    write_area(fd, src, place.offset, meter, workers)
                    log(f"{src.label}: written at byte {place.offset}")
            blockdev.flush(fd)
        finally:
            os.close(fd)
        # Resizing goes through loop devices over the new partitions, with the drive closed:
        # the resize tools write through their own device.
        for src in grows:
            log(_resize_in_place(target, src, placements[src.name]))
        for src in shrinks:
            _write_shrunk(target, src, placements[src.name], meter, workers, log, scratch_dir)
        outside_bytes.check(target, outside, placements, layout, keep_out)
        if outside:
            log("bytes outside the partitions read back equal to the image")
    except RescueError as e:
        if not written:
            log(f"FAILED: {e}; nothing was written to {target}")
            raise
        log(f"FAILED: {e}; {target} is partly written")
        err = type(e)(f"{e}; {target} is partly written: restore onto it again before using it")
        err.exit_code = e.exit_code
        raise err from None
    fd = blockdev.open_drive(target)
    try:
        blockdev.reread_partitions(fd)
    finally:
        os.close(fd)


def write_area(fd: int, src: AreaSource, base: int, meter: Meter, workers: int) -> None:
    write_chunks(src, lambda data, pos: blockdev.write_all(fd, data, base + pos),
                 lambda pos, n: blockdev.zero_range(fd, base + pos, n), meter, workers)


def write_chunks(src: AreaSource, put: Callable[[bytes, int], None], zero: Callable[[int, int], None],
                 meter: Meter, workers: int) -> None:
    """Every DATA chunk of `src` through put(bytes, area position), every ZERO chunk through
    zero(position, length), on `workers` threads (fetching checks and decompresses)."""
    index = src.index
    meter.begin_area(src.label, src.write_bytes())

    def write(i: int) -> None:
        start, length = index.span(i)
        if index.kinds[i] == Kind.DATA:
            put(src.fetch(i), start)
        else:
            zero(start, length)
        meter.advance(length)

    todo = [i for i, k in enumerate(index.kinds) if k in (Kind.DATA, Kind.ZERO)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(write, todo):
            pass


def _resize_in_place(target: str, src: AreaSource, place: Placement) -> str:
    from rescue.filesystems.resize import resize_filesystem

    fs = src.fs or {}
    with attached(target, offset=place.offset, size=place.size) as dev:
        return resize_filesystem(fs["type"], dev, place.size, label=fs.get("label"), uuid=fs.get("uuid"))


def _write_shrunk(target: str, src: AreaSource, place: Placement, meter: Meter, workers: int, log: JobLog,
                  scratch_dir: str) -> None:
    """Shrink on the target itself (model/scratch.py says why): the filesystem's bytes inside
    the new partition go straight to their final place, those past its end to a scratch file
    in scratch_dir; the resize tool sees both as one device of the old size (hw/splitdev.py)
    and moves the tail into the partition. Nothing past the new partition's end is touched."""
    from rescue.filesystems.resize import resize_filesystem, shrink_plan_check
    from rescue.hw.splitdev import split_device

    fs = src.fs or {}
    shrink_plan_check(fs["type"], None, place.size, current_size=src.size)

    def write_into(sd) -> None:
        def zero(pos: int, n: int) -> None:  # past the new end the scratch file is a hole already
            if pos < place.size:
                sd.write(pos, bytes(min(n, place.size - pos)))

        write_chunks(src, lambda data, pos: sd.write(pos, data), zero, meter, workers)

    log(f"{src.label}: shrinking {fmt_bytes(src.size)} -> {fmt_bytes(place.size)} on the target, "
        f"scratch in {scratch_dir}")
    with split_device(target, place.offset, place.size, src.size, scratch_dir, write_into) as sd:
        log(resize_filesystem(fs["type"], sd.path, place.size, label=fs.get("label"), uuid=fs.get("uuid")))
        peak = sd.scratch_bytes()
    log(f"{src.label}: shrunk in place; scratch space used {fmt_bytes(peak)}")

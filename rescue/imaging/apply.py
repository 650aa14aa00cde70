"""Writing a planned layout onto a drive, from any source of chunks: an image (restore) or
another drive (clone). The only engine code that writes to a target drive.

Order: the first MiB, the partition table, the MBR boot code again (parted writes its own),
every area's chunks at its planned offset; then, with the drive closed, filesystems grown in
place or shrunk in a sparse staging file (never writing past the end of a smaller partition)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rescue.errors import DeviceError, RescueError
from rescue.hw import blockdev
from rescue.hw.loop import attached
from rescue.hw.partitions import apply_layout
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, fmt_bytes
from rescue.model.extents import Extent, total, with_edges
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
                meter: Meter, workers: int, log: JobLog, staging: Callable[[], Path]) -> None:
    head = next((s for s in sources if s.name == "head"), None)
    shrinks = [s for s in sources if placements[s.name].action == "shrink"]
    grows = [s for s in sources if placements[s.name].action == "grow"]
    try:
        fd = blockdev.open_drive(target, write=True)
        try:
            if head is not None:
                write_area(fd, head, 0, meter, workers)
                os.fsync(fd)
                for note in apply_layout(target, layout):
                    log(note)
                if head.index.count and head.index.kinds[0] == Kind.DATA:
                    _pwrite_all(fd, head.fetch(0)[:440], 0)  # parted replaced the MBR boot code
                log(f"partition table written ({layout.table}, {len(layout.partitions)} partitions)")
            for src in sources:
                if src is not head and src not in shrinks:
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
            _write_shrunk(target, src, placements[src.name], meter, workers, log, staging())
    except RescueError as e:
        log(f"FAILED: {e}; the target is partially written")
        raise
    fd = blockdev.open_drive(target)
    try:
        blockdev.reread_partitions(fd)
    finally:
        os.close(fd)


def write_area(fd: int, src: AreaSource, base: int, meter: Meter, workers: int) -> None:
    index = src.index
    meter.begin_area(src.label, src.write_bytes())

    def write(i: int) -> None:
        start, length = index.span(i)
        if index.kinds[i] == Kind.DATA:
            _pwrite_all(fd, src.fetch(i), base + start)
        else:
            blockdev.zero_range(fd, base + start, length)
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
                  workdir: Path) -> None:
    """Shrink in a sparse staging file of the old size, then copy the shrunk filesystem's
    used blocks onto the target."""
    from rescue.filesystems import identify
    from rescue.filesystems.base import Volume
    from rescue.filesystems.resize import staged

    fs = src.fs or {}

    def write_into(path: str) -> None:
        sfd = os.open(path, os.O_WRONLY)
        try:
            write_area(sfd, src, 0, meter, workers)
        finally:
            os.close(sfd)

    log(f"{src.label}: shrinking {fmt_bytes(src.size)} -> {fmt_bytes(place.size)} in {workdir}")
    with staged(fs["type"], src.size, place.size, str(workdir), write_into) as dev:
        _, mod = identify(Volume(dev, 0, place.size))
        used = mod.used_extents(Volume(dev, 0, place.size)) if mod else [Extent(0, place.size)]
        extents = with_edges(used, place.size)
        sfd = os.open(dev, os.O_RDONLY)
        dst = blockdev.open_drive(target, write=True)
        try:
            for e in extents:
                for pos in range(e.start, e.end, 4 << 20):
                    n = min(4 << 20, e.end - pos)
                    _pwrite_all(dst, os.pread(sfd, n, pos), place.offset + pos)
            blockdev.flush(dst)
        finally:
            os.close(sfd)
            os.close(dst)
    log(f"{src.label}: shrunk and written ({fmt_bytes(total(extents))} copied)")


def staging_dir(preferred: Path | None) -> Path:
    """Sparse staging files go beside the repository when it is writable (a real disk), else
    to the temporary directory (RAM on the live system: fine for mostly-empty filesystems)."""
    import tempfile

    for d in ([preferred] if preferred else []) + [Path(tempfile.gettempdir()) / "rescue-staging"]:
        try:
            d.mkdir(exist_ok=True)
            probe = d / ".probe"
            probe.touch()
            probe.unlink()
            return d
        except OSError:
            continue
    raise DeviceError("no writable place for the staging file of a shrink")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise DeviceError(f"write error at byte {offset} of the target ({e.strerror})") from None

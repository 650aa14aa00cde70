"""Restore: an image onto a drive. Plan (what will be written where, does it fit), check the
image, then write: the first MiB, the partition table, then every area's chunks.

Only chunks holding data are written, and ZERO chunks are zeroed; UNUSED chunks are left as
they are (the filesystem does not care what free blocks hold)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from rescue.errors import DeviceError, IntegrityError, RescueError, TooSmallError, UsageError
from rescue.hw import blockdev
from rescue.hw.loop import attached
from rescue.hw.partitions import apply_layout, read_layout
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.verify import check_chunks, data_chunks, load_indexes
from rescue.model.layout import DiskLayout
from rescue.model.plan import PartFacts, plan_layout
from rescue.repo.index import Index, Kind
from rescue.model.extents import Extent, total, with_edges
from rescue.repo.manifest import Area, Manifest
from rescue.repo.store import Repository, now_iso

POLICIES = ("auto", "same", "proportional", "grow-last")
GROWABLE = {"ext2", "ext3", "ext4", "xfs", "btrfs", "ntfs", "vfat", "swap"}
SHRINKABLE = {"ext2", "ext3", "ext4", "btrfs", "ntfs", "vfat", "swap"}


@dataclass
class Placement:
    """Where one area of the image lands on the target and what happens to its filesystem."""

    offset: int  # bytes on the target
    size: int  # bytes of the new partition (the area's own size when not resized)
    action: str  # keep | move | grow | shrink
    fstype: str | None = None


@dataclass
class RestorePlan:
    image: str
    target_path: str
    target_size: int
    policy: str
    layout: DiskLayout  # what will be written
    current: DiskLayout | None  # what the target holds now
    fits: bool
    reason: str
    write_bytes: int
    placements: dict[str, Placement]  # by area name
    notes: list[str] = field(default_factory=list)
    table: str = ""  # the plan as a person reads it

    def resizes(self) -> bool:
        return any(p.action in ("grow", "shrink") for p in self.placements.values())


@dataclass
class RestoreResult:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str


def target_geometry(path: str) -> tuple[int, int]:
    """(size in bytes, logical sector size)."""
    fd = blockdev.open_drive(path)
    try:
        return blockdev.size_of(fd), blockdev.logical_sector_size(fd)
    finally:
        os.close(fd)


def facts_of(manifest: Manifest) -> dict[int, PartFacts]:
    """What the planner may do with each partition, from what capture recorded."""
    out = {}
    for area in manifest.areas:
        if area.partition is None:
            continue
        fs = area.fs or {}
        fstype = fs.get("type")
        out[area.partition] = PartFacts(fstype=fstype, min_size=fs.get("min_size"),
                                        can_shrink=fstype in SHRINKABLE, can_grow=fstype in GROWABLE)
    return out


def plan_restore(repo: Repository, name: str, target: str, policy: str = "auto",
                 manifest: Manifest | None = None, indexes: dict[str, Index] | None = None) -> RestorePlan:
    """The layout that would be written on `target`, and whether the data fits. Writes nothing.
    Policy auto: the same layout on a drive of the same size, proportional otherwise."""
    if policy not in POLICIES:
        raise UsageError(f"unknown layout policy {policy!r} (choose from {', '.join(POLICIES)})")
    if manifest is None or indexes is None:
        manifest, indexes = load_indexes(repo, name)
    size, sector_size = target_geometry(target)
    try:
        current = read_layout(target)
    except RescueError:
        current = None
    write = sum(indexes[a.name].span(i)[1] for a in manifest.areas
                for i, k in enumerate(indexes[a.name].kinds) if k in (Kind.DATA, Kind.ZERO))
    image = manifest.layout
    if image.table == "none":
        fits = image.size <= size
        reason = (f"fits: the image needs {fmt_bytes(image.size)}, {target} has {fmt_bytes(size)}" if fits
                  else _too_small(target, image.size, size))
        area = manifest.areas[0]
        layout = DiskLayout.from_dict({**image.to_dict(), "size": size})
        return RestorePlan(name, target, size, "same", layout, current, fits, reason, write,
                           {area.name: Placement(0, area.size, "keep")}, table=reason)
    if policy == "auto":
        policy = "same" if abs(size - image.size) < (1 << 20) else "proportional"
    lp = plan_layout(image, facts_of(manifest), size, sector_size, policy)
    moves = {m.number: m for m in lp.moves}
    placements = {"head": Placement(0, min(manifest.area("head").size, size), "keep")}
    for area in manifest.areas:
        if area.partition is not None:
            m = moves[area.partition]
            placements[area.name] = Placement(m.new_start, m.new_size, m.action, (area.fs or {}).get("type"))
    reason = lp.reason if lp.fits else _too_small(target, size + lp.shortfall, size, lp.reason)
    return RestorePlan(name, target, size, policy, lp.layout, current, lp.fits, reason, write,
                       placements, list(lp.notes), lp.render())


def _too_small(target: str, need: int, have: int, detail: str = "") -> str:
    return (f"{target} is too small: the image needs {fmt_bytes(need)}, the drive has {fmt_bytes(have)}, "
            f"short by {fmt_bytes(need - have)} ({need - have} bytes)" + (f"; {detail}" if detail else ""))


def restore(repo: Repository, name: str, target: str, *, preverify: bool = True,
            progress: ProgressCallback = no_progress, cancel: threading.Event | None = None,
            plan: RestorePlan | None = None, threads: int | None = None,
            log_dir: Path | None = None) -> RestoreResult:
    started = time.monotonic()
    manifest, indexes = load_indexes(repo, name)
    check_target_allowed(target, str(repo.path))
    plan = plan or plan_restore(repo, name, target, manifest=manifest, indexes=indexes)
    if not plan.fits:
        raise TooSmallError(plan.reason)
    log = JobLog(_log_path(repo, name, log_dir))
    log(f"restoring image {name} from {repo.path} onto {target} ({fmt_bytes(plan.target_size)})")
    workers = threads or os.cpu_count() or 1
    if preverify:
        refs = data_chunks(manifest, indexes)
        meter = Meter("verify", sum(r.length for r in refs.values()), progress, cancel)
        check_chunks(repo, name, refs, meter, workers)
        log(f"image verified: {len(refs)} chunks")
    meter = Meter("restore", plan.write_bytes, progress, cancel)
    shrinks = [a for a in manifest.areas if plan.placements[a.name].action == "shrink"]
    grows = [a for a in manifest.areas if plan.placements[a.name].action == "grow"]
    try:
        fd = blockdev.open_drive(target, write=True)
        try:
            if "head" in indexes:
                head = manifest.area("head")
                _write_area(repo, name, fd, head.label, 0, indexes["head"], meter, workers)
                os.fsync(fd)
                for note in apply_layout(target, plan.layout):
                    log(note)
                _restore_boot_code(repo, name, fd, indexes["head"])
                log(f"partition table written ({plan.layout.table}, {len(plan.layout.partitions)} partitions)")
            for area in manifest.areas:
                if area.name != "head" and area not in shrinks:
                    place = plan.placements[area.name]
                    _write_area(repo, name, fd, area.label, place.offset, indexes[area.name], meter, workers)
                    log(f"{area.label}: written at byte {place.offset}")
            blockdev.flush(fd)
        finally:
            os.close(fd)
        # Filesystems are resized through loop devices over their new partitions, with the
        # drive closed: the resize tools write through their own device.
        for area in grows:
            log(_resize_in_place(target, area, plan.placements[area.name]))
        for area in shrinks:
            _restore_shrunk(repo, name, target, area, indexes[area.name], plan.placements[area.name],
                            meter, workers, log)
    except RescueError as e:
        log(f"FAILED: {e}; the target is partially written")
        raise
    fd = blockdev.open_drive(target)
    try:
        blockdev.reread_partitions(fd)
    finally:
        os.close(fd)
    meter.finish()
    seconds = time.monotonic() - started
    log(f"done: wrote {fmt_bytes(meter.done)} in {seconds:.1f} s")
    return RestoreResult(target, meter.done, seconds, preverify, str(log.path or ""))


def _resize_in_place(target: str, area: Area, place: Placement) -> str:
    from rescue.filesystems.resize import resize_filesystem

    fs = area.fs or {}
    with attached(target, offset=place.offset, size=place.size) as dev:
        return resize_filesystem(fs["type"], dev, place.size, label=fs.get("label"), uuid=fs.get("uuid"))


def _restore_shrunk(repo: Repository, name: str, target: str, area: Area, index: Index, place: Placement,
                    meter: Meter, workers: int, log: JobLog) -> None:
    """Shrink in a sparse staging file of the old size (never writing beyond the smaller
    partition on the target), then copy the shrunk filesystem's used blocks onto the target."""
    from rescue.filesystems import identify
    from rescue.filesystems.base import Volume
    from rescue.filesystems.resize import staged

    fs = area.fs or {}

    def write_into(path: str) -> None:
        sfd = os.open(path, os.O_WRONLY)
        try:
            _write_area(repo, name, sfd, area.label, 0, index, meter, workers)
        finally:
            os.close(sfd)

    workdir = _staging_dir(repo)
    log(f"{area.label}: shrinking {fmt_bytes(area.size)} -> {fmt_bytes(place.size)} in {workdir}")
    with staged(fs["type"], area.size, place.size, str(workdir), write_into) as dev:
        info, mod = identify(Volume(dev, 0, place.size))
        used = mod.used_extents(Volume(dev, 0, place.size)) if mod else [Extent(0, place.size)]
        extents = with_edges(used, place.size)
        src = os.open(dev, os.O_RDONLY)
        dst = blockdev.open_drive(target, write=True)
        try:
            for e in extents:
                pos = e.start
                while pos < e.end:
                    n = min(4 << 20, e.end - pos)
                    _pwrite_all(dst, os.pread(src, n, pos), place.offset + pos)
                    pos += n
            blockdev.flush(dst)
        finally:
            os.close(src)
            os.close(dst)
    log(f"{area.label}: shrunk and written ({fmt_bytes(total(extents))} copied)")


def _staging_dir(repo: Repository) -> Path:
    """Sparse staging files go beside the repository when it is writable (a real disk), else
    to the temporary directory (RAM on the live system: fine for mostly-empty filesystems)."""
    for d in (repo.path / ".staging", Path(tempfile.gettempdir()) / "rescue-staging"):
        try:
            d.mkdir(exist_ok=True)
            probe = d / ".probe"
            probe.touch()
            probe.unlink()
            return d
        except OSError:
            continue
    raise DeviceError("no writable place for the staging file of a shrink")


def _write_area(repo: Repository, name: str, fd: int, label: str, base: int, index: Index,
                meter: Meter, workers: int) -> None:
    meter.begin_area(label, sum(index.span(i)[1] for i, k in enumerate(index.kinds)
                                if k in (Kind.DATA, Kind.ZERO)))
    local = threading.local()

    def write(i: int) -> None:
        start, length = index.span(i)
        where = f"image {name}, {label}, chunk {i} at offset {start}"
        if index.kinds[i] == Kind.DATA:
            dctx = getattr(local, "dctx", None) or zstandard.ZstdDecompressor()
            local.dctx = dctx
            data = repo.read_chunk(index.digests[i], where, dctx)  # hash checked before writing
            if len(data) != length:
                raise IntegrityError(f"{where}: chunk has {len(data)} bytes, expected {length}")
            _pwrite_all(fd, data, base + start)
        else:
            blockdev.zero_range(fd, base + start, length)
        meter.advance(length)

    todo = [i for i, k in enumerate(index.kinds) if k in (Kind.DATA, Kind.ZERO)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(write, todo):
            pass


def _restore_boot_code(repo: Repository, name: str, fd: int, head: Index) -> None:
    """Put the image's MBR boot code (bytes 0-439) back: parted replaces it with its own when
    it writes a fresh MBR. The partition entries and disk id after it stay as written."""
    if head.count and head.kinds[0] == Kind.DATA:
        first = repo.read_chunk(head.digests[0], f"image {name}, disk head")
        _pwrite_all(fd, first[:440], 0)
        os.fsync(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise DeviceError(f"write error at byte {offset} of the target ({e.strerror})") from None


def check_target_allowed(target: str, repo_path: str) -> None:
    """The safety rules (rescue.hw.safety), applied before asking and again before writing."""
    try:
        from rescue.hw.safety import check_target
    except ImportError:
        return
    check_target(target, repo_path=repo_path)


def _log_path(repo: Repository, name: str, log_dir: Path | None) -> Path | None:
    """Beside the image when the repository is writable, else in /run (read-only media)."""
    stamp = now_iso().replace(":", "")
    for d in ([log_dir] if log_dir else []) + [repo.image_dir(name), Path("/run/rescue")]:
        try:
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"restore-{stamp}.log"
            path.touch()
            return path
        except OSError:
            continue
    return None

"""Restore: an image onto a drive. Plan (what will be written where, does it fit), check the
image, then write: the first MiB, the partition table, then every area's chunks.

Only chunks holding data are written, and ZERO chunks are zeroed; UNUSED chunks are left as
they are (the filesystem does not care what free blocks hold)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import zstandard

from rescue.errors import DeviceError, IntegrityError, RefusedError, TooSmallError
from rescue.hw import blockdev
from rescue.hw.partitions import apply_layout, read_layout
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.verify import check_chunks, data_chunks, load_indexes
from rescue.model.layout import DiskLayout
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Manifest
from rescue.repo.store import Repository, now_iso

POLICIES = ("same",)


@dataclass
class RestorePlan:
    image: str
    target_path: str
    target_size: int
    layout: DiskLayout  # what will be written
    current: DiskLayout | None  # what the target holds now
    fits: bool
    reason: str
    write_bytes: int
    # where each area of the image lands on the target: area name -> byte offset
    placements: dict[str, int]


@dataclass
class RestoreResult:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str


def target_size(path: str) -> int:
    fd = blockdev.open_drive(path)
    try:
        return blockdev.size_of(fd)
    finally:
        os.close(fd)


def plan_restore(repo: Repository, name: str, target: str, policy: str = "same",
                 manifest: Manifest | None = None, indexes: dict[str, Index] | None = None) -> RestorePlan:
    if policy not in POLICIES:
        raise RefusedError(f"layout policy {policy!r} is not available (choose from {', '.join(POLICIES)})")
    if manifest is None or indexes is None:
        manifest, indexes = load_indexes(repo, name)
    size = target_size(target)
    try:
        current = read_layout(target)
    except Exception:
        current = None
    layout = DiskLayout.from_dict(manifest.layout.to_dict())
    layout.size = size
    need = manifest.layout.end_bytes() if manifest.layout.table != "none" else manifest.layout.size
    fits = need <= size
    reason = (f"fits: the image needs {fmt_bytes(need)}, {target} has {fmt_bytes(size)}" if fits else
              f"{target} is too small: the image needs {fmt_bytes(need)} ({need} bytes), the drive has "
              f"{fmt_bytes(size)} ({size} bytes), short by {fmt_bytes(need - size)}")
    write = sum(indexes[a.name].span(i)[1] for a in manifest.areas
                for i, k in enumerate(indexes[a.name].kinds) if k in (Kind.DATA, Kind.ZERO))
    return RestorePlan(name, target, size, layout, current, fits, reason, write,
                       {a.name: a.offset for a in manifest.areas})


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
    fd = blockdev.open_drive(target, write=True)
    try:
        if "head" in indexes:
            head = manifest.area("head")
            _write_area(repo, name, fd, head.label, plan.placements["head"], indexes["head"], meter, workers)
            os.fsync(fd)
            for note in apply_layout(target, plan.layout):
                log(note)
            _restore_boot_code(repo, name, fd, indexes["head"])
            log(f"partition table written ({plan.layout.table}, {len(plan.layout.partitions)} partitions)")
        for area in manifest.areas:
            if area.name != "head":
                _write_area(repo, name, fd, area.label, plan.placements[area.name], indexes[area.name],
                            meter, workers)
                log(f"{area.label}: written")
        blockdev.flush(fd)
        blockdev.reread_partitions(fd)
    except IntegrityError as e:
        log(f"FAILED: {e}; the target is partially written")
        raise
    finally:
        os.close(fd)
    meter.finish()
    seconds = time.monotonic() - started
    log(f"done: wrote {fmt_bytes(meter.done)} in {seconds:.1f} s")
    return RestoreResult(target, meter.done, seconds, preverify, str(log.path or ""))


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

"""Capture: a whole drive into a repository as an image.

Plan first (which areas, which filesystems, which byte ranges are in use), then read only chunks
that hold used bytes, zero the free blocks inside them, and hand them to a thread pool that
hashes, compresses and stores what the repository does not hold yet."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from rescue import __version__
from rescue.errors import DeviceError, RescueError
from rescue.filesystems import identify
from rescue.filesystems.base import FsInfo, Volume
from rescue.hw import blockdev
from rescue.hw.partitions import read_layout
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.model.extents import MiB, Extent, in_range, total, with_edges
from rescue.model.layout import DiskLayout
from rescue.repo import chunks
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Area, Manifest
from rescue.repo.store import Repository, check_name, now_iso

HEAD_SIZE = MiB


@dataclass
class AreaPlan:
    name: str
    offset: int
    size: int
    partition: int | None = None
    fs: FsInfo | None = None
    used: list[Extent] | None = None  # None: image every byte

    @property
    def label(self) -> str:
        kind = self.fs.type if self.fs else "raw"
        return "disk head" if self.name == "head" else f"{self.name} ({kind})"

    def read_bytes(self) -> int:
        return self.size if self.used is None else total(self.used)


@dataclass
class CapturePlan:
    source: str
    layout: DiskLayout
    areas: list[AreaPlan] = field(default_factory=list)

    def read_bytes(self) -> int:
        return sum(a.read_bytes() for a in self.areas)


@dataclass
class CaptureResult:
    name: str
    bytes_read: int
    data_bytes: int
    stored_bytes: int
    seconds: float
    log_path: str


def plan_capture(source: str, log=lambda m: None) -> CapturePlan:
    """Which areas to image and which bytes of each are in use. Reads metadata only."""
    layout = read_layout(source)
    plan = CapturePlan(source, layout, [AreaPlan("head", 0, min(HEAD_SIZE, layout.size))])
    for p in layout.data_partitions():
        vol = Volume(source, p.offset(layout.sector_size), p.size(layout.sector_size))
        area = AreaPlan(f"p{p.number}", vol.offset, vol.size, partition=p.number)
        try:
            area.fs, mod = identify(vol)
            if mod is not None:
                area.used = with_edges(mod.used_extents(vol), vol.size)
        except RescueError as e:
            # A damaged filesystem is still imaged, whole: losing bytes is worse than time.
            log(f"{area.name}: cannot map used blocks ({e}); imaging every byte")
            area.used = None
        log(f"{area.name}: {area.fs.type if area.fs else 'no filesystem'}, "
            f"{fmt_bytes(area.read_bytes())} of {fmt_bytes(area.size)} to read"
            + ("" if area.used is not None else " (whole area)"))
        plan.areas.append(area)
    return plan


class _Storer:
    """Hash, compress and store chunks on worker threads. One compressor per thread
    (a ZstdCompressor is not thread-safe)."""

    def __init__(self, repo: Repository, level: int):
        self.repo, self.level = repo, level
        self.local = threading.local()
        self.lock = threading.Lock()
        self.seen: set[bytes] = set()
        self.stored_bytes = 0
        self.new_chunks = 0

    def store(self, data: bytes) -> bytes:
        dig = chunks.digest(data)
        with self.lock:
            known = dig in self.seen
            self.seen.add(dig)
        if known or self.repo.has_chunk(dig):
            return dig
        cctx = getattr(self.local, "cctx", None)
        if cctx is None:
            cctx = self.local.cctx = zstandard.ZstdCompressor(level=self.level)
        added = self.repo.write_chunk(dig, chunks.encode(data, cctx))
        with self.lock:
            self.stored_bytes += added
            self.new_chunks += 1
        return dig


def capture(source: str, repo_path: str | Path, name: str, *, level: int = 3, threads: int | None = None,
            chunk_size: int = 4 << 20, progress: ProgressCallback = no_progress,
            cancel: threading.Event | None = None) -> CaptureResult:
    check_name(name)
    repo = Repository.open_or_create(repo_path, chunk_size)
    _check_source(source, str(repo.path))
    started = time.monotonic()
    with repo.writer_lock():
        image_dir = repo.start_image(name)
        log = JobLog(image_dir / "log.txt")
        log(f"rescue {__version__}: capturing {source} into {repo.path} as {name}")
        plan = plan_capture(source, log)
        meter = Meter("capture", plan.read_bytes(), progress, cancel)
        storer = _Storer(repo, level)
        fd = blockdev.open_drive(source)
        try:
            source_facts = _source_facts(source, fd, plan.layout)
            areas = []
            with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
                for ap in plan.areas:
                    areas.append(_capture_area(fd, ap, repo, image_dir, storer, pool, meter, log,
                                               threads or os.cpu_count() or 1))
        finally:
            os.close(fd)
        meter.finish()
        _sync(repo.path)
        seconds = time.monotonic() - started
        data_bytes = sum(a.stats["data_bytes"] for a in areas)
        manifest = Manifest(name=name, created=now_iso(), rescue_version=__version__,
                            chunk_size=repo.chunk_size, hash="sha256", source=source_facts,
                            layout=plan.layout, areas=areas,
                            stats={"read_bytes": meter.done, "data_bytes": data_bytes,
                                   "stored_bytes": storer.stored_bytes, "new_chunks": storer.new_chunks,
                                   "seconds": round(seconds, 3)})
        log(f"done: read {fmt_bytes(meter.done)}, data {fmt_bytes(data_bytes)}, "
            f"stored {fmt_bytes(storer.stored_bytes)} new in {storer.new_chunks} chunks, {seconds:.1f} s")
        repo.commit_manifest(manifest)
    return CaptureResult(name, meter.done, data_bytes, storer.stored_bytes, seconds, str(image_dir / "log.txt"))


def _capture_area(fd: int, ap: AreaPlan, repo: Repository, image_dir: Path, storer: _Storer,
                  pool: ThreadPoolExecutor, meter: Meter, log: JobLog, threads: int) -> Area:
    index = Index.empty(repo.chunk_size, ap.size)
    zero = bytes(repo.chunk_size)
    counts = {k.name.lower(): 0 for k in Kind}
    data_bytes = 0
    pending: list[tuple[int, Future]] = []
    meter.begin_area(ap.label, ap.read_bytes())

    def settle(limit: int) -> None:
        while len(pending) > limit:
            i, fut = pending.pop(0)
            index.set(i, Kind.DATA, fut.result())

    for i in range(index.count):
        start, length = index.span(i)
        parts = [Extent(0, length)] if ap.used is None else in_range(ap.used, start, start + length)
        if not parts:
            index.set(i, Kind.UNUSED)
            counts["unused"] += 1
            continue
        data = _read(fd, ap.offset + start, length, ap.label)
        if ap.used is not None and not (len(parts) == 1 and parts[0].length == length):
            data = _keep_only(data, parts)
        meter.advance(sum(p.length for p in parts))
        if data == zero[:length]:
            index.set(i, Kind.ZERO)
            counts["zero"] += 1
            continue
        counts["data"] += 1
        data_bytes += length
        pending.append((i, pool.submit(storer.store, data)))
        settle(threads * 3)
    settle(0)
    blob = index.to_bytes()
    (image_dir / f"{ap.name}.idx").write_bytes(blob)
    log(f"{ap.name}: {counts['data']} data, {counts['zero']} zero, {counts['unused']} unused chunks")
    fs = None
    if ap.fs is not None:
        fs = {k: v for k, v in vars(ap.fs).items()}
    return Area(name=ap.name, offset=ap.offset, size=ap.size, index=f"{ap.name}.idx",
                index_sha256=hashlib.sha256(blob).hexdigest(), partition=ap.partition, fs=fs,
                stats={**counts, "data_bytes": data_bytes, "mapped_bytes": ap.read_bytes(),
                       "map": "whole" if ap.used is None else (ap.fs.map_source if ap.fs else "map")})


def _read(fd: int, offset: int, length: int, label: str) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as e:
        raise DeviceError(f"{label}: read error at byte {offset} ({e.strerror})") from None
    if len(data) != length:
        raise DeviceError(f"{label}: short read at byte {offset}: the drive ended early or vanished")
    return data


def _keep_only(data: bytes, parts: list[Extent]) -> bytes:
    """Zero the bytes the filesystem does not use: better compression and deduplication."""
    out = bytearray(len(data))
    view = memoryview(data)
    for p in parts:
        out[p.start:p.end] = view[p.start:p.end]
    return bytes(out)


def _source_facts(source: str, fd: int, layout: DiskLayout) -> dict:
    facts = {"path": source, "size": layout.size, "logical_sector_size": blockdev.logical_sector_size(fd),
             "physical_sector_size": blockdev.physical_sector_size(fd), "model": "", "serial": "", "bus": ""}
    try:
        from rescue.hw.devices import drive_info

        d = drive_info(source)
        facts.update(model=d.model or "", serial=d.serial or "", bus=d.bus or "")
    except (ImportError, RescueError):
        pass
    return facts


def _check_source(source: str, repo_path: str) -> None:
    try:
        from rescue.hw.safety import check_source
    except ImportError:
        return
    check_source(source, repo_path=repo_path)


def _sync(path: Path) -> None:
    """Chunk files durable before the manifest that references them is written."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).syncfs(fd)
        except (OSError, AttributeError):
            os.sync()
    finally:
        os.close(fd)

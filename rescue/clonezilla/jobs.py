"""The jobs on a Clonezilla image: plan, verify, restore straight from its directory, and
import into a repository. Each is the rescue image's job over rescue.clonezilla.source:
the same planner (imaging.restore.plan_onto), the same writer and boot steps
(imaging.apply.execute), the same storing of chunks (imaging.capture's storer, manifest
record and undo on failure)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rescue import __version__
from rescue.clonezilla import minsize
from rescue.clonezilla.source import ClonezillaImage
from rescue.config import CHUNK_SIZE
from rescue.filesystems.base import FsInfo
from rescue.imaging.log import log_file
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.restore import ImageWrite, RestorePlan, RestoreResult, TargetFacts, look_at, plan_onto, write_image
from rescue.imaging.verify import VerifyResult
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Manifest
from rescue.repo.store import Repository, now_iso


def plan(
    image: ClonezillaImage,
    target: str,
    policy: str = "auto",
    scratch_dir: str | None = None,
    fresh_ids: bool = False,
    facts: TargetFacts | None = None,
) -> RestorePlan:
    """What restoring the Clonezilla image onto `target` would write. Writes nothing. When the
    partitions do not fit at their saved sizes, their filesystems' minimum sizes (which
    Clonezilla does not keep) are measured in the image and the plan is made again with
    them: it may then shrink them, as for a rescue image (rescue.clonezilla.minsize)."""
    onto = facts or look_at(target)

    def planned() -> RestorePlan:
        return plan_onto(
            image.name,
            image.layout,
            image.area_facts(),
            onto,
            policy,
            image.write_bytes(),
            scratch_dir,
            fresh_ids=fresh_ids,
        )

    first = planned()
    if first.fits or first.policy == "same" or not minsize.unmeasured(image):
        return first
    measured = minsize.measure(image, scratch_dir)
    again = planned()
    again.notes += measured
    return again


def verify(
    image: ClonezillaImage, progress: ProgressCallback = no_progress, cancel: threading.Event | None = None
) -> VerifyResult:
    """Every partition's image read to its end and every checksum checked."""
    meter = Meter("verify", image.write_bytes(), progress, cancel)
    chunks, nbytes = image.check(meter)
    meter.finish()
    return VerifyResult(image.name, chunks, nbytes)


def restore(
    image: ClonezillaImage,
    target: str,
    plan: RestorePlan,
    *,
    preverify: bool = True,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    log_dir: Path | None = None,
) -> RestoreResult:
    """Exactly the confirmed plan, as a rescue image's restore (imaging.restore.write_image):
    the drive holding the image directory is refused as a repository's is, and unless told
    not to a checking pass over the whole image runs first."""

    def check(progress: ProgressCallback, cancel: threading.Event | None) -> str:
        checked = verify(image, progress, cancel)
        return f"{checked.chunks} chunks, {fmt_bytes(checked.bytes)}"

    return write_image(
        target,
        plan,
        ImageWrite(
            image.name, f"Clonezilla image {image.cz.path}", str(image.cz.path), image.layout, image.sources, check
        ),
        lambda: _log_path(log_dir),
        preverify=preverify,
        progress=progress,
        cancel=cancel,
        threads=threads or os.cpu_count() or 1,
        started=time.monotonic(),
    )


def _log_path(log_dir: Path | None) -> Path | None:
    """A Clonezilla directory is not ours to write into: the log goes to /run/rescue."""
    return log_file("restore", [log_dir] if log_dir else [])


@dataclass
class ImportResult:
    name: str
    bytes_read: int  # bytes of data read out of the Clonezilla image
    stored_bytes: int  # chunk bytes added to the repository
    seconds: float
    log_path: str


def import_image(
    source: str,
    repo_path: str,
    name: str,
    *,
    level: int = 3,
    threads: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> ImportResult:
    """The Clonezilla image as a rescue image in `repo_path` (created if missing): chunks of
    the repository's size, free blocks zeroed, all-zero chunks as ZERO, chunks the
    repository holds already not stored again. Damage found on the way undoes the import."""
    from rescue.repo.store import check_name

    check_name(name)
    repo = Repository.open_or_create(repo_path, chunk_size)
    try:
        return _import(source, repo, name, level, threads, progress, cancel)
    finally:
        repo.close()


def _import(
    source: str,
    repo: Repository,
    name: str,
    level: int,
    threads: int | None,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> ImportResult:
    # capture's own pieces: the storer (hash, compress, dedup on threads), the index and
    # manifest records, and the undo of a failed job (its new chunks and files removed)
    from rescue.imaging.capture import AreaPlan, _area_record, _settle, _Storer, _sync, _Undo

    started = time.monotonic()
    image = ClonezillaImage.open(source, chunk_size=repo.chunk_size)
    workers = threads or os.cpu_count() or 1
    with repo.writer_lock("import"), _Undo(repo, name) as undo:
        log = undo.log
        log(f"rescue {__version__}: importing Clonezilla image {image.cz.path} into {repo.where} as {name}")
        for line in minsize.measure(image):  # kept in the manifest, as capture keeps them
            log(line)
        meter = undo.meter = Meter("import", image.write_bytes(), progress, cancel)
        storer = _Storer(repo, level)
        records = []
        zero = bytes(repo.chunk_size)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for area in image.areas:
                index = Index.empty(repo.chunk_size, area.size)
                pending: list[tuple[Index, int, Future[bytes]]] = []
                meter.begin_area(area.label, area.write_bytes())
                for i, data in image.chunks(area):
                    meter.advance(len(data))
                    if data == zero[: len(data)]:
                        index.set(i, Kind.ZERO)
                    else:
                        pending.append((index, i, pool.submit(storer.store, data)))
                        _settle(pending, workers * 3)
                _settle(pending, 0)
                fs = FsInfo(**area.fs) if area.fs and area.fs.get("type") else None
                plan = AreaPlan(area.name, area.offset, area.size, area.partition, fs, area.held())
                records.append(_area_record(plan, index, repo, name))
                log(f"{area.name}: {index.kinds.count(Kind.DATA)} data, {index.kinds.count(Kind.ZERO)} zero chunks")
        meter.finish()
        if repo.path is not None:
            _sync(repo.path)
        seconds = time.monotonic() - started
        manifest = Manifest(
            name=name,
            created=now_iso(),
            rescue_version=__version__,
            chunk_size=repo.chunk_size,
            hash="sha256",
            source=image.manifest().source,
            layout=image.layout,
            areas=records,
            stats={
                "read_bytes": meter.done,
                "data_bytes": sum(a.stats["data_bytes"] for a in records),
                "stored_bytes": storer.stored_bytes,
                "new_chunks": storer.new_chunks,
                "seconds": round(seconds, 3),
                "sectors_lost": 0,
                "bad_map": None,
            },
        )
        log(f"done: read {fmt_bytes(meter.done)}, stored {fmt_bytes(storer.stored_bytes)} new, {seconds:.1f} s")
        undo.save_log()
        repo.commit_manifest(manifest)
    return ImportResult(name, meter.done, storer.stored_bytes, seconds, undo.log_where)

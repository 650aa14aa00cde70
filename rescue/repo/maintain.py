"""A repository's life after capture: delete an image, prune what no image needs, copy an
image to another repository. Which images a prune keeps is decided by `choose` (pure, no
I/O), the writing by `prune`.

Safety against a capture running beside them is the lock's (rescue.repo.lock): every job that
writes holds the one exclusive lock, so prune never runs while a capture counts on a chunk it
has just found present, the mistake restic and borg each made once and fixed with locks.
Prune also refuses to run when any image cannot be read whole: chunks only a damaged image
names would be taken for garbage."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import zstandard

from rescue.errors import IntegrityError, RepoError, RescueError
from rescue.repo import chunks
from rescue.repo.index import Index, Kind
from rescue.repo.store import ImageSummary, Repository, write_error

IMAGE_FILES = ("badsectors.map", "badfiles.json", "log.txt")  # beside a manifest, copied with it


@dataclass
class PruneResult:
    forgotten: list[str] = field(default_factory=list)  # images the keep rules removed
    kept: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # leftovers of interrupted captures, removed
    chunks_removed: int = 0
    bytes_removed: int = 0
    chunks_kept: int = 0
    bytes_kept: int = 0
    dry_run: bool = False


@dataclass
class CopyResult:
    name: str
    chunks: int  # chunks the image refers to
    copied: int  # chunks that travelled (the destination lacked them)
    copied_bytes: int  # stored (compressed) bytes that travelled
    seconds: float


def _source(s: ImageSummary) -> tuple[str, str]:
    """Images of the same drive are one group: keep rules count within each, so a repository
    shared by a fleet keeps every machine's images. A drive without a serial number (virtio,
    many USB enclosures, image files) cannot be told from its twins: each of its images is a
    group of its own, so keep rules never remove it (delete does)."""
    return (s.source_model, s.source_serial) if s.source_serial else ("", f"image {s.name}")


def choose(images: list[ImageSummary], keep_last: int | None, keep_daily: int | None) -> set[str]:
    """The names of the images to keep: per source drive, the `keep_last` newest and the newest
    image of each of the `keep_daily` most recent days that have one (restic's --keep-last
    and --keep-daily, which are a union). With neither rule, every image is kept."""
    if keep_last is None and keep_daily is None:
        return {s.name for s in images}
    keep: set[str] = set()
    groups: dict[tuple[str, str], list[ImageSummary]] = {}
    for s in images:
        groups.setdefault(_source(s), []).append(s)
    for group in groups.values():
        newest = sorted(group, key=lambda s: (s.created, s.name), reverse=True)
        keep.update(s.name for s in newest[: keep_last or 0])
        days: list[str] = []
        for s in newest:
            day = s.created[:10]
            if keep_daily and day not in days and len(days) < keep_daily:
                days.append(day)
                keep.add(s.name)
    return keep


def referenced(repo: Repository, names: list[str]) -> set[bytes]:
    """Every chunk the images `names` need. IntegrityError when one of them cannot be read
    whole (its manifest or an index is damaged): its chunks would be unknown."""
    needed: set[bytes] = set()
    for name in names:
        manifest = repo.manifest(name)
        for area in manifest.areas:
            index = repo.load_index(name, manifest, area.name)
            needed.update(d for k, d in zip(index.kinds, index.digests) if k == Kind.DATA)
    return needed


def prune(
    repo: Repository, *, keep_last: int | None = None, keep_daily: int | None = None, dry_run: bool = False
) -> PruneResult:
    """Apply the keep rules, then remove every chunk no remaining image needs and every
    leftover of an interrupted capture. Order: the forgotten images' manifests first, made
    durable (a crash leaves only more garbage, never an image without its chunks), then chunks."""
    try:
        return _prune(repo, keep_last, keep_daily, dry_run)
    except OSError as e:
        raise write_error(repo.where, "prune", e) from None


def _prune(repo: Repository, keep_last: int | None, keep_daily: int | None, dry_run: bool) -> PruneResult:
    out = PruneResult(dry_run=dry_run)
    with repo.writer_lock("prune"):
        listing = repo.listing()
        damaged = [s for s in listing.images if s.damaged is not None]
        if damaged:
            raise _damaged(repo, damaged[0].name, damaged[0].damaged or "")
        keep = choose(listing.images, keep_last, keep_daily)
        out.kept = sorted(keep)
        out.forgotten = sorted(s.name for s in listing.images if s.name not in keep)
        out.incomplete = list(listing.incomplete)
        needed: set[bytes] = set()
        for name in out.kept:  # before anything is removed: a damaged index stops it here
            try:
                needed |= referenced(repo, [name])
            except IntegrityError as e:
                raise _damaged(repo, name, str(e).removeprefix(f"image {name}, ")) from None
        if not dry_run:
            for name in out.forgotten:
                repo.delete_image(name)
            for name in out.incomplete:
                repo.discard_image(name)
            repo.storage.flush()  # no image names a chunk that goes next, even after a power cut
        for digest, size in repo.chunk_keys():
            if digest in needed:
                out.chunks_kept += 1
                out.bytes_kept += size
                continue
            if not dry_run:
                repo.check_lock()
                repo.delete_chunk(digest)
            out.chunks_removed += 1
            out.bytes_removed += size
        if not dry_run:
            repo.storage.flush()
    return out


def _damaged(repo: Repository, name: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"image {name} is damaged ({why}): prune would take chunks it may need for garbage; "
        f"delete it first (rescue delete {repo.where} {name}) if it cannot be repaired"
    )


def delete(repo: Repository, name: str) -> None:
    """Delete image `name` (its chunks stay until prune)."""
    try:
        with repo.writer_lock("delete"):
            repo.delete_image(name)
    except OSError as e:
        raise write_error(repo.where, f"delete image {name}", e) from None


def copy(
    src: Repository,
    name: str,
    dst: Repository,
    *,
    threads: int = 4,
    progress: Callable[[int, int], None] = lambda done, total: None,  # data bytes of the chunks handled
    clock: Callable[[], float] | None = None,
) -> CopyResult:
    """Copy image `name` from `src` into `dst`: only the chunks `dst` lacks travel, each one
    checked (decoded and hashed) on the way, so damage is never copied; then the indexes and
    the image's other files, and the manifest last, so the copy exists only once it is whole.
    An interrupted copy leaves its chunks in `dst`: run again, it sends only the rest.

    Between repositories of other keys (unencrypted into encrypted, or two encrypted ones)
    every chunk is read and unsealed, its name in `dst` computed with `dst`'s key, and sealed
    again there; the indexes are rewritten with the new names (and their checksums in the
    manifest). Compressed payloads travel as they are: nothing is compressed twice."""
    now = clock or time.monotonic
    started = now()
    if dst.chunk_size != src.chunk_size:
        raise RepoError(
            f"{dst.where} stores {dst.chunk_size}-byte chunks, {src.where} {src.chunk_size}-byte ones: "
            "an image cannot move between them"
        )
    manifest = src.manifest(name)
    indexes = {a.name: src.load_index(name, manifest, a.name) for a in manifest.areas}
    sizes = {ix.digests[i]: ix.span(i)[1] for ix in indexes.values() for i, k in enumerate(ix.kinds) if k == Kind.DATA}
    digests, total = sorted(sizes), sum(sizes.values())
    same_keys = src.key == dst.key  # both unencrypted, or the same repository's key
    renamed: dict[bytes, bytes] = {}  # chunk name in src -> in dst
    with dst.writer_lock("copy"):
        dst.start_image(name)  # refuses an existing image; clears an interrupted copy's files
        lock = threading.Lock()
        done = copied = copied_bytes = 0
        local = threading.local()

        def one(digest: bytes) -> None:
            nonlocal done, copied, copied_bytes
            moved = 0
            if not same_keys or not dst.has_chunk(digest):
                where = f"image {name}"
                blob = src.chunk_object(digest, where)
                dctx = getattr(local, "dctx", None) or zstandard.ZstdDecompressor()
                local.dctx = dctx
                data = chunks.decode(blob, digest, where, dctx, src.chunk_size, src.chunk_id)  # damage stops here
                new = digest if same_keys else dst.chunk_id(data)
                if same_keys or not dst.has_chunk(new):
                    moved = dst.write_chunk(new, blob)  # bytes added: 0 when a racing writer was first
                with lock:
                    renamed[digest] = new
            with lock:
                done += sizes[digest]
                if moved:
                    copied += 1
                    copied_bytes += moved
                progress(done, total)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = [pool.submit(one, d) for d in digests]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # a damaged chunk, Ctrl-C: nothing more travels
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        areas = []
        for area in manifest.areas:
            index = indexes[area.name]
            if not same_keys:
                index = Index(
                    index.chunk_size, index.area_size, index.kinds, [renamed.get(d, d) for d in index.digests]
                )
            stored = index.to_bytes()
            dst.write_image_file(name, area.index, stored)
            areas.append(dataclasses.replace(area, index_sha256=hashlib.sha256(stored).hexdigest()))
        for filename in IMAGE_FILES:
            try:
                blob = src.read_image_file(name, filename)
            except RescueError:
                blob = None  # a damaged side file is not worth the image
            if blob is not None:
                dst.write_image_file(name, filename, blob)
        stats = manifest.stats.copy()
        stats["stored_bytes"], stats["new_chunks"] = copied_bytes, copied  # what this image added here
        dst.commit_manifest(dataclasses.replace(manifest, stats=stats, areas=areas))
    return CopyResult(name, len(digests), copied, copied_bytes, now() - started)

"""Verify: every chunk an image references is read, decompressed and hashed; and, given a
drive the image was restored onto, the drive's bytes outside partitions compared with the
image's (imaging/outside.py)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rescue.errors import IntegrityError
from rescue.imaging.apply import AreaSource
from rescue.imaging.progress import Meter, ProgressCallback, no_progress
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Area, Manifest
from rescue.repo.store import Repository


@dataclass
class VerifyResult:
    name: str
    chunks: int
    bytes: int


@dataclass(frozen=True)
class ChunkRef:
    area: str
    i: int
    offset: int  # within the area
    length: int
    drive_offset: int

    def where(self, image: str) -> str:
        return chunk_where(image, self.area, self.i, self.offset, self.drive_offset)


def chunk_where(image: str, area: str, i: int, offset: int, drive_offset: int | None = None) -> str:
    """How every message about a stored chunk names it (Repository.read_chunk's `where`):
    image, area, chunk number and its offset in the area, and where it came from on the
    drive when that is known."""
    where = f"image {image}, area {area}, chunk {i} at offset {offset}"
    return where if drive_offset is None else f"{where} (drive byte {drive_offset})"


def fetch_chunk(repo: Repository, image: str, area: str, index: Index, i: int) -> bytes:
    """Chunk `i` of an area's index from the repository, hash- and length-checked
    (Repository.read_chunk), named as chunk_where() names it when it is not right."""
    start, length = index.span(i)
    return repo.read_chunk(index.digests[i], chunk_where(image, area, i, start), length)


def load_indexes(repo: Repository, name: str) -> tuple[Manifest, dict[str, Index]]:
    """The manifest and every index, each checked against the manifest's checksums."""
    manifest = repo.manifest(name)
    return manifest, {a.name: repo.load_index(name, manifest, a.name) for a in manifest.areas}


def data_chunks(manifest: Manifest, indexes: dict[str, Index]) -> dict[bytes, ChunkRef]:
    """Each distinct stored chunk once, with the first place it is used."""
    out: dict[bytes, ChunkRef] = {}
    for area in manifest.areas:
        index = indexes[area.name]
        for i, (kind, dig) in enumerate(zip(index.kinds, index.digests)):
            if kind == Kind.DATA and dig not in out:
                start, length = index.span(i)
                out[dig] = ChunkRef(area.name, i, start, length, area.offset + start)
    return out


def check_chunks(
    repo: Repository, name: str, refs: dict[bytes, ChunkRef], meter: Meter, threads: int | None = None
) -> None:
    """Raise IntegrityError naming the first damaged chunk (and how many others are)."""

    def check(item: tuple[bytes, ChunkRef]) -> str | None:
        dig, ref = item
        try:
            repo.read_chunk(dig, ref.where(name), ref.length)
        except IntegrityError as e:
            return str(e)
        finally:
            meter.advance(ref.length)
        return None

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        problems = [p for p in pool.map(check, refs.items()) if p]
    if problems:
        more = f" (and {len(problems) - 1} more damaged chunks)" if len(problems) > 1 else ""
        raise IntegrityError(problems[0] + more)


def verify_image(
    repo: Repository,
    name: str,
    *,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> VerifyResult:
    try:
        manifest, indexes = load_indexes(repo, name)
        refs = data_chunks(manifest, indexes)
        meter = Meter("verify", sum(r.length for r in refs.values()), progress, cancel)
        check_chunks(repo, name, refs, meter, threads)
        meter.finish()
    except IntegrityError as e:
        repo.record_verify(name, False, str(e))
        raise
    repo.record_verify(name, True)
    return VerifyResult(name, len(refs), meter.total)


def image_source(repo: Repository, name: str, area: Area, index: Index) -> AreaSource:
    """An image area as a source of chunks, each hash-checked before its bytes are used."""

    def fetch(i: int) -> bytes:
        return fetch_chunk(repo, name, area.name, index, i)  # checked before it is written

    return AreaSource(area.name, area.label, area.size, area.fs, index, fetch)


def verify_drive(repo: Repository, name: str, drive: str) -> int:
    """Compare the bytes outside partitions on `drive` (restored from image `name` earlier)
    with the image, the new table's own structures excepted; GRUB's BIOS pointers count as
    right when they point at a BIOS boot partition the restore moved. Returns the bytes
    compared; raises IntegrityError naming the first byte that differs."""
    from rescue.hw import blockdev
    from rescue.hw.partitions import read_layout
    from rescue.imaging import outside
    from rescue.imaging.postrestore import expected_boot_code
    from rescue.model import gaps

    manifest, indexes = load_indexes(repo, name)
    current = read_layout(drive)
    fd = blockdev.open_drive(drive)
    try:
        size = blockdev.size_of(fd)
        keep_out = outside.protected(drive, current, size)
        compared = 0
        for area in manifest.areas:
            if not gaps.is_gap(area.name):
                continue
            src = image_source(repo, name, area, indexes[area.name])
            offset, room = gaps.place(area.name, area.size, current, size)
            allowed = outside.pieces(offset, room, current, keep_out)
            head = area.name == gaps.HEAD

            def fix(i: int, data: bytes, head: bool = head) -> bytes:
                return expected_boot_code(data, manifest.layout, current) if head and i == 0 else data

            problem = outside.mismatch(fd, src, offset, allowed, drive, fix)
            if problem:
                raise IntegrityError(problem)
            compared += sum(e.length for e in allowed)
    finally:
        os.close(fd)
    return compared

"""A repository on disk: chunk files, image directories, atomic writes.

REPO/rescue-repo.json            format, version, chunk size, hash
REPO/chunks/ab/<64 hex>          chunk objects (rescue.repo.chunks)
REPO/images/<name>/manifest.json written last: an image without one does not exist
REPO/images/<name>/<area>.idx    chunk indexes
REPO/images/<name>/log.txt       what happened while capturing
REPO/images/<name>/verified.json result of the last full verify
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import zstandard

from rescue.errors import IntegrityError, RepoError, UsageError
from rescue.repo import chunks
from rescue.repo.index import Index
from rescue.repo.manifest import Manifest

FORMAT = "rescue-repository"
VERSION = 1
MARKER = "rescue-repo.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class RepoMeta(TypedDict):
    """rescue-repo.json."""

    format: str  # FORMAT
    version: int  # VERSION
    id: str  # uuid4, fixed at creation
    chunk_size: int  # bytes, for every image in the repository
    hash: str  # "sha256"
    compression: str  # "zstd"


@dataclass
class ImageSummary:
    name: str
    created: str
    source_model: str
    source_serial: str
    source_size: int
    data_bytes: int  # bytes of data captured (used, non-zero chunks)
    stored_bytes: int  # chunk bytes this image added to the repository
    verified: bool | None  # last full verify: passed, failed, or never run


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid image name {name!r}: use letters, digits, '.', '_', '+', '-' "
            "(up to 128, not starting with a dot or dash)"
        )
    return name


class Repository:
    def __init__(self, path: Path, meta: RepoMeta):
        self.path = Path(path)
        self.meta = meta
        self.chunk_size: int = meta["chunk_size"]

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Repository:
        path = Path(path)
        marker = path / MARKER
        if not marker.is_file():
            raise RepoError(f"{path} is not a rescue repository (no {MARKER})")
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError) as e:
            raise RepoError(f"{marker} is unreadable: {e}") from None
        if meta.get("format") != FORMAT:
            raise RepoError(f"{marker} is not a rescue repository description")
        if meta.get("version") != VERSION:
            raise RepoError(
                f"{path}: repository version {meta.get('version')!r} is not supported "
                f"(this rescue reads version {VERSION})"
            )
        if meta.get("hash") != "sha256" or not isinstance(meta.get("chunk_size"), int):
            raise RepoError(f"{marker}: unsupported hash or chunk size")
        return cls(path, meta)

    @classmethod
    def create(cls, path: str | Path, chunk_size: int = 4 << 20) -> Repository:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / MARKER).exists():
            return cls.open(path)
        if any(p.name != "lost+found" for p in path.iterdir()):
            raise RepoError(f"{path} is not empty and not a rescue repository")
        (path / "chunks").mkdir(exist_ok=True)
        (path / "images").mkdir(exist_ok=True)
        meta: RepoMeta = {
            "format": FORMAT,
            "version": VERSION,
            "id": str(uuid.uuid4()),
            "chunk_size": chunk_size,
            "hash": "sha256",
            "compression": "zstd",
        }
        write_atomic(path / MARKER, (json.dumps(meta, indent=1) + "\n").encode())
        return cls(path, meta)

    @classmethod
    def open_or_create(cls, path: str | Path, chunk_size: int = 4 << 20) -> Repository:
        return cls.open(path) if (Path(path) / MARKER).exists() else cls.create(path, chunk_size)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """One writer at a time per repository (two captures racing on the same chunks and
        names would be safe for chunks but not for image names)."""
        with open(self.path / "lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RepoError(f"{self.path} is busy: another capture is writing to it") from None
            yield

    # -- chunks --------------------------------------------------------------------------
    def chunk_path(self, digest: bytes) -> Path:
        h = digest.hex()
        return self.path / "chunks" / h[:2] / h

    def has_chunk(self, digest: bytes) -> bool:
        return self.chunk_path(digest).exists()

    def write_chunk(self, digest: bytes, blob: bytes) -> int:
        """Store a chunk file atomically (temp name, rename). Returns bytes added."""
        final = self.chunk_path(digest)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, final)
        return len(blob)

    _threads = threading.local()  # a zstd decompressor per thread: they are not thread-safe

    def read_chunk(self, digest: bytes, where: str, length: int | None = None) -> bytes:
        """A stored chunk's bytes, checked: present, readable, decoded, of hash `digest`
        and, when given, `length` bytes long (what the index expects). The one place that
        reads stored chunks (restore, verify, browse, capture's re-read), so every check and
        every message is the same: IntegrityError, starting with `where`. Thread-safe."""
        path = self.chunk_path(digest)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: chunk {digest.hex()[:16]}… is missing ({path.relative_to(self.path)})"
            ) from None
        except OSError as e:
            raise IntegrityError(f"{where}: chunk {digest.hex()[:16]}… is unreadable ({e.strerror})") from None
        dctx: zstandard.ZstdDecompressor | None = getattr(self._threads, "dctx", None)
        if dctx is None:
            dctx = self._threads.dctx = zstandard.ZstdDecompressor()
        data = chunks.decode(blob, digest, where, dctx)
        if length is not None and len(data) != length:
            raise IntegrityError(f"{where}: chunk has {len(data)} bytes, the index expects {length}")
        return data

    # -- images --------------------------------------------------------------------------
    def image_dir(self, name: str) -> Path:
        return self.path / "images" / check_name(name)

    def image_names(self) -> list[str]:
        images = self.path / "images"
        return sorted(p.name for p in images.iterdir() if (p / "manifest.json").is_file()) if images.is_dir() else []

    def incomplete_names(self) -> list[str]:
        """Leftovers of interrupted captures: a directory without a manifest."""
        images = self.path / "images"
        return (
            sorted(p.name for p in images.iterdir() if p.is_dir() and not (p / "manifest.json").exists())
            if images.is_dir()
            else []
        )

    def manifest(self, name: str) -> Manifest:
        path = self.image_dir(name) / "manifest.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise RepoError(f"no image named {name!r} in {self.path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise IntegrityError(f"image {name}: manifest is unreadable ({e})") from None
        return Manifest.from_json(text, f"image {name}")

    def load_index(self, name: str, manifest: Manifest, area_name: str) -> Index:
        area = manifest.area(area_name)
        where = f"image {name}, area {area_name}"
        try:
            blob = (self.image_dir(name) / area.index).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{where}: index file {area.index} is missing") from None
        if hashlib.sha256(blob).hexdigest() != area.index_sha256:
            raise IntegrityError(f"{where}: index file {area.index} does not match the manifest")
        index = Index.from_bytes(blob, where)
        if index.area_size != area.size or index.chunk_size != manifest.chunk_size:
            raise IntegrityError(f"{where}: index does not match the manifest's sizes")
        return index

    def images(self) -> list[ImageSummary]:
        out = []
        for name in self.image_names():
            try:
                m = self.manifest(name)
            except (IntegrityError, RepoError):
                continue
            out.append(
                ImageSummary(
                    name=name,
                    created=m.created,
                    source_model=m.source.get("model") or "",
                    source_serial=m.source.get("serial") or "",
                    source_size=m.source.get("size", 0),
                    data_bytes=m.stats.get("data_bytes", 0),
                    stored_bytes=m.stats.get("stored_bytes", 0),
                    verified=self.verified(name),
                )
            )
        return sorted(out, key=lambda s: (s.created, s.name))

    def verified(self, name: str) -> bool | None:
        try:
            return bool(json.loads((self.image_dir(name) / "verified.json").read_text())["ok"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_verify(self, name: str, ok: bool, detail: str = "") -> None:
        """Remember the last verify result; silently skipped on a read-only repository."""
        try:
            write_atomic(
                self.image_dir(name) / "verified.json",
                json.dumps({"ok": ok, "when": now_iso(), "detail": detail}).encode(),
            )
        except OSError:
            pass

    def start_image(self, name: str) -> Path:
        """A fresh directory for a capture: an existing complete image is never replaced;
        a leftover of an interrupted capture is cleared."""
        d = self.image_dir(name)
        if (d / "manifest.json").exists():
            raise RepoError(f"an image named {name!r} already exists in {self.path}")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def commit_manifest(self, manifest: Manifest) -> None:
        write_atomic(self.image_dir(manifest.name) / "manifest.json", manifest.to_json().encode())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""A repository on disk: chunk files, image directories, atomic writes.

REPO/rescue-repo.json            format, version, chunk size, hash
REPO/chunks/ab/<64 hex>          chunk objects (rescue.repo.chunks)
REPO/images/<name>/manifest.json written last: an image without one does not exist
REPO/images/<name>/<area>.idx    chunk indexes
REPO/images/<name>/log.txt       what happened while capturing
REPO/images/<name>/verified.json result of the last full verify
REPO/keys/<16 hex>               version 2 (encrypted) only: one key file per password

In a version 2 repository every object but rescue-repo.json, the lock and the key files is
sealed (rescue.repo.crypto) under the key of the password given (rescue.repo.keys), and a
chunk is named by a keyed MAC of its plaintext: `chunk_id`, `seal` and `unseal` are the one
place that tells the two versions apart.

Every file is read through `read_file`: only a regular file inside its repository directory
(no symbolic link, FIFO or device, which could hang a reader or feed it endless bytes), and only
up to the size it can have. Every write goes through a temporary name and a rename, and a
failed write removes its temporary file; a full drive is a NoSpaceError, a read-only or
misshapen repository a RepoError, each one line.

A repository often lives on a USB drive formatted FAT32, exFAT or NTFS, so nothing here needs
POSIX semantics beyond what those give (docs/format.md, "Filesystems a repository may live
on"): no hard or symbolic links, no permissions, every name valid on all of them
(`check_name`), names that differ only in case taken as the same name, no file near 4 GiB,
rename over an existing file only for verified.json, and every finished file fsynced before
it counts (a technician pulls the stick as soon as rescue says done)."""

from __future__ import annotations

import contextlib
import errno
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

import zstandard

from rescue.config import CHUNK_SIZE
from rescue.errors import IntegrityError, RepoError, RescueError, UsageError
from rescue.repo import chunks, crypto, keys, retry
from rescue.repo.files import kind_of
from rescue.repo.index import Index, Kind
from rescue.repo.local import LocalStorage
from rescue.repo.lock import Lock
from rescue.repo.manifest import MAX_CHUNK, MIN_CHUNK, NAME_RE, Manifest, printable
from rescue.repo.storage import FOLDER, OBJECT, Entry, ObjectMissing, ObjectProblem, Storage, open_storage

FORMAT = "rescue-repository"
VERSION = 1  # unencrypted; ENCRYPTED (2) is sealed objects under a password's key
ENCRYPTED = 2
CIPHER = "aes-256-gcm"
MARKER = "rescue-repo.json"
MANIFEST = "manifest.json"
FLEET = "fleet"  # unattended jobs' logs and done-markers (rescue.fleet), beside images/
MAX_MANIFEST = 16 << 20  # bytes; a manifest with 256 partitions is well under 1 MiB
MAX_SMALL = 1 << 20  # rescue-repo.json, verified.json
# Entries an empty drive's root may hold whoever formatted it: created by the filesystem or by
# Windows, they do not make a repository's directory "not empty".
SYSTEM_ENTRIES = frozenset(["lost+found", "System Volume Information", "$RECYCLE.BIN"])
CHUNK_DIR_RE = re.compile(r"^[0-9a-f]{2}$")
CHUNK_NAME_RE = re.compile(r"^[0-9a-f]{64}$")


class NoSpaceError(RepoError):
    """The repository's drive is full (or the quota reached)."""


class RepoMeta(TypedDict):
    """rescue-repo.json."""

    format: str  # FORMAT
    version: int  # VERSION
    id: str  # uuid4, fixed at creation
    chunk_size: int  # bytes, for every image in the repository
    hash: str  # "sha256"; version 2: "hmac-sha256"
    compression: str  # "zstd"
    encryption: NotRequired[str]  # version 2: CIPHER


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
    damaged: str | None = None  # why the manifest was refused; the other fields are then empty


@dataclass
class Listing:
    """Everything under images/: nothing is left out, whatever state it is in."""

    images: list[ImageSummary] = field(default_factory=list)  # with a manifest, good or damaged
    incomplete: list[str] = field(default_factory=list)  # leftovers of interrupted captures
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (name, why it is not an image)


# Names Windows keeps for devices, whatever the extension: a folder "CON" or "nul.2024" on a
# FAT, exFAT or NTFS drive cannot be opened there (and Linux's ntfs-3g refuses them with its
# windows_names option). Compared case-insensitively, on the part before the first dot.
WINDOWS_DEVICES = frozenset(["CON", "PRN", "AUX", "NUL"] + [f"{kind}{n}" for kind in ("COM", "LPT") for n in range(10)])
FAT_FORBIDDEN = '"*/:<>?\\|'  # never in a file name on FAT, exFAT or NTFS (nor control characters)
MAX_NAME = 128


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a new image's name (it becomes a directory name, so it must be a
    valid file name on ext4 and on FAT, exFAT and NTFS alike), or None when it can."""
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME:
        return f"it is longer than {MAX_NAME} characters"
    if name[0] in ".-":
        return "it starts with a dot or a dash"
    for c in name:
        if c in FAT_FORBIDDEN or not c.isprintable():
            return f"'{printable(c)}' cannot be in a file name on FAT, exFAT or NTFS drives"
    if not NAME_RE.match(name):
        return "use letters, digits, '.', '_', '+', '-' only"
    if name.endswith("."):
        return "it ends with a dot, which FAT and exFAT drop from file names"
    stem = name.split(".", 1)[0].upper()
    if stem in WINDOWS_DEVICES:
        return f"{stem} is a device name on Windows, which cannot open it on a FAT, exFAT or NTFS drive"
    return None


def check_name(name: str) -> str:
    """`name` when it can be a new image's name, else UsageError with the reason, one line."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"invalid image name {printable(repr(name))}: {problem}")
    return name


def same_name(a: str, b: str) -> bool:
    """Whether two image names are the same name on a case-insensitive filesystem (FAT,
    exFAT; NTFS as Windows uses it). Names are ASCII, so folding case is enough."""
    return a.casefold() == b.casefold()


def _existing_name(name: str) -> str:
    """`name` when it can name an image already stored (the older, wider rule, so an image
    made before the FAT rules still reads), else UsageError."""
    if not NAME_RE.match(name):
        raise UsageError(f"invalid image name {printable(repr(name))}: use letters, digits, '.', '_', '+', '-'")
    return name


class Repository:
    """A repository on any Storage backend (rescue.repo.storage): the same checks, the same
    messages, the same order of writes everywhere. `path` is the directory of a local
    repository (None for a remote one); `where` names it in messages (a path or a URL
    without secrets)."""

    def __init__(self, storage: Storage, meta: RepoMeta, key: crypto.RepoKey | None = None, key_id: str = ""):
        self.storage = storage
        self.key = key  # the master key of an encrypted repository (version 2), else None
        self.key_id = key_id  # the key file (password) that opened it
        self.where = storage.where
        self.path: Path | None = storage.path if isinstance(storage, LocalStorage) else None
        self.meta = meta
        self.chunk_size: int = meta["chunk_size"]
        self._written_lock = threading.Lock()
        self._written: list[str] = []  # keys of chunks this process created, for undo_chunks()
        self.written_bytes = 0  # bytes of chunk files written
        self.failed_bytes = 0  # bytes of chunk files that could not be written (a full drive)
        self._lock: Lock | None = None

    @property
    def local(self) -> bool:
        return self.path is not None

    @property
    def encrypted(self) -> bool:
        return self.key is not None

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | Path, *, s3_endpoint: str | None = None, password: str | None = None) -> Repository:
        """The repository at `location`. An encrypted one opens with `password`, else with the
        key this process unlocked before (rescue.repo.keys.remember: the engine does it once
        the front end asked), else PasswordNeeded."""
        retry.forget_failures()  # a job opens its repository first: servers get another chance
        storage = open_storage(str(location), s3_endpoint=s3_endpoint)
        try:
            return cls.on(storage, password)
        except BaseException:
            storage.close()
            raise

    @classmethod
    def on(cls, storage: Storage, password: str | None = None) -> Repository:
        meta = cls.describe(storage)
        if meta["version"] == VERSION:
            return cls(storage, meta)
        if password is not None:
            key, key_id = keys.unlock(storage, meta["id"], password)
            keys.remember(key, key_id)
        else:
            found = keys.unlocked(meta["id"])
            if found is None:
                raise keys.PasswordNeeded(f"{storage.where} is encrypted: it opens only with its password")
            key, key_id = found
        return cls(storage, meta, key, key_id)

    @classmethod
    def describe(cls, storage: Storage) -> RepoMeta:
        """rescue-repo.json, checked, and the parts of a local repository: RepoError when this
        is no repository this rescue can read. Reads no key: whether a password is needed is
        `describe(storage)["version"] == ENCRYPTED`."""
        where = storage.where
        if isinstance(storage, LocalStorage) and not storage.path.is_dir():
            what = kind_of(storage.path)
            raise RepoError(f"{where} is not a rescue repository" + (f" ({what}, not a directory)" if what else ""))
        marker = f"{where}/{MARKER}"
        try:
            blob = storage.get(MARKER, MAX_SMALL)
        except ObjectMissing:
            raise RepoError(f"{where} is not a rescue repository (no {MARKER})") from None
        except ObjectProblem as e:
            raise RepoError(f"{marker} {e.reason}") from None
        try:
            meta: object = json.loads(blob)
        except (ValueError, RecursionError):
            raise RepoError(f"{marker} is not valid JSON (truncated or damaged)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RepoError(f"{marker} is not a rescue repository description")
        version = meta.get("version")
        if version not in (VERSION, ENCRYPTED) or isinstance(version, bool):
            raise RepoError(
                f"{where}: repository version {printable(repr(meta.get('version')))[:40]} is not supported "
                f"(this rescue reads versions {VERSION} and {ENCRYPTED})"
            )
        assert isinstance(version, int)
        hash_name = "sha256" if version == VERSION else "hmac-sha256"
        if version == ENCRYPTED and meta.get("encryption") != CIPHER:
            raise RepoError(f"{marker}: unsupported encryption {printable(repr(meta.get('encryption')))[:40]}")
        if version == VERSION and keys.key_ids(storage):
            # keys/ without encryption: the description of an encrypted repository was edited
            raise RepoError(f"{marker} says version 1 but the repository holds keys/: refused (altered description?)")
        size = meta.get("chunk_size")
        if (
            meta.get("hash") != hash_name
            or not isinstance(size, int)
            or isinstance(size, bool)
            or not MIN_CHUNK <= size <= MAX_CHUNK
            or size & (size - 1)
        ):
            raise RepoError(f"{marker}: unsupported hash or chunk size")
        ident, compression = meta.get("id", ""), meta.get("compression", "zstd")
        if not isinstance(ident, str) or compression != "zstd":
            raise RepoError(f"{marker}: unsupported id or compression")
        if isinstance(storage, LocalStorage):
            for part in ("chunks", "images"):
                kind = storage.kind(part)
                if kind not in (None, "a directory"):
                    raise RepoError(f"{where}/{part} is {kind}, not a directory: this is not a usable repository")
        checked: RepoMeta = {
            "format": FORMAT,
            "version": version,
            "id": ident,
            "chunk_size": size,
            "hash": hash_name,
            "compression": "zstd",
        }
        if version == ENCRYPTED:
            try:
                uuid.UUID(ident)
            except ValueError:
                raise RepoError(f"{marker}: the id of an encrypted repository must be a UUID") from None
            checked["encryption"] = CIPHER
        return checked

    @classmethod
    def create(
        cls,
        location: str | Path,
        chunk_size: int = CHUNK_SIZE,
        *,
        s3_endpoint: str | None = None,
        password: str | None = None,
    ) -> Repository:
        """A new, empty repository at `location` (an existing one is opened instead, with
        `password` when it is encrypted); its place must be empty but for what a filesystem
        or Windows puts on any drive. With `password`, an encrypted one (version 2)."""
        storage = open_storage(str(location), s3_endpoint=s3_endpoint)
        try:
            return cls._create(storage, chunk_size, password)
        except BaseException:
            storage.close()
            raise

    @classmethod
    def _create(cls, storage: Storage, chunk_size: int, password: str | None = None) -> Repository:
        where = storage.where
        meta: RepoMeta = {
            "format": FORMAT,
            "version": VERSION,
            "id": str(uuid.uuid4()),
            "chunk_size": chunk_size,
            "hash": "sha256",
            "compression": "zstd",
        }
        key: crypto.RepoKey | None = None
        key_id = ""
        if password is not None:
            meta["version"], meta["hash"], meta["encryption"] = ENCRYPTED, "hmac-sha256", CIPHER
            key = crypto.RepoKey.new(meta["id"])
        try:
            if isinstance(storage, LocalStorage):
                storage.path.mkdir(parents=True, exist_ok=True)
            if storage.size(MARKER) is not None or (isinstance(storage, LocalStorage) and storage.kind(MARKER)):
                return cls.on(storage, password)
            if any(e.name not in SYSTEM_ENTRIES for e in storage.list("")):
                raise RepoError(f"{where} is not empty and not a rescue repository")
            if isinstance(storage, LocalStorage):
                for part in ("chunks", "images"):
                    (storage.path / part).mkdir(exist_ok=True)
            if key is not None and password is not None:  # the key first: the description makes it a repository
                key_id = keys.add(storage, key, password)
            if not storage.put_new(MARKER, (json.dumps(meta, indent=1) + "\n").encode()):
                return cls.on(storage, password)  # another job created it meanwhile
            storage.flush()
        except OSError as e:
            raise write_error(where, "create the repository", e) from None
        if key is not None:
            keys.remember(key, key_id)
        return cls(storage, meta, key, key_id)

    @classmethod
    def open_or_create(
        cls, location: str | Path, chunk_size: int = CHUNK_SIZE, *, s3_endpoint: str | None = None
    ) -> Repository:
        retry.forget_failures()
        storage = open_storage(str(location), s3_endpoint=s3_endpoint)
        try:
            if storage.size(MARKER) is None and not (isinstance(storage, LocalStorage) and storage.kind(MARKER)):
                return cls._create(storage, chunk_size)
            return cls.on(storage)
        except BaseException:
            storage.close()
            raise

    def close(self) -> None:
        self.storage.close()

    @contextlib.contextmanager
    def writer_lock(self, job: str = "capture") -> Iterator[Lock]:
        """The repository for this job alone (rescue.repo.lock): two captures would be safe
        for chunks but not for image names, and prune must never run beside a job that
        counts on chunks being there. A local repository is also locked with flock on `lock`
        (what a job killed at any moment releases, and what rescue.hw.leftovers waits for)."""
        with contextlib.ExitStack() as stack:
            if self.path is not None:
                try:  # created if missing, never written: flock works on FUSE filesystems too
                    f = stack.enter_context(open(self.path / "lock", "a"))
                except OSError as e:
                    raise write_error(self.where, "lock it for writing", e) from None
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RepoError(f"{self.where} is busy: another job is writing to it") from None
            try:
                self._lock = stack.enter_context(Lock(self.storage, job, take_over_stale=self.path is not None))
            except OSError as e:
                raise write_error(self.where, "lock it for writing", e) from None
            try:
                yield self._lock
            finally:
                self._lock = None

    def check_lock(self) -> None:
        """Before a write that makes something count (a manifest, a deletion): the lock is
        still this job's. Nothing to check outside writer_lock."""
        if self._lock is not None:
            self._lock.check()

    # -- sealing (version 2) ---------------------------------------------------------------
    def seal(self, kind: int, key: str, data: bytes) -> bytes:
        """What to store under `key`: `data` itself, or sealed for this key when encrypted."""
        return data if self.key is None else self.key.seal(kind, key, data)

    def unseal(self, kind: int, key: str, blob: bytes, where: str) -> bytes:
        """The plaintext of what was read from `key`: IntegrityError starting with `where`
        when an encrypted repository's object does not authenticate as that object."""
        return blob if self.key is None else self.key.open(kind, key, blob, where)

    def sealed_size(self, size: int) -> int:
        return size if self.key is None else size + crypto.OVERHEAD

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """The name of a chunk holding `data`: its SHA-256, or in an encrypted repository a
        MAC under the repository's key (equal chunks still share one name)."""
        return chunks.digest(data) if self.key is None else self.key.chunk_id(data)

    # -- chunks --------------------------------------------------------------------------
    @staticmethod
    def chunk_key(digest: bytes) -> str:
        h = digest.hex()
        return f"chunks/{h[:2]}/{h}"

    def chunk_path(self, digest: bytes) -> Path:
        """The file of a chunk of a local repository."""
        return self._local_path() / self.chunk_key(digest)

    def _local_path(self) -> Path:
        if self.path is None:
            raise RepoError(f"{self.where} is not a local directory")
        return self.path

    def has_chunk(self, digest: bytes) -> bool:
        """A chunk is there (a regular file: anything else is overwritten when stored)."""
        return self.storage.size(self.chunk_key(digest)) is not None

    def write_chunk(self, digest: bytes, blob: bytes) -> int:
        """Store a chunk atomically, only if it is not there already. Returns bytes added. A chunk
        this call created is remembered until
        undo_chunks() or forget_chunks(): a capture that fails takes its new chunks away with
        it. A local chunk file is fsynced before it counts as stored: on a FUSE filesystem
        (exFAT, NTFS) syncfs() does not reach the driver, so only fsync makes a chunk survive
        the stick being pulled; commit_manifest then makes the names durable."""
        key = self.chunk_key(digest)
        blob = self.seal(crypto.CHUNK, key, blob)
        try:
            created = self.storage.put_new(key, blob)
        except OSError as e:
            with self._written_lock:
                self.failed_bytes += len(blob)
            raise write_error(self.where, f"store chunk {digest.hex()[:16]}…", e) from None
        except RepoError:
            with self._written_lock:
                self.failed_bytes += len(blob)
            raise
        if not created:  # there already (another image's, or a racing writer's): never ours to undo
            return 0
        with self._written_lock:
            self._written.append(key)
            self.written_bytes += len(blob)
        return len(blob)

    def undo_chunks(self) -> int:
        """Remove every chunk this Repository object wrote (they belong to an image that will
        not exist). Returns how many were removed."""
        with self._written_lock:
            written, self._written = self._written, []
        removed = 0
        for key in written:
            with contextlib.suppress(OSError, RepoError):
                self.storage.delete(key)
                removed += 1
        return removed

    def forget_chunks(self) -> None:
        """The chunks written so far belong to a committed image: undo_chunks() keeps them."""
        with self._written_lock:
            self._written = []

    _threads = threading.local()  # a zstd decompressor per thread: they are not thread-safe

    def read_chunk(self, digest: bytes, where: str, length: int | None = None) -> bytes:
        """A stored chunk's bytes, checked: present, a regular object of plausible size,
        decoded, of hash `digest` and, when given, `length` bytes long (what the index
        expects). The one place that reads stored chunks (restore, verify, browse, capture's
        re-read), so every check and every message is the same on every backend:
        IntegrityError, starting with `where`. Thread-safe."""
        blob = self.chunk_object(digest, where, length)
        dctx: zstandard.ZstdDecompressor | None = getattr(self._threads, "dctx", None)
        if dctx is None:
            dctx = self._threads.dctx = zstandard.ZstdDecompressor()
        expect = length if length is not None else self.chunk_size
        data = chunks.decode(blob, digest, where, dctx, expect, self.chunk_id)
        if length is not None and len(data) != length:
            raise IntegrityError(f"{where}: chunk has {len(data)} bytes, the index expects {length}")
        return data

    def chunk_object(self, digest: bytes, where: str, length: int | None = None) -> bytes:
        """A chunk object (rescue.repo.chunks: header and compressed payload), unsealed in an
        encrypted repository (so authenticated as the object stored under this chunk's name),
        not yet decoded: what `copy` moves into a repository of other keys."""
        key = self.chunk_key(digest)
        blob = self.read_chunk_blob(digest, where, length)
        return self.unseal(crypto.CHUNK, key, blob, where)

    def read_chunk_blob(self, digest: bytes, where: str, length: int | None = None) -> bytes:
        """A chunk as stored (compressed, and sealed when encrypted), unchecked but for its
        size: what `copy` moves between repositories of the same keys."""
        key = self.chunk_key(digest)
        try:
            return self.storage.get(
                key, self.sealed_size(chunks.max_blob(length if length is not None else self.chunk_size))
            )
        except ObjectMissing:
            raise IntegrityError(f"{where}: chunk {digest.hex()[:16]}… is missing ({key})") from None
        except ObjectProblem as e:
            raise IntegrityError(f"{where}: chunk {digest.hex()[:16]}… {e.reason}") from None

    def chunk_keys(self) -> Iterator[tuple[bytes, int]]:
        """Every stored chunk: (digest, stored bytes). Anything in chunks/ that is not a chunk
        is left out (prune never deletes what it does not recognise)."""
        for top in self.storage.list("chunks"):
            if top.kind != FOLDER or not CHUNK_DIR_RE.match(top.name):
                continue
            for e in self.storage.list(f"chunks/{top.name}"):
                if e.kind == OBJECT and CHUNK_NAME_RE.match(e.name) and e.name.startswith(top.name):
                    yield bytes.fromhex(e.name), e.size

    def delete_chunk(self, digest: bytes) -> None:
        self.storage.delete(self.chunk_key(digest))

    # -- images --------------------------------------------------------------------------
    def image_key(self, name: str, filename: str = "") -> str:
        base = f"images/{_existing_name(name)}"
        return f"{base}/{filename}" if filename else base

    def image_dir(self, name: str) -> Path:
        """The directory of an image of a local repository."""
        return self._local_path() / self.image_key(name)

    def _image_folders(self) -> list[Entry]:
        try:
            return self.storage.list("images")
        except OSError as e:
            raise RepoError(f"{self.where}/images cannot be listed ({e.strerror})") from None

    def has_manifest(self, name: str) -> bool:
        """Whether images/`name` holds a manifest (of any kind: a FIFO there is a damaged image).
        A local folder that cannot be read says yes: it is listed as damaged, with the reason."""
        if isinstance(self.storage, LocalStorage):
            return self.storage.kind(f"images/{name}/{MANIFEST}") is not None
        return any(e.name == MANIFEST for e in self.storage.list(f"images/{name}"))

    def taken_name(self, name: str) -> str | None:
        """The name of the complete image that `name` would collide with: itself, or one that
        differs only in case (the same directory on FAT and exFAT, and on NTFS under
        Windows; refused everywhere, so a repository can move between filesystems)."""
        entries = self._image_folders()
        for entry in sorted(entries, key=lambda e: e.name != name):
            if entry.kind == FOLDER and same_name(entry.name, name) and self.has_manifest(entry.name):
                return entry.name
        return None

    def listing(self) -> Listing:
        """Every entry of images/: images (a damaged manifest is listed with the reason, not
        left out), leftovers of interrupted captures, and anything else found there."""
        out = Listing()
        if isinstance(self.storage, LocalStorage):
            kind = self.storage.kind("images")
            if kind is None:
                return out
            if kind != "a directory":
                raise RepoError(f"{self.where}/images is {kind}, not a directory")
        for entry in self._image_folders():
            name = entry.name
            if entry.kind != FOLDER:
                what = "a file" if entry.kind == OBJECT else entry.kind
                out.foreign.append((name, f"{what}, not an image directory"))
                continue
            has_manifest = self.has_manifest(name)
            if not NAME_RE.match(name):
                reason = "not a valid image name"
                if has_manifest:
                    out.images.append(ImageSummary(name, "", "", "", 0, 0, 0, None, reason))
                else:
                    out.foreign.append((name, f"a directory with {reason}"))
                continue
            if not has_manifest:
                out.incomplete.append(name)
                continue
            try:
                m = self.manifest(name)
            except RescueError as e:
                reason = str(e).removeprefix(f"image {name}: ")
                out.images.append(ImageSummary(name, "", "", "", 0, 0, 0, None, reason))
                continue
            out.images.append(
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
        out.images.sort(key=lambda s: (s.damaged is not None, s.created, s.name))
        return out

    def image_names(self) -> list[str]:
        """Images whose manifest reads and validates."""
        return sorted(s.name for s in self.images())

    def incomplete_names(self) -> list[str]:
        """Leftovers of interrupted captures: a directory without a manifest."""
        return self.listing().incomplete

    def images(self) -> list[ImageSummary]:
        """The images that can be used, oldest first (listing() has the damaged ones too)."""
        return [s for s in self.listing().images if s.damaged is None]

    def manifest(self, name: str) -> Manifest:
        """The validated manifest of image `name`: RepoError when there is no such image,
        IntegrityError naming the image and what is wrong when it cannot be trusted."""
        key = self.image_key(name)
        if isinstance(self.storage, LocalStorage):
            kind = self.storage.kind(key)
            if kind is None:
                raise RepoError(f"no image named {name!r} in {self.where}")
            if kind != "a directory":
                raise IntegrityError(f"image {name}: images/{name} is {kind}, not a directory")
        try:
            blob = self.storage.get(f"{key}/{MANIFEST}", self.sealed_size(MAX_MANIFEST))
        except ObjectMissing:
            if self.path is None and not self.storage.list(key):
                raise RepoError(f"no image named {name!r} in {self.where}") from None
            raise RepoError(
                f"no image named {name!r} in {self.where} (images/{name} is what an interrupted capture left)"
            ) from None
        except ObjectProblem as e:
            raise IntegrityError(f"image {name}: {MANIFEST} {e.reason}") from None
        blob = self.unseal(crypto.MANIFEST, f"{key}/{MANIFEST}", blob, f"image {name}")
        try:
            text = blob.decode()
        except UnicodeDecodeError:
            raise IntegrityError(f"image {name}: manifest is not valid UTF-8 (damaged)") from None
        manifest = Manifest.from_json(text, f"image {name}")
        if manifest.name != name and same_name(manifest.name, name) and not self._listed(name):
            # a case-insensitive filesystem found images/pc when asked for PC
            raise RepoError(f"no image named {name!r} in {self.where} (there is {manifest.name!r}: case differs)")
        if manifest.name != name:
            raise IntegrityError(f"image {name}: manifest field name is {manifest.name!r}, not the directory's name")
        if manifest.chunk_size != self.chunk_size:
            raise IntegrityError(
                f"image {name}: manifest field chunk_size is {manifest.chunk_size}, "
                f"the repository's chunks are {self.chunk_size} bytes"
            )
        return manifest

    def _listed(self, name: str) -> bool:
        """Whether images/`name` is listed exactly as spelled (on a case-insensitive
        filesystem, opening it also finds a name that differs in case)."""
        try:
            return any(e.name == name for e in self.storage.list("images"))
        except OSError:
            return True

    def load_index(self, name: str, manifest: Manifest, area_name: str) -> Index:
        """An area's index, read only when it is a regular object of exactly the size the
        manifest implies, and checked against the manifest's checksum and sizes."""
        area = manifest.area(area_name)
        where = f"image {name}, area {area_name}"
        expected = Index.file_size(manifest.chunk_size, area.size)
        try:
            key = self.image_key(name, area.index)
            blob = self.storage.get(key, self.sealed_size(expected))
        except ObjectMissing:
            raise IntegrityError(f"{where}: index file {area.index} is missing") from None
        except ObjectProblem as e:
            raise IntegrityError(f"{where}: index file {area.index} {e.reason}") from None
        except ValueError:
            raise IntegrityError(f"{where}: index file {printable(area.index)!r} is not a file name") from None
        blob = self.unseal(crypto.INDEX, key, blob, where)
        if hashlib.sha256(blob).hexdigest() != area.index_sha256:
            raise IntegrityError(f"{where}: index file {area.index} does not match the manifest")
        index = Index.from_bytes(blob, where)
        if index.area_size != area.size or index.chunk_size != manifest.chunk_size:
            raise IntegrityError(f"{where}: index does not match the manifest's sizes")
        stats = area.stats
        for word, said, kind in (
            ("data", stats.get("data"), Kind.DATA),
            ("zero", stats.get("zero"), Kind.ZERO),
            ("unused", stats.get("unused"), Kind.UNUSED),
            ("unreadable", stats.get("unreadable"), Kind.UNREADABLE),
        ):
            if said is not None and said != index.kinds.count(kind):
                raise IntegrityError(
                    f"{where}: the manifest counts {said} {word} chunks, the index {index.kinds.count(kind)}"
                )
        return index

    def verified(self, name: str) -> bool | None:
        key = self.image_key(name, "verified.json")
        try:
            blob = self.storage.get(key, self.sealed_size(MAX_SMALL))
            body: object = json.loads(self.unseal(crypto.FILE, key, blob, f"image {name}"))
        except (ObjectMissing, ObjectProblem, RescueError, OSError, ValueError, RecursionError):
            return None
        ok = body.get("ok") if isinstance(body, dict) else None
        return ok if isinstance(ok, bool) else None

    def record_verify(self, name: str, ok: bool, detail: str = "") -> None:
        """Remember the last verify result; silently skipped on a read-only repository."""
        if not self.storage.writable:
            return
        try:
            key = self.image_key(name, "verified.json")
            body = json.dumps({"ok": ok, "when": now_iso(), "detail": detail}).encode()
            self.storage.put(key, self.seal(crypto.FILE, key, body))
            self.storage.flush()
        except (OSError, RepoError):
            pass

    def start_image(self, name: str) -> None:
        """A fresh place for a capture: an existing complete image is never replaced; a
        leftover of an interrupted capture is cleared."""
        check_name(name)
        taken = self.taken_name(name)
        if taken == name:
            raise RepoError(f"an image named {name!r} already exists in {self.where}")
        if taken is not None:
            raise RepoError(
                f"an image named {taken!r} already exists in {self.where}: names that differ only in case "
                "are one name on FAT, exFAT and NTFS drives"
            )
        key = self.image_key(name)
        if isinstance(self.storage, LocalStorage):
            kind = self.storage.kind(key)
            if kind not in (None, "a directory"):
                raise RepoError(
                    f"{self.where}/{key} is {kind}, not an image directory: remove it or choose another name"
                )
        try:
            # leftovers of interrupted captures under this name, in any case
            for entry in self._image_folders():
                if same_name(entry.name, name) and entry.kind == FOLDER:
                    self._remove_folder(f"images/{entry.name}")
            if isinstance(self.storage, LocalStorage):
                for part in ("chunks", "images"):
                    (self.storage.path / part).mkdir(exist_ok=True)
                (self.storage.path / key).mkdir()
        except OSError as e:
            raise write_error(self.where, f"start image {name}", e) from None

    def _remove_folder(self, key: str, keep: tuple[str, ...] = ()) -> None:
        """Every object under `key` but those named in `keep` (at its top level)."""
        if isinstance(self.storage, LocalStorage) and not keep:
            shutil.rmtree(self.storage.file(key), ignore_errors=True)
            return
        for e in self.storage.list(key):
            if e.name in keep:
                continue
            if e.kind == FOLDER:
                self._remove_folder(f"{key}/{e.name}")
            elif isinstance(self.storage, LocalStorage) and e.kind != OBJECT:
                with contextlib.suppress(OSError):
                    os.unlink(self.storage.file(f"{key}/{e.name}"))
            else:
                self.storage.delete(f"{key}/{e.name}")

    def read_image_file(self, name: str, filename: str, limit: int = MAX_SMALL) -> bytes | None:
        """A small file beside an image's manifest (badsectors.map, badfiles.json, a log):
        its bytes when it is a regular file of at most `limit` bytes, None when it is missing;
        IntegrityError when it is anything else (a FIFO would hang the reader)."""
        if "/" in filename or filename in ("", ".", ".."):
            raise IntegrityError(f"image {name}: {printable(filename)!r} is not a file name")
        try:
            key = self.image_key(name, filename)
        except ValueError:
            raise IntegrityError(f"image {name}: {printable(filename)!r} is not a file name") from None
        return self._read_small(key, limit, f"image {name}", f"image {name}: {filename}")

    def write_image_file(self, name: str, filename: str, data: bytes) -> None:
        """A file of an image being captured (an index, the bad-sector map), atomically."""
        key = self.image_key(name, filename)
        kind = crypto.INDEX if filename.endswith(".idx") else crypto.FILE
        self._write_small(key, kind, data, f"write {filename} of image {name}")

    def read_fleet_file(self, key: str, limit: int = MAX_SMALL) -> bytes | None:
        """A small file under fleet/ (unattended jobs' logs and done-markers, rescue.fleet):
        its bytes, None when missing; IntegrityError when it is not a small regular file."""
        if not key.startswith(FLEET + "/"):
            raise ValueError(key)
        return self._read_small(key, limit, key, key)

    def write_fleet_file(self, key: str, data: bytes) -> None:
        """Atomically and durably: a done-marker that a crash loses restores a machine twice."""
        if not key.startswith(FLEET + "/"):
            raise ValueError(key)
        self._write_small(key, crypto.FILE, data, f"write {key}", durable=True)

    def _read_small(self, key: str, limit: int, where: str, what: str) -> bytes | None:
        """A small object's bytes, unsealed; None when missing; IntegrityError naming `what`
        when it is not a regular file of at most `limit` bytes."""
        try:
            blob = self.storage.get(key, self.sealed_size(limit))
        except ObjectMissing:
            return None
        except ObjectProblem as e:
            raise IntegrityError(f"{what} {e.reason}") from None
        return self.unseal(crypto.FILE, key, blob, where)

    def _write_small(self, key: str, kind: int, data: bytes, what: str, *, durable: bool = False) -> None:
        try:
            self.storage.put(key, self.seal(kind, key, data))
            if durable:
                self.storage.flush()
        except OSError as e:
            raise write_error(self.where, what, e) from None

    def discard_image(self, name: str, keep: tuple[str, ...] = ()) -> None:
        """Remove what a failed capture wrote of image `name`, but the files named in `keep`
        (its log); the directory goes too when nothing is kept."""
        key = self.image_key(name)
        if isinstance(self.storage, LocalStorage) and self.storage.kind(key) != "a directory":
            return
        with contextlib.suppress(OSError, RepoError):
            self._remove_folder(key, keep)

    def delete_image(self, name: str) -> None:
        """Delete a complete image: its manifest first, so it is gone from every listing at
        once and a crash midway leaves only what `prune` clears (an incomplete image's files);
        then its other files. Its chunks stay until `prune` (other images may share them)."""
        try:
            self.manifest(name)  # RepoError when there is none
        except IntegrityError:
            pass  # a damaged image may be deleted: that is how prune can run again
        self.check_lock()
        key = self.image_key(name)
        try:
            self.storage.delete(f"{key}/{MANIFEST}")
            self.storage.flush()
            self._remove_folder(key)
        except OSError as e:
            raise write_error(self.where, f"delete image {name}", e) from None

    def commit_manifest(self, manifest: Manifest) -> None:
        """Write the manifest, the image's last file, after checking that it reads back as
        valid (a capture never writes an image no restore would accept), that every chunk
        and index before it is durable, and that the lock is still this job's."""
        text = manifest.to_json()
        Manifest.from_json(text, f"image {manifest.name}")
        self.check_lock()
        try:
            self.storage.flush()
            key = self.image_key(manifest.name, MANIFEST)
            if not self.storage.put_new(key, self.seal(crypto.MANIFEST, key, text.encode())):
                raise RepoError(f"an image named {manifest.name!r} already exists in {self.where}")
            self.storage.flush()
        except OSError as e:
            raise write_error(self.where, f"write the manifest of image {manifest.name}", e) from None


def write_error(repo: str | Path, what: str, e: OSError) -> RepoError:
    """One line for a failed write into a repository: NoSpaceError when the drive is full."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{repo}: no space left on its drive (could not {what})")
    if e.errno == errno.EROFS:
        return RepoError(f"{repo} is on a read-only filesystem: cannot {what}")
    target = f" ({printable(str(e.filename))})" if e.filename else ""
    return RepoError(f"{repo}: cannot {what}: {e.strerror or e}{target}")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

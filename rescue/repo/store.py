"""A repository on disk: chunk files, image directories, atomic writes.

REPO/rescue-repo.json            format, version, chunk size, hash
REPO/chunks/ab/<64 hex>          chunk objects (rescue.repo.chunks)
REPO/images/<name>/manifest.json written last: an image without one does not exist
REPO/images/<name>/<area>.idx    chunk indexes
REPO/images/<name>/log.txt       what happened while capturing
REPO/images/<name>/verified.json result of the last full verify

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
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import zstandard

from rescue.errors import IntegrityError, RepoError, RescueError, UsageError
from rescue.repo import chunks
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import MAX_CHUNK, MIN_CHUNK, NAME_RE, Manifest, printable

FORMAT = "rescue-repository"
VERSION = 1
MARKER = "rescue-repo.json"
MANIFEST = "manifest.json"
MAX_MANIFEST = 16 << 20  # bytes; a manifest with 256 partitions is well under 1 MiB
MAX_SMALL = 1 << 20  # rescue-repo.json, verified.json
MAX_FILE = (4 << 30) - 1  # the largest file FAT32 holds; every repository file stays far below
# Entries an empty drive's root may hold whoever formatted it: created by the filesystem or by
# Windows, they do not make a repository's directory "not empty".
SYSTEM_ENTRIES = frozenset(["lost+found", "System Volume Information", "$RECYCLE.BIN"])


class NoSpaceError(RepoError):
    """The repository's drive is full (or the quota reached)."""


class FileProblem(Exception):
    """A repository file that must not be read: `reason` says what it is instead."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    damaged: str | None = None  # why the manifest was refused; the other fields are then empty


@dataclass
class Listing:
    """Everything under images/: nothing is left out, whatever state it is in."""

    images: list[ImageSummary] = field(default_factory=list)  # with a manifest, good or damaged
    incomplete: list[str] = field(default_factory=list)  # leftovers of interrupted captures
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (name, why it is not an image)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def kind_of(path: Path) -> str | None:
    """What `path` is, without following a symbolic link; None when it does not exist."""
    try:
        return _kind(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable ({e.strerror})"


def read_file(path: Path, limit: int, *, confined: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, opened without following a
    symbolic link in its last two components (the file and, when `confined`, the directory
    holding it: a directory inside the repository; the repository itself may be reached
    through a link). FileNotFoundError when it is missing, FileProblem for anything else."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if confined else 0)
    try:
        dir_fd = os.open(path.parent, dir_flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise FileProblem(f"is in {_dir_problem(path.parent, e)}") from None
    try:
        fd = os.open(path.name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileProblem("is a symbolic link") from None
        raise FileProblem(f"is unreadable ({e.strerror})") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(f"is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise FileProblem(f"is {st.st_size} bytes, more than the {limit} it can be")
        parts, left = [], limit + 1
        while left > 0:
            block = os.read(fd, min(left, 16 << 20))
            if not block:
                break
            parts.append(block)
            left -= len(block)
        if left <= 0:
            raise FileProblem(f"grows beyond the {limit} bytes it can be")
        return b"".join(parts)
    except OSError as e:
        raise FileProblem(f"is unreadable ({e.strerror})") from None
    finally:
        os.close(fd)


def _dir_problem(path: Path, e: OSError) -> str:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{path.name}, which is {kind_of(path) or 'missing'}, not a directory"
    return f"{path.name}, which is unreadable ({e.strerror})"


def temp_name(path: Path) -> Path:
    """Where `path` is written before its rename: a hidden name of the same directory, valid on
    FAT, exFAT and NTFS (no ':' or '~', at most 64 + 14 characters for a chunk) and matched by
    rescue.imaging.capture.TEMP_PATTERNS, so a killed writer's leftovers are found."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, and fsync it: written in one go, never
    reopened for appending (fusefat, the FUSE FAT driver tests use, refuses appends)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: readers see the old file or the new one.
    A failed write leaves no temporary file behind. Renaming over an existing file works on
    FAT, exFAT and NTFS under Linux (kernel drivers and FUSE alike)."""
    if len(data) > MAX_FILE:
        raise OSError(errno.EFBIG, f"{len(data)} bytes is more than a FAT32 drive holds in one file", str(path))
    tmp = temp_name(path)
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable. Some FUSE filesystems answer fsync of a directory
    with EINVAL (they have nothing to flush there, or cannot): that one answer is taken as
    done, since the files themselves were fsynced; any other error is a real one."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


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


def _listed(path: Path) -> bool:
    """Whether `path`'s name is in its directory exactly as spelled (on a case-insensitive
    filesystem, opening it also finds a name that differs in case)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return True


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class Repository:
    def __init__(self, path: Path, meta: RepoMeta):
        self.path = Path(path)
        self.meta = meta
        self.chunk_size: int = meta["chunk_size"]
        self._written_lock = threading.Lock()
        self._written: list[Path] = []  # chunk files this process created, for undo_chunks()
        self.written_bytes = 0  # bytes of chunk files written
        self.failed_bytes = 0  # bytes of chunk files that could not be written (a full drive)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Repository:
        path = Path(path)
        marker = path / MARKER
        if not path.is_dir():
            what = kind_of(path)
            raise RepoError(f"{path} is not a rescue repository" + (f" ({what}, not a directory)" if what else ""))
        try:
            blob = read_file(marker, MAX_SMALL, confined=False)
        except FileNotFoundError:
            raise RepoError(f"{path} is not a rescue repository (no {MARKER})") from None
        except FileProblem as e:
            raise RepoError(f"{marker} {e.reason}") from None
        try:
            meta: object = json.loads(blob)
        except (ValueError, RecursionError):
            raise RepoError(f"{marker} is not valid JSON (truncated or damaged)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RepoError(f"{marker} is not a rescue repository description")
        if meta.get("version") != VERSION:
            raise RepoError(
                f"{path}: repository version {printable(repr(meta.get('version')))[:40]} is not supported "
                f"(this rescue reads version {VERSION})"
            )
        size = meta.get("chunk_size")
        if (
            meta.get("hash") != "sha256"
            or not isinstance(size, int)
            or isinstance(size, bool)
            or not MIN_CHUNK <= size <= MAX_CHUNK
            or size & (size - 1)
        ):
            raise RepoError(f"{marker}: unsupported hash or chunk size")
        ident, compression = meta.get("id", ""), meta.get("compression", "zstd")
        if not isinstance(ident, str) or compression != "zstd":
            raise RepoError(f"{marker}: unsupported id or compression")
        for part in ("chunks", "images"):
            kind = kind_of(path / part)
            if kind not in (None, "a directory"):
                raise RepoError(f"{path / part} is {kind}, not a directory: this is not a usable repository")
        checked: RepoMeta = {
            "format": FORMAT,
            "version": VERSION,
            "id": ident,
            "chunk_size": size,
            "hash": "sha256",
            "compression": "zstd",
        }
        return cls(path, checked)

    @classmethod
    def create(cls, path: str | Path, chunk_size: int = 4 << 20) -> Repository:
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            if kind_of(path / MARKER) is not None:
                return cls.open(path)
            if any(p.name not in SYSTEM_ENTRIES for p in path.iterdir()):
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
        except OSError as e:
            raise write_error(path, "create the repository", e) from None
        return cls(path, meta)

    @classmethod
    def open_or_create(cls, path: str | Path, chunk_size: int = 4 << 20) -> Repository:
        return cls.open(path) if kind_of(Path(path) / MARKER) is not None else cls.create(path, chunk_size)

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """One writer at a time per repository (two captures racing on the same chunks and
        names would be safe for chunks but not for image names)."""
        try:  # created if missing, never written: flock works on FUSE filesystems too
            f = open(self.path / "lock", "a")
        except OSError as e:
            raise write_error(self.path, "lock it for writing", e) from None
        with f:
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
        """A chunk file is there (a regular file: anything else is overwritten when stored)."""
        try:
            return stat.S_ISREG(os.lstat(self.chunk_path(digest)).st_mode)
        except OSError:
            return False

    def write_chunk(self, digest: bytes, blob: bytes) -> int:
        """Store a chunk file atomically (temp name, fsync, rename). Returns bytes added. The
        file is remembered until undo_chunks() or forget_chunks(): a capture that fails takes
        its new chunks away with it. Fsynced before it counts as stored: on a FUSE filesystem
        (exFAT, NTFS) syncfs() does not reach the driver, so only fsync makes a chunk
        survive the stick being pulled; commit_manifest then makes the names durable."""
        final = self.chunk_path(digest)
        tmp = temp_name(final)
        try:
            final.parent.mkdir(exist_ok=True)
            write_new(tmp, blob)
            os.replace(tmp, final)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with self._written_lock:
                self.failed_bytes += len(blob)
            raise write_error(self.path, f"store chunk {final.name[:16]}…", e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._written_lock:
            self._written.append(final)
            self.written_bytes += len(blob)
        return len(blob)

    def undo_chunks(self) -> int:
        """Remove every chunk file this Repository object wrote (they belong to an image that
        will not exist). Returns how many were removed."""
        with self._written_lock:
            written, self._written = self._written, []
        removed = 0
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
            with contextlib.suppress(OSError):
                os.rmdir(path.parent)  # only when empty
        return removed

    def sync_chunk_names(self) -> None:
        """Fsync the directories of the chunk files written so far (their names), and chunks/
        (new subdirectories): the manifest that refers to them comes after. Once per
        directory, at most 257 fsyncs, whatever the number of chunks."""
        with self._written_lock:
            dirs = {p.parent for p in self._written}
        for d in sorted(dirs) + ([self.path / "chunks"] if dirs else []):
            fsync_dir(d)

    def forget_chunks(self) -> None:
        """The chunks written so far belong to a committed image: undo_chunks() keeps them."""
        with self._written_lock:
            self._written = []

    _threads = threading.local()  # a zstd decompressor per thread: they are not thread-safe

    def read_chunk(self, digest: bytes, where: str, length: int | None = None) -> bytes:
        """A stored chunk's bytes, checked: present, a regular file of plausible size,
        decoded, of hash `digest` and, when given, `length` bytes long (what the index
        expects). The one place that reads stored chunks (restore, verify, browse, capture's
        re-read), so every check and every message is the same: IntegrityError, starting with
        `where`. Thread-safe."""
        path = self.chunk_path(digest)
        expect = length if length is not None else self.chunk_size
        try:
            blob = read_file(path, chunks.max_blob(expect))
        except FileNotFoundError:
            raise IntegrityError(
                f"{where}: chunk {digest.hex()[:16]}… is missing ({path.relative_to(self.path)})"
            ) from None
        except FileProblem as e:
            raise IntegrityError(f"{where}: chunk {digest.hex()[:16]}… {e.reason}") from None
        dctx: zstandard.ZstdDecompressor | None = getattr(self._threads, "dctx", None)
        if dctx is None:
            dctx = self._threads.dctx = zstandard.ZstdDecompressor()
        data = chunks.decode(blob, digest, where, dctx, expect)
        if length is not None and len(data) != length:
            raise IntegrityError(f"{where}: chunk has {len(data)} bytes, the index expects {length}")
        return data

    # -- images --------------------------------------------------------------------------
    def image_dir(self, name: str) -> Path:
        return self.path / "images" / _existing_name(name)

    def taken_name(self, name: str) -> str | None:
        """The name of the complete image that `name` would collide with: itself, or one that
        differs only in case (the same directory on FAT and exFAT, and on NTFS under
        Windows; refused everywhere, so a repository can move between filesystems)."""
        images = self.path / "images"
        try:
            entries = os.listdir(images)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise RepoError(f"{images} cannot be listed ({e.strerror})") from None
        for entry in sorted(entries, key=lambda e: e != name):
            if same_name(entry, name) and kind_of(images / entry / MANIFEST) is not None:
                return entry
        return None

    def listing(self) -> Listing:
        """Every entry of images/: images (a damaged manifest is listed with the reason, not
        left out), leftovers of interrupted captures, and anything else found there."""
        out = Listing()
        images = self.path / "images"
        kind = kind_of(images)
        if kind is None:
            return out
        if kind != "a directory":
            raise RepoError(f"{images} is {kind}, not a directory")
        try:
            entries = sorted(os.scandir(images), key=lambda e: e.name)
        except OSError as e:
            raise RepoError(f"{images} cannot be listed ({e.strerror})") from None
        for entry in entries:
            name = entry.name
            what = kind_of(Path(entry.path))
            if what != "a directory":
                out.foreign.append((name, f"{what}, not an image directory"))
                continue
            has_manifest = kind_of(Path(entry.path) / MANIFEST) is not None
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
        d = self.image_dir(name)
        kind = kind_of(d)
        if kind is None:
            raise RepoError(f"no image named {name!r} in {self.path}")
        if kind != "a directory":
            raise IntegrityError(f"image {name}: images/{name} is {kind}, not a directory")
        try:
            blob = read_file(d / MANIFEST, MAX_MANIFEST)
        except FileNotFoundError:
            raise RepoError(
                f"no image named {name!r} in {self.path} (images/{name} is what an interrupted capture left)"
            ) from None
        except FileProblem as e:
            raise IntegrityError(f"image {name}: {MANIFEST} {e.reason}") from None
        try:
            text = blob.decode()
        except UnicodeDecodeError:
            raise IntegrityError(f"image {name}: manifest is not valid UTF-8 (damaged)") from None
        manifest = Manifest.from_json(text, f"image {name}")
        if manifest.name != name and same_name(manifest.name, name) and not _listed(d):
            # a case-insensitive filesystem found images/pc when asked for PC
            raise RepoError(f"no image named {name!r} in {self.path} (there is {manifest.name!r}: case differs)")
        if manifest.name != name:
            raise IntegrityError(f"image {name}: manifest field name is {manifest.name!r}, not the directory's name")
        if manifest.chunk_size != self.chunk_size:
            raise IntegrityError(
                f"image {name}: manifest field chunk_size is {manifest.chunk_size}, "
                f"the repository's chunks are {self.chunk_size} bytes"
            )
        return manifest

    def load_index(self, name: str, manifest: Manifest, area_name: str) -> Index:
        """An area's index, read only when it is a regular file of exactly the size the
        manifest implies, and checked against the manifest's checksum and sizes."""
        area = manifest.area(area_name)
        where = f"image {name}, area {area_name}"
        expected = Index.file_size(manifest.chunk_size, area.size)
        try:
            blob = read_file(self.image_dir(name) / area.index, expected)
        except FileNotFoundError:
            raise IntegrityError(f"{where}: index file {area.index} is missing") from None
        except FileProblem as e:
            raise IntegrityError(f"{where}: index file {area.index} {e.reason}") from None
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
        try:
            body: object = json.loads(read_file(self.image_dir(name) / "verified.json", MAX_SMALL))
        except (OSError, FileProblem, ValueError, RecursionError):
            return None
        ok = body.get("ok") if isinstance(body, dict) else None
        return ok if isinstance(ok, bool) else None

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
        d = self.path / "images" / check_name(name)
        taken = self.taken_name(name)
        if taken == name:
            raise RepoError(f"an image named {name!r} already exists in {self.path}")
        if taken is not None:
            raise RepoError(
                f"an image named {taken!r} already exists in {self.path}: names that differ only in case "
                "are one name on FAT, exFAT and NTFS drives"
            )
        kind = kind_of(d)
        if kind not in (None, "a directory"):
            raise RepoError(f"{d} is {kind}, not an image directory: remove it or choose another name")
        try:
            for part in ("chunks", "images"):
                (self.path / part).mkdir(exist_ok=True)
            # leftovers of interrupted captures under this name, in any case
            for entry in os.listdir(d.parent):
                if same_name(entry, name) and kind_of(d.parent / entry) == "a directory":
                    shutil.rmtree(d.parent / entry)
            d.mkdir()
        except OSError as e:
            raise write_error(self.path, f"start image {name}", e) from None
        return d

    def read_image_file(self, name: str, filename: str, limit: int = MAX_SMALL) -> bytes | None:
        """A small file beside an image's manifest (badsectors.map, badfiles.json, a log):
        its bytes when it is a regular file of at most `limit` bytes, None when it is missing;
        IntegrityError when it is anything else (a FIFO would hang the reader)."""
        if "/" in filename or filename in ("", ".", ".."):
            raise IntegrityError(f"image {name}: {printable(filename)!r} is not a file name")
        try:
            return read_file(self.image_dir(name) / filename, limit)
        except FileNotFoundError:
            return None
        except FileProblem as e:
            raise IntegrityError(f"image {name}: {filename} {e.reason}") from None

    def write_image_file(self, name: str, filename: str, data: bytes) -> None:
        """A file of an image being captured (an index, the bad-sector map), atomically."""
        try:
            write_atomic(self.image_dir(name) / filename, data)
        except OSError as e:
            raise write_error(self.path, f"write {filename} of image {name}", e) from None

    def discard_image(self, name: str, keep: tuple[str, ...] = ()) -> None:
        """Remove what a failed capture wrote of image `name`, but the files named in `keep`
        (its log); the directory goes too when nothing is kept."""
        d = self.image_dir(name)
        if kind_of(d) != "a directory":
            return
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
            return
        for entry in os.scandir(d):
            if entry.name in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def commit_manifest(self, manifest: Manifest) -> None:
        """Write the manifest, the image's last file, after checking that it reads back as
        valid: a capture never writes an image no restore would accept."""
        text = manifest.to_json()
        Manifest.from_json(text, f"image {manifest.name}")
        try:
            self.sync_chunk_names()
            fsync_dir(self.path / "images")  # the image directory's own name
            write_atomic(self.image_dir(manifest.name) / MANIFEST, text.encode())
        except OSError as e:
            raise write_error(self.path, f"write the manifest of image {manifest.name}", e) from None


def write_error(repo: Path, what: str, e: OSError) -> RepoError:
    """One line for a failed write into a repository: NoSpaceError when the drive is full."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"{repo}: no space left on its drive (could not {what})")
    if e.errno == errno.EROFS:
        return RepoError(f"{repo} is on a read-only filesystem: cannot {what}")
    target = f" ({printable(str(e.filename))})" if e.filename else ""
    return RepoError(f"{repo}: cannot {what}: {e.strerror or e}{target}")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

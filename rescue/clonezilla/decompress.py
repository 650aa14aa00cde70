"""One partition's image file as Clonezilla stores it: a compressed stream, whole or split
into pieces (`split`'s suffixes .aa, .ab, ... .yz, .zaaa ...), read as one decompressed stream.

Compressions by the file name's suffix (ocs-sr -z0..-z9): zstd (zstandard), gzip and pigz
(gzip), bzip2, xz and lzma (lzma) in Python; lz4 and lzop through their own commands, fed
the pieces on a thread. Every error of a decompressor, and a stream that ends early, is an
IntegrityError naming the piece that was being read and the partition."""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import string
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import zstandard

from rescue.errors import IntegrityError, RepoError

COMPRESSIONS = ("zst", "gz", "bz2", "xz", "lzma", "lz4", "lzo", "uncomp")
COMMANDS = {"lz4": ["lz4", "-dc"], "lzo": ["lzop", "-dc"]}
READ = 128 << 10  # compressed bytes read ahead: small, so that `piece` is the piece being decoded


def split_suffixes() -> Iterator[str]:
    """GNU split's suffixes in order: aa..yz, then zaaa..zyzz, then zzaaaa..."""
    letters = string.ascii_lowercase
    for k in itertools.count():
        for rest in itertools.product(letters, repeat=2 + k):
            if rest[0] != "z":
                yield "z" * k + "".join(rest)


def missing_piece(suffixes: list[str]) -> str | None:
    """The first suffix missing from a sorted list of split suffixes, None when they follow
    each other from .aa (a missing last piece shows as a stream that ends early)."""
    for have, want in zip(suffixes, split_suffixes()):
        if have != want:
            return want
    return None


class Pieces(io.RawIOBase):
    """The pieces of a split file, one after the other; `current` is the piece being read."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths = paths
        self.i = 0
        self.f: io.BufferedReader | None = None

    @property
    def current(self) -> str:
        return self.paths[min(self.i, len(self.paths) - 1)].name

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while self.i < len(self.paths):
            if self.f is None:
                self.f = open(self.paths[self.i], "rb")  # noqa: SIM115 - closed when read to its end
            n = self.f.readinto(b)
            if n:
                return n
            self.f.close()
            self.f = None
            self.i += 1
        return 0

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        super().close()


class _Command(io.RawIOBase):
    """A decompressing command's output, its input fed from the pieces on a thread."""

    def __init__(self, argv: list[str], pieces: Pieces):
        super().__init__()
        self.argv = argv
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise RepoError(f"{argv[0]} is not installed (the Debian package of that name)") from None
        self.feed_error: OSError | None = None  # reading a piece failed: said when the output ends
        self.feeder = threading.Thread(target=self._feed, args=(pieces,), daemon=True)
        self.feeder.start()

    def _feed(self, pieces: Pieces) -> None:
        assert self.proc.stdin is not None
        try:
            while data := pieces.read(READ):
                self.proc.stdin.write(data)
        except BrokenPipeError:  # the command stopped reading (it failed, or was closed early)
            pass
        except OSError as e:
            self.feed_error = e
        except ValueError:  # the pieces were closed under us: the reader is gone
            pass
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        assert self.proc.stdout is not None
        n = self.proc.stdout.readinto(b)  # type: ignore[attr-defined]
        if n == 0:
            self.feeder.join()
            if self.feed_error is not None:
                raise self.feed_error
            err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
            if self.proc.wait() != 0:
                last = err.splitlines()[-1] if err else f"exit status {self.proc.returncode}"
                raise OSError(f"{self.argv[0]}: {last}")
        return int(n)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        super().close()


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _decompressor(compression: str, pieces: Pieces) -> _Reader:
    if compression in COMMANDS:  # the pieces go to the command only (a reader over them here
        # too would close them under the feeding thread when it is collected)
        return io.BufferedReader(_Command(COMMANDS[compression], pieces), READ)
    raw = io.BufferedReader(pieces, READ)
    if compression == "zst":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ, read_across_frames=True)
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw)
    if compression == "bz2":
        return bz2.BZ2File(raw)
    if compression in ("xz", "lzma"):
        return lzma.LZMAFile(raw, format=lzma.FORMAT_XZ if compression == "xz" else lzma.FORMAT_ALONE)
    return raw  # "uncomp"


_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, ValueError)


class Decompressed:
    """A partition's image as one stream of exact reads (rescue.clonezilla.partclone.Stream)."""

    def __init__(self, paths: list[Path], compression: str, label: str):
        self.pieces = Pieces(paths)
        self.label = label
        self.stream = _decompressor(compression, self.pieces)
        self.offset = 0  # decompressed bytes read

    @property
    def piece(self) -> str:
        """The piece being read (the file, when it is whole)."""
        return self.pieces.current

    @property
    def where(self) -> str:
        return f"{self.piece}, {self.label}"

    def where_since(self, piece: str) -> str:
        """`where`, naming every piece from `piece` on (the data a checksum covered)."""
        now = self.piece
        return f"{piece}, {self.label}" if now == piece else f"{piece} to .{now.rsplit('.', 1)[-1]}, {self.label}"

    def read(self, n: int, what: object) -> bytes:
        """Up to n bytes, fewer only at the end of the stream."""
        parts = []
        want = n
        try:
            while want:
                got = self.stream.read(want)
                if not got:
                    break
                parts.append(got)
                want -= len(got)
        except _ERRORS as e:
            raise IntegrityError(f"{self.where}: damaged, cannot decompress {what} ({e or type(e).__name__})") from None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: object) -> bytes:
        data = self.read(n, what)
        if len(data) != n:
            raise IntegrityError(
                f"{self.where}: ends early, in {what} (after {self.offset} bytes; a piece missing or cut short?)"
            )
        return data

    def at_end(self) -> bool:
        return not self.read(1, "the end")

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.pieces.close()

    def __enter__(self) -> Decompressed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

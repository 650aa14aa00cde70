"""The chunk index of one area: what stands at chunk i, as a digest or a sentinel.

Layout (little endian):
    header  32 bytes: magic 8s b"RESCIDX\\0", version H 1, digest size H 32, chunk size I,
            area size Q, chunk count Q
    entries count x 33 bytes: kind B, digest 32s (zero for sentinels)
    trailer 32 bytes: SHA-256 of header + entries
Chunk i covers bytes [i*chunk_size, min((i+1)*chunk_size, area_size)) of its area.
Every field is checked on reading: a sentinel carries no digest, a DATA entry does; the length
of the file follows from its header, and its reader (Repository.load_index) knows that length
from the manifest before it reads a byte."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from rescue.errors import IntegrityError

MAGIC = b"RESCIDX\0"
VERSION = 1
HEADER = struct.Struct("<8sHHIQQ")
ENTRY = struct.Struct("<B32s")
NO_DIGEST = bytes(32)


class Kind(IntEnum):
    DATA = 0  # stored chunk, digest names it
    ZERO = 1  # all zero bytes
    UNUSED = 2  # the filesystem says free: content irrelevant, never written on restore
    UNREADABLE = 3  # bad sectors only; zero-filled on restore, see the bad-sector map


@dataclass
class Index:
    chunk_size: int
    area_size: int
    kinds: list[Kind] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)

    @classmethod
    def empty(cls, chunk_size: int, area_size: int) -> Index:
        count = (area_size + chunk_size - 1) // chunk_size
        return cls(chunk_size, area_size, [Kind.UNUSED] * count, [NO_DIGEST] * count)

    @property
    def count(self) -> int:
        return len(self.kinds)

    def span(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_size
        return start, min(self.chunk_size, self.area_size - start)

    def set(self, i: int, kind: Kind, digest: bytes = NO_DIGEST) -> None:
        self.kinds[i], self.digests[i] = kind, digest

    def to_bytes(self) -> bytes:
        body = bytearray(HEADER.pack(MAGIC, VERSION, 32, self.chunk_size, self.area_size, self.count))
        for kind, dig in zip(self.kinds, self.digests, strict=True):
            body += ENTRY.pack(int(kind), dig)
        body += hashlib.sha256(body).digest()
        return bytes(body)  # one copy at the most: 2 TiB in 1 MiB chunks is a 66 MiB index

    @staticmethod
    def file_size(chunk_size: int, area_size: int) -> int:
        """The exact size of the index file of an area."""
        return HEADER.size + (area_size + chunk_size - 1) // chunk_size * ENTRY.size + 32

    @classmethod
    def from_bytes(cls, blob: bytes, where: str) -> Index:
        if len(blob) < HEADER.size + 32:
            raise IntegrityError(f"{where}: index file is truncated")
        magic, version, dsize, chunk_size, area_size, count = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise IntegrityError(f"{where}: not an index file (bad magic)")
        if version != VERSION or dsize != 32:
            raise IntegrityError(f"{where}: unsupported index version {version}")
        expected_len = HEADER.size + count * ENTRY.size + 32
        if len(blob) != expected_len:
            raise IntegrityError(f"{where}: index file is {len(blob)} bytes, expected {expected_len}")
        if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
            raise IntegrityError(f"{where}: index file is damaged (checksum mismatch)")
        if chunk_size == 0 or count != (area_size + chunk_size - 1) // chunk_size:
            raise IntegrityError(f"{where}: index header is inconsistent")
        kinds: list[Kind] = []
        digests: list[bytes] = []
        by_value = {k.value: k for k in Kind}  # a dict look-up: Kind(n) costs more (2 TiB: 2 M entries)
        for n, (value, dig) in enumerate(ENTRY.iter_unpack(memoryview(blob)[HEADER.size : -32])):
            kind = by_value.get(value)
            if kind is None:
                raise IntegrityError(f"{where}: index entry {n} has unknown kind {value}")
            if (kind == Kind.DATA) == (dig == NO_DIGEST):
                what = "no digest" if kind == Kind.DATA else "a digest"
                raise IntegrityError(f"{where}: index entry {n} is {kind.name} with {what}")
            kinds.append(kind)
            digests.append(dig)
        return cls(chunk_size, area_size, kinds, digests)

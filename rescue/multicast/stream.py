"""The multicast stream's format and order: pure, no processes, no sockets.

What travels is the image as stored, so the wire carries the compressed size and the sender
reads its repository once, front to back:

    MAGIC
    frame META   the repository objects a restore opens before any chunk (the repository's
                 description, key files, the manifest, every index) and the listings it
                 asked for, as one JSON document; followed by its own SHA-256
    frame CHUNK  one per distinct stored chunk, in the order a restore writes them: the
                 stored object (compressed, sealed when encrypted), keyed by its name;
                 checked by the receiver's Repository.read_chunk like any stored chunk
    frame END    how many chunk frames and bytes came before it

A frame is a header (kind: 1 byte, key length: 2 bytes, payload length: 8 bytes, big-endian),
the key (UTF-8), the payload. udpcast carries the bytes reliably; the checks here find what
it cannot: a sender that died, a receiver that fell out, a damaged repository."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

from rescue.errors import IntegrityError
from rescue.model import gaps
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Manifest
from rescue.repo.store import Repository

MAGIC = b"RESCUE-MULTICAST 1\n"
META, CHUNK, END = 1, 2, 3
_HEAD = struct.Struct(">BHQ")
MAX_META = 1 << 30  # the header of a 16 TiB image with 1 MiB chunks is about 600 MB


class StreamEnded(Exception):
    """The stream stopped before the frame being read was whole."""


@dataclass
class Meta:
    """The objects and listings a restore reads before its first chunk, and the image's name."""

    image: str
    objects: dict[str, bytes] = field(default_factory=dict)
    lists: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "image": self.image,
                "objects": {k: base64.b64encode(v).decode() for k, v in self.objects.items()},
                "lists": self.lists,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Meta:
        try:
            d = json.loads(data)
            return cls(
                str(d["image"]),
                {str(k): base64.b64decode(v, validate=True) for k, v in d["objects"].items()},
                {str(k): [(str(n), str(kind), int(s)) for n, kind, s in v] for k, v in d["lists"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"the multicast stream's header cannot be read ({e})") from None


def frame(kind: int, key: str, payload: bytes) -> bytes:
    """One frame's bytes; a META frame carries its payload's SHA-256 after it."""
    raw = key.encode()
    tail = hashlib.sha256(payload).digest() if kind == META else b""
    return _HEAD.pack(kind, len(raw), len(payload)) + raw + payload + tail


def end_frame(chunks: int, nbytes: int) -> bytes:
    return frame(END, "", json.dumps({"chunks": chunks, "bytes": nbytes}).encode())


def _exactly(inp: IO[bytes], n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = inp.read(min(n - got, 1 << 20))
        if not b:
            raise StreamEnded(f"the stream ended {n - got} bytes early")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_magic(inp: IO[bytes]) -> None:
    got = inp.read(len(MAGIC))
    if got != MAGIC:
        raise IntegrityError(
            "no rescue multicast stream arrived (nothing, or another program's data)"
            if not got
            else "what arrived is not a rescue multicast stream (another program's data, or another version)"
        )


def read_frame(inp: IO[bytes], max_payload: int) -> tuple[int, str, bytes]:
    """(kind, key, payload); StreamEnded when the stream stops inside it, IntegrityError when
    it is not a frame this version writes."""
    kind, klen, plen = _HEAD.unpack(_exactly(inp, _HEAD.size))
    if kind not in (META, CHUNK, END) or plen > {META: MAX_META, CHUNK: max_payload, END: 4096}[kind]:
        raise IntegrityError(f"the multicast stream holds a damaged frame (kind {kind}, {plen} bytes)")
    try:
        key = _exactly(inp, klen).decode()
    except UnicodeDecodeError:
        raise IntegrityError("the multicast stream holds a damaged frame (its key is not UTF-8)") from None
    payload = _exactly(inp, plen)
    if kind == META and _exactly(inp, 32) != hashlib.sha256(payload).digest():
        raise IntegrityError("the multicast stream's header does not match its checksum (damaged on the way)")
    return kind, key, payload


@dataclass(frozen=True)
class Send:
    """One chunk the stream carries: its digest, the bytes it decodes to, how messages name it."""

    digest: bytes
    length: int
    where: str


def send_order(name: str, manifest: Manifest, indexes: dict[str, Index]) -> list[Send]:
    """Every distinct stored chunk once, in the order a restore writes them: the bytes outside
    partitions first, then the partitions, each by its offset on the drive (the order of
    rescue.model.actions.plan_actions for a plan that keeps the layout), chunks in order."""
    from rescue.imaging.verify import chunk_where

    seen: set[bytes] = set()
    out: list[Send] = []
    for area in sorted(manifest.areas, key=lambda a: (not gaps.is_gap(a.name), a.offset)):
        index = indexes[area.name]
        for i, (kind, dig) in enumerate(zip(index.kinds, index.digests)):
            if kind == Kind.DATA and dig not in seen:
                seen.add(dig)
                start, length = index.span(i)
                out.append(Send(dig, length, chunk_where(name, area.name, i, start)))
    return out


def uses(repo: Repository, manifest: Manifest, indexes: dict[str, Index]) -> tuple[Counter[str], set[str]]:
    """How many times a restore asks for each chunk object (key), and the objects it asks for
    again afterwards (the bytes outside partitions are read back to compare): what a receiver
    must hold after the first use."""
    count: Counter[str] = Counter()
    keep: set[str] = set()
    for area in manifest.areas:
        index = indexes[area.name]
        for kind, dig in zip(index.kinds, index.digests):
            if kind == Kind.DATA:
                key = repo.chunk_key(dig)
                count[key] += 1
                if gaps.is_gap(area.name):
                    keep.add(key)
    return count, keep

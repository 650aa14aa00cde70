"""Chunk objects: one file per distinct chunk, named by the SHA-256 of its plaintext.

Layout of a chunk file (little endian):
    magic   4s  b"RSCK"
    version B   1
    codec   B   0 = stored, 1 = zstd (one frame, with its content size)
    pad     H   0
    length  I   plaintext length
    payload     codec-encoded plaintext
The codec is named in the data, never guessed; the plaintext hash is checked on every read.
Nothing a chunk file says is believed before it is checked: the length must be what the index
expects, a zstd frame must declare that length (a frame that would inflate to gigabytes is
refused before it is inflated), and nothing may follow the payload."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import zstandard

from rescue.errors import IntegrityError

MAGIC = b"RSCK"
VERSION = 1
HEADER = struct.Struct("<4sBBHI")
CODEC_STORED, CODEC_ZSTD = 0, 1


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def max_blob(length: int) -> int:
    """The largest chunk file that can hold `length` bytes of plaintext: the header and the
    plaintext (encode stores a chunk raw when compressing does not make it smaller), with
    zstd's worst-case margin for files written otherwise."""
    return HEADER.size + length + length // 128 + 1024


def encode(data: bytes, compressor: zstandard.ZstdCompressor) -> bytes:
    """Compress, or store when compression does not pay (already-compressed data): restores
    then skip decompression for those chunks."""
    packed = compressor.compress(data)
    if len(packed) >= len(data):
        return HEADER.pack(MAGIC, VERSION, CODEC_STORED, 0, len(data)) + bytes(data)
    return HEADER.pack(MAGIC, VERSION, CODEC_ZSTD, 0, len(data)) + packed


def decode(
    blob: bytes,
    expected: bytes,
    where: str,
    dctx: zstandard.ZstdDecompressor,
    limit: int | None = None,
    ident: Callable[[bytes], bytes] = digest,
) -> bytes:
    """Plaintext of a chunk file, or IntegrityError naming `where` when anything is off.
    `limit`: the most plaintext bytes the caller can expect (the index's chunk length).
    `ident`: how the repository names a chunk (SHA-256, or its keyed MAC when encrypted)."""
    name = f"{where}: chunk {expected.hex()[:16]}…"
    if len(blob) < HEADER.size:
        raise IntegrityError(f"{name} is truncated")
    magic, version, codec, pad, length = HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION or pad != 0:
        raise IntegrityError(f"{name} has a bad header")
    if limit is not None and length > limit:
        raise IntegrityError(f"{name} claims {length} bytes, more than the {limit} expected")
    payload = memoryview(blob)[HEADER.size :]
    if codec == CODEC_STORED:
        data = bytes(payload)
    elif codec == CODEC_ZSTD:
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError:
            raise IntegrityError(f"{name} does not decompress (no zstd frame)") from None
        if declared != length:
            raise IntegrityError(f"{name} is damaged (its zstd frame holds {declared} bytes, the header says {length})")
        try:
            inflater = dctx.decompressobj()
            data = inflater.decompress(payload)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{name} does not decompress ({e})") from None
        if not inflater.eof or inflater.unused_data:
            raise IntegrityError(f"{name} is damaged (truncated, or bytes after its zstd frame)")
    else:
        raise IntegrityError(f"{name} uses unknown codec {codec}")
    if len(data) != length or ident(data) != expected:
        raise IntegrityError(f"{name} is damaged (hash mismatch)")
    return data

"""Chunk objects: one file per distinct chunk, named by the SHA-256 of its plaintext.

Layout of a chunk file (little endian):
    magic   4s  b"RSCK"
    version B   1
    codec   B   0 = stored, 1 = zstd (one frame)
    pad     H   0
    length  I   plaintext length
    payload     codec-encoded plaintext
The codec is named in the data, never guessed; the plaintext hash is checked on every read."""

from __future__ import annotations

import hashlib
import struct

import zstandard

from rescue.errors import IntegrityError

MAGIC = b"RSCK"
VERSION = 1
HEADER = struct.Struct("<4sBBHI")
CODEC_STORED, CODEC_ZSTD = 0, 1


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def encode(data: bytes, compressor: zstandard.ZstdCompressor) -> bytes:
    """Compress, or store when compression does not pay (already-compressed data): restores
    then skip decompression for those chunks."""
    packed = compressor.compress(data)
    if len(packed) >= len(data):
        return HEADER.pack(MAGIC, VERSION, CODEC_STORED, 0, len(data)) + bytes(data)
    return HEADER.pack(MAGIC, VERSION, CODEC_ZSTD, 0, len(data)) + packed


def decode(blob: bytes, expected: bytes, where: str, dctx: zstandard.ZstdDecompressor) -> bytes:
    """Plaintext of a chunk file, or IntegrityError naming `where` when anything is off."""
    if len(blob) < HEADER.size:
        raise IntegrityError(f"{where}: chunk {expected.hex()[:16]}… is truncated")
    magic, version, codec, _, length = HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        raise IntegrityError(f"{where}: chunk {expected.hex()[:16]}… has a bad header")
    payload = memoryview(blob)[HEADER.size :]
    if codec == CODEC_STORED:
        data = bytes(payload)
    elif codec == CODEC_ZSTD:
        try:
            data = dctx.decompress(payload, max_output_size=length)
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{where}: chunk {expected.hex()[:16]}… does not decompress ({e})") from None
    else:
        raise IntegrityError(f"{where}: chunk {expected.hex()[:16]}… uses unknown codec {codec}")
    if len(data) != length or digest(data) != expected:
        raise IntegrityError(f"{where}: chunk {expected.hex()[:16]}… is damaged (hash mismatch)")
    return data

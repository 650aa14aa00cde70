"""A partclone image writer for the tests, written from the format definition (partclone's
src/partclone.h and partclone.c, main.c's clone loop) and independent of rescue's reader:
its own CRC32 table, xxhash's digests. It makes the variants Debian's partclone 0.3.23 does
not write: image version 0001, a byte bitmap, XXH64 and XXH128, any blocks per checksum,
with and without reseed."""

from __future__ import annotations

import struct
import zlib

import xxhash

NONE, CRC32, XXH64, XXH128 = 0x00, 0x20, 0x30, 0x31
BM_NONE, BM_BIT, BM_BYTE = 0x00, 0x01, 0x08
SIZES = {NONE: 0, CRC32: 4, XXH64: 8, XXH128: 16}


def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        out.append(c)
    return out


TABLE = _table()


def crc_reference(seed: int, data: bytes) -> int:
    """partclone's crc32() as checksum.c computes it: the register, no final inversion."""
    for b in data:
        seed = (seed >> 8) ^ TABLE[(seed ^ b) & 0xFF]
    return seed


def crc(seed: int, data: bytes) -> int:
    """crc_reference at zlib's speed (zlib inverts the register before and after; the unit
    tests check the two agree)."""
    return zlib.crc32(data, seed ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


class _Sum:
    def __init__(self, mode: int):
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.h = xxhash.xxh64(seed=0) if self.mode == XXH64 else xxhash.xxh3_128(seed=0)
        self.c = 0xFFFFFFFF

    def update(self, data: bytes) -> None:
        if self.mode == CRC32:
            self.c = crc(self.c, data)
        else:
            self.h.update(data)

    def value(self) -> bytes:
        if self.mode == CRC32:
            return struct.pack("<I", self.c)
        return self.h.intdigest().to_bytes(SIZES[self.mode], "little")


def _bits(used: list[bool]) -> bytes:
    out = bytearray((len(used) + 7) // 8)
    for i, u in enumerate(used):
        if u:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def write_image(
    data: bytes,
    block_size: int,
    used: list[bool],
    *,
    version: int = 2,
    checksum: int = CRC32,
    per_checksum: int = 4,
    reseed: bool = True,
    bitmap: int = BM_BIT,
    fs: str = "EXTFS",
) -> bytes:
    """The partclone image of `data` (a filesystem of len(used) blocks), only used blocks."""
    total = len(used)
    assert len(data) >= total * block_size
    blocks = [data[i * block_size : (i + 1) * block_size] for i in range(total) if used[i]]
    if version == 1:
        out = bytearray(struct.pack("<15s15s4s2s", b"partclone-image", fs.encode(), b"0001", b"\0\0"))
        out += struct.pack("<iQQQ", block_size, len(data), total, len(blocks))
        out += bytes(4096)
        out += bytes(1 if u else 0 for u in used) + b"BiTmAgIc"
        state = 0xFFFFFFFF
        for b in blocks:  # 0001's bug: the first byte of the block, block-size times; no reseed
            state = crc(state, b[:1] * block_size)
            out += b + struct.pack("<I", state)
        return bytes(out)
    if bitmap == BM_NONE:
        assert all(used)
    size = SIZES[checksum]
    head = struct.pack("<16s14s4sH", b"partclone-image\0", b"0.3.23", b"0002", 0xC0DE)
    head += struct.pack("<16sQQQQI", fs.encode(), len(data), total, len(blocks), len(blocks), block_size)
    head += struct.pack("<IHHHHIBB", 18, 2, 64, checksum, size, per_checksum if checksum else 0, int(reseed), bitmap)
    out = bytearray(head + struct.pack("<I", crc(0xFFFFFFFF, head)))
    bits = _bits(used)
    if bitmap == BM_BIT:
        out += bits + struct.pack("<I", crc(0xFFFFFFFF, bits))
    elif bitmap == BM_BYTE:  # as write_image_bitmap does: the CRC is of the bitmap as bits
        out += bytes(1 if u else 0 for u in used) + struct.pack("<I", crc(0xFFFFFFFF, bits))
    if checksum == NONE:
        return bytes(out + b"".join(blocks))
    s = _Sum(checksum)
    n = 0
    for b in blocks:
        out += b
        s.update(b)
        n += 1
        if n == per_checksum:
            out += s.value()
            n = 0
            if reseed:
                s.reset()
    if n:
        out += s.value()
    return bytes(out)

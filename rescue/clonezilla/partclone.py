"""partclone's image format, read as a stream: header, used-block bitmap, then the used
blocks in order with a checksum after every `blocks_per_checksum` of them.

Read from partclone's own source (src/partclone.h, partclone.c, checksum.c, main.c), all
fields little endian, packed:

    v2 ("0002", what partclone 0.3 writes):
      head     magic "partclone-image\\0" 16s, partclone version 14s, image version "0002" 4s,
               endianness H (0xC0DE)                                              36 bytes
      fs info  fs name 16s, device size Q, total blocks Q, used blocks by the superblock Q,
               used blocks by the bitmap Q, block size I                          52 bytes
      options  feature size I, image version H, cpu bits H, checksum mode H, checksum size
               H, blocks per checksum I, reseed B, bitmap mode B                  18 bytes
      crc      CRC32 of the 106 bytes before it                                    4 bytes
      bitmap   bits (bit b of byte i is block 8i+b) + CRC32 of those bytes; or one byte per
               block (1 = used) + CRC32 of the same bitmap as bits; or none (every block
               is stored)
    v1 ("0001"):
      head     magic 15s, fs name 15s, version "0001" 4s, padding 2s               36 bytes
      fs info  block size i, device size Q, total blocks Q, used blocks Q          28 bytes
      options  4096 bytes, unused
      bitmap   one byte per block, then "BiTmAgIc"
      data     each used block followed by its CRC32 as version 0001 computed it (the
               first byte of the block, block-size times: a bug kept for compatibility),
               never reseeded

Checksums: none; CRC32 (table 0xEDB88320, seed 0xFFFFFFFF, no final inversion: the register
itself is stored); XXH64 (seed 0, the 64-bit value stored little endian); XXH128 (XXH3 128,
low 64 bits then high 64 bits, little endian). One checksum covers `blocks_per_checksum` used
blocks and a last, shorter group; with reseed the state starts afresh after each checksum,
without it the running state goes on.

Every checksum is checked as the stream passes; any damage is an IntegrityError naming the
file (`where`), and the block."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from rescue.errors import IntegrityError

MAGIC = b"partclone-image"
BIT_MAGIC = b"BiTmAgIc"
ENDIAN = 0xC0DE
V1_HEAD = struct.Struct("<15s15s4s2s")
V1_FSINFO = struct.Struct("<iQQQ")
V1_OPTIONS = 4096
V2_HEAD = struct.Struct("<16s14s4sH")
V2_FSINFO = struct.Struct("<16sQQQQI")
V2_OPTIONS = struct.Struct("<IHHHHIBB")
V2_SIZE = V2_HEAD.size + V2_FSINFO.size + V2_OPTIONS.size + 4

CSM_NONE, CSM_CRC32, CSM_XXH64, CSM_XXH128, CSM_CRC32_0001 = 0x00, 0x20, 0x30, 0x31, 0xFF
CHECKSUM_SIZES = {CSM_NONE: 0, CSM_CRC32: 4, CSM_XXH64: 8, CSM_XXH128: 16, CSM_CRC32_0001: 4}
CHECKSUM_NAMES = {
    CSM_NONE: "none",
    CSM_CRC32: "CRC32",
    CSM_XXH64: "XXH64",
    CSM_XXH128: "XXH128",
    CSM_CRC32_0001: "CRC32 (v1)",
}
BM_NONE, BM_BIT, BM_BYTE = 0x00, 0x01, 0x08
MAX_BLOCK_SIZE = 64 << 20  # partclone's own limit
NTFS_MAGIC = "NTFS"  # the fs name in the header of partclone.ntfs's images (partclone.h ntfs_MAGIC)
MASK32 = 0xFFFFFFFF


class Stream(Protocol):
    """What the reader needs of a decompressed image: exact reads, and where it is."""

    def read_exact(self, n: int, what: object) -> bytes: ...

    def at_end(self) -> bool: ...

    @property
    def where(self) -> str: ...

    @property
    def piece(self) -> str: ...

    def where_since(self, piece: str) -> str: ...


@dataclass(frozen=True)
class Header:
    version: int  # 1 or 2
    fs: str  # partclone's name: EXTFS, XFS, BTRFS, NTFS, FAT32 ...
    partclone_version: str
    device_size: int
    total_blocks: int
    used_blocks: int
    block_size: int
    checksum_mode: int
    checksum_size: int
    blocks_per_checksum: int
    reseed: bool
    bitmap_mode: int

    @property
    def checksum_name(self) -> str:
        return CHECKSUM_NAMES.get(self.checksum_mode, hex(self.checksum_mode))


def crc32_update(state: int, data: bytes) -> int:
    """partclone's CRC32 register after `data` (zlib's CRC inverts before and after)."""
    return zlib.crc32(data, state ^ MASK32) ^ MASK32


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def parse_header(stream: Stream) -> Header:
    """The image description, v1 or v2, checked as partclone checks it (and the v2 header's
    CRC32)."""
    raw = stream.read_exact(V2_SIZE, "header")
    if raw[: len(MAGIC)] != MAGIC:
        raise IntegrityError(f"{stream.where}: not a partclone image (bad magic)")
    version = raw[30:34]
    if version == b"0001":
        raw += stream.read_exact(V1_HEAD.size + V1_FSINFO.size + V1_OPTIONS - V2_SIZE, "header")
        _, fs, _, _ = V1_HEAD.unpack_from(raw)
        block_size, device_size, total, used = V1_FSINFO.unpack_from(raw, V1_HEAD.size)
        header = Header(1, _text(fs), "", device_size, total, used, block_size, CSM_CRC32_0001, 4, 1, False, BM_BYTE)
    elif version == b"0002":
        _, ptc, _, endian = V2_HEAD.unpack_from(raw)
        crc = struct.unpack_from("<I", raw, V2_SIZE - 4)[0]
        if crc32_update(MASK32, raw[: V2_SIZE - 4]) != crc:
            raise IntegrityError(f"{stream.where}: header damaged (header checksum mismatch)")
        if endian != ENDIAN:
            raise IntegrityError(f"{stream.where}: image written on a big-endian machine; not supported")
        fs, device_size, total, _sb_used, used, block_size = V2_FSINFO.unpack_from(raw, V2_HEAD.size)
        _fsize, _iv, _bits, mode, cs_size, per_cs, reseed, bitmap = V2_OPTIONS.unpack_from(
            raw, V2_HEAD.size + V2_FSINFO.size
        )
        header = Header(
            2, _text(fs), _text(ptc), device_size, total, used, block_size, mode, cs_size, per_cs, bool(reseed), bitmap
        )
    else:
        raise IntegrityError(f"{stream.where}: header damaged or unknown (image version {version!r})")
    _check_header(header, stream.where)
    return header


def _check_header(h: Header, where: str) -> None:
    problem = None
    if not 0 < h.block_size <= MAX_BLOCK_SIZE or h.block_size & (h.block_size - 1):
        problem = f"block size {h.block_size}"
    elif h.used_blocks > h.total_blocks:
        problem = f"{h.used_blocks} used blocks of {h.total_blocks}"
    elif h.total_blocks * h.block_size > h.device_size:
        problem = f"{h.total_blocks} blocks of {h.block_size} bytes exceed the device size {h.device_size}"
    elif h.checksum_mode not in CHECKSUM_SIZES:
        problem = f"unknown checksum mode {h.checksum_mode:#x}"
    elif CHECKSUM_SIZES[h.checksum_mode] != h.checksum_size:
        problem = f"checksum size {h.checksum_size} for {h.checksum_name}"
    elif h.checksum_mode != CSM_NONE and h.blocks_per_checksum == 0:
        problem = "no blocks per checksum"
    elif h.bitmap_mode not in (BM_NONE, BM_BIT, BM_BYTE):
        problem = f"unknown bitmap mode {h.bitmap_mode:#x}"
    if problem:
        raise IntegrityError(f"{where}: header damaged ({problem})")


def read_bitmap(stream: Stream, h: Header) -> bytes:
    """The used-block bitmap as bits (bit b of byte i: block 8i+b), checked: its CRC32 (v2),
    its magic (v1), and that it marks exactly the used blocks the header says."""
    nbytes = (h.total_blocks + 7) // 8
    if h.bitmap_mode == BM_NONE:
        bits = bytearray(b"\xff" * nbytes)
    elif h.bitmap_mode == BM_BIT:
        bits = bytearray(stream.read_exact(nbytes, "bitmap"))
    else:
        raw = stream.read_exact(h.total_blocks, "bitmap")
        if raw.translate(None, b"\0\1"):
            raise IntegrityError(f"{stream.where}: bitmap damaged (a byte other than 0 or 1)")
        bits = bytearray(nbytes)
        for i in range(0, h.total_blocks, 8):
            byte = 0
            for b, v in enumerate(raw[i : i + 8]):
                byte |= v << b
            bits[i // 8] = byte
    if h.total_blocks % 8 and h.bitmap_mode == BM_NONE:
        bits[-1] = (1 << (h.total_blocks % 8)) - 1
    if h.bitmap_mode != BM_NONE:
        if h.version == 1:
            if stream.read_exact(len(BIT_MAGIC), "bitmap") != BIT_MAGIC:
                raise IntegrityError(f"{stream.where}: bitmap damaged (no BiTmAgIc after it)")
        else:
            crc = struct.unpack("<I", stream.read_exact(4, "bitmap checksum"))[0]
            if crc32_update(MASK32, bytes(bits)) != crc:
                raise IntegrityError(f"{stream.where}: bitmap damaged (bitmap checksum mismatch)")
    if h.total_blocks % 8 and bits[-1] >> (h.total_blocks % 8):
        raise IntegrityError(f"{stream.where}: bitmap damaged (blocks marked past the end)")
    used = sum(b.bit_count() for b in bits)
    if used != h.used_blocks:
        raise IntegrityError(f"{stream.where}: bitmap damaged ({used} blocks marked, the header says {h.used_blocks})")
    return bytes(bits)


class _Checksum:
    """The running checksum of one algorithm, as partclone keeps it."""

    def __init__(self, mode: int):
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        if self.mode == CSM_XXH64:
            import xxhash

            self.state: object = xxhash.xxh64(seed=0)
        elif self.mode == CSM_XXH128:
            import xxhash

            self.state = xxhash.xxh3_128(seed=0)
        else:
            self.state = MASK32

    def update(self, data: bytes, block_size: int) -> None:
        if self.mode == CSM_CRC32:
            assert isinstance(self.state, int)
            self.state = crc32_update(self.state, data)
        elif self.mode == CSM_CRC32_0001:  # version 0001's bug: the first byte, block-size times
            assert isinstance(self.state, int)
            for at in range(0, len(data), block_size):
                self.state = crc32_update(self.state, data[at : at + 1] * block_size)
        elif self.mode in (CSM_XXH64, CSM_XXH128):
            self.state.update(data)  # type: ignore[attr-defined]

    def value(self, size: int) -> bytes:
        if isinstance(self.state, int):
            return struct.pack("<I", self.state)
        return int(self.state.intdigest()).to_bytes(size, "little")  # type: ignore[attr-defined]


class BlockReader:
    """The used blocks of an image, in order, with every checksum checked on the way."""

    def __init__(self, stream: Stream, header: Header, ordinal_to_block: Callable[[int], int]):
        self.stream, self.h = stream, header
        self.block_of = ordinal_to_block
        self.per_cs = header.blocks_per_checksum if header.checksum_mode != CSM_NONE else 0
        self.checksum = _Checksum(header.checksum_mode)
        self.in_group = 0  # blocks since the last checksum
        self.done = 0  # used blocks read
        self.group_piece = stream.piece  # where the blocks of this checksum began

    def take(self, count: int) -> bytes:
        """The next `count` used blocks' bytes."""
        bs = self.h.block_size
        if not self.per_cs:
            data = self.stream.read_exact(count * bs, self._what(count))
            self.done += count
            return data
        out = []
        while count:
            if not self.in_group:
                self.group_piece = self.stream.piece
            n = min(count, self.per_cs - self.in_group)
            data = self.stream.read_exact(n * bs, self._what(n))
            self.checksum.update(data, bs)
            out.append(data)
            self.in_group += n
            self.done += n
            count -= n
            if self.in_group == self.per_cs:
                self._check()
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> None:
        """After the last used block: the checksum of the last, short group, and nothing
        after it."""
        if self.per_cs and self.in_group:
            self._check()
        if not self.stream.at_end():
            raise IntegrityError(f"{self.stream.where}: damaged (data after the last block)")

    def _what(self, n: int) -> _Words:
        """What is being read, for a message: worked out only when one is printed (finding
        a block's number walks the bitmap)."""
        done = self.done
        return _Words(lambda: f"block {self.block_of(done)}" if n == 1 else f"blocks from {self.block_of(done)}")

    def _check(self) -> None:
        size = self.h.checksum_size
        done = self.done
        stored = self.stream.read_exact(size, _Words(lambda: f"the checksum after block {self.block_of(done - 1)}"))
        if stored != self.checksum.value(size):
            first, last = self.block_of(self.done - self.in_group), self.block_of(self.done - 1)
            where = self.stream.where_since(self.group_piece)
            raise IntegrityError(
                f"{where}: {self.h.checksum_name} checksum mismatch in blocks {first}-{last} "
                f"(bytes {first * self.h.block_size}-{(last + 1) * self.h.block_size - 1} of the partition)"
            )
        self.in_group = 0
        if self.h.reseed:
            self.checksum.reset()


class _Words:
    """A message part computed when it is formatted."""

    def __init__(self, make: Callable[[], str]):
        self.make = make

    def __str__(self) -> str:
        return self.make()


def runs(bits: bytes, first: int, end: int) -> list[tuple[int, int]]:
    """(block, count) runs of used blocks in [first, end), ascending."""
    out: list[tuple[int, int]] = []
    b = first
    while b < end:
        if b % 8 == 0 and end - b >= 8:
            byte = bits[b >> 3]
            if byte == 0xFF:
                _extend(out, b, 8)
                b += 8
                continue
            if byte == 0:
                b += 8
                continue
        if bits[b >> 3] >> (b & 7) & 1:
            _extend(out, b, 1)
        b += 1
    return out


def _extend(out: list[tuple[int, int]], block: int, n: int) -> None:
    if out and out[-1][0] + out[-1][1] == block:
        out[-1] = (out[-1][0], out[-1][1] + n)
    else:
        out.append((block, n))


class Image:
    """One partclone image, streamed once: its header and bitmap at once, its used blocks
    chunk by chunk."""

    def __init__(self, stream: Stream, area_size: int | None = None):
        """`area_size`: the partition's bytes, when known; a header that claims more is
        refused before its bitmap is read (a damaged size would have it allocated)."""
        self.stream = stream
        self.header = parse_header(stream)
        if area_size is not None:
            self._check_fits(area_size)
        self.bits = read_bitmap(stream, self.header)

    def _check_fits(self, area_size: int) -> None:
        h = self.header
        if h.total_blocks * h.block_size > area_size:
            raise IntegrityError(
                f"{self.stream.where}: the filesystem ({h.total_blocks * h.block_size} bytes) is larger "
                f"than its partition ({area_size} bytes)"
            )

    def used_bytes(self) -> int:
        return self.header.used_blocks * self.header.block_size

    def chunk_used(self, i: int, chunk_size: int) -> bool:
        """Whether chunk i (of chunk_size bytes) holds a used block."""
        bs = self.header.block_size
        first, end = i * chunk_size // bs, min(-(-(i + 1) * chunk_size // bs), self.header.total_blocks)
        if first >= end:
            return False
        if first % 8 == 0 and end % 8 == 0:
            return any(self.bits[first >> 3 : end >> 3])
        return bool(runs(self.bits, first, end))

    def chunks(self, chunk_size: int, area_size: int) -> Iterator[tuple[int, bytes]]:
        """(i, bytes) of every chunk holding used blocks, in order; free blocks read as zeros.
        Checks the stream's last checksum and its end after the last chunk."""
        h = self.header
        if chunk_size % h.block_size:
            raise IntegrityError(f"{self.stream.where}: block size {h.block_size} does not divide {chunk_size}")
        self._check_fits(area_size)
        reader = BlockReader(self.stream, h, self._ordinal_to_block)
        per_chunk = chunk_size // h.block_size
        for i in range(-(-area_size // chunk_size)):
            first = i * per_chunk
            if first >= h.total_blocks:
                break
            length = min(chunk_size, area_size - i * chunk_size)
            found = runs(self.bits, first, min(first + per_chunk, h.total_blocks))
            if not found:
                continue
            if len(found) == 1 and found[0] == (first, per_chunk) and length == chunk_size:
                yield i, reader.take(per_chunk)
                continue
            buf = bytearray(length)
            for block, n in found:
                at = (block - first) * h.block_size
                buf[at : at + n * h.block_size] = reader.take(n)
            yield i, bytes(buf)
        reader.finish()

    def _ordinal_to_block(self, ordinal: int) -> int:
        """The block number of the ordinal-th used block (only for messages)."""
        seen = 0
        for i, byte in enumerate(self.bits):
            count = byte.bit_count()
            if seen + count > ordinal:
                for b in range(8):
                    if byte >> b & 1:
                        if seen == ordinal:
                            return i * 8 + b
                        seen += 1
            seen += count
        return self.header.total_blocks

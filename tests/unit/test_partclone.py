"""rescue.clonezilla's partclone reader and decompression over images the tests' own writer
(tests/clonezilla_writer.py, from the format definition) makes: every variant reads back to
the filesystem's used blocks, and every kind of damage is refused with one line naming the
file, the partition and the block."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clonezilla_writer import BM_BYTE, BM_NONE, CRC32, NONE, XXH64, XXH128, crc, crc_reference, write_image  # noqa: E402

from rescue.clonezilla.decompress import Decompressed, missing_piece, split_suffixes  # noqa: E402
from rescue.clonezilla.partclone import V2_SIZE, Image  # noqa: E402
from rescue.clonezilla.source import swap_header  # noqa: E402
from rescue.errors import IntegrityError  # noqa: E402
from rescue.filesystems.swap import parse_header  # noqa: E402

BS = 1024
TOTAL = 300  # blocks: not a multiple of 8, nor of the chunk
CHUNK = 64 * 1024
AREA = TOTAL * BS + 5000  # the partition is larger than the filesystem

VARIANTS = {
    "v2-crc32-reseed": dict(checksum=CRC32, per_checksum=4, reseed=True),
    "v2-crc32-running": dict(checksum=CRC32, per_checksum=7, reseed=False),
    "v2-xxh64": dict(checksum=XXH64, per_checksum=5),
    "v2-xxh128-no-reseed": dict(checksum=XXH128, per_checksum=3, reseed=False),
    "v2-byte-bitmap": dict(checksum=CRC32, per_checksum=16, bitmap=BM_BYTE),
    "v2-no-checksum": dict(checksum=NONE),
    "v1": dict(version=1),
}


def filesystem(seed: int = 1) -> tuple[bytes, list[bool]]:
    rnd = random.Random(seed)
    used = [rnd.random() < 0.4 or 64 <= i < 160 for i in range(TOTAL)]
    return rnd.randbytes(TOTAL * BS), used


def expected(data: bytes, used: list[bool]) -> bytes:
    out = bytearray(AREA)
    for i, u in enumerate(used):
        if u:
            out[i * BS : (i + 1) * BS] = data[i * BS : (i + 1) * BS]
    return bytes(out)


def stored(tmp: Path, raw: bytes, name: str = "sdb3.ext4-ptcl-img.zst", pieces: int = 1) -> list[Path]:
    blob = zstandard.ZstdCompressor().compress(raw)
    cut = -(-len(blob) // pieces)
    paths = []
    for n, suffix in zip(range(pieces), split_suffixes()):
        p = tmp / (f"{name}.{suffix}" if pieces > 1 else name)
        p.write_bytes(blob[n * cut : (n + 1) * cut])
        paths.append(p)
    return paths


def read_back(paths: list[Path], compression: str = "zst") -> bytes:
    with Decompressed(paths, compression, "partition 3") as stream:
        image = Image(stream)
        out = bytearray(AREA)
        for i, data in image.chunks(CHUNK, AREA):
            out[i * CHUNK : i * CHUNK + len(data)] = data
        return bytes(out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_reads_back(tmp_path, variant):
    data, used = filesystem()
    raw = write_image(data, BS, used, **VARIANTS[variant])
    assert read_back(stored(tmp_path, raw)) == expected(data, used)


def test_no_bitmap_means_every_block(tmp_path):
    data, _ = filesystem()
    used = [True] * TOTAL
    raw = write_image(data, BS, used, bitmap=BM_NONE, per_checksum=10)
    assert read_back(stored(tmp_path, raw)) == expected(data, used)


def test_split_gzip_pieces_read_as_one(tmp_path):
    data, used = filesystem(2)
    blob = gzip.compress(write_image(data, BS, used))
    paths = []
    for n, suffix in zip(range(3), split_suffixes()):
        p = tmp_path / f"sda1.ext4-ptcl-img.gz.{suffix}"
        p.write_bytes(blob[n * len(blob) // 3 : (n + 1) * len(blob) // 3])
        paths.append(p)
    assert read_back(paths, "gz") == expected(data, used)


COMMANDS = {  # Clonezilla's suffix -> the command ocs-sr compresses with (-z1p pigz, -z9p zstdmt ...)
    "gz": ["pigz", "-c"],
    "bz2": ["bzip2", "-c"],
    "xz": ["xz", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
    "lz4": ["lz4", "-c"],
    "lzo": ["lzop", "-c"],
    "zst": ["zstd", "-T2", "-c"],
    "uncomp": ["cat"],
}


@pytest.mark.parametrize("suffix", COMMANDS)
def test_every_compression_reads_back_split(tmp_path, suffix):
    data, used = filesystem(4)
    blob = subprocess.run(COMMANDS[suffix], input=write_image(data, BS, used), capture_output=True, check=True).stdout
    paths = []
    for n, piece in zip(range(2), split_suffixes()):
        p = tmp_path / f"sda2.ext4-ptcl-img.{suffix}.{piece}"
        p.write_bytes(blob[n * len(blob) // 2 : (n + 1) * len(blob) // 2])
        paths.append(p)
    assert read_back(paths, suffix) == expected(data, used)
    if suffix != "uncomp":  # damage inside the compressed stream: the decompressor's error, in one line
        raw = bytearray(paths[0].read_bytes())
        raw[len(raw) // 2 :] = bytes(len(raw) - len(raw) // 2)
        paths[0].write_bytes(bytes(raw))
        with pytest.raises(IntegrityError, match=r"sda2\.ext4-ptcl-img\.[a-z0-9]+\.a[ab], partition 3: "):
            read_back(paths, suffix)


def damage(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1 :]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "v2-no-checksum"])
def test_flipped_data_byte_is_named(tmp_path, variant):
    data, used = filesystem()
    raw = write_image(data, BS, used, **VARIANTS[variant])
    # version 0001's checksum sees only the first byte of each block (its bug): flip that one
    at = len(raw) - 3 * (BS + 4) if variant == "v1" else len(raw) - 3 * BS
    with pytest.raises(IntegrityError) as e:
        read_back(stored(tmp_path, damage(raw, at)))
    line = str(e.value)
    assert "\n" not in line
    assert "sdb3.ext4-ptcl-img.zst, partition 3" in line and "checksum mismatch in blocks" in line


@pytest.mark.parametrize("variant", ["v2-crc32-reseed", "v2-byte-bitmap", "v1"])
def test_flipped_bitmap_byte_is_refused(tmp_path, variant):
    data, used = filesystem()
    raw = write_image(data, BS, used, **VARIANTS[variant])
    start = V2_SIZE if variant != "v1" else 36 + 28 + 4096
    with pytest.raises(IntegrityError, match=r"sdb3\.ext4-ptcl-img\.zst, partition 3: bitmap damaged"):
        read_back(stored(tmp_path, damage(raw, start + 20)))


@pytest.mark.parametrize(("variant", "at"), [("v2-xxh64", 60), ("v2-crc32-reseed", 100), ("v1", 37)])
def test_flipped_header_byte_is_refused(tmp_path, variant, at):
    data, used = filesystem()
    raw = write_image(data, BS, used, **VARIANTS[variant])
    with pytest.raises(IntegrityError, match=r"sdb3\.ext4-ptcl-img\.zst, partition 3: header damaged"):
        read_back(stored(tmp_path, damage(raw, at)))


def test_a_stream_cut_short_says_so(tmp_path):
    data, used = filesystem()
    paths = stored(tmp_path, write_image(data, BS, used), "sda1.ext4-ptcl-img.zst", pieces=3)
    paths[-1].unlink()
    with pytest.raises(IntegrityError, match=r"sda1\.ext4-ptcl-img\.zst\.ab, partition 3: (ends early|damaged)"):
        read_back(paths[:-1])


def test_trailing_bytes_are_damage(tmp_path):
    data, used = filesystem()
    with pytest.raises(IntegrityError, match="data after the last block"):
        read_back(stored(tmp_path, write_image(data, BS, used) + b"x"))


def test_the_writers_fast_crc_is_partclones():
    data = random.Random(3).randbytes(5000)
    for seed in (0xFFFFFFFF, 0x12345678):
        assert crc(seed, data) == crc_reference(seed, data)


def test_missing_split_piece():
    assert missing_piece(["aa", "ab", "ac"]) is None
    assert missing_piece(["aa", "ac"]) == "ab"
    assert missing_piece(["ab"]) == "aa"
    suffixes = list(zip(range(652), split_suffixes()))
    assert [s for _, s in suffixes[649:652]] == ["yz", "zaaa", "zaab"]


def test_swap_header_is_what_blkid_and_the_swap_class_read():
    page = swap_header(16 << 20, "069c0e83-fb10-48d2-ab1e-a1bc8db8191b", "cz-swap")
    h = parse_header(page)
    assert (h.uuid, h.label, h.page_size, h.last_page) == (
        "069c0e83-fb10-48d2-ab1e-a1bc8db8191b",
        "cz-swap",
        4096,
        4095,
    )

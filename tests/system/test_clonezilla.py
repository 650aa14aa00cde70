"""Clonezilla images in (issue 17): images Debian's ocs-sr saved of drives built here, read,
verified, restored straight from their directory and imported, as a user runs `rescue`.

Two drives (tests/clonezilla_images.py, built once and cached by recipe): GPT with ext4,
XFS, btrfs, FAT32, swap and a partition without filesystem (dd), saved zstd unsplit; MBR
with boot code and data after the MBR, ext4, an extended partition with a logical swap, dd
and NTFS, saved gzip (pigz) split into 1 MB pieces. Variants Debian's partclone does not
write come from the tests' own writer (tests/clonezilla_writer.py)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clonezilla_images import GPT_ZSTD, MBR_GZIP_SPLIT, clonezilla_image  # noqa: E402
from clonezilla_writer import BM_BYTE, XXH64, XXH128, write_image  # noqa: E402
from disks import MiB, rescue  # noqa: E402
from drives import check_restored, table  # noqa: E402

from rescue.clonezilla.decompress import Decompressed  # noqa: E402
from rescue.clonezilla.partclone import Image  # noqa: E402


@pytest.fixture(scope="module")
def gpt():
    return clonezilla_image(GPT_ZSTD)


@pytest.fixture(scope="module")
def mbr():
    return clonezilla_image(MBR_GZIP_SPLIT)


def head(path: Path, n: int, offset: int = 0) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def copy_image(fixture, tmp_path: Path) -> Path:
    """A copy of the image directory to damage or change (the cached one stays as it is)."""
    return Path(shutil.copytree(fixture.directory, tmp_path / fixture.name))


def test_list_info_verify(gpt, mbr):
    proc = rescue("list", str(gpt.directory), check=True)
    assert gpt.name in proc.stdout and "Clonezilla image" in proc.stdout
    info = rescue("info", str(gpt.directory), gpt.name, check=True).stdout
    assert "table: gpt" in info and "savedisk gpt-zstd" in info
    for fs in ("ext4", "xfs", "btrfs", "vfat", "swap"):
        assert f" {fs} " in info, info
    info = rescue("info", str(mbr.directory), mbr.name, check=True).stdout
    assert "table: msdos" in info and " ntfs " in info and "cz-swap" in info
    for fixture in (gpt, mbr):
        proc = rescue("verify", str(fixture.directory), fixture.name, check=True)
        assert f"image {fixture.name} is intact" in proc.stdout
    proc = rescue("info", str(gpt.directory), "other-name")
    assert proc.returncode == 2 and "holding one image, gpt-zstd, not other-name" in proc.stderr


def test_direct_restore_same_size(gpt, loops):
    target = loops.file("target.img", GPT_ZSTD.size)
    dev = loops.attach(target)
    plan = rescue("plan", str(gpt.directory), gpt.name, dev, check=True).stdout
    assert "write a new gpt partition table with 6 partitions" in plan and "write p2 (xfs)" in plan
    assert head(target, 1 << 20) == bytes(1 << 20), "plan wrote to the target"
    proc = rescue("restore", str(gpt.directory), gpt.name, dev, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "restored gpt-zstd" in proc.stdout
    check_restored(loops, gpt.drive, str(target))
    assert table(target) == table(gpt.drive.image)
    assert head(target, 440) == head(gpt.drive.image, 440), "MBR boot code"


def test_direct_restore_onto_larger_and_smaller_drives(mbr, loops):
    for size in (300 * MiB, 150 * MiB):  # the source is 200 MiB; its partitions end at 134 MiB
        target = loops.file(f"t{size >> 20}.img", size)
        dev = loops.attach(target)
        proc = rescue("restore", str(mbr.directory), mbr.name, dev, "--yes")
        assert proc.returncode == 0, proc.stderr
        check_restored(loops, mbr.drive, str(target))
        assert head(target, 440) == head(mbr.drive.image, 440), "MBR boot code"
        assert head(target, 64 * 1024, 512) == head(mbr.drive.image, 64 * 1024, 512), "data after the MBR"
        layout = table(target)
        assert layout["id"] == "0x5eed1234" and [p["type"] for p in layout["parts"]] == ["83", "5", "82", "83", "7"]
        end = max(p["start"] + p["size"] for p in layout["parts"]) * 512
        assert end <= size and layout["parts"][0]["size"] >= 60 * 2048
        if size > 200 * MiB:
            assert layout["parts"][0]["size"] > 60 * 2048, "grown on the larger drive"


def test_import_then_restore_and_dedup(gpt, loops, tmp_path):
    repo = tmp_path / "repo"
    proc = rescue("import", str(gpt.directory), str(repo), check=True)
    assert "imported" in proc.stdout and "as gpt-zstd" in proc.stdout
    assert rescue("verify", str(repo), gpt.name, check=True).returncode == 0
    again = rescue("import", str(gpt.directory), str(repo), "--name", "again", check=True)
    assert "stored 0 B new" in again.stdout, again.stdout  # every chunk is there already
    info = rescue("info", str(repo), gpt.name, check=True).stdout
    assert "by rescue" in info and " xfs " in info
    for size in (GPT_ZSTD.size + 200 * MiB, GPT_ZSTD.size - 8 * MiB):  # partitions end at 545 MiB
        target = loops.file(f"imported-{size >> 20}.img", size)
        proc = rescue("restore", str(repo), gpt.name, loops.attach(target), "--yes")
        assert proc.returncode == 0, proc.stderr
        check_restored(loops, gpt.drive, str(target))
        assert head(target, 440) == head(gpt.drive.image, 440)


def refused_untouched(czdir: Path, name: str, loops, expect: list[str]) -> str:
    """Restore from a damaged image: exit 1, one line naming what is wrong, the target
    as it was."""
    target = loops.file("untouched.img", MBR_GZIP_SPLIT.size)
    with open(target, "r+b") as f:
        f.write(b"old contents")
    before = sha(target)
    proc = rescue("restore", str(czdir), name, loops.attach(target), "--yes")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert all(e in line for e in expect), line
    assert sha(target) == before, "the target was written"
    return line


def test_damage_is_refused_before_the_target_is_touched(mbr, gpt, loops, tmp_path):
    cz = copy_image(mbr, tmp_path)
    ntfs = sorted(cz.glob("*p7.ntfs-ptcl-img.gz*"))[0]
    good = ntfs.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x10
    ntfs.write_bytes(bytes(raw))
    stem = ntfs.name.rsplit(".", 1)[0]  # the piece named is where the decompressor stopped
    refused_untouched(cz, mbr.name, loops, [stem, "partition 7"])
    ntfs.write_bytes(good)
    last = sorted(cz.glob("*p7.ntfs-ptcl-img.gz*"))[-1]
    last.write_bytes(last.read_bytes()[:100])  # cut short
    refused_untouched(cz, mbr.name, loops, [last.name, "partition 7"])

    shutil.rmtree(cz)
    cz = copy_image(mbr, tmp_path)
    piece = sorted(cz.glob("*p6.dd-ptcl-img.gz.ab"))[0]
    piece.unlink()
    refused_untouched(cz, mbr.name, loops, [piece.name, "is missing", "partition 6"])

    cz = copy_image(gpt, tmp_path)
    ext4 = next(cz.glob("*p1.ext4-ptcl-img.zst"))
    raw = bytearray(ext4.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    ext4.write_bytes(bytes(raw))
    line = rescue("verify", str(cz), gpt.name).stderr.strip()
    assert "\n" not in line and ext4.name in line and "partition 1" in line
    # without the checking pass the damage stops the restore when it is met, and says so
    target = loops.file("nopre.img", GPT_ZSTD.size)
    proc = rescue("restore", str(cz), gpt.name, loops.attach(target), "--yes", "--no-preverify")
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and ext4.name in line and "partition 1" in line and "Traceback" not in proc.stderr


VARIANTS = {
    "v1": dict(version=1),
    "xxh64": dict(checksum=XXH64, per_checksum=256),
    "xxh128-bytes-running": dict(checksum=XXH128, per_checksum=100, reseed=False, bitmap=BM_BYTE),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_writer_variants_restore_and_their_damage_is_refused(mbr, loops, tmp_path, variant):
    """p1 (ext4) of the MBR image rewritten by the tests' writer in a variant Debian's
    partclone does not write: restored straight from the directory, files identical; a byte
    flipped in its data is refused by verify, naming the file, the partition and the blocks."""
    cz = copy_image(mbr, tmp_path)
    old = sorted(cz.glob("*p1.ext4-ptcl-img.gz*"))
    with Decompressed(old, "gz", "partition 1") as stream:
        image = Image(stream)
        bits, h = image.bits, image.header
    used = [bool(bits[b >> 3] >> (b & 7) & 1) for b in range(h.total_blocks)]
    start, size = MBR_GZIP_SPLIT.parts[0][1] * 512, MBR_GZIP_SPLIT.parts[0][2] * 512
    data = head(mbr.drive.image, size, start)
    raw = write_image(data[: h.total_blocks * h.block_size], h.block_size, used, **VARIANTS[variant])
    for p in old:
        p.unlink()
    new = cz / old[0].name.replace(".gz.aa", ".zst")
    new.write_bytes(zstandard.ZstdCompressor(level=1).compress(raw))
    target = loops.file("variant.img", MBR_GZIP_SPLIT.size)
    proc = rescue("restore", str(cz), mbr.name, loops.attach(target), "--yes")
    assert proc.returncode == 0, proc.stderr
    check_restored(loops, mbr.drive, str(target))

    at = len(raw) - 5 * (h.block_size + 4) if variant == "v1" else len(raw) - 5 * h.block_size
    damaged = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
    new.write_bytes(zstandard.ZstdCompressor(level=1).compress(damaged))
    proc = rescue("verify", str(cz), mbr.name)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and new.name in line and "partition 1" in line and "checksum mismatch in blocks" in line

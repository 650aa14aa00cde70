"""NTFS used-block maps: boot sector parsing and $Bitmap decoding on synthetic bytes (no
root), and real volumes made by mkntfs, filled through ntfs-3g (FUSE), checked against
partclone.ntfs and by a copy of only the mapped bytes that ntfsfix and a read-only ntfs-3g
mount must find identical."""

from __future__ import annotations

import contextlib
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from disks import MiB, populate, sh, tree_hashes, umount
from partclone_domain import partclone_used, uncovered

from rescue.errors import FilesystemError
from rescue.filesystems import identify, lookup, ntfs, probe
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, normalize, total

NTFS = lookup("ntfs")  # the class the registry hands out for this filesystem

root = pytest.mark.root


# --- pure parsing, synthetic bytes ----------------------------------------------------------


def boot_sector(*, bps=512, spc=8, total=524287, serial=0x40A5D2DB6FB575F4, oem=b"NTFS    ") -> bytes:
    b = bytearray(512)
    b[0:3] = b"\xeb\x52\x90"
    b[3:11] = oem
    struct.pack_into("<HB", b, 0x0B, bps, spc)
    struct.pack_into("<Q", b, 0x28, total)
    struct.pack_into("<Q", b, 0x48, serial)
    b[510:512] = b"\x55\xaa"
    return bytes(b)


def test_boot_sector_geometry_and_serial():
    boot = ntfs.parse_boot(boot_sector())
    assert (boot.bytes_per_sector, boot.cluster_bytes, boot.clusters) == (512, 4096, 65535)
    assert boot.uuid == "40A5D2DB6FB575F4"
    assert ntfs.parse_boot(boot_sector(serial=0xAB)).uuid == "00000000000000AB"


@pytest.mark.parametrize("spc, cluster", [(1, 512), (128, 64 * 1024), (0xF8, 128 * 1024), (0xF4, 2 * MiB)])
def test_cluster_size_including_negative_encoding(spc, cluster):
    assert ntfs.parse_boot(boot_sector(spc=spc, total=1 << 24)).cluster_bytes == cluster


@pytest.mark.parametrize("change", [dict(oem=b"MSDOS5.0"), dict(bps=300), dict(spc=3), dict(spc=0), dict(total=0)])
def test_boot_sector_rejects_nonsense_with_one_line(change):
    with pytest.raises(FilesystemError) as err:
        ntfs.parse_boot(boot_sector(**change))
    assert "\n" not in str(err.value)


def naive_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    bits = [bitmap[i // 8] >> (i % 8) & 1 for i in range(nbits)]
    runs, i = [], 0
    while i < nbits:
        if bits[i]:
            j = i
            while j < nbits and bits[j]:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def test_bitmap_is_least_significant_bit_first():
    assert ntfs.bitmap_runs(b"\x01", 8) == [(0, 1)]
    assert ntfs.bitmap_runs(b"\x80\x01", 16) == [(7, 2)]  # a run across a byte boundary
    assert ntfs.bitmap_runs(b"\x06\xff\xff\x03", 32) == [(1, 2), (8, 18)]
    assert ntfs.bitmap_runs(b"\xff\xff", 12) == [(0, 12)]  # padding bits past the end ignored


def test_bitmap_runs_match_a_bit_by_bit_reading():
    rnd = random.Random(3)
    parts = []
    for _ in range(400):
        parts.append(
            rnd.choice(
                [
                    b"\x00" * rnd.randrange(1, 50),
                    b"\xff" * rnd.randrange(1, 50),
                    bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9))),
                ]
            )
        )
    bitmap = b"".join(parts)
    for nbits in (len(bitmap) * 8, len(bitmap) * 8 - 5):
        assert ntfs.bitmap_runs(bitmap, nbits) == naive_runs(bitmap, nbits)


def test_extents_add_boot_and_backup_boot_sectors():
    boot = ntfs.parse_boot(boot_sector(total=2047))  # 1 MiB volume less one sector
    bitmap = bytes([0b00000110]) + bytes(31)
    ext = ntfs.extents_from(boot, bitmap, MiB)
    assert ext == [Extent(0, 512), Extent(4096, 8192), Extent(MiB - 512, 512)]
    # a filesystem smaller than its partition: its backup and the partition's last sector
    ext = ntfs.extents_from(ntfs.parse_boot(boot_sector(total=1023)), bytes(16), MiB)
    assert ext == [Extent(0, 512), Extent(1023 * 512, 512), Extent(MiB - 512, 512)]


def test_min_size_from_ntfsresize_text():
    text = "Space in use       : 2 MB (0.7%)\nYou might resize at 1810432 bytes or 2 MB (freeing 267 MB).\n"
    assert ntfs.parse_min_size(text) == 1810432
    assert ntfs.parse_min_size("ERROR(5): Opening '/dev/loop0' as NTFS failed") is None


# --- real filesystems ---------------------------------------------------------------------

SIZE = 256 * MiB
DELETED = [f"dir{i % 5}/sub{i % 3}/file{i}.bin" for i in range(0, 40, 6)]


def fill(mnt: Path) -> None:
    """Files in nested folders, some deleted, more written into the holes."""
    populate(mnt, seed=21, files=40)
    for rel in DELETED:
        (mnt / rel).unlink()
    shutil.rmtree(mnt / "dir4")
    populate(mnt / "more", seed=22, files=20)


def expected(work: Path) -> dict[str, str]:
    """What the user put there and did not delete, built apart from the volume."""
    ref = work / "reference"
    fill(ref)
    return tree_hashes(ref)


def make_ntfs(loops, work: Path, *, size: int = SIZE, offset: int = 0, container: int | None = None) -> Volume:
    path = work / "ntfs.img"
    if container is None:
        path = loops.file(path.name, size)
    else:
        rnd = random.Random(5)
        with open(path, "wb") as f:  # garbage all around and inside: free space must not matter
            for _ in range(container // MiB):
                f.write(rnd.randbytes(MiB))
    dev = loops.attach(path, offset=offset, size=size)
    sh("mkntfs", "-Q", "-F", "-L", "NTFSLBL", dev)
    with mounted(loops, dev) as mnt:
        fill(mnt)
    return Volume(str(path), offset, size)


def copy_extents(vol: Volume, extents: list[Extent], dest: Path) -> Volume:
    """A fresh zero-filled file of the volume's size holding only the given ranges."""
    with open(vol.path, "rb") as src, open(dest, "wb") as dst:
        dst.truncate(vol.size)
        for e in extents:
            src.seek(vol.offset + e.start)
            dst.seek(e.start)
            dst.write(src.read(e.length))
    return Volume(str(dest), 0, vol.size)


def ntfsfix(vol: Volume) -> tuple[int, str]:
    proc = subprocess.run(["ntfsfix", "--no-action", vol.path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.returncode, proc.stdout.decode(errors="replace")


def ntfsfix_clean(vol: Volume) -> str:
    rc, text = ntfsfix(vol)
    assert rc == 0 and "alternate boot sector... OK" in text, text
    return text


@contextlib.contextmanager
def mounted(loops, dev: str, options: str = "") -> Iterator[Path]:
    """ntfs-3g on a fresh directory each time; the registry unmounts it if the test fails."""
    mnt = Path(tempfile.mkdtemp(prefix="mnt", dir=loops.root))
    sh("mount", "-t", "ntfs-3g", *(["-o", options] if options else []), dev, str(mnt))
    loops.mounts.append(str(mnt))
    try:
        yield mnt
    finally:
        umount(str(mnt))
        loops.mounts.remove(str(mnt))


def files_of(loops, vol: Volume) -> dict[str, str]:
    dev = loops.attach(vol.path, offset=vol.offset, size=vol.size, readonly=True)
    with mounted(loops, dev, "ro") as mnt:
        return tree_hashes(mnt)


@root
def test_map_covers_partclone_and_copy_has_every_file(loops, tmp_path):
    vol = make_ntfs(loops, tmp_path)
    ours = normalize(NTFS.used_extents(vol))

    dev = loops.attach(vol.path, readonly=True)
    pc = partclone_used("partclone.ntfs", dev, tmp_path)
    print(f"NTFS: ours {total(ours)} bytes, partclone {total(pc)} bytes")
    assert uncovered(pc, ours) == []
    assert total(ours) <= total(pc) * 1.1 + 2 * MiB

    facts = NTFS.info(vol)
    seen = probe(vol)
    assert (facts.uuid, facts.label) == (seen["UUID"], seen["LABEL"])
    assert facts.label == "NTFSLBL" and len(facts.uuid) == 16
    assert 12 * MiB < facts.used_bytes <= total(ours) < 40 * MiB
    assert facts.used_bytes <= facts.min_size < vol.size

    copy = copy_extents(vol, ours, tmp_path / "copy.img")
    ntfsfix_clean(copy)
    assert probe(copy)["UUID"] == seen["UUID"]
    want = expected(tmp_path)
    assert len(want) > 40
    assert files_of(loops, vol) == want
    assert files_of(loops, copy) == want


@root
def test_backup_boot_sector_is_in_the_map(loops, tmp_path):
    """The last sector is no cluster: without it the copy's backup boot sector is missing,
    which ntfsfix reports (the check above can fail)."""
    vol = make_ntfs(loops, tmp_path, size=64 * MiB)
    ours = normalize(NTFS.used_extents(vol))
    assert ours[-1].end == vol.size
    boot = ntfs.read_boot(vol)
    without = normalize([e for e in ours if e.start < boot.total_sectors * boot.bytes_per_sector], vol.size - 512)
    ntfsfix_clean(copy_extents(vol, ours, tmp_path / "good.img"))
    rc, text = ntfsfix(copy_extents(vol, without, tmp_path / "bad.img"))
    assert rc != 0 and "alternate boot sector... BAD" in text


@root
def test_ntfs_inside_a_bigger_file_at_an_offset(loops, tmp_path):
    size = 160 * MiB
    vol = make_ntfs(loops, tmp_path, size=size, offset=9 * MiB + 512, container=176 * MiB)
    assert identify(vol).info.uuid == NTFS.info(vol).uuid
    ours = NTFS.used_extents(vol)
    assert max(e.end for e in ours) == size
    dev = loops.attach(vol.path, offset=vol.offset, size=vol.size, readonly=True)
    assert uncovered(partclone_used("partclone.ntfs", dev, tmp_path), ours) == []

    copy = copy_extents(vol, ours, tmp_path / "copy.img")
    ntfsfix_clean(copy)
    assert files_of(loops, copy) == expected(tmp_path)

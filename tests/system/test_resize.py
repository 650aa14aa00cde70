"""Growing and shrinking real filesystems the way a restore onto another drive does: the
filesystem sits in a partition (a loop device over a range of a target file, with bytes
after the partition that must stay untouched), and afterwards a user's checks must pass:
the filesystem's own checker is clean, its size is the partition's, UUID and label are
unchanged, and every file reads back identical."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from disks import MiB, populate, sh, tree_hashes

from rescue.errors import FilesystemError
from rescue.filesystems import identify, lookup
from rescue.filesystems.base import Volume
from rescue.filesystems.resize import resize_filesystem, shrink_plan_check
from rescue.hw.splitdev import split_device

pytestmark = pytest.mark.root

OLD_GROW, NEW_GROW = 256 * MiB, 384 * MiB
XFS_GROW = 320 * MiB, 448 * MiB  # mkfs.xfs refuses new filesystems under 300 MB
BTRFS_SHRINK = 384 * MiB, 272 * MiB  # the kernel refuses to resize btrfs below 256 MiB
OLD_SHRINK, NEW_SHRINK = 384 * MiB, 200 * MiB
PART_START = 1 * MiB
TAIL = 1 * MiB  # bytes after the partition that no resize may touch
TAIL_BYTES = bytes(range(256)) * (TAIL // 256)


def rc(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def blkid_ids(dev: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", dev)
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in found.items() if k in ("TYPE", "UUID", "UUID_SUB", "LABEL", "VERSION")}


def extra_file(root: Path) -> None:
    """Brings the tree to about 60 MiB, so a shrink has real data to keep."""
    (root / "bulk.bin").write_bytes(os.urandom(45 * MiB))


# --- per filesystem: make, fill, read back, measure, check -------------------------------


@dataclass
class Fs:
    fstype: str
    mkfs: Callable[[Path], None]
    fill: Callable  # (loops, image path) -> hashes
    read: Callable  # (loops, tmp_path, partition dev) -> hashes
    size: Callable[[str], int]  # the size the filesystem itself reports
    check: Callable[[str], subprocess.CompletedProcess]


def fill_mounted(fstype: str, options: str = ""):
    def fill(loops, image: Path) -> dict[str, str]:
        dev = loops.attach(image)
        with loops.mounted(dev, fstype, options) as mnt:
            populate(mnt, seed=3)
            extra_file(mnt)
            hashes = tree_hashes(mnt)
        sh("losetup", "--detach", dev)
        loops.devices.remove(dev)
        return hashes

    return fill


def read_mounted(fstype: str, options: str = "ro"):
    def read(loops, tmp_path, dev: str) -> dict[str, str]:
        with loops.mounted(dev, fstype, options) as mnt:
            return tree_hashes(mnt)

    return read


def fat_fill(loops, image: Path) -> dict[str, str]:
    src = image.parent / "fat-src"
    src.mkdir()
    populate(src, seed=3)
    (src / "link").unlink()  # FAT has no symlinks
    extra_file(src)
    sh("mcopy", "-s", "-i", str(image), *[str(p) for p in sorted(src.iterdir())], "::/")
    hashes = tree_hashes(src)
    shutil.rmtree(src)
    return hashes


def fat_read(loops, tmp_path, dev: str) -> dict[str, str]:
    out = tmp_path / "fat-out"
    out.mkdir()
    sh("mcopy", "-s", "-n", "-i", dev, "::/*", str(out))
    return tree_hashes(out)


def ext_size(dev: str) -> int:
    text = sh("dumpe2fs", "-h", dev)
    blocks = int(re.search(r"Block count:\s+(\d+)", text).group(1))
    return blocks * int(re.search(r"Block size:\s+(\d+)", text).group(1))


def xfs_size(dev: str) -> int:
    m = re.search(r"^data\s+=\s+bsize=(\d+)\s+blocks=(\d+)", sh("xfs_info", dev), re.M)
    return int(m.group(1)) * int(m.group(2))


def btrfs_size(dev: str) -> int:
    return int(re.search(r"devid\s+1\s+size\s+(\d+)", sh("btrfs", "filesystem", "show", "--raw", dev)).group(1))


def ntfs_size(dev: str) -> int:
    # Without --force ntfsinfo refuses a volume still marked for chkdsk: this also checks
    # that the resize left it clean for Windows.
    text = sh("ntfsinfo", "-m", dev)
    clusters = int(re.search(r"Volume Size in Clusters:\s+(\d+)", text).group(1))
    return clusters * int(re.search(r"Cluster Size:\s+(\d+)", text).group(1))


def fat_size(dev: str) -> int:
    text = sh("minfo", "-i", dev, "::")
    sectors = int(re.search(r"big size: (\d+) sectors", text).group(1)) or int(
        re.search(r"small size: (\d+) sectors", text).group(1)
    )
    return sectors * int(re.search(r"sector size: (\d+) bytes", text).group(1))


def swap_size(dev: str) -> int:
    with open(dev, "rb") as f:
        head = f.read(4096)
    assert head[-10:] == b"SWAPSPACE2"
    return (struct.unpack_from("<I", head, 1028)[0] + 1) * 4096


def swap_fill(loops, image: Path) -> dict[str, str]:
    return {}


FILESYSTEMS = {
    "ext4": Fs(
        "ext4",
        lambda p: sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", str(p)) and None,
        fill_mounted("ext4"),
        read_mounted("ext4", "ro,noload"),
        ext_size,
        lambda d: rc("e2fsck", "-fn", d),
    ),
    "xfs": Fs(
        "xfs",
        lambda p: sh("mkfs.xfs", "-q", "-f", "-L", "data", str(p)) and None,
        fill_mounted("xfs"),
        read_mounted("xfs", "ro,norecovery"),
        xfs_size,
        lambda d: rc("xfs_repair", "-n", d),
    ),
    "btrfs": Fs(
        "btrfs",
        lambda p: sh("mkfs.btrfs", "-q", "-f", "-L", "home", str(p)) and None,
        fill_mounted("btrfs"),
        read_mounted("btrfs"),
        btrfs_size,
        lambda d: rc("btrfs", "check", "--readonly", d),
    ),
    "ntfs": Fs(
        "ntfs",
        lambda p: sh("mkfs.ntfs", "-q", "-F", "-f", "-L", "Windows", str(p)) and None,
        fill_mounted("ntfs-3g"),
        read_mounted("ntfs-3g"),
        ntfs_size,
        lambda d: rc("ntfsfix", "-n", d),
    ),
    "vfat": Fs(
        "vfat",
        lambda p: sh("mkfs.vfat", "-F", "32", "-s", "1", "-n", "EFI", str(p)) and None,
        fat_fill,
        fat_read,
        fat_size,
        lambda d: rc("fsck.vfat", "-n", d),
    ),
    "swap": Fs(
        "swap",
        lambda p: sh("mkswap", "-L", "swap", str(p)) and None,
        swap_fill,
        lambda loops, tmp, dev: {},
        swap_size,
        lambda d: rc("true"),
    ),
}


# --- the drive the filesystem is restored onto ---------------------------------------------


def target_file(loops, size: int) -> Path:
    """A drive with the partition at 1 MiB and a patterned MiB after it."""
    path = loops.file("target.img", PART_START + size + TAIL)
    with open(path, "r+b") as f:
        f.seek(PART_START + size)
        f.write(TAIL_BYTES)
    return path


def copy_ranges(src: str, dst: str, ranges, dst_offset: int = 0) -> None:
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        for start, length in ranges:
            fi.seek(start)
            fo.seek(dst_offset + start)
            while length:
                block = fi.read(min(length, 4 * MiB))
                assert block, "source ended early"
                fo.write(block)
                length -= len(block)


def used_ranges(path: str, size: int) -> list[tuple[int, int]]:
    """What the restore engine would copy: the filesystem's used map plus the first and last MiB."""
    found = identify(Volume(path, 0, size))
    assert found.extents is not None, f"no filesystem class for {path}"
    ranges = [(e.start, e.length) for e in found.extents]
    return ranges + [(0, MiB), (size - MiB, MiB)]


def make_source(loops, fs: Fs, size: int) -> tuple[Path, dict[str, str], dict[str, str]]:
    image = loops.file("source.img", size)
    fs.mkfs(image)
    hashes = fs.fill(loops, image)
    return image, hashes, blkid_ids(str(image))


def assert_user_checks(
    loops, tmp_path, fs: Fs, target: Path, size: int, ids: dict[str, str], hashes: dict[str, str], expect_size: int
) -> None:
    with open(target, "rb") as f:
        f.seek(PART_START + size)
        assert f.read(TAIL) == TAIL_BYTES, "bytes after the partition were changed"
    dev = loops.attach(target, offset=PART_START, size=size, readonly=True)
    checked = fs.check(dev)
    assert checked.returncode == 0, checked.stdout
    got = fs.size(dev)
    assert expect_size - MiB < got <= expect_size, f"{fs.fstype} reports {got} bytes, expected ~{expect_size}"
    assert blkid_ids(dev) == ids
    assert fs.read(loops, tmp_path, dev) == hashes


# --- grow ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ext4", "xfs", "btrfs", "ntfs", "vfat", "swap"])
def test_grow_fills_the_larger_partition(loops, tmp_path, name):
    fs = FILESYSTEMS[name]
    old, new = XFS_GROW if name == "xfs" else (OLD_GROW, NEW_GROW)
    source, hashes, ids = make_source(loops, fs, old)
    target = target_file(loops, new)
    copy_ranges(str(source), str(target), used_ranges(str(source), old), PART_START)

    part = loops.attach(target, offset=PART_START, size=new)
    said = resize_filesystem(name, part, new)
    assert part in said

    # FAT is left at its size on purpose (see rescue.filesystems.fat.Fat._resize).
    expect = new if lookup(name).grow_fills else old
    assert_user_checks(loops, tmp_path, fs, target, new, ids, hashes, expect)


# --- shrink on the target, the tail through a scratch file ----------------------------------


@pytest.mark.parametrize("name", ["ext4", "btrfs", "ntfs", "vfat", "swap"])
def test_shrink_on_the_target_fits_the_smaller_partition(loops, tmp_path, name):
    """What a restore onto a smaller drive does: the filesystem's bytes are written at their
    final place, the part past the new end into scratch, and the resize tool shrinks the
    whole through one device of the old size (rescue.hw.splitdev)."""
    fs = FILESYSTEMS[name]
    old, new = BTRFS_SHRINK if name == "btrfs" else (OLD_SHRINK, NEW_SHRINK)
    source, hashes, ids = make_source(loops, fs, old)
    target = target_file(loops, new)
    work = tmp_path / "work"
    work.mkdir()
    ranges = used_ranges(str(source), old)

    def write_into(sd) -> None:
        with open(source, "rb") as f:
            for start, length in ranges:
                f.seek(start)
                sd.write(start, f.read(length))

    with split_device(str(target), PART_START, new, old, work, write_into) as sd:
        said = resize_filesystem(name, sd.path, new)
        peak = sd.scratch_bytes()

    assert "shrunk" in said or "recreated" in said, said
    past = sum(max(0, s + n - max(s, new)) for s, n in ranges)
    assert peak <= past + 16 * MiB, f"scratch {peak} for {past} bytes past the new end"
    assert list(work.iterdir()) == [], "scratch file left behind"
    attached = sh("losetup", "--list", "--noheadings", "--output", "BACK-FILE")
    assert str(tmp_path) not in attached.replace(str(target), ""), "loop device left attached"
    assert_user_checks(loops, tmp_path, fs, target, new, ids, hashes, new)


# --- refusals ------------------------------------------------------------------------------


def test_xfs_shrink_is_refused_without_touching_it(loops):
    image = loops.file("xfs.img", OLD_SHRINK)
    FILESYSTEMS["xfs"].mkfs(image)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    dev = loops.attach(image)
    with pytest.raises(FilesystemError, match=r"XFS can only grow") as err:
        resize_filesystem("xfs", dev, NEW_SHRINK)
    assert "384.0 MiB" in str(err.value) and "200.0 MiB" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(FilesystemError, match=r"XFS can only grow"):
        shrink_plan_check("xfs", None, NEW_SHRINK, current_size=OLD_SHRINK)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_shrink_below_minimum_is_refused_before_any_write(loops, tmp_path):
    fs = FILESYSTEMS["ext4"]
    source, _, _ = make_source(loops, fs, OLD_SHRINK)
    info = identify(Volume(str(source), 0, OLD_SHRINK)).info
    assert info.min_size and info.min_size > 60 * MiB
    too_small = info.min_size - 8 * MiB
    with pytest.raises(FilesystemError) as err:
        shrink_plan_check("ext4", info.min_size, too_small)
    msg = str(err.value)
    assert str(too_small) in msg and str(info.min_size) in msg, msg


def test_ext4_below_what_resize2fs_allows_fails_with_one_line(loops):
    fs = FILESYSTEMS["ext4"]
    source, hashes, ids = make_source(loops, fs, OLD_SHRINK)
    dev = loops.attach(source)
    with pytest.raises(FilesystemError) as err:
        resize_filesystem("ext4", dev, 40 * MiB)  # below the ~60 MiB of files
    assert "resize2fs" in str(err.value) and "\n" not in str(err.value)
    assert rc("e2fsck", "-fn", dev).returncode == 0
    assert ext_size(dev) == OLD_SHRINK


def test_fat_shrink_refused_when_data_lies_past_the_new_end(loops, tmp_path):
    image = loops.file("fat.img", 128 * MiB)
    sh("mkfs.vfat", "-F", "32", "-s", "1", "-n", "EFI", str(image))
    filler, keep = tmp_path / "filler.bin", tmp_path / "keep.bin"
    filler.write_bytes(bytes(80 * MiB))
    keep.write_bytes(os.urandom(MiB))
    sh("mcopy", "-i", str(image), str(filler), str(keep), "::/")
    sh("mdel", "-i", str(image), "::/filler.bin")  # keep.bin now lies past 80 MiB
    digest = lambda: hashlib.sha256(image.read_bytes()).hexdigest()  # noqa: E731
    before = digest()
    dev = loops.attach(image)
    with pytest.raises(FilesystemError, match=r"data lies up to 8\d\.\d MiB") as err:
        resize_filesystem("vfat", dev, 64 * MiB)
    assert "64.0 MiB" in str(err.value)
    assert digest() == before

    # Fewer clusters than FAT32 allows (65525 of 512 bytes, about 32 MiB) would change the type.
    sh("mdel", "-i", str(image), "::/keep.bin")
    before = digest()
    with pytest.raises(FilesystemError, match=r"at least 65525 clusters"):
        resize_filesystem("vfat", dev, 24 * MiB)
    assert digest() == before


def test_btrfs_below_kernel_floor_is_refused_before_mounting(loops, tmp_path):
    with pytest.raises(FilesystemError, match=r"btrfs.*200.0 MiB.*256.0 MiB"):
        shrink_plan_check("btrfs", None, 200 * MiB)


def ntfs_flags(dev: str) -> str:
    return re.search(r"Volume Flags: (.*)", sh("ntfsinfo", "-f", "-m", dev)).group(1)


def test_ntfs_keeps_a_chkdsk_that_windows_had_asked_for(loops):
    image = loops.file("ntfs.img", OLD_GROW)
    FILESYSTEMS["ntfs"].mkfs(image)
    sh("ntfsfix", str(image))  # marks the volume for chkdsk, as Windows does after an error
    assert "DIRTY" in ntfs_flags(str(image))
    with open(image, "r+b") as f:
        f.truncate(NEW_GROW)
    dev = loops.attach(image)
    said = resize_filesystem("ntfs", dev, NEW_GROW)
    assert "chkdsk" in said
    assert "DIRTY" in ntfs_flags(dev)
    assert rc("ntfsfix", "-n", dev).returncode == 0


def test_unknown_type_and_small_device_are_refused(loops):
    image = loops.file("blank.img", 64 * MiB)
    dev = loops.attach(image)
    with pytest.raises(FilesystemError, match="no resize method"):
        resize_filesystem("zfs_member", dev, 64 * MiB)
    with pytest.raises(FilesystemError, match="holds only 64.0 MiB"):
        resize_filesystem("ext4", dev, 128 * MiB)

"""ext2/3/4 used-block maps on real filesystems: nothing partclone calls used is missing, the
map is not much bigger, and a copy of only the mapped bytes is a clean, identical filesystem."""

from __future__ import annotations

import pytest
from disks import MiB, populate, sh
from fscheck import check_against_partclone, check_copy_restores, make_fs

from rescue.filesystems import identify, lookup, probe
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, normalize, total

EXT4 = lookup("ext4")  # the class the registry hands out for this filesystem

pytestmark = pytest.mark.root


def superblock_used(dev: str) -> int:
    """Used bytes by the superblock's own free count (exact after a clean unmount): a second
    reference, independent of the per-group bitmaps the map is built from."""
    header = sh("dumpe2fs", "-h", dev)
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    bs, blocks, free = (int(fields[k]) for k in ("Block size", "Block count", "Free blocks"))
    return (blocks - free) * bs


CASES = {
    # name: (mkfs argv, size, offset, mount type, partclone tool)
    "ext2-1k": (["mkfs.ext2", "-q", "-F", "-b", "1024", "-L", "small"], 64 * MiB, 0, "ext2", "partclone.ext2"),
    "ext3-1k-offset": (["mkfs.ext3", "-q", "-F", "-b", "1024"], 96 * MiB, MiB, "ext3", "partclone.ext3"),
    # 4 KiB blocks, 4096 blocks per group: 32 groups, most BLOCK_UNINIT, flex_bg packing the
    # bitmaps and inode tables of 16 groups into the first one.
    "ext4-4k-groups": (
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-g", "4096", "-L", "root"],
        512 * MiB,
        0,
        "ext4",
        "partclone.ext4",
    ),
    # bigalloc: dumpe2fs names free ranges by cluster, 16 blocks each here. partclone 0.3.23
    # refuses bigalloc, so the superblock's free count and the copy are the references.
    "ext4-bigalloc": (
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "bigalloc", "-C", "65536"],
        256 * MiB,
        0,
        "ext4",
        None,
    ),
    "ext4-offset": (["mkfs.ext4", "-q", "-F"], 256 * MiB, MiB, "ext4", "partclone.ext4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_map_covers_partclone_and_copy_is_identical(loops, tmp_path, case):
    mkfs, size, offset, fstype, tool = CASES[case]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, fstype)

    ours = normalize(EXT4.used_extents(vol))
    assert ours and ours[-1].end <= vol.size
    assert total(ours) == superblock_used(dev)
    if tool:
        mine, theirs = check_against_partclone(tool, dev, ours, tmp_path)
        print(f"{case}: ours {mine} bytes, partclone {theirs} bytes")
    check_copy_restores(loops, vol, ours, hashes, tmp_path, ["e2fsck", "-fn"], fstype)


def test_info_matches_blkid_and_superblock(loops, tmp_path):
    mkfs, size, offset, fstype, _ = CASES["ext4-4k-groups"]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, fstype)
    fi = EXT4.info(vol)
    found = identify(vol)  # the engine's lookup finds this class, and the map from the same read
    assert (found.info, found.fs, found.extents) == (fi, EXT4, EXT4.used_extents(vol))
    found = probe(vol)
    assert (fi.type, fi.uuid, fi.label) == ("ext4", found["UUID"], "root")
    assert fi.map_source == "dumpe2fs"
    assert fi.used_bytes == superblock_used(dev) == total(EXT4.used_extents(vol))
    assert 12 * MiB < fi.used_bytes < vol.size // 2  # populate() left over 12 MiB of files
    # resize2fs -P: room for the data, less than the volume.
    assert fi.used_bytes // 2 < fi.min_size < vol.size


def test_journal_needing_recovery_maps_everything(loops, tmp_path):
    """A mounted (or crashed) ext4 has bitmaps that lag behind its journal: the map must not
    trust them."""
    path = loops.file("fs.img", 128 * MiB)
    dev = loops.attach(path)
    sh("mkfs.ext4", "-q", "-F", dev)
    vol = Volume(str(path), 0, 128 * MiB)
    with loops.mounted(dev, "ext4") as mnt:
        populate(mnt, seed=3, files=10)
        sh("sync")
        assert EXT4.used_extents(vol) == [Extent(0, vol.size)]
        assert "whole volume" in EXT4.info(vol).map_source
    assert total(EXT4.used_extents(vol)) < vol.size // 2


def test_not_ext_is_a_one_line_error(loops, tmp_path):
    from rescue.errors import FilesystemError

    path = loops.file("blank.img", 16 * MiB)
    with pytest.raises(FilesystemError) as err:
        EXT4.used_extents(Volume(str(path), 0, 16 * MiB))
    assert "\n" not in str(err.value)

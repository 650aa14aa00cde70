"""XFS used-block maps on real filesystems: nothing partclone calls used is missing, the map
is not much bigger, and a copy of only the mapped bytes is a clean, identical filesystem."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from disks import MiB, populate, sh, tree_hashes
from partclone_domain import partclone_used, uncovered
from rescue.filesystems import identify, probe, xfs
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, normalize, total, with_edges

pytestmark = pytest.mark.root


def make_fs(loops, tmp_path: Path, mkfs: list[str], size: int, offset: int = 0,
            fstype: str | None = None) -> tuple[Volume, str, dict[str, str]]:
    """mkfs on a sparse file (at `offset` inside it), fill it, delete some files so the
    bitmaps have holes, unmount. Returns the volume, its loop device, and the file hashes."""
    path = loops.file("fs.img", offset + size + (3 * MiB if offset else 0))
    dev = loops.attach(path, offset=offset, size=size)
    sh(*mkfs, dev)
    with loops.mounted(dev, fstype) as mnt:
        populate(mnt, seed=7)
        (mnt / "extra").mkdir()
        populate(mnt / "extra", seed=8, files=30)
        for victim in ("extra/big.bin", "dir1/sub1/file1.bin", "dir2/sub2/file2.bin"):
            (mnt / victim).unlink()
        shutil.rmtree(mnt / "extra" / "dir3")
        hashes = tree_hashes(mnt)
    free_mountpoints(tmp_path)
    return Volume(str(path), offset, size), dev, hashes


def free_mountpoints(root: Path) -> None:
    """LoopRegistry.mounted() names mount points by how many mounts are active, so a second
    mount after an unmount reuses "mnt0", which then already exists: remove the empty ones."""
    for d in root.glob("mnt*"):
        if d.is_dir() and not os.path.ismount(d) and not any(d.iterdir()):
            d.rmdir()


def copy_mapped(vol: Volume, extents: list[Extent], dest: Path) -> None:
    """What a restore does: only the mapped bytes reach a zero-filled target."""
    with open(dest, "wb") as f:
        f.truncate(vol.size)
    src = os.open(vol.path, os.O_RDONLY)
    dst = os.open(dest, os.O_WRONLY)
    try:
        for e in extents:
            pos = e.start
            while pos < e.end:
                n = min(4 * MiB, e.end - pos)
                os.pwrite(dst, os.pread(src, n, vol.offset + pos), pos)
                pos += n
    finally:
        os.close(src)
        os.close(dst)


def check_against_partclone(tool: str, dev: str, ours: list[Extent], workdir: Path) -> tuple[int, int]:
    ref = partclone_used(tool, dev, workdir)
    assert uncovered(ref, ours) == []
    assert total(ours) <= total(ref) * 1.1 + 2 * MiB, (total(ours), total(ref))
    return total(ours), total(ref)


def check_copy_restores(loops, vol: Volume, ours: list[Extent], hashes: dict[str, str], tmp_path: Path) -> None:
    copy = tmp_path / "copy.img"
    copy_mapped(vol, with_edges(ours, vol.size), copy)
    cdev = loops.attach(copy)
    sh("xfs_repair", "-n", cdev)  # raises on any complaint (exit status != 0)
    with loops.mounted(cdev, "xfs", "ro") as mnt:
        assert tree_hashes(mnt) == hashes


CASES = {
    # name: (mkfs argv, size, offset). mkfs.xfs refuses new filesystems under 300 MB.
    "xfs-512m": (["mkfs.xfs", "-q", "-f", "-L", "data"], 512 * MiB, 0),
    "xfs-1k-blocks-offset": (["mkfs.xfs", "-q", "-f", "-b", "size=1024"], 320 * MiB, MiB),
    # reflink and rmap btrees add per-AG metadata; six AGs put the log in the middle one.
    "xfs-rmap-6-ags": (["mkfs.xfs", "-q", "-f", "-m", "rmapbt=1,reflink=1", "-d", "agcount=6"], 512 * MiB, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_map_covers_partclone_and_copy_is_identical(loops, tmp_path, case):
    mkfs, size, offset = CASES[case]
    vol, dev, hashes = make_fs(loops, tmp_path, mkfs, size, offset, "xfs")

    ours = normalize(xfs.used_extents(vol))
    assert ours and ours[-1].end <= vol.size
    mine, theirs = check_against_partclone("partclone.xfs", dev, ours, tmp_path)
    print(f"{case}: ours {mine} bytes, partclone {theirs} bytes")
    check_copy_restores(loops, vol, ours, hashes, tmp_path)


def test_info_matches_blkid(loops, tmp_path):
    mkfs, size, offset = CASES["xfs-512m"]
    vol, dev, hashes = make_fs(loops, tmp_path, mkfs, size, offset, "xfs")
    fi = xfs.info(vol, "xfs")
    assert identify(vol) == (fi, xfs)  # the engine's lookup finds this module
    found = probe(vol)
    assert (fi.type, fi.uuid, fi.label) == ("xfs", found["UUID"], "data")
    assert fi.map_source == "xfs_db freesp"
    assert fi.used_bytes == total(normalize(xfs.used_extents(vol)))
    assert 12 * MiB < fi.used_bytes < vol.size // 2  # populate() left over 12 MiB of files
    assert fi.min_size == vol.size  # XFS cannot shrink


def test_dirty_log_maps_everything(loops, tmp_path):
    """A mounted (or crashed) XFS has free-space btrees that lag behind its log."""
    path = loops.file("fs.img", 320 * MiB)
    dev = loops.attach(path)
    sh("mkfs.xfs", "-q", "-f", dev)
    vol = Volume(str(path), 0, 320 * MiB)
    with loops.mounted(dev, "xfs") as mnt:
        populate(mnt, seed=3, files=10)
        sh("sync")
        assert xfs.used_extents(vol) == [Extent(0, vol.size)]
        assert "whole volume" in xfs.info(vol, "xfs").map_source
    assert total(xfs.used_extents(vol)) < vol.size // 2


def test_not_xfs_is_a_one_line_error(loops, tmp_path):
    from rescue.errors import FilesystemError

    path = loops.file("blank.img", 16 * MiB)
    with pytest.raises(FilesystemError) as err:
        xfs.used_extents(Volume(str(path), 0, 16 * MiB))
    assert "\n" not in str(err.value)

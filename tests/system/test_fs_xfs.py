"""XFS used-block maps on real filesystems: nothing partclone calls used is missing, the map
is not much bigger, and a copy of only the mapped bytes is a clean, identical filesystem."""

from __future__ import annotations

import pytest
from disks import MiB, populate, sh
from fscheck import check_against_partclone, check_copy_restores, make_fs

from rescue.filesystems import identify, lookup, probe
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, normalize, total

XFS = lookup("xfs")  # the class the registry hands out for this filesystem

pytestmark = pytest.mark.root


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
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, "xfs")

    ours = normalize(XFS.used_extents(vol))
    assert ours and ours[-1].end <= vol.size
    mine, theirs = check_against_partclone("partclone.xfs", dev, ours, tmp_path)
    print(f"{case}: ours {mine} bytes, partclone {theirs} bytes")
    check_copy_restores(loops, vol, ours, hashes, tmp_path, ["xfs_repair", "-n"], "xfs")


def test_info_matches_blkid(loops, tmp_path):
    mkfs, size, offset = CASES["xfs-512m"]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, "xfs")
    fi = XFS.info(vol)
    found = identify(vol)  # the engine's lookup finds this class, and the map from the same read
    assert (found.info, found.fs, found.extents) == (fi, XFS, XFS.used_extents(vol))
    found = probe(vol)
    assert (fi.type, fi.uuid, fi.label) == ("xfs", found["UUID"], "data")
    assert fi.map_source == "xfs_db freesp"
    assert fi.used_bytes == total(normalize(XFS.used_extents(vol)))
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
        assert XFS.used_extents(vol) == [Extent(0, vol.size)]
        assert "whole volume" in XFS.info(vol).map_source
    assert total(XFS.used_extents(vol)) < vol.size // 2


def test_not_xfs_is_a_one_line_error(loops, tmp_path):
    from rescue.errors import FilesystemError

    path = loops.file("blank.img", 16 * MiB)
    with pytest.raises(FilesystemError) as err:
        XFS.used_extents(Volume(str(path), 0, 16 * MiB))
    assert "\n" not in str(err.value)

"""What every used-block map test does to a real filesystem: build one on a sparse file and
fill it, compare the map with partclone's, and restore only the mapped bytes into a fresh
file, which must then check clean and hold the same files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from disks import MiB, populate, sh, tree_hashes
from partclone_domain import partclone_used, uncovered

from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, total, with_edges


def make_fs(
    loops, mkfs: Sequence[str], size: int, offset: int = 0, fstype: str | None = None, options: str = ""
) -> tuple[Volume, str, dict[str, str]]:
    """mkfs on a sparse file (at `offset` inside it, with room after it: a partition is
    rarely the end of its drive), fill it, delete some files so the allocation maps have
    holes, unmount (`options` are for that mount). Returns the volume, its loop device, and the file hashes."""
    path = loops.file("fs.img", offset + size + (3 * MiB if offset else 0))
    dev = loops.attach(path, offset=offset, size=size)
    sh(*mkfs, dev)
    with loops.mounted(dev, fstype, options) as mnt:
        populate(mnt, seed=7)
        (mnt / "extra").mkdir()
        populate(mnt / "extra", seed=8, files=30)
        for victim in ("extra/big.bin", "dir1/sub1/file1.bin", "dir2/sub2/file2.bin"):
            (mnt / victim).unlink()
        shutil.rmtree(mnt / "extra" / "dir3")
        hashes = tree_hashes(mnt)
    return Volume(str(path), offset, size), dev, hashes


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


def check_against_partclone(
    tool: str,
    dev: str,
    ours: list[Extent],
    workdir: Path,
    *,
    factor: float = 1.1,
    slack: int = 2 * MiB,
    must_cover: bool = True,
) -> tuple[int, int]:
    """Our map holds everything partclone's does (when partclone is right about what is
    used) and is at most `factor` times its size plus `slack`. Returns (ours, partclone's)
    in bytes."""
    ref = partclone_used(tool, dev, workdir)
    if must_cover:
        assert uncovered(ref, ours) == []
    assert total(ours) <= total(ref) * factor + slack, (total(ours), total(ref))
    return total(ours), total(ref)


def check_copy_restores(
    loops,
    vol: Volume,
    ours: list[Extent],
    hashes: dict[str, str],
    workdir: Path,
    fsck: Sequence[str],
    fstype: str,
    also: Callable[[Path], None] | None = None,
) -> None:
    """Restore only the mapped bytes (plus the first and last MiB, as capture does) into a
    fresh file: `fsck` must accept it, and mounted read-only it must hold the same files.
    `also` gets the mount point for checks of its own."""
    copy = Path(workdir) / "copy.img"
    copy_mapped(vol, with_edges(ours, vol.size), copy)
    cdev = loops.attach(copy)
    sh(*fsck, cdev)  # raises on any complaint (exit status != 0)
    with loops.mounted(cdev, fstype, "ro") as mnt:
        assert tree_hashes(mnt) == hashes
        if also is not None:
            also(mnt)

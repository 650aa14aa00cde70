"""Imaging a drive with bad sectors: a real block device (FUSE file returning EIO, under a
loop device). Every good sector is captured exactly, every bad one is in the map, the capture
finishes."""

from __future__ import annotations

import random
import subprocess

import pytest
from disks import MiB, partition_table, rescue
from faulty_disk import faulty_block_device

from rescue.errors import SECTORS_LOST
from rescue.model.badmap import parse_mapfile

pytestmark = pytest.mark.root
P1 = (MiB, 62 * MiB)  # raw partition: offset, size


def bad_layout() -> list[tuple[int, int]]:
    """Single sectors, a cluster of 1000, and 1000 scattered, all inside the raw partition
    away from its first and last 2 MiB (where blkid probes with buffered reads)."""
    rnd = random.Random(5)
    lo, hi = (P1[0] + 2 * MiB) // 512, (P1[0] + P1[1] - 2 * MiB) // 512
    sectors = {lo + 10, lo + 4095, hi - 1}
    cluster = lo + 20000
    sectors |= set(range(cluster, cluster + 1000))
    while len(sectors) < 2003:
        s = rnd.randrange(lo, hi)
        if not cluster - 1 <= s <= cluster + 1000:
            sectors.add(s)
    runs: list[list[int]] = []
    for s in sorted(sectors):
        if runs and runs[-1][1] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, s + 1])
    return [(a * 512, (b - a) * 512) for a, b in runs]


def test_capture_of_a_drive_with_bad_sectors(loops, tmp_path):
    backing = loops.file("failing.img", 64 * MiB)
    partition_table(str(backing), f'label: gpt\nstart=2048, size={P1[1] // 512}, name="raw"\n')
    with open(backing, "r+b") as f:
        f.seek(P1[0])
        f.write(random.Random(1).randbytes(P1[1]))
    bad = bad_layout()
    with faulty_block_device(loops, backing, bad=bad) as dev:
        proc = rescue("capture", dev, str(tmp_path / "repo"), "--name", "failing")
    assert proc.returncode == SECTORS_LOST, proc.stderr  # done, but not clean
    assert "2003 sectors could not be read" in proc.stdout, proc.stdout
    assert proc.stderr == "rescue: incomplete: 2003 unreadable sectors were zero-filled\n"

    # The map is a ddrescue mapfile naming exactly the bad sectors.
    mapfile = (tmp_path / "repo" / "images" / "failing" / "badsectors.map").read_text()
    assert parse_mapfile(mapfile).bad_ranges() == bad
    assert subprocess.run(["ddrescuelog", "-t", "-"], input=mapfile.encode(), stdout=subprocess.DEVNULL).returncode == 0
    info = rescue("info", str(tmp_path / "repo"), "failing")
    assert "2003 unreadable" in info.stdout and "in p1+" in info.stdout

    # Every good sector restored exactly; bad ones zero-filled.
    target = loops.file("target.img", 64 * MiB)
    proc = rescue("restore", str(tmp_path / "repo"), "failing", loops.attach(target), "--yes")
    assert proc.returncode == 0, proc.stderr
    src = bytearray(backing.read_bytes()[P1[0] : P1[0] + P1[1]])
    for start, length in bad:
        src[start - P1[0] : start - P1[0] + length] = bytes(length)
    assert target.read_bytes()[P1[0] : P1[0] + P1[1]] == bytes(src)


def test_bad_sector_policy_is_validated(tmp_path):
    proc = rescue("capture", "/dev/null", str(tmp_path / "r"), "--bad-sectors", "sometimes")
    assert proc.returncode == 2 and "skip or retry=N" in proc.stderr

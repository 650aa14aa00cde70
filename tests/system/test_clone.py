"""Clone a drive straight onto another: the same checks a user makes after a restore."""

from __future__ import annotations

import random

import pytest
from disks import MiB, partition_table, rescue, sh
from drives import build_gpt_drive, check_restored, sha_of, table
from faulty_disk import faulty_block_device

from rescue.errors import SECTORS_LOST

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def gpt(mloops):
    return build_gpt_drive(mloops)


def test_clone_same_layout(gpt, mloops):
    target = mloops.disk("same.img", 900 * MiB)
    proc = rescue("clone", gpt.device, target, "--yes", "--layout", "same")
    assert proc.returncode == 0, proc.stderr
    path = mloops.drives / "same.img"
    check_restored(mloops, gpt, path)
    assert table(path)["parts"] == table(gpt.image)["parts"]
    assert sha_of(gpt.image, 0, 440) == sha_of(path, 0, 440)


def test_clone_onto_larger_drive_grows_partitions(gpt, mloops):
    target = mloops.disk("larger.img", 1200 * MiB)
    proc = rescue("clone", gpt.device, target, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "proportional" in proc.stdout
    check_restored(mloops, gpt, mloops.drives / "larger.img")


def test_clone_refuses_source_as_target_and_mounted_target(gpt, mloops):
    proc = rescue("clone", gpt.device, gpt.device, "--yes")
    assert proc.returncode == 3 and "source" in proc.stderr and "Traceback" not in proc.stderr
    dev = mloops.disk("mounted.img", 1024 * MiB)
    sh("mkfs.ext4", "-q", dev)
    with mloops.mounted(dev):
        proc = rescue("clone", gpt.device, dev, "--yes")
        assert proc.returncode == 3 and "mounted" in proc.stderr


def test_clone_of_a_drive_with_bad_sectors(loops):
    backing = loops.file("failing.img", 32 * MiB)
    partition_table(str(backing), 'label: gpt\nstart=2048, size=61440, name="raw"\n')
    data = random.Random(3).randbytes(30 * MiB)
    with open(backing, "r+b") as f:
        f.seek(MiB)
        f.write(data)
    bad = [(5 * MiB + 512 * k * 37, 512) for k in range(50)] + [(20 * MiB, 64 * 512)]
    target = loops.file("target.img", 32 * MiB)
    with faulty_block_device(loops, backing, bad=bad) as dev:
        proc = rescue("clone", dev, loops.attach(target), "--yes", "--layout", "same")
    assert proc.returncode == SECTORS_LOST, proc.stderr  # done, but not clean
    assert "114 sectors could not be read" in proc.stdout, proc.stdout
    assert "rescue: incomplete: 114 unreadable sectors were zero-filled" in proc.stderr
    expect = bytearray(data)
    for start, length in bad:
        expect[start - MiB : start - MiB + length] = bytes(length)
    assert target.read_bytes()[MiB : 31 * MiB] == bytes(expect)

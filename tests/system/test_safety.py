"""The safety rules on real devices: each refusal names its rule, and a drive nobody uses
passes. Partitions are loop devices with an offset over a loop "disk" (no partition nodes
on loop devices here), which is exactly the stacking the rules must see through."""

from __future__ import annotations

import pytest
from disks import MiB, sh

from rescue.errors import RefusedError
from rescue.hw import devices
from rescue.hw.safety import check_source, check_target

pytestmark = pytest.mark.root


def ext4_disk(loops, name="disk.img", size=96 * MiB):
    """A disk with one ext4 "partition" from 1 MiB to the end, seen through its own loop."""
    disk = loops.disk(name, size)
    part = loops.partition(disk, 2048, size // 512 - 2048)
    sh("mkfs.ext4", "-q", part)
    return disk, part


def test_the_drive_holding_root_is_refused():
    names = devices.drive_of_path("/")
    if not names:
        pytest.skip("/ is not on a block device here")
    root_drive = f"/dev/{names[-1]}"
    with pytest.raises(RefusedError, match=r"mounted filesystem \(.* on /[,)]"):
        check_target(root_drive)


def test_an_unused_loop_disk_is_accepted(loops):
    disk = loops.disk("blank.img", 64 * MiB)
    drive = check_target(disk)
    assert drive.path == disk and drive.size == 64 * MiB


def test_mounted_loop_is_refused_naming_the_mountpoint(loops):
    dev = loops.disk("fs.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError) as err:
            check_target(dev)
        assert str(err.value) == f"target {dev} has a mounted filesystem ({dev} on {mnt})"
    check_target(dev)  # unmounted again: allowed


def test_mounted_partition_view_refuses_the_disk_below(loops):
    """What this machine has instead of sysfs holders: a loop device stacked on the disk.
    sysfs lists no holder for it; the rules follow the stack instead."""
    disk, part = ext4_disk(loops)
    assert devices.drive_info(disk).holders == []
    check_target(disk)  # an idle loop on top is not a use
    with loops.mounted(part) as mnt:
        with pytest.raises(RefusedError, match=rf"target {disk} has a mounted filesystem \({part} on {mnt}\)"):
            check_target(disk)


def test_image_file_attached_to_a_mounted_loop_is_refused(loops):
    img = loops.file("fs.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(img))
    dev = loops.attach(img)
    check_target(str(img))  # attached but not in use: a file target is fine
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError, match=rf"{img} has a mounted filesystem \({dev} on {mnt}\)"):
            check_target(str(img))


def test_swap_is_refused(loops):
    dev = loops.disk("swap.img", 64 * MiB)
    sh("mkswap", dev)
    sh("swapon", dev)
    try:
        with pytest.raises(RefusedError, match=rf"target {dev} is used as swap"):
            check_target(dev)
        with pytest.raises(RefusedError, match="used as swap"):
            check_source(dev)
    finally:
        sh("swapoff", dev)


def test_drive_holding_the_repository_is_refused(loops):
    disk, part = ext4_disk(loops, "repo.img")
    other = loops.disk("other.img", 64 * MiB)
    with loops.mounted(part) as mnt:
        repo = mnt / "images"
        repo.mkdir()
        with pytest.raises(RefusedError, match=rf"target {part} holds the repository {repo}$"):
            check_target(part, repo_path=str(repo))
        with pytest.raises(RefusedError, match=rf"target {disk} holds the repository {repo}$"):
            check_target(disk, repo_path=str(repo))
        check_target(other, repo_path=str(repo))  # a different drive may be written
        with pytest.raises(RefusedError, match="holds the repository"):
            check_source(disk, str(repo))


def test_image_file_holding_the_repository_is_refused(loops):
    """The repository lives in a filesystem inside an image file: writing that file is
    writing the repository."""
    img = loops.file("repo-in-file.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(img))
    dev = loops.attach(img)
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError, match="holds the repository"):
            check_target(str(img), repo_path=str(mnt))


def test_source_and_target_must_differ(loops):
    disk, part = ext4_disk(loops, "src.img")
    other = loops.disk("dst.img", 96 * MiB)
    with pytest.raises(RefusedError, match=rf"target {disk} is the source drive \({disk}\)"):
        check_target(disk, source=disk)
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(part, source=disk)  # a partition of the source
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(disk, source=part)
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(loops.root / "src.img", source=disk)  # the file behind the source loop
    check_target(other, source=disk)


def test_source_mounted_read_write_is_refused_read_only_is_fine(loops):
    disk, part = ext4_disk(loops, "src.img")
    with loops.mounted(part, options="ro") as mnt:
        assert check_source(disk).path == disk
        sh("mount", "-o", "remount,rw", str(mnt))
        with pytest.raises(RefusedError, match=rf"source {disk} has a mounted filesystem \({part} on {mnt}\)"):
            check_source(disk)


def test_boot_medium_is_refused(loops):
    """Simulated live medium: a partition of a loop disk mounted where the live system
    mounts its medium; the whole disk and its partition are both off limits."""
    disk, part = ext4_disk(loops, "live.img")
    other = loops.disk("target.img", 64 * MiB)
    with loops.mounted(part, options="ro") as medium:
        with pytest.raises(RefusedError, match=rf"target {disk} booted this rescue system \({disk}\)"):
            check_target(disk, live_medium=str(medium))
        with pytest.raises(RefusedError, match="booted this rescue system"):
            check_target(part, live_medium=str(medium))
        check_target(other, live_medium=str(medium))


def test_read_only_and_empty_devices_are_refused(loops):
    img = loops.file("ro.img", 64 * MiB)
    dev = loops.attach(img, readonly=True)
    with pytest.raises(RefusedError, match=rf"target {dev} is read-only"):
        check_target(dev)
    assert check_source(dev).read_only is True


def test_second_loop_over_the_same_bytes_is_seen(loops):
    """Two loop devices over one file alias the same bytes when their ranges overlap."""
    img = loops.file("shared.img", 96 * MiB)
    whole = loops.attach(img)
    first = loops.attach(img, offset=1 * MiB, size=40 * MiB)
    second = loops.attach(img, offset=50 * MiB, size=40 * MiB)
    sh("mkfs.ext4", "-q", first)
    with loops.mounted(first) as mnt:
        with pytest.raises(RefusedError, match=rf"target {whole} has a mounted filesystem \({first} on {mnt}\)"):
            check_target(whole)
        check_target(second)  # 50..90 MiB does not overlap 1..41 MiB

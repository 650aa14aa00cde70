"""Drive discovery on real loop devices and on this machine's own disk, with the udev
database empty (no udev daemon here): everything comes from sysfs and the kernel tables."""

from __future__ import annotations

import os

import pytest
from disks import MiB, sh

from rescue.errors import DeviceError
from rescue.hw import devices

pytestmark = pytest.mark.root


def by_name(drives, name):
    return next((d for d in drives if d.name == name), None)


def test_loop_over_sparse_file_is_listed_with_size_and_bus(loops):
    img = loops.file("disk.img", 64 * MiB)
    dev = loops.attach(img)
    name = os.path.basename(dev)
    drive = by_name(devices.list_drives(), name)
    assert drive is not None
    assert (drive.path, drive.size, drive.bus) == (dev, 64 * MiB, "loop")
    assert drive.backing_file == str(img)
    assert drive.model == "Loop device (disk.img)"
    assert drive.logical_sector_size == 512
    assert drive.mounts == [] and drive.holders == [] and drive.swap is False
    assert by_name(devices.list_drives(include_loop=False), name) is None


def test_detached_loop_nodes_are_not_drives(loops):
    listed = {d.name for d in devices.list_drives()}
    for name in os.listdir("/sys/block"):
        if name.startswith("loop") and not devices._read(f"/sys/block/{name}/loop/backing_file"):
            assert name not in listed
    assert not any(n.startswith(("zram", "ram", "sr", "fd")) for n in listed)


def test_drive_info_follows_symlinks_and_reads_image_files(loops, tmp_path):
    img = loops.file("disk.img", 96 * MiB)
    dev = loops.attach(img)
    link = tmp_path / "by-id-link"
    link.symlink_to(dev)
    assert devices.drive_info(str(link)).name == os.path.basename(dev)

    as_file = devices.drive_info(str(img))
    assert (as_file.bus, as_file.size, as_file.logical_sector_size) == ("file", 96 * MiB, 512)
    assert as_file.loops == [os.path.basename(dev)]  # the image file is attached


def test_drive_info_rejects_what_is_not_a_drive(tmp_path):
    with pytest.raises(DeviceError, match="does not exist"):
        devices.drive_info(str(tmp_path / "nope"))
    with pytest.raises(DeviceError, match="neither a drive nor an image file"):
        devices.drive_info(str(tmp_path))


def test_the_drive_holding_root_shows_its_mount():
    names = devices.drive_of_path("/")
    if not names:
        pytest.skip("/ is not on a block device here")
    drive = by_name(devices.list_drives(), names[-1])
    assert drive is not None and drive.size > 0
    assert any(mnt == "/" for _, mnt in drive.mounts)


def test_partitions_parted_announces_are_listed(loops):
    dev = loops.disk("parted.img", 128 * MiB)
    name = os.path.basename(dev)
    sh("parted", "-s", dev, "mklabel", "gpt", "mkpart", "a", "1MiB", "40MiB", "mkpart", "b", "40MiB", "100MiB")
    try:
        if not os.path.exists(f"/sys/block/{name}/{name}p1"):
            pytest.skip("the kernel did not take parted's partitions (BLKPG)")
        drive = devices.drive_info(dev)
        assert drive.partitions == [f"{name}p1", f"{name}p2"]
        part = devices.drive_info(f"/dev/{name}p2")
        assert (part.parent, part.size, part.bus) == (name, 60 * MiB, "loop")
    finally:
        # The kernel keeps BLKPG partitions after the loop device is detached: remove them,
        # or the next user of this loop device sees ghost partitions.
        sh("partx", "-d", dev)


def test_mounted_partition_view_counts_for_the_drive_below(loops):
    disk = loops.disk("disk.img", 128 * MiB)
    part = loops.partition(disk, 2048, 100 * 2048)  # sectors 2048.. = 1 MiB .. 101 MiB
    sh("mkfs.ext4", "-q", part)
    drive = devices.drive_info(disk)
    assert drive.loops == [os.path.basename(part)]
    assert drive.holders == []  # a loop device on top is not a sysfs holder
    assert drive.mounts == []
    with loops.mounted(part) as mnt:
        drive = devices.drive_info(disk)
        assert drive.mounts == [(part, str(mnt))]
        assert devices.boot_medium(str(mnt)) == disk  # the whole drive, not the partition view
        assert devices.drive_of_path(str(mnt))[:2] == [os.path.basename(part), os.path.basename(disk)]


def test_no_boot_medium_when_nothing_is_mounted_there(tmp_path):
    assert devices.boot_medium(str(tmp_path / "medium")) is None


def test_swap_on_a_loop_is_seen(loops):
    dev = loops.disk("swap.img", 64 * MiB)
    sh("mkswap", dev)
    sh("swapon", dev)
    try:
        assert devices.drive_info(dev).swap is True
    finally:
        sh("swapoff", dev)
    assert devices.drive_info(dev).swap is False

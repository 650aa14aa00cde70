"""GRUB for BIOS embedded after the MBR: the check restore runs after writing says whether the
core image is intact before the first partition, and what to run when it is not. Real tables
written by sfdisk on plain files (no root)."""

from __future__ import annotations

import subprocess

import pytest

from rescue.errors import DeviceError
from rescue.hw.partitions import read_layout
from rescue.imaging.postrestore import BOOT_IMG_CORE_LBA, DISKBOOT_BLOCKLIST, check_grub_gap

MiB = 1 << 20


def _drive(tmp_path, first_sector: int, core_sectors: int = 100):
    path = tmp_path / "drive.img"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        f.truncate(64 * MiB)
    subprocess.run(
        ["sfdisk", "--quiet", str(path)],
        check=True,
        input=f"label: dos\nstart={first_sector}, size=40000, type=83\n".encode(),
    )
    mbr = bytearray(open(path, "rb").read(512))
    mbr[0x180:0x185] = b"GRUB "  # boot.img's message text
    mbr[BOOT_IMG_CORE_LBA : BOOT_IMG_CORE_LBA + 8] = (1).to_bytes(8, "little")
    diskboot = bytearray(512)  # core.img's first sector: one blocklist entry, the rest of core.img
    diskboot[DISKBOOT_BLOCKLIST : DISKBOOT_BLOCKLIST + 8] = (2).to_bytes(8, "little")
    diskboot[DISKBOOT_BLOCKLIST + 8 : DISKBOOT_BLOCKLIST + 10] = core_sectors.to_bytes(2, "little")
    with open(path, "r+b") as f:
        f.write(mbr)
        f.seek(512)
        f.write(diskboot)
    return str(path)


def test_core_image_before_the_first_partition_is_reported_in_place(tmp_path):
    path = _drive(tmp_path, 2048)
    said = check_grub_gap(path, read_layout(path))
    assert "sectors 1-101" in said and "in place" in said


def test_a_first_partition_inside_the_core_image_says_what_to_run(tmp_path):
    path = _drive(tmp_path, 63)
    with pytest.raises(DeviceError, match=r"sectors 1-101\) overlaps .*grub-install"):
        check_grub_gap(path, read_layout(path))


def test_a_drive_without_grub_is_left_alone(tmp_path):
    path = tmp_path / "plain.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sfdisk", "--quiet", str(path)], check=True, input=b"label: dos\nstart=2048, type=83\n")
    assert "no GRUB" in check_grub_gap(str(path), read_layout(str(path)))

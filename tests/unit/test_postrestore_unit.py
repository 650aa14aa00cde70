"""Post-restore steps, the pure parts: id spelling, reference rewriting, the efibootmgr call,
and GRUB's BIOS sector pointers on synthetic sectors (and on GRUB's own boot.img when the
grub-pc-bin package is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescue.imaging.postrestore import (
    add_boot_entry,
    blocklist,
    efibootmgr_argv,
    esp_partitions,
    grub_bios_pointers,
    mbr_partuuid,
    patch_diskboot,
    replace_ids,
)
from rescue.model.actions import bios_boot_moved
from rescue.model.layout import DiskLayout, Partition

BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
ROOT_OLD, ROOT_NEW = "8675485d-8812-4004-ae4a-eecab150fabf", "29e53919-3035-4500-be9c-f9545a39283c"


# --- ids ------------------------------------------------------------------------------------------


def test_mbr_partuuid_is_disk_id_and_number_in_hex():
    assert mbr_partuuid("0x0001abcd", 1) == "0001abcd-01"
    assert mbr_partuuid("0xDEADBEEF", 12) == "deadbeef-0c"


def test_vfat_uuid_is_spelled_like_blkid():
    from rescue.filesystems.fat import volume_id_text

    assert volume_id_text(0x47F0C63C) == "47F0-C63C"
    assert volume_id_text(0x0000000A) == "0000-000A"


# --- rewriting references -----------------------------------------------------------------------------


def test_fstab_lines_get_new_uuids_and_partuuids_and_nothing_else_changes():
    fstab = (
        f"# / was on /dev/sda3\nUUID={ROOT_OLD} / ext4 errors=remount-ro 0 1\n"
        "UUID=47F0-C63C /boot/efi vfat umask=0077 0 1\n"
        "PARTUUID=0fbe63fc-1660-af4f-80da-153e6c6d200f /data xfs defaults 0 2\n"
        "/dev/sdb1 /mnt auto noauto 0 0\n"
    )
    mapping = {
        ROOT_OLD: ROOT_NEW,
        "47F0-C63C": "2F3B-0CA4",
        "0fbe63fc-1660-af4f-80da-153e6c6d200f": "03106115-9102-41b1-b8ab-2f868e8a577a",
    }
    text, n = replace_ids(fstab, mapping)
    assert n == 3
    assert text == (
        f"# / was on /dev/sda3\nUUID={ROOT_NEW} / ext4 errors=remount-ro 0 1\n"
        "UUID=2F3B-0CA4 /boot/efi vfat umask=0077 0 1\n"
        "PARTUUID=03106115-9102-41b1-b8ab-2f868e8a577a /data xfs defaults 0 2\n"
        "/dev/sdb1 /mnt auto noauto 0 0\n"
    )


def test_grub_cfg_bare_uuids_are_replaced_everywhere():
    cfg = (
        f"search --no-floppy --fs-uuid --set=root {ROOT_OLD}\n"
        f"  linux /vmlinuz root=UUID={ROOT_OLD} ro\n"
        f"search.fs_uuid {ROOT_OLD} root hd0,gpt3\n"
    )
    text, n = replace_ids(cfg, {ROOT_OLD: ROOT_NEW})
    assert n == 3 and ROOT_OLD not in text and text.count(ROOT_NEW) == 3


def test_an_id_written_in_upper_case_stays_upper_case():
    text, n = replace_ids(f"PARTUUID={ROOT_OLD.upper()}\n", {ROOT_OLD: ROOT_NEW})
    assert (text, n) == (f"PARTUUID={ROOT_NEW.upper()}\n", 1)


def test_a_short_id_never_matches_inside_a_longer_one():
    # A FAT id that happens to be the tail of a GUID, and an MBR PARTUUID that is a prefix
    # of another partition's: neither may be touched.
    text = "UUID=1234-ABCD-5678 x\nPARTUUID=deadbeef-011 y\nUUID=x1234-ABCD z\n"
    same, n = replace_ids(text, {"1234-ABCD": "9999-0000", "deadbeef-01": "cafebabe-01"})
    assert (same, n) == (text, 0)


def test_nothing_to_replace_gives_the_text_back_unchanged():
    assert replace_ids("proc /proc proc defaults 0 0\n", {ROOT_OLD: ROOT_NEW}) == ("proc /proc proc defaults 0 0\n", 0)


# --- ESPs and the NVRAM entry ------------------------------------------------------------------------------


def test_esp_partitions_found_by_gpt_type_or_mbr_id():
    gpt = DiskLayout(
        "gpt",
        512,
        1 << 30,
        partitions=[
            Partition(1, 2048, 4095, type_guid="21686148-6449-6E6F-744E-656564454649"),
            Partition(2, 4096, 135167, type_guid="c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            Partition(3, 135168, 200000, type_guid="0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ],
    )
    mbr = DiskLayout(
        "msdos",
        512,
        1 << 30,
        partitions=[Partition(1, 2048, 9999, mbr_type=0x83), Partition(2, 10000, 20000, mbr_type=0xEF)],
    )
    assert [p.number for p in esp_partitions(gpt)] == [2]
    assert [p.number for p in esp_partitions(mbr)] == [2]


def test_efibootmgr_argv_names_disk_partition_label_and_backslash_loader():
    assert efibootmgr_argv("/dev/sdb", 1, "debian", "shimx64.efi") == [
        "efibootmgr",
        "--create",
        "--disk",
        "/dev/sdb",
        "--part",
        "1",
        "--label",
        "debian (restored)",
        "--loader",
        "\\EFI\\debian\\shimx64.efi",
    ]
    # Not booted from the rescue system: the entry is made but the boot order stays.
    assert efibootmgr_argv("/dev/sdb", 1, "debian", "grubx64.efi", first=False)[1] == "--create-only"


def test_add_boot_entry_skips_without_uefi_firmware_and_says_why(tmp_path):
    said: list[str] = []
    assert add_boot_entry("/dev/does-not-matter", said.append, firmware_dir=str(tmp_path / "no-efi")) is None
    assert said == ["boot entry: not booted with UEFI firmware; no NVRAM entry added"]


def test_add_boot_entry_skips_a_target_that_is_not_a_block_device(tmp_path):
    said: list[str] = []
    img = tmp_path / "drive.img"
    img.write_bytes(b"")
    firmware = tmp_path / "efi"
    firmware.mkdir()
    got = add_boot_entry(str(img), said.append, firmware_dir=str(firmware))
    assert got is None
    assert len(said) == 1 and ("not a block device" in said[0] or "efibootmgr is not installed" in said[0])


# --- GRUB for BIOS ------------------------------------------------------------------------------------


def fake_boot_img(core_lba: int) -> bytes:
    mbr = bytearray(512)
    mbr[0x180:0x18E] = b"GRUB \0Geom\0Hard"
    mbr[0x5C:0x64] = core_lba.to_bytes(8, "little")
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def fake_diskboot(entries: list[tuple[int, int]]) -> bytes:
    sector = bytearray(b"\xfa" * 512)  # code bytes in front; the list grows down from 500
    at = 500
    for start, length in entries + [(0, 0)]:
        sector[at : at + 12] = start.to_bytes(8, "little") + length.to_bytes(2, "little") + b"\x00\x82"
        at -= 12
    return bytes(sector)


def test_grub_bios_pointer_read_from_boot_img():
    assert grub_bios_pointers(fake_boot_img(2048)) == 2048
    assert grub_bios_pointers(fake_boot_img(1)) == 1


def test_an_mbr_without_grub_has_no_pointer():
    windows = bytearray(512)
    windows[0x163:0x17B] = b"Invalid partition table\0"
    windows[510:512] = b"\x55\xaa"
    assert grub_bios_pointers(bytes(windows)) is None
    assert grub_bios_pointers(b"") is None


@pytest.mark.skipif(not BOOT_IMG.exists(), reason="grub-pc-bin is not installed")
def test_grubs_own_boot_img_is_recognised():
    boot = bytearray(BOOT_IMG.read_bytes())
    boot[0x5C:0x64] = (34).to_bytes(8, "little")
    assert grub_bios_pointers(bytes(boot)) == 34


def test_blocklist_read_down_from_byte_500_until_an_empty_entry():
    assert blocklist(fake_diskboot([(2049, 120)])) == [(2049, 120)]
    assert blocklist(fake_diskboot([(2049, 60), (5000, 40)])) == [(2049, 60), (5000, 40)]
    assert blocklist(fake_diskboot([])) == []


def test_patch_diskboot_moves_every_entry_by_the_core_distance_and_nothing_else():
    before = fake_diskboot([(2049, 60), (2200, 40)])
    after = patch_diskboot(before, 2048, 40)
    assert blocklist(after) == [(41, 60), (192, 40)]
    assert after[:476] == before[:476]  # the code is untouched
    assert after[508:512] == before[508:512]  # length and segment too
    assert after[496:500] == before[496:500]


def test_bios_boot_moved_compares_the_bios_boot_partition_start():
    bios = "21686148-6449-6E6F-744E-656564454649"
    image = DiskLayout(
        "gpt", 512, 1 << 30, partitions=[Partition(1, 2048, 4095, type_guid=bios), Partition(2, 4096, 9999)]
    )
    same = DiskLayout(
        "gpt", 512, 2 << 30, partitions=[Partition(1, 2048, 4095, type_guid=bios), Partition(2, 4096, 99999)]
    )
    moved = DiskLayout(
        "gpt", 512, 2 << 30, partitions=[Partition(1, 40, 2087, flags=["bios_grub"]), Partition(2, 4096, 99999)]
    )
    assert bios_boot_moved(image, same) is None
    assert bios_boot_moved(image, moved) == (2048, 40)

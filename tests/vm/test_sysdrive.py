"""The bootable test system drive: its layout is what a real install looks like, its
filesystems are clean, and it boots under SeaBIOS and OVMF to a line that says the root
filesystem's files are intact — and says otherwise when they are not."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from sysdrive import BIOS_BOOT, ESP, LINUX_FS, LINUX_SWAP, GiB, MiB, boot_and_expect, build_system_drive, layout

BOOT_TIMEOUT = 300


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr}"
    return proc.stdout


def blkid(dev: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", dev)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# -- layout (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["gpt", "msdos"])
@pytest.mark.parametrize("size", [512 * MiB, GiB, 3 * GiB + 5 * MiB])
def test_layout_is_aligned_disjoint_and_fits(table, size):
    parts = layout(size, table)
    end_limit = size // 512 - (2048 if table == "gpt" else 0)
    prev_end = 0
    for p in parts:
        assert p.start % 2048 == 0 and p.sectors % 2048 == 0
        assert p.start >= prev_end
        prev_end = p.start + p.sectors
    assert prev_end <= end_limit
    assert {p.role for p in parts} >= {"root", "esp", "swap"}


def test_layout_refuses_a_drive_too_small_for_a_system():
    with pytest.raises(ValueError, match="at least"):
        layout(128 * MiB)


# -- the built image (root: loop devices for fsck and mount) ----------------------------------


@pytest.mark.root
@pytest.mark.parametrize("table", ["gpt", "msdos"])
def test_built_drive_has_its_partitions_and_clean_filesystems(tmp_path, loops, table):
    img = tmp_path / "sys.img"
    info = build_system_drive(img, 512 * MiB, table=table)

    pt = json.loads(sh("sfdisk", "--json", str(img)))["partitiontable"]
    assert pt["label"] == ("gpt" if table == "gpt" else "dos")
    got = [(p["start"], p["size"], p["type"].upper()) for p in pt["partitions"]]
    if table == "gpt":
        assert [t for _, _, t in got] == [BIOS_BOOT, ESP, LINUX_FS, LINUX_SWAP]
        assert got[0][1] * 512 <= 2 * MiB
        assert 60 * MiB <= got[1][1] * 512 <= 100 * MiB
    else:
        assert [t for _, _, t in got] == ["83", "EF", "82"]
        assert pt["partitions"][0].get("bootable") is True
    assert [(p["start"], p["sectors"]) for p in info["partitions"]] == [(s, n) for s, n, _ in got]
    parts = {p["role"]: p for p in info["partitions"]}

    raw = img.read_bytes()[:512]
    assert raw[510:512] == b"\x55\xaa"
    boot_img = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()
    assert raw[:0x5C] == boot_img[:0x5C], "MBR does not hold GRUB's boot.img"
    core_at = int.from_bytes(raw[0x5C:0x64], "little")
    assert core_at == (parts["bios_boot"]["start"] if table == "gpt" else 1)
    with open(img, "rb") as f:
        f.seek(core_at * 512)
        diskboot = f.read(512)
    assert diskboot[:0x1F0] == Path("/usr/lib/grub/i386-pc/diskboot.img").read_bytes()[:0x1F0]
    assert int.from_bytes(diskboot[500:508], "little") == core_at + 1

    root = loops.partition(str(img), parts["root"]["start"], parts["root"]["sectors"])
    sh("e2fsck", "-fn", root)
    ids = blkid(root)
    assert (ids["TYPE"], ids["UUID"], ids["LABEL"]) == ("ext4", info["root_uuid"], info["root_label"])
    with loops.mounted(root, "ext4", "ro") as mnt:
        for rel, digest in info["files"].items():
            assert hashlib.sha256((mnt / rel).read_bytes()).hexdigest() == digest, rel
        assert {"boot/vmlinuz", "boot/initrd.img", "etc/fstab", "home/user/random.bin"} <= set(info["files"])
        assert (mnt / "boot/vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
        fstab = (mnt / "etc/fstab").read_text()
        for u in (info["root_uuid"], info["esp_uuid"], info["swap_uuid"]):
            assert f"UUID={u} " in fstab
        sums = (mnt / "etc/sysdrive/SHA256SUMS").read_text()
        assert f"{info['files']['home/user/notes.txt']}  home/user/notes.txt" in sums
        assert (mnt / "boot/grub/i386-pc/normal.mod").exists() and (mnt / "boot/grub/x86_64-efi/linux.mod").exists()

    esp = loops.partition(str(img), parts["esp"]["start"], parts["esp"]["sectors"])
    sh("fsck.fat", "-n", esp)
    ids = blkid(esp)
    assert (ids["TYPE"], ids["UUID"], ids.get("VERSION")) == ("vfat", info["esp_uuid"], "FAT32")
    sh("mcopy", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "loader.efi"))
    assert (tmp_path / "loader.efi").read_bytes()[:2] == b"MZ"

    swap = loops.partition(str(img), parts["swap"]["start"], parts["swap"]["sectors"])
    ids = blkid(swap)
    assert (ids["TYPE"], ids["UUID"]) == ("swap", info["swap_uuid"])


@pytest.mark.root
def test_same_seed_builds_the_same_filesystems_and_another_seed_does_not(tmp_path):
    a = build_system_drive(tmp_path / "a.img", 512 * MiB, seed=7)
    b = build_system_drive(tmp_path / "b.img", 512 * MiB, seed=7)
    c = build_system_drive(tmp_path / "c.img", 512 * MiB, seed=8)
    assert a["root_uuid"] == b["root_uuid"] != c["root_uuid"]
    assert a["files"] == b["files"]
    assert a["files"]["home/user/random.bin"] != c["files"]["home/user/random.bin"]


# -- booting it (vm: QEMU TCG) ----------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.parametrize("table,firmware", [("gpt", "bios"), ("gpt", "uefi"), ("msdos", "bios"), ("msdos", "uefi")])
def test_drive_boots_and_finds_its_files(tmp_path, table, firmware):
    info = build_system_drive(tmp_path / "sys.img", table=table)
    r = boot_and_expect([info["path"]], firmware, info["expect"], timeout=BOOT_TIMEOUT)
    assert r.found, f"no '{info['expect']}' ({r.reason}):\n{r.tail()}"
    assert r.exited, f"the guest did not power off after the marker:\n{r.tail()}"


@pytest.mark.vm
def test_boots_from_an_ide_disk(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * MiB)
    r = boot_and_expect([info["path"]], "bios", info["expect"], timeout=BOOT_TIMEOUT, bus="ide")
    assert r.found, f"no '{info['expect']}' ({r.reason}):\n{r.tail()}"


@pytest.mark.vm
def test_a_changed_file_on_the_root_is_reported(tmp_path, loops):
    info = build_system_drive(tmp_path / "sys.img", 512 * MiB)
    root = next(p for p in info["partitions"] if p["role"] == "root")
    dev = loops.partition(info["path"], root["start"], root["sectors"])
    with loops.mounted(dev, "ext4") as mnt:
        (mnt / "home/user/notes.txt").write_text("not what was captured\n")
    sh("losetup", "--detach", dev)  # detached before QEMU opens the image
    loops.devices.remove(dev)
    line = f"{info['marker']} root={info['root_uuid']} files="
    r = boot_and_expect([info["path"]], "bios", line, timeout=BOOT_TIMEOUT)
    assert r.found, f"no '{line}' ({r.reason}):\n{r.tail()}"
    assert f"{line}bad-files" in r.log
    assert info["expect"] not in r.log


@pytest.mark.vm
def test_a_drive_without_its_efi_loader_does_not_boot_under_uefi(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * MiB)
    esp = next(p for p in info["partitions"] if p["role"] == "esp")
    sh("mdel", "-i", f"{info['path']}@@{esp['offset']}", "::/EFI/BOOT/BOOTX64.EFI")
    r = boot_and_expect([info["path"]], "uefi", info["expect"], timeout=BOOT_TIMEOUT)
    assert not r.found
    assert r.reason == "Shell> ", r.tail()

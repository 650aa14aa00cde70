"""Post-restore steps on real drives: new ids for a copy that stays beside its source (every
UUID and GUID new, the filesystems clean, fstab and GRUB's configuration following), the
removable-media EFI loader, and GRUB's BIOS pointers after core.img moved. The vm tests boot
the results in QEMU: the copy with new ids must still find its root."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh

from rescue.imaging.postrestore import ensure_efi_fallback, grub_bios_pointers, new_ids, patch_grub_bios, replace_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
from sysdrive import boot_and_expect, build_system_drive  # noqa: E402

pytestmark = pytest.mark.root
BOOT_TIMEOUT = 300
MTOOLS = {"MTOOLS_SKIP_CHECK": "1"}


def blkid(path: str, offset: int = 0, size: int | None = None) -> dict[str, str]:
    argv = ["blkid", "-p", "-o", "export", "-O", str(offset)] + (["-S", str(size)] if size else []) + [path]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sfdisk_json(path: str | Path) -> dict:
    return json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]


def mtools(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, env={**os.environ, **MTOOLS})
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode(errors="replace")


def detach(loops, dev: str) -> None:
    sh("losetup", "--detach", dev)
    loops.devices.remove(dev)


def roles(info: dict) -> dict[str, dict]:
    return {p["role"]: p for p in info["partitions"]}


# --- the system drive: ext4 root, FAT32 ESP, swap, GPT ------------------------------------------------


@pytest.fixture
def sysdrive(tmp_path, loops):
    """A copy of the bootable system drive whose fstab also names the ESP by PARTUUID and
    whose crypttab names the swap partition by PARTUUID (as a real encrypted swap does)."""
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    parts = roles(info)
    table = sfdisk_json(info["path"])
    info["partuuids"] = {p["start"]: p["uuid"].lower() for p in table["partitions"]}
    esp_pu = info["partuuids"][parts["esp"]["start"]]
    swap_pu = info["partuuids"][parts["swap"]["start"]]
    dev = loops.partition(info["path"], parts["root"]["start"], parts["root"]["sectors"])
    with loops.mounted(dev, "ext4") as mnt:
        with open(mnt / "etc/fstab", "a") as f:
            f.write(f"PARTUUID={esp_pu} /efi-by-partuuid vfat noauto 0 0\n")
        (mnt / "etc/crypttab").write_text(f"cswap PARTUUID={swap_pu} /dev/urandom swap,cipher=aes-xts-plain64\n")
        (mnt / "etc/crypttab").chmod(0o600)
    detach(loops, dev)
    return info


def read_root(loops, info: dict, rel: str) -> str:
    root = roles(info)["root"]
    dev = loops.partition(info["path"], root["start"], root["sectors"])
    try:
        with loops.mounted(dev, "ext4", "ro") as mnt:
            return (mnt / rel).read_text()
    finally:
        detach(loops, dev)


def test_new_ids_renumber_everything_and_the_references_follow(sysdrive, loops):
    info = sysdrive
    img, parts = info["path"], roles(info)
    before = sfdisk_json(img)
    lines: list[str] = []

    mapping = new_ids(img, lines.append)

    after = sfdisk_json(img)
    assert after["id"] != before["id"]
    old_guids = {p["uuid"].lower() for p in before["partitions"]}
    new_guids = {p["uuid"].lower() for p in after["partitions"]}
    assert len(new_guids) == 4 and not new_guids & old_guids
    assert {mapping[g] for g in old_guids} == new_guids

    fs_now = {role: blkid(img, parts[role]["offset"], parts[role]["size"]) for role in ("root", "esp", "swap")}
    old = {"root": info["root_uuid"], "esp": info["esp_uuid"], "swap": info["swap_uuid"]}
    for role, ids in fs_now.items():
        assert ids["UUID"] != old[role], role
        assert mapping[old[role]] == ids["UUID"], role
    assert fs_now["root"]["LABEL"] == "sysroot" and fs_now["esp"]["LABEL"] == "ESP"
    assert len({ids["UUID"] for ids in fs_now.values()}) == 3

    for role, check in (("root", ["e2fsck", "-fn"]), ("esp", ["fsck.vfat", "-n"])):
        dev = loops.partition(img, parts[role]["start"], parts[role]["sectors"])
        sh(*check, dev)
        detach(loops, dev)

    fstab = read_root(loops, info, "etc/fstab")
    grub_cfg = read_root(loops, info, "boot/grub/grub.cfg")
    crypttab = read_root(loops, info, "etc/crypttab")
    for text in (fstab, grub_cfg, crypttab):
        for old_id in list(old.values()) + list(old_guids):
            assert old_id.lower() not in text.lower()
    assert f"UUID={fs_now['root']['UUID']} / ext4" in fstab
    assert f"UUID={fs_now['esp']['UUID']} /boot/efi vfat" in fstab
    assert f"UUID={fs_now['swap']['UUID']} none swap" in fstab
    esp_new = next(p["uuid"].lower() for p in after["partitions"] if p["start"] == parts["esp"]["start"])
    swap_new = next(p["uuid"].lower() for p in after["partitions"] if p["start"] == parts["swap"]["start"])
    assert f"PARTUUID={esp_new} /efi-by-partuuid" in fstab
    assert crypttab.startswith(f"cswap PARTUUID={swap_new} ")
    assert grub_cfg.count(fs_now["root"]["UUID"]) == 2
    assert any("etc/fstab: 4 id(s) rewritten" in ln for ln in lines), lines
    assert any("etc/crypttab: 1 id(s)" in ln for ln in lines), lines
    assert not list(Path(img).parent.glob("rescue-postrestore-*"))


def test_new_ids_on_an_mbr_drive_give_a_new_disk_id_and_partuuids(tmp_path, loops):
    info = build_system_drive(tmp_path / "mbr.img", 512 * 1024 * 1024, table="msdos")
    img, parts = info["path"], roles(info)
    old_id = int(sfdisk_json(img)["id"], 16)
    root_pu = f"{old_id:08x}-01"
    dev = loops.partition(img, parts["root"]["start"], parts["root"]["sectors"])
    with loops.mounted(dev, "ext4") as mnt:
        fstab = (mnt / "etc/fstab").read_text().replace(f"UUID={info['root_uuid']} ", f"PARTUUID={root_pu} ")
        (mnt / "etc/fstab").write_text(fstab)
    detach(loops, dev)

    mapping = new_ids(img, lambda line: None)

    new_id = int(sfdisk_json(img)["id"], 16)
    assert new_id not in (old_id, 0)
    assert mapping[root_pu] == f"{new_id:08x}-01"
    fstab = read_root(loops, info, "etc/fstab")
    assert f"PARTUUID={new_id:08x}-01 / ext4" in fstab and root_pu not in fstab
    assert blkid(img, parts["root"]["offset"], parts["root"]["size"])["UUID"] != info["root_uuid"]


# --- XFS /boot, btrfs root, NTFS, FAT16 ESP with EFI/debian/grub.cfg -------------------------------

LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B97199C7"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
# number, start sector, size in MiB, GPT type, filesystem
MIXED = [
    (1, 2048, 40, ESP, "fat16"),
    (2, 2048 + 40 * 2048, 300, LINUX, "xfs"),
    (3, 2048 + 340 * 2048, 160, LINUX, "btrfs"),
    (4, 2048 + 500 * 2048, 16, BASIC, "ntfs"),
    (5, 2048 + 516 * 2048, 8, SWAP, "swap"),
]


def test_new_ids_on_xfs_btrfs_ntfs_fat16_and_a_separate_boot(tmp_path, loops):
    img = tmp_path / "mixed.img"
    with open(img, "wb") as f:
        f.truncate(530 * MiB)
    partition_table(
        str(img), "label: gpt\n" + "".join(f"start={s}, size={m * 2048}, type={t}\n" for _, s, m, t, _ in MIXED)
    )
    devs = {n: loops.partition(str(img), s, m * 2048) for n, s, m, _, _ in MIXED}
    sh("mkfs.fat", "-F", "16", "-n", "ESP", devs[1])
    sh("mkfs.xfs", "-q", "-L", "boot", devs[2])
    sh("mkfs.btrfs", "-q", "-L", "root", devs[3])
    sh("mkntfs", "-q", "-F", "-f", "-L", "win", devs[4])
    sh("mkswap", devs[5])
    old = {n: blkid(devs[n])["UUID"] for n in devs}
    partuuid = {p["start"]: p["uuid"].lower() for p in sfdisk_json(img)["partitions"]}
    ntfs_pu = partuuid[MIXED[3][1]]

    grub = f"search --fs-uuid --set=root {old[2]}\nlinux /vmlinuz root=UUID={old[3]} rootflags=subvol=@\n"
    with loops.mounted(devs[2], "xfs") as mnt:
        (mnt / "grub").mkdir()
        (mnt / "grub/grub.cfg").write_text(grub)
    with loops.mounted(devs[3], "btrfs") as mnt:
        (mnt / "etc/default").mkdir(parents=True)
        (mnt / "etc/fstab").write_text(
            f"UUID={old[3]} / btrfs defaults 0 0\nUUID={old[2]} /boot xfs defaults 0 2\n"
            f"UUID={old[1]} /boot/efi vfat umask=0077 0 1\n"
            f"PARTUUID={ntfs_pu} /win ntfs-3g ro 0 0\nUUID={old[5]} none swap sw 0 0\n"
        )
        (mnt / "etc/default/grub").write_text(f'GRUB_CMDLINE_LINUX="resume=UUID={old[5]}"\n')
    early = tmp_path / "grub.cfg"
    early.write_text(f"search.fs_uuid {old[2]} root hd0,gpt2\nset prefix=($root)'/grub'\nconfigfile $prefix/grub.cfg\n")
    mtools("mmd", "-i", devs[1], "::/EFI", "::/EFI/debian")
    mtools("mcopy", "-i", devs[1], str(early), "::/EFI/debian/grub.cfg")
    for dev in devs.values():
        detach(loops, dev)

    said: list[str] = []
    mapping = new_ids(str(img), said.append)

    new = {n: blkid(str(img), s * 512, m * MiB)["UUID"] for n, s, m, _, _ in MIXED}
    for n in old:
        assert new[n] != old[n] and mapping[old[n]] == new[n], (n, said)
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", new[1]) and re.fullmatch(r"[0-9A-F]{16}", new[4])
    devs = {n: loops.partition(str(img), s, m * 2048) for n, s, m, _, _ in MIXED}
    sh("fsck.vfat", "-n", devs[1])
    sh("xfs_repair", "-n", devs[2])
    sh("btrfs", "check", "--readonly", devs[3])
    sh("ntfsfix", "--no-action", devs[4])
    new_ntfs_pu = next(p["uuid"].lower() for p in sfdisk_json(img)["partitions"] if p["start"] == MIXED[3][1])

    with loops.mounted(devs[3], "btrfs", f"ro,device={devs[3]}") as mnt:
        fstab = (mnt / "etc/fstab").read_text()
        default_grub = (mnt / "etc/default/grub").read_text()
    assert fstab == (
        f"UUID={new[3]} / btrfs defaults 0 0\nUUID={new[2]} /boot xfs defaults 0 2\n"
        f"UUID={new[1]} /boot/efi vfat umask=0077 0 1\n"
        f"PARTUUID={new_ntfs_pu} /win ntfs-3g ro 0 0\nUUID={new[5]} none swap sw 0 0\n"
    )
    assert default_grub == f'GRUB_CMDLINE_LINUX="resume=UUID={new[5]}"\n'
    with loops.mounted(devs[2], "xfs", "ro") as mnt:
        assert (mnt / "grub/grub.cfg").read_text() == replace_ids(grub, mapping)[0]
        assert old[2] not in (mnt / "grub/grub.cfg").read_text()
    esp_cfg = mtools("mtype", "-i", devs[1], "::/EFI/debian/grub.cfg")
    assert esp_cfg.startswith(f"search.fs_uuid {new[2]} root hd0,gpt2\n")
    assert any("EFI/debian/grub.cfg: 1 id(s)" in ln for ln in said), said


# --- the removable-media fallback --------------------------------------------------------------------


def esp_of(info: dict) -> str:
    return f"{info['path']}@@{roles(info)['esp']['offset']}"


def vendor_loader_only(info: dict, tmp_path: Path) -> Path:
    """Leave the ESP as a Debian install does on a machine with NVRAM entries: GRUB only as
    EFI/debian/grubx64.efi, no EFI/BOOT/BOOTX64.EFI. Returns a copy of the loader."""
    esp = esp_of(info)
    loader = tmp_path / "grubx64.efi"
    mtools("mcopy", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", str(loader))
    mtools("mmd", "-i", esp, "::/EFI/debian")
    mtools("mcopy", "-i", esp, str(loader), "::/EFI/debian/grubx64.efi")
    mtools("mdel", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI")
    return loader


def test_efi_fallback_copies_the_vendor_grub_and_is_idempotent(tmp_path, loops):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    esp = esp_of(info)
    vendor = vendor_loader_only(info, tmp_path)
    said: list[str] = []

    assert ensure_efi_fallback(info["path"], said.append) is True
    got = tmp_path / "got.efi"
    mtools("mcopy", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", str(got))
    assert got.read_bytes() == vendor.read_bytes()
    assert "EFI/debian/grubx64.efi copied to EFI/BOOT/BOOTX64.EFI" in said[-1]

    assert ensure_efi_fallback(info["path"], said.append) is False
    assert "already has EFI/BOOT/BOOTX64.EFI" in said[-1]
    listing = mtools("mdir", "-b", "-i", esp, "::/EFI/BOOT")
    assert listing.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
    part = roles(info)["esp"]
    dev = loops.partition(info["path"], part["start"], part["sectors"])
    sh("fsck.vfat", "-n", dev)


def test_efi_fallback_prefers_shim_and_brings_grub_and_mokmanager(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    esp = esp_of(info)
    mtools("mdel", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI")
    mtools("mrd", "-i", esp, "::/EFI/BOOT")
    files = {}
    for name in ("shimx64.efi", "grubx64.efi", "mmx64.efi", "BOOTX64.CSV"):
        files[name] = hashlib.sha256(name.encode()).digest() * 1000
        (tmp_path / name).write_bytes(files[name])
    mtools("mmd", "-i", esp, "::/EFI/ubuntu", "::/EFI/debian")
    for name in files:
        mtools("mcopy", "-i", esp, str(tmp_path / name), f"::/EFI/debian/{name}")
    mtools("mcopy", "-i", esp, str(tmp_path / "grubx64.efi"), "::/EFI/ubuntu/grubx64.efi")

    assert ensure_efi_fallback(info["path"], lambda line: None) is True

    out = tmp_path / "out"
    out.mkdir()
    for name, want in (("BOOTX64.EFI", "shimx64.efi"), ("grubx64.efi", "grubx64.efi"), ("mmx64.efi", "mmx64.efi")):
        mtools("mcopy", "-i", esp, f"::/EFI/BOOT/{name}", str(out / name))
        assert (out / name).read_bytes() == files[want], name
    names = sorted(Path(p).name.lower() for p in mtools("mdir", "-b", "-i", esp, "::/EFI/BOOT").split())
    assert names == ["bootx64.efi", "grubx64.efi", "mmx64.efi"]


def test_efi_fallback_leaves_an_esp_without_a_vendor_loader_alone(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    mtools("mdel", "-i", esp_of(info), "::/EFI/BOOT/BOOTX64.EFI")
    said: list[str] = []
    assert ensure_efi_fallback(info["path"], said.append) is False
    assert "no EFI/<vendor>/shimx64.efi or grubx64.efi" in said[-1]
    assert mtools("mdir", "-b", "-i", esp_of(info), "::/EFI/BOOT").split() == []


# --- GRUB for BIOS: core.img moved ----------------------------------------------------------------------


def move_core(info: dict, new_lba: int) -> int:
    """Move the BIOS boot partition's content `new_lba - start` sectors on (as a restore that
    placed the partition elsewhere writes it), leaving zeros where it was."""
    bios = roles(info)["bios_boot"]
    old_lba = bios["start"]
    length = 256 * 512  # core.img of this drive is far smaller
    with open(info["path"], "r+b") as f:
        f.seek(old_lba * 512)
        core = f.read(length)
        f.seek(old_lba * 512)
        f.write(bytes(length))
        f.seek(new_lba * 512)
        f.write(core)
    return old_lba


def test_patch_grub_bios_points_boot_img_and_blocklist_at_the_new_place(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    img = info["path"]
    old_lba = move_core(info, roles(info)["bios_boot"]["start"] + 512)
    new_lba = old_lba + 512
    mbr_before = Path(img).read_bytes()[:512]
    assert grub_bios_pointers(mbr_before) == old_lba

    said = patch_grub_bios(img, old_lba, new_lba)

    with open(img, "rb") as f:
        mbr = f.read(512)
        f.seek(new_lba * 512)
        first = f.read(512)
    assert grub_bios_pointers(mbr) == new_lba
    assert int.from_bytes(first[500:508], "little") == new_lba + 1
    assert mbr[:0x5C] == mbr_before[:0x5C] and mbr[0x64:] == mbr_before[0x64:]  # table and code kept
    assert str(new_lba) in said
    assert "already points" in patch_grub_bios(img, old_lba, new_lba)  # a second run changes nothing
    assert Path(img).read_bytes()[:512] == mbr


def test_patch_grub_bios_leaves_an_mbr_pointing_elsewhere_alone(tmp_path):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    before = Path(info["path"]).read_bytes()[: 4096 * 512]
    said = patch_grub_bios(info["path"], 9999, 12345)
    assert "left as is" in said
    assert Path(info["path"]).read_bytes()[: 4096 * 512] == before


# --- booting the results (QEMU, TCG) ------------------------------------------------------------------


def refresh_sums(loops, info: dict, changed: list[str]) -> None:
    """The drive checks its files at boot against SHA256SUMS. new_ids changes fstab and
    grub.cfg on purpose: after checking every other file is intact, record their new sums."""
    root = roles(info)["root"]
    dev = loops.partition(info["path"], root["start"], root["sectors"])
    with loops.mounted(dev, "ext4") as mnt:
        sums = mnt / "etc/sysdrive/SHA256SUMS"
        lines = []
        for line in sums.read_text().splitlines():
            digest, rel = line.split("  ", 1)
            now = hashlib.sha256((mnt / rel).read_bytes()).hexdigest()
            if rel in changed:
                assert now != digest, f"{rel} was expected to change"
                digest = now
            assert now == digest, f"{rel} changed"
            lines.append(f"{digest}  {rel}")
        sums.write_text("".join(ln + "\n" for ln in lines))
    detach(loops, dev)


@pytest.mark.vm
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu is not installed")
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_drive_with_new_ids_boots_and_finds_its_new_root(tmp_path, loops, firmware):
    info = build_system_drive(tmp_path / "sys.img", 512 * 1024 * 1024)
    if firmware == "bios":
        old_lba = move_core(info, roles(info)["bios_boot"]["start"] + 512)
        patch_grub_bios(info["path"], old_lba, old_lba + 512)
    else:
        # Only a vendor loader left: the fallback copy is what the firmware must find.
        vendor_loader_only(info, tmp_path)
        assert ensure_efi_fallback(info["path"], lambda line: None)
    mapping = new_ids(info["path"], lambda line: None)
    new_root = mapping[info["root_uuid"]]
    refresh_sums(loops, info, ["etc/fstab", "boot/grub/grub.cfg"])
    expect = f"{info['marker']} root={new_root} files=ok"

    r = boot_and_expect([info["path"]], firmware, expect, timeout=BOOT_TIMEOUT)

    assert r.found, f"no '{expect}' ({r.reason}):\n{r.tail()}"
    assert info["root_uuid"] not in r.log.split(info["marker"])[-1]


# --- through the CLI: restore and clone finish the drive ------------------------------------------


@pytest.mark.parametrize("how", ["restore", "clone"])
def test_restore_and_clone_with_new_ids_give_a_bootable_copy_its_own_ids(tmp_path, loops, how):
    """What a person runs: the copy gets new ids with fstab following, and the ESP that had only
    EFI/debian/grubx64.efi gains the removable-media loader, on a larger drive (proportional)."""
    info = build_system_drive(tmp_path / "sys.img", 512 * MiB)
    loader = vendor_loader_only(info, tmp_path)
    source = loops.attach(info["path"])
    target = loops.disk("target.img", 768 * MiB)
    if how == "restore":
        repo = tmp_path / "repo"
        rescue("capture", source, str(repo), "--name", "sys", check=True)
        out = rescue("restore", str(repo), "sys", target, "--new-ids", "--yes", check=True).stdout
    else:
        out = rescue("clone", source, target, "--new-ids", "--yes", check=True).stdout
    assert "short by" not in out

    written = sfdisk_json(target)
    assert written["id"] != sfdisk_json(info["path"])["id"]
    root = next(p for p in written["partitions"] if p["size"] * 512 > 300 * MiB)
    now = blkid(target, root["start"] * 512, root["size"] * 512)
    assert now["LABEL"] == "sysroot" and now["UUID"] != info["root_uuid"]
    dev = loops.partition(target, root["start"], root["size"])
    sh("e2fsck", "-fn", dev)
    with loops.mounted(dev, "ext4", "ro") as mnt:
        fstab = (mnt / "etc/fstab").read_text()
    assert f"UUID={now['UUID']} / ext4" in fstab and info["root_uuid"] not in fstab
    esp_now = next(p for p in written["partitions"] if p["type"].upper() == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    copied = tmp_path / "copied.efi"
    mtools("mcopy", "-i", f"{target}@@{esp_now['start'] * 512}", "::/EFI/BOOT/BOOTX64.EFI", str(copied))
    assert copied.read_bytes() == loader.read_bytes()


def test_a_boot_fix_that_fails_after_writing_is_a_warning_not_a_failed_restore(tmp_path, loops):
    """An ESP with EFI/debian/grubx64.efi and no room for a copy of it: the data is restored
    and checks clean, and the person is told the fallback loader could not be added."""
    drive = loops.file("full-esp.img", 64 * MiB)
    partition_table(str(drive), "label: gpt\nstart=2048, size=36MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n")
    esp = f"{drive}@@{MiB}"
    sh("mkfs.vfat", "-F", "32", "-n", "FULLESP", "--offset=2048", str(drive), str(36 * 1024))
    loader = tmp_path / "grubx64.efi"
    loader.write_bytes(os.urandom(4 * MiB))
    mtools("mmd", "-i", esp, "::/EFI")
    mtools("mmd", "-i", esp, "::/EFI/debian")
    mtools("mcopy", "-i", esp, str(loader), "::/EFI/debian/grubx64.efi")
    free = int(re.search(r"([\d ]+) bytes free", mtools("mdir", "-i", esp, "::/")).group(1).replace(" ", ""))
    filler = tmp_path / "filler.bin"
    filler.write_bytes(os.urandom(free - 512 * 1024))
    mtools("mcopy", "-i", esp, str(filler), "::/filler.bin")
    repo = tmp_path / "repo"
    rescue("capture", loops.attach(drive), str(repo), "--name", "esp", check=True)
    target = loops.disk("target.img", 64 * MiB)

    proc = rescue("restore", str(repo), "esp", target, "--yes")

    assert proc.returncode == 0, proc.stderr
    assert "WARNING: the drive is written, but this step failed (add EFI/BOOT/BOOTX64.EFI" in proc.stdout, proc.stdout
    dev = loops.partition(str(loops.drives / "target.img"), 2048, 36 * 2048)
    sh("fsck.vfat", "-n", dev)
    got = tmp_path / "back.efi"
    mtools("mcopy", "-i", f"{target}@@{MiB}", "::/EFI/debian/grubx64.efi", str(got))
    assert got.read_bytes() == loader.read_bytes()

"""The real Debian bookworm system drive (tests/vm/debian.py): GRUB where a real BIOS install
puts it, clean filesystems, and a boot in QEMU to the line that says /home, swap and the data
are there — and a different line when /home is not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from debian import MARKER, boot_and_expect, build_debian_drive, expected_line, missing_tools

pytestmark = pytest.mark.vm

SECTOR = 512


def sh(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr}{proc.stdout}"
    return proc.stdout


def sh_bytes(*argv: str | Path) -> bytes:
    proc = subprocess.run([str(a) for a in argv], capture_output=True)
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """The drive, built once per recipe (cached under build/cache/debian); a private copy."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    return build_debian_drive(tmp_path_factory.mktemp("debian") / "debian.img")


def copy_of(drive, tmp_path: Path) -> Path:
    dst = tmp_path / "disk.img"
    sh("cp", "--sparse=always", drive.path, dst)
    return dst


def test_grub_is_embedded_after_the_mbr_and_the_filesystems_are_clean(drive, loops, tmp_path):
    img = drive.path
    pt = json.loads(sh("sfdisk", "--json", img))["partitiontable"]
    assert pt["label"] == "dos" and pt["id"] == drive.disk_id
    got = [(p["start"], p["size"], p["type"], bool(p.get("bootable"))) for p in pt["partitions"]]
    assert got == [(p.start, p.sectors, p.type, p.bootable) for p in drive.partitions]
    assert [p.type for p in drive.partitions] == ["83", "82", "83"]
    assert [p.role for p in drive.partitions] == ["root", "swap", "home"]
    assert all(p.start % 2048 == 0 and p.sectors % 2048 == 0 for p in drive.partitions)
    assert drive.partitions[0].start == 2048

    root = drive.partition("root")
    root_dev = loops.partition(str(img), root.start, root.sectors)
    boot_img = sh_bytes("debugfs", "-R", "cat /usr/lib/grub/i386-pc/boot.img", root_dev)
    diskboot = sh_bytes("debugfs", "-R", "cat /usr/lib/grub/i386-pc/diskboot.img", root_dev)
    assert len(boot_img) == len(diskboot) == SECTOR

    with open(img, "rb") as f:
        head = f.read(2048 * SECTOR)
    mbr = head[:SECTOR]
    assert mbr[510:512] == b"\x55\xaa"
    # boot.img's code, as grub-install wrote it: everything but the BPB, the pointers it
    # patches (0x5a..0x67) and the disk id / partition table.
    assert mbr[:3] == boot_img[:3] and mbr[0x68:0x1B8] == boot_img[0x68:0x1B8], "MBR code is not GRUB's boot.img"
    assert b"GRUB \x00Geom\x00Hard Disk\x00Read\x00 Error" in mbr
    core_at = int.from_bytes(mbr[0x5C:0x64], "little")
    assert core_at == 1, f"boot.img loads its core image from sector {core_at}, not from the MBR gap"
    sector1 = head[SECTOR : 2 * SECTOR]
    assert sector1[:0x1F0] == diskboot[:0x1F0], "sector 1 is not GRUB's diskboot.img"
    assert int.from_bytes(sector1[0x1F4:0x1FC], "little") == 2  # the rest of core.img follows
    # The whole core image grub-install made (/boot/grub/i386-pc/core.img) is there from
    # sector 1; grub-install patched only its first sector's block list and the Reed-Solomon
    # field, and appended the Reed-Solomon codes after it.
    core = sh_bytes("debugfs", "-R", "cat /boot/grub/i386-pc/core.img", root_dev)
    assert 20 * SECTOR < len(core) < 1000 * SECTOR
    embedded = head[SECTOR : SECTOR + len(core)]
    differ = [i for i in range(len(core)) if core[i] != embedded[i]]
    assert differ and max(differ) < 0x220, f"core.img is not embedded after the MBR (differs at {differ[:10]})"
    used = [n for n in range(1, 2048) if head[n * SECTOR : (n + 1) * SECTOR].strip(b"\0")]
    assert used == list(range(1, used[-1] + 1)) and used[-1] < 2048 - 1, f"gap sectors in use: {used}"

    for part in (drive.partition("root"), drive.partition("home")):
        dev = root_dev if part.role == "root" else loops.partition(str(img), part.start, part.sectors)
        sh("e2fsck", "-fn", dev)
        assert sh("blkid", "-p", "-s", "UUID", "-o", "value", dev).strip() == part.uuid
    swap = drive.partition("swap")
    swap_dev = loops.partition(str(img), swap.start, swap.sectors)
    ids = sh("blkid", "-p", "-o", "export", swap_dev)
    assert "TYPE=swap" in ids and f"UUID={drive.swap_uuid}" in ids

    with loops.mounted(root_dev, "ext4", "ro") as mnt:
        fstab = (mnt / "etc/fstab").read_text()
        for part in drive.partitions:
            assert f"UUID={part.uuid} {part.mountpoint} " in " ".join(fstab.split()) + " ", fstab
        cfg = (mnt / "boot/grub/grub.cfg").read_text()
        assert "/dev/loop" not in cfg
        assert f"root=UUID={drive.root_uuid} " in cfg
        assert "console=tty0 console=ttyS0,115200n8" in cfg and "set timeout=1" in cfg
        assert (mnt / "boot/grub/i386-pc/core.img").exists()
        assert list((mnt / "boot").glob("vmlinuz-*")) and list((mnt / "boot").glob("initrd.img-*"))
        assert (mnt / "etc/systemd/system/multi-user.target.wants/rescue-test-marker.service").is_symlink()
        sums = (mnt / "var/lib/rescue-test/SHA256SUMS").read_text()
        assert sums.count("\n") == len(drive.files) and any(p.startswith("/home/user/") for p in drive.files)
        for path, digest in drive.files.items():
            if not path.startswith("/home/"):
                assert sh("sha256sum", mnt / path.lstrip("/")).split()[0] == digest, path


def test_boots_to_the_marker_line(drive, tmp_path):
    img = copy_of(drive, tmp_path)
    r = boot_and_expect([img], "bios", timeout=drive.boot_timeout)
    print(f"booted to {r.line!r} in {r.seconds:.0f} s")
    assert r.found, f"expected {expected_line()!r}, got {r.line!r} ({r.reason}):\n{r.tail()}"
    assert r.exited, f"the guest did not power off after the marker:\n{r.tail()}"


def test_an_unusable_home_gives_another_line(drive, tmp_path):
    img = copy_of(drive, tmp_path)
    home = drive.partition("home")
    with open(img, "r+b") as f:  # the ext4 superblock (bytes 1024..2047 of the partition)
        f.seek(home.offset + 1024)
        f.write(bytes(1024))
    r = boot_and_expect([img], "bios", timeout=drive.boot_timeout)
    print(f"booted to {r.line!r} ({r.reason}) in {r.seconds:.0f} s")
    assert expected_line() not in r.log
    assert r.line is not None and r.line.startswith(f"{MARKER} home=missing "), (
        f"no '{MARKER} home=missing' line ({r.reason}):\n{r.tail()}"
    )
    assert r.exited, f"the guest did not power off from emergency mode:\n{r.tail()}"

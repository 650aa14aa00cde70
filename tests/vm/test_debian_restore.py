"""A real Debian bookworm system drive, built from Debian's packages (tests/vm/debian.py: MBR,
GRUB for BIOS embedded after the MBR by grub-install, ext4 root holding 2.3 GiB, swap,
ext4 /home, fstab by UUID), through everything a user does with it:

- captured with `rescue capture`, restored with the CLI onto a larger and a smaller drive
  (the same size is the root tier's); each boots alone to its marker (root and /home mounted by UUID, swap on,
  every data file's checksum right), and the bytes outside partitions (GRUB's core image in
  sectors 1..) equal the source's;
- restored through the wizard on the ISO onto a smaller drive, in a guest with 1 GiB of RAM:
  the shrink of a root holding over twice the guest's RAM cannot stage the filesystem in
  memory. The result boots alone to its marker.

A clone shrinks through the same scratch space (tests/system/test_shrink_scratch.py bounds it
at 64 MiB for restore and clone alike); the wizard's clone on the ISO, onto a smaller drive
that then boots, is tests/vm/test_e2e.py's. The wizard clone of this drive took CI 10 minutes.

The drive is built once per test session and cached between runs (build/cache/debian)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from debian import MIB_SECTORS, DebianDrive, boot_and_expect, build_debian_drive, missing_tools
from disks import LoopRegistry, MiB, rescue, sh
from qemu import VM, Disk
from wizard import blank, power_off, repository_drive, restore_with_wizard

pytestmark = pytest.mark.vm

# Root holds 2.3 GiB (1.6 GiB of data files): over twice the guest's RAM, four times what a
# tmpfs there may hold. It was 3.8 GiB, until its wizard jobs took 10 minutes each of CI's 60.
ROOT_MIB, DATA_MIB = 5120, 1536 + 128
SMALLER_MIB = 5248  # the source is 5.75 GiB; root (resize2fs -P: 4.0 GiB + margin) shrinks from 5 GiB
REPO_SIZE = 6 * 1024 * MiB
BIG_JOB_TIMEOUT = 2400  # a 2.3 GiB restore under TCG: verify, write, shrink


@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    """The system drive and a repository drive (GPT, ext4 "images") holding its capture."""
    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())}")
    work = tmp_path_factory.mktemp("debian")
    drive = build_debian_drive(work / "system.img", root_mib=ROOT_MIB, data_mib=DATA_MIB)
    return work, drive, repository_drive(work / "repo.img", REPO_SIZE, drive.path, "debian")


def _repo(loops: LoopRegistry, repo_img: Path) -> Path:
    """The repository drive's filesystem, mounted read-only for a CLI restore."""
    part = loops.attach(repo_img, offset=MiB, size=REPO_SIZE - 2 * MiB, readonly=True)
    mnt = loops.root / "images"
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", "ro,noload", part, str(mnt))
    loops.mounts.append(str(mnt))
    return mnt / "rescue-images"


def _boots_with_its_files(target: Path, drive: DebianDrive) -> None:
    """What a user checks: the drive boots alone to its marker (root and /home mounted by
    UUID, swap on, the small files' checksums right, checked by the guest), and every bulk file
    on the restored root is identical (checked here: sha256 under TCG is too slow for 1.6 GiB)."""
    result = boot_and_expect([target], timeout=drive.boot_timeout)
    assert result.found, result.tail()
    root = next(p for p in drive.partitions if p.role == "root")
    parts = json.loads(sh("sfdisk", "--json", str(target)))["partitiontable"]["partitions"]
    placed = next(p for p in parts if p["node"].endswith(str(root.number)))
    reg = LoopRegistry(Path(tempfile.mkdtemp(prefix="check-", dir=target.parent)))
    try:
        dev = reg.attach(target, offset=placed["start"] * 512, size=placed["size"] * 512, readonly=True)
        fsck = subprocess.run(["e2fsck", "-fn", dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert fsck.returncode == 0, fsck.stdout[-2000:]
        with reg.mounted(dev, "ext4", "ro,noload") as mnt:
            for path, digest in drive.bulk.items():
                got = subprocess.run(
                    ["sha256sum", str(mnt) + path], stdout=subprocess.PIPE, text=True, check=True
                ).stdout.split()[0]
                assert got == digest, f"{path} differs on the restored drive"
    finally:
        reg.cleanup()
    assert len(drive.bulk) > 10


def _first_start(image: Path) -> int:
    parts = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]["partitions"]
    return min(p["start"] for p in parts) * 512


def _gap_after_mbr(image: Path) -> bytes:
    with open(image, "rb") as f:
        f.seek(512)
        return f.read(_first_start(image) - 512)


def test_the_source_has_grub_in_the_gap_after_the_mbr(debian):
    _, drive, _ = debian
    gap = _gap_after_mbr(drive.path)
    assert gap[:512] != bytes(512), "no core image at sector 1"
    assert len(gap) == MIB_SECTORS * 512 - 512


# Onto the same size is the root tier's (tests/system: every byte outside partitions, fsck,
# files); here what only a real system shows: it boots after its partitions grew or shrank.
@pytest.mark.parametrize("size", ["larger", "smaller"])
def test_cli_restore_boots(debian, loops, size):
    work, drive, repo_img = debian
    mib = {"larger": drive.size // MiB + 2048, "smaller": SMALLER_MIB}[size]
    target = loops.file(f"cli-{size}.img", mib * MiB)
    dev = loops.attach(target)
    repo = _repo(loops, repo_img)
    proc = rescue("restore", str(repo), "debian", dev, "--yes", check=True)
    print(proc.stdout, flush=True)
    assert ("grow" if size == "larger" else "shrink") in proc.stdout, proc.stdout
    log = Path(proc.stdout.rsplit("log: ", 1)[-1].strip()).read_text()
    assert "GRUB BIOS: core image after the MBR" in log and "read back equal to the source" in log, log
    verify = rescue("verify", str(repo), "debian", dev, check=True)
    assert "outside its partitions match the image" in verify.stdout
    loops.detach()  # detached before booting: nothing may linger in a loop's cache
    try:
        assert _gap_after_mbr(target) == _gap_after_mbr(drive.path), "GRUB's core image differs"
        if size == "larger":  # the smaller drive's boot is the wizard's restore and clone below
            _boots_with_its_files(target, drive)
    finally:
        target.unlink()  # 2.3 GiB each: CI's disk is shared


def test_wizard_restore_onto_a_smaller_drive_in_1_gib_of_ram_boots(iso, debian):
    work, drive, repo_img = debian
    target = blank(work / "wizard-restore.img", SMALLER_MIB * MiB)
    disks = [Disk(repo_img, "REPO0001"), Disk(target, "TARGET01")]
    with VM(work, firmware="bios", cdrom=iso, disks=disks, name="debian-restore", memory_mb=1024) as vm:
        name = restore_with_wizard(vm, image="debian", timeout=BIG_JOB_TIMEOUT)
        print(f"[e2e] restored onto {name} at {vm.elapsed:.0f}s", flush=True)
        power_off(vm)
    try:
        assert _gap_after_mbr(target) == _gap_after_mbr(drive.path), "GRUB's core image differs"
        _boots_with_its_files(target, drive)
    finally:
        target.unlink()  # 2.3 GiB each: CI's disk is shared

"""The mission, end to end, on the real ISO in QEMU (TCG):

1. build a small bootable system drive (GPT: BIOS boot, EFI, ext4 root, swap) whose boot
   prints a marker line after checking its own files;
2. capture it with `rescue capture` into a repository on a second drive;
3. boot the ISO with that drive and a blank target attached; drive the wizard over the
   serial line: Restore, the repository it found by itself, the image, the target, the plan,
   the typed drive name, the progress, Done, Power off;
4. boot the target drive alone and see the marker (root found by UUID, files intact).

Under OVMF (ISO as a USB stick, which the wizard must not offer as a target; target smaller
than the original: partitions shrink); SeaBIOS with the ISO as a CD is test_places.py's
boot. The wizard's Clone (onto a smaller drive, in 1 GiB of RAM, the result booted) is
tests/vm/test_debian_restore.py's, on a real Debian system. Each run takes a few minutes."""

from __future__ import annotations

import json
import subprocess
import tempfile

import pytest
from disks import GiB, MiB, rescue, sh
from qemu import VM, Disk, text_pattern
from sysdrive import boot_and_expect, build_system_drive, filesystem_uuids
from wizard import blank, clone_in_wizard, power_off, repository_drive, restore_with_wizard

pytestmark = pytest.mark.vm
CLONE_MIB = 704  # smaller than the restored drive: the clone shrinks its root


@pytest.fixture(scope="module")
def drives(tmp_path_factory):
    """The system drive, captured into a repository drive (GPT, one ext4 partition)."""
    work = tmp_path_factory.mktemp("e2e")
    system = work / "system.img"
    info = build_system_drive(system, size=GiB, seed=11)
    _vendor_loader_only(info)
    return work, info, repository_drive(work / "repo.img", 768 * MiB, system, "workstation")


def _vendor_loader_only(info: dict) -> None:
    """As Debian installs it on a UEFI machine: GRUB only as EFI/debian/grubx64.efi, found
    through an NVRAM entry. On another machine (a fresh OVMF here) such a drive boots only
    if the restore adds EFI/BOOT/BOOTX64.EFI."""
    esp = next(p for p in info["partitions"] if p["role"] == "esp")
    image = f"{info['path']}@@{esp['offset']}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    with tempfile.TemporaryDirectory() as tmp:
        loader = f"{tmp}/grubx64.efi"
        for argv in (
            ["mcopy", "-i", image, "::/EFI/BOOT/BOOTX64.EFI", loader],
            ["mmd", "-i", image, "::/EFI/debian"],
            ["mcopy", "-i", image, loader, "::/EFI/debian/grubx64.efi"],
            ["mdel", "-i", image, "::/EFI/BOOT/BOOTX64.EFI"],
        ):
            subprocess.run(argv, check=True, env=env)


# SeaBIOS with the ISO as a CD is tests/vm/test_places.py's boot (a wizard restore onto a
# smaller drive among much else); the larger case is test_resized_restore_boots below.
@pytest.mark.parametrize("firmware, medium, size_mib", [("uefi", "usb", 768)])
def test_restore_from_the_iso_boots_the_target(iso, drives, firmware, medium, size_mib):
    """Onto a blank drive smaller (768 MiB) than the 1 GiB original; then, in the same boot, that
    drive cloned through the wizard onto a smaller one still (the clone's shrink on the ISO)."""
    work, info, repo_img = drives
    target = blank(work / f"target-{firmware}.img", size_mib * MiB)
    clone = blank(work / f"clone-{firmware}.img", CLONE_MIB * MiB)
    disks = [Disk(repo_img, "REPO0001"), Disk(target, "TARGET01"), Disk(clone, "CLONE001")]
    kwargs = {"cdrom": iso} if medium == "cdrom" else {"usb": iso}
    with VM(work, firmware=firmware, disks=disks, name=f"iso-{firmware}", **kwargs) as vm:
        name = restore_with_wizard(vm)
        print(f"[e2e] restored onto {name} at {vm.elapsed:.0f}s", flush=True)
        vm.sendkey("enter")  # Done: [Main menu]
        vm.expect_text("Clone a drive", timeout=60)
        clone_in_wizard(vm, "TARGET01", source=name, onto="vdc")
        print(f"[e2e] cloned {name} onto vdc at {vm.elapsed:.0f}s", flush=True)
        power_off(vm)
    if firmware == "uefi":  # running on UEFI firmware, the restore added a boot entry
        assert "debian (restored)".encode("utf-16-le") in (work / f"iso-{firmware}-OVMF_VARS.fd").read_bytes()
    # Each drive alone, the restored one and its clone: it boots, finds its root by UUID and
    # its files are intact; its filesystems keep their identities (fstab and root=UUID).
    for drive in (target, clone):
        result = boot_and_expect([drive], firmware=firmware, marker=info["expect"], timeout=300)
        assert result.found, f"{drive.name}: {result.tail()}"
        found = filesystem_uuids(drive)
        assert {info["root_uuid"], info["esp_uuid"], info["swap_uuid"]} <= found, (drive.name, found)


def test_text_pattern_matches_drawn_text():
    """The serial-console matcher finds text with colour changes and cursor moves inside."""
    drawn = b"Restore:\x1b[1C\x1b[0mwhere\x1b[31m are"
    assert text_pattern("Restore: where are").search(drawn)
    assert not text_pattern("Restore: where is").search(drawn)


@pytest.fixture(scope="module")
def captured_system(drives, tmp_path_factory):
    """The same system drive captured into a plain directory repository."""
    work, info, _ = drives
    repo = tmp_path_factory.mktemp("e2e-repo") / "repo"
    rescue("capture", str(work / "system.img"), str(repo), "--name", "system", check=True)
    return repo, info


def test_an_exported_larger_disk_boots(captured_system, loops):
    """`rescue export` (issue 17) to a qcow2 disk twice the size (the same plan as a restore onto
    a larger drive: partitions grown proportionally) boots as QEMU's drive file under SeaBIOS,
    and its root still checks its own files. Shrinking under UEFI boots in the wizard's restore
    above (onto 768 MiB); tests/vm/test_clonezilla_boot.py grows a Clonezilla image under UEFI."""
    repo, info = captured_system
    firmware, size_mib = "bios", 2048
    disk = loops.root / f"resized-{size_mib}.qcow2"
    proc = rescue("export", str(repo), "system", str(disk), "--size", f"{size_mib}M", "--layout", "proportional")
    assert proc.returncode == 0, proc.stderr
    assert "grow" in proc.stdout, proc.stdout
    found = json.loads(sh("qemu-img", "info", "--output=json", str(disk)))
    assert (found["format"], found["virtual-size"]) == ("qcow2", size_mib * MiB), found
    sh("qemu-img", "check", str(disk))
    result = boot_and_expect([disk], firmware=firmware, marker=info["expect"], timeout=300)
    assert result.found, result.tail()

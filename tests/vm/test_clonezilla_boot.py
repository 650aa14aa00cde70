"""A Clonezilla user's image of a system drive, restored by rescue, boots (issue 17).

The QEMU tests' system drive (GPT: BIOS boot, EFI system partition, ext4 root, swap; a marker
line once its root has checked its own files) is saved by Debian's real `ocs-sr savedisk`
(tests/clonezilla_images.save_drive: zstd, partclone), then `rescue restore CZDIR NAME DISK`
writes it straight from the Clonezilla directory onto a larger blank drive (partitions grown,
every partclone checksum checked first). The drive boots alone under OVMF and keeps its
filesystems' identities."""

from __future__ import annotations

import pytest
from clonezilla_images import save_drive
from disks import MiB, rescue
from sysdrive import boot_and_expect, build_system_drive, filesystem_uuids

pytestmark = pytest.mark.vm

NAME = "2026-12-07-sysdrive-img"


def test_a_clonezilla_image_of_the_system_drive_restores_and_boots(tmp_path, loops):
    system = tmp_path / "system.img"
    info = build_system_drive(system, size=512 * MiB, seed=31)
    print("[clonezilla] ocs-sr savedisk of the system drive", flush=True)
    save_drive(loops, system, NAME, tmp_path, ("-z9p", "-i", "0"), [1, 2, 3])  # swap (4) is not saved
    loops.detach()
    target = loops.file("cz-target.img", 768 * MiB)
    proc = rescue("restore", str(tmp_path / NAME), NAME, loops.attach(target), "--yes", "--layout", "proportional")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "grow" in proc.stdout and "restored" in proc.stdout, proc.stdout
    loops.detach()  # detached before booting: no writes may linger in a loop's cache
    result = boot_and_expect([target], firmware="uefi", marker=info["expect"], timeout=300)
    assert result.found, result.tail()
    found = filesystem_uuids(target)
    assert {info["root_uuid"], info["esp_uuid"], info["swap_uuid"]} <= found, found

"""Two machines of a fleet, unattended, at the same time: each netboots the rescue system by
PXE from `make pxe`'s output (scripts/make-pxe): one with SeaBIOS through pxelinux, one with
OVMF through GRUB's netboot image, both from QEMU's own TFTP server, the root filesystem
fetched over HTTP from nginx on the host's 127.0.0.1 (10.0.2.2 inside QEMU's user network).
Each restores the newest `lab-` image from that web server onto its one internal drive, as
the kernel parameters say, reports `RESCUE-RESULT status=ok` on its serial line and powers
off. Then the SeaBIOS machine netboots again, as a lab machine whose network comes first does:
its drive already holds the image (the repository is a read-only web server, so no marker can
tell), and it says `status=skipped` instead of restoring in a loop. Each restored drive boots
alone, under the firmware of the machine it was restored on.

The rest of the fleet's behaviour (rules matching zero or two drives, no confirmation, a
damaged chunk, the done-marker, capture) is tested on loop devices by
tests/system/test_fleet.py, through the same `rescue unattended` the ISO's console runs here."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from disks import MiB, rescue
from qemu import VM, Disk
from servers import web
from sysdrive import BootResult, boot_and_expect, build_system_drive
from wizard import blank

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
HOST = "10.0.2.2"  # the host's 127.0.0.1, from inside QEMU's user network
RESULT = re.compile(rb"RESCUE-RESULT status=(\w+)[^\r\n]*(?=\r?\n)")  # the whole line: it may arrive in pieces
NETBOOT_TIMEOUT = 1800  # PXE, the squashfs over HTTP, the boot, DHCP and the restore, two at once under TCG
BOOT_FILES = {"bios": "pxelinux.0", "uefi": "grub/x86_64-efi/core.efi"}


@dataclass
class Machine:
    firmware: str
    target: Path
    uuid: str
    times: dict[str, float] = field(default_factory=dict)
    line: str = ""
    error: Exception | None = None


def netboot(m: Machine, pxe: Path, work: Path) -> None:
    """Power on, wait for the job and its result line, then for the power-off it asked for."""
    try:
        start = time.monotonic()
        with VM(
            work,
            firmware=m.firmware,
            disks=[Disk(m.target, "TARGET01")],
            netboot=(pxe, BOOT_FILES[m.firmware]),
            memory_mb=1536,
            name=f"pxe-{m.firmware}",
            uuid=m.uuid,
        ) as vm:
            vm.expect_text("rescue unattended restore", timeout=NETBOOT_TIMEOUT)
            m.times["job started"] = time.monotonic() - start
            found = vm.expect(RESULT, timeout=NETBOOT_TIMEOUT, what="the result line")
            m.times["result"] = time.monotonic() - start
            m.line = found.group(0).decode(errors="replace")
            vm.wait_shutdown(timeout=300)  # rescue.after=poweroff (rescue.on_fail too)
    except Exception as e:  # noqa: BLE001 (raised again by the test, after both machines ended)
        m.error = e


def test_two_machines_netboot_restore_unattended_and_boot(iso, tmp_path):
    system = tmp_path / "system.img"
    info = build_system_drive(system, size=512 * MiB, seed=23)
    (tmp_path / "web").mkdir()
    server = web.start_nginx(root=tmp_path / "web")
    try:
        repo = server.www / web.REPO
        for name in ("lab-old", "lab-new"):
            rescue("capture", str(system), str(repo), "--name", name, check=True)
        base = f"http://{HOST}:{server.port}"
        params = (
            f"rescue.mode=restore rescue.repo={base}/{web.REPO} rescue.image=latest:lab- "
            "rescue.target=internal rescue.confirm=destroy rescue.after=poweroff rescue.on_fail=poweroff"
        )
        pxe = server.www / "pxe"
        print("[fleet] make-pxe from the ISO", flush=True)
        subprocess.run([str(ROOT / "scripts" / "make-pxe"), str(iso), str(pxe), f"{base}/pxe", params], check=True)

        machines = [
            Machine("bios", blank(tmp_path / "target-bios.img", 640 * MiB), "5a1e0000-0000-4000-8000-000000000001"),
            Machine("uefi", blank(tmp_path / "target-uefi.img", 640 * MiB), "5a1e0000-0000-4000-8000-000000000002"),
        ]
        print("[fleet] netbooting two machines at once (SeaBIOS + pxelinux, OVMF + GRUB)", flush=True)
        threads = [threading.Thread(target=netboot, args=(m, pxe, tmp_path)) for m in machines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for m in machines:
            print(f"[fleet] {m.firmware}: {m.times} {m.line}", flush=True)
            if m.error is not None:
                raise m.error
            assert "status=ok image=lab-new target=/dev/vda" in m.line, m.line
        served = [r.uri for r in server.requests()]
        assert served.count("/pxe/filesystem.squashfs") == 2, sorted(set(served))[:20]
        # The SeaBIOS machine netboots again (its network comes first): its drive holds the
        # image, so it is skipped, not restored in a loop; meanwhile the OVMF drive boots alone.
        bios, uefi = machines
        again = Machine("bios", bios.target, bios.uuid)
        booted: dict[str, BootResult] = {}

        def boot(m: Machine) -> None:
            booted[m.firmware] = boot_and_expect([m.target], firmware=m.firmware, marker=info["expect"], timeout=300)

        threads = [
            threading.Thread(target=netboot, args=(again, pxe, tmp_path / "again")),
            threading.Thread(target=boot, args=(uefi,)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"[fleet] bios again: {again.times} {again.line}", flush=True)
        if again.error is not None:
            raise again.error
        assert "status=skipped image=lab-new target=/dev/vda" in again.line, again.line
    finally:
        server.stop()
    boot(bios)
    for firmware, result in booted.items():
        assert result.found, f"{firmware}: {result.tail()}"

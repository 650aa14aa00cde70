"""Two machines of a fleet, unattended, at the same time: each netboots the rescue system by
PXE from `make pxe`'s output (scripts/make-pxe): one with SeaBIOS through pxelinux, one with
OVMF enforcing Secure Boot (Microsoft's keys enrolled) through Debian's signed chain, shim,
GRUB's signed netboot image and the signed kernel, both from QEMU's own TFTP server, the root
filesystem fetched over HTTP from nginx on the host's 127.0.0.1 (10.0.2.2 inside QEMU's user
network). Each restores the newest `lab-` image from that web server onto its one internal
drive, as the kernel parameters say, reports `RESCUE-RESULT status=ok` on its serial line and
powers off. The Secure Boot machine's kernel says it is locked down by Secure Boot, nothing
the job does is refused by the lockdown, and the job makes the restored drive's loader the
next boot (efibootmgr, BootNext). Then the SeaBIOS machine netboots again, as a lab machine
whose network comes first does: its drive already holds the image (the repository is a
read-only web server, so no marker can tell), and it says `status=skipped` instead of
restoring in a loop. Each restored drive boots alone, under the firmware of the machine it was
restored on (the OVMF one without Secure Boot: the test drive's GRUB is not signed).

The rest of the fleet's behaviour (rules matching zero or two drives, no confirmation, a
damaged chunk, the done-marker, capture) is tested on loop devices by
tests/system/test_fleet.py, through the same `rescue unattended` the ISO's console runs here."""

from __future__ import annotations

import re
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from disks import MiB, rescue
from qemu import VM, Disk, text_pattern
from servers import web
from sysdrive import BootResult, boot_and_expect, build_system_drive
from wizard import blank

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
HOST = "10.0.2.2"  # the host's 127.0.0.1, from inside QEMU's user network
# The whole line (it may arrive in pieces), ended as the console mirror ends it: \r\r\n
RESULT = re.compile(rb"RESCUE-RESULT status=(\w+)[^\r\n]*(?=\r*\n)")
NETBOOT_TIMEOUT = 1800  # PXE, the squashfs over HTTP, the boot, DHCP and the restore, two at once under TCG
BOOT_FILES = {"bios": "pxelinux.0", "uefi": "shimx64.efi"}
# The kernel's notice (loglevel=6 below shows notices through `quiet`), and the one it gives
# for anything the lockdown refuses
LOCKED_DOWN = re.compile(rb"Kernel is locked down from EFI Secure Boot[^\r\n]*")
REFUSED = re.compile(rb"Lockdown: [^\r\n]*")
JOB = "rescue unattended restore"  # the job's first line
VARIABLE = struct.Struct("<HBBIQ16sIII16s")  # EDK2's AUTHENTICATED_VARIABLE_HEADER


@dataclass
class Machine:
    firmware: str
    target: Path
    uuid: str
    secure_boot: bool = False
    times: dict[str, float] = field(default_factory=dict)
    line: str = ""
    serial: bytes = b""  # all it said
    nvram: Path | None = None  # its UEFI variable store
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
            secure_boot=m.secure_boot,
        ) as vm:
            if m.secure_boot:
                vm.expect(LOCKED_DOWN, timeout=NETBOOT_TIMEOUT, what="the kernel locked down by Secure Boot")
                m.times["kernel"] = time.monotonic() - start
            vm.expect_text(JOB, timeout=NETBOOT_TIMEOUT)
            m.times["job started"] = time.monotonic() - start
            found = vm.expect(RESULT, timeout=NETBOOT_TIMEOUT, what="the result line")
            m.times["result"] = time.monotonic() - start
            m.line = found.group(0).decode(errors="replace")
            vm.wait_shutdown(timeout=300)  # rescue.after=poweroff (rescue.on_fail too)
            m.serial = vm.log_path.read_bytes()
            m.nvram = work / f"{vm.name}-OVMF_VARS.fd"  # where VM keeps the machine's copy
    except Exception as e:  # noqa: BLE001 (raised again by the test, after both machines ended)
        m.error = e


def test_two_machines_netboot_restore_unattended_and_boot(iso, tmp_path):
    system = tmp_path / "system.img"
    info = build_system_drive(system, size=512 * MiB, seed=23)
    _debian_loader_too(info)
    (tmp_path / "web").mkdir()
    server = web.start_nginx(root=tmp_path / "web")
    try:
        repo = server.www / web.REPO
        for name in ("lab-old", "lab-new"):
            rescue("capture", str(system), str(repo), "--name", name, check=True)
            # An image's time is kept to the second: the second capture, which stores nothing
            # new, must not share lab-old's second, or "newest" is a tie (broken by name)
            time.sleep(1.1)
        base = f"http://{HOST}:{server.port}"
        params = (
            f"rescue.mode=restore rescue.repo={base}/{web.REPO} rescue.image=latest:lab- "
            "rescue.target=internal rescue.confirm=destroy rescue.after=poweroff rescue.on_fail=poweroff "
            "loglevel=6"  # the kernel's notices on the serial line: the lockdown's among them
        )
        pxe = server.www / "pxe"
        print("[fleet] make-pxe from the ISO", flush=True)
        subprocess.run([str(ROOT / "scripts" / "make-pxe"), str(iso), str(pxe), f"{base}/pxe", params], check=True)

        machines = [
            Machine("bios", blank(tmp_path / "target-bios.img", 640 * MiB), "5a1e0000-0000-4000-8000-000000000001"),
            Machine(
                "uefi",
                blank(tmp_path / "target-uefi.img", 640 * MiB),
                "5a1e0000-0000-4000-8000-000000000002",
                secure_boot=True,
            ),
        ]
        print("[fleet] netbooting two machines at once (SeaBIOS + pxelinux, OVMF Secure Boot + shim)", flush=True)
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
        bios, uefi = machines
        assert not LOCKED_DOWN.search(bios.serial)  # the line tells Secure Boot apart
        # Nothing the job did was refused (the kernel's own resume check at boot is, and says so)
        started = text_pattern(JOB).search(uefi.serial)
        assert started and not REFUSED.findall(uefi.serial, started.start()), REFUSED.findall(uefi.serial)
        assert uefi.nvram is not None
        variables = nvram(uefi.nvram)  # what the firmware reads at the next power-on
        assert "BootNext" in variables, sorted(variables)
        entry = variables["Boot{:04X}".format(*struct.unpack("<H", variables["BootNext"]))]
        # EFI_LOAD_OPTION: attributes (4), device path length (2), the description in UTF-16
        # up to its NUL, then the binary device path (not text: decode only the description)
        end = next(i for i in range(6, len(entry) - 1, 2) if entry[i : i + 2] == b"\0\0")
        assert entry[6:end].decode("utf-16-le") == "debian (restored)", entry
        served = [r.uri for r in server.requests()]
        assert served.count("/pxe/filesystem.squashfs") == 2, sorted(set(served))[:20]
        # The SeaBIOS machine netboots again (its network comes first): its drive holds the
        # image, so it is skipped, not restored in a loop; meanwhile the OVMF drive boots alone.
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


def _debian_loader_too(info: dict) -> None:
    """GRUB also as EFI/debian/grubx64.efi, as Debian installs it: a restore on UEFI then adds
    its NVRAM entry and makes it BootNext (efibootmgr), which the Secure Boot machine's
    lockdown must let through. EFI/BOOT/BOOTX64.EFI stays: the drive boots on a fresh OVMF."""
    esp = next(p for p in info["partitions"] if p["role"] == "esp")
    image = f"{info['path']}@@{esp['offset']}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(["mmd", "-i", image, "::/EFI/debian"], check=True, env=env)
    subprocess.run(["mcopy", "-i", image, "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/debian/grubx64.efi"], check=True, env=env)


def nvram(path: Path) -> dict[str, bytes]:
    """The variables an OVMF variable store holds (name: data), the deleted ones left out: what
    efibootmgr left for the firmware, read after the machine powered off."""
    data = path.read_bytes()
    at = data.find(b"\xaa\x55")  # the first variable's StartId
    while at % 4:
        at = data.find(b"\xaa\x55", at + 1)
    found = {}
    while at + VARIABLE.size <= len(data):
        start, state, *_, name_size, data_size, _guid = VARIABLE.unpack_from(data, at)
        if start != 0x55AA:
            break
        name_at = at + VARIABLE.size
        if state == 0x3F:  # VAR_ADDED
            name = data[name_at : name_at + name_size].decode("utf-16-le").rstrip("\0")
            found[name] = data[name_at + name_size : name_at + name_size + data_size]
        at = (name_at + name_size + data_size + 3) & ~3  # headers are 4-byte aligned
    return found

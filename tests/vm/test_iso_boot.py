"""The rescue ISO boots in QEMU, from a CD and from a USB stick, under BIOS and under UEFI, and
brings up its menu and then the wizard on the serial console. One of the boots has a network
card on QEMU's user network: the rescue system takes an address by DHCP by itself, in the time
it takes to reach the wizard, and has what mounting a repository on a share needs.

Slow (each boot 1.5-3 minutes under TCG, plus `make iso` when the ISO is older than its
sources). RESCUE_ISO=path tests a given ISO instead of building one.
"""

from __future__ import annotations

import re

import pytest
from qemu import BOOT_TIMEOUT, VM

pytestmark = pytest.mark.vm

WIZARD_TITLE = "rescue - disk imaging"
MENU_ENTRY = "Start rescue"
SHELL_PROMPT = re.compile(rb"root@[\w.-]+:[^\r\n]*# ")
MENU_TIMEOUT = 180
TOOLS = (
    "rescue",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.fat",
    "mcopy",
    "ntfs-3g",
    "ntfsclone",
    "parted",
    "sfdisk",
    "sgdisk",
    "zstd",
    "efibootmgr",
    "grub-install",
    "partx",
    "losetup",
    "less",
    # repositories on shares and foreign filesystems (issue 13)
    "ip",
    "mount.cifs",
    "mount.nfs",
    "mount.nfs4",
    "mkfs.exfat",
    "fsck.exfat",
)
# Filesystems and wired network drivers the kernel must have (as modules): shares, the
# filesystems of sticks and Windows drives, and the common NICs. (Bookworm's kernel has no
# ntfs3: NTFS is ntfs-3g, through FUSE.)
MODULES = (
    "cifs",
    "nfs",
    "nfsv3",
    "nfsv4",
    "exfat",
    "vfat",
    "virtio_net",
    "e1000",
    "e1000e",
    "r8169",
    "igb",
    "tg3",
)
# What QEMU's user network hands out by DHCP (address, DNS server).
GUEST_ADDRESS = "10.0.2.15"
QEMU_DNS = "10.0.2.3"


def test_iso_is_hybrid_and_small(iso):
    """One file serves as CD and as USB stick: an MBR partition table after the ISO boot
    area, with an EFI system partition for UEFI. The size target is 350 MB."""
    with open(iso, "rb") as f:
        head = f.read(512)
        f.seek(0x8001)
        iso_magic = f.read(5)
    assert iso_magic == b"CD001"
    assert head[510:512] == b"\x55\xaa", "no MBR: the ISO would not boot from a USB stick"
    part_types = {head[446 + 16 * i + 4] for i in range(4)}
    assert 0xEF in part_types, f"no EFI system partition in the MBR (types {part_types})"
    assert iso.stat().st_size <= 350 * 1024 * 1024


# SeaBIOS with the ISO as a CD, isolinux's serial entry and the wizard on ttyS0: the boot of
# tests/vm/test_places.py, which then works in that wizard.


def test_uefi_usb_default_entry_wizard_on_screen_then_serial(iso, tmp_path):
    """OVMF, ISO as a USB stick: GRUB draws its menu on the serial line and boots the default
    entry by itself. The wizard then runs on the screen (tty1); the serial line says so and
    offers a shell (tty2 has one too); once tty1 gives the wizard up, the serial line takes it.

    With a network card: by the time the wizard is up the card has its DHCP address
    (networkd, in the background: nothing in the boot waits for the network), the main menu's
    network summary names it, and the tools and kernel modules for shares are there."""
    with VM(tmp_path, firmware="uefi", usb=iso, name="uefi-usb", network=True) as vm:
        vm.expect_text(MENU_ENTRY, timeout=MENU_TIMEOUT)
        vm.expect_text("the wizard is running on tty1", timeout=BOOT_TIMEOUT)
        print(f"UEFI USB: console launcher on serial {vm.elapsed:.0f}s after power-on", flush=True)
        vm.sendkey("enter")
        vm.expect(SHELL_PROMPT, timeout=60, what="root shell prompt")
        # The network starts after the consoles (nothing in the boot waits for it): the
        # address comes within a minute of the wizard, and the summary names it.
        vm.sendline(
            "for i in $(seq 90); do s=$(python3 -c 'from rescue.hw.network import summary; print(summary())');"
            ' case "$s" in "network: 10."*) break;; esac; sleep 1; done; echo "summ""ary: $s"'
        )
        found = vm.expect(rb"summary: ([^\r\n]*)\r", timeout=180, what="the network summary")
        summary = found.group(1).decode()
        print(f"UEFI USB: {summary!r}", flush=True)
        assert summary.startswith(f"network: {GUEST_ADDRESS} ("), summary
        # When the lease came and when the wizard started (seconds since the kernel started).
        vm.sendline(
            "echo lease $(journalctl -b -o short-monotonic -u systemd-networkd | grep -m 1 'DHCPv4 address' "
            "| sed 's/^.\\([ 0-9.]*\\).*/\\1/') wizard $(systemctl show getty@tty1 "
            '-p ExecMainStartTimestampMonotonic --value) at"".'
        )
        found = vm.expect(rb"lease +([0-9.]+) wizard ([0-9]+) at\.", timeout=30, what="lease and wizard times")
        lease, wizard = float(found.group(1)), int(found.group(2)) / 1e6
        print(f"UEFI USB: DHCP lease {lease:.1f}s, wizard started {wizard:.1f}s after the kernel", flush=True)
        assert lease > wizard, "the boot waited for DHCP before the wizard"
        # Nothing waited for the network, and the DHCP client that would have is gone; names
        # go through resolved, which has the DNS server from the lease.
        vm.sendline(
            "echo online=$(systemctl is-active network-online.target) ifup=$(command -v ifup || echo none)"
            ' resolv=$(readlink /etc/resolv.conf) dns=$(resolvectl dns | grep -c 10.0.2.3) end"".'
        )
        found = vm.expect(rb"online=(\S+) ifup=(\S+) resolv=(\S+) dns=(\d+) end\.", timeout=30, what="network setup")
        assert found.group(1) == b"inactive", "something pulled network-online.target into the boot"
        assert found.group(2) == b"none", "ifupdown is on the ISO (its ifup@ units make the boot wait for DHCP)"
        assert found.group(3) == b"../run/systemd/resolve/stub-resolv.conf", found.group(3)
        assert found.group(4) != b"0", f"resolved does not have {QEMU_DNS}, QEMU's DNS server from the lease"
        vm.sendline(f'modprobe -a {" ".join(MODULES)} && echo modules" loaded"')
        vm.expect_text("modules loaded", timeout=60)
        vm.sendline(
            "for f in cifs nfs nfs4 exfat vfat; do grep -qw $f /proc/filesystems || echo nofs: $f; done;"
            " echo filesystems' checked'"
        )
        found = vm.expect(rb"((?:nofs: \S+\s+)*)filesystems checked", timeout=30)
        assert found.group(1).split() == [], found.group(1).decode()
        # What the wizard and a technician need is on the system ("+" keeps the markers out
        # of the echoed command line).
        vm.sendline(
            'python3 -c \'import parted, pyudev, urwid, zstandard, llfuse, rescue.cli; print("imports" + " ok")\''
        )
        vm.expect_text("imports ok", timeout=60)
        vm.sendline(
            f'for t in {" ".join(TOOLS)}; do command -v $t >/dev/null || echo missing: $t; done; echo tools" checked"'
        )
        found = vm.expect(rb"((?:missing: \S+\s+)*)tools checked", timeout=30)
        assert found.group(1).split() == [], found.group(1).decode()
        vm.sendline("ps -t tty2 -o comm= | tr '\\n' ' '; echo '<- tty2'")
        vm.expect(rb"\sbash *<- tty2", timeout=30, what="a root shell on tty2")
        vm.sendline("cat /run/rescue-wizard.tty; systemctl stop getty@tty1.service; exit")
        vm.expect(rb"\rtty1\r*\n", timeout=30, what="tty1 holds the wizard lock")
        vm.expect_text(WIZARD_TITLE, timeout=120)
        print(f"UEFI USB: wizard on serial {vm.elapsed:.0f}s after power-on", flush=True)


@pytest.mark.parametrize("firmware, medium", [("bios", "usb"), ("uefi", "cdrom")])
def test_the_other_firmware_and_medium_pairs_boot_to_the_wizard(iso, tmp_path, firmware, medium):
    """The same file as a USB stick under BIOS (isolinux through the hybrid MBR) and as a CD
    under UEFI (GRUB from the El Torito EFI image)."""
    with VM(tmp_path, firmware=firmware, name=f"{firmware}-{medium}", **{medium: iso}) as vm:
        vm.boot_rescue_on_serial(timeout=MENU_TIMEOUT)
        vm.expect_text(WIZARD_TITLE, timeout=BOOT_TIMEOUT)
        print(f"{firmware} {medium}: wizard on serial {vm.elapsed:.0f}s after power-on", flush=True)

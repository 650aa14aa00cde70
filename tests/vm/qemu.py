"""Boot a machine in QEMU and talk to it over its serial console, for the tests that run the
rescue ISO. Software emulation only (TCG): KVM hangs on the development machines.

    with VM(tmp_path, firmware="uefi", usb=iso, disks=[Disk(target, "target0")]) as vm:
        vm.boot_rescue_on_serial()        # the menu's entry for a wizard on ttyS0
        vm.expect_text("rescue - disk imaging", timeout=BOOT_TIMEOUT)
        vm.sendkey("down", "enter")

The serial line is QEMU's stdio on a pexpect pty; everything it prints is logged to
`<workdir>/<name>-serial.log`, and each wait is announced on stdout (pytest -s shows it).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect

BOOT_TIMEOUT = 300  # seconds from power-on to the live system's console under TCG
SERIAL_ENTRY = "Start rescue, wizard on the serial line"  # the ISO's boot menu entry
SILENT_BOOT = 360  # from the menu to the kernel's first line: 45-75 s under TCG, 215 s on a loaded machine
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot enforced: OVMF built with it (it needs SMM), and a variable store with Microsoft's
# keys enrolled, as on machines sold with Windows (they let shim-signed start)
OVMF_SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_SECBOOT_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")

# What the keys send on a serial terminal (VT100/xterm sequences).
KEYS = {
    "up": "\x1b[A",
    "down": "\x1b[B",
    "right": "\x1b[C",
    "left": "\x1b[D",
    "home": "\x1b[H",
    "end": "\x1b[F",
    "pgup": "\x1b[5~",
    "pgdn": "\x1b[6~",
    "enter": "\r",
    "esc": "\x1b",
    "tab": "\t",
    "backspace": "\x7f",
    "space": " ",
}

# Terminal control sequences that may sit between the characters of text drawn on screen.
_CONTROL = r"(?:\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78DEHM]|[\x00-\x08\x0e-\x1a\x1c-\x1f])*"


def text_pattern(text: str) -> re.Pattern[bytes]:
    """A pattern for `text` as a terminal draws it: colour changes, cursor moves and charset
    switches may come between any two characters, and a space may be drawn as a cursor move."""
    parts = []
    for ch in text:
        if ch == " ":
            parts.append(rb"(?: |\x1b\[[0-9;]*[CGHf])+")
        else:
            parts.append(re.escape(ch.encode()))
    return re.compile(_CONTROL.encode().join(parts))


# A quiet boot's first words on the serial line: a kernel message (its timestamp) or the wizard.
# The wizard is only looked ahead at: the caller still waits for its title.
FIRST_WORDS = re.compile(rb"\[ *\d+\.\d{6}\] |(?=" + text_pattern("rescue - disk imaging").pattern + rb")")


@dataclass(frozen=True)
class Disk:
    """A raw image attached as a virtio disk; the serial number is how the guest (and the
    test) tell the disks apart: /dev/disk/by-id/virtio-<serial>."""

    path: Path
    serial: str
    readonly: bool = False


class VMError(AssertionError):
    """The machine did not do what the test waited for (the message ends with its last
    serial output)."""


class VM:
    """One QEMU machine (TCG, no display) with its serial console on a pty.

    firmware: "bios" (SeaBIOS) or "uefi" (OVMF with a private copy of the variable store).
    cdrom: an ISO attached as a CD; usb: an image attached as a USB stick (writes are
    discarded); disks: virtio disks. boot: "cdrom", "usb" or a disk serial to boot from
    first (default: the CD, else the stick). network: a virtio card on QEMU's user network
    (DHCP gives 10.0.2.15; 10.0.2.2 reaches the host's 127.0.0.1), else no card at all.
    netboot: (TFTP root, boot file): that card boots first, by PXE from QEMU's TFTP server.
    uuid: the machine's DMI UUID (-uuid).
    secure_boot: (uefi only) OVMF enforcing Secure Boot with Microsoft's keys enrolled.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        firmware: str = "bios",
        cdrom: Path | None = None,
        usb: Path | None = None,
        disks: list[Disk] | tuple[Disk, ...] = (),
        boot: str | None = None,
        memory_mb: int = 1024,
        cpus: int = 2,
        name: str = "vm",
        no_reboot: bool = False,
        network: bool = False,
        netboot: tuple[Path, str] | None = None,
        uuid: str | None = None,
        secure_boot: bool = False,
    ):
        if firmware not in ("bios", "uefi"):
            raise ValueError(f"firmware must be bios or uefi, not {firmware!r}")
        if secure_boot and firmware != "uefi":
            raise ValueError("secure_boot needs firmware='uefi'")
        self.secure_boot = secure_boot
        self.workdir = Path(workdir)
        self.name = name
        self.firmware = firmware
        self.log_path = self.workdir / f"{name}-serial.log"
        if netboot and boot is None:
            boot = "net"  # no disk or medium first: the card's bootindex below
        self.args = self._command(firmware, cdrom, usb, list(disks), boot, memory_mb, cpus, no_reboot)
        if network or netboot:
            at = self.args.index("-nic")
            user, first = "user,id=n0", ""
            if netboot:  # QEMU's own TFTP server hands out the boot file; the card boots first
                user += f",tftp={netboot[0]},bootfile={netboot[1]}"
                first = ",bootindex=0"
            # QEMU's iPXE option ROM is unsigned (a Secure Boot PC runs only signed ones), and it
            # tells shim a file's size wrong (rhboot/shim#760): OVMF's own driver and PXE instead
            rom = ",romfile=" if secure_boot else ""
            self.args[at : at + 2] = ["-netdev", user, "-device", f"virtio-net-pci,netdev=n0{first}{rom}"]
        if uuid:
            self.args += ["-uuid", uuid]
        self.child: pexpect.spawn | None = None
        self.started = 0.0
        self._log = None

    def _command(self, firmware, cdrom, usb, disks, boot, memory_mb, cpus, no_reboot) -> list[str]:
        if boot is None:
            boot = "cdrom" if cdrom else "usb" if usb else (disks[0].serial if disks else None)
        args = [
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=tcg,smm=on" if self.secure_boot else "q35,accel=tcg",
            "-m",
            str(memory_mb),
            "-smp",
            str(cpus),
            "-display",
            "none",
            "-vga",
            "std",
            "-monitor",
            "none",
            "-chardev",
            "stdio,id=serial0,signal=off",
            "-serial",
            "chardev:serial0",
            "-nic",
            "none",
        ]
        if no_reboot:
            args.append("-no-reboot")
        if firmware == "uefi":
            code, store = (OVMF_SECBOOT_CODE, OVMF_SECBOOT_VARS) if self.secure_boot else (OVMF_CODE, OVMF_VARS)
            if self.secure_boot:  # only SMM code writes the flash: the OS cannot go around the checks
                args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
            vars_copy = self.workdir / f"{self.name}-OVMF_VARS.fd"
            shutil.copyfile(store, vars_copy)
            args += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]

        def bootindex(what: str) -> str:
            return ",bootindex=0" if boot == what else ""

        if cdrom:
            args += [
                "-drive",
                f"file={cdrom},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
                "-device",
                f"ide-cd,drive=cd0{bootindex('cdrom')}",
            ]
        if usb:
            args += [
                "-device",
                "qemu-xhci,id=xhci",
                "-drive",
                f"file={usb},if=none,id=stick,format=raw,snapshot=on",
                "-device",
                f"usb-storage,bus=xhci.0,drive=stick,removable=on{bootindex('usb')}",
            ]
        for n, disk in enumerate(disks):
            ro = ",readonly=on" if disk.readonly else ""
            args += [
                "-drive",
                f"file={disk.path},if=none,id=d{n},format=raw{ro}",
                "-device",
                f"virtio-blk-pci,drive=d{n},serial={disk.serial}{bootindex(disk.serial)}",
            ]
        return args

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> VM:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self._say("starting: " + " ".join(self.args))
        self.started = time.monotonic()
        self.child = pexpect.spawn(
            self.args[0], self.args[1:], timeout=BOOT_TIMEOUT, maxread=65536, searchwindowsize=None, echo=False
        )
        self.child.logfile_read = self._log
        return self

    def kill(self) -> None:
        """Stop the machine whatever state it is in (power cord, not shutdown)."""
        if self.child is not None and self.child.isalive():
            self.child.terminate(force=True)
        if self.child is not None:
            self.child.close(force=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    @property
    def elapsed(self) -> float:
        """Seconds since power-on."""
        return time.monotonic() - self.started

    # -- console --------------------------------------------------------------------------

    def expect(self, pattern, timeout: float = BOOT_TIMEOUT, what: str | None = None) -> re.Match:
        """Wait for a regex (str, bytes or compiled) on the serial line; return the match.
        Raises VMError on timeout or when QEMU exits first."""
        assert self.child is not None, "VM not started"
        if isinstance(pattern, str):
            pattern = re.compile(pattern.encode())
        elif isinstance(pattern, bytes):
            pattern = re.compile(pattern)
        label = what or pattern.pattern
        self._say(f"waiting up to {timeout:.0f}s for {label!r}")
        try:
            self.child.expect([pattern], timeout=timeout)
        except pexpect.TIMEOUT:
            raise VMError(self._failure(f"timed out after {timeout:.0f}s waiting for {label!r}")) from None
        except pexpect.EOF:
            raise VMError(self._failure(f"QEMU exited while waiting for {label!r}")) from None
        self._say(f"saw {label!r}")
        return self.child.match

    def expect_text(self, text: str, timeout: float = BOOT_TIMEOUT) -> re.Match:
        """Wait for text as drawn on a terminal (escape sequences between its characters)."""
        return self.expect(text_pattern(text), timeout, what=text)

    def send(self, text: str) -> None:
        assert self.child is not None, "VM not started"
        self.child.send(text.encode())

    def sendline(self, text: str) -> None:
        self.send(text + "\r")

    def sendkey(self, *names: str, delay: float = 0.3) -> None:
        """Press keys by name (see KEYS), with a pause after each so that a lone Esc is not
        read as the start of the next key's sequence."""
        for name in names:
            self.send(KEYS[name])
            time.sleep(delay)

    def boot_rescue_on_serial(self, timeout: float = 180) -> None:
        """At the rescue ISO's boot menu (isolinux under BIOS, GRUB under UEFI), choose the
        entry that gives the wizard to the serial line (rescue.console=ttyS0); the default
        entry gives it to the screen, and the serial line then only offers a shell.

        Once in CI (1 of about 30 boots), a guest said nothing at all for 420 s after the menu
        handed over: no kernel line, no initramfs shell. Such a boot is power-cycled once, with
        its log kept beside the new one and a line saying so; a second silent boot fails."""
        for attempt in (1, 2):
            self.expect_text(SERIAL_ENTRY, timeout)
            self.sendkey("down", "enter", delay=0.1)
            try:
                self.expect(FIRST_WORDS, SILENT_BOOT, what="the kernel's first line or the wizard")
                return
            except VMError:
                if attempt == 2:
                    raise
            self.kill()
            silent = self.log_path.with_name(f"{self.name}-silent-boot-serial.log")
            self.log_path.rename(silent)
            print(
                f"[{self.name}] SILENT BOOT: nothing {SILENT_BOOT}s after the boot menu; "
                f"power-cycled once (log {silent})",
                flush=True,
            )
            self.start()

    def wait_shutdown(self, timeout: float = 120) -> int | None:
        """Wait for the machine to power off (QEMU exits); return QEMU's exit status."""
        assert self.child is not None, "VM not started"
        self._say(f"waiting up to {timeout:.0f}s for power-off")
        try:
            self.child.expect(pexpect.EOF, timeout=timeout)
        except pexpect.TIMEOUT:
            raise VMError(self._failure(f"no power-off within {timeout:.0f}s")) from None
        self.child.close()
        self._say("powered off")
        return self.child.exitstatus

    # -- reporting ------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        print(f"[{self.name} {self.elapsed if self.started else 0:6.1f}s] {message}", flush=True)

    def _failure(self, message: str) -> str:
        if self._log is not None:
            self._log.flush()
        tail = self.log_path.read_bytes()[-3000:] if self.log_path.exists() else b""
        clean = re.sub(_CONTROL.encode(), b"", tail).decode("utf-8", "replace")
        where = f"({self.elapsed:.0f}s after power-on; log {self.log_path})"
        return f"{self.name}: {message} {where}\n--- last serial output ---\n{clean}"


def qemu_available() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


if __name__ == "__main__":  # manual use: python3 tests/vm/qemu.py ISO [bios|uefi] [cdrom|usb]
    iso = Path(sys.argv[1])
    fw = sys.argv[2] if len(sys.argv) > 2 else "bios"
    how = sys.argv[3] if len(sys.argv) > 3 else "cdrom"
    kw = {"cdrom": iso} if how == "cdrom" else {"usb": iso}
    with VM(Path("/tmp"), firmware=fw, name=f"manual-{fw}-{how}", **kw) as vm:
        vm.child.interact()

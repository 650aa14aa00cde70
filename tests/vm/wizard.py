"""Driving the ISO's wizard over the serial line through whole jobs, shared by the QEMU tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from disks import LoopRegistry, MiB, partition_table, sh
from qemu import VM

WIZARD_BOOT_TIMEOUT = 420  # ISO boot to the wizard under TCG, on a loaded 2-core machine
RESTORE_TIMEOUT = 600  # a small system drive; big ones pass their own
TYPED_NAME = re.compile(rb"Type\W+(?:\x1b\[[0-9;]*[A-Za-z])*(vd[a-z])")


def restore_with_wizard(vm: VM, image: str = "workstation", timeout: float = RESTORE_TIMEOUT) -> str:
    """Walk the wizard through a restore from the repository it finds by itself onto the
    first drive it offers; returns the target's drive name."""
    vm.boot_rescue_on_serial()
    vm.expect_text("rescue - disk imaging", timeout=WIZARD_BOOT_TIMEOUT)
    vm.expect_text("Restore an image")
    print(f"[e2e] wizard up {vm.elapsed:.0f}s after power-on", flush=True)
    return restore_in_wizard(vm, "rescue-images", image, None, timeout)


def restore_in_wizard(vm: VM, repo: str, image: str, target: str | None, timeout: float = RESTORE_TIMEOUT) -> str:
    """From the main menu: Restore from the repository drawn as `repo` (the first one found,
    which has the focus), the image, onto `target` (a drive name), or the first drive
    offered; returns the target's name."""
    vm.sendkey("enter")
    vm.expect_text("Restore: where are the images?", timeout=120)
    vm.expect_text(repo, timeout=120)  # found by itself
    vm.sendkey("enter")
    vm.expect_text("Restore: choose an image", timeout=60)
    vm.expect_text(image)
    vm.sendkey("enter")
    vm.expect_text("Restore: choose the target drive", timeout=60)
    vm.expect_text("holds the repository", timeout=30)  # the safety rule's words
    if target is not None:
        focus(vm, f"> {target}")
    vm.sendkey("enter")
    vm.expect_text("Restore: the plan for", timeout=120)
    vm.sendkey("enter")  # Continue has the focus
    m = vm.expect(TYPED_NAME, timeout=60, what="the typed-name prompt")
    name = m.group(1).decode()
    vm.send(name)
    vm.sendkey("enter")
    vm.expect_text("Restore: done", timeout=timeout)
    vm.expect_text("Verification: passed")
    return name


def focus(vm: VM, row: str, moves: int = 12) -> None:
    """Press Down until the focused row (drawn with "> ") starts with `row`."""
    for _ in range(moves):
        vm.sendkey("down")
        try:
            vm.expect_text(row, timeout=10)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{row!r} never got the focus")


def clone_in_wizard(
    vm: VM, source_serial: str, source: str | None = None, onto: str = "vdb", timeout: float = RESTORE_TIMEOUT
) -> None:
    """From the main menu: Clone `source` (a drive name; None: the first drive offered) onto
    the first drive offered as the target, which must be `onto` (the test arranges that the
    others are refused: Down would leave the list for its buttons)."""
    vm.sendkey("down", "down", "enter")  # Restore, Capture, [Clone]
    vm.expect_text("Clone: choose the drive to copy", timeout=60)
    vm.expect_text(source_serial, timeout=30)
    if source is not None:
        focus(vm, f"> {source}")
    vm.sendkey("enter")
    vm.expect_text("Clone: choose the target drive", timeout=60)
    vm.expect_text("is the source drive", timeout=30)  # the safety rule's words
    vm.sendkey("enter")
    vm.expect_text("Clone: the plan for", timeout=120)
    vm.sendkey("enter")
    m = vm.expect(TYPED_NAME, timeout=60, what="the typed-name prompt")
    assert m.group(1).decode() == onto, m.group(0)
    vm.send(onto)
    vm.sendkey("enter")
    vm.expect_text("Clone: done", timeout=timeout)
    vm.expect_text(f"was copied onto {onto}")


def power_off(vm: VM) -> None:
    vm.sendkey("right", "right", "enter")  # Done: Main menu, Reboot, [Power off]
    vm.expect_text("Switch the computer off now?", timeout=30)
    vm.sendkey("left", "enter")  # the dialog's focus starts on Cancel
    vm.wait_shutdown(timeout=180)


def blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def repository_drive(path: Path, size: int, source: Path, name: str) -> Path:
    """A drive as a technician brings one: GPT, one ext4 partition labelled "images" holding a
    repository `rescue-images` with `source` captured as `name` (the wizard finds it by
    itself). Its partition spans 1 MiB to 1 MiB before the end."""
    with open(path, "wb") as f:
        f.truncate(size)
    partition_table(str(path), 'label: gpt\nstart=2048, name="images"\n')
    reg = LoopRegistry(path.parent)
    try:
        part = reg.attach(path, offset=MiB, size=size - 2 * MiB)
        sh("mkfs.ext4", "-q", "-L", "images", part)
        with reg.mounted(part) as mnt:
            argv = [sys.executable, "-m", "rescue", "capture", str(source), str(mnt / "rescue-images"), "--name", name]
            proc = subprocess.run(argv, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            print(proc.stdout, flush=True)
    finally:
        reg.cleanup()
    return path

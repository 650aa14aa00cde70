"""The wizard on real loop devices through the real engine (rescue.engine.Engine): capture a small
drive, restore it (switching the layout policy on the plan screen), clone it, and browse the
image and copy files out — checking what a person would check: the files are back, the screens
said so, and nothing stays mounted."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from disks import MiB, partition_table, sh
from helpers import click, dialog_open, dialog_text, finish_job, flat, focus_field, press, select, text, type_text
from test_restore_flow import choose_policy, policy_line

from rescue.engine import Engine
from rescue.tui.app import App

pytestmark = pytest.mark.root


def build_source(loops) -> tuple[str, bytes]:
    disk = loops.disk("src.img", 96 * MiB)
    partition_table(disk, "label: gpt\nstart=2048, size=65536, type=linux, name=data\n")
    part = loops.partition(disk, 2048, 65536)
    sh("mkfs.ext4", "-q", "-L", "wizdata", part)
    payload = os.urandom(3 * MiB)
    with loops.mounted(part) as mnt:
        (mnt / "payload.bin").write_bytes(payload)
        (mnt / "docs").mkdir()
        (mnt / "docs" / "secret.txt").write_text("only for alice\n")
        os.chmod(mnt / "docs" / "secret.txt", 0o640)
        os.utime(mnt / "docs" / "secret.txt", (1600000000, 1600000000))
        (mnt / "docs" / "link").symlink_to("/etc/passwd")
    sh("losetup", "--detach", part)
    loops.devices.remove(part)
    return disk, payload


def read_payload(loops, disk: str) -> bytes:
    part = loops.partition(disk, 2048, 65536)
    with loops.mounted(part, options="ro") as mnt:
        return (mnt / "payload.bin").read_bytes()


def our_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if "/rescue/wizard/" in line.split()[4]]


def test_capture_then_restore_through_the_wizard_on_loop_devices(loops, tmp_path):
    source, payload = build_source(loops)
    target = loops.disk("dst.img", 128 * MiB)
    small = loops.disk("small.img", 32 * MiB)
    repo = tmp_path / "repo"
    repo.mkdir()
    backend = Engine(include_loop=True)
    app = App(backend, log_dir=str(tmp_path))
    app.main_menu()
    try:
        # capture --------------------------------------------------------------------
        select(app, "Capture")
        select(app, os.path.basename(source))
        focus_field(app)
        for ch in str(repo):
            press(app, ch)
        press(app, "enter")
        assert "Capture: name the image" in text(app), text(app)
        app.view.edit.set_edit_text("wiz1")
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        assert "was captured as wiz1" in flat(app)
        assert "Verification: passed" in flat(app)
        assert "No unreadable sectors were met." in flat(app)
        click(app, "Main menu")

        # restore --------------------------------------------------------------------
        app.preset_repo = str(repo)
        select(app, "Restore")
        assert "wiz1" in text(app) and "verified" in text(app)
        select(app, "wiz1")
        screen = flat(app)
        assert f"{os.path.basename(small)} " in screen
        assert "not offered: too small: needs at least" in screen
        select(app, os.path.basename(target))
        assert "auto chose proportional" in flat(app)  # 128 MiB target, 96 MiB image
        assert " grow" in text(app)
        choose_policy(app, "same")
        assert "(X) same" in policy_line(app), text(app)
        assert "every partition stays as in the image" in flat(app)
        click(app, "Continue")
        app.view.edit.set_edit_text(os.path.basename(target))
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        assert "Verification: passed" in flat(app)
    finally:
        backend.close()
    assert hashlib.sha256(read_payload(loops, target)).digest() == hashlib.sha256(payload).digest()


def test_clone_through_the_wizard_on_loop_devices(loops, tmp_path):
    source, payload = build_source(loops)
    target = loops.disk("dst.img", 128 * MiB)
    backend = Engine(include_loop=True)
    app = App(backend, log_dir=str(tmp_path))
    app.main_menu()
    try:
        select(app, "Clone")
        select(app, os.path.basename(source))
        lines = text(app).splitlines()
        row = next(i for i, l in enumerate(lines) if l.lstrip(" >").startswith(os.path.basename(source) + " "))
        assert f"not offered: target {source} is the source drive" in lines[row + 1]
        select(app, os.path.basename(target))
        assert not dialog_open(app), dialog_text(app)
        assert "Clone: the plan for" in text(app) and "auto chose proportional" in flat(app)
        choose_policy(app, "same")
        assert "every partition stays as in the image" in flat(app)
        click(app, "Continue")
        type_text(app, os.path.basename(target))
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        words = flat(app)
        assert f"was copied onto {os.path.basename(target)}" in words
        assert "No unreadable sectors were met." in words
    finally:
        backend.close()
    assert hashlib.sha256(read_payload(loops, target)).digest() == hashlib.sha256(payload).digest()


def test_browse_an_image_and_copy_files_out_through_the_wizard(loops, tmp_path):
    from rescue.imaging.capture import capture

    source, payload = build_source(loops)
    repo = tmp_path / "repo"
    capture(source, str(repo), "img1")
    out = tmp_path / "out"
    out.mkdir()
    backend = Engine(include_loop=True)
    app = App(backend, preset_repo=str(repo), log_dir=str(tmp_path))
    app.main_menu()
    try:
        select(app, "Browse")
        select(app, "img1")
        assert "partition 1" in text(app) and "ext4" in text(app) and "wizdata" in text(app)
        select(app, "partition 1")
        assert not dialog_open(app), dialog_text(app)
        assert len(our_mounts()) == 1, "the partition is mounted while its tree is shown"
        # Back unmounts; entering again mounts again
        press(app, "esc")
        assert "choose a partition" in text(app) and our_mounts() == []
        select(app, "partition 1")
        screen = text(app)
        assert "[ ] + docs/" in screen and "payload.bin" in screen and "3.0 MiB" in screen
        press(app, "enter")  # open docs/
        assert "secret.txt" in text(app) and "link -> /etc/passwd" in text(app)
        press(app, " ")  # mark docs/
        for _ in range(4):
            press(app, "down")
        assert "payload.bin" in text(app).split(" > ")[1].splitlines()[0]
        press(app, " ")
        click(app, "Copy marked")
        focus_field(app)
        type_text(app, str(tmp_path / "missing"))
        press(app, "enter")
        assert "is not a directory" in flat(app)
        app.view.edit.set_edit_text(str(out))
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        assert "Browse: done" in text(app) and "docs payload.bin" in flat(app)
        assert our_mounts() == []
    finally:
        app.close_state()
        backend.close()
    assert (out / "payload.bin").read_bytes() == payload
    secret = out / "docs" / "secret.txt"
    assert secret.read_text() == "only for alice\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o640
    assert int(secret.stat().st_mtime) == 1600000000
    assert os.readlink(out / "docs" / "link") == "/etc/passwd"  # copied as a link, not followed

"""The wizard on real loop devices through RealBackend and the real engine: capture a small
drive with the capture flow, restore it with the restore flow onto a second drive, and check
what a person would check — the file is back, and the screens said so."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers import click, dialog_open, dialog_text, finish_job, flat, press, select, text

from disks import MiB, partition_table, sh
from rescue.tui.app import App
from rescue.tui.backend import RealBackend

pytestmark = pytest.mark.root


def build_source(loops) -> tuple[str, bytes]:
    disk = loops.disk("src.img", 96 * MiB)
    partition_table(disk, "label: gpt\nstart=2048, size=65536, type=linux, name=data\n")
    part = loops.partition(disk, 2048, 65536)
    sh("mkfs.ext4", "-q", "-L", "wizdata", part)
    payload = os.urandom(3 * MiB)
    with loops.mounted(part) as mnt:
        (mnt / "payload.bin").write_bytes(payload)
    sh("losetup", "--detach", part)
    loops.devices.remove(part)
    return disk, payload


def test_capture_then_restore_through_the_wizard_on_loop_devices(loops, tmp_path):
    source, payload = build_source(loops)
    target = loops.disk("dst.img", 128 * MiB)
    small = loops.disk("small.img", 32 * MiB)
    repo = tmp_path / "repo"
    repo.mkdir()
    backend = RealBackend(include_loop=True)
    app = App(backend, log_dir=str(tmp_path))
    app.main_menu()
    try:
        # capture --------------------------------------------------------------------
        select(app, "Capture")
        select(app, os.path.basename(source))
        view = app.view
        while view.walker.focus != len(view.walker) - 1:
            press(app, "down")
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
        click(app, "Main menu")

        # restore --------------------------------------------------------------------
        app.preset_repo = str(repo)
        select(app, "Restore")
        assert "wiz1" in text(app) and "verified" in text(app)
        select(app, "wiz1")
        screen = flat(app)
        assert f"{os.path.basename(small)} " in screen
        assert "not offered: too small: the image needs" in screen
        select(app, os.path.basename(target))
        assert "After the restore" in text(app)
        click(app, "Continue")
        app.view.edit.set_edit_text(os.path.basename(target))
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        assert "Verification: passed" in flat(app)
    finally:
        backend.close()

    part = loops.partition(target, 2048, 65536)
    with loops.mounted(part, options="ro") as mnt:
        got = (mnt / "payload.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

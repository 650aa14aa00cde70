"""The wizard restores a Clonezilla image (issue 17) through the real engine on loop devices:
the image directory typed on the repository screen, its one image chosen, planned onto a
larger drive, checked and written; the files are back."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tui"))

from clonezilla_images import MBR_GZIP_SPLIT, clonezilla_image  # noqa: E402
from disks import MiB, sh  # noqa: E402
from drives import check_restored  # noqa: E402
from helpers import (  # noqa: E402
    click,
    dialog_open,
    dialog_text,
    finish_job,
    flat,
    focus_field,
    press,
    select,
    text,
    type_text,
)

from rescue.engine import Engine  # noqa: E402
from rescue.tui.app import App  # noqa: E402


def test_the_wizard_restores_a_clonezilla_image(loops, tmp_path):
    cz = clonezilla_image(MBR_GZIP_SPLIT)
    target = loops.file("wizard.img", 300 * MiB)
    dev = loops.attach(target)
    backend = Engine(include_loop=True)
    app = App(backend, log_dir=str(tmp_path))
    app.main_menu()
    try:
        select(app, "Restore")
        focus_field(app)  # "Type a path...": the image directory, as a person types it
        type_text(app, str(cz.directory))
        press(app, "enter")
        assert cz.name in text(app) and "Clonezilla image" in text(app), text(app)
        select(app, cz.name)
        select(app, os.path.basename(dev))
        assert "auto chose proportional" in flat(app)  # 300 MiB target, 200 MiB image
        click(app, "Continue")
        app.view.edit.set_edit_text(os.path.basename(dev))
        press(app, "enter")
        finish_job(app)
        assert not dialog_open(app), dialog_text(app)
        assert "Verification: passed" in flat(app)
    finally:
        backend.close()
    check_restored(loops, cz.drive, str(target))


def test_the_wizard_finds_clonezilla_images_on_drives(loops, tmp_path):
    """A USB drive Clonezilla saved to (its images at the top): the repository screen lists
    the image directory beside repositories, marked, from the same survey."""
    cz = clonezilla_image(MBR_GZIP_SPLIT)
    usb = loops.disk("usb.img", 128 * MiB)
    sh("mkfs.ext4", "-q", "-L", "CZUSB", usb)
    with loops.mounted(usb) as mnt:
        shutil.copytree(cz.directory, mnt / "2024-05-01-img")
    backend = Engine(include_loop=True)
    app = App(backend, log_dir=str(tmp_path))
    app.main_menu()
    try:
        found = [r for r in backend.find_repositories() if r.path.endswith("/2024-05-01-img")]
        assert len(found) == 1 and found[0].clonezilla and found[0].drive == os.path.basename(usb)
        select(app, "Restore")
        line = next(line for line in text(app).splitlines() if "2024-05-01-img" in line)
        assert "Clonezilla image" in line
        press(app, "enter")  # the only one found: focused
        assert "Restore: choose an image" in text(app) and "Clonezilla image" in text(app), text(app)
    finally:
        backend.close()

"""The capture flow: source, destination (found or typed), name, progress + verify, done."""

import threading
import time

from fake_backend import mount
from helpers import (
    assert_fits,
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

from rescue.engine import default_image_name
from rescue.errors import IntegrityError


def to_dest(app, source="nvme0n1"):
    select(app, "Capture")
    select(app, source)


def to_name(app):
    to_dest(app)
    select(app, "/dev/sdb1")


def test_source_list_refuses_the_boot_drive_and_a_drive_mounted_read_write(app):
    select(app, "Capture")
    screen = flat(app)
    assert "not offered: source /dev/sdc booted this rescue system (/dev/sdc)" in screen
    assert "not offered: source /dev/sdb has a mounted filesystem (/dev/sdb1 on /media/sdb1)" in screen
    assert screen.count("not offered") == 2
    assert "Now on sda:" in screen


def test_destination_shows_free_space_and_refuses_the_source_drives_repo(app, backend):
    mount(backend, "/dev/sdb1", "/media/sdb1", read_only=True)  # as discovery mounts it: sdb is capturable
    to_dest(app, "sdb")
    assert "not offered: it is on the drive being captured" in flat(app)
    press(app, "esc")
    press(app, "esc")
    mount(backend, "/dev/sdb1", "/media/sdb1")
    to_dest(app)
    lines = text(app).splitlines()
    assert any(line.split() == ["/dev/sdb1", "ext4", '"images"', "1.8", "TiB", "1.5", "TiB", "free"] for line in lines)
    screen = flat(app)
    assert "on sdb (WD Elements 25A2): into /media/sdb1" in screen
    sda2 = '/dev/sda2 ext4 "old-root" 400.0 GiB 350.0 GiB free on sda (Samsung SSD 860 EVO 500GB):'
    assert f"{sda2} new repository folder rescue-images" in screen
    assert "/dev/sdc1 iso9660" in screen and "not offered: it is on the drive this rescue system booted from" in screen
    assert "/dev/sdd blank drive 7.5 GiB on sdd (Kingston DataTraveler): prepare this drive for images" in screen
    assert "/dev/nvme0n1p1 ntfs" in screen and "not offered: it is on the drive being captured" in screen


def test_typed_destination_without_enough_space_is_refused_in_words(app):
    to_dest(app)
    focus_field(app)
    type_text(app, "/mnt/small")
    press(app, "enter")
    assert "Cannot store the image in /mnt/small: not enough free space: needs up to 50.0 GiB" in flat(app)
    assert "where to store the image" in text(app)


def test_typed_destination_that_is_not_a_directory_is_refused(app):
    to_dest(app)
    focus_field(app)
    type_text(app, "/nowhere")
    press(app, "enter")
    assert "Cannot store the image in /nowhere: /nowhere is not a directory" in flat(app)


def test_typed_destination_with_space_is_taken(app):
    to_dest(app)
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    assert "into /mnt/big" in text(app)


def test_default_name_is_model_and_date_sanitized():
    """One rule for the CLI and the wizard (rescue.engine.default_image_name)."""
    when = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))
    assert default_image_name("Samsung SSD 860/EVO (500GB)", "sda", when) == "Samsung-SSD-860-EVO-500GB-20240501-120000"
    assert default_image_name("", "sda", when) == "sda-20240501-120000"


def test_name_screen_prefills_the_default_and_rejects_bad_or_taken_names(app):
    to_name(app)
    today = time.strftime("%Y%m%d")
    assert f"Image name: WDC-PC-SN730-256GB-{today}-" in text(app)
    edit = app.view.edit
    edit.set_edit_text("bad name/with slash")
    press(app, "enter")
    assert "Invalid image name 'bad name/with slash'" in flat(app)
    edit.set_edit_text("web01-2024-05-01")
    press(app, "enter")
    assert "An image named web01-2024-05-01 already exists in /media/sdb1." in text(app)
    assert "name the image" in text(app)


def test_whole_capture_runs_capture_then_verify_and_ends_at_done(app, backend):
    to_name(app)
    app.view.edit.set_edit_text("laptop-new")
    press(app, "enter")
    assert "Capture: reading and verifying" in text(app)
    finish_job(app)
    assert [c[0] for c in backend.calls] == ["capture", "verify"]
    assert backend.calls[0] == ("capture", "/dev/nvme0n1", "/media/sdb1", "laptop-new")
    screen = flat(app)
    assert "nvme0n1 (WDC PC SN730 256GB) was captured as laptop-new" in screen
    assert "Verification: passed" in screen
    assert "The log was saved to /media/sdb1/images/laptop-new/log.txt" in screen
    assert_fits(app)
    click(app, "Main menu")
    assert "Main menu" in text(app)


def test_capture_whose_verify_fails_says_so_and_returns_to_the_menu(app, backend):
    backend.fail["verify"] = IntegrityError("chunk 3f2a... of laptop-new/p1 is damaged (hash mismatch)")
    to_name(app)
    press(app, "enter")
    finish_job(app)
    assert "chunk 3f2a... of laptop-new/p1 is damaged (hash mismatch)" in dialog_text(app)
    assert "Traceback" not in text(app)
    press(app, "enter")
    assert "Main menu" in text(app)


def test_esc_during_capture_asks_and_cancelling_keeps_no_image(app, backend):
    backend.gate = threading.Event()
    to_name(app)
    press(app, "enter")
    press(app, "esc")
    assert "What it read is kept: capturing the same drive into the same" in dialog_text(app)
    press(app, "left", "enter")
    assert app.runner.cancel.is_set()
    backend.gate.set()
    finish_job(app)
    # the fake capture finished its areas before the gate, so cancellation shows at verify
    assert "Capture cancelled. No image was kept; nvme0n1 was not changed." in dialog_text(app)
    press(app, "enter")
    assert not dialog_open(app) and "Main menu" in text(app)


def test_a_read_only_repository_is_refused_as_a_destination_as_on_the_real_machine(app, backend):
    """The dry run decides as the engine does: a repository found mounted read-only (as
    discovery mounts what it finds) cannot take a capture."""
    backend.data["places"][2]["read_only"] = True
    to_dest(app)
    assert "not offered: it is mounted read-only at /media/sdb1" in flat(app)

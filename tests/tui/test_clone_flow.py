"""The clone flow: source, target (refusals), plan with a layout policy, typed confirmation,
progress, and a done screen that says where unreadable sectors were met. Also the capture done
screen's bad-sector report."""

import threading

from fake_backend import mount
from helpers import (
    assert_fits,
    click,
    dialog_open,
    dialog_text,
    finish_job,
    flat,
    focused_line,
    press,
    select,
    text,
    type_text,
)
from test_restore_flow import choose_policy, policy_line


def to_targets(app, source="sda"):
    select(app, "Clone")
    select(app, source)


def to_plan(app, target="nvme0n1"):
    to_targets(app)
    select(app, target)


def test_source_list_refuses_the_boot_drive_and_a_drive_in_use(app, backend):
    mount(backend, "/dev/nvme0n1p1", "/mnt")
    select(app, "Clone")
    screen = flat(app)
    assert "Clone: choose the drive to copy" in screen and "1/6" in text(app).splitlines()[0]
    assert "not offered: source /dev/sdc booted this rescue system" in screen
    assert "not offered: source /dev/nvme0n1 has a mounted filesystem (/dev/nvme0n1p1 on /mnt)" in screen
    assert "not offered: source /dev/sdb has a mounted filesystem (/dev/sdb1 on /media/sdb1)" in screen
    assert screen.count("not offered") == 3


def test_target_list_refuses_source_boot_small_and_safety_rules(app, backend):
    to_targets(app)
    lines = text(app).splitlines()
    for name, reason in (
        ("sda", "target /dev/sda is the source drive (/dev/sda)"),
        ("sdc", "target /dev/sdc booted this rescue system"),
        ("sdd", "too small: needs at least 66.1 GiB, the drive has 7.5 GiB"),
        ("sdb", "target /dev/sdb has a mounted filesystem"),
    ):
        row = next(i for i, l in enumerate(lines) if l.lstrip(" >").startswith(name))
        assert lines[row].startswith("   "), f"{name} must not take the focus"
        assert f"not offered: {reason}" in lines[row + 1]
    assert focused_line(app).startswith("> nvme0n1")


def test_plan_switches_policy_and_a_plan_that_does_not_fit_cannot_continue(app, backend):
    to_plan(app)
    assert backend.calls[-1] == ("plan_clone", "/dev/sda", "/dev/nvme0n1", "auto")
    words = flat(app)
    assert "Copy sda (Samsung SSD 860 EVO 50.., 465.7 GiB) onto nvme0n1" in words
    assert "auto chose proportional: fits in 238.4 GiB: #2 (old-root, ext4) shrinks 400.0 GiB -> 237.9 GiB" in words
    choose_policy(app, "same")
    assert backend.calls[-1] == ("plan_clone", "/dev/sda", "/dev/nvme0n1", "same")
    assert "(X) same" in policy_line(app)
    assert (
        "Does not fit (same): /dev/nvme0n1 is too small: /dev/sda needs 400.5 GiB, the drive has "
        "238.4 GiB, short by 162.1 GiB"
    ) in flat(app)
    assert "- Continue -" in text(app)
    choose_policy(app, "grow-last")
    assert "< Continue >" in text(app)
    assert_fits(app)


def test_wrong_name_goes_back_to_the_plan_and_nothing_is_cloned(app, backend):
    to_plan(app)
    click(app, "Continue")
    assert "Type nvme0n1 to erase it and copy sda onto it:" in text(app)
    type_text(app, "sda")
    press(app, "enter")
    assert "Clone: the plan for nvme0n1" in text(app)
    assert "You typed 'sda', not 'nvme0n1': nothing was written." in text(app)
    assert not any(c[0] == "clone" for c in backend.calls)


def test_whole_clone_shows_progress_then_where_the_bad_sectors_were(app, backend):
    backend.gate = threading.Event()
    to_plan(app)
    choose_policy(app, "grow-last")
    click(app, "Continue")
    type_text(app, "nvme0n1")
    press(app, "enter")
    assert "Clone: copying" in text(app)
    app.runner.wait(0.3)
    app.on_pipe(b"!")
    assert "Phase: clone" in text(app)
    backend.gate.set()
    finish_job(app)
    assert backend.calls[-1] == ("clone", "/dev/sda", "/dev/nvme0n1", "grow-last")
    assert backend.plans_used[-1] is app.state.plan
    # the first line says the copy is not clean
    body = [line.strip() for line in text(app).splitlines()[1:] if line.strip()]
    assert body[0] == "Incomplete: 26 unreadable sector(s) were zero-filled in the copy on nvme0n1."
    words = flat(app)
    assert "sda (Samsung SSD 860 EVO 500GB) was copied onto nvme0n1 (WDC PC SN730 256GB)" in words
    assert "26 unreadable sector(s) were met (13.0 KiB in 4 range(s)); those bytes were written as zeros" in words
    screen = text(app)
    assert "at byte 1048576000 (1000.0 MiB), 4096 bytes" in screen
    assert "at byte 3221225472 (3072.0 MiB), 8192 bytes" in screen
    assert "... and 1 more range(s), all listed in the log" in screen
    assert "429496729600" not in screen  # only the first few ranges
    assert "boot with only one of them connected" in words
    assert_fits(app)


def test_clone_of_a_clean_drive_says_no_bad_sectors(app, backend):
    select(app, "Clone")
    select(app, "nvme0n1")
    select(app, "sda")
    click(app, "Continue")
    type_text(app, "sda")
    press(app, "enter")
    finish_job(app)
    assert "No unreadable sectors were met." in flat(app)


def test_esc_during_clone_asks_and_cancelling_says_what_is_left(app, backend):
    backend.gate = threading.Event()
    to_plan(app)
    click(app, "Continue")
    type_text(app, "nvme0n1")
    press(app, "enter")
    press(app, "esc")
    assert (
        "nvme0n1 will be left partially written and will not boot; clone again to fix. sda is not changed."
    ) in dialog_text(app)
    press(app, "left", "enter")
    backend.gate.set()
    finish_job(app)
    assert "Clone cancelled." in dialog_text(app)
    press(app, "enter")
    assert not dialog_open(app) and "Main menu" in text(app)


def test_capture_done_lists_the_bad_sectors_met(app, backend):
    select(app, "Capture")
    select(app, "sda")
    select(app, "/dev/sdb1")
    press(app, "enter")
    finish_job(app)
    body = [line.strip() for line in text(app).splitlines()[1:] if line.strip()]
    assert body[0].startswith("Incomplete: 26 unreadable sector(s) were zero-filled in the image")
    words = flat(app)
    assert "26 unreadable sector(s) were met (13.0 KiB in 4 range(s)); they are marked unreadable" in words
    assert "at byte 2147483648 (2048.0 MiB), 512 bytes" in text(app)
    assert_fits(app)

"""The restore flow, step by step, with the keyboard, against the in-memory machine."""

import threading

from helpers import (
    assert_fits,
    click,
    dialog_open,
    dialog_text,
    finish_job,
    flat,
    focus_field,
    focused_line,
    press,
    select,
    text,
    type_text,
)

from rescue.imaging.progress import Progress


def to_images(app):
    select(app, "Restore")
    select(app, "/media/sdb1")


def to_targets(app, image="web01"):
    to_images(app)
    select(app, image)


def to_plan(app, drive="sda"):
    to_targets(app)
    select(app, drive)


def to_confirm(app):
    to_plan(app)
    click(app, "Continue")


def test_first_screen_names_the_product_and_the_choices(app):
    screen = text(app)
    assert "rescue - disk imaging" in screen.splitlines()[0]
    items = ("Restore an image", "Capture a drive", "Clone a drive", "Browse an image", "Shell", "Reboot", "Power off")
    rows = [next(i for i, l in enumerate(screen.splitlines()) if item in l) for item in items]
    assert rows == sorted(rows), "menu items out of order"
    assert focused_line(app).startswith("> Restore")


def test_repository_screen_lists_found_repos_and_a_path_field(app):
    select(app, "Restore")
    screen = text(app)
    assert "/media/sdb1  (on sdb)" in screen
    assert "Type a path...:" in screen
    assert "1/7" in screen.splitlines()[0]


def test_typed_path_that_is_no_repository_says_so_and_stays(app):
    select(app, "Restore")
    focus_field(app)
    type_text(app, "/mnt/nothing")
    press(app, "enter")
    assert dialog_open(app)
    assert "/mnt/nothing is not a rescue repository" in dialog_text(app)
    press(app, "enter")  # OK
    assert not dialog_open(app)
    assert "Restore: where are the images?" in text(app)


def test_typed_path_of_a_repository_opens_it(app):
    select(app, "Restore")
    focus_field(app)
    type_text(app, "/media/sdb1")
    press(app, "enter")
    assert "Restore: choose an image" in text(app)


def test_images_show_name_date_source_size_data_and_verification(app):
    to_images(app)
    screen = text(app)
    lines = screen.splitlines()
    row = next(i for i, l in enumerate(lines) if "web01-2024-05-01" in l)
    assert lines[row].rstrip().endswith(" verified")
    assert "2024-05-01 10:15  source Samsung SSD 860 .., 120.0 GiB  data 12.0 GiB" in lines[row + 1]
    row = next(i for i, l in enumerate(lines) if "laptop-2024-06-30" in l)
    assert lines[row].rstrip().endswith("not verified")
    assert "source WDC PC SN730 256GB, 260.8 GiB  data 60.0 GiB" in lines[row + 1]


def test_esc_goes_back_one_step_at_a_time(app):
    to_targets(app)
    assert "choose the target drive" in text(app)
    press(app, "esc")
    assert "choose an image" in text(app)
    press(app, "esc")
    assert "where are the images?" in text(app)
    press(app, "esc")
    assert "Main menu" in text(app)


def test_back_button_goes_back(app):
    to_images(app)
    click(app, "Back")
    assert "where are the images?" in text(app)


def test_boot_drive_and_repository_drive_are_not_offered(app):
    to_targets(app)
    lines = text(app).splitlines()
    for name, reason in (
        ("sdc", "target /dev/sdc booted this rescue system"),
        ("sdb", "target /dev/sdb holds the repository /media/sdb1"),
    ):
        row = next(i for i, l in enumerate(lines) if l.lstrip(" >").startswith(name))
        assert lines[row].startswith("   "), "refused drive must not be focusable"
        assert f"not offered: {reason}" in lines[row + 1]
    # only offered drives take the focus: walking down never lands on sdb or sdc
    seen = set()
    for _ in range(8):
        seen.add(focused_line(app).split()[1] if focused_line(app) else "")
        press(app, "down")
    assert "sdb" not in seen and "sdc" not in seen
    assert {"sda", "nvme0n1"} <= seen


def test_too_small_drive_is_greyed_with_needed_and_available_sizes(app):
    to_targets(app)
    screen = flat(app)
    assert "sdd Kingston DataTraveler" in screen
    # the smallest drive any layout fits (root shrunk to its minimum), not the image's size
    assert "not offered: too small: needs at least 21.6 GiB, the drive has 7.5 GiB" in screen


def test_target_screen_shows_partitions_of_the_highlighted_drive(app):
    to_targets(app)
    assert focused_line(app).startswith("> sda")
    screen = text(app)
    assert "Now on sda:" in screen
    assert "sda2" in screen and "old-root" in screen and "ext4" in screen
    press(app, "down")
    assert focused_line(app).startswith("> nvme0n1")
    screen = text(app)
    assert "Now on nvme0n1:" in screen and "Windows" in screen and "old-root" not in screen


def policy_line(app) -> str:
    return next(l for l in text(app).splitlines() if "Layout:" in l)


def choose_policy(app, policy):
    """From the plan screen: up to the layout row (when on the buttons), walk to the policy,
    press Space."""
    if app.view.pile.focus_position == app.view._selectable_parts()[-1]:
        press(app, "shift tab")
    for _ in range(5):
        press(app, "left")
    for _ in range(["auto", "same", "proportional", "grow-last"].index(policy)):
        press(app, "right")
    press(app, " ")


def test_plan_shows_the_engines_table_with_auto_chosen_and_what_is_replaced(app, backend):
    to_plan(app)
    screen, words = text(app), flat(app)
    assert "(X) auto  ( ) same  ( ) proportional  ( ) grow-last" in policy_line(app)
    assert backend.calls[-1] == ("plan_restore", "/dev/sda", "auto")
    assert "auto chose proportional: fits in 465.7 GiB: #2 (root, ext4) grows 100.0 GiB -> 457.2 GiB" in words
    assert "  2  root, ext4     513 MiB  102400 MiB     513 MiB  468132 MiB  grow" in screen
    assert "Now on sda: sda1 512.0 MiB vfat EFI, sda2 400.0 GiB ext4 old-root." in words
    assert "All of it will be replaced; 12.0 GiB of data will be written." in words
    assert "< Continue >" in screen
    assert_fits(app)


def test_switching_the_layout_policy_plans_again_and_redraws(app, backend):
    to_plan(app)
    choose_policy(app, "same")
    assert backend.calls[-1] == ("plan_restore", "/dev/sda", "same")
    assert "( ) auto  (X) same" in policy_line(app)
    screen = text(app)
    assert "  2  root, ext4     513 MiB  102400 MiB     513 MiB  102400 MiB  keep" in screen
    assert "357.2 GiB at the end of the target stays unallocated" in flat(app)
    assert app.state.policy == "same" and app.state.plan.policy == "same"
    press(app, "right", " ")  # the focus stayed on the layout row: one more to the right
    assert "(X) proportional" in policy_line(app)
    assert backend.calls[-1] == ("plan_restore", "/dev/sda", "proportional")
    press(app, "right", "enter")  # Enter chooses too
    assert "(X) grow-last" in policy_line(app)
    assert "every partition keeps its size except the last resizable one" in flat(app)


def test_plan_that_does_not_fit_says_by_how_much_and_continue_is_disabled(app, backend):
    to_targets(app, "laptop")
    select(app, "nvme0n1")
    choose_policy(app, "same")
    words = flat(app)
    assert (
        "Does not fit (same): /dev/nvme0n1 is too small: the image needs 255.0 GiB, "
        "the drive has 238.4 GiB, short by 16.6 GiB"
    ) in words
    assert "Choose another layout above, or go back and choose a bigger drive." in words
    assert "- Continue -" in text(app) and "< Continue >" not in text(app)
    press(app, "tab", "enter")  # the only button that takes the focus is Back
    assert "choose the target drive" in text(app)
    select(app, "nvme0n1")
    choose_policy(app, "proportional")
    assert "fits in 238.4 GiB: #1 (Windows, ntfs) shrinks 255.0 GiB -> 238.4 GiB" in flat(app)
    click(app, "Continue")
    type_text(app, "nvme0n1")
    press(app, "enter")
    finish_job(app)
    assert backend.plans_used[-1].policy == "proportional"  # the plan shown is the plan used
    assert "laptop-2024-06-30 was restored onto nvme0n1" in flat(app)


def test_a_plan_that_cannot_be_made_keeps_the_last_plan_and_its_policy(app, backend):
    from rescue.errors import DeviceError

    to_plan(app)
    backend.fail["plan_restore"] = DeviceError("/dev/sda cannot be read: Input/output error")
    choose_policy(app, "grow-last")
    assert "cannot be read: Input/output error" in dialog_text(app)
    press(app, "enter")
    assert "(X) auto" in policy_line(app) and app.state.policy == "auto"
    assert "auto chose proportional" in flat(app)


def test_wrong_typed_name_goes_back_without_writing(app, backend):
    to_confirm(app)
    assert "Type sda to erase it and restore:" in text(app)
    type_text(app, "sdb")
    press(app, "enter")
    screen = text(app)
    assert "the plan for sda" in screen
    assert "You typed 'sdb', not 'sda': nothing was written." in screen
    assert not any(c[0] == "restore" for c in backend.calls)


def test_right_name_starts_the_restore_and_progress_arrives_through_the_pipe(app, backend):
    backend.gate = threading.Event()
    to_confirm(app)
    type_text(app, "sda")
    press(app, "enter")
    assert "Restore: writing" in text(app)
    assert backend.calls[-1] == ("restore", "/media/sdb1", "web01-2024-05-01", "/dev/sda")
    # nothing reaches the widgets until the main loop's pipe handler runs
    app.runner.wait(0.5)
    assert "Starting..." in text(app)
    app.on_pipe(b"!")
    screen = text(app)
    assert "Phase: restore" in screen
    assert "100 %" in screen  # the last area's bar, all events coalesced to the newest
    backend.gate.set()
    finish_job(app)
    assert "Restore: done" in text(app)


def test_progress_screen_shows_area_overall_rate_and_time_left(app):
    app.state = None
    from rescue.tui.views import ProgressView

    class C:
        def back(self):
            pass

    view = ProgressView(C(), "Restore: writing", "Restoring x onto sda.")
    app.show(view)
    view.update(Progress("restore", "p2 (ext4)", 256 << 20, 1024 << 20, 1 << 30, 4 << 30, 85.3e6, 63))
    screen = text(app)
    assert "Area: p2 (ext4)  (256.0 MiB of 1.0 GiB)" in screen
    assert "25 %" in screen
    assert "1.0 GiB of 4.0 GiB   85.3 MB/s   time left 01:03" in screen
    assert_fits(app)
    view.show_waiting("waiting for nas.lan (12 s)")  # what the app's one-second alarm does meanwhile
    assert "1.0 GiB of 4.0 GiB   85.3 MB/s   waiting for nas.lan (12 s)" in text(app)
    view.show_waiting(None)
    assert "time left 01:03" in text(app)


def test_esc_during_restore_asks_and_says_what_a_cancelled_drive_is_left_as(app, backend):
    backend.gate = threading.Event()
    to_confirm(app)
    type_text(app, "sda")
    press(app, "enter")
    press(app, "esc")
    assert dialog_open(app)
    assert "sda will be left partially written and will not boot; restore again to fix." in dialog_text(app)
    press(app, "esc")  # Esc in the dialog = keep going
    assert not dialog_open(app) and not app.runner.cancel.is_set()
    press(app, "esc", "enter")  # Enter on the dialog's default answer = keep going too
    assert not dialog_open(app) and not app.runner.cancel.is_set()
    press(app, "esc")
    press(app, "left", "enter")  # "Cancel it"
    assert app.runner.cancel.is_set()
    backend.gate.set()
    finish_job(app)
    assert "Restore cancelled. sda will be left partially written" in dialog_text(app)
    press(app, "enter")
    assert "Main menu" in text(app)


def test_whole_restore_ends_at_done_with_verification_and_log(app, backend):
    to_confirm(app)
    type_text(app, "sda")
    press(app, "enter")
    finish_job(app)
    screen = flat(app)
    assert "web01-2024-05-01 was restored onto sda" in screen
    assert "Verification: passed" in screen
    assert "The log was saved to /run/rescue/restore-web01-2024-05-01.log" in screen
    assert_fits(app)
    press(app, "esc")
    assert "Main menu" in text(app)


def test_a_boot_fix_that_failed_after_writing_is_shown_on_the_done_screen(app, backend):
    backend.data["simulate"]["restore_warnings"] = [
        "the drive is written, but adding the removable-media EFI loader failed: disk full"
    ]
    to_confirm(app)
    type_text(app, "sda")
    press(app, "enter")
    finish_job(app)
    screen = flat(app)
    assert "Verification: passed" in screen
    assert "Warning: the drive is written, but adding the removable-media EFI loader failed: disk full" in screen
    assert_fits(app)

"""The browse flow against the in-memory machine: repository, image, partition, a lazily read
file tree (mounted on entering, unmounted on every way out), destination, copy, done."""

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

from rescue.errors import FilesystemError, IntegrityError


def to_parts(app):
    select(app, "Browse")
    select(app, "/media/sdb1")
    select(app, "web01")


def to_tree(app):
    to_parts(app)
    select(app, "partition 2")


def row(app, name):
    return next(l for l in text(app).splitlines() if f" {name}" in l and "[" in l)


def test_partitions_come_from_the_manifest_swap_is_refused_fat_is_copied_whole(app):
    to_parts(app)
    screen = text(app)
    assert "Browse: choose a partition" in screen and "3/7" in screen.splitlines()[0]
    assert "partition 2    100.0 GiB  ext4     root" in screen and "10.0 GiB used" in screen
    assert "not offered: swap space holds no files" in screen
    assert "FAT: no file list here (no FAT driver); the whole partition is copied" in screen
    for _ in range(4):
        assert "partition 3" not in focused_line(app)
        press(app, "down")


def test_tree_mounts_on_entry_lists_only_opened_folders_and_unmounts_on_back(app, backend):
    to_tree(app)
    assert backend.calls == [("mount", 2), ("list", "/")]
    screen = text(app)
    assert "Browse: files in partition 2" in screen
    assert focused_line(app).startswith("> [ ] + etc/")
    assert "vmlinuz -> boot/vmlinuz-6.1.0-21-amd64" in screen
    press(app, "down", "enter")  # open home/
    assert backend.calls[-1] == ("list", "/home")
    assert "[ ] - home/" in row(app, "home/")
    assert "[ ]   + alice/" in row(app, "alice/")
    press(app, "down", "right", "down", "down")  # open alice/, onto photos/ ... thesis.odt
    assert "thesis.odt" in focused_line(app)
    assert "3.0 MiB  2024-05-01" in focused_line(app)
    press(app, "up", "up", "left")  # close alice/ again: no new listing
    listed = [c for c in backend.calls if c[0] == "list"]
    assert listed == [("list", "/"), ("list", "/home"), ("list", "/home/alice")]
    assert "thesis.odt" not in text(app)
    press(app, "enter")  # reopen: from memory, not read again
    assert [c for c in backend.calls if c[0] == "list"] == listed
    press(app, "esc")
    assert "Browse: choose a partition" in text(app)
    assert backend.calls[-1] == ("umount", 2) and backend.mounted == []
    assert_fits(app)


def test_space_marks_several_items_and_a_folder_covers_what_is_inside(app, backend):
    to_tree(app)
    press(app, "enter", "down", "down", " ")  # etc/ open; mark /etc/fstab
    assert row(app, "fstab").startswith(" > [x]")
    press(app, "down", "down", " ")  # mark home/
    press(app, "enter", "down")  # open home/, onto alice/
    assert focused_line(app).startswith("> [+]"), "inside a marked folder"
    press(app, " ")
    assert "/home/alice is copied with the marked folder /home." in text(app)
    press(app, "up", " ")  # unmark home/
    assert "[ ] - home/" in row(app, "home/")
    press(app, " ")
    assert "Marked 2: /etc/fstab, /home" in text(app)
    click(app, "Copy marked")
    assert "Copy 2 marked item(s) from partition 2 of web01-2024-05-01." in text(app)


def test_nothing_marked_stays_on_the_tree_with_a_message(app, backend):
    to_tree(app)
    click(app, "Copy marked")
    assert "Mark at least one file or folder first (Space)." in text(app)
    assert "files in partition 2" in text(app)


def test_destination_must_exist_be_writable_and_not_overwrite(app, backend):
    to_tree(app)
    press(app, " ")  # etc/
    click(app, "Copy marked")
    focus_field(app)
    type_text(app, "/nowhere")
    press(app, "enter")
    assert "Cannot copy into /nowhere: /nowhere is not a directory" in flat(app)
    app.view.edit.set_edit_text("/mnt/big")
    press(app, "enter")
    assert "Cannot copy into /mnt/big: /mnt/big/etc already exists" in flat(app)
    assert not any(c[0] == "copy" for c in backend.calls)
    press(app, "esc")  # back to the tree: still mounted, still marked
    assert backend.mounted and "[x] + etc/" in text(app)


def test_whole_copy_reports_progress_and_unmounts_before_done(app, backend):
    backend.gate = threading.Event()
    to_tree(app)
    press(app, "down", " ", "down", " ")  # home/, srv/
    click(app, "Copy marked")
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    assert "Browse: copying" in text(app)
    app.runner.wait(0.3)
    app.on_pipe(b"!")
    assert "Phase: copy" in text(app)
    backend.gate.set()
    finish_job(app)
    assert ("copy", 2, ["/home", "/srv"], "/mnt/big") in backend.calls, backend.calls
    assert backend.calls[-1] == ("umount", 2) and backend.mounted == []
    words = flat(app)
    assert "Copied from web01-2024-05-01, partition 2, into /mnt/big: home srv 3 file(s)" in words
    assert "3 file(s), 5.0 MiB" in words and "Permissions, owners and times were kept." in words
    assert "The partition was unmounted" in words
    assert_fits(app)
    press(app, "esc")
    assert "Main menu" in text(app)


def test_fat_partition_is_copied_whole_into_a_new_folder(app, backend):
    to_parts(app)
    select(app, "partition 1")
    words = flat(app)
    assert "Partition 1 is a FAT partition (vfat, 512.0 MiB, EFI)." in words
    assert "into a new folder web01-2024-05-01-p1 inside the folder you choose next" in words
    press(app, "enter")  # Copy whole partition... has the focus
    assert "Copy the whole partition from partition 1" in flat(app)
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    finish_job(app)
    assert ("copy", 1, ["/"], "/mnt/big") in backend.calls
    assert "  web01-2024-05-01-p1" in text(app)
    assert "Times were kept (FAT has no owners or permissions)." in flat(app)


def test_mount_failure_is_shown_and_the_partition_screen_stays(app, backend):
    backend.fail["browse_open"] = FilesystemError("mounting p2 (ext4) failed: wrong fs type, bad superblock")
    to_tree(app)
    assert "mounting p2 (ext4) failed: wrong fs type, bad superblock" in dialog_text(app)
    press(app, "enter")
    assert "Browse: choose a partition" in text(app) and backend.mounted == []


def test_listing_failure_on_entry_unmounts_again(app, backend):
    backend.fail["browse_list"] = FilesystemError("cannot read folder /: Input/output error")
    to_tree(app)
    assert "cannot read folder /: Input/output error" in dialog_text(app)
    assert backend.calls[-1] == ("umount", 2) and backend.mounted == []
    press(app, "enter")
    assert "Browse: choose a partition" in text(app)


def test_listing_failure_inside_the_tree_keeps_the_tree(app, backend):
    to_tree(app)
    backend.fail["browse_list"] = FilesystemError("cannot read folder /etc: Input/output error")
    press(app, "enter")
    assert "cannot read folder /etc: Input/output error" in dialog_text(app)
    press(app, "enter")
    assert "[ ] + etc/" in text(app) and backend.mounted


def test_copy_error_unmounts_and_returns_to_the_menu(app, backend):
    backend.fail["copy_files"] = IntegrityError("2 file(s) could not be read (the image is damaged there)")
    to_tree(app)
    press(app, "down", "down", " ")  # srv/
    click(app, "Copy marked")
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    finish_job(app)
    assert "2 file(s) could not be read" in dialog_text(app)
    assert backend.mounted == []
    press(app, "enter")
    assert "Main menu" in text(app)


def test_cancelled_copy_unmounts(app, backend):
    backend.gate = threading.Event()
    to_tree(app)
    press(app, "down", "down", " ")  # srv/
    click(app, "Copy marked")
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    press(app, "esc")
    assert "What was copied so far stays in /mnt/big" in dialog_text(app)
    press(app, "left", "enter")
    backend.gate.set()
    finish_job(app)
    assert "Copy cancelled." in dialog_text(app) and backend.mounted == []


def test_leaving_for_the_main_menu_or_quitting_unmounts(app, backend):
    to_tree(app)
    assert backend.mounted
    app.main_menu()  # what every way back to the menu calls (errors, done, cancel)
    assert backend.mounted == [] and backend.calls[-1] == ("umount", 2)
    to_tree(app)
    app.close_state()  # what App.run does when the wizard exits
    assert backend.mounted == []
    assert not dialog_open(app)

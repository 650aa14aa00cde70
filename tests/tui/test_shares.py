"""Images on another computer, in the wizard over a recorded machine: the SMB and NFS forms
of Restore, Capture and Browse; a failure comes back to the form in words with what was
typed (never the password); a share chosen as a destination is mounted read-write for the
job only. The recorded machine answers for the shares its "simulate" part describes; the
real mounts are tested in QEMU (tests/vm)."""

from helpers import click, finish_job, flat, focus_field, press, select, text, type_text

SHARE = {"size": 4 << 40, "free": 3 << 40, "repos": ["/media/sdb1"]}  # the record's repository, reached by SMB


def fill_smb(app, server="nas", share="images", user="alice", password="secret", domain=""):
    for value in (server, share, user, password, domain):
        type_text(app, value)
        press(app, "down")
    click(app, "Connect")
    finish_job(app)


def test_restore_from_a_windows_share(app, backend):
    backend.data["simulate"]["shares"] = {"//nas/images": SHARE}
    select(app, "Restore")
    select(app, "Windows share (SMB)")
    assert "Restore: images on another computer" in text(app)
    fill_smb(app)
    assert "Restore: choose an image" in text(app), text(app)
    assert backend.log == ["mount //nas/images read-only"]
    assert "web01-2024-05-01" in text(app)


def test_a_wrong_password_comes_back_to_the_form_in_words(app, backend):
    backend.data["simulate"]["shares"] = {"//nas/images": {"error": "access denied (wrong user name or password?)"}}
    select(app, "Restore")
    select(app, "Windows share (SMB)")
    fill_smb(app, password="hunter2")
    screen = flat(app)
    assert "//nas/images: access denied (wrong user name or password?)." in screen
    assert "Server (name or address): nas" in screen and "User (empty: guest): alice" in screen
    assert "hunter2" not in screen and "*******" not in screen  # typed again, never shown


def test_a_server_nobody_answers_for_says_no_route(app):
    select(app, "Restore")
    select(app, "NFS export")
    type_text(app, "10.9.9.9:/srv/images")
    press(app, "enter")
    finish_job(app)
    assert "10.9.9.9:/srv/images: no route to host" in flat(app)
    assert "Export (server:/path): 10.9.9.9:/srv/images" in flat(app)


def test_nonsense_is_refused_before_anything_is_mounted(app, backend):
    select(app, "Restore")
    select(app, "NFS export")
    type_text(app, "just words")
    press(app, "enter")
    assert "server:/path" in flat(app) and backend.log == []


def test_a_share_without_a_repository_says_so(app, backend):
    backend.data["simulate"]["shares"] = {"nas:/export": {"size": 1 << 40, "free": 1 << 39, "repos": []}}
    select(app, "Browse")
    select(app, "NFS export")
    type_text(app, "nas:/export")
    press(app, "enter")
    finish_job(app)
    assert "Nas:/export holds no image repository" in flat(app) and "where are the images" in text(app)


def test_capture_onto_a_share_mounts_it_read_write_for_the_job_only(app, backend):
    backend.data["simulate"]["shares"] = {"//nas/backups": {"size": 4 << 40, "free": 3 << 40, "repos": []}}
    select(app, "Capture")
    select(app, "nvme0n1")
    select(app, "Windows share (SMB)")
    fill_smb(app, share="backups")
    assert "name the image" in text(app) and "a new folder rescue-images on //nas/backups" in flat(app)
    press(app, "enter")
    finish_job(app)
    assert "Capture: done" in text(app), text(app)
    assert backend.log[0] == "mount //nas/backups read-only"
    assert backend.log[1] == "mount //nas/backups read-write at /run/rescue/dest/backups"
    assert backend.log[-1] == "sync and unmount /run/rescue/dest/backups"


def test_a_full_share_is_refused_as_a_destination(app, backend):
    backend.data["simulate"]["shares"] = {"//nas/full": {"size": 1 << 40, "free": 1 << 30, "repos": []}}
    select(app, "Capture")
    select(app, "nvme0n1")
    select(app, "Windows share (SMB)")
    fill_smb(app, share="full")
    assert "Cannot store the image on //nas/full: not enough free space: needs up to 50.0 GiB" in flat(app)
    assert "where to store the image" in text(app)


def test_browse_copies_onto_a_filesystem_from_the_list(app, backend):
    select(app, "Browse")
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "partition 2")
    press(app, " ")
    click(app, "Copy marked")
    assert "Copy /etc from partition 2 of web01-2024-05-01." in flat(app)
    select(app, "/dev/sda2 ")
    finish_job(app)
    screen = flat(app)
    assert "into rescue-files/web01-2024-05-01-p2 on /dev/sda2 (old-root):" in screen
    assert "The copy's drive was unmounted: it can be unplugged." in screen
    copy = next(c for c in backend.calls if c[0] == "copy")
    assert copy[3] == "/run/rescue/dest/sda2/rescue-files/web01-2024-05-01-p2"


def test_browse_cannot_copy_onto_a_blank_drive(app):
    select(app, "Browse")
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "partition 2")
    press(app, " ")
    click(app, "Copy marked")
    assert "not offered: a blank drive: prepare it for images from Capture first" in flat(app)
    focus_field(app)

"""Encrypted repositories in the wizard, over the recorded machine: the password is asked
(hidden) when an encrypted repository is opened, a wrong one keeps the person there in
words, and a capture that makes a new repository offers "Encrypt with a password". The
recorded machine's "simulate": {"encrypted": {path: password}} stands for the repositories'
key files (Engine.repository_encrypted, enter_password)."""

from helpers import assert_fits, finish_job, flat, focus_field, press, select, text, type_text

SECRET = "Tr0ub4dor&3"


def encrypt(backend, path="/media/sdb1", password=SECRET):
    backend.machine.simulate.setdefault("encrypted", {})[path] = password


def focus(app, widget, limit=20):
    """Move the focus down to `widget` (a field of the current screen)."""
    for _ in range(limit):
        if app.view.walker[app.view.walker.focus].base_widget is widget:
            return
        press(app, "down")
    raise AssertionError(f"never focused on:\n{text(app)}")


def test_restore_asks_the_password_hidden_and_a_wrong_one_stays(app, backend):
    encrypt(backend)
    select(app, "Restore")
    select(app, "/media/sdb1")
    screen = text(app)
    assert "Restore: the repository's password" in screen and "2/8" in screen.splitlines()[0]
    assert "The repository /media/sdb1 is encrypted." in screen
    assert_fits(app)
    focus_field(app)
    type_text(app, "not-it")
    assert "not-it" not in text(app) and "Password: ******" in text(app)
    press(app, "enter")
    assert "/media/sdb1: wrong password (no key file opens with it)." in flat(app)
    assert "Password: *" not in text(app)  # the field is empty again: nothing typed is kept
    focus_field(app)
    type_text(app, SECRET)
    assert SECRET not in text(app)
    press(app, "enter")
    assert "Restore: choose an image" in text(app) and "web01" in text(app)
    press(app, "esc")
    assert "Restore: the repository's password" in text(app)  # back goes through it


def test_an_unencrypted_repository_asks_nothing(app):
    select(app, "Restore")
    select(app, "/media/sdb1")
    assert "Restore: choose an image" in text(app) and "2/7" in text(app).splitlines()[0]


def test_browse_asks_the_password_too(app, backend):
    encrypt(backend)
    select(app, "Browse")
    select(app, "/media/sdb1")
    assert "Browse: the repository's password" in text(app)
    focus_field(app)
    type_text(app, SECRET)
    press(app, "enter")
    assert "Browse: choose an image" in text(app)


def test_capture_into_a_new_repository_offers_encryption(app, backend):
    select(app, "Capture")
    select(app, "nvme0n1")
    select(app, "/dev/sda2")  # a new repository folder on an empty filesystem
    screen = text(app)
    assert "Capture: name the image" in screen and "[ ] Encrypt with a password" in screen
    assert_fits(app)
    app.view.edit.set_edit_text("laptop-secret")
    focus(app, app.view.encrypt)
    press(app, " ")
    assert "[X] Encrypt with a password" in text(app)
    focus(app, app.view.password)
    type_text(app, SECRET)
    focus(app, app.view.again)
    type_text(app, SECRET + "x")
    press(app, "enter")
    assert "The two passwords differ: type them again." in flat(app)
    assert SECRET not in text(app)
    app.view.again.set_edit_text("")
    type_text(app, SECRET)
    press(app, "enter")
    assert "Capture: reading and verifying" in text(app)
    finish_job(app)
    assert "was captured as laptop-secret" in flat(app)
    encrypted = backend.machine.simulate["encrypted"]
    assert list(encrypted.values()) == [SECRET] and list(encrypted)[0].endswith("/rescue-images")
    assert [c[0] for c in backend.calls] == ["capture", "verify"]


def test_capture_without_encryption_makes_no_key(app, backend):
    select(app, "Capture")
    select(app, "nvme0n1")
    select(app, "/dev/sda2")
    app.view.edit.set_edit_text("laptop-plain")
    press(app, "enter")
    finish_job(app)
    assert "was captured as laptop-plain" in flat(app)
    assert not backend.machine.simulate.get("encrypted")


def test_capture_into_an_encrypted_repository_asks_its_password(app, backend):
    encrypt(backend)
    select(app, "Capture")
    select(app, "nvme0n1")
    select(app, "/dev/sdb1")
    assert "Capture: the repository's password" in text(app)
    focus_field(app)
    type_text(app, SECRET)
    press(app, "enter")
    screen = text(app)
    assert "Capture: name the image" in screen and "Encrypt with a password" not in screen  # it is a repository

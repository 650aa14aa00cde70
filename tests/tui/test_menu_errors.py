"""Main menu actions, exit codes, errors in words, and the step engine's rules."""

import os
import subprocess
import sys

import pytest
from helpers import click, dialog_open, dialog_text, press, select, text

from rescue.errors import DeviceError, RepoError
from rescue.tui import app as appmod
from rescue.tui.app import App
from rescue.tui.wizard import Step, Wizard


def test_shell_exits_with_the_launcher_shell_code(app):
    select(app, "Shell")
    assert app.exit_code == appmod.EXIT_SHELL == 0


def test_reboot_asks_first_and_no_does_nothing(app, backend):
    select(app, "Reboot")
    assert "Restart the computer now?" in dialog_text(app)
    press(app, "esc")
    assert backend.calls == [] and app.exit_code is None
    assert not dialog_open(app)


def test_reboot_and_power_off_go_through_the_backend(app, backend):
    select(app, "Reboot")
    press(app, "left", "enter")
    assert backend.calls == [("reboot",)] and app.exit_code == appmod.EXIT_POWER
    app.exit_code = None
    app.main_menu()
    select(app, "Power off")
    click(app, "Power off")
    assert backend.log[-1] == "systemctl poweroff" and app.exit_code == appmod.EXIT_POWER


def test_failed_reboot_is_shown_in_words(app, backend):
    backend.fail["reboot"] = DeviceError("systemctl failed: Failed to connect to bus")
    select(app, "Reboot")
    click(app, "Reboot")
    assert "systemctl failed: Failed to connect to bus" in dialog_text(app)
    assert app.exit_code is None


def test_repository_error_is_shown_and_the_repository_screen_stays(app, backend):
    backend.fail["list_images"] = RepoError("/media/sdb1/rescue-repo.json: unknown format version 9")
    select(app, "Restore")
    select(app, "/media/sdb1")
    assert "unknown format version 9" in dialog_text(app)
    press(app, "enter")
    assert "Restore: where are the images?" in text(app)


def test_unexpected_error_is_one_line_on_screen_and_the_traceback_goes_to_the_log(app, backend, tmp_path):
    backend.fail["list_drives"] = KeyError("ID_SERIAL")
    select(app, "Capture")
    words = dialog_text(app)
    assert words.startswith("Error Unexpected error: KeyError: 'ID_SERIAL'")
    assert "Traceback" not in text(app)
    log = (tmp_path / "wizard.log").read_text()
    assert "Traceback (most recent call last)" in log and "KeyError: 'ID_SERIAL'" in log
    press(app, "enter")
    assert "Main menu" in text(app)  # the capture flow never started: the menu is still there


def test_drive_vanishing_during_restore_returns_to_the_menu_with_the_reason(app, backend):
    backend.fail["restore"] = DeviceError("/dev/sda vanished (write error at byte 1048576)")
    select(app, "Restore")
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "sda")
    click(app, "Continue")
    app.view.edit.set_edit_text("sda")
    press(app, "enter")
    app.runner.wait(10)
    app.on_pipe(b"!")
    assert "/dev/sda vanished (write error at byte 1048576)" in dialog_text(app)
    press(app, "enter")
    assert "Main menu" in text(app)


def test_plan_error_keeps_the_target_screen(app, backend):
    backend.fail["plan_restore"] = DeviceError("/dev/sda cannot be read: Input/output error")
    select(app, "Restore")
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "sda")
    assert "cannot be read: Input/output error" in dialog_text(app)
    press(app, "enter")
    assert "choose the target drive" in text(app)


def test_repository_given_on_the_command_line_skips_its_screen(backend, tmp_path):
    a = App(backend, preset_repo="/media/sdb1", log_dir=str(tmp_path))
    a.main_menu()
    select(a, "Restore")
    assert "Restore: choose an image" in text(a) and "1/6" in text(a).splitlines()[0]
    press(a, "esc")
    assert "Main menu" in text(a)


def test_tab_moves_from_the_list_to_the_buttons_and_back(app):
    select(app, "Restore")
    select(app, "/media/sdb1")
    press(app, "tab", "enter")  # the only button: Back
    assert "where are the images?" in text(app)
    press(app, "tab", "tab")  # list -> buttons -> list
    press(app, "enter")
    assert "choose an image" in text(app)


class Rec(Step):
    def __init__(self, app, name, log, applies=True, fail=False):
        super().__init__(app)
        self.name, self.log, self._applies, self.fail = name, log, applies, fail

    def applies(self):
        return self._applies

    def start(self):
        if self.fail:
            raise RepoError("cannot start")
        self.log.append(self.name)


def test_wizard_walks_forward_and_back_skipping_steps_that_do_not_apply():
    log, left = [], []
    w = Wizard(
        [Rec(None, "a", log), Rec(None, "b", log, applies=False), Rec(None, "c", log)],
        on_leave=lambda: left.append(True),
    )
    w.begin()
    w.next()
    assert log == ["a", "c"] and w.position(w.current) == "2/2"
    w.back()
    assert log == ["a", "c", "a"]
    w.back()
    assert left == [True]


def test_wizard_stays_on_the_step_whose_successor_fails_to_start():
    log = []
    w = Wizard([Rec(None, "a", log), Rec(None, "b", log, fail=True)], on_leave=lambda: None)
    w.begin()
    with pytest.raises(RepoError):
        w.next()
    assert w.current.name == "a"


def test_main_refuses_bad_arguments_and_a_missing_terminal():
    assert appmod.main(["--no-such-option"]) == appmod.EXIT_USAGE
    # no terminal: run in a child whose stdin is not a tty
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from rescue.tui.app import main; sys.exit(main([]))"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(appmod.__file__),
    )
    assert proc.returncode == appmod.EXIT_USAGE
    assert "needs a terminal" in proc.stderr


def test_the_wizard_imports_without_udev_or_fuse():
    """The wizard starts fast and anywhere: pyudev and llfuse are loaded when first needed,
    not when the wizard (or the engine under it) is imported."""
    code = (
        "import sys, rescue.tui.app, rescue.engine; "
        "bad = [m for m in sys.modules if m.startswith(('pyudev', 'llfuse'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

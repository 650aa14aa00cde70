"""The real main loop on a pseudo-terminal (80x24), against the recorded demo machine:
keys in, screens out, progress through watch_pipe, and the launcher's exit code."""

import os
import sys

import pexpect
import pytest

HERE = os.path.dirname(__file__)
MACHINE = os.path.join(HERE, os.pardir, "machines", "two-disks-and-usb.json")
DOWN, ENTER, TAB = "\x1b[B", "\r", "\t"


@pytest.fixture
def wizard(tmp_path):
    env = dict(os.environ, RESCUE_MACHINE=MACHINE, RESCUE_LOG_DIR=str(tmp_path), TERM="vt100", LANG="C.UTF-8")
    child = pexpect.spawn(
        sys.executable,
        ["-c", "import sys; from rescue.tui.app import main; sys.exit(main([]))"],
        env=env,
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=20,
    )
    yield child
    if child.isalive():
        child.terminate(force=True)


def test_dry_run_restore_end_to_end_then_shell_exit_code(wizard):
    c = wizard
    c.expect("rescue - disk imaging")
    c.expect("Power off")
    c.send(ENTER)  # Restore
    c.expect("where are the images")
    c.send(ENTER)  # /media/sdb1
    c.expect("choose an image")
    c.send(ENTER)  # web01-2024-05-01
    c.expect("choose the target drive")
    c.send(ENTER)  # sda
    c.expect("auto chose proportional")
    c.send(ENTER)  # Continue (it has the focus)
    c.expect("Type sda to erase it")
    c.send("sda" + ENTER)
    c.expect("MB/s")  # progress drawn from the worker via watch_pipe
    c.expect("Restore: done", timeout=30)
    c.expect("Verification: passed")
    c.send("\x1b")  # Esc: main menu
    c.expect("What do you want to do")
    for _ in range(4):
        c.send(DOWN)
    c.send(ENTER)  # Shell
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0

"""The pure parts of rescue.hw.leftovers, without root: telling a live owner from a dead one
or from a later process with the same pid (start time, boot id), the partly-written
marker's key (the same drive under another name, never another drive), the one line a
command prints about what it cleared, and the drive line that shows a partly written
drive. The registry itself is exercised on real loop devices in
tests/system/test_leftovers.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rescue.engine import DriveInfo
from rescue.hw import leftovers
from rescue.hw.devices import Drive
from rescue.hw.leftovers import Cleared, DriveIdentity, Marker, Owner, parse_stat
from rescue.tui import views

# A real line, and one whose command name holds spaces and parentheses.
STAT = "4242 (python3) S 1 4242 4242 0 -1 4194560 1 0 0 0 2 1 0 0 20 0 1 0 987654 1 2 3"
ODD = "77 (a) b (c)) Z 1 77 77 0 -1 4194560 1 0 0 0 2 1 0 0 20 0 1 0 55 1 2"


def test_stat_fields_come_after_the_last_parenthesis():
    assert parse_stat(STAT) == ("S", 987654)
    assert parse_stat(ODD) == ("Z", 55)


@pytest.mark.parametrize("text", ["", "4242 python3 S 1", "4242 (x) S 1 2 3", "1 (x) S " + "y " * 25])
def test_a_stat_line_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError):
        parse_stat(text)


def test_this_process_is_alive_and_a_later_one_with_its_pid_is_not_it():
    me = Owner.me()
    assert me.pid == os.getpid() and me.alive()
    assert not Owner(me.pid, me.start + 1, me.boot).alive()  # the same pid, started later
    assert not Owner(me.pid, me.start, "another-boot").alive()
    assert Owner(me.pid, me.start, "").alive()  # boot unknown: the start time decides


def test_a_dead_process_and_a_zombie_are_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = Owner.of(child.pid)
    assert owner is not None and owner.alive()
    child.kill()
    deadline = time.monotonic() + 10
    while owner.alive() and time.monotonic() < deadline:  # killed, not yet reaped: a zombie
        time.sleep(0.01)
    assert not owner.alive() and Owner.of(child.pid) is None
    child.wait()
    assert not owner.alive()


def test_owners_survive_json_and_bad_records_are_refused():
    me = Owner.me()
    assert Owner.from_json(me.to_json()) == me
    for bad in (None, [], {"pid": "1", "start": 2}, {"pid": 1}, {"pid": 1, "start": 2, "boot": 3}):
        with pytest.raises(ValueError):
            Owner.from_json(bad)


def drive(**kw) -> Drive:
    base = {"name": "sdb", "path": "/dev/sdb", "model": "Disk", "serial": "S1", "size": 1 << 30, "devnum": 2064}
    return Drive(**{**base, **kw})


def key(**kw) -> str:
    return DriveIdentity.of_drive(drive(**kw)).key()


def test_the_marker_key_is_the_drive_under_any_name():
    assert key() == key(name="sdc", path="/dev/sdc", devnum=2080)  # moved to another port
    loop = {"serial": None, "model": "Loop device", "backing_file": "/tmp/t.img", "bus": "loop"}
    assert key(**loop, name="loop3", devnum=1795) == key(**loop, name="loop7", devnum=1799)
    assert key(**{**loop, "backing_file": "/tmp/t.img (deleted)"}) == key(**loop)
    bare = {"serial": None, "model": None}
    assert key(**bare) == key(**bare, name="sdx", path="/dev/sdx")  # same device number


def test_the_marker_key_tells_other_drives_apart():
    assert key() != key(serial="S2")
    assert key() != key(size=2 << 30)
    assert key() != key(model="Other")
    loop = {"serial": None, "backing_file": "/tmp/t.img"}
    assert key(**loop) != key(**{**loop, "backing_file": "/tmp/u.img"})
    assert key(serial=None, model=None) != key(serial=None, model=None, devnum=2080)
    assert DriveIdentity("/x/a.img", "a.img").key() != DriveIdentity("/x/b.img", "b.img").key()


def test_one_line_names_devices_and_mounts_and_counts_files():
    c = Cleared()
    assert not c and c.line() == ""
    c.add(812, "loop device /dev/loop3")
    c.add(812, "mount /run/rescue/splitdev-1/mnt")
    c.add(812, "#scratch file")
    assert c.line() == (
        "cleared leftovers of an interrupted run (pid 812): loop device /dev/loop3, "
        "mount /run/rescue/splitdev-1/mnt, 1 scratch file"
    )
    c.add(900, "#scratch file")
    c.add(900, "#temporary directory")
    c.left.append("loop device /dev/loop5 (attached to something else now)")
    line = c.line()
    assert line.startswith("cleared leftovers of interrupted runs (pids 812, 900): ")
    assert "2 scratch files, 1 temporary directory" in line
    assert line.endswith("; left alone (no longer ours): loop device /dev/loop5 (attached to something else now)")
    assert "\n" not in line


def marker(**kw) -> Marker:
    ident = DriveIdentity("/dev/sdb", "sdb", "Disk", "S1", 1 << 30, 2064)
    base = {
        "key": ident.key(),
        "target": "/dev/sdb",
        "identity": ident,
        "kind": "restore",
        "source": "web01",
        "started": "2024-05-01 12:00:03",
        "log": "",
        "owner": Owner(1, 1, "gone"),  # never alive: another boot
    }
    return Marker(**{**base, **kw})


def test_the_words_for_a_partly_written_drive():
    assert leftovers.partly_written_words("/dev/sdb", "clone") == (
        "/dev/sdb is partly written and will not boot: clone onto it again before using it"
    )
    assert marker().note() == "restore of web01 interrupted (started 2024-05-01 12:00:03)"
    assert marker(state="interrupted", ended="2024-05-01 12:07:00").note() == (
        "restore of web01 interrupted at 2024-05-01 12:07:00"
    )
    failed = marker(state="failed", ended="2024-05-01 12:07:00")
    assert failed.note() == "restore of web01 failed at 2024-05-01 12:07:00"
    running = marker(owner=Owner.me()).note()
    assert running == f"restore of web01 in progress since 2024-05-01 12:00:03 (pid {os.getpid()})"
    c = Cleared(partly=[marker()])
    assert c.line() == (
        "restore of web01 (pid 1) was interrupted: /dev/sdb is partly written and will not boot: "
        "restore onto it again before using it"
    )


def test_a_marker_survives_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "mounts"))
    m = marker()
    m.file.parent.mkdir(parents=True)
    m.save()
    assert Marker.load(m.file) == m
    assert leftovers.partly_written(drive(name="sdz", path="/dev/sdz", devnum=2200)) == m
    assert leftovers.partly_written(drive(serial="other")) is None
    m.file.write_text("{not json")
    assert Marker.load(m.file) is None


def test_a_partly_written_drive_shows_on_a_second_line_of_74_columns():
    d = DriveInfo("sdb", "/dev/sdb", "Disk", "S1", 1 << 30, "usb")
    assert "\n" not in views.drive_line(d)
    d.partly_written = "restore of " + "a-very-long-image-name-" * 4 + " interrupted at 2024-05-01 12:07:00"
    first, second = views.drive_line(d).split("\n")
    assert first == views.drive_line(DriveInfo("sdb", "/dev/sdb", "Disk", "S1", 1 << 30, "usb"))
    assert second.startswith("  PARTLY WRITTEN: restore of a-very-long") and len(second) <= 74


def test_a_killed_job_is_noted_once_and_a_vanished_loop_drive_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "mounts"))
    log = tmp_path / "restore.log"
    log.write_text("")
    image = tmp_path / "t.img"
    image.write_bytes(b"")
    loop = DriveIdentity("/dev/loop9", "loop9", "Loop device", None, 1 << 20, 1801, str(image))
    killed = marker(key=loop.key(), target="/dev/loop9", identity=loop, log=str(log))
    killed.file.parent.mkdir(parents=True)
    killed.save()
    first = leftovers.clear_leftovers()
    assert [m.key for m in first.partly] == [killed.key]
    assert "INTERRUPTED" in log.read_text() and "/dev/loop9 is partly written" in log.read_text()
    assert not leftovers.clear_leftovers()  # said once
    assert Marker.load(killed.file).state == "interrupted"
    image.unlink()  # the loop device's file is gone: so is that drive
    assert not leftovers.clear_leftovers()
    assert not killed.file.exists()

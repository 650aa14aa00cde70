"""Where images go, on real loop devices: the survey lists every filesystem with its label,
size and free space, and a blank drive as blank; a blank drive is prepared (one exFAT
partition), a capture goes into a new repository on it, mounted read-write for that job
only and unmounted after (also after an error); the image then restores. A crash while the
destination is mounted leaves nothing the next start does not clear.

This host's kernel has no exFAT driver: mount goes through exfat-fuse here, the kernel's
driver on the ISO (rescue.hw.discover.mount_type); the QEMU tests cover that one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from disks import MiB, partition_table, sh

from rescue.engine import Engine
from rescue.errors import DeviceError, RefusedError
from rescue.hw import destination, discover
from rescue.hw.leftovers import clear_leftovers
from rescue.repo.store import Repository


def mounted_at(where: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == where for line in f)


def place_of(places, device: str):
    return next(p for p in places if p.device == device)


@pytest.fixture
def source(loops):
    """A small GPT drive with one ext4 partition holding a few files."""
    disk = loops.disk("src.img", 64 * MiB)
    partition_table(disk, "label: gpt\nstart=2048, size=100000, type=linux\n")
    part = loops.partition(disk, 2048, 100000)
    sh("mkfs.ext4", "-q", "-L", "data", part)
    with loops.mounted(part) as mnt:
        (mnt / "hello.txt").write_text("hello from the source\n")
        (mnt / "random.bin").write_bytes(os.urandom(2 * MiB))
        docs = mnt / "docs"
        docs.mkdir()
        (docs / "letter.txt").write_text("private\n")
        os.chmod(docs / "letter.txt", 0o600)
        os.utime(docs / "letter.txt", (1600000000, 1600000000))
        (docs / "passwd").symlink_to("/etc/passwd")  # absolute: never followed out of the image
    return disk


def test_the_survey_names_each_filesystem_and_blank_drive(loops):
    blank = loops.disk("blank.img", 256 * MiB)
    ext4 = loops.disk("ext4.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-L", "backup", ext4)
    table_only = loops.disk("table.img", 64 * MiB)
    partition_table(table_only, "label: dos\nstart=2048, type=83\n")
    places = discover.survey(devices=[blank, ext4, table_only])
    b, e = place_of(places, blank), place_of(places, ext4)
    assert b.blank and b.size == 256 * MiB and b.free is None and b.repos == []
    assert (e.fstype, e.label, e.repos, e.mountpoint) == ("ext4", "backup", [], None)  # unmounted again
    assert 40 * MiB < e.free <= e.size <= 64 * MiB
    assert table_only not in [p.device for p in places], "a partition table is not a blank drive"
    assert not any(mounted_at(f"{discover.RUN_DIR}/{os.path.basename(d)}") for d in (blank, ext4))


def test_a_blank_drive_is_prepared_captured_onto_and_restored_from(loops, source, tmp_path):
    blank = loops.disk("stick.img", 512 * MiB)
    engine = Engine(include_loop=True)
    try:
        dests = engine.destinations(need=1)
        dest = next(d for d in dests if d.place.device == blank)
        assert dest.refusal is None and dest.place.blank
        prepared = engine.prepare_drive(dest)
        part = prepared.place.device
        assert part in (f"{blank}p1", f"{blank}1")
        assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", part).strip() == "exfat"
        assert sh("blkid", "-p", "-o", "value", "-s", "LABEL", part).strip() == destination.LABEL
        table = sh("sfdisk", "--dump", blank)
        assert "label: dos" in table and "type=7" in table
        assert prepared.place.fstype == "exfat" and prepared.repo is None and prepared.place.free > 400 * MiB

        repo = engine.open_destination(prepared)
        where = os.path.dirname(repo)
        assert repo.endswith("/" + destination.REPO_FOLDER) and mounted_at(where)
        outcome = engine.capture(source, repo, "usb-1", lambda p: None, threading.Event())
        engine.verify(repo, outcome.name, lambda p: None, threading.Event())
        engine.close_destination(repo)
        assert not mounted_at(where) and not os.path.exists(where), "the drive must be safe to unplug"

        # found again as any repository is (read-only), and restored from
        again = next(d for d in engine.destinations(need=1) if d.place.device == part)
        assert again.repo is not None and again.place.read_only
        assert [im.name for im in engine.list_images(again.repo)] == ["usb-1"]
    finally:
        engine.close()
    assert not mounted_at(os.path.join(discover.RUN_DIR, os.path.basename(part)))


def test_files_copied_onto_an_exfat_stick_keep_their_bytes_and_times(loops, source, tmp_path):
    """A stick has no owners, permissions or symbolic links: the files and their times
    arrive, the link is left out and counted (not followed to the rescue system's file)."""
    stick = loops.disk("copy-stick.img", 256 * MiB)
    repo = str(tmp_path / "repo")
    engine = Engine(include_loop=True)
    try:
        engine.capture(source, repo, "src", lambda p: None, threading.Event())
        blank = next(d for d in engine.destinations() if d.place.device == stick)
        prepared = engine.prepare_drive(blank)
        part = next(p for p in engine.image_partitions(repo, "src") if p.number == 1)
        session = engine.browse_open(repo, "src", part)
        try:
            folder = engine.open_destination(prepared, folder="rescue-files/src-p1")
            try:
                out = engine.copy_files(session, ["/docs"], folder, lambda p: None, threading.Event())
                letter = os.path.join(folder, "docs", "letter.txt")
                assert open(letter).read() == "private\n" and int(os.stat(letter).st_mtime) == 1600000000
                assert not os.path.lexists(os.path.join(folder, "docs", "passwd"))
            finally:
                engine.close_destination(folder)
        finally:
            engine.browse_close(session)
    finally:
        engine.close()
    assert (out.files, out.owners_kept, out.links_left) == (1, False, 1), out


def test_a_repository_found_for_browsing_can_take_a_copy(loops, source):
    """Browse mounts the repositories it finds read-only and keeps them mounted; the copy
    destination list then offers that drive as well (its read-only mount is ours)."""
    dev = loops.disk("found.img", 128 * MiB)
    sh("mkfs.ext4", "-q", dev)
    with loops.mounted(dev) as mnt:
        Repository.create(mnt / "rescue-images")
    engine = Engine(include_loop=True)
    try:
        [found] = [r for r in engine.find_repositories() if r.drive == os.path.basename(dev)]
        assert found.read_only
        dest = next(d for d in engine.destinations() if d.place.device == dev)
        assert dest.refusal is None and dest.place.mounted_by_us, dest
        folder = engine.open_destination(dest, folder="rescue-files/x")
        assert os.path.isdir(folder) and mounted_at(os.path.dirname(os.path.dirname(folder)))
        engine.close_destination(folder)
    finally:
        engine.close()
    assert not mounted_at(os.path.dirname(found.path))


def test_the_destination_is_unmounted_after_a_failed_job(loops):
    dev = loops.disk("ext4dest.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    engine = Engine(include_loop=True)
    try:
        dest = next(d for d in engine.destinations(need=1) if d.place.device == dev)
        repo = engine.open_destination(dest)
        where = os.path.dirname(repo)
        assert Repository.open(repo).path
        with pytest.raises(DeviceError, match="does not exist"):
            engine.capture("/nonexistent-drive", repo, "x", lambda p: None, threading.Event())
    finally:
        engine.close()  # what the wizard does when a job ends in an error
    assert not mounted_at(where)


def test_a_refused_place_is_never_mounted_read_write(loops):
    dev = loops.disk("iso.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    place = discover.survey(devices=[dev])[0]
    place.fstype = "iso9660"  # what rescue does not write
    with pytest.raises(RefusedError, match="rescue does not write to iso9660 filesystems"):
        destination.open_for_writing(place)
    assert not mounted_at(f"{destination.RUN_DIR}/{os.path.basename(dev)}")


CHILD = """
import os, sys, time
from rescue.hw import destination, discover
place = discover.survey(devices=[sys.argv[1]])[0]
opened = destination.open_for_writing(place, run_dir=sys.argv[2])
print(opened.where, flush=True)
time.sleep(600)
"""


def test_a_crash_with_the_destination_mounted_is_cleared_by_the_next_start(loops, tmp_path):
    dev = loops.disk("crash.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, dev, str(tmp_path / "dest")], stdout=subprocess.PIPE, text=True
    )
    try:
        where = child.stdout.readline().strip()
        assert where and mounted_at(where)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    cleared = clear_leftovers()
    assert not mounted_at(where), cleared.line()
    assert f"mount {where}" in cleared.done.get(child.pid, []) or where in cleared.line(), cleared.line()

"""Every recorded machine in tests/machines, through the real engine and the wizard: drives
and their refusals for each role, every image planned onto every drive the rules allow,
every allowed clone planned, and the restore flow driven from the main menu to its done
screen. A machine recorded anywhere (`python3 -m rescue.hw.record`) joins by being copied
there."""

from __future__ import annotations

import glob
import os

import pytest
from fake_backend import MACHINES, FakeBackend, machine
from helpers import click, finish_job, focus_field, press, select, text, type_text

from rescue.tui.app import App

RECORDS = sorted(p for p in glob.glob(os.path.join(MACHINES, "*.json")) if not p.endswith(".desc.json"))


@pytest.fixture(params=RECORDS, ids=[os.path.basename(p) for p in RECORDS])
def engine(request):
    e = FakeBackend(machine(request.param))
    yield e
    e.close()


def test_the_corpus_is_not_empty():
    assert RECORDS


def test_every_decision_can_be_made_on_every_machine(engine):
    drives = engine.list_drives()
    assert drives, "a recorded machine without drives"
    repos = engine.find_repositories()
    for d in drives:
        engine.partitions(d)
        engine.source_refusal(d)
        for r in repos:
            engine.target_refusal(d, r.path)
    for r in repos:
        for im in engine.list_images(r.path):
            need = engine.image_needs(r.path, im.name)
            for d in drives:
                if engine.target_refusal(d, r.path) is None:
                    plan = engine.plan_restore(r.path, im.name, d.path)
                    assert plan.actions and (plan.fits or d.size < need or not plan.reason.startswith("fits"))
    sources = [d for d in drives if engine.source_refusal(d) is None]
    for s in sources[:2]:
        for t in drives:
            if t.name != s.name and engine.clone_refusal(t, s) is None:
                assert engine.plan_clone(s.path, t.path).actions


def test_the_restore_flow_reaches_done_on_every_machine_with_an_image(engine, tmp_path):
    repos = [r for r in engine.find_repositories() if engine.list_images(r.path)]
    if not repos:
        pytest.skip("no repository with an image on this machine")
    app = App(engine, log_dir=str(tmp_path))
    app.main_menu()
    select(app, "Restore")
    select(app, repos[0].path)
    select(app, engine.list_images(repos[0].path)[0].name)
    assert "choose the target drive" in text(app)
    need = engine.image_needs(repos[0].path, engine.list_images(repos[0].path)[0].name)
    target = next(
        (d for d in engine.list_drives() if engine.target_refusal(d, repos[0].path) is None and d.size >= need), None
    )
    if target is None:
        pytest.skip("no drive here can take the image")
    select(app, target.name)
    click(app, "Continue")
    type_text(app, target.name)
    press(app, "enter")
    finish_job(app)
    assert "Restore: done" in text(app)
    assert any(line.startswith("restore: ") for line in engine.log), "no action was executed"


def test_the_clone_flow_reaches_done_on_every_machine_with_two_usable_drives(engine, tmp_path):
    drives = engine.list_drives()
    pairs = [
        (s, t)
        for s in drives
        if engine.source_refusal(s) is None
        for t in drives
        if t.name != s.name and engine.clone_refusal(t, s) is None and t.size >= engine.clone_needs(s)
    ]
    if not pairs:
        pytest.skip("no source and target pair here")
    source, target = pairs[0]
    app = App(engine, log_dir=str(tmp_path))
    app.main_menu()
    select(app, "Clone")
    select(app, source.name)
    select(app, target.name)
    assert "Clone: the plan for" in text(app)
    click(app, "Continue")
    type_text(app, target.name)
    press(app, "enter")
    finish_job(app)
    assert "Clone: done" in text(app)
    assert any(line.startswith("clone: ") for line in engine.log), "no action was executed"


def test_the_capture_flow_reaches_done_on_every_machine(engine, tmp_path):
    """Onto the first place offered (a repository found, or a filesystem a new one is made
    on), else the recorded scratch directory typed as the destination; the image is then in
    the repository, as a restore would find it."""
    source = next((d for d in engine.list_drives() if engine.source_refusal(d) is None), None)
    if source is None:
        pytest.skip("no drive here can be captured")
    app = App(engine, log_dir=str(tmp_path))
    app.main_menu()
    select(app, "Capture")
    select(app, source.name)
    dests = engine.destinations(source, engine.capture_need(source))
    usable = [d for d in dests if d.refusal is None and not d.place.blank]
    if usable:
        select(app, usable[0].place.device + " ")
    else:
        focus_field(app)
        type_text(app, engine.machine.data["scratch"]["dir"])
        press(app, "enter")
    assert "name the image" in text(app), text(app)
    app.view.edit.set_edit_text("corpus-capture")
    press(app, "enter")
    finish_job(app)
    assert "Capture: done" in text(app)
    assert "corpus-capture" in [im.name for im in engine.list_images(app.state.written)]
    if usable and not usable[0].place.mountpoint:  # mounted for the job only, and unmounted after
        assert engine.log[0].startswith(f"mount {usable[0].place.device} read-write"), engine.log
        assert engine.log[-1].startswith("sync and unmount"), engine.log


def test_a_blank_drive_is_prepared_then_captured_onto(tmp_path):
    """The machine with a USB stick and no repository anywhere: the blank 2 TB disk is
    prepared (typed confirmation), then the image goes into a new repository on it."""
    engine = FakeBackend(machine(os.path.join(MACHINES, "usb-stick-no-repository.json")))
    app = App(engine, log_dir=str(tmp_path))
    app.main_menu()
    select(app, "Capture")
    select(app, "sda")
    screen = " ".join(text(app).split())
    stick = '/dev/sdb1 exfat "STICK" 59.6 GiB 55.9 GiB free on sdb (SanDisk Ultra USB 3.0):'
    assert f"{stick} new repository folder rescue-images" in screen
    select(app, "/dev/sdd ")
    type_text(app, "sdc")  # not the drive's name: back, nothing written
    press(app, "enter")
    assert "where to store the image" in text(app) and engine.log == []
    select(app, "/dev/sdd ")
    assert "All data on sdd (Seagate Expansion HDD" in " ".join(text(app).split())
    type_text(app, "sdd")
    press(app, "enter")
    finish_job(app)
    assert engine.log == ["prepare /dev/sdd: MBR, one partition /dev/sdd1, exFAT"]
    assert "name the image" in text(app) and "a new folder rescue-images on /dev/sdd1 (RESCUE)" in text(app)
    press(app, "enter")
    finish_job(app)
    assert "Capture: done" in text(app), text(app)
    assert engine.log[1] == "mount /dev/sdd1 read-write at /run/rescue/dest/sdd1"
    assert engine.log[-1] == "sync and unmount /run/rescue/dest/sdd1"
    assert [im.name for im in engine.list_images("/run/rescue/dest/sdd1/rescue-images")] == [app.state.name]
    assert "It was unmounted: the drive can be unplugged." in text(app)


def test_the_browse_flow_lists_files_on_every_machine_with_an_image(engine, tmp_path):
    repos = [r for r in engine.find_repositories() if engine.list_images(r.path)]
    if not repos:
        pytest.skip("no repository with an image on this machine")
    image = engine.list_images(repos[0].path)[0].name
    parts = [p for p in engine.image_partitions(repos[0].path, image) if p.refused is None and not p.fat]
    if not parts:
        pytest.skip("no partition with files in the image")
    app = App(engine, log_dir=str(tmp_path))
    app.main_menu()
    select(app, "Browse")
    select(app, repos[0].path)
    select(app, image)
    assert "Browse: choose a partition" in text(app)
    select(app, f"partition {parts[0].number} ")
    assert f"Browse: files in partition {parts[0].number}" in text(app), text(app)
    assert engine.mounted, "the partition was not opened"


def test_a_record_replays_what_was_recorded():
    """Extents, sizes and facts survive the JSON round trip (an extent is [start, end])."""
    from rescue.imaging.capture import AreaPlan
    from rescue.machine import _extents, _from_extents
    from rescue.model.extents import Extent

    used = [Extent(0, 4096), Extent(1 << 20, 3 << 20)]
    assert _from_extents(_extents(used)) == used
    assert AreaPlan("p1", 0, 8 << 20, 1, None, _from_extents(_extents(used))).read_bytes() == 4096 + (3 << 20)

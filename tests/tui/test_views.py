"""Views alone, built around an autospec'd controller: the test checks what the view asked
the controller to do. And every screen fits 80x24 in ASCII."""

from unittest import mock

from helpers import assert_fits, finish_job, press, render, select, type_text

from rescue.model.layout import DiskLayout, Partition
from rescue.tui import controllers, views
from rescue.tui.backend import DriveInfo, ImageInfo, PartInfo, Plan, RepoInfo
from rescue.tui.widgets import Screen

SDA = DriveInfo("sda", "/dev/sda", "Samsung SSD 860 EVO 500GB", "S3Z1", 500 * 10**9, "sata")
NVME = DriveInfo("nvme0n1", "/dev/nvme0n1", "WDC PC SN730", "2048", 256 * 10**9, "nvme")


def ctrl(cls):
    return mock.create_autospec(cls, instance=True)


def keys(view, *ks):
    for k in ks:
        view.keypress((80, 24), k)


def test_drive_list_enter_chooses_the_focused_drive_and_skips_refused_ones():
    c = ctrl(controllers.TargetStep)
    c.partitions.return_value = [PartInfo("nvme0n1p1", 1 << 30, "ntfs", "Windows")]
    v = views.DriveListView(c, "T", "E", [(SDA, "it booted the rescue system"), (NVME, None)])
    assert "Now on nvme0n1:" in "\n".join(render(v))  # focus starts on the first offered drive
    keys(v, "up", "enter")
    c.choose.assert_called_once_with(NVME)


def test_repo_view_typed_path_is_handed_to_the_controller():
    c = ctrl(controllers.RepoStep)
    v = views.RepoView(c, [RepoInfo("/media/x", "sdb")])
    keys(v, "down", *"/srv/images", "enter")
    c.choose.assert_called_once_with("/srv/images")


def test_confirm_view_passes_what_was_typed_whatever_it_is():
    c = ctrl(controllers.ConfirmStep)
    v = views.ConfirmView(c, SDA)
    keys(v, *"sdx", "enter")
    c.confirm.assert_called_once_with("sdx")
    keys(v, "esc")
    c.back.assert_called_once_with()


def test_progress_view_esc_asks_the_controller_never_cancels_itself():
    c = ctrl(controllers.RestoreProgressStep)
    v = views.ProgressView(c, "Restore: writing", "x")
    keys(v, "esc")
    c.back.assert_called_once_with()


def test_long_names_are_clipped_to_one_row():
    long = DriveInfo("nvme10n1", "/dev/nvme10n1", "M" * 60, "S" * 40, 10**15, "virtio")
    assert len(views.drive_line(long)) <= 74
    im = ImageInfo("n" * 100, "2024-01-01T00:00:00", "m" * 60, "s", 10**15, 10**15, 1, False)
    assert all(len(line) <= 74 for line in views.image_lines(im).splitlines())
    assert len(views.image_lines(im).splitlines()) == 2


def test_plan_view_with_many_partitions_still_fits():
    parts = [Partition(i, 2048 * i, 2048 * i + 2047) for i in range(1, 40)]
    lay = DiskLayout("gpt", 512, 10**12, partitions=parts)
    plan = Plan("/dev/sda", SDA.size, lay, lay, True, "", 1 << 30)
    im = ImageInfo("x", "2024-01-01T00:00:00", "m", "s", 1, 1, 1, True)
    v = views.PlanView(ctrl(controllers.PlanStep), SDA, im, plan,
                       [PartInfo(f"sda{i}", 1 << 20) for i in range(30)])
    lines = render(v)
    assert len(lines) == 24 and "< Continue >" in "\n".join(lines)


def every_screen(app, backend):
    """Walk both flows and every dialog, yielding after each screen appears."""
    yield "menu"
    select(app, "Restore")
    yield "repo"
    select(app, "/media/sdb1")
    yield "images"
    select(app, "web01")
    yield "target"
    select(app, "sda")
    yield "plan"
    press(app, "tab", "enter")
    yield "confirm"
    type_text(app, "sda")
    press(app, "enter")
    yield "progress"
    press(app, "esc")
    yield "cancel dialog"
    press(app, "esc")
    finish_job(app)
    yield "restore done"
    press(app, "esc")
    select(app, "Capture")
    yield "source"
    select(app, "nvme0n1")
    yield "dest"
    select(app, "/media/sdb1")
    yield "name"
    press(app, "enter")
    finish_job(app)
    yield "capture done"
    press(app, "esc")
    select(app, "Reboot")
    yield "reboot dialog"


def test_every_screen_fits_80x24_in_ascii(app, backend):
    seen = []
    for name in every_screen(app, backend):
        assert_fits(app)
        seen.append(name)
    assert len(seen) == 14


def test_every_screen_has_the_same_shape(app, backend):
    for name in every_screen(app, backend):
        screen = app.view
        assert isinstance(screen, Screen), name
        lines = render(app.root)
        assert lines[0].startswith(" rescue - disk imaging  |  "), name
        assert lines[-1].strip(), f"{name}: no help/status line"


def test_with_nothing_found_the_path_field_has_the_focus_at_once():
    c = ctrl(controllers.RepoStep)
    v = views.RepoView(c, [])
    keys(v, *"/srv/images", "enter")
    c.choose.assert_called_once_with("/srv/images")

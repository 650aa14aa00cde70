"""Views alone, built around an autospec'd controller: the test checks what the view asked
the controller to do. And every screen fits 80x24 in ASCII."""

from unittest import mock

from helpers import assert_fits, click, finish_job, focus_field, press, render, select, type_text

from rescue.browse.copy import FileEntry
from rescue.engine import DriveInfo, ImageInfo, PartInfo, RepoInfo
from rescue.imaging.restore import RestorePlan as Plan
from rescue.model.layout import DiskLayout, Partition
from rescue.tui import controllers, views
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


def real_plan(sizes: list[int], target_size: int, policy: str, fstype: str = "ntfs", names=None) -> Plan:
    """The engine's planner (pure over its inputs) for an image of partitions of `sizes`."""
    from rescue.imaging.apply import AreaFacts
    from rescue.imaging.restore import TargetFacts, plan_onto

    MiB, start, parts, areas = 1 << 20, 2048, [], [AreaFacts("head", None, 1 << 20, None)]
    for i, size in enumerate(sizes, 1):
        sectors = size // 512
        name = names[i - 1] if names else ""
        parts.append(Partition(i, start, start + sectors - 1, "EBD0A0A2-B9E5-4433-87C0-68B6B97044C7", name=name))
        used = size // 4
        areas.append(AreaFacts(f"p{i}", i, size, {"type": fstype, "used_bytes": used, "min_size": used + MiB}))
        start += sectors
    image = DiskLayout("gpt", 512, start * 512 + MiB, partitions=parts)
    facts = TargetFacts("/dev/sda", target_size, 512, None, False, lambda where: (1 << 40, False))
    return plan_onto("x", image, areas, facts, policy, 1 << 30)


def test_plan_view_with_many_partitions_and_a_wide_table_still_fits():
    names = [f"data number {i:>2}" for i in range(1, 40)]
    plan = real_plan([(i * 900) << 20 for i in range(1, 40)], SDA.size, "proportional", names=names)
    assert plan.fits
    table = [line for kind, line in __import__("rescue.planview").planview.plan_lines(plan) if kind == "table"]
    c = ctrl(controllers.PlanStep)
    v = views.PlanView(
        c,
        "Restore: the plan for sda",
        "Image x onto sda:",
        SDA,
        plan,
        "auto",
        [PartInfo(f"sda{i}", 1 << 20) for i in range(30)],
    )
    lines = render(v)
    assert len(lines) == 24 and all(len(l) <= 80 for l in lines)
    assert "< Continue >" in "\n".join(lines)
    assert max(len(r) for r in table) > 78
    keys(v, "page down")  # past the verdict, which names every partition
    row = next(l for l in render(v) if "number  1, ntfs " in l)
    assert row.rstrip().endswith("shrink"), "the table was cut instead of narrowed"
    keys(v, "page down", "page down")
    assert "number  1, ntfs " not in "\n".join(render(v)), "PgDn did not scroll the plan"
    keys(v, "page up", "page up")
    assert "number  1, ntfs " in "\n".join(render(v))


def test_squeezed_table_keeps_its_columns_aligned():
    table = [
        "  #  partition    old start    old size   new start    new size  action",
        "  1  EFI, vfat        1 MiB     512 MiB       1 MiB     512 MiB  keep",
        "  2  root, ext4     513 MiB  102400 MiB     513 MiB  468132 MiB  grow",
    ]
    out = views.squeeze_table(table, 66)
    assert all(len(l) <= 66 for l in out)
    assert [l.index("action") for l in out[:1]] == [out[1].index("keep")] == [out[2].index("grow")]
    assert out[2].split() == table[2].split()  # nothing but padding was taken out
    assert views.squeeze_table(table, 80) == table  # already narrow enough: untouched


def test_plan_view_layout_row_calls_set_policy_with_the_chosen_policy():
    plan = real_plan([600 * 10**9], SDA.size, "same")
    assert not plan.fits
    c = ctrl(controllers.PlanStep)
    v = views.PlanView(c, "T", "E", SDA, plan, "same", [], focus_policy=True)
    keys(v, "right", "right", " ")
    c.set_policy.assert_called_once_with("grow-last")
    keys(v, "tab", "enter")  # Continue is disabled: the buttons' only stop is Back
    c.back.assert_called_once_with()
    c.done.assert_not_called()


def test_tree_view_keys_reach_the_controller():
    c = ctrl(controllers.TreeStep)
    d = FileEntry("etc", "/etc", True, 0, 0.0)
    f = FileEntry("hostname", "/hostname", False, 6, 0.0)
    v = views.TreeView(c, "T", "E", [(d, 0, " ", False), (f, 0, "x", False)], "Marked 1")
    keys(v, "right")
    c.expand.assert_called_once_with(d)
    keys(v, "down", " ")
    c.toggle_mark.assert_called_once_with(f)
    keys(v, "left")
    c.collapse.assert_called_once_with(f)
    keys(v, "enter")
    c.activate.assert_called_once_with(f)
    screen = "\n".join(render(v))
    assert "[x]   hostname" in screen and "6 B" in screen


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
    click(app, "Continue")
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
    select(app, "/dev/sdb1")
    yield "name"
    press(app, "enter")
    finish_job(app)
    yield "capture done"
    press(app, "esc")
    select(app, "Clone")
    yield "clone source"
    select(app, "sda")
    yield "clone target"
    select(app, "nvme0n1")
    yield "clone plan"
    click(app, "Continue")
    yield "clone confirm"
    type_text(app, "nvme0n1")
    press(app, "enter")
    yield "clone progress"
    finish_job(app)
    yield "clone done"
    press(app, "esc")
    select(app, "Browse")
    yield "browse repo"
    select(app, "/media/sdb1")
    yield "browse images"
    select(app, "web01")
    yield "partitions"
    select(app, "partition 2")
    yield "tree"
    press(app, "enter", "down", " ")
    click(app, "Copy marked")
    yield "copy dest"
    focus_field(app)
    type_text(app, "/mnt/big")
    press(app, "enter")
    yield "copy progress"
    finish_job(app)
    yield "browse done"
    press(app, "esc")
    select(app, "Browse")
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "partition 1")
    yield "FAT partition"
    press(app, "esc", "esc", "esc", "esc")
    select(app, "Reboot")
    yield "reboot dialog"


def test_every_screen_fits_80x24_in_ascii(app, backend):
    seen = []
    for name in every_screen(app, backend):
        assert_fits(app)
        seen.append(name)
    assert len(seen) == 28


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

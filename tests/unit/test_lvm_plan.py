"""Where the extents of an LVM PV go when it is resized with its root LV (rescue.model.lvmplan):
pure, on PVs built as data. The root tier (tests/system/test_lvm.py) restores a Debian-like
drive onto larger and smaller drives and checks the result with lvm2's own tools."""

from __future__ import annotations

import pytest

from rescue.model.lvmplan import (
    RunMove,
    copy_steps,
    min_extents,
    pick_root,
    plan_words,
    resize_layout,
    used_end,
)
from rescue.model.stack import (
    DiskArea,
    LogicalVolume,
    PhysicalVolume,
    PhysicalVolumeRef,
    PvLabel,
    PvRun,
    Segment,
    VolumeGroup,
)

MiB = 1 << 20
EXT = 4 * MiB


def lv(name: str, *runs: tuple[int, int], visible: bool = True) -> LogicalVolume:
    segs, at = [], 0
    for first, count in runs:
        segs.append(Segment(at, count, "linear", (PvRun("pv0", first, count),)))
        at += count
    return LogicalVolume(name, f"{name}-uuid", tuple(segs), visible)


def pv(*lvs: LogicalVolume, pe_count: int = 40) -> PhysicalVolume:
    size = MiB + pe_count * EXT
    label = PvLabel("pv-uuid", size, 1, (DiskArea(MiB, 0),), (DiskArea(4096, MiB - 4096),))
    vg = VolumeGroup("deb-vg", "vg-uuid", 3, EXT, (PhysicalVolumeRef("pv0", "pv-uuid", MiB, pe_count),), lvs)
    return PhysicalVolume(label, vg)


DEBIAN = pv(lv("root", (0, 30)), lv("swap_1", (30, 2)))


def test_growing_gives_root_every_free_extent_and_moves_what_follows_up():
    layout = resize_layout(DEBIAN, DEBIAN.vg.lvs[0], 49)
    assert (layout.root, layout.old_extents, layout.new_extents) == ("root", 30, 47)
    assert layout.moves == (RunMove("swap_1", 30, 47, 2),) and layout.moved == ["swap_1"]


def test_moves_up_are_copied_highest_first_and_down_lowest_first():
    """With two runs after root, the first moved up would land on the second before it is
    read: so the order is highest first when growing, lowest first when shrinking."""
    p = pv(lv("root", (0, 20)), lv("swap_1", (20, 2)), lv("home", (22, 4), (28, 2)))
    up = resize_layout(p, p.vg.lvs[0], 40)
    assert [(m.lv, m.src, m.dst) for m in up.moves] == [("home", 28, 38), ("home", 22, 32), ("swap_1", 20, 30)]
    down = resize_layout(p, p.vg.lvs[0], 25)
    assert [(m.lv, m.src, m.dst) for m in down.moves] == [("swap_1", 20, 15), ("home", 22, 17), ("home", 28, 23)]
    assert down.new_extents == 15 and down.moved == ["swap_1", "home"]


def test_lvs_before_root_and_gaps_between_them_stay_where_they_are():
    p = pv(lv("boot", (0, 2)), lv("root", (4, 10)), lv("swap_1", (16, 2)))
    layout = resize_layout(p, p.vg.lvs[1], 30)
    assert layout.new_extents == 22 and layout.moves == (RunMove("swap_1", 16, 28, 2),)


def test_a_resize_root_cannot_take_is_refused():
    with pytest.raises(ValueError, match="all in use already"):
        resize_layout(DEBIAN, DEBIAN.vg.lvs[0], 32)
    with pytest.raises(ValueError, match="cannot lose 30 of its 30 extents"):
        resize_layout(DEBIAN, DEBIAN.vg.lvs[0], 2)
    two = pv(lv("root", (0, 4), (10, 4)))
    with pytest.raises(ValueError, match="not one linear run"):
        resize_layout(two, two.vg.lvs[0], 30)


def test_the_smallest_pv_keeps_every_used_extent_less_what_root_can_give_up():
    root = DEBIAN.vg.lvs[0]
    assert used_end(DEBIAN) == 32
    assert min_extents(DEBIAN, root, None) == 32  # root's filesystem cannot shrink
    assert min_extents(DEBIAN, root, 10 * MiB + 1) == 2 + 3  # rounded up to whole extents
    assert min_extents(DEBIAN, None, 10 * MiB) == 32
    assert min_extents(DEBIAN, root, 200 * MiB) == 32  # never more than it has


def test_root_is_the_largest_visible_one_run_lv_holding_a_root_filesystem():
    p = pv(lv("root", (0, 10)), lv("big", (10, 12), (30, 2)), lv("hidden", (22, 20), visible=False), lv("var", (42, 6)))
    assert pick_root(p, {"root", "big", "hidden"}).name == "root"  # big is two runs, hidden is a part
    assert pick_root(p, {"root", "var"}).name == "root"
    assert pick_root(p, set()) is None


def test_copy_steps_never_read_what_they_already_wrote():
    disk = bytearray(range(100))
    want = bytearray(disk)
    want[30:90] = disk[10:70]
    for src, dst, n in copy_steps(10, 30, 60, 16):
        disk[dst : dst + n] = disk[src : src + n]
    assert disk == want
    disk = bytearray(range(100))
    want = bytearray(disk)
    want[5:65] = disk[20:80]
    for src, dst, n in copy_steps(20, 5, 60, 16):
        disk[dst : dst + n] = disk[src : src + n]
    assert disk == want


def test_the_plan_says_it_in_words():
    grown = MiB + 49 * EXT
    assert plan_words(DEBIAN, DEBIAN.vg.lvs[0], grown) == (
        "LVM: PV grown to 197.0 MiB; LV root grown from 120.0 MiB to 188.0 MiB; swap_1 moved"
    )
    assert plan_words(DEBIAN, DEBIAN.vg.lvs[0], MiB + 27 * EXT) == (
        "LVM: PV shrunk to 109.0 MiB; LV root shrunk from 120.0 MiB to 100.0 MiB; swap_1 moved"
    )
    assert plan_words(DEBIAN, None, grown) == (
        "LVM: PV grown to 197.0 MiB; no LV holds a Linux root filesystem that can grow: the LVs keep their size"
    )
    assert (
        plan_words(DEBIAN, DEBIAN.vg.lvs[0], MiB + 32 * EXT) == "LVM: PV shrunk to 129.0 MiB; the LVs keep their size"
    )
    assert plan_words(DEBIAN, DEBIAN.vg.lvs[0], DEBIAN.label.device_size) is None

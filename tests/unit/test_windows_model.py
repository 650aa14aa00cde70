"""Windows drives as data (rescue/model/windows.py) and the planner's rule for them: pure, no
drive. The BCD bytes here are the public example from Misty Projects' "Devices Partition -
Data" page (an MBR OS loader device element, partition=C:)."""

from __future__ import annotations

import pytest

from rescue.errors import IntegrityError
from rescue.model import actions
from rescue.model import windows as win
from rescue.model.actions import Placement, plan_actions
from rescue.model.layout import DiskLayout, Partition
from rescue.model.plan import MiB, PartFacts, plan_layout
from rescue.repo.manifest import validate_fs

# Misty Projects' example element: partition type 6, offset 0x15f00000, MBR style, signature b3eba8f1
MISTY = bytes.fromhex(
    "00000000000000000000000000000000060000000000000048000000000000000000f0150000000000000000000000"
    "00000000000100000000f1a8ebb3000000000000000000000000000000000000000000000000000000000000000000"
)
MISTY = MISTY[:0x34] + b"\x01\x00\x00\x00" + bytes.fromhex("f1a8ebb3") + bytes(12) + bytes(16)
GPT_DISK = "b4656fd0-c4f5-4cb3-a05c-f356d94ab9d8"
GPT_PART = "5dfb181d-0a9f-45f7-87fc-b233c74c050d"
S = 2048  # sectors per MiB


def test_parses_the_public_mbr_example():
    dev = win.parse_device(MISTY)
    assert dev == win.Device("mbr", "0xb3eba8f1", offset=368050176)  # 718848 sectors of 512 bytes


def test_gpt_device_round_trip_and_patch_keeps_other_bytes():
    dev = win.Device("gpt", GPT_DISK, partition=GPT_PART)
    raw = win.device_element(dev)
    assert len(raw) == 0x58 and win.parse_device(raw) == dev
    other = win.Device("gpt", "11111111-2222-3333-4444-555555555555", partition="66666666-7777-8888-9999-aaaaaaaaaaaa")
    patched = win.patch_device(raw, other)
    assert win.parse_device(patched) == other
    assert patched[:0x20] == raw[:0x20] and patched[0x30:0x34] == raw[0x30:0x34]
    moved = win.patch_device(MISTY, win.Device("mbr", "0x12345678", offset=5 * MiB))
    assert win.parse_device(moved) == win.Device("mbr", "0x12345678", offset=5 * MiB)
    assert moved[0x48:] == MISTY[0x48:]


def test_other_devices_are_not_partitions():
    boot = bytearray(MISTY)
    boot[0x10] = 5  # "boot": the device booted from
    assert win.parse_device(bytes(boot)) is None
    assert win.parse_device(MISTY[:0x40]) is None
    assert win.is_device_element("21000001") and win.is_device_element("31000003")
    assert not win.is_device_element("12000004") and not win.is_device_element("nonsense")


def mbr(*parts: tuple[int, int, int], size: int = 512 * MiB) -> DiskLayout:
    return DiskLayout(
        "msdos", 512, size, "0x1234abcd", [Partition(n, s, s + length - 1, mbr_type=7) for n, s, length in parts]
    )


def ref(offset: int, element: str = win.OS_DEVICE, otype: int = win.OSLOADER_TYPE) -> win.BcdRef:
    return win.BcdRef(
        object="{3c1e2f4a-7d0b-11ee-9c5a-0242ac120002}",
        type=otype,
        element=element,
        style="mbr",
        disk="0x1234abcd",
        offset=offset,
    )


NTFS = PartFacts("ntfs", 20 * MiB, can_shrink=True, can_grow=True)
BIOS = mbr((1, S, 100 * S), (2, 101 * S, 410 * S))
BIOS_BCD = {1: [ref(MiB, win.APP_DEVICE, win.BOOTMGR_TYPE), ref(101 * MiB)]}


def test_summary_and_pins():
    assert win.summary(BIOS, BIOS_BCD)[0] == "Windows boot manager on #1, Windows on #2"
    assert "-> #2" in win.summary(BIOS, BIOS_BCD)[2]
    assert set(win.pinned(BIOS, BIOS_BCD)) == {1, 2}
    other_disk = {1: [{**ref(101 * MiB), "disk": "0x99999999"}]}
    assert win.pinned(BIOS, other_disk) == {}  # names another drive: nothing to keep here
    assert "no partition of this drive" in win.summary(BIOS, other_disk)[1]


@pytest.mark.parametrize("policy", ["proportional", "grow-last"])
@pytest.mark.parametrize("size", [1024 * MiB, 300 * MiB])
def test_planner_keeps_the_starts_a_bcd_names(policy, size):
    facts = {1: NTFS, 2: NTFS}
    lp = plan_layout(BIOS, facts, size, 512, policy, pinned=win.pinned(BIOS, BIOS_BCD))
    assert lp.fits
    starts = {m.number: (m.new_start, m.new_size) for m in lp.moves}
    assert starts[1] == (MiB, 100 * MiB) and starts[2][0] == 101 * MiB
    assert starts[2][1] == size - 101 * MiB  # C: takes or gives back all the difference
    assert any("kept in place: #1 at 1 MiB, #2 at 101 MiB" in n for n in lp.notes)
    free = plan_layout(BIOS, facts, size, 512, policy)  # without the rule, proportional moves C:
    if policy == "proportional":
        assert {m.number: m.new_start for m in free.moves}[2] != 101 * MiB


def test_planner_moves_and_says_the_bcd_is_rewritten_when_keeping_wastes_the_target():
    """C: and a Recovery partition after it, both named by the BCD (WinRE): keeping Recovery's
    start would keep C: at its size on a larger drive, so C: grows, Recovery moves and the
    BCD is rewritten after writing (an action, shown by `rescue plan`)."""
    layout = mbr((1, S, 400 * S), (2, 401 * S, 100 * S))
    layout.partitions[1].mbr_type = 0x27  # Windows recovery: keeps its size
    bcd = {1: [ref(MiB), ref(401 * MiB, "31000003", 0x30000000)]}
    facts = {1: NTFS, 2: NTFS}
    lp = plan_layout(layout, facts, 1024 * MiB, 512, "proportional", pinned=win.pinned(layout, bcd))
    assert lp.fits and {m.number: m.new_start for m in lp.moves}[2] > 401 * MiB
    assert any("rewritten to the new offsets" in n for n in lp.notes)
    placements = {f"p{m.number}": Placement(m.new_start, m.new_size, m.action, "ntfs") for m in lp.moves}
    acts = plan_actions(layout, lp.layout, placements, {k: k for k in placements}, bcd=bcd, with_start={1, 2})
    kinds = [a.kind for a in acts]
    assert actions.BOOT_SECTORS in kinds and actions.WINDOWS_BCD in kinds
    assert kinds.index(actions.BOOT_SECTORS) < kinds.index(actions.WINDOWS_BCD)
    bcd_act = acts[kinds.index(actions.WINDOWS_BCD)]
    assert "#2 moves to byte" in bcd_act.what and not bcd_act.aborts


def test_boot_sectors_only_for_moved_ntfs_and_fat():
    written = mbr((1, S, 200 * S), (2, 201 * S, 300 * S))
    assert win.boot_sectors_to_fix(BIOS, written, {1, 2}) == [2]
    assert win.boot_sectors_to_fix(BIOS, written, {1}) == []  # #2 holds no NTFS or FAT
    assert win.boot_sectors_to_fix(BIOS, BIOS, {1, 2}) == []
    assert win.stale_refs(BIOS, BIOS, BIOS_BCD, fresh_ids=False) == []
    assert win.stale_refs(BIOS, BIOS, BIOS_BCD, fresh_ids=True) == ["#1 gets new ids", "#2 gets new ids"]


def test_manifest_keeps_bcd_refs_and_refuses_malformed_ones():
    good = {"type": "ntfs", "bcd": [dict(ref(MiB))], "hibernated": "Windows is hibernated"}
    validate_fs(good, "image x")
    validate_fs({"type": "ntfs"}, "image x")  # images from before issue 24 stay valid
    for bad in (
        {**ref(MiB), "style": "apm"},
        {**ref(MiB), "disk": "$(reboot)"},
        {k: v for k, v in ref(MiB).items() if k != "offset"},
        {**ref(MiB), "extra": 1},
    ):
        with pytest.raises(IntegrityError):
            validate_fs({"type": "ntfs", "bcd": [bad]}, "image x")

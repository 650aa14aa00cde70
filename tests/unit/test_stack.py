"""The storage stack as plain data (rescue.model.stack): what `rescue info` prints of it, the
map source that carries each LV's filesystem through the manifest, and the words of the
safety rule for a drive held by an active volume group or an open LUKS volume."""

from __future__ import annotations

import os

import pytest

from rescue.errors import RefusedError
from rescue.hw import devices, safety
from rescue.model.stack import (
    IMAGED_WHOLE,
    LuksHeader,
    LvContent,
    PhysicalVolume,
    PhysicalVolumeRef,
    PvLabel,
    Stack,
    VolumeGroup,
    dm_lv_name,
    holder_reason,
    lv_contents,
    map_source_text,
    stack_lines,
)

MiB = 1 << 20
CONTENTS = [
    LvContent("root", 40 * MiB, "ext4", "used blocks (dumpe2fs)"),
    LvContent("home", 24 * MiB, None, "imaged whole (2 segments)"),
    LvContent("odd", 8 * MiB, None, "imaged whole (cannot map used blocks: a; b)"),
]


def test_map_source_carries_each_lv_through_the_manifest():
    text = map_source_text(CONTENTS)
    assert text.startswith("lvm2 metadata; root: ext4, used blocks (dumpe2fs); home: -, imaged whole")
    back = lv_contents(text, {"root": 40 * MiB, "home": 24 * MiB, "odd": 8 * MiB})
    assert back[:2] == CONTENTS[:2]
    assert back[2].how == "imaged whole (cannot map used blocks: a, b)"  # no ";" to split on
    assert lv_contents(map_source_text([]), {}) == [] and lv_contents("dumpe2fs", {}) == []
    assert lv_contents(None, {}) == []


def pv(vg: VolumeGroup | None) -> PhysicalVolume:
    label = PvLabel("AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGGGG", 64 * MiB, 1, (), ())
    return PhysicalVolume(label, vg)


def test_stack_lines_show_each_layer():
    vg = VolumeGroup(
        "vgr", "u", 5, 4 * MiB, (PhysicalVolumeRef("pv0", "AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGGGG", MiB, 15),), ()
    )
    luks = LuksHeader(2, "1e0f-uuid", "cryptroot", "aes-xts-plain64", 16 * MiB)
    lines = stack_lines("#3", Stack(luks=luks, pv=pv(vg), lvs=CONTENTS[:2]))
    assert lines == [
        "#3: LUKS2 1e0f-uuid (cryptroot), aes-xts-plain64, payload at 16.0 MiB",
        "#3: LVM2 PV AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGGGG, data at 1.0 MiB",
        "  -> VG vgr (1 PV, extent 4.0 MiB, 0 LV, seqno 5)",
        "     -> LV root 40.0 MiB: ext4, used blocks (dumpe2fs)",
        "     -> LV home 24.0 MiB: no filesystem, imaged whole (2 segments)",
    ]
    assert stack_lines("#2", Stack(pv=pv(None)))[1] == "  no volume group (orphan PV)"


@pytest.mark.parametrize("fstype", sorted(IMAGED_WHOLE))
def test_layers_imaged_whole_say_why(fstype):
    (line,) = stack_lines("#2", Stack(whole=IMAGED_WHOLE[fstype]))
    assert line.startswith("#2: imaged whole, every byte: ") and len(line) > 60


@pytest.mark.parametrize(
    "name, parts",
    [("vg0-root", ("vg0", "root")), ("my--vg-my--lv", ("my-vg", "my-lv")), ("a-b-c", ("a", "b-c")), ("plain", None)],
)
def test_device_mapper_names_of_lvs(name, parts):
    assert dm_lv_name(name) == parts


def dm(name: str, minor: int, dm_name: str, dm_uuid: str) -> devices.DeviceDict:
    return {
        "name": name,
        "node": f"/dev/{name}",
        "devtype": "disk",
        "devnum": os.makedev(254, minor),
        "sys_path": f"/sys/devices/virtual/block/{name}",
        "attrs": {"size": "2048", "dm/name": dm_name, "dm/uuid": dm_uuid},
        "props": {},
        "holders": [],
        "parent": None,
        "partitions": [],
        "ancestors": [],
    }


def test_a_drive_held_by_an_active_vg_or_an_open_luks_is_refused_with_the_reason():
    """The snapshot's device dicts as the pyudev seam records them (sysfs dm/name, dm/uuid):
    the rule refuses any holder, and names what it is and how to undo it."""
    sda2 = {**dm("sda2", 0, "", ""), "devtype": "partition", "holders": ["dm-0", "dm-1", "md0"]}
    sda2["devnum"], sda2["attrs"] = os.makedev(8, 2), {"size": "2048"}
    snap = devices.Snapshot(
        mounts=[],
        swaps=[],
        devices={
            d["devnum"]: d
            for d in (
                sda2,
                dm("dm-0", 0, "my--vg-root", "LVM-Yl4Keni0n1FKgcbceepRk63Ab8OmEy8wnCEWIHyS9SJF5NPgCGCKcy4I5XAnqoMV92"),
                dm("dm-1", 1, "luks-1e0f", "CRYPT-LUKS2-1e0fb4cdc0b74b9384c72a766b17125b-luks-1e0f"),
            )
        },
        loops=[],
    )
    drive = devices.drive_from_dict(sda2, snap)
    with pytest.raises(RefusedError) as err:
        safety._check_use("target /dev/sda", drive, snap)
    assert str(err.value) == (
        "target /dev/sda is in use by dm-0 (volume group my-vg is active, LV root: vgchange -an my-vg), "
        "dm-1 (LUKS volume open as luks-1e0f: cryptsetup close luks-1e0f), md0 (holders)"
    )
    # Without the snapshot (or a holder it does not know) the refusal stands, in fewer words.
    with pytest.raises(RefusedError, match=r"in use by dm-0, dm-1, md0 \(holders\)"):
        safety._check_use("target /dev/sda", drive)


def test_holder_words_for_other_device_mapper_users():
    assert holder_reason("dm-2", "cr_home", "CRYPT-PLAIN-cr_home") == (
        "dm-2 (dm-crypt volume open as cr_home: cryptsetup close cr_home)"
    )
    assert holder_reason("dm-3", "mpatha", "mpath-3600") == "dm-3 (mpatha)"
    assert holder_reason("bcache0", None, None) == "bcache0"

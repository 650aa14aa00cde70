"""A 4 GiB drive with several partitions (BIOS boot, ext4, XFS, btrfs, FAT32, NTFS, swap, raw
bytes), imaged once and restored onto 3, 4 and 8 GiB drives under each layout policy: what
fits is written and checks clean with identical files, what does not fit is refused with the
shortfall before anything is written."""

from __future__ import annotations

import json

import pytest
from disks import GiB, MiB, rescue
from drives import build_gpt_drive, check_restored, mib_layout, sha_of, table

pytestmark = pytest.mark.root

PARTS = mib_layout(
    (1, None, "bios"),
    (1000, "ext4", "root"),
    (1200, "xfs", "data-xfs"),
    (900, "btrfs", "data-btrfs"),
    (300, "vfat", "SHARED"),
    (500, "ntfs", "windows"),
    (64, "swap", "swap"),
    (16, "raw", "scratch"),
)


@pytest.fixture(scope="module")
def captured(mloops):
    drive = build_gpt_drive(mloops, "four.img", PARTS, 4 * GiB)
    repo = mloops.root / "repo"
    rescue("capture", drive.device, str(repo), "--name", "four", check=True)
    return drive, repo


# (target GiB, policy) -> fits? On 3 GiB, "same" and "grow-last" (only NTFS may change, and
# it cannot give up 1 GiB) are short; proportional shrinks everything that may shrink.
CASES = [
    (3, "same", False),
    (3, "proportional", True),
    (3, "grow-last", False),
    (4, "same", True),
    (4, "proportional", True),
    (4, "grow-last", True),
    (8, "same", True),
    (8, "proportional", True),
    (8, "grow-last", True),
]


@pytest.mark.parametrize("gib, policy, fits", CASES, ids=[f"{g}GiB-{p}" for g, p, _ in CASES])
def test_restore_onto_3_4_and_8_gib_under_each_policy(captured, loops, gib, policy, fits):
    drive, repo = captured
    path = loops.file("target.img", gib * GiB)
    plan = json.loads(rescue("plan", str(repo), "four", str(path), "--layout", policy, "--json").stdout)
    assert plan["fits"] is fits, plan
    if not fits:
        with open(path, "r+b") as f:
            f.write(b"keep me" * 100)
        before = sha_of(path, 0, 2 * MiB)
        proc = rescue("restore", str(repo), "four", loops.attach(path), "--yes", "--layout", policy)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "short by" in proc.stdout + proc.stderr
        assert sha_of(path, 0, 2 * MiB) == before, "a refused restore wrote to the drive"
        return
    rescue("restore", str(repo), "four", loops.attach(path), "--yes", "--layout", policy, "--no-preverify", check=True)
    check_restored(loops, drive, path)
    parts = table(path)["parts"]
    src = table(drive.image)["parts"]
    assert [(p["uuid"], p["type"], p.get("name")) for p in parts] == [
        (p["uuid"], p["type"], p.get("name")) for p in src
    ]
    sizes = {p.label: q["size"] for p, q in zip(drive.parts, parts)}
    assert sizes["bios"] == 2048 and sizes["swap"] == 64 * 2048, "fixed-size partitions changed size"
    if policy == "same":
        assert [q["size"] for q in parts] == [p["size"] for p in src]
    elif gib == 8:
        end = max(q["start"] + q["size"] for q in parts) * 512
        assert end > 8 * GiB - 2 * MiB, "the larger drive's space is not used"
    if policy == "proportional" and gib == 3:
        assert sizes["data-xfs"] == 1200 * 2048, "XFS cannot shrink and must keep its size"
        assert sizes["root"] < 1000 * 2048 and sizes["windows"] < 500 * 2048

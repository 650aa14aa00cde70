"""Capture a real multi-filesystem drive and restore it: what a user checks afterwards."""

from __future__ import annotations

import functools
import json
import os

import pytest
from disks import MiB, sh
from disks import rescue as run_rescue
from drives import build_gpt_drive, build_mbr_drive, check_restored, sha_of, table

pytestmark = pytest.mark.root
rescue = functools.partial(run_rescue, check=True)


@pytest.fixture(scope="module")
def gpt(mloops):
    return build_gpt_drive(mloops)


@pytest.fixture(scope="module")
def captured(gpt, mloops):
    repo = mloops.root / "repo"
    rescue("capture", gpt.device, str(repo), "--name", "first")
    return repo


def test_capture_reads_only_used_blocks_and_records_the_table(gpt, captured):
    info = json.loads(rescue("info", str(captured), "first", "--json").stdout)
    by_part = {a["partition"]: a for a in info["areas"] if a["partition"]}
    for p in gpt.parts:
        area = by_part[p.number]
        if p.fs in ("ext4", "xfs", "btrfs", "vfat", "ntfs"):
            assert area["fs"]["type"] == p.fs
            assert area["fs"]["label"] == p.label
            assert area["stats"]["map"] != "whole", f"{p.fs} was imaged whole"
            assert area["stats"]["mapped_bytes"] < p.nbytes * 0.6, f"{p.fs}: map covers most of the partition"
        else:
            assert area["fs"] is None
    names = [p["name"] for p in info["layout"]["partitions"]]
    assert names == [p.label for p in gpt.parts]
    assert info["layout"]["table"] == "gpt"
    assert all(p["uuid"] and p["type_guid"] for p in info["layout"]["partitions"])


def test_restore_onto_blank_larger_drive(gpt, captured, mloops):
    target = mloops.disk("blank.img", 1024 * MiB)
    out = rescue("restore", str(captured), "first", target, "--yes", "--layout", "same")
    assert "restored first" in out.stdout
    check_restored(mloops, gpt, mloops.drives / "blank.img")
    src, dst = table(gpt.image), table(mloops.drives / "blank.img")
    assert src["id"] == dst["id"] and src["parts"] == dst["parts"]
    assert sha_of(gpt.image, 0, 440) == sha_of(mloops.drives / "blank.img", 0, 440), "boot code changed"
    gap = (34 * 512, (2048 - 34) * 512)
    assert sha_of(gpt.image, *gap) == sha_of(mloops.drives / "blank.img", *gap), "post-GPT gap changed"
    # The backup GPT is at the end of the new, larger drive: sfdisk --verify is clean.
    assert "No errors detected" in sh("sfdisk", "--verify", str(mloops.drives / "blank.img"))


def test_restore_over_a_differently_partitioned_drive(gpt, captured, mloops):
    path = mloops.file("other.img", 900 * MiB)
    sh("sfdisk", "-q", str(path), input=b"label: dos\nstart=2048, size=400000, type=7\nsize=600000, type=83\n")
    dev = mloops.attach(path, offset=2048 * 512, size=400000 * 512)
    sh("mkfs.ext4", "-q", "-L", "old", dev)
    target = mloops.attach(path)
    rescue("restore", str(captured), "first", target, "--yes", "--no-preverify", "--layout", "same")
    check_restored(mloops, gpt, path)
    assert table(path)["parts"] == table(gpt.image)["parts"]


@pytest.mark.parametrize(
    "size_mib, policy", [(1200, "proportional"), (1200, "grow-last"), (780, "proportional"), (780, "grow-last")]
)
def test_restore_onto_a_larger_or_smaller_drive(gpt, captured, mloops, size_mib, policy):
    """Partitions resized to the new drive: every filesystem checks clean, keeps its UUID and
    label, and holds identical files; the layout fills the drive and GPT is valid."""
    path = mloops.file(f"resized-{size_mib}-{policy}.img", size_mib * MiB)
    plan = json.loads(rescue("plan", str(captured), "first", str(path), "--layout", policy, "--json").stdout)
    assert plan["fits"]
    rescue("restore", str(captured), "first", mloops.attach(path), "--yes", "--layout", policy, "--no-preverify")
    check_restored(mloops, gpt, path)
    assert "No errors detected" in sh("sfdisk", "--verify", str(path))
    parts = table(path)["parts"]
    assert [p["uuid"] for p in parts] == [p["uuid"] for p in table(gpt.image)["parts"]]
    assert all(p["start"] % 2048 == 0 for p in parts)
    end = max(p["start"] + p["size"] for p in parts) * 512
    if policy == "proportional":
        assert end > (size_mib - 16) * MiB, "the new drive's space is not used"


def test_plan_says_by_how_much_data_cannot_fit(captured, mloops):
    path = mloops.file("tiny.img", 300 * MiB)
    proc = rescue("plan", str(captured), "first", str(path), "--layout", "proportional", check=False)
    assert proc.returncode == 3 and "DOES NOT FIT" in proc.stdout and "short by" in proc.stdout
    restore = run_rescue("restore", str(captured), "first", str(path), "--layout", "proportional", "--yes")
    assert restore.returncode == 3
    assert proc.stderr == restore.stderr and proc.stderr.count("\n") == 1 and "short by" in proc.stderr, proc.stderr


def test_too_small_target_is_refused_before_writing(captured, mloops):
    path = mloops.file("small.img", 600 * MiB)
    with open(path, "r+b") as f:
        f.write(b"precious" * 1000)
    before = sha_of(path, 0, 600 * MiB)
    proc = rescue("restore", str(captured), "first", mloops.attach(path), "--yes", "--layout", "same", check=False)
    assert proc.returncode != 0
    assert "too small" in proc.stderr and "MiB" in proc.stderr and "short by" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha_of(path, 0, 600 * MiB) == before


def test_incremental_capture_stores_only_changes(gpt, captured, mloops):
    first = json.loads(rescue("info", str(captured), "first", "--json").stdout)["stats"]["stored_bytes"]
    ext = gpt.part("ext4")
    dev = mloops.attach(gpt.image, offset=ext.offset, size=ext.nbytes)
    with mloops.mounted(dev, "ext4") as mnt:  # change about 1% of the stored data
        (mnt / "changed.bin").write_bytes(os.urandom(first // 100))
    rescue("capture", gpt.device, str(captured), "--name", "second")
    listed = {i["name"]: i for i in json.loads(rescue("list", str(captured), "--json").stdout)}
    assert set(listed) >= {"first", "second"}
    assert listed["second"]["stored_bytes"] <= 0.03 * first, (listed["second"]["stored_bytes"], first)
    assert "second" in rescue("list", str(captured)).stdout


def test_mbr_drive_with_logical_partition(mloops):
    drive = build_mbr_drive(mloops)
    repo = mloops.root / "mbr-repo"
    rescue("capture", drive.device, str(repo), "--name", "mbr")
    target = mloops.disk("mbr-target.img", 300 * MiB)
    rescue("restore", str(repo), "mbr", target, "--yes", "--layout", "same")
    check_restored(mloops, drive, mloops.drives / "mbr-target.img")
    src, dst = table(drive.image), table(mloops.drives / "mbr-target.img")
    assert src["id"] == dst["id"] == "0x1234abcd"
    assert src["parts"] == dst["parts"]
    assert sha_of(drive.image, 0, 440) == sha_of(mloops.drives / "mbr-target.img", 0, 440)
    # Onto a larger drive the logical partition grows inside a grown extended partition.
    grown = mloops.disk("mbr-grown.img", 400 * MiB)
    rescue("restore", str(repo), "mbr", grown, "--yes", "--layout", "proportional")
    check_restored(mloops, drive, mloops.drives / "mbr-grown.img")
    parts = {p["type"]: p for p in table(mloops.drives / "mbr-grown.img")["parts"]}
    assert parts["5"]["start"] + parts["5"]["size"] > 390 * 2048


def test_restore_refuses_mounted_target_and_target_holding_repo(captured, mloops):
    path = mloops.file("mounted.img", 1024 * MiB)
    dev = mloops.attach(path)
    sh("mkfs.ext4", "-q", dev)
    with mloops.mounted(dev) as mnt:
        proc = rescue("restore", str(captured), "first", dev, "--yes", check=False)
        assert proc.returncode == 3 and "mounted" in proc.stderr, proc.stderr
        (mnt / "repo").mkdir()
        proc = rescue("capture", dev, str(mnt / "repo"), "--name", "x", check=False)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr


def test_restore_without_yes_on_a_pipe_asks_for_a_terminal(captured, mloops):
    target = mloops.disk("noconfirm.img", 1024 * MiB)
    proc = rescue("restore", str(captured), "first", target, check=False, input="")
    assert proc.returncode == 3 and "--yes" in proc.stderr

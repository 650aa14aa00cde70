"""The plan a person confirms is what runs: restore and clone execute exactly the plan object's
actions, in order; a target that changed after the plan was made is refused; `rescue plan`
shows the drive before and after as bars and lists every step, and --json lists every action."""

from __future__ import annotations

import json

import pytest
from disks import MiB, partition_table
from disks import rescue as run_rescue
from drives import build_gpt_drive, mib_layout

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def source(mloops):
    drive = build_gpt_drive(
        mloops, "plan-src.img", mib_layout((48, "ext4", "root"), (256, "ext4", "home")), size=320 * MiB
    )
    repo = mloops.root / "repo"
    run_rescue("capture", drive.device, str(repo), "--name", "img", check=True)
    return drive, repo


def test_restore_executes_exactly_the_confirmed_actions(source, loops):
    from rescue.imaging.restore import plan_restore, restore
    from rescue.repo.store import Repository

    _, repo_path = source
    repo = Repository.open(repo_path)
    target = loops.disk("t.img", 400 * MiB)
    plan = plan_restore(repo, "img", target, "proportional")
    kinds = [a.kind for a in plan.actions]
    assert kinds[0] == "table" and "grow" in kinds and "check-gaps" in kinds and kinds[-1] == "grub-mbr-gap", kinds
    result = restore(repo, "img", target, plan=plan, preverify=False)
    assert result.actions == plan.actions
    log = open(result.log_path).read()
    for i, act in enumerate(plan.actions, 1):
        assert f"step {i}/{len(plan.actions)}: {act.what}" in log


def test_a_target_changed_after_planning_is_refused_and_left_alone(source, loops):
    from rescue.errors import RefusedError
    from rescue.imaging.restore import plan_restore, restore
    from rescue.repo.store import Repository

    _, repo_path = source
    repo = Repository.open(repo_path)
    target = loops.disk("changed.img", 400 * MiB)
    plan = plan_restore(repo, "img", target)
    partition_table(target, "label: dos\nstart=2048, size=4096, type=83\n")  # someone partitions it meanwhile
    before = (loops.drives / "changed.img").read_bytes()  # 400 MiB, sparse
    with pytest.raises(RefusedError, match="changed since the plan was made"):
        restore(repo, "img", target, plan=plan, preverify=False)
    assert (loops.drives / "changed.img").read_bytes() == before


def test_clone_executes_exactly_the_confirmed_actions(source, loops):
    from rescue.imaging.clone import clone, plan_clone

    drive, _ = source
    target = loops.disk("clone.img", 320 * MiB)
    plan = plan_clone(drive.device, target)
    result = clone(drive.device, target, plan=plan)
    assert result.actions == plan.actions
    assert "recovered" in [a.kind for a in plan.actions]


def test_plan_shows_bars_to_scale_and_every_step(source, loops):
    _, repo = source
    target = loops.disk("shown.img", 200 * MiB)
    out = run_rescue("plan", str(repo), "img", target, check=True).stdout
    before = next(line for line in out.splitlines() if line.startswith("before"))
    after = next(line for line in out.splitlines() if line.startswith("after"))
    assert "|1 ext4" in before and "|2 ext4 home" in before and "|2 ext4 home" in after, out
    assert len(after) < len(before), "the smaller drive's bar is not shorter"
    assert all(ord(c) < 128 for c in before + after), "bars not ASCII"
    assert "steps:" in out and "1. write a new gpt partition table" in out, out
    shown = json.loads(run_rescue("plan", str(repo), "img", target, "--json", check=True).stdout)
    kinds = [a["kind"] for a in shown["actions"]]
    assert kinds[0] == "table" and "shrink" in kinds and "grub-mbr-gap" in kinds, kinds
    assert {a["on_failure"] for a in shown["actions"]} == {"abort", "warn"}

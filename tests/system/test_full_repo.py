"""A repository drive that fills up, is read-only, or whose parts have the wrong type: capture
ends with one line (naming the space it needs when the drive is full), leaves no partial or
temporary file and no chunk no image refers to, and the images already there stay intact."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
from disks import MiB, partition_table, rescue, sh

pytestmark = pytest.mark.root


def source_drive(loops, name: str, random_mib: int, size_mib: int) -> str:
    """A GPT drive with one ext4 partition holding `random_mib` of incompressible data."""
    path = loops.file(name, size_mib * MiB)
    sectors = (size_mib - 2) * 2048
    partition_table(str(path), f'label: gpt\nstart=2048, size={sectors}, name="data"\n')
    dev = loops.attach(path, offset=MiB, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-m", "0", "-L", "data", dev)
    with loops.mounted(dev) as mnt:
        rnd = random.Random(random_mib)
        for i in range(random_mib):
            (mnt / f"r{i}.bin").write_bytes(rnd.randbytes(MiB))
    return loops.attach(path)


@pytest.fixture(scope="module")
def drives(mloops):
    return source_drive(mloops, "small.img", 6, 24), source_drive(mloops, "big.img", 40, 64)


@pytest.fixture
def repo_drive(loops):
    """A 32 MiB ext4 filesystem (no reserved blocks: root could write into them) mounted for
    the repository."""
    dev = loops.disk("repo.img", 32 * MiB)
    sh("mkfs.ext4", "-q", "-m", "0", dev)
    with loops.mounted(dev) as mnt:
        yield mnt


def files_under(root) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "lost+found" not in p.parts
    }


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, proc.stderr
    return err


def test_a_full_drive_ends_in_one_line_naming_the_space_and_leaves_nothing(drives, repo_drive):
    small, big = drives
    repo = repo_drive / "repo"
    assert rescue("capture", small, str(repo), "--name", "first").returncode == 0
    before = files_under(repo)
    free = shutil.disk_usage(repo_drive).free

    proc = rescue("capture", big, str(repo), "--name", "second", "--level", "1")
    assert proc.returncode == 2, proc
    err = one_line(proc)
    assert "full" in err and "needs about" in err and "MiB" in err and "free" in err, err

    after = files_under(repo)
    assert not [p for p in after if p.endswith(".tmp")], after
    assert set(after) - {"lock"} == set(before) - {"lock"}, "orphaned chunks or partial files were left"
    assert not (repo / "images" / "second").exists()
    assert shutil.disk_usage(repo_drive).free >= free - MiB
    listed = json.loads(rescue("list", str(repo), "--json").stdout)
    assert [i["name"] for i in listed] == ["first"] and listed[0]["damaged"] is None
    assert "incomplete" not in rescue("list", str(repo)).stdout
    assert rescue("verify", str(repo), "first").returncode == 0

    # With room made, the same capture works and shares nothing it should not.
    os.unlink(next(p for p in (repo / "images" / "first").iterdir() if p.name == "log.txt"))
    assert rescue("capture", small, str(repo), "--name", "again").returncode == 0
    assert rescue("verify", str(repo), "again").returncode == 0


def test_a_read_only_repository_is_one_line(drives, repo_drive):
    small, _ = drives
    repo = repo_drive / "repo"
    assert rescue("capture", small, str(repo), "--name", "first").returncode == 0
    sh("mount", "-o", "remount,ro", str(repo_drive))
    try:
        proc = rescue("capture", small, str(repo), "--name", "second")
        assert proc.returncode == 2
        assert "read-only" in one_line(proc)
        fresh = rescue("capture", small, str(repo_drive / "new-repo"), "--name", "x")
        assert fresh.returncode == 2 and "read-only" in one_line(fresh)
        assert rescue("verify", str(repo), "first").returncode == 0
        assert rescue("list", str(repo)).returncode == 0
    finally:
        sh("mount", "-o", "remount,rw", str(repo_drive))


@pytest.mark.parametrize("part", ["chunks", "images", "lock", "images/second", "rescue-repo.json"])
def test_parts_of_the_wrong_type_are_one_line(drives, tmp_path, part):
    small, _ = drives
    repo = tmp_path / "repo"
    assert rescue("capture", small, str(repo), "--name", "first").returncode == 0
    target = repo / part
    if target.is_dir():
        shutil.rmtree(target)
        target.write_text("a file where a directory belongs")
    elif target.exists():
        target.unlink()
        target.mkdir()
    else:
        target.write_text("a file where an image directory belongs")
    proc = rescue("capture", small, str(repo), "--name", "second")
    assert proc.returncode != 0
    err = one_line(proc)
    assert part.split("/")[-1] in err or "not a rescue repository" in err, err
    assert not [p for p in files_under(repo) if p.endswith(".tmp")]

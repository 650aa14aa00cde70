"""A repository's life: delete, prune, copy, and the lock that keeps them from running beside a
capture. Real captures of real drives (loop devices, ext4), the CLI as a user runs it; every
claim checked the way a user would: `list`, `verify`, the files on the repository's drive."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh

pytestmark = pytest.mark.root


def make_drive(loops, name: str, seed: int, size_mib: int = 48) -> str:
    """A GPT drive, one ext4 partition holding 6 MiB of incompressible files."""
    path = loops.file(name, size_mib * MiB)
    sectors = (size_mib - 2) * 2048
    partition_table(str(path), f'label: gpt\nstart=2048, size={sectors}, name="data"\n')
    dev = loops.attach(path, offset=MiB, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-m", "0", "-L", f"d{seed}", dev)
    add_files(loops, dev, seed, 6)
    return loops.attach(path)


def add_files(loops, partition: str, seed: int, mib: int) -> None:
    with loops.mounted(partition) as mnt:
        rnd = random.Random(seed)
        for i in range(mib):
            (mnt / f"f{seed}-{i}.bin").write_bytes(rnd.randbytes(MiB))


def chunk_files(repo: Path) -> set[str]:
    return {p.name for p in (repo / "chunks").rglob("*") if p.is_file()}


def listed(repo: Path) -> list[str]:
    return [i["name"] for i in json.loads(rescue("list", str(repo), "--json", check=True).stdout)]


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, proc.stderr
    return err


@pytest.fixture(scope="module")
def two_drives(mloops):
    return make_drive(mloops, "a.img", 1), make_drive(mloops, "b.img", 2)


def test_delete_then_prune_frees_exactly_what_only_that_image_used(two_drives, tmp_path):
    a, b = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "a", check=True)
    only_a = chunk_files(repo)
    rescue("capture", b, str(repo), "--name", "b", check=True)
    only_b = chunk_files(repo) - only_a
    assert only_b, "the second drive stored chunks of its own"

    out = rescue("delete", str(repo), "a", check=True)
    assert "deleted image a" in out.stdout
    assert listed(repo) == ["b"], "gone from the listing at once"
    assert chunk_files(repo) == only_a | only_b, "delete keeps chunks until prune"

    dry = rescue("prune", str(repo), "--dry-run", check=True)
    assert "would remove" in dry.stdout and chunk_files(repo) == only_a | only_b
    out = rescue("prune", str(repo), check=True)
    shared = only_a & only_b
    assert chunk_files(repo) == only_b | shared
    removed = len(only_a - only_b)
    assert f"removed {removed} chunks" in out.stdout, out.stdout
    rescue("verify", str(repo), "b", check=True)
    assert not (repo / "lock.json").exists(), "the lock is released"


def test_keep_rules_never_remove_images_of_a_drive_without_a_serial(two_drives, tmp_path):
    """Loop devices, like virtio disks and many USB enclosures, have no serial number: their
    images cannot be told from a twin machine's, so keep rules keep them all (the grouping per
    serial is tests/unit/test_repo_life.py's); `delete` still removes one."""
    a, _ = two_drives
    repo = tmp_path / "repo"
    for name in ("a1", "a2"):
        rescue("capture", a, str(repo), "--name", name, check=True)
    out = rescue("prune", str(repo), "--keep-last", "1", check=True)
    assert sorted(listed(repo)) == ["a1", "a2"] and "removed image" not in out.stdout, out.stdout
    rescue("delete", str(repo), "a1", check=True)
    rescue("prune", str(repo), check=True)
    rescue("verify", str(repo), "a2", check=True)


def test_prune_refuses_while_an_image_is_damaged_and_removes_nothing(two_drives, tmp_path):
    a, b = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "a", check=True)
    rescue("capture", b, str(repo), "--name", "b", check=True)
    rescue("delete", str(repo), "a", check=True)
    before = chunk_files(repo)
    idx = next((repo / "images" / "b").glob("p*.idx"))
    idx.write_bytes(idx.read_bytes()[:-1] + b"\x00")
    proc = rescue("prune", str(repo))
    assert proc.returncode == 1 and "prune would take chunks it may need" in one_line(proc)
    assert chunk_files(repo) == before


def test_prune_clears_what_an_interrupted_capture_left(two_drives, tmp_path):
    a, _ = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "a", check=True)
    leftover = repo / "images" / "half"
    leftover.mkdir()
    (leftover / "p1.idx").write_bytes(b"partial")
    (repo / "chunks" / "ff").mkdir(exist_ok=True)
    orphan = repo / "chunks" / "ff" / ("ff" * 32)
    orphan.write_bytes(b"orphan")
    out = rescue("prune", str(repo), check=True)
    assert "interrupted capture left: half" in out.stdout
    assert not leftover.exists() and not orphan.exists()
    rescue("verify", str(repo), "a", check=True)


def test_copy_sends_only_missing_chunks_and_resumes(two_drives, tmp_path):
    a, b = two_drives
    src, dst = tmp_path / "src", tmp_path / "dst"
    rescue("capture", a, str(src), "--name", "a", check=True)
    rescue("capture", a, str(src), "--name", "a-again", check=True)
    rescue("capture", b, str(src), "--name", "b", check=True)

    first = rescue("copy", str(src), "a", str(dst), check=True)
    assert "the rest were there already" in first.stdout
    rescue("verify", str(dst), "a", check=True)
    second = rescue("copy", str(src), "a-again", str(dst), check=True)
    assert "copied a-again: 0 of" in second.stdout, second.stdout

    # An interrupted copy: chunks there, no manifest. Run again, nothing travels twice.
    rescue("copy", str(src), "b", str(dst), check=True)
    (dst / "images" / "b" / "manifest.json").unlink()
    assert "b" not in listed(dst)
    again = rescue("copy", str(src), "b", str(dst), check=True)
    assert "copied b: 0 of" in again.stdout, again.stdout
    for name in ("a", "a-again", "b"):
        rescue("verify", str(dst), name, check=True)
    assert json.loads(rescue("list", str(dst), "--json", check=True).stdout)[0]["stored_bytes"] > 0


def test_copy_refuses_a_damaged_chunk_and_the_copy_does_not_exist(two_drives, tmp_path):
    a, _ = two_drives
    src, dst = tmp_path / "src", tmp_path / "dst"
    rescue("capture", a, str(src), "--name", "a", check=True)
    victim = max((p for p in (src / "chunks").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    victim.write_bytes(bytes(blob))
    proc = rescue("copy", str(src), "a", str(dst))
    assert proc.returncode == 1 and victim.name[:16] in one_line(proc)
    assert listed(dst) == []


LOCKER = """
import sys, time
from rescue.repo.store import Repository
repo = Repository.open(sys.argv[1])
with repo.writer_lock("capture"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_held_lock_refuses_others_and_a_killed_holders_lock_is_taken_over(two_drives, tmp_path):
    a, _ = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "a", check=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (("prune", str(repo)), ("delete", str(repo), "a"), ("capture", a, str(repo), "--name", "x")):
            proc = rescue(*argv)
            assert proc.returncode == 2 and "is busy" in one_line(proc), argv
        proc = rescue("unlock", str(repo))
        assert proc.returncode == 2 and f"pid {holder.pid}" in one_line(proc) and "not stale" in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (repo / "lock.json").exists(), "a killed job leaves its lock"
    out = rescue("prune", str(repo), check=True)  # this machine's holder is gone: stale at once
    assert "removed 0 chunks" in out.stdout
    assert listed(repo) == ["a"] and not (repo / "lock.json").exists()


def test_a_lock_of_another_machine_is_removed_only_when_stale_or_forced(two_drives, tmp_path):
    a, _ = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "a", check=True)
    now = time.time()
    lock = {"job": "capture", "host": "lab-07", "pid": 4242, "process_start": 1, "boot_id": "x", "token": "t"}
    (repo / "lock.json").write_text(json.dumps({**lock, "started": now - 600, "refreshed": now - 5}))
    proc = rescue("prune", str(repo))
    assert proc.returncode == 2 and "capture by pid 4242 on lab-07" in one_line(proc)
    assert rescue("unlock", str(repo)).returncode == 2
    assert "removed the lock of capture by pid 4242 on lab-07" in rescue("unlock", str(repo), "--force").stdout
    stale = {**lock, "started": now - 900, "refreshed": now - 600}
    (repo / "lock.json").write_text(json.dumps(stale))
    assert "removed the lock" in rescue("unlock", str(repo), check=True).stdout
    # A local repository's job holds the directory's flock first: no writer of this machine
    # is alive, and a lock not refreshed for minutes is a crashed job's (a stick moved after it).
    (repo / "lock.json").write_text(json.dumps(stale))
    rescue("prune", str(repo), check=True)
    assert not (repo / "lock.json").exists()


def test_prune_racing_captures_never_takes_a_chunk_an_image_needs(two_drives, tmp_path, mloops):
    """A capture and a prune started together, again and again: each prune either runs
    alone or is refused as busy, and every image verifies at the end."""
    a, b = two_drives
    repo = tmp_path / "repo"
    rescue("capture", a, str(repo), "--name", "base", check=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for round_ in range(6):
        names = listed(repo)
        if len(names) > 1:  # garbage for the prune to find
            rescue("delete", str(repo), names[0], check=True)
        cap = subprocess.Popen(
            [sys.executable, "-m", "rescue", "capture", b if round_ % 2 else a, str(repo), "--name", f"r{round_}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.05 * round_)
        prune = rescue("prune", str(repo))
        cap_out, cap_err = cap.communicate(timeout=300)
        assert prune.returncode in (0, 2), prune.stderr
        if prune.returncode == 2:
            assert "is busy" in one_line(prune)
        assert cap.returncode in (0, 2), cap_err
        if cap.returncode == 2:
            assert "is busy" in cap_err
    for name in listed(repo):
        rescue("verify", str(repo), name, check=True)
    assert listed(repo), "some captures ran"

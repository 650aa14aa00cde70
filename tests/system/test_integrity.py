"""Damage of every kind is found and named, and nothing reaches a drive from a damaged image."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from disks import MiB, partition_table, populate, rescue, sh
from drives import sha_of

pytestmark = pytest.mark.root
RESCUE = [sys.executable, "-m", "rescue"]


@pytest.fixture(scope="module")
def source(mloops):
    path = mloops.file("src.img", 160 * MiB)
    partition_table(str(path), 'label: gpt\nstart=2048, size=300000, name="data"\n')
    dev = mloops.attach(path, offset=MiB, size=300000 * 512)
    sh("mkfs.ext4", "-q", "-L", "data", dev)
    with mloops.mounted(dev) as mnt:
        populate(mnt, seed=3, files=30)
    return mloops.attach(path)


@pytest.fixture(scope="module")
def pristine(source, mloops):
    repo = mloops.root / "pristine"
    assert rescue("capture", source, str(repo), "--name", "img").returncode == 0
    return repo


@pytest.fixture
def repo(pristine, tmp_path):
    """A private copy of the repository to damage."""
    copy = tmp_path / "repo"
    shutil.copytree(pristine, copy)
    return copy


def some_chunk(repo) -> str:
    chunks = sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())
    return str(max(chunks, key=lambda p: p.stat().st_size))


def assert_refused_and_target_untouched(repo, loops, expect: str) -> None:
    path = loops.file(f"target-{time.monotonic_ns()}.img", 200 * MiB)
    with open(path, "r+b") as f:
        f.write(os.urandom(MiB))
    before = sha_of(path, 0, 200 * MiB)
    proc = rescue("restore", str(repo), "img", loops.attach(path), "--yes")
    assert proc.returncode != 0
    assert expect in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sha_of(path, 0, 200 * MiB) == before, "restore wrote to the target from a damaged image"


def test_intact_image_verifies(repo):
    proc = rescue("verify", str(repo), "img")
    assert proc.returncode == 0 and "intact" in proc.stdout
    listed = json.loads(rescue("list", str(repo), "--json").stdout)
    assert listed[0]["verified"] is True


def test_flipped_bit_is_named_by_verify_and_stops_restore(repo, loops):
    chunk = some_chunk(repo)
    with open(chunk, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x10]))
    proc = rescue("verify", str(repo), "img")
    assert proc.returncode == 1
    assert "area p1" in proc.stderr and "offset" in proc.stderr and "damaged" in proc.stderr, proc.stderr
    assert_refused_and_target_untouched(repo, loops, "damaged")


def test_missing_chunk(repo, loops):
    os.unlink(some_chunk(repo))
    proc = rescue("verify", str(repo), "img")
    assert proc.returncode == 1 and "missing" in proc.stderr
    assert_refused_and_target_untouched(repo, loops, "missing")


def test_damaged_chunk_stops_restore_even_without_preverify(repo, loops):
    chunk = some_chunk(repo)
    with open(chunk, "r+b") as f:
        f.truncate(os.path.getsize(chunk) - 10)
    path = loops.file("target.img", 200 * MiB)
    proc = rescue("restore", str(repo), "img", loops.attach(path), "--yes", "--no-preverify")
    assert proc.returncode == 1 and "chunk" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_damaged_manifest(repo, loops, damage):
    manifest = repo / "images" / "img" / "manifest.json"
    text = manifest.read_text()
    if damage == "truncate":
        manifest.write_text(text[: len(text) // 2])
    elif damage == "edit":
        manifest.write_text(text.replace('"table": "gpt"', '"table": "msdos"'))
    else:
        manifest.write_bytes(b"\x00\xff" * 10)
    proc = rescue("verify", str(repo), "img")
    assert proc.returncode == 1 and "manifest" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_refused_and_target_untouched(repo, loops, "manifest")


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_index(repo, loops, damage):
    index = repo / "images" / "img" / "p1.idx"
    if damage == "missing":
        index.unlink()
    elif damage == "truncate":
        index.write_bytes(index.read_bytes()[:-40])
    else:
        blob = bytearray(index.read_bytes())
        blob[40] ^= 1
        index.write_bytes(bytes(blob))
    proc = rescue("verify", str(repo), "img")
    assert proc.returncode == 1 and "p1" in proc.stderr and "index" in proc.stderr, proc.stderr
    assert_refused_and_target_untouched(repo, loops, "index")


def test_killed_capture_leaves_no_image_and_no_damage(source, repo):
    """kill -9 half way: `list` shows no complete image of that name, the earlier image still
    verifies, and a new capture under the same name works."""
    proc = subprocess.Popen(
        RESCUE + ["capture", source, str(repo), "--name", "killed", "--threads", "1", "--level", "19"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    idx = repo / "images" / "killed"
    while (
        time.monotonic() < deadline
        and not any(idx.glob("*.tmp"))
        and not list((repo / "chunks").rglob(".*.tmp"))
        and proc.poll() is None
    ):
        if idx.exists() and (idx / "log.txt").exists() and "p1" in (idx / "log.txt").read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = [i["name"] for i in json.loads(rescue("list", str(repo), "--json").stdout)]
    assert "killed" not in names
    assert "incomplete" in rescue("list", str(repo)).stdout or not idx.exists()
    assert rescue("verify", str(repo), "img").returncode == 0
    again = rescue("capture", source, str(repo), "--name", "killed")
    assert again.returncode == 0, again.stderr
    assert rescue("verify", str(repo), "killed").returncode == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["list", "/nonexistent"], "not a rescue repository"),
        (["verify", "{repo}", "nope"], "no image named"),
        (["capture", "/dev/does-not-exist", "{tmp}/r", "--name", "x"], "does not exist"),
        (["capture", "{source}", "{tmp}/r", "--name", "../evil"], "invalid image name"),
        (["capture", "{source}", "{tmp}/r", "--name", "x", "--level", "99"], "level"),
        (["restore", "{repo}", "img", "/dev/does-not-exist", "--yes"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(repo, source, tmp_path, argv, message):
    argv = [a.format(repo=repo, tmp=tmp_path, source=source) for a in argv]
    proc = rescue(*argv)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_existing_image_name_is_not_overwritten(repo, source):
    before = (repo / "images" / "img" / "manifest.json").read_bytes()
    proc = rescue("capture", source, str(repo), "--name", "img")
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (repo / "images" / "img" / "manifest.json").read_bytes() == before


def test_help_explains_every_command():
    out = subprocess.run(RESCUE + ["--help"], stdout=subprocess.PIPE, text=True).stdout
    for cmd in ("disks", "capture", "list", "info", "verify", "restore", "wizard"):
        assert cmd in out
        sub = subprocess.run(RESCUE + [cmd, "--help"], stdout=subprocess.PIPE, text=True)
        assert sub.returncode == 0 and "usage: rescue " + cmd in sub.stdout

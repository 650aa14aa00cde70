"""A capture of a failing drive that is stopped resumes from what it kept (ddrescue's mapfile
resume): stopped once with SIGTERM and once with SIGKILL, the third run completes; no area
found bad before a stop is read again (the retry pass aside, once), the chunks already stored
are not read again, the image verifies and every file the bad sectors missed comes back
identical. The failing drive is the FUSE device of tests/faulty_disk.py, each failed read
taking 0.2 s as a (fast) dying drive's would, with every read it serves logged."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, tree_hashes
from faulty_disk import faulty_block_device

from rescue.errors import SECTORS_LOST, Cancelled
from rescue.model.badmap import parse_mapfile

pytestmark = pytest.mark.root
PART = (MiB, 94 * MiB)  # offset, size on the 96 MiB drive
FILES = 14
DELAY = 0.2  # seconds per failed read
NAME = "dying"


def build(loops) -> tuple[Path, list[tuple[int, int]], set[str]]:
    """The drive (ext4 holding FILES random files of 4 MiB), the bad ranges and the files they
    hit: one sector in the middle of every other file, and 8 sectors (a bad 4 KiB physical
    sector) in the last one hit; each in a chunk of its own."""
    drive = loops.file("dying.img", 96 * MiB)
    partition_table(str(drive), f'label: gpt\nstart=2048, size={PART[1] // 512}, name="data"\n')
    part = loops.attach(drive, offset=PART[0], size=PART[1])
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", part], check=True)
    rnd = random.Random(19)
    bad, hit = [], set()
    with loops.mounted(part) as mnt:
        for i in range(FILES):
            (mnt / f"f{i:02d}.bin").write_bytes(rnd.randbytes(4 * MiB))
        subprocess.run(["sync"], check=True)
        for i in range(1, FILES, 2):
            out = subprocess.run(["filefrag", "-v", "-e", str(mnt / f"f{i:02d}.bin")], capture_output=True, text=True)
            first = int(re.search(r"^\s*0:\s+0\.\.\s*\d+:\s+(\d+)\.\.", out.stdout, re.M).group(1))
            at = PART[0] + first * 4096 + 2 * MiB + 4096 * rnd.randrange(64)
            bad.append((at + 512 * rnd.randrange(8), 512) if i < FILES - 1 else (at, 8 * 512))
            hit.add(f"f{i:02d}.bin")
    loops.detach()
    return drive, sorted(bad), hit


def reads(log: Path, first: int, last: int | None, result: str) -> list[tuple[int, int]]:
    """(offset, size) of the reads with `result` ("ok", "EIO") the FUSE device served,
    lines [first, last) of its log."""
    lines = log.read_text().splitlines()[first:last]
    return [(int(o), int(n)) for o, n, r in (line.split() for line in lines) if r == result]


def run_until(argv: list[str], resume_file: Path, bad_seen: int, sig: int) -> tuple[subprocess.Popen, list]:
    """Start a capture, wait until its resume file names `bad_seen` bad ranges, send `sig`;
    return the process (ended) and the bad ranges its resume file named last."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    known: list = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                known = parse_mapfile(json.loads(resume_file.read_text())["mapfile"]).bad_ranges()
            except (OSError, ValueError, KeyError):
                known = []
            if len(known) >= bad_seen:
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(known) >= bad_seen, f"the capture ended ({proc.returncode}) before {bad_seen} bad ranges were kept"
    if resume_file.exists():
        known = parse_mapfile(json.loads(resume_file.read_text())["mapfile"]).bad_ranges()
    return proc, known


def touches(reads: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(o, n) for o, n in reads if any(o < s + ln and s < o + n for s, ln in ranges)]


def test_an_interrupted_capture_resumes_without_reading_again(loops, tmp_path):
    drive, bad, hit = build(loops)
    repo = tmp_path / "repo"
    resume_file = repo / "images" / NAME / "resume.json"
    log = tmp_path / "reads.log"
    with faulty_block_device(loops, drive, bad=bad, log=log, bad_delay=DELAY) as dev:
        argv = [sys.executable, "-m", "rescue", "capture", dev, str(repo), "--name", NAME]

        first, known1 = run_until(argv, resume_file, 2, signal.SIGTERM)
        err = first.stderr.read()
        assert first.returncode == Cancelled.exit_code, err
        assert f"of {NAME} is read and kept: the same capture (same drive, repository and name) resumes it" in err
        assert "Traceback" not in err
        assert (repo / "images" / NAME / "manifest.json").exists() is False
        lines1 = len(log.read_text().splitlines())

        # The second run is killed once it has found one bad range more than the first kept:
        # a fixed count could already be reached by the first run, killing the second before
        # it said anything.
        assert len(known1) < len(bad), "the first run found every bad sector before it stopped"
        second, known2 = run_until(argv, resume_file, len(known1) + 1, signal.SIGKILL)
        assert second.returncode == -signal.SIGKILL
        assert re.search(rf"resuming the interrupted capture {NAME}: \d+% already read", second.stderr.read())
        lines2 = len(log.read_text().splitlines())
        already = json.loads(resume_file.read_text())

        third = rescue(*argv[3:])
        assert third.returncode == SECTORS_LOST, third.stderr
        pct = round(100 * already["done_bytes"] / already["total_bytes"])
        assert f"resuming the interrupted capture {NAME}: {pct}% already read" in third.stderr

    # Done: the map names exactly the bad sectors, and the resume file is gone.
    image = repo / "images" / NAME
    assert parse_mapfile((image / "badsectors.map").read_text()).bad_ranges() == bad
    assert not resume_file.exists()
    assert not (image / "resume.json").exists()

    # No area found bad before a stop was read again, but by the retry pass: one sector at a
    # time, once (the default one retry pass, made only by the run that finishes).
    assert not touches(reads(log, lines1, lines2, "EIO"), known1)
    retried = touches(reads(log, lines2, None, "EIO"), known2)
    assert all(n == 512 for _, n in retried), retried
    assert len(retried) <= sum(n for _, n in known2) // 512

    # What the third run read fine: the chunks not stored yet, and the good sectors around
    # the bad ones (a chunk with bad sectors is stored once complete), not the rest again.
    ok = sum(n for _, n in reads(log, lines2, None, "ok"))
    assert 0 < already["done_bytes"] and ok <= already["total_bytes"] - already["done_bytes"] + (len(bad) + 1) * 4 * MiB

    # The image verifies; every file the bad sectors missed is identical.
    assert rescue("verify", str(repo), NAME).returncode == 0
    target = loops.disk("target.img", 96 * MiB)
    assert rescue("restore", str(repo), NAME, target, "--yes").returncode == 0
    src = loops.attach(drive, offset=PART[0], size=PART[1], readonly=True)
    dst = loops.attach(loops.drives / "target.img", offset=PART[0], size=PART[1], readonly=True)
    with loops.mounted(src, options="ro") as a, loops.mounted(dst, options="ro") as b:
        want, got = tree_hashes(a), tree_hashes(b)
    assert set(want) == set(got)
    assert {f for f in want if want[f] != got[f]} == hit
    badfiles = json.loads((image / "badfiles.json").read_text())["ranges"]
    assert {Path(n).name for names in badfiles.values() for n in names} == hit

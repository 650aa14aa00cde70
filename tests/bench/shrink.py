"""`make bench`: restoring onto a smaller drive (the filesystem shrunk on the target, only the
data past the new end in scratch) against restoring the same image onto a drive of the same
size, in one run.

The image is the bench drive of imaging.py (2.5 GiB, ext4, ~1.1 GiB in use). Each round
restores it onto a blank same-size drive and onto a blank 2.3 GiB drive, the order alternating
between rounds, page cache dropped before each run; every result is checked (fsck clean, the
same files as the source). Prints each run, the medians, and shrink throughput as a share of
the same-size restore's (target: at least 70%)."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging import DRIVE_SIZE, VENV_PY, WORK, MiB, _losetup, build_drive, drop_caches, say  # noqa: E402

ROUNDS = 3
SMALLER = 2368 * MiB  # resize2fs -P puts this filesystem's minimum at 2.1 GiB (+5% margin)


def _restore(repo: Path, size: int, name: str) -> tuple[float, Path]:
    target = WORK / f"{name}.img"
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(size)
    dev = _losetup(target)
    try:
        drop_caches()
        t = time.monotonic()
        out = subprocess.run(
            [VENV_PY, "-m", "rescue", "restore", str(repo), "b", dev, "--yes", "--no-preverify"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        seconds = time.monotonic() - t
    finally:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", dev])
    assert bool(re.search(r"\sshrink$", out, re.M)) == (size < DRIVE_SIZE), out  # the table's action column
    return seconds, target


def _tree(image: Path) -> str:
    """fsck, then a digest of every file's path and content (sha256sum over the mounted tree)."""
    parts = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], check=True, stdout=subprocess.PIPE, text=True).stdout
    )["partitiontable"]["partitions"]
    dev = _losetup(image, parts[0]["start"] * 512, parts[0]["size"] * 512, ro=True)
    mnt = WORK / "check"
    mnt.mkdir(exist_ok=True)
    try:
        subprocess.run(["e2fsck", "-fn", dev], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True)
        try:
            return subprocess.run(
                ["bash", "-c", "find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum"],
                cwd=mnt,
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout.split()[0]
        finally:
            subprocess.run(["umount", str(mnt)])
    finally:
        subprocess.run(["losetup", "-d", dev])


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    drive = WORK / "drive.img"
    if not drive.exists():
        build_drive(drive)
    repo = WORK / "shrink-repo"
    if not (repo / "images" / "b" / "manifest.json").exists():
        disk = _losetup(drive, ro=True)
        try:
            say("capturing the bench drive once ...")
            subprocess.run(
                [VENV_PY, "-m", "rescue", "capture", disk, str(repo), "--name", "b"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        finally:
            subprocess.run(["losetup", "-d", disk])
    data = int(
        json.loads(
            subprocess.run(
                [VENV_PY, "-m", "rescue", "info", str(repo), "b", "--json"],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            ).stdout
        )["stats"]["data_bytes"]
    )
    source = _tree(drive)
    runs: dict[str, list[float]] = {"same size": [], "smaller (shrink)": []}
    for r in range(ROUNDS):
        order = [("same size", DRIVE_SIZE), ("smaller (shrink)", SMALLER)]
        for label, size in order if r % 2 == 0 else order[::-1]:
            seconds, target = _restore(repo, size, "shrink-target")
            assert _tree(target) == source, f"{label}: restored files differ from the source"
            target.unlink()
            runs[label].append(seconds)
            say(f"round {r + 1}: {label}: {seconds:.2f} s, {data / seconds / 1e6:.0f} MB/s")
    same, small = statistics.median(runs["same size"]), statistics.median(runs["smaller (shrink)"])
    print()
    print(f"image data {data / MiB:.0f} MiB; {ROUNDS} rounds, order alternated; medians:")
    print(f"  restore onto the same size:        {same:6.2f} s  {data / same / 1e6:6.0f} MB/s")
    print(f"  restore onto 2.3 GiB (shrinking):  {small:6.2f} s  {data / small / 1e6:6.0f} MB/s")
    print(f"shrink-restore throughput vs same-size restore: {same / small:.0%} (target >= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

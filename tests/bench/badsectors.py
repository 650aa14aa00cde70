"""Bad sectors, measured: what 1,000 unreadable sectors cost a capture, and whether every
good sector still comes back exactly. Run by hand as root (not a test, prints numbers):

    .venv/bin/python tests/bench/badsectors.py [--keep]

A 1 GiB drive (GPT, one ext4 partition about 60% full of random files, reproducible from
fixed seeds) is shown through the faulty block device of the tests (a FUSE file returning
EIO for chosen sectors, under a read-only loop device with direct I/O) and captured with
`python -m rescue capture` as a user would:
  (a) clean: no bad sectors;
  (b) 1,000 single bad sectors scattered inside files' data (chosen from filefrag's extents).
Each capture goes to its own repository (no deduplication between them) after dropping the
page cache. Then (b) is restored with `python -m rescue restore` onto a blank file and every
used block of the partition is compared with the source: the bad sectors must read as zeros,
everything else byte for byte. Finally the files hit are looked up (rescue.filesystems.badfiles)
and checked against the files the sectors were chosen in.

Targets: (b) takes at most 3x (a); sectors lost is exactly 1,000; every good sector matches."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from disks import LoopRegistry  # noqa: E402
from faulty_disk import faulty_block_device  # noqa: E402

from rescue.errors import SECTORS_LOST  # noqa: E402

MiB = 1 << 20
DRIVE = 1024 * MiB
PART = (MiB, DRIVE - 2 * MiB)  # offset, size: GPT leaves the last 33 sectors
FILL = 0.60
BAD = 1000
SECTOR = 512


def say(msg: str) -> None:
    print(f"[badsectors] {msg}", flush=True)


def sh(*argv: str, **kw) -> str:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def build(loops: LoopRegistry) -> tuple[Path, dict[str, list[tuple[int, int]]], int]:
    """The drive file, each file's physical byte extents on the drive, and the fs block size."""
    say("building a 1 GiB drive: GPT, ext4, ~60% random files ...")
    drive = loops.file("drive.img", DRIVE)
    sh(
        "sfdisk",
        "-q",
        "--no-reread",
        "--no-tell-kernel",
        str(drive),
        input=f'label: gpt\nstart=2048, size={PART[1] // SECTOR}, name="data"\n',
    )
    part = loops.attach(drive, offset=PART[0], size=PART[1])
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "bench", part)
    rnd = random.Random(2026)
    extents: dict[str, list[tuple[int, int]]] = {}
    with loops.mounted(part) as mnt:
        want, written, i = int(PART[1] * FILL), 0, 0
        while written < want:
            size = min(rnd.choice([rnd.randint(4 << 10, 512 << 10), rnd.randint(1 * MiB, 24 * MiB)]), want - written)
            rel = f"d{i % 17:02d}/file{i:04d}.bin"
            (mnt / rel).parent.mkdir(exist_ok=True)
            (mnt / rel).write_bytes(rnd.randbytes(size))
            written, i = written + size, i + 1
        sh("sync")
        for path in sorted(mnt.rglob("*.bin")):
            out = sh("filefrag", "-v", "-e", str(path))
            bs = int(re.search(r"blocks of (\d+) bytes", out).group(1))
            size = path.stat().st_size
            runs = []
            for m in re.finditer(r"^\s*\d+:\s+(\d+)\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):", out, re.M):
                logical, first, last = int(m.group(1)), int(m.group(2)), int(m.group(3))
                # only bytes that hold the file's data (not the tail of its last block)
                length = min((last - first + 1) * bs, size - logical * bs)
                if length > 0:
                    runs.append((PART[0] + first * bs, length))
            extents["/" + str(path.relative_to(mnt))] = runs
        say(f"  {i} files, {written / MiB:.0f} MiB of data")
    return drive, extents, 4096


def choose_bad(extents: dict[str, list[tuple[int, int]]]) -> tuple[list[tuple[int, int]], dict[int, str]]:
    """BAD single sectors inside file data, at least 2 MiB from the partition's edges (blkid
    probes there with buffered reads), none adjacent: 1,000 places, 1,000 sectors."""
    rnd = random.Random(5)
    lo, hi = PART[0] + 2 * MiB, PART[0] + PART[1] - 2 * MiB
    sectors: list[tuple[int, str]] = []
    for name, runs in extents.items():
        for start, length in runs:
            first = max(start, lo) // SECTOR
            last = min(start + length, hi) // SECTOR  # exclusive
            sectors.extend((s, name) for s in range(first, last, 4))  # every 4th: never adjacent
    picked = sorted(rnd.sample(sectors, BAD))
    return [(s * SECTOR, SECTOR) for s, _ in picked], {s * SECTOR: n for s, n in picked}


def rescue(*args: str) -> tuple[float, str]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rescue", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    seconds = time.monotonic() - began
    if proc.returncode not in (0, SECTORS_LOST):  # a capture that lost sectors is done, not clean
        raise SystemExit(f"rescue {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds, proc.stdout


def used_ranges(part_dev: str) -> list[tuple[int, int]]:
    """Used byte ranges of the partition (drive offsets), from dumpe2fs's free blocks."""
    dump = sh("dumpe2fs", part_dev, stderr=subprocess.DEVNULL)
    bs = int(re.search(r"^Block size:\s+(\d+)", dump, re.M).group(1))
    count = int(re.search(r"^Block count:\s+(\d+)", dump, re.M).group(1))
    free = []
    for part in re.findall(r"^\s+Free blocks: (.*)$", dump, re.M):
        for item in filter(None, (p.strip() for p in part.split(","))):
            a, _, b = item.partition("-")
            free.append((int(a), int(b or a) + 1))
    used, pos = [], 0
    for a, b in sorted(free):
        if a > pos:
            used.append((PART[0] + pos * bs, (a - pos) * bs))
        pos = max(pos, b)
    if pos < count:
        used.append((PART[0] + pos * bs, (count - pos) * bs))
    return used


def compare(drive: Path, target: Path, used: list[tuple[int, int]], bad: list[tuple[int, int]]) -> tuple[int, int]:
    """(mismatched bytes outside bad sectors, non-zero bytes inside bad sectors)."""
    bad_set = {s for s, _ in bad}
    wrong = nonzero = 0
    with open(drive, "rb") as a, open(target, "rb") as b:
        for start, length in used:
            for off in range(start, start + length, 8 * MiB):
                n = min(8 * MiB, start + length - off)
                src, dst = bytearray(os.pread(a.fileno(), n, off)), os.pread(b.fileno(), n, off)
                for s in range(off - off % SECTOR, off + n, SECTOR):
                    if s in bad_set and s >= off:
                        nonzero += sum(1 for x in dst[s - off : s - off + SECTOR] if x)
                        src[s - off : s - off + SECTOR] = bytes(SECTOR)
                if bytes(src) != dst:
                    wrong += sum(1 for x, y in zip(src, dst) if x != y)
    return wrong, nonzero


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop devices, FUSE, mounts)")
    work = Path(tempfile.mkdtemp(prefix="rescue-bench-bad-", dir="/var/tmp"))
    loops = LoopRegistry(work)
    try:
        drive, extents, _ = build(loops)
        bad, owner = choose_bad(extents)
        say(f"{len(bad)} bad sectors in {len(set(owner.values()))} files")

        drop_caches()
        with faulty_block_device(loops, drive) as dev:
            t_clean, _ = rescue("capture", dev, str(work / "repo-a"), "--name", "clean")
        say(f"(a) clean capture: {t_clean:.1f} s")

        drop_caches()
        with faulty_block_device(loops, drive, bad=bad) as dev:
            t_bad, out = rescue("capture", dev, str(work / "repo-b"), "--name", "bad")
            manifest = json.loads((work / "repo-b" / "images" / "bad" / "manifest.json").read_text())
            lost = manifest["stats"]["sectors_lost"]
            log = (work / "repo-b" / "images" / "bad" / "log.txt").read_text()
            reads, failed = map(int, re.search(r"(\d+) reads \((\d+) failed", log).groups())
            say(f"(b) capture with {len(bad)} bad sectors: {t_bad:.1f} s")
            from rescue.filesystems.badfiles import annotate, read_badfiles
            from rescue.model.badmap import parse_mapfile
            from rescue.repo.store import Repository

            stored = read_badfiles(Repository.open(work / "repo-b"), "bad")
            began = time.monotonic()
            mapped = parse_mapfile((work / "repo-b" / "images" / "bad" / "badsectors.map").read_text()).bad_ranges()
            hits = stored or annotate(dev, Repository.open(work / "repo-b").manifest("bad").areas, mapped)
            t_lookup = time.monotonic() - began

        target = loops.file("target.img", DRIVE)
        tdev = loops.attach(target)
        t_restore, _ = rescue("restore", str(work / "repo-b"), "bad", tdev, "--yes")
        part = loops.attach(drive, offset=PART[0], size=PART[1], readonly=True)
        used = used_ranges(part)
        wrong, nonzero = compare(drive, target, used, bad)

        right = sum(1 for s, n in bad if hits.get(f"{s}-{s + n - 1}") == [owner[s]])
        print()
        print(f"drive: 1 GiB, ext4 partition {sum(n for _, n in used) / MiB:.0f} MiB used")
        print(f"(a) clean capture              {t_clean:7.1f} s")
        print(
            f"(b) capture, {BAD} bad sectors  {t_bad:7.1f} s   ratio (b)/(a) = {t_bad / t_clean:.2f}"
            f"  (target <= 3)  {'OK' if t_bad <= 3 * t_clean else 'MISSED'}"
        )
        print(f"sectors lost                   {lost:7d}     (must be {BAD})  {'OK' if lost == BAD else 'WRONG'}")
        print(
            f"reads of (b), failed           {reads:7d}, {failed} failed ({failed / BAD:.1f} per bad sector: "
            f"what costs seconds each on a real dying drive)"
        )
        print(f"restore of (b)                 {t_restore:7.1f} s")
        print(f"good sectors mismatched        {wrong:7d} bytes  {'OK' if wrong == 0 else 'WRONG'}")
        print(f"bad sectors not zero           {nonzero:7d} bytes  {'OK' if nonzero == 0 else 'WRONG'}")
        print(
            f"files hit named right          {right:7d} of {BAD}  "
            f"({'stored by capture' if stored else f'annotate() after capture, {t_lookup:.1f} s'})"
        )
        ok = t_bad <= 3 * t_clean and lost == BAD and wrong == 0 and nonzero == 0 and right == BAD
        return 0 if ok else 1
    finally:
        loops.cleanup()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

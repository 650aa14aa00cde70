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

Then (c), at a dying drive's pace: a 256 MiB drive with 6 bad places (4 single sectors, 2 bad
4 KiB physical sectors), each failed read taking --delay seconds (default 0.5 s; dying drives
take 0.5-2 s), captured by rescue and copied by GNU ddrescue (`-d -r1 -m DOMAIN`: direct I/O
and one retry pass as rescue, over the ranges rescue's plan reads), --rounds times each (3),
order alternated, every output checked.

Targets: (b) takes at most 3x (a); sectors lost is exactly 1,000; every good sector matches;
(c) both recover the same bytes and find the same bad ranges, rescue's median time at most
ddrescue's. Takes about 7 minutes on a loaded 2-core machine, (c) about 3.5 of them
(`--only pace` runs (c) alone, `--only scattered` (a) and (b))."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def build(loops: LoopRegistry, size: int = DRIVE) -> tuple[Path, dict[str, list[tuple[int, int]]], int]:
    """The drive file, each file's physical byte extents on the drive, and the fs block size."""
    say(f"building a {size // MiB} MiB drive: GPT, ext4, ~60% random files ...")
    span = (MiB, size - 2 * MiB)
    drive = loops.file(f"drive-{size // MiB}.img", size)
    sh(
        "sfdisk",
        "-q",
        "--no-reread",
        "--no-tell-kernel",
        str(drive),
        input=f'label: gpt\nstart=2048, size={span[1] // SECTOR}, name="data"\n',
    )
    part = loops.attach(drive, offset=span[0], size=span[1])
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "bench", part)
    rnd = random.Random(2026)
    extents: dict[str, list[tuple[int, int]]] = {}
    with loops.mounted(part) as mnt:
        want, written, i = int(span[1] * FILL), 0, 0
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
                    runs.append((span[0] + first * bs, length))
            extents["/" + str(path.relative_to(mnt))] = runs
        say(f"  {i} files, {written / MiB:.0f} MiB of data")
    return drive, extents, 4096


def choose_bad(
    extents: dict[str, list[tuple[int, int]]], count: int = BAD, seed: int = 5
) -> tuple[list[tuple[int, int]], dict[int, str]]:
    """`count` single sectors inside file data, at least 2 MiB from the partition's edges
    (blkid probes there with buffered reads), none adjacent: 1,000 places, 1,000 sectors."""
    rnd = random.Random(seed)
    lo, hi = PART[0] + 2 * MiB, PART[0] + PART[1] - 2 * MiB
    sectors: list[tuple[int, str]] = []
    for name, runs in extents.items():
        for start, length in runs:
            first = max(start, lo) // SECTOR
            last = min(start + length, hi) // SECTOR  # exclusive
            sectors.extend((s, name) for s in range(first, last, 4))  # every 4th: never adjacent
    picked = sorted(rnd.sample(sectors, count))
    return [(s * SECTOR, SECTOR) for s, _ in picked], {s * SECTOR: n for s, n in picked}


@contextlib.contextmanager
def apart(size: int) -> Iterator[Path]:
    """A blank sparse drive file on a filesystem apart from the repository's (RAM), as the
    safety rules want a restore target; removed after use."""
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="rescue-bench-target-") as f:
        os.truncate(f.name, size)
        yield Path(f.name)


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


def scattered(loops: LoopRegistry, work: Path) -> bool:
    """(a) and (b): 1,000 bad sectors that fail at once."""
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

    with apart(DRIVE) as target:
        t_restore, _ = rescue("restore", str(work / "repo-b"), "bad", loops.attach(target), "--yes")
        part = loops.attach(drive, offset=PART[0], size=PART[1], readonly=True)
        used = used_ranges(part)
        wrong, nonzero = compare(drive, target, used, bad)
        loops.detach()

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
    return t_bad <= 3 * t_clean and lost == BAD and wrong == 0 and nonzero == 0 and right == BAD


PACE_DRIVE = 256 * MiB


def ddrescue_domain(dev: str, path: Path) -> list[tuple[int, int]]:
    """What rescue's capture reads of `dev` (its plan's used ranges, edges and gaps included),
    written as a ddrescue domain mapfile ('+' to read, '?' not): the same ranges for both.
    Returns the partitions' ranges: what is compared (a restore writes its own partition
    table, so the bytes outside partitions differ from the source's by design)."""
    from rescue.imaging.capture import plan_capture
    from rescue.model.badmap import FINISHED, BadSectorMap

    plan = plan_capture(dev)
    size = plan.layout.size
    domain = BadSectorMap.new(size)
    ranges = []
    for a in plan.areas:
        for e in [(0, a.size)] if a.used is None else [(e.start, e.length) for e in a.used]:
            if a.partition is not None:
                ranges.append((a.offset + e[0], e[1]))
            domain.mark(a.offset + e[0], e[1], FINISHED)
    path.write_text(domain.to_mapfile())
    return sorted(ranges)


def fuse_reads(log: Path, skip: int) -> tuple[int, int, int]:
    """(lines in the log, reads, failed reads) of the FUSE device after its first `skip` lines."""
    lines = log.read_text().splitlines()
    new = lines[skip:]
    return len(lines), len(new), sum(1 for line in new if line.endswith("EIO"))


def recovered(data: bytes, ranges: list[tuple[int, int]]) -> str:
    """SHA-256 of the bytes of `ranges` in `data`: what a tool recovered (unread bytes zero;
    ddrescue's output file may end early)."""
    import hashlib

    h = hashlib.sha256()
    for start, length in ranges:
        h.update(data[start : start + length].ljust(length, b"\0"))
    return h.hexdigest()


def at_pace(loops: LoopRegistry, work: Path, delay: float, rounds: int) -> bool:
    """(c) A few bad places, each failed read taking `delay` seconds (a dying drive's 0.5-2 s):
    rescue's capture against GNU ddrescue (-d: direct I/O, as rescue reads; -r1: one retry
    pass, rescue's default) reading the same ranges of the same device. Rounds alternate
    which tool goes first; after every run its output is checked: the bytes each recovered
    of the used ranges, and the bad ranges each found, must be the same."""
    import statistics

    from rescue.model.badmap import parse_mapfile

    drive, extents, _ = build(loops, PACE_DRIVE)
    singles, _ = choose_bad(extents, 4, seed=7)
    runs, _ = choose_bad(extents, 2, seed=8)  # a bad 4 KiB physical sector: 8 logical ones
    bad = sorted(singles + [(s - s % 4096, 4096) for s, _ in runs])
    say(f"(c) {len(bad)} bad places ({sum(n for _, n in bad) // SECTOR} sectors), {delay:g} s per failed read")
    log = work / "pace-reads.log"
    times: dict[str, list[float]] = {"rescue": [], "ddrescue": []}
    failed: dict[str, list[int]] = {"rescue": [], "ddrescue": []}
    outputs: dict[str, set[str]] = {"rescue": set(), "ddrescue": set()}
    maps: dict[str, set[tuple]] = {"rescue": set(), "ddrescue": set()}
    with faulty_block_device(loops, drive, bad=bad, log=log, bad_delay=delay) as dev:
        used = ddrescue_domain(dev, work / "domain.map")
        seen = fuse_reads(log, 0)[0]
        for r in range(rounds):
            for tool in ("rescue", "ddrescue") if r % 2 == 0 else ("ddrescue", "rescue"):
                out = work / f"pace-{tool}-{r}"
                drop_caches()
                if tool == "rescue":
                    t, _ = rescue("capture", dev, str(out), "--name", "pace")
                else:
                    began = time.monotonic()
                    sh("ddrescue", "-d", "-r1", "-q", "-m", str(work / "domain.map"), dev, str(out), f"{out}.map")
                    t = time.monotonic() - began
                seen, _, fails = fuse_reads(log, seen)
                times[tool].append(t)
                failed[tool].append(fails)
                if tool == "rescue":
                    found = parse_mapfile((out / "images" / "pace" / "badsectors.map").read_text()).bad_ranges()
                    with apart(PACE_DRIVE) as target:
                        dev_t = loops.attach(target)
                        rescue("restore", str(out), "pace", dev_t, "--yes")
                        sh("losetup", "-d", dev_t)
                        loops.devices.remove(dev_t)
                        outputs[tool].add(recovered(target.read_bytes(), used))
                    shutil.rmtree(out)
                else:
                    found = parse_mapfile(Path(f"{out}.map").read_text()).bad_ranges()
                    outputs[tool].add(recovered(out.read_bytes(), used))
                    out.unlink()
                maps[tool].add(tuple(found))
                say(f"  round {r + 1} {tool:8s} {t:6.1f} s, {fails} failed reads")
    src = bytearray(drive.read_bytes())
    for s, n in bad:
        src[s : s + n] = bytes(n)
    truth = recovered(bytes(src), used)
    med = {k: statistics.median(v) for k, v in times.items()}
    same_bytes = outputs["rescue"] == outputs["ddrescue"] == {truth}
    same_map = maps["rescue"] == maps["ddrescue"] == {tuple(bad)}
    print()
    print(f"(c) at a dying drive's pace: {PACE_DRIVE // MiB} MiB drive, {sum(n for _, n in used) / MiB:.0f} MiB used")
    print(f"    {len(bad)} bad places, {delay:g} s per failed read, {rounds} rounds, order alternated")
    for tool in ("rescue", "ddrescue"):
        v = times[tool]
        print(
            f"    {tool:8s} median {med[tool]:6.1f} s  (min {min(v):.1f}, max {max(v):.1f})  "
            f"failed reads {statistics.median(failed[tool]):.0f}"
        )
    print(
        f"    rescue / ddrescue = {med['rescue'] / med['ddrescue']:.2f}  (target <= 1)  "
        f"{'OK' if med['rescue'] <= med['ddrescue'] else 'MISSED'}"
    )
    print(
        f"    same bytes recovered (and right)   {'OK' if same_bytes else 'WRONG'}"
        f"  (rescue {'right' if outputs['rescue'] == {truth} else 'WRONG'}, "
        f"ddrescue {'right' if outputs['ddrescue'] == {truth} else 'WRONG'})"
    )
    print(f"    same bad ranges found (exactly)    {'OK' if same_map else 'WRONG'}")
    return same_bytes and same_map and med["rescue"] <= med["ddrescue"]


def machine() -> str:
    import platform

    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{model}, {os.cpu_count()} cores, kernel {platform.release()}, load average {load}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    ap.add_argument("--only", choices=("scattered", "pace"), help="run one part only")
    ap.add_argument("--delay", type=float, default=0.5, help="seconds per failed read in (c) (default 0.5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (c) (default 3)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop devices, FUSE, mounts)")
    work = Path(tempfile.mkdtemp(prefix="rescue-bench-bad-", dir="/var/tmp"))
    loops = LoopRegistry(work)
    try:
        say(f"machine: {machine()}")
        ok = True
        if args.only in (None, "scattered"):
            ok = scattered(loops, work) and ok
            loops.detach()
        if args.only in (None, "pace"):
            ok = at_pace(loops, work, args.delay, args.rounds) and ok
        say(f"machine: {machine()}")
        return 0 if ok else 1
    finally:
        loops.cleanup()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

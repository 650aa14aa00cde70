"""`make bench`: rescue's capture and restore against Clonezilla's partclone pipeline and against
the machine's own limits, in rounds, every output checked.

    .venv/bin/python tests/bench/imaging.py [--size GiB] [--used GiB] [--rounds N] [--no-dedup]

The drive (built once, cached in build/bench/ under a name that says its recipe): a GPT drive of
--size (4 GiB) with one ext4 partition holding --used (2.1 GiB) of this machine's own files, each
once (one copy per inode, one per content): text (docs, headers, Python sources), binaries (ELF
programs and libraries) and compressed data (packages, archives, images), in the shares of MIX,
plus STALE of other such files written and deleted (free space that once held data). Each part's
own zstd -3 ratio is printed. A second drive adds copies of some of its files (DUPS) for the
deduplication line.

Each round (order alternated between rounds, page cache dropped before every run):
  capture: rescue capture | partclone.ext4 -c | zstd -T<cores> -3 |
           zstd -T<cores> -3 of the same used bytes from memory (the compression bound)
  restore, each onto a fresh target (sparse file, loop device), its sync included:
           rescue restore (pre-verified) | rescue restore --no-preverify |
           zstd -d | partclone.ext4 -r | partclone.chkimg, then that restore (Clonezilla's check) |
           zstd -d of the bound's output | dd oflag=direct (the write bound)
Every restored partition is checked (e2fsck -fn, every file hashed against the source) before a
figure is printed, the write bound's bytes hashed against the used bytes. Prints medians and
spread, rescue as a fraction of each bound, the pipeline ratios, peak memory, the machine and
its load. Asserts nothing about times."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: disks.sha_of

from common import (  # noqa: E402
    CORES,
    ROOT,
    VENV_PY,
    MiB,
    Run,
    alternate,
    detach,
    losetup,
    machine_lines,
    measured,
    real_files,
    say,
    spread,
)
from common import drop_caches as drop_caches  # noqa: E402 - for the benches that take it from here
from disks import sha_of  # noqa: E402

WORK = ROOT / "build" / "bench"
GiB = 1 << 30
PART_START = MiB
RECIPE = 2  # bump when the way drives are built changes: cached drives are then built again
MIX = {"text": 0.30, "binary": 0.45, "compressed": 0.25}  # shares of the files on the drive
STALE = 0.20  # of the used bytes: written, then deleted
DUPS = 0.15  # of the used bytes: copies of files already there, on the deduplication drive
DEFAULT_SIZE, DEFAULT_USED = 4 * GiB, int(2.1 * GiB)
# The default drive, for the benches that take it as it is (clonezilla, encrypted, shrink).
DRIVE_SIZE = DEFAULT_SIZE
PART_SIZE = DRIVE_SIZE - PART_START - MiB  # room for the backup GPT; the filesystem as large
_losetup = losetup


@dataclass(frozen=True)
class Recipe:
    size: int = DEFAULT_SIZE
    used: int = DEFAULT_USED
    dups: float = 0.0

    @property
    def part_size(self) -> int:
        return self.size - PART_START - MiB

    @property
    def path(self) -> Path:
        dups = f"-dups{self.dups:g}" if self.dups else ""
        return WORK / f"drive-r{RECIPE}-{self.size // MiB}M-used{self.used // MiB}M{dups}.img"

    @property
    def facts_path(self) -> Path:
        return self.path.with_suffix(".json")


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def _fill(mnt: Path, sub: str, kind: str, budget: int, seen: set, facts: dict, cctx=None) -> int:
    """Copy this machine's files of `kind` under mnt/sub until `budget` bytes; their hashes
    into facts["files"], and with `cctx` the part's size and zstd size (each file compressed
    on its own) into facts["parts"]; without, what there is (stale data) is enough."""
    got = packed = count = 0
    for src, data in real_files(kind, seen):
        if got + len(data) > budget:
            if budget - got < MiB:
                break
            continue
        rel = Path(sub, src.relative_to("/"))
        if (mnt / rel).exists():  # foo.1.gz unpacked beside a foo.1
            continue
        (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
        (mnt / rel).write_bytes(data)
        facts["files"][str(rel)] = hashlib.sha256(data).hexdigest()
        got, count = got + len(data), count + 1
        if cctx is not None:
            packed += len(cctx.compress(data))
    if cctx is not None and got < budget - 16 * MiB:
        raise SystemExit(f"this machine has only {got / MiB:.0f} MiB of {kind} files for a part of {budget / MiB:.0f}")
    if cctx is not None:
        facts["parts"][kind] = {"files": count, "bytes": got, "zstd_bytes": packed}
    return got


def build(recipe: Recipe) -> dict:
    """The drive of `recipe` and its facts (files and hashes, parts and their zstd ratios)."""
    import zstandard

    say(f"building {recipe.path.name}: {recipe.size / GiB:g} GiB GPT, ext4, {recipe.used / GiB:g} GiB in use ...")
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = recipe.path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(recipe.size)
    table = f'label: gpt\nstart=2048, size={recipe.part_size // 512}, name="bench"\n'
    sh("sfdisk", "-q", str(tmp), input=table.encode())
    part = losetup(tmp, PART_START, recipe.part_size)
    mnt = WORK / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    facts: dict = {"recipe": asdict(recipe), "files": {}, "parts": {}}
    try:
        sh("mkfs.ext4", "-q", "-L", "bench", part)
        sh("mount", part, str(mnt))
        files = recipe.used
        seen: set = set()
        cctx = zstandard.ZstdCompressor(level=3)
        for kind, share in MIX.items():
            say(f"  {kind} ...")
            _fill(mnt, kind, kind, int(files * share), seen, facts, cctx)
        say("  stale data (written, then deleted) ...")
        stale: dict = {"files": {}}
        facts["stale_bytes"] = sum(
            _fill(mnt, "stale", kind, int(recipe.used * STALE * share), seen, stale) for kind, share in MIX.items()
        )
        os.sync()
        shutil.rmtree(mnt / "stale")
        if recipe.dups:
            say("  copies of files already there (deduplication) ...")
            copied = 0
            for rel, digest in sorted(facts["files"].items()):
                if copied >= recipe.used * recipe.dups:
                    break
                if rel.startswith("binary/"):
                    dst = Path("dups", rel)
                    (mnt / dst).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(mnt / rel, mnt / dst)
                    facts["files"][str(dst)] = digest
                    copied += (mnt / dst).stat().st_size
            facts["dup_bytes"] = copied
        os.sync()
        st = os.statvfs(mnt)
        facts["used_bytes"] = (st.f_blocks - st.f_bfree) * st.f_frsize
    finally:
        subprocess.run(["umount", str(mnt)])
        detach(part)
    tmp.rename(recipe.path)
    recipe.facts_path.write_text(json.dumps(facts))
    return facts


def drive(recipe: Recipe) -> dict:
    """The cached drive of `recipe` (built when missing) and its facts."""
    if not (recipe.path.exists() and recipe.facts_path.exists()):
        return build(recipe)
    return json.loads(recipe.facts_path.read_text())


def build_drive(path: Path) -> None:
    """The default drive at `path` (a hard link to the cached one): for the other benches."""
    recipe = Recipe()
    drive(recipe)
    path.unlink(missing_ok=True)
    os.link(recipe.path, path)


# -- the runs ------------------------------------------------------------------------------------


def used_bytes(disk: str, out: Path) -> int:
    """The bytes rescue reads (what the filesystem uses, the bytes outside partitions), from
    rescue's own plan, concatenated into `out` (on a tmpfs: the bounds read them from memory)."""
    sys.path.insert(0, str(ROOT))
    from rescue.imaging.capture import plan_capture

    plan = plan_capture(disk)
    fd = os.open(disk, os.O_RDONLY)
    try:
        with open(out, "wb") as f:
            for area in plan.areas:
                for start, length in [(e.start, e.length) for e in area.used] if area.used else [(0, area.size)]:
                    pos = area.offset + start
                    while length:
                        block = os.pread(fd, min(length, 16 * MiB), pos)
                        f.write(block)
                        pos, length = pos + len(block), length - len(block)
    finally:
        os.close(fd)
    return out.stat().st_size


def check_fs(part: str, files: dict[str, str], what: str) -> None:
    """e2fsck clean and every file there with the source's content, nothing more."""
    fsck = subprocess.run(["e2fsck", "-fn", part], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if fsck.returncode:
        raise SystemExit(f"{what}: e2fsck found problems:\n{fsck.stdout[-2000:]}")
    mnt = Path(tempfile.mkdtemp(prefix="check-", dir=WORK))
    sh("mount", "-o", "ro,noload", part, str(mnt))
    try:
        found = {}
        for here, _, names in os.walk(mnt):
            for name in names:
                p = Path(here, name)
                found[str(p.relative_to(mnt))] = hashlib.sha256(p.read_bytes()).hexdigest()
    finally:
        sh("umount", str(mnt))
        mnt.rmdir()
    if found != files:
        wrong = sorted(k for k in set(found) | set(files) if found.get(k) != files.get(k))
        raise SystemExit(f"{what}: {len(wrong)} files differ from the source, e.g. {wrong[:3]}")


class Bench:
    def __init__(self, recipe: Recipe, facts: dict, level: int, targets: Path, shm: Path):
        self.recipe, self.facts, self.level, self.targets, self.shm = recipe, facts, level, targets, shm
        self.out = shm / "out"  # images in memory: the targets' filesystem cannot hold them (safety rule)
        self.times: dict[str, list[Run]] = {}
        self.sizes: dict[str, int] = {}
        self.chunk_size = 0  # what rescue's configuration gives new repositories

    def record(self, name: str, run: Run) -> None:
        self.times.setdefault(name, []).append(run)

    def fresh_target(self, table: bool) -> Path:
        t = self.targets / "target.img"
        t.unlink(missing_ok=True)
        with open(t, "wb") as f:
            f.truncate(self.recipe.size)
        if table:
            layout = f'label: gpt\nstart=2048, size={self.recipe.part_size // 512}, name="bench"\n'
            sh("sfdisk", "-q", str(t), input=layout.encode())
        return t

    def capture_round(self, order: list[str], disk: str, part: str) -> None:
        repo, pc, lvl = self.out / "repo", self.out / "pc.zst", self.level
        for tool in order:
            if tool == "rescue capture":
                shutil.rmtree(repo, ignore_errors=True)
                cmd: list[str] | str = [
                    *[VENV_PY, "-m", "rescue", "capture", disk, str(repo), "--name", "b", "--level", str(lvl)]
                ]
                self.record(tool, measured(cmd))
                self.sizes[tool] = du(repo)
                self.chunk_size = json.loads((repo / "rescue-repo.json").read_text())["chunk_size"]
            elif tool == "partclone.ext4 -c | zstd":
                cmd = f"partclone.ext4 -c -s {part} -o - -L /dev/null | zstd -q -T{CORES} -{lvl} > {pc}"
                self.record(tool, measured(cmd))
                self.sizes[tool] = pc.stat().st_size
            else:  # the compression bound
                cmd = f"zstd -q -f -T{CORES} -{lvl} -c {self.shm / 'used'} > {self.shm / 'used.zst'}"
                self.record(tool, measured(cmd))
                self.sizes[tool] = (self.shm / "used.zst").stat().st_size

    def restore_round(self, order: list[str], used: int, used_sha: str) -> None:
        repo, pc = self.out / "repo", self.out / "pc.zst"
        for tool in order:
            target = self.fresh_target(table=not tool.startswith("rescue"))
            devs: list[str] = []
            try:
                if tool.startswith("rescue"):
                    dev = losetup(target)
                    devs.append(dev)
                    extra = ["--no-preverify"] if "no-preverify" in tool else []
                    argv = [VENV_PY, "-m", "rescue", "restore", str(repo), "b", dev, "--yes", *extra]
                    self.record(tool, measured(argv))
                    devs.append(losetup(target, PART_START, self.recipe.part_size, ro=True))
                    check_fs(devs[-1], self.facts["files"], tool)
                    continue
                part = losetup(target, PART_START, self.recipe.part_size)
                devs.append(part)
                restore = f"zstd -q -dc {pc} | partclone.ext4 -r -s - -o {part} -L /dev/null"
                if tool == "zstd -d | partclone.ext4 -r":
                    self.record(tool, measured(f"{restore} && sync {part}"))
                elif tool.startswith("partclone.chkimg"):
                    check = f"zstd -q -dc {pc} | partclone.chkimg -s - -L /dev/null"
                    self.record(tool, measured(f"{check} && {restore} && sync {part}"))
                else:  # the write bound
                    zst = self.shm / "used.zst"
                    dd = f"dd of={part} bs=4M iflag=fullblock oflag=direct conv=fsync status=none"
                    self.record(tool, measured(f"zstd -q -dc {zst} | {dd}"))
                    if sha_of(part, 0, used) != used_sha:
                        raise SystemExit("the write bound wrote other bytes than the used bytes")
                    continue
                check_fs(part, self.facts["files"], tool)
            finally:
                detach(*reversed(devs))
                target.unlink(missing_ok=True)


CAPTURE = ["rescue capture", "partclone.ext4 -c | zstd", "zstd -T<cores> from memory (bound)"]
RESTORE = [
    "rescue restore",
    "rescue restore --no-preverify",
    "zstd -d | partclone.ext4 -r",
    "partclone.chkimg, then zstd -d | partclone.ext4 -r",
    "zstd -d | dd oflag=direct (bound)",
]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def dedup_line(base: Recipe, level: int, sizes: dict[str, int]) -> list[str]:
    """The same capture of a drive with duplicated files: what deduplication saves."""
    recipe = Recipe(base.size, base.used, DUPS)
    facts = drive(recipe)
    out = Path("/dev/shm/rescue-bench-dups")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    disk = losetup(recipe.path, ro=True)
    part = losetup(recipe.path, PART_START, recipe.part_size, ro=True)
    try:
        say("deduplication: capturing the drive with copies ...")
        repo, pc = out / "repo", out / "pc.zst"
        measured([VENV_PY, "-m", "rescue", "capture", disk, str(repo), "--name", "b", "--level", str(level)])
        measured(f"partclone.ext4 -c -s {part} -o - -L /dev/null | zstd -q -T{CORES} -{level} > {pc}")
        say("deduplication: checking both images ...")
        measured([VENV_PY, "-m", "rescue", "verify", str(repo), "b"])
        measured(f"zstd -q -dc {pc} | partclone.chkimg -s - -L /dev/null")
        ours, theirs = du(out / "repo"), (out / "pc.zst").stat().st_size
    finally:
        detach(part, disk)
    shutil.rmtree(out, ignore_errors=True)
    base_ours, base_theirs = sizes["rescue capture"], sizes["partclone.ext4 -c | zstd"]
    return [
        f"deduplication ({facts['dup_bytes'] / MiB:.0f} MiB of copies of files already on the drive added):",
        f"  without copies: rescue {base_ours / MiB:.0f} MiB, partclone|zstd {base_theirs / MiB:.0f} MiB "
        f"(rescue/partclone {base_ours / base_theirs:.3f})",
        f"  with copies:    rescue {ours / MiB:.0f} MiB (+{(ours - base_ours) / MiB:.0f}), partclone|zstd "
        f"{theirs / MiB:.0f} MiB (+{(theirs - base_theirs) / MiB:.0f}) (rescue/partclone {ours / theirs:.3f})",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=DEFAULT_SIZE / GiB, help="drive size, GiB (default 4)")
    ap.add_argument("--used", type=float, default=DEFAULT_USED / GiB, help="bytes in use, GiB (default 2.1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--no-dedup", action="store_true", help="leave out the deduplication line")
    ap.add_argument("--targets", type=Path, default=WORK / "targets", help="where the fresh targets are made")
    args = ap.parse_args()
    begun = time.monotonic()
    recipe = Recipe(int(args.size * GiB) // MiB * MiB, int(args.used * GiB) // MiB * MiB)
    facts = drive(recipe)
    say(f"at the start: {machine_lines()[1]}")
    bench = Bench(recipe, facts, args.level, args.targets, Path("/dev/shm/rescue-bench"))
    for d in (bench.shm, bench.out, args.targets):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    disk = losetup(recipe.path, ro=True)
    part = losetup(recipe.path, PART_START, recipe.part_size, ro=True)
    try:
        used = used_bytes(disk, bench.shm / "used")
        used_sha = sha_of(bench.shm / "used", 0, used)
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}: capture")
            bench.capture_round(alternate(CAPTURE, r), disk, part)
            say(f"round {r + 1}/{args.rounds}: restore")
            bench.restore_round(alternate(RESTORE, r), used, used_sha)
    finally:
        detach(part, disk)
        shutil.rmtree(bench.shm, ignore_errors=True)
    lines = report(recipe, facts, bench, used, args.level)
    if not args.no_dedup:
        lines += dedup_line(recipe, args.level, bench.sizes)
    shutil.rmtree(args.targets, ignore_errors=True)
    print()
    print("\n".join(lines + machine_lines()).replace("load average", "load average at the end"))
    print(f"bench run time: {time.monotonic() - begun:.0f} s")
    return 0


def report(recipe: Recipe, facts: dict, bench: Bench, used: int, level: int) -> list[str]:
    lines = [
        f"drive: {recipe.size / GiB:g} GiB GPT, one ext4 partition, {facts['used_bytes'] / MiB:.0f} MiB in use "
        f"(as df counts), {len(facts['files'])} files, each once; "
        f"{facts['stale_bytes'] / MiB:.0f} MiB of deleted files in its free space",
        f"{'part':<12} {'files':>7} {'MiB':>7} {'zstd -3 ratio':>14}",
    ]
    for kind, p in facts["parts"].items():
        lines.append(f"{kind:<12} {p['files']:>7} {p['bytes'] / MiB:>7.0f} {p['bytes'] / p['zstd_bytes']:>14.2f}")
    lines += [
        f"bytes read (used blocks, first and last MiB of the partition, bytes outside it): {used / MiB:.0f} MiB; "
        f"zstd level {level}, {CORES} threads; rescue's chunks {bench.chunk_size // 1024} KiB",
        "",
        f"{'':<52} {'time: median (min-max)':>30} {'MB/s':>6} {'MiB out':>8} {'peak MiB':>9}",
    ]
    med = {name: statistics.median(r.seconds for r in runs) for name, runs in bench.times.items()}
    for name, runs in bench.times.items():
        size = f"{bench.sizes[name] / MiB:8.0f}" if name in bench.sizes else f"{'':>8}"
        peak = max(r.peak_kib for r in runs) / 1024
        lines.append(
            f"{name:<52} {spread([r.seconds for r in runs]):>30} {used / med[name] / 1e6:6.0f} {size} {peak:9.0f}"
        )
    cap, pc, cbound = med[CAPTURE[0]], med[CAPTURE[1]], med[CAPTURE[2]]
    res, nopre, pcr, chk, wbound = (med[n] for n in RESTORE)
    peak = max(r.peak_kib for n in (CAPTURE[0], RESTORE[0], RESTORE[1]) for r in bench.times[n]) / 1024
    lines += [
        "",
        f"capture: {cbound / cap:.0%} of the compression bound (target >= 85%); "
        f"{pc / cap:.2f}x partclone|zstd (target >= 2x); image "
        f"{bench.sizes[CAPTURE[0]] / bench.sizes[CAPTURE[1]]:.3f}x partclone's",
        f"restore --no-preverify: {wbound / nopre:.0%} of the write bound (target >= 85%)",
        f"restore (pre-verified): {pcr / res:.2f}x partclone's restore (target >= 2.5x), "
        f"{chk / res:.2f}x chkimg-then-restore (target > 1x); {wbound / res:.0%} of the write bound",
        f"rescue's peak memory: {peak:.0f} MiB (target < 300 MB)",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())

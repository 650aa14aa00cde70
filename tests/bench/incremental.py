"""`make bench`: incremental captures after an upgrade-like change, and two machines with the
same OS in one repository (issue 19 point 5, issue 14 point 8), at several chunk sizes. As root:

    .venv/bin/python tests/bench/incremental.py [--quick] [--sizes 4096,1024,256,128,64]

The drives (built once per run in a temporary directory under build/bench/, removed at the end):

- machine A: a GPT drive, one ext4 partition made by mkfs.ext4's defaults, holding a system-like
  file set: the regular files under /usr of this machine's installed Debian packages
  (/var/lib/dpkg/info/*.list), one copy per inode, package after package in one install order,
  each file written as dpkg writes it (NAME.dpkg-new, then renamed over NAME), plus
  /var/lib/dpkg/status and some logs.
- A upgrade: a copy of A after an upgrade-like change, as apt and dpkg make it: the .debs
  downloaded into /var/cache/apt/archives (compressed copies of what they hold), 10% of the
  packages upgraded (each file rewritten as NAME.dpkg-new and renamed over; the new version
  differs in every 4 KiB of the file), 2% installed new and 2% removed, 2% of the other files
  rewritten in place (same size, same blocks: databases and caches), logs appended to,
  /var/lib/dpkg/status replaced, then the package cache emptied (apt clean).
- A update: the same at a tenth of the scale (1% of the packages), a routine security update.
  "Changed" is the sum of the file bytes written that are still there (rewrites, appends and
  new files); the package cache, written then deleted, is printed on its own line.
- machine B: the same packages installed separately in another order onto a fresh mkfs, so the
  same files land at other offsets.

For every chunk size: A is captured into a fresh repository (throughput, objects and index
size per GiB), then each of A upgrade, A update and B into its own copy of that repository
(hard links: chunks are never rewritten): what the upgrade and the update stored against what
they changed (target at most 3x), and what B stored as a fraction of what A stored. Then, from
the captured bytes themselves (free blocks zeroed as capture zeroes them), chunkings rescue does
not have are simulated on the 4 KiB block hashes: fixed 4 KiB chunks (the floor for a block
image) and content-defined boundaries that fall only between filesystem blocks; and the blocks
the upgrade changed are split into file data and filesystem metadata (journal, inode tables,
bitmaps). About 12 minutes on a loaded 2-core machine (--quick: 2)."""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rescue.imaging.capture import capture, plan_capture  # noqa: E402
from rescue.imaging.chunkread import keep_only, used_parts  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
WORK = ROOT / "build" / "bench"
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
ZERO_ID = b"\0" * 20
PART_START = MiB
# The changes made to copies of A: the share of its packages each one upgrades.
CHANGES = {"upgrade": 0.10, "update": 0.01}


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout


def losetup(path: Path, offset: int = 0, size: int | None = None, ro: bool = False) -> str:
    argv = ["losetup", "-f", "--show", "-o", str(offset), *(["--sizelimit", str(size)] if size else [])]
    return sh(*argv, *(["-r"] if ro else []), str(path)).strip()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- the file set


@dataclass
class Package:
    name: str
    files: list[Path]  # host paths of its regular files under /usr
    size: int


def installed_packages() -> list[Package]:
    """This machine's packages with their regular files under /usr, each inode once (a file
    hard-linked under two names, or listed by two packages, goes with the first)."""
    seen: set[tuple[int, int]] = set()
    out = []
    for lst in sorted(Path("/var/lib/dpkg/info").glob("*.list")):
        files, size = [], 0
        for line in lst.read_text(errors="replace").splitlines():
            p = Path(line)
            if not line.startswith("/usr/") or p.is_symlink() or not p.is_file():
                continue
            st = p.stat()
            if (st.st_dev, st.st_ino) in seen or st.st_size == 0 or not os.access(p, os.R_OK):
                continue
            seen.add((st.st_dev, st.st_ino))
            files.append(p)
            size += st.st_size
        if files:
            out.append(Package(lst.stem.split(":")[0], files, size))
    return out


def choose(pkgs: list[Package], budget: int, rnd: random.Random) -> tuple[list[Package], list[Package]]:
    """Installed packages (about `budget` bytes, none larger than a tenth of it) and spare ones
    (new packages of the upgrade)."""
    pool = [p for p in pkgs if p.size <= budget // 10]
    rnd.shuffle(pool)
    installed, total = [], 0
    while pool and total < budget:
        installed.append(pool.pop())
        total += installed[-1].size
    return installed, pool


def bump(data: bytes, rnd: random.Random) -> bytes:
    """A new version of a file: every 4 KiB of it differs, its compressibility stays."""
    out = bytearray(data)
    for off in range(rnd.randrange(min(BLOCK, len(out))), len(out), BLOCK):
        out[off] ^= 0x5A
    return bytes(out)


@dataclass
class Writes:
    """What a change wrote: file bytes still there, their zstd -3 size (file by file), and the
    bytes written and deleted again (the package cache)."""

    changed: int = 0
    changed_zstd: int = 0
    cache: int = 0
    removed: int = 0
    files: int = 0
    cctx: zstandard.ZstdCompressor = field(default_factory=lambda: zstandard.ZstdCompressor(level=3))

    def count(self, data: bytes) -> None:
        self.changed += len(data)
        self.changed_zstd += min(len(self.cctx.compress(data)), len(data)) if data else 0
        self.files += 1


def dpkg_write(dst: Path, data: bytes) -> None:
    """As dpkg unpacks a file: NAME.dpkg-new written, then renamed over NAME."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    new = dst.with_name(dst.name + ".dpkg-new")
    new.write_bytes(data)
    new.rename(dst)


def log_lines(rnd: random.Random, names: list[str], n: int) -> bytes:
    verbs = ("status installed", "status unpacked", "status half-configured", "upgrade", "configure")
    return "".join(
        f"2026-12-{rnd.randint(1, 28):02d} {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:"
        f"{rnd.randint(0, 59):02d} {rnd.choice(verbs)} {rnd.choice(names)}:amd64 "
        f"{rnd.randint(1, 9)}.{rnd.randint(0, 40)}-{rnd.randint(1, 9)}\n"
        for _ in range(n)
    ).encode()


LOGS = ("var/log/dpkg.log", "var/log/apt/history.log", "var/log/apt/term.log", "var/log/syslog", "var/log/auth.log")


def install(mnt: Path, pkgs: list[Package], rnd: random.Random) -> None:
    """A fresh system: every package's files dpkg-style, in the order given, then the
    package database and some logs."""
    for pkg in pkgs:
        for src in pkg.files:
            dpkg_write(mnt / src.relative_to("/"), src.read_bytes())
    status = Path("/var/lib/dpkg/status")
    dpkg_write(mnt / "var/lib/dpkg/status", status.read_bytes() if status.is_file() else b"")
    names = [p.name for p in pkgs]
    for i, log in enumerate(LOGS):
        dpkg_write(mnt / log, log_lines(rnd, names, 4000 * (i + 1)))
    (mnt / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)


def upgrade(mnt: Path, installed: list[Package], spare: list[Package], rnd: random.Random, share: float) -> Writes:
    """apt full-upgrade, roughly: download, unpack, configure, remove, clean. `share` of the
    packages are upgraded; a fifth of that share of them removed, of their bytes installed new
    and of the other files rewritten in place."""
    w = Writes()
    budget = sum(p.size for p in installed)
    upgraded = rnd.sample(installed, max(1, int(len(installed) * share)))
    others = [p for p in installed if p not in upgraded]
    removed = rnd.sample(others, int(len(installed) * share / 5))
    new, total = [], 0
    for p in spare:
        if total >= budget * share / 5:
            break
        new.append(p)
        total += p.size
    names = [p.name for p in installed + new]
    cache = mnt / "var/cache/apt/archives"
    versions = {p.name: {src: bump(src.read_bytes(), rnd) for src in p.files} for p in upgraded}
    cctx = zstandard.ZstdCompressor(level=9)
    for p in upgraded + new:  # apt downloads every .deb first
        payload = (
            b"".join(versions[p.name].values()) if p.name in versions else b"".join(f.read_bytes() for f in p.files)
        )
        deb = cctx.compress(payload)
        (cache / f"{p.name}_new_amd64.deb").write_bytes(deb)
        w.cache += len(deb)
    os.sync()
    for p in upgraded:
        for src, data in versions[p.name].items():
            dpkg_write(mnt / src.relative_to("/"), data)
            w.count(data)
    for p in new:
        for src in p.files:
            data = src.read_bytes()
            dpkg_write(mnt / src.relative_to("/"), data)
            w.count(data)
    keep = [f for p in others if p not in removed for f in p.files]
    for src in rnd.sample(keep, int(len(keep) * share / 5)):  # rewritten in place: same size, same blocks
        dst = mnt / src.relative_to("/")
        data = bump(dst.read_bytes(), rnd)
        with open(dst, "r+b") as f:
            f.write(data)
        w.count(data)
    for log in LOGS:
        more = log_lines(rnd, names, rnd.randint(200, 3000))
        with open(mnt / log, "ab") as f:
            f.write(more)
        w.count(more)
    status = mnt / "var/lib/dpkg/status"
    data = bump(status.read_bytes(), rnd)
    dpkg_write(status, data)
    w.count(data)
    for p in removed:
        for src in p.files:
            (mnt / src.relative_to("/")).unlink()
            w.removed += src.stat().st_size
    for deb in cache.iterdir():  # apt clean
        deb.unlink()
    os.sync()
    return w


# -- drives


class Drives:
    """Drive images in `tmp`; every loop device and mount made here is undone by close()."""

    def __init__(self, tmp: Path, size: int):
        self.tmp, self.size = tmp, size
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        self.loops: list[str] = []

    def loop(self, image: Path, part: bool = False, ro: bool = False) -> str:
        dev = losetup(image, PART_START, self.size - 2 * MiB, ro) if part else losetup(image, ro=ro)
        self.loops.append(dev)
        return dev

    def unloop(self, dev: str) -> None:
        subprocess.run(["losetup", "-d", dev], check=True)
        self.loops.remove(dev)

    def fresh(self, name: str) -> Path:
        image = self.tmp / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(self.size)
        part_sectors = (self.size - 2 * MiB) // 512
        subprocess.run(
            ["sfdisk", "-q", str(image)], input=f"label: gpt\nstart=2048, size={part_sectors}\n", text=True, check=True
        )
        dev = self.loop(image, part=True)
        sh("mkfs.ext4", "-q", "-L", "system", dev)
        self.unloop(dev)
        return image

    def mounted(self, image: Path):
        drives = self

        class Mounted:
            def __enter__(self) -> Path:
                self.dev = drives.loop(image, part=True)
                sh("mount", self.dev, str(drives.mnt))
                return drives.mnt

            def __exit__(self, *exc: object) -> None:
                subprocess.run(["umount", str(drives.mnt)], check=True)
                drives.unloop(self.dev)

        return Mounted()

    def close(self) -> None:
        if subprocess.run(["mountpoint", "-q", str(self.mnt)]).returncode == 0:
            subprocess.run(["umount", str(self.mnt)])
        for dev in list(self.loops):
            subprocess.run(["losetup", "-d", dev])


# -- captures at each chunk size


@dataclass
class Captured:
    seconds: float
    data: int
    stored: int
    objects: int
    index_bytes: int
    manifest_bytes: int


def run_capture(dev: str, repo: Path, name: str, chunk_size: int) -> Captured:
    before = sum(1 for _ in repo.glob("chunks/*/*"))
    drop_caches()
    r = capture(dev, repo, name, chunk_size=chunk_size)
    image = repo / "images" / name
    return Captured(
        r.seconds,
        r.data_bytes,
        r.stored_bytes,
        sum(1 for _ in repo.glob("chunks/*/*")) - before,
        sum(p.stat().st_size for p in image.glob("*.idx")),
        (image / "manifest.json").stat().st_size,
    )


# -- simulated chunking over 4 KiB block ids


def block_ids(dev: str) -> list[bytes]:
    """SHA-1 of every 4 KiB block of the drive's ext4 partition as capture stores it (free
    blocks zeroed; ZERO_ID for zero blocks)."""
    area = next(a for a in plan_capture(dev).areas if a.fs is not None)
    ids: list[bytes] = []
    fd = os.open(dev, os.O_RDONLY)
    try:
        for start in range(0, area.size, 4 * MiB):
            length = min(4 * MiB, area.size - start)
            parts = used_parts(area, start, length)
            if not parts:
                ids += [ZERO_ID] * (length // BLOCK)
                continue
            data = keep_only(os.pread(fd, length, area.offset + start), parts)
            view = memoryview(data)
            for off in range(0, length, BLOCK):
                b = view[off : off + BLOCK]
                ids.append(ZERO_ID if b == ZERO_BLOCK else hashlib.sha1(b).digest())
    finally:
        os.close(fd)
    return ids


def fixed_cuts(ids: list[bytes], n: int) -> list[tuple[int, int]]:
    return [(i, min(i + n, len(ids))) for i in range(0, len(ids), n)]


def cdc_cuts(ids: list[bytes], avg: int) -> list[tuple[int, int]]:
    """Content-defined boundaries between blocks: after a data block whose id is 0 modulo
    `avg`, at least avg/4 and at most 4*avg blocks a chunk; zero blocks never cut."""
    cuts, start = [], 0
    low, high = max(1, avg // 4), avg * 4
    for j, d in enumerate(ids):
        n = j + 1 - start
        if n >= high or (n >= low and d != ZERO_ID and int.from_bytes(d[:4], "little") % avg == 0):
            cuts.append((start, j + 1))
            start = j + 1
    if start < len(ids):
        cuts.append((start, len(ids)))
    return cuts


def chunk_set(ids: list[bytes], cuts: list[tuple[int, int]]) -> dict[bytes, int]:
    """Stored chunks: id -> bytes, all-zero chunks left out (ZERO or UNUSED in an index)."""
    out = {}
    for a, b in cuts:
        part = ids[a:b]
        if part.count(ZERO_ID) == len(part):
            continue
        out[hashlib.sha1(b"".join(part)).digest()] = (b - a) * BLOCK
    return out


def new_bytes(later: dict[bytes, int], earlier: dict[bytes, int]) -> tuple[int, int]:
    new = [n for k, n in later.items() if k not in earlier]
    return sum(new), len(new)


def metadata_blocks(dev: str) -> tuple[set[int], set[int]]:
    """(journal blocks, inode tables and bitmaps) of the ext4 filesystem on `dev`."""
    journal = {int(b) for b in sh("debugfs", "-R", "blocks <8>", dev).split()}
    meta: set[int] = set()
    for m in re.finditer(r"(?:Block bitmap|Inode bitmap|Inode table) at (\d+)(?:-(\d+))?", sh("dumpe2fs", dev)):
        first = int(m.group(1))
        meta.update(range(first, int(m.group(2) or first) + 1))
    return journal, meta


# -- the run


def machine_lines() -> list[str]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
    return [
        f"machine: {cpu}, {os.cpu_count()} cores, {mem / 1024 / 1024:.0f} GiB RAM; kernel {platform.release()}; "
        f"Python {platform.python_version()}",
        f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
    ]


def fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 1.5 GiB drive with 300 MiB of files, for a trial")
    ap.add_argument("--sizes", default="4096,1024,256,128,64", help="chunk sizes to capture with, in KiB")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("incremental.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    sizes = [int(s) * KiB for s in args.sizes.split(",")]
    drive_size, budget = (1536 * MiB, 300 * MiB) if args.quick else (4 * GiB, 1200 * MiB)
    started = time.monotonic()
    lines = machine_lines()
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="incremental-", dir=WORK))
    drives = Drives(tmp, drive_size)
    try:
        rnd = random.Random(args.seed)
        installed, spare = choose(installed_packages(), budget, rnd)
        files = sum(len(p.files) for p in installed)
        size = sum(p.size for p in installed)
        say(f"machine A: {len(installed)} packages, {files} files, {size / MiB:.0f} MiB ...")
        a = drives.fresh("a")
        with drives.mounted(a) as mnt:
            install(mnt, installed, random.Random(1))
        writes: dict[str, Writes] = {}
        for k, share in CHANGES.items():
            say(f"A {k} ...")
            sh("cp", "--sparse=always", str(a), str(tmp / f"{k}.img"))
            with drives.mounted(tmp / f"{k}.img") as mnt:
                writes[k] = upgrade(mnt, installed, spare, random.Random(args.seed + 1), share)
        say("machine B: the same packages in another order, its own mkfs ...")
        b = drives.fresh("b")
        order = installed[:]
        random.Random(2).shuffle(order)
        with drives.mounted(b) as mnt:
            install(mnt, order, random.Random(1))
        devs = {k: drives.loop(tmp / f"{k}.img", ro=True) for k in ("a", *CHANGES, "b")}

        results: dict[int, dict[str, Captured]] = {}
        for cs in sizes:
            say(f"chunk size {fmt_size(cs)}: A, then {', '.join(devs)[3:]}, each into a copy of A's repository")
            results[cs] = {"a": run_capture(devs["a"], tmp / "repo", "a", cs)}
            for k in devs:
                if k != "a":  # a copy of the repository holding A only: chunks are never rewritten
                    shutil.copytree(tmp / "repo", tmp / f"repo-{k}", copy_function=os.link)
                    results[cs][k] = run_capture(devs[k], tmp / f"repo-{k}", k, cs)
                    shutil.rmtree(tmp / f"repo-{k}")
            shutil.rmtree(tmp / "repo")

        say("simulating other chunkings over 4 KiB block hashes ...")
        ids = {k: block_ids(dev) for k, dev in devs.items()}
        part = drives.loop(tmp / "upgrade.img", part=True, ro=True)
        journal, meta = metadata_blocks(part)
        drives.unloop(part)
        changed = [j for j, (x, y) in enumerate(zip(ids["a"], ids["upgrade"])) if x != y]
        split = {"journal": 0, "inode tables, bitmaps": 0, "file data, directories, other": 0}
        for j in changed:
            kind = (
                "journal" if j in journal else "inode tables, bitmaps" if j in meta else "file data, directories, other"
            )
            split[kind] += BLOCK
        schemes = [(f"fixed {fmt_size(n * BLOCK)}", n, False) for n in (1, 16, 64, 256, 1024)]
        schemes += [(f"block-aligned CDC, avg {fmt_size(n * BLOCK)}", n, True) for n in (4, 16, 64)]
        sim = []
        for label, n, cdc in schemes:
            sets = {k: chunk_set(v, cdc_cuts(v, n) if cdc else fixed_cuts(v, n)) for k, v in ids.items()}
            a_bytes = sum(sets["a"].values())
            new = {k: new_bytes(sets[k], sets["a"])[0] for k in (*CHANGES, "b")}
            sim.append((label, new, len(sets["a"]) / (a_bytes / GiB), a_bytes))

        print()
        print("Incremental capture and cross-machine dedup (tests/bench/incremental.py)")
        for ln in lines:
            print(f"  {ln}")
        print(
            f"  drive: {drive_size / GiB:.1f} GiB GPT, one ext4 partition; A: {len(installed)} packages, "
            f"{files} files, {size / MiB:.0f} MiB of this machine's /usr (one copy per inode)"
        )
        for k, w in writes.items():
            print(
                f"  {k} ({CHANGES[k]:.0%} of the packages): {w.files} files written, changed {w.changed / MiB:.1f} MiB "
                f"({w.changed_zstd / MiB:.1f} MiB as zstd -3 file by file); package cache filled and emptied "
                f"{w.cache / MiB:.1f} MiB; deleted {w.removed / MiB:.1f} MiB"
            )
        print(
            "  upgrade: changed 4 KiB blocks of the partition as captured (freed blocks are zeroed): "
            + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in split.items())
        )
        print()
        print("  real captures (rescue.imaging.capture, zstd -3, all cores); stored: new bytes in the repository;")
        print("  ratio: stored / changed (target <= 3), and stored / changed as zstd -3; B/A: what B stored / A stored")
        print(
            "  chunk     A: MiB/s  objects/GiB  index/GiB |"
            + "".join(f" {k + ' stored':>15}  ratio  vs zstd |" for k in CHANGES)
            + " B stored   B/A"
        )
        area_gib = (drive_size - 2 * MiB) / GiB
        for cs, r in results.items():
            first = r["a"]
            print(
                f"  {fmt_size(cs):>8}  {first.data / MiB / first.seconds:8.0f}"
                f"  {first.objects / (first.data / GiB):11.0f}  {first.index_bytes / area_gib / KiB:5.0f} KiB |"
                + "".join(
                    f" {r[k].stored / MiB:11.1f} MiB {r[k].stored / w.changed:5.2f}x"
                    f" {r[k].stored / w.changed_zstd:6.2f}x |"
                    for k, w in writes.items()
                )
                + f" {r['b'].stored / MiB:5.0f} MiB {r['b'].stored / first.stored:4.0%}"
            )
        a0 = results[sizes[0]]["a"]
        print(
            f"  (A: {a0.data / MiB:.0f} MiB of data, {a0.stored / MiB:.0f} MiB stored at {fmt_size(sizes[0])}; "
            f"manifest {a0.manifest_bytes / KiB:.1f} KiB; the upgrade's capture reads every used block again: "
            + ", ".join(f"{fmt_size(cs)} {r['upgrade'].seconds:.1f} s" for cs, r in results.items())
            + ")"
        )
        print()
        print("  simulated over the captured bytes: new chunk bytes before compression (all-zero chunks not stored)")
        print(
            "  scheme                        "
            + "".join(f" {k + ' new':>13} /changed |" for k in CHANGES)
            + "   B/A | objects/GiB"
        )
        for label, new, per_gib, a_bytes in sim:
            print(
                f"  {label:<30}"
                + "".join(f" {new[k] / MiB:9.1f} MiB {new[k] / w.changed:7.2f}x |" for k, w in writes.items())
                + f" {new['b'] / a_bytes:5.0%} | {per_gib:10.0f}"
            )
        print(
            f"\n  bench runtime {time.monotonic() - started:.0f} s; "
            f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
        )
    finally:
        drives.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

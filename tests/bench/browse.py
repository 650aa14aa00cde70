"""Browsing speed, run by hand as root (not a test):

    .venv/bin/python tests/bench/browse.py [--rounds N]

Builds (once, cached in build/bench-browse/ under its recipe's number) a 1 GiB drive with one
ext4 partition holding a folder of 10,000 small files, a 200 MB incompressible file and a
200 MB text file made of this machine's own text files (docs, manuals, headers, sources: each
once, their zstd -3 ratio printed), captures it, mounts the image with `rescue mount`, and
times, in rounds with the page cache dropped before each cold run:
  - listing the folder with a stat of every entry (what `ls -l` does), cold and warm,
  - reading each big file once (cold: every chunk read, decompressed and hash-checked), its
    content checked against the source's hash before the figure counts.
Prints medians and spread, MB/s, the machine and its load. Targets: listing well under a
second, reading >= 150 MB/s."""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, MiB, drop_caches, machine_lines, real_files, spread  # noqa: E402

RECIPE = 2  # bump when the drive's recipe changes: the cached one is then built again
WORK = ROOT / "build" / "bench-browse"
DRIVE_SIZE = 1024 * MiB
PART = DRIVE_SIZE - 2 * MiB
BIG = 200 * 1000 * 1000
FILES = 10_000


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout


def rescue(*args: str) -> None:
    harness = (
        "import sys\nfrom rescue import cli\nfrom rescue.browse.cli_commands import add_commands\n"
        "b = cli.build_parser\n"
        "def p():\n    x = b()\n"
        "    s = next(a for a in x._actions if a.__class__.__name__ == '_SubParsersAction')\n"
        "    'mount' in s.choices or add_commands(s)\n    return x\n"
        "cli.build_parser = p\nraise SystemExit(cli.main())\n"
    )
    subprocess.run(
        [sys.executable, "-c", harness, *args], check=True, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT))
    )


def build(drive: Path, repo: Path) -> dict[str, str]:
    say(f"building {drive} (ext4, {FILES} files, 2 x 200 MB) and capturing it ...")
    with open(drive, "wb") as f:
        f.truncate(DRIVE_SIZE)
    table = f"label: gpt\nstart=2048, size={PART // 512}\n".encode()
    subprocess.run(["sfdisk", "-q", str(drive)], input=table, check=True)
    part = sh("losetup", "--find", "--show", "--offset", str(MiB), "--sizelimit", str(PART), str(drive)).strip()
    mnt = WORK / "src"
    mnt.mkdir(exist_ok=True)
    try:
        sh("mkfs.ext4", "-q", "-L", "bench", part)
        sh("mount", part, str(mnt))
        rnd = random.Random(5)
        (mnt / "many").mkdir()
        for i in range(FILES):
            (mnt / "many" / f"file-{i:05d}.txt").write_bytes(f"file {i}\n".encode() * rnd.randint(1, 50))
        with open(mnt / "random.bin", "wb") as f:
            for _ in range(BIG // MiB):
                f.write(rnd.randbytes(MiB))
            f.write(rnd.randbytes(BIG % MiB))
        with open(mnt / "text.txt", "wb") as f:
            left = BIG
            for _, data in real_files("text", set()):
                f.write(data[:left])
                left -= min(left, len(data))
                if not left:
                    break
        if left:
            raise SystemExit(f"this machine has only {(BIG - left) / 1e6:.0f} MB of text files")
        hashes = {n: hashlib.sha256((mnt / n).read_bytes()).hexdigest() for n in ("random.bin", "text.txt")}
        text = (mnt / "text.txt").read_bytes()
        hashes["text-zstd-ratio"] = f"{len(text) / len(zstandard.ZstdCompressor(level=3).compress(text)):.2f}"
    finally:
        subprocess.run(["umount", str(mnt)])
        subprocess.run(["losetup", "-d", part])
    disk = sh("losetup", "--find", "--show", "--read-only", str(drive)).strip()
    try:
        subprocess.run(
            [sys.executable, "-m", "rescue", "capture", disk, str(repo), "--name", "bench"], check=True, cwd=str(ROOT)
        )
    finally:
        subprocess.run(["losetup", "-d", disk])
    (WORK / "hashes").write_text("".join(f"{k} {v}\n" for k, v in {"recipe": str(RECIPE), **hashes}.items()))
    return hashes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    begun = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    drive, repo = WORK / "drive.img", WORK / "repo"
    known = (
        dict(line.split() for line in (WORK / "hashes").read_text().splitlines()) if (WORK / "hashes").exists() else {}
    )
    if known.get("recipe") == str(RECIPE) and (repo / "images" / "bench" / "manifest.json").exists():
        hashes = known
    else:
        subprocess.run(["rm", "-rf", str(repo), str(drive)], check=True)
        hashes = build(drive, repo)
    mnt = WORK / "mnt"
    mnt.mkdir(exist_ok=True)
    times: dict[str, list[float]] = {}
    rescue("mount", str(repo), "bench", str(mnt))
    try:
        root = mnt / "p1"
        for _ in range(args.rounds):
            drop_caches()
            t = time.perf_counter()
            names = os.listdir(root / "many")
            for n in names:
                os.lstat(root / "many" / n)
            times.setdefault(f"list + stat {len(names)} files, cold", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            for n in os.listdir(root / "many"):
                os.lstat(root / "many" / n)
            times.setdefault(f"list + stat {len(names)} files, warm", []).append(time.perf_counter() - t)
            for name in ("random.bin", "text.txt"):
                drop_caches()
                h = hashlib.sha256()
                t = time.perf_counter()
                with open(root / name, "rb", buffering=0) as f:
                    while block := f.read(4 * MiB):
                        h.update(block)
                secs = time.perf_counter() - t
                if h.hexdigest() != hashes[name]:
                    raise SystemExit(f"{name} read through rescue mount differs from the source")
                times.setdefault(f"read {name} ({BIG / 1e6:.0f} MB, cold, sha256 in the reader)", []).append(secs)
    finally:
        rescue("umount", str(mnt))
    print()
    print(f"text.txt: this machine's text files, zstd -3 ratio {hashes['text-zstd-ratio']}; random.bin: random bytes")
    for what, values in times.items():
        rate = f", {BIG / statistics.median(values) / 1e6:.0f} MB/s" if what.startswith("read") else ""
        print(f"{what}: {spread(values)}{rate}")
    print("\n".join(machine_lines()))
    print(f"bench run time: {time.monotonic() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

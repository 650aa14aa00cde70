"""Browsing speed, run by hand as root (not a test):

    .venv/bin/python tests/bench/browse.py [--keep]

Builds (once, cached in build/bench-browse/) a 1 GiB drive with one ext4 partition holding a
folder of 10,000 small files, a 200 MB incompressible file and a 200 MB compressible (text)
file, captures it, mounts the image with `rescue mount`, drops the page cache, and times:
  - listing the folder with a stat of every entry (what `ls -l` does),
  - reading each big file once (cold: every chunk read, decompressed and hash-checked).
Prints seconds and MB/s. Targets: listing well under a second, reading >= 150 MB/s."""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
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
        words = b"the quick brown fox jumps over the lazy dog rescue image chunk ".split()
        with open(mnt / "text.txt", "wb") as f:
            left = BIG
            while left:
                line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
                block = line * 2000
                f.write(block[:left])
                left -= min(left, len(block))
        hashes = {n: hashlib.sha256((mnt / n).read_bytes()).hexdigest() for n in ("random.bin", "text.txt")}
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
    (WORK / "hashes").write_text("".join(f"{k} {v}\n" for k, v in hashes.items()))
    return hashes


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    drive, repo = WORK / "drive.img", WORK / "repo"
    if (WORK / "hashes").exists() and (repo / "images" / "bench" / "manifest.json").exists():
        hashes = dict(line.split() for line in (WORK / "hashes").read_text().splitlines())
    else:
        hashes = build(drive, repo)
    mnt = WORK / "mnt"
    mnt.mkdir(exist_ok=True)
    rescue("mount", str(repo), "bench", str(mnt))
    try:
        root = mnt / "p1"
        drop_caches()
        t = time.perf_counter()
        names = os.listdir(root / "many")
        for n in names:
            os.lstat(root / "many" / n)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        for n in os.listdir(root / "many"):
            os.lstat(root / "many" / n)
        warm = time.perf_counter() - t
        say(f"list + stat {len(names)} files: {cold:.3f} s cold, {warm:.3f} s warm")
        for name in ("random.bin", "text.txt"):
            drop_caches()
            h = hashlib.sha256()
            t = time.perf_counter()
            with open(root / name, "rb", buffering=0) as f:
                while block := f.read(4 * MiB):
                    h.update(block)
            secs = time.perf_counter() - t
            okay = "ok" if h.hexdigest() == hashes[name] else "WRONG DATA"
            say(
                f"read {name} ({BIG / 1e6:.0f} MB, cold): {secs:.2f} s, {BIG / secs / 1e6:.0f} MB/s "
                f"(incl. sha256 in the reader), content {okay}"
            )
    finally:
        rescue("umount", str(mnt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

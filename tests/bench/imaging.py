"""`make bench`: rescue against the tools users would otherwise pick, side by side, one run.

Builds (once, cached in build/bench/) a reproducible 2.5 GiB drive with one ext4 partition
holding text, binaries, already-compressed data and stale data in free space (about
1.1 GiB in use), then times:
  capture: rescue capture | partclone.ext4 -c | zstd -T0 | dd | zstd -T0   (same zstd level)
  restore: rescue restore | zstd -d | partclone.ext4 -r
Page cache is dropped before every run. Prints times, MB/s, sizes, peak memory and ratios."""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "bench"
DRIVE_SIZE = 2560 * MiB
PART_START = MiB
# The partition, from 1 MiB to 1 MiB before the end (room for the backup GPT), and its
# filesystem exactly as large: one larger than its partition loses its tail on every copy
# (the bench drive once had that defect: the table said one size, mkfs used another).
PART_SIZE = DRIVE_SIZE - PART_START - MiB
VENV_PY = str(ROOT / ".venv" / "bin" / "python")

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no what up can out "
    "about into them more some could other then these two may first any only new time very disk "
    "image restore partition sector chunk filesystem rescue backup"
).split()


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def build_drive(path: Path) -> None:
    """Reproducible content from fixed seeds (binaries are this machine's /usr/lib files,
    the same on every machine built from the same Debian release)."""
    say(f"building the test drive {path} (2.5 GiB, ext4, ~1.4 GiB of data) ...")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(DRIVE_SIZE)
    sh("sfdisk", "-q", str(tmp), input=f'label: gpt\nstart=2048, size={PART_SIZE // 512}, name="bench"\n'.encode())
    part = _losetup(tmp, PART_START, PART_SIZE)
    mnt = WORK / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        sh("mkfs.ext4", "-q", "-L", "bench", part)
        sh("mount", part, str(mnt))
        rnd = random.Random(2026)
        say("  text ...")
        for i in range(300):
            words = [rnd.choice(WORDS) for _ in range(300_000 // 5)]
            (mnt / "text").mkdir(exist_ok=True)
            (mnt / "text" / f"doc{i:04d}.txt").write_text(" ".join(words) + "\n")
        say("  binaries (copies of /usr/lib and /usr/bin files) ...")
        total = 0
        for src in sorted(Path("/usr/lib/x86_64-linux-gnu").rglob("*.so*")) + sorted(Path("/usr/bin").iterdir()):
            if total > 450 * MiB:
                break
            if src.is_file() and not src.is_symlink():
                dst = mnt / "bin" / src.relative_to("/usr")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                total += dst.stat().st_size
        say("  already-compressed data (photos, archives) ...")
        (mnt / "media").mkdir(exist_ok=True)
        for i in range(40):
            (mnt / "media" / f"photo{i:03d}.jpg").write_bytes(rnd.randbytes(rnd.randint(4, 16) * MiB))
        say("  small files ...")
        for i in range(5000):
            d = mnt / "small" / f"{i % 50:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}.cfg").write_text(f"key{i} = {rnd.random()}\n" * rnd.randint(1, 40))
        say("  stale data that will be deleted (free space holding old bytes) ...")
        with open(mnt / "stale", "wb") as f:
            for _ in range(25):
                f.write(rnd.randbytes(16 * MiB))
        os.sync()
        (mnt / "stale").unlink()
    finally:
        subprocess.run(["umount", str(mnt)])
        subprocess.run(["losetup", "-d", part])
    tmp.rename(path)


def _losetup(path: Path, offset: int = 0, size: int | None = None, ro: bool = False) -> str:
    argv = ["losetup", "-f", "--show", "-o", str(offset)]
    if size:
        argv += ["--sizelimit", str(size)]
    if ro:
        argv.append("-r")
    return subprocess.run(argv + [str(path)], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(label: str, cmd: str) -> dict:
    """Run a shell pipeline with caches dropped; wall time and peak RSS of its processes."""
    drop_caches()
    say(f"{label}: {cmd}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"label": label, "seconds": seconds, "peak_kib": peak if peak > before else None}


def peak_rss(cmd: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one command via GNU time."""
    drop_caches()
    say(" ".join(cmd))
    out = WORK / "time.txt"
    t = time.monotonic()
    sh("/usr/bin/time", "-f", "%M", "-o", str(out), *cmd, stdout=subprocess.DEVNULL)
    return time.monotonic() - t, int(out.read_text().split()[-1])


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--level", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    drive = WORK / "drive.img"
    if not drive.exists():
        build_drive(drive)
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    disk = _losetup(drive, ro=True)
    part = _losetup(drive, PART_START, PART_SIZE, ro=True)
    targets = []
    results: dict[str, dict] = {}
    try:
        lvl = args.level
        s, m = peak_rss(
            [VENV_PY, "-m", "rescue", "capture", disk, str(out / "repo"), "--name", "b", "--level", str(lvl)]
        )
        results["rescue capture"] = {"seconds": s, "bytes": du(out / "repo"), "peak_mib": m / 1024}
        r = timed(
            "partclone capture",
            f"partclone.ext4 -c -s {part} -o - -L /dev/null 2>/dev/null | zstd -q -T0 -{lvl} > {out}/pc.zst",
        )
        results["partclone.ext4 | zstd -T0"] = {"seconds": r["seconds"], "bytes": du(out / "pc.zst")}
        r = timed("dd capture", f"dd if={disk} bs=4M status=none | zstd -q -T0 -{lvl} > {out}/dd.zst")
        results["dd | zstd -T0"] = {"seconds": r["seconds"], "bytes": du(out / "dd.zst")}

        t1 = WORK / "target1.img"
        t2 = WORK / "target2.img"
        for t in (t1, t2):
            t.unlink(missing_ok=True)
            with open(t, "wb") as f:
                f.truncate(DRIVE_SIZE)
        tdisk = _losetup(t1)
        targets.append(tdisk)
        s, m = peak_rss([VENV_PY, "-m", "rescue", "restore", str(out / "repo"), "b", tdisk, "--yes"])
        results["rescue restore"] = {"seconds": s, "peak_mib": m / 1024}
        subprocess.run(["partx", "-d", tdisk], stderr=subprocess.DEVNULL)
        s, m = peak_rss([VENV_PY, "-m", "rescue", "restore", str(out / "repo"), "b", tdisk, "--yes", "--no-preverify"])
        results["rescue restore --no-preverify"] = {"seconds": s, "peak_mib": m / 1024}
        tpart = _losetup(t2, PART_START, PART_SIZE)
        targets.append(tpart)
        r = timed(
            "partclone restore",
            f"zstd -q -d -c {out}/pc.zst | partclone.ext4 -r -s - -o {tpart} -L /dev/null 2>/dev/null",
        )
        results["zstd -d | partclone.ext4 -r"] = {"seconds": r["seconds"]}
    finally:
        for dev in targets + [part, disk]:
            subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "-d", dev])
    data = int(
        json.loads(
            subprocess.run(
                [VENV_PY, "-m", "rescue", "info", str(out / "repo"), "b", "--json"], stdout=subprocess.PIPE, text=True
            ).stdout
        )["stats"]["read_bytes"]
    )
    print()
    print(
        f"Used data on the drive (what the filesystem maps): {data / MiB:.0f} MiB; zstd level {args.level}; "
        f"{os.cpu_count()} cores"
    )
    print(f"{'tool':<34} {'time s':>8} {'MB/s':>8} {'image MiB':>10} {'peak MiB':>9}")
    for name, r in results.items():
        mbps = data / r["seconds"] / 1e6
        size = f"{r['bytes'] / MiB:10.0f}" if "bytes" in r else f"{'':>10}"
        peak = f"{r['peak_mib']:9.0f}" if "peak_mib" in r else f"{'':>9}"
        print(f"{name:<34} {r['seconds']:8.2f} {mbps:8.0f} {size} {peak}")
    cap, pc = results["rescue capture"], results["partclone.ext4 | zstd -T0"]
    res, pr = results["rescue restore"], results["zstd -d | partclone.ext4 -r"]
    print()
    print(f"capture speed-up vs partclone|zstd: {pc['seconds'] / cap['seconds']:.2f}x (target >= 1.5x)")
    print(f"capture speed-up vs dd|zstd:        {results['dd | zstd -T0']['seconds'] / cap['seconds']:.2f}x")
    print(f"image size vs partclone|zstd:       {cap['bytes'] / pc['bytes']:.3f} (target <= 1.0)")
    print(f"restore speed vs partclone (with preverify): {pr['seconds'] / res['seconds']:.2f}x (target >= 1.0)")
    print(
        f"restore speed vs partclone (no preverify):   "
        f"{pr['seconds'] / results['rescue restore --no-preverify']['seconds']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: encrypted repositories (format version 2) against unencrypted ones, one run.

The drive is tests/bench/imaging.py's (built once, cached in build/bench/): 2.5 GiB, one
ext4 partition with about 1.4 GiB of text, binaries, compressed data and small files. Each
round captures it into a fresh unencrypted and a fresh encrypted repository and restores
each image onto a drive of its own, the two kinds alternating (which goes first alternates
too, so a machine that gets busier or quieter over the run favours neither); page cache
dropped before every run. Outputs are checked: both restored drives are byte-identical and
fsck clean, and the encrypted repository holds none of the drive's text. Prints the best
and median times and the encrypted/unencrypted throughput ratio (target >= 0.85), then the
CPU each costs per chunk in one process (cpu_per_chunk), a figure other load on a shared
machine disturbs less than wall-clock times. Nothing is asserted on time."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imaging import DRIVE_SIZE, PART_SIZE, PART_START, VENV_PY, WORK, _losetup, build_drive, drop_caches, say  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password"


def rescue(*args: str, encrypted: bool) -> float:
    """Seconds one rescue command takes, caches dropped first."""
    env = dict(os.environ)
    env.pop("RESCUE_PASSWORD", None)
    if encrypted:
        env["RESCUE_PASSWORD"] = PASSWORD
    drop_caches()
    say(("encrypted:   " if encrypted else "unencrypted: ") + " ".join(args))
    t = time.monotonic()
    subprocess.run([VENV_PY, "-m", "rescue", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - t


def sha_of(dev: str, size: int) -> str:
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        while size:
            block = f.read(min(size, 16 * MiB))
            if not block:
                break
            h.update(block)
            size -= len(block)
    return h.hexdigest()


def cpu_per_chunk(drive: Path, chunks: int = 48, reps: int = 3) -> dict[str, float]:
    """CPU seconds (this process's, so other load on the machine counts little) to store and
    to read back `chunks` 4 MiB chunks of the bench drive's data, unencrypted and encrypted
    alternately, in repositories in RAM: what encryption adds to each chunk (HMAC instead of
    SHA-256, one AES-256-GCM pass), without the drive, the threads or the page cache."""
    import tempfile

    import zstandard

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from rescue.repo import chunks as chunk_format
    from rescue.repo.store import Repository

    size = 4 * MiB
    with open(drive, "rb") as f:
        f.seek(PART_START + 64 * MiB)
        data = [f.read(size) for _ in range(chunks)]
    cctx = zstandard.ZstdCompressor(level=3)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        for r in range(reps):
            for encrypted in (False, True) if r % 2 == 0 else (True, False):
                where = Path(tmp) / f"{r}-{encrypted}"
                repo = Repository.create(where, size, password=PASSWORD if encrypted else None)
                t = time.process_time()
                ids = []
                for d in data:
                    ids.append(repo.chunk_id(d))
                    repo.write_chunk(ids[-1], chunk_format.encode(d, cctx))
                stored = time.process_time() - t
                t = time.process_time()
                for i, d in zip(ids, data):
                    assert repo.read_chunk(i, "bench", len(d)) == d
                read = time.process_time() - t
                kind = "encrypted" if encrypted else "unencrypted"
                best[f"store {kind}"] = min(best.get(f"store {kind}", stored), stored)
                best[f"read {kind}"] = min(best.get(f"read {kind}", read), read)
                repo.close()
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    drive = WORK / "drive.img"
    if not drive.exists():
        build_drive(drive)
    out = WORK / "encrypted"
    # The target drives live in a tmpfs: the safety rules refuse a target stored on the
    # repositories' filesystem (as they would a drive holding the repository).
    drives = WORK / "encrypted-targets"
    drives.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g", "bench-targets", str(drives)], check=True)
    devices: list[str] = []
    times: dict[str, list[float]] = {k: [] for k in ("capture", "capture encrypted", "restore", "restore encrypted")}
    try:
        disk = _losetup(drive, ro=True)
        devices.append(disk)
        targets = {}
        for kind in ("plain", "enc"):
            t = drives / f"target-{kind}.img"
            t.unlink(missing_ok=True)
            with open(t, "wb") as f:
                f.truncate(DRIVE_SIZE)
            targets[kind] = _losetup(t)
            devices.append(targets[kind])
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for encrypted in order:
                repo = out / ("enc" if encrypted else "plain")
                if encrypted:
                    rescue("init", str(repo), "--encrypt", encrypted=True)
                key = "capture encrypted" if encrypted else "capture"
                times[key].append(rescue("capture", disk, str(repo), "--name", "b", encrypted=encrypted))
            for encrypted in order:
                repo = out / ("enc" if encrypted else "plain")
                target = targets["enc" if encrypted else "plain"]
                subprocess.run(["partx", "-d", target], stderr=subprocess.DEVNULL)
                key = "restore encrypted" if encrypted else "restore"
                times[key].append(rescue("restore", str(repo), "b", target, "--yes", encrypted=encrypted))
        say("checking the outputs ...")
        same = sha_of(targets["plain"], DRIVE_SIZE) == sha_of(targets["enc"], DRIVE_SIZE)
        part = _losetup(drives / "target-enc.img", PART_START, PART_SIZE, ro=True)
        devices.append(part)
        fsck = subprocess.run(["e2fsck", "-fn", part], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        needle = b"filesystem"  # a word of the bench drive's text, and of its binaries
        leaked = any(needle in p.read_bytes() for p in (out / "enc").rglob("*") if p.is_file())
        data = json.loads(
            subprocess.run(
                [VENV_PY, "-m", "rescue", "info", str(out / "plain"), "b", "--json"],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
        )["stats"]["read_bytes"]
    finally:
        for dev in reversed(devices):
            subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["umount", str(drives)])
    print()
    print(f"Data read per capture: {data / MiB:.0f} MiB; {args.rounds} rounds; {os.cpu_count()} cores")
    print(f"{'job':<20} {'best s':>8} {'median s':>9} {'MB/s (best)':>12}   (load average {os.getloadavg()[0]:.1f})")
    for name, ts in times.items():
        rounds = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<20} {min(ts):8.2f} {statistics.median(ts):9.2f} {data / min(ts) / 1e6:12.0f}   rounds: {rounds}")
    for job in ("capture", "restore"):
        best = min(times[job]) / min(times[f"{job} encrypted"])
        median = statistics.median(times[job]) / statistics.median(times[f"{job} encrypted"])
        print(f"{job} encrypted/unencrypted throughput: best {best:.2f}, median {median:.2f} (target >= 0.85)")
    cpu = cpu_per_chunk(drive)
    print("CPU per 4 MiB chunk, one thread, repositories in RAM (48 chunks, best of 3):")
    for job in ("store", "read"):
        plain, enc = cpu[f"{job} unencrypted"], cpu[f"{job} encrypted"]
        print(
            f"  {job:<5} unencrypted {plain / 48 * 1000:6.1f} ms, encrypted {enc / 48 * 1000:6.1f} ms: "
            f"ratio {plain / enc:.2f}"
        )
    print(f"restored drives identical: {same}; encrypted one fsck clean: {fsck.returncode == 0}; ", end="")
    print(f"drive text in the encrypted repository: {'FOUND' if leaked else 'none'}")
    return 0 if same and fsck.returncode == 0 and not leaked else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: encrypted repositories (format version 2) against unencrypted ones, one run.

    .venv/bin/python tests/bench/encrypted.py [--rounds N] [--size GiB] [--used GiB]

The drive is tests/bench/imaging.py's default one (built once, cached in build/bench/): 4 GiB,
one ext4 partition with 2.1 GiB of this machine's text, binaries and compressed files. Each
round captures it into a fresh unencrypted and a fresh encrypted repository, then restores
each image onto a fresh target (a sparse file in a tmpfs, on a loop device: the safety rules
refuse a target on the repositories' filesystem, and a target in RAM leaves the CPU that
encryption costs as the only difference), the two kinds in alternating order (so a machine
that gets busier or quieter over the run favours neither); page cache dropped before every
run. Every output is checked before a figure is printed: every restored drive is byte-identical
to the first, whose partition is fsck clean and holds every file of the source with its
content, and the encrypted repository holds none of the drive's text.

Prints per job the median, best and spread of the times and of the command's CPU seconds, the
encrypted/unencrypted throughput ratio by median, by best round and per round (target >= 0.85)
and the CPU ratio by median, the load average when each run
started, the machine; then the CPU each costs per 4 MiB chunk in one process (cpu_per_chunk),
a figure other load on a shared machine disturbs less than wall-clock times. Nothing is
asserted on time. 11.5 minutes with 5 rounds on a loaded 2-core machine (load 3-12), plus
building the drive once."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VENV_PY, MiB, alternate, detach, drop_caches, losetup, machine_lines, say, spread  # noqa: E402
from imaging import DEFAULT_SIZE, DEFAULT_USED, PART_START, WORK, Recipe, check_fs, drive, sha_of  # noqa: E402

GiB = 1 << 30
PASSWORD = "bench password"
KINDS = ["unencrypted", "encrypted"]
NEEDLE = b"filesystem"  # a word of the bench drive's text, and of its binaries


class Runs:
    """Seconds, CPU seconds (user and system, of the command: what other load on the machine
    disturbs least) and the load average at the start of every run, by job and kind."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str], list[float]] = {}
        self.loads: list[float] = []

    def run(self, job: str, kind: str, *args: str) -> None:
        """One rescue command, page cache dropped first; the password in the environment."""
        env = {k: v for k, v in os.environ.items() if k != "RESCUE_PASSWORD"}
        if kind == "encrypted":
            env["RESCUE_PASSWORD"] = PASSWORD
        drop_caches()
        say(f"{kind + ':':<13}rescue {' '.join(args)}")
        self.loads.append(os.getloadavg()[0])
        t, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([VENV_PY, "-m", "rescue", *args], check=True, stdout=subprocess.DEVNULL, env=env)
        self.seconds.setdefault((job, kind), []).append(time.monotonic() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.cpu.setdefault((job, kind), []).append(cpu)


def cpu_per_chunk(path: Path, chunks: int = 48, reps: int = 5) -> dict[str, list[float]]:
    """CPU seconds per chunk (this process's, so other load on the machine counts little) to
    store and to read back `chunks` 4 MiB chunks of the bench drive's data, unencrypted and
    encrypted alternately, in repositories in RAM: what encryption adds to each chunk (HMAC
    instead of SHA-256, one AES-256-GCM pass), without the drive, the threads or the page
    cache."""
    import tempfile

    import zstandard

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from rescue.repo import chunks as chunk_format
    from rescue.repo.store import Repository

    size = 4 * MiB
    with open(path, "rb") as f:
        f.seek(PART_START + 64 * MiB)
        data = [f.read(size) for _ in range(chunks)]
    cctx = zstandard.ZstdCompressor(level=3)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        for r in range(reps):
            for kind in alternate(KINDS, r):
                password = PASSWORD if kind == "encrypted" else None
                repo = Repository.create(Path(tmp) / f"{r}-{kind}", size, password=password)
                t = time.process_time()
                ids = []
                for d in data:
                    ids.append(repo.chunk_id(d))
                    repo.write_chunk(ids[-1], chunk_format.encode(d, cctx))
                stored = time.process_time() - t
                t = time.process_time()
                for i, d in zip(ids, data):
                    if repo.read_chunk(i, "bench", len(d)) != d:
                        raise SystemExit(f"cpu_per_chunk: a chunk read back from the {kind} repository differs")
                read = time.process_time() - t
                out.setdefault(f"store {kind}", []).append(stored / chunks)
                out.setdefault(f"read {kind}", []).append(read / chunks)
                repo.close()
    return out


def fresh_target(folder: Path, size: int) -> Path:
    t = folder / "target.img"
    t.unlink(missing_ok=True)
    with open(t, "wb") as f:
        f.truncate(size)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=float, default=DEFAULT_SIZE / GiB, help="drive size, GiB (default 4)")
    ap.add_argument("--used", type=float, default=DEFAULT_USED / GiB, help="bytes in use, GiB (default 2.1)")
    args = ap.parse_args()
    begun = time.monotonic()
    before = machine_lines()
    recipe = Recipe(int(args.size * GiB) // MiB * MiB, int(args.used * GiB) // MiB * MiB)
    facts = drive(recipe)
    out = WORK / "encrypted"
    targets = WORK / "encrypted-targets"
    targets.mkdir(parents=True, exist_ok=True)
    tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={recipe.size + GiB}", "bench-targets", str(targets)]
    subprocess.run(tmpfs, check=True)
    runs = Runs()
    drives: set[str] = set()  # the SHA-256 of every restored drive: one value when all are equal
    devs: list[str] = []
    try:
        devs.append(losetup(recipe.path, ro=True))
        disk = devs[0]
        for r in range(args.rounds):
            order = alternate(KINDS, r)
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            say(f"round {r + 1}/{args.rounds}: capture")
            for kind in order:
                repo = str(out / kind)
                if kind == "encrypted":
                    subprocess.run(
                        [VENV_PY, "-m", "rescue", "init", repo, "--encrypt"],
                        check=True,
                        stdout=subprocess.DEVNULL,
                        env={**os.environ, "RESCUE_PASSWORD": PASSWORD},
                    )
                runs.run("capture", kind, "capture", disk, repo, "--name", "b")
            say(f"round {r + 1}/{args.rounds}: restore")
            for kind in order:
                target = fresh_target(targets, recipe.size)
                dev = losetup(target)
                try:
                    runs.run("restore", kind, "restore", str(out / kind), "b", dev, "--yes")
                    sha = sha_of(dev, 0, recipe.size)
                    if sha not in drives:  # the same bytes as a drive checked already need no check
                        drives.add(sha)
                        part = losetup(target, PART_START, recipe.part_size, ro=True)
                        try:
                            check_fs(part, facts["files"], f"{kind} restore")
                        finally:
                            detach(part)
                finally:
                    detach(dev)
                    target.unlink()
        leaked = [p for p in (out / "encrypted").rglob("*") if p.is_file() and NEEDLE in p.read_bytes()]
        read_bytes = json.loads(
            subprocess.run(
                [VENV_PY, "-m", "rescue", "info", str(out / "unencrypted"), "b", "--json"],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
        )["stats"]["read_bytes"]
    finally:
        detach(*reversed(devs))
        subprocess.run(["umount", str(targets)])
    shutil.rmtree(out, ignore_errors=True)
    if len(drives) != 1 or leaked:
        print(f"FAILED: {len(drives)} different restored drives; drive text found in {[str(p) for p in leaked[:3]]}")
        return 1
    say("CPU per chunk ...")
    per_chunk = cpu_per_chunk(recipe.path)

    print()
    print(f"Data read per capture: {read_bytes / MiB:.0f} MiB; {args.rounds} rounds. Checked: all restored drives")
    print("identical, fsck clean with every file of the source; no drive text in the encrypted repository")
    print(f"{'job':<20} {'median s':>9} {'MB/s':>6}   spread (min-max); CPU seconds of the command")
    for (job, kind), ts in sorted(runs.seconds.items()):
        median = statistics.median(ts)
        cpu_spread = spread(runs.cpu[(job, kind)])
        print(f"{job + ' ' + kind:<22} {median:7.2f} {read_bytes / median / 1e6:6.0f}   {spread(ts)}; CPU {cpu_spread}")
    for job in ("capture", "restore"):
        plain, enc = runs.seconds[(job, "unencrypted")], runs.seconds[(job, "encrypted")]
        paired = [p / e for p, e in zip(plain, enc)]
        by_median = statistics.median(plain) / statistics.median(enc)
        print(
            f"{job} encrypted/unencrypted throughput: by median {by_median:.2f}, "
            f"by best round {min(plain) / min(enc):.2f}; per round {' '.join(f'{x:.2f}' for x in paired)} "
            f"(median {statistics.median(paired):.2f}) (target >= 0.85)"
        )
        cpu_plain, cpu_enc = runs.cpu[(job, "unencrypted")], runs.cpu[(job, "encrypted")]
        print(f"  CPU unencrypted/encrypted by median {statistics.median(cpu_plain) / statistics.median(cpu_enc):.2f}")
    print(f"load average (1 min) when the runs started: {min(runs.loads):.2f}-{max(runs.loads):.2f}")
    times = len(per_chunk["read encrypted"])
    print(f"CPU per 4 MiB chunk, one thread, repositories in RAM (48 chunks, {times} times):")
    for job in ("store", "read"):
        plain, enc = per_chunk[f"{job} unencrypted"], per_chunk[f"{job} encrypted"]
        print(
            f"  {job:<5} unencrypted {spread([x * 1000 for x in plain], 'ms')}, "
            f"encrypted {spread([x * 1000 for x in enc], 'ms')}: ratio by median "
            f"{statistics.median(plain) / statistics.median(enc):.2f}"
        )
    print("before: " + "; ".join(before))
    print("after:  " + "; ".join(machine_lines()))
    print(f"bench run time: {time.monotonic() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

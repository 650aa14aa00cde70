"""`make bench`: one multicast stream against N unicast HTTP restores (issue 23, point 6), as root:

    .venv/bin/python tests/bench/multicast.py [--receivers 1,4,8,16] [--rate 1gbit] [--size-mib 256]

A segment of network namespaces on one bridge (tests/servers/netns.py): the server is the host
itself, on the bridge, and what it sends into the segment is limited with tc tbf (1 Gbit/s by
default), so both contenders share the same one link. For each N: N receivers in their own
namespaces restore the same image onto their own blank loop device of --size-mib MiB, once
from `rescue serve --multicast` (udpcast), once from nginx all at the same time
(`rescue restore http://...`). Timed: from the first process started to the last one
finished. The bytes the server read: for multicast what `rescue serve` says it read (the
check before sending, then the stream), for HTTP the body bytes nginx sent (its access log).

Every restored drive's files are compared with the source's (SHA-256 of each file) before a
figure is printed. The drives live on a tmpfs, so the figures measure the network and the
receivers' CPU, not a disk. Takes a few minutes with the defaults; the machine's load is
printed beside the figures (the machine may be shared). Run one bench at a time:
`flock /tmp/bench.lock .venv/bin/python tests/bench/multicast.py`."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from common import VENV_PY, MiB, machine_lines, say  # noqa: E402
from disks import tree_hashes  # noqa: E402
from servers import web  # noqa: E402
from servers.netns import Segment  # noqa: E402

WORK = ROOT / "build" / "bench"
PORTBASE = 9400


def sh(*args: str, **kw) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def rescue(*args: str) -> list[str]:
    return [VENV_PY, "-m", "rescue", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def losetup(path: Path, ro: bool = False, offset: int = 0, size: int = 0) -> str:
    argv = ["losetup", "-f", "--show", "-o", str(offset)] + (["--sizelimit", str(size)] if size else [])
    return sh(*argv, *(["-r"] if ro else []), str(path)).strip()


def build_source(where: Path, size: int) -> tuple[str, dict[str, str]]:
    """A GPT drive with one ext4 partition about 60% full: half random bytes (they do not
    compress), half this machine's Python files (they do). Returns the read-only loop device
    and the files' hashes."""
    img = where / "source.img"
    with open(img, "wb") as f:
        f.truncate(size)
    sh("sfdisk", "--quiet", str(img), input="label: gpt\nstart=2048, name=data\n")
    part_size = size - 2 * MiB - 34 * 512
    dev = losetup(img, offset=MiB, size=part_size // MiB * MiB)
    mnt = Path(tempfile.mkdtemp(dir=where))
    try:
        sh("mkfs.ext4", "-q", "-m", "0", dev)
        sh("mount", dev, str(mnt))
        try:
            for i in range(int(size * 0.3) // (4 * MiB)):
                (mnt / f"random-{i}.bin").write_bytes(os.urandom(4 * MiB))
            budget = int(size * 0.3)
            src = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
            for p in sorted(src.rglob("*.py")):
                if budget <= 0:
                    break
                dst = mnt / "py" / p.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                budget -= p.stat().st_size
            hashes = tree_hashes(mnt)
        finally:
            sh("umount", str(mnt))
    finally:
        sh("losetup", "-d", dev)
        mnt.rmdir()
    return losetup(img, ro=True), hashes


def files_of(disk: str, mnt: Path) -> dict[str, str]:
    p = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]["partitions"][0]
    dev = losetup(Path(disk), ro=True, offset=p["start"] * 512, size=p["size"] * 512)
    try:
        sh("mount", "-o", "ro,noload", dev, str(mnt))
        try:
            return tree_hashes(mnt)
        finally:
            sh("umount", str(mnt))
    finally:
        sh("losetup", "-d", dev)


def run_all(procs: list[subprocess.Popen], limit: float = 1800) -> None:
    deadline = time.monotonic() + limit
    for p in procs:
        p.wait(max(1, deadline - time.monotonic()))


def blank_targets(drives: Path, n: int, size: int) -> list[str]:
    out = []
    for i in range(n):
        img = drives / f"target-{i}.img"
        img.unlink(missing_ok=True)
        with open(img, "wb") as f:
            f.truncate(size)
        out.append(losetup(img))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--receivers", default="1,4,8,16")
    ap.add_argument("--rate", default="1gbit", help="tc tbf rate of the server's link")
    ap.add_argument("--size-mib", type=int, default=256)
    args = ap.parse_args()
    counts = [int(x) for x in args.receivers.split(",")]
    size = args.size_mib * MiB
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="multicast-", dir=WORK))
    drives = work / "drives"
    drives.mkdir()
    sh("mount", "-t", "tmpfs", "-o", f"size={(max(counts) + 2) * size}", "bench-multicast", str(drives))
    loops: list[str] = []
    server = None
    seg = Segment(max(counts))
    try:
        source, want = build_source(drives, size)
        loops.append(source)
        host = seg.host_address()
        (work / "web").mkdir()
        server = web.start_nginx(root=work / "web", host=host)
        repo = server.www / web.REPO
        shutil.rmtree(repo)
        sh(*rescue("capture", source, str(repo), "--name", "lab"), env=env())
        stored = sum(p.stat().st_size for p in (repo / "chunks").rglob("*") if p.is_file())
        seg.limit_host(args.rate)
        url = server.url()
        mnt = work / "mnt"
        mnt.mkdir()
        rows = []
        for n in counts:
            say(f"{n} receivers: multicast")
            targets = blank_targets(drives, n, size)
            loops += targets
            port = PORTBASE + 2 * n
            start = time.monotonic()
            sender = subprocess.Popen(
                rescue("serve", str(repo), "lab", "--multicast", "--interface", seg.bridge,
                       "--portbase", str(port), "--receivers", str(n), "--wait", "60"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
            )  # fmt: skip
            procs = [
                seg.popen(i, rescue("restore", f"multicast://eth0:{port}", "lab", t, "--yes"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
                for i, t in enumerate(targets)
            ]  # fmt: skip
            run_all([*procs, sender])
            m_time = time.monotonic() - start
            out = sender.communicate()[0]
            bad = [p.communicate()[1] for p in procs if p.returncode != 0]
            if sender.returncode != 0 or bad:
                raise SystemExit(f"multicast with {n} receivers failed: {out}\n{bad}")
            m_read = re.search(r"read ([\d.]+ \w+) from the repository", out)
            for t in targets:
                if files_of(t, mnt) != want:
                    raise SystemExit(f"multicast: {t} differs from the source")

            say(f"{n} receivers: unicast HTTP")
            for t in targets:
                sh("losetup", "-d", t)
                loops.remove(t)
            targets = blank_targets(drives, n, size)
            loops += targets
            before = len(server.requests())
            start = time.monotonic()
            procs = [
                seg.popen(i, rescue("restore", url, "lab", t, "--yes"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
                for i, t in enumerate(targets)
            ]  # fmt: skip
            run_all(procs)
            u_time = time.monotonic() - start
            bad = [p.communicate()[1] for p in procs if p.returncode != 0]
            if bad:
                raise SystemExit(f"unicast with {n} receivers failed: {bad}")
            for t in targets:
                if files_of(t, mnt) != want:
                    raise SystemExit(f"unicast: {t} differs from the source")
            time.sleep(0.5)
            u_read = sum(r.sent for r in server.requests()[before:])
            rows.append((n, m_time, m_read.group(1) if m_read else "?", u_time, u_read))
            for t in targets:
                sh("losetup", "-d", t)
                loops.remove(t)
        print()
        for line in machine_lines():
            print(line)
        print(f"image: {args.size_mib} MiB drive, {stored / MiB:.1f} MiB stored (compressed); link {args.rate}")
        print(f"{'receivers':>9}  {'multicast s':>11}  {'server read':>12}  {'unicast s':>9}  {'server read':>12}")
        for n, mt, mr, ut, ur in rows:
            print(f"{n:>9}  {mt:>11.1f}  {mr:>12}  {ut:>9.1f}  {ur / MiB:>8.1f} MiB")
        one = rows[0][1] if rows and rows[0][0] == 1 else None
        if one:
            print("multicast time / time of one: " + ", ".join(f"{n}: {mt / one:.2f}x" for n, mt, *_ in rows))
        return 0
    finally:
        if server is not None:
            server.stop()
        seg.close()
        for d in loops:
            subprocess.run(["losetup", "-d", d], capture_output=True)
        subprocess.run(["umount", "--lazy", str(drives)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: repositories on a server (issue 14, point 8), in one run on loopback, as root:

    .venv/bin/python tests/bench/remote.py [--quick] [--rounds N]

The servers are the tests' own (tests/servers: OpenSSH's sshd, a single-node Swift with
s3api), started here and stopped at the end; everything lives in one temporary directory
under build/bench/ (TMPDIR points there, so the servers' directories do too: the local
repository, the directory sshd serves and Swift's object storage are on one filesystem,
which is checked), removed at the end.

1. Capture and restore, local directory vs sftp:// vs s3://, the same source drive: GPT, one
   ext4 partition holding an honest mix with no duplicate files (Python files copied from
   /usr/lib/python3*, shared libraries, Debian .deb archives, which are compressed already,
   and random bytes), about 780 MiB of files (160 MiB with --quick). Every capture goes to
   a fresh repository, every restore onto a fresh blank drive, and every restored partition
   is checked (e2fsck -fn, then mounted read-only and each file's SHA-256 compared with the
   source's) before its figure counts. Rounds alternate the order (local, sftp, s3 / s3,
   sftp, local); page cache dropped before every timed run. Medians and spread; restore
   from S3 and from SFTP as a fraction of local (target: S3 at least 50%).
2. SFTP transfer vs OpenSSH's own `sftp` client moving the same files (the chunk files of
   a local repository): `sftp -b` with `put -r` / `get -r` vs SftpStorage put/get of each
   object on os.cpu_count() threads, as capture and restore call it. Target: rescue at
   least as fast.
3. Two machines with the same OS in one S3 bucket: two drives made separately (their own
   mkfs, as two installs would be) holding the same OS tree (Python files) and each its own
   random user data, captured one after the other into one s3:// repository; what
   `rescue list --json` says each stored, and the second as a fraction of the first.

Honesty: the same bytes for every contender, each output checked before a figure is printed,
the machine's load printed with the figures (the machine may be shared)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from imaging import VENV_PY, WORK, MiB, _losetup, drop_caches  # noqa: E402

PART_START = MiB
SERVER_LIFETIME = 4 * 3600.0  # seconds the servers may live, whatever happens to this run
BACKENDS = ("local", "sftp", "s3")


def say(msg: str) -> None:
    print(f"[remote] {msg}", flush=True)


def sh(*argv: str, **kw) -> str:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


# -- the drives


class Filler:
    """Writes files into a mounted filesystem, never the same content twice (a copied file
    whose bytes were already written is skipped), and counts what it wrote."""

    def __init__(self, top: Path, rnd: random.Random):
        self.top, self.rnd = top, rnd
        self.seen: set[bytes] = set()
        self.written = 0

    def copy(self, sources: Iterable[Path], into: str, budget: int, strip: Path) -> int:
        total = 0
        for src in sources:
            if total >= budget:
                break
            if src.is_symlink() or not src.is_file():
                continue
            try:
                data = src.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(data).digest()
            if not data or digest in self.seen:
                continue
            self.seen.add(digest)
            dst = self.top / into / src.relative_to(strip)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            total += len(data)
        self.written += total
        return total

    def random_files(self, into: str, budget: int, low: int, high: int) -> int:
        """Incompressible files of low..high bytes (photos, videos, encrypted archives)."""
        total, i = 0, 0
        (self.top / into).mkdir(parents=True, exist_ok=True)
        while total < budget:
            n = min(self.rnd.randint(low, high), budget - total)
            (self.top / into / f"file{i:05d}.bin").write_bytes(self.rnd.randbytes(n))
            total, i = total + n, i + 1
        self.written += total
        return total


def python_files() -> list[Path]:
    return sorted(p for d in sorted(Path("/usr/lib").glob("python3*")) for p in d.rglob("*"))


def make_drive(path: Path, size: int, fill: Callable[[Filler], None], seed: int, mnt: Path) -> int:
    """A blank file of `size` bytes with a GPT and one ext4 partition (from 1 MiB to 1 MiB
    before the end), filled by `fill`; the bytes of file data written."""
    with open(path, "wb") as f:
        f.truncate(size)
    sh("sfdisk", "-q", str(path), input=f"label: gpt\nstart=2048, size={(size - 2 * MiB) // 512}\n")
    part = _losetup(path, PART_START, size - 2 * MiB)
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        sh("mkfs.ext4", "-q", "-L", "bench", part)
        sh("mount", part, str(mnt))
        try:
            filler = Filler(mnt, random.Random(seed))
            fill(filler)
            os.sync()
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", part])
    return filler.written


def tree_digest(image: Path, mnt: Path) -> dict[str, str]:
    """e2fsck -fn on the image's first partition, then the SHA-256 of every file in it,
    mounted read-only; AssertionError when fsck finds anything."""
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]["partitions"]
    dev = _losetup(image, table[0]["start"] * 512, table[0]["size"] * 512, ro=True)
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        fsck = subprocess.run(["e2fsck", "-fn", dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert fsck.returncode == 0, f"e2fsck on {image}: {fsck.stdout[-500:]}"
        subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True)
        try:
            out = {}
            for p in sorted(mnt.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    out[str(p.relative_to(mnt))] = hashlib.sha256(p.read_bytes()).hexdigest()
            return out
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev])


# -- rescue as a user runs it


class Rescue:
    """`python -m rescue ...` with the environment each kind of repository needs."""

    def __init__(self, base_env: dict[str, str], sftp_env: dict[str, str], s3_env: dict[str, str]):
        self.env = {"local": base_env, "sftp": {**base_env, **sftp_env}, "s3": {**base_env, **s3_env}}

    def run(self, kind: str, *args: str) -> str:
        r = subprocess.run(
            [VENV_PY, "-m", "rescue", *args],
            env=self.env[kind],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"rescue {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout

    def timed(self, kind: str, *args: str) -> float:
        drop_caches()
        t = time.monotonic()
        self.run(kind, *args)
        return time.monotonic() - t


def restore_onto_blank(rescue: Rescue, kind: str, repo: str, name: str, target: Path, size: int) -> float:
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(size)
    dev = _losetup(target)
    try:
        return rescue.timed(kind, "restore", repo, name, dev, "--yes")
    finally:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", dev])


def summary(values: list[float]) -> tuple[float, str]:
    med = statistics.median(values)
    if len(values) == 1:
        return med, "1 run"
    lo, hi = min(values), max(values)
    return med, f"{lo:.2f}..{hi:.2f} s ({(hi - lo) / med:.0%})"


# -- part 1


def part1(args, tmp: Path, rescue: Rescue, sshd, swift, drive: Path, drive_size: int, mnt: Path) -> Path:
    source = tree_digest(drive, mnt)
    say(f"source: {len(source)} files")
    disk = _losetup(drive, ro=True)
    times: dict[tuple[str, str], list[float]] = {}
    data_bytes = 0
    keep: Path | None = None
    try:
        for r in range(args.rounds):
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]
            for kind in order:
                name = f"bench{r}"
                local_dir = tmp / "repos" / f"{kind}-r{r}"
                repo = {
                    "local": str(local_dir),
                    "sftp": sshd.url(local_dir),
                    "s3": f"s3://{swift.bucket}/round{r}",
                }[kind]
                cap = rescue.timed(kind, "capture", disk, repo, "--name", name)
                info = json.loads(rescue.run(kind, "info", repo, name, "--json"))
                data_bytes = int(info["stats"]["data_bytes"])
                target = tmp / "targets" / "target.img"
                res = restore_onto_blank(rescue, kind, repo, name, target, drive_size)
                got = tree_digest(target, mnt)
                assert got == source, f"{kind} round {r + 1}: the restored files differ from the source"
                target.unlink()
                times.setdefault((kind, "capture"), []).append(cap)
                times.setdefault((kind, "restore"), []).append(res)
                say(
                    f"round {r + 1} {kind:<5}: capture {cap:6.2f} s {data_bytes / cap / 1e6:5.0f} MB/s, "
                    f"restore {res:6.2f} s {data_bytes / res / 1e6:5.0f} MB/s; restored files checked"
                )
                if kind == "local" and keep is None:
                    keep = local_dir  # part 2 moves its chunk files
                elif kind != "s3":
                    shutil.rmtree(local_dir)
    finally:
        subprocess.run(["losetup", "-d", disk])
    print()
    print(
        f"1. capture and restore, {args.rounds} round(s), order alternated; image data "
        f"{data_bytes / MiB:.0f} MiB (`rescue info` data_bytes); restore includes its preverify"
    )
    print(f"   {'':<18} {'median s':>9} {'MB/s':>6}  spread (min..max, (max-min)/median)")
    med: dict[tuple[str, str], float] = {}
    for job in ("capture", "restore"):
        for kind in BACKENDS:
            m, spread = summary(times[(kind, job)])
            med[(kind, job)] = m
            print(f"   {job + ' ' + kind:<18} {m:9.2f} {data_bytes / m / 1e6:6.0f}  {spread}")
    for job in ("capture", "restore"):
        for kind in ("sftp", "s3"):
            frac = med[("local", job)] / med[(kind, job)]
            target = " (target >= 50%)" if (kind, job) == ("s3", "restore") else ""
            print(f"   {job} from/to {kind} vs local: {frac:.0%} of local throughput{target}")
    assert keep is not None
    return keep


# -- part 2


def _same_tree(a: Path, b: Path, keys: list[str]) -> None:
    for k in keys:
        assert (a / k).read_bytes() == (b / k).read_bytes(), f"{b / k} differs from {a / k}"
    got = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert got == sorted(keys), f"{b} holds other files than {a}"


def part2(args, tmp: Path, sshd, repo: Path) -> None:
    from rescue.repo.chunks import max_blob

    keys = sorted(str(p.relative_to(repo)) for p in (repo / "chunks").rglob("*") if p.is_file())
    total = sum((repo / k).stat().st_size for k in keys)
    workers = os.cpu_count() or 1
    ssh_opts = shlex.join(sshd.ssh_command[1:])
    say(f"part 2: {len(keys)} chunk files, {total / MiB:.0f} MiB; sftp {ssh_opts}; rescue on {workers} threads")
    area = tmp / "transfer"

    def openssh(batch: str) -> float:
        script = area / "batch"
        script.write_text(batch)
        drop_caches()
        t = time.monotonic()
        subprocess.run(
            ["sftp", *sshd.ssh_command[1:], "-q", "-b", str(script), f"{sshd.user}@{sshd.host}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.monotonic() - t

    def rescue_put(remote: Path) -> float:
        storage = sshd.storage(remote)
        try:
            drop_caches()
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(lambda k: storage.put(k, (repo / k).read_bytes()), keys))
            return time.monotonic() - t
        finally:
            storage.close()

    def rescue_get(remote: Path, local: Path) -> float:
        storage = sshd.storage(remote)

        def one(k: str) -> None:
            data = storage.get(k, max_blob(4 << 20) + (1 << 20))
            (local / k).parent.mkdir(parents=True, exist_ok=True)
            (local / k).write_bytes(data)

        try:
            drop_caches()
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, keys))
            return time.monotonic() - t
        finally:
            storage.close()

    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        contenders = ["openssh", "openssh -f", "rescue"]
        for who in contenders if r % 2 == 0 else contenders[::-1]:
            shutil.rmtree(area, ignore_errors=True)
            up, down = area / "server", area / "back"
            up.mkdir(parents=True)
            down.mkdir()
            if who == "rescue":
                put = rescue_put(up)
                _same_tree(repo, up, keys)
                get = rescue_get(up, down)
            else:
                flag = "-f" if who == "openssh -f" else ""
                put = openssh(f"put -r {flag} {repo / 'chunks'} {up / 'chunks'}\n")
                _same_tree(repo, up, keys)
                get = openssh(f"get -r {up / 'chunks'} {down / 'chunks'}\n")
            _same_tree(repo, down, keys)
            times.setdefault(f"upload {who}", []).append(put)
            times.setdefault(f"download {who}", []).append(get)
            say(
                f"round {r + 1} {who:<10}: upload {put:6.2f} s {total / put / 1e6:5.0f} MB/s, "
                f"download {get:6.2f} s {total / get / 1e6:5.0f} MB/s; both copies checked"
            )
    shutil.rmtree(area, ignore_errors=True)
    print()
    print(
        f"2. SFTP over loopback, the same {len(keys)} files ({total / MiB:.0f} MiB, a repository's chunk files), "
        f"{args.rounds} round(s), order alternated"
    )
    print("   openssh = sftp -b (put -r / get -r, default -B 32768 -R 64); openssh -f = put -r -f (fsync each file,")
    print(f"   as rescue does); rescue = SftpStorage.put/get of each object on {workers} threads, one connection")
    print(f"   {'':<20} {'median s':>9} {'MB/s':>6}  spread")
    med = {}
    for label, values in times.items():
        m, spread = summary(values)
        med[label] = m
    for direction in ("upload", "download"):
        for who in ("openssh", "openssh -f", "rescue"):
            m, spread = summary(times[f"{direction} {who}"])
            print(f"   {direction + ' ' + who:<20} {m:9.2f} {total / m / 1e6:6.0f}  {spread}")
    for direction in ("upload", "download"):
        print(
            f"   {direction}: rescue vs openssh sftp: {med[f'{direction} openssh'] / med[f'{direction} rescue']:.2f}x "
            f"(vs -f: {med[f'{direction} openssh -f'] / med[f'{direction} rescue']:.2f}x) (target >= 1.0)"
        )


# -- part 3


def part3(args, tmp: Path, rescue: Rescue, swift, mnt: Path) -> None:
    size = 512 * MiB if args.quick else 1024 * MiB
    os_budget = 60 * MiB if args.quick else 240 * MiB
    user_budget = 30 * MiB if args.quick else 120 * MiB
    pyfiles = python_files()
    repo = f"s3://{swift.bucket}/two-machines"
    wrote = {}
    for name, seed in (("machine-a", 1), ("machine-b", 2)):
        drive = tmp / f"{name}.img"

        def fill(f: Filler, seed: int = seed) -> None:
            f.copy(pyfiles, "usr/lib", os_budget, Path("/usr/lib"))
            f.random_files(f"home/user{seed}", user_budget, 64 * 1024, 8 * MiB)

        wrote[name] = make_drive(drive, size, fill, seed, mnt)
        disk = _losetup(drive, ro=True)
        try:
            say(f"capturing {name} ({wrote[name] / MiB:.0f} MiB of files) into {repo}")
            rescue.run("s3", "capture", disk, repo, "--name", name)
        finally:
            subprocess.run(["losetup", "-d", disk])
        drive.unlink()
    table = rescue.run("s3", "list", repo)
    images = {i["name"]: i for i in json.loads(rescue.run("s3", "list", repo, "--json"))}
    a, b = images["machine-a"], images["machine-b"]
    print()
    print(
        f"3. two machines, same OS tree ({os_budget / MiB:.0f} MiB of /usr/lib/python3* files, unique) and "
        f"{user_budget / MiB:.0f} MiB of random user data each, separate mkfs, one s3:// repository"
    )
    print("   `rescue list`:")
    for line in table.splitlines():
        print(f"   | {line}")
    for i in (a, b):
        print(f"   {i['name']}: data {i['data_bytes'] / MiB:.0f} MiB, stored (NEW) {i['stored_bytes'] / MiB:.0f} MiB")
    print(
        f"   second image stored {b['stored_bytes'] / a['stored_bytes']:.0%} of what the first stored "
        f"(its own random data alone, incompressible: {user_budget / MiB:.0f} MiB = "
        f"{user_budget / a['stored_bytes']:.0%} of the first)"
    )


# -- the run


def cleanup(tmp: Path) -> None:
    """After a failure too: unmount, detach our loop devices, remove the directory."""
    for image in [*tmp.glob("*.img"), *tmp.glob("targets/*.img")]:
        for line in sh("losetup", "-j", str(image)).splitlines():
            dev = line.split(":", 1)[0]
            subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "-d", dev])
    for mnt in (tmp / "mnt", tmp / "targets"):
        if subprocess.run(["mountpoint", "-q", str(mnt)]).returncode == 0:
            subprocess.run(["umount", str(mnt)])
    shutil.rmtree(tmp, ignore_errors=True)


def machine_lines() -> list[str]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
    ssh = subprocess.run(["ssh", "-V"], stderr=subprocess.PIPE, text=True).stderr.strip()
    return [
        f"machine: {cpu}, {os.cpu_count()} cores, {mem / 1024 / 1024:.0f} GiB RAM; kernel {platform.release()}; "
        f"Python {platform.python_version()}",
        f"servers: {ssh} (sshd internal-sftp), Swift s3api single node (tests/servers), loopback",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller drive and one round, for a trial")
    ap.add_argument("--rounds", type=int, help="rounds of parts 1 and 2 (default 3, 1 with --quick)")
    ap.add_argument("--parts", default="123", help="which parts to run (default 123)")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    if os.geteuid() != 0:
        print("remote.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="remote-", dir=WORK))
    os.environ["TMPDIR"] = str(tmp)  # the servers' directories (Swift's objects) go here too
    from servers.s3 import start_swift
    from servers.sshd import start_sshd

    began = time.monotonic()
    load_before = os.getloadavg()
    servers = []
    drive_size = 512 * MiB if args.quick else 1536 * MiB
    try:
        sshd = start_sshd(lifetime=SERVER_LIFETIME)
        servers.append(sshd)
        swift = start_swift(lifetime=SERVER_LIFETIME)
        servers.append(swift)
        (tmp / "repos").mkdir()
        # Restore targets on a tmpfs of their own: rescue refuses a target stored on the
        # filesystem that holds the repository (rescue.hw.safety), as it should.
        (tmp / "targets").mkdir()
        sh("mount", "-t", "tmpfs", "-o", f"size={drive_size + 64 * MiB}", "rescue-bench", str(tmp / "targets"))
        devices = {os.stat(p).st_dev for p in (tmp / "repos", swift.root / "srv", sshd.root)}
        assert len(devices) == 1 and swift.root.parent == tmp, "the repositories are not all on one filesystem"
        base_env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        rescue = Rescue(base_env, {"RESCUE_RSH": shlex.join(sshd.ssh_command)}, swift.environ())
        mnt = tmp / "mnt"
        scale = 1 if args.quick else 4
        drive = tmp / "source.img"

        def fill(f: Filler) -> None:
            f.copy(python_files(), "usr/lib", 50 * MiB * scale, Path("/usr/lib"))
            libs = sorted(Path("/usr/lib/x86_64-linux-gnu").rglob("*.so*"))
            f.copy(libs, "usr/lib", 40 * MiB * scale, Path("/usr/lib"))
            debs = sorted(Path("/var/cache/apt/archives").glob("*.deb"))
            f.copy(debs, "downloads", 30 * MiB * scale, Path("/var/cache/apt/archives"))
            f.random_files("photos", 40 * MiB * scale, 256 * 1024, 12 * MiB)

        say(f"building the source drive ({drive_size / MiB:.0f} MiB) ...")
        used = make_drive(drive, drive_size, fill, 2026, mnt)
        say(f"  {used / MiB:.0f} MiB of files")
        keep = None
        if "1" in args.parts:
            keep = part1(args, tmp, rescue, sshd, swift, drive, drive_size, mnt)
        if "2" in args.parts:
            if keep is None:
                keep = tmp / "repos" / "p2"
                disk = _losetup(drive, ro=True)
                try:
                    rescue.run("local", "capture", disk, str(keep), "--name", "p2")
                finally:
                    subprocess.run(["losetup", "-d", disk])
            part2(args, tmp, sshd, keep)
        drive.unlink()
        if "3" in args.parts:
            part3(args, tmp, rescue, swift, mnt)
        print()
        for line in machine_lines():
            print(line)
        print(
            f"source drive: {drive_size / MiB:.0f} MiB, {used / MiB:.0f} MiB of files (no two alike); "
            f"repositories, sshd's directory and Swift's objects on one filesystem ({tmp}); "
            "restore targets on a tmpfs"
        )
        load_after = os.getloadavg()
        print(
            f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
            f"whole run {time.monotonic() - began:.0f} s" + ("; --quick: one round, small drive" if args.quick else "")
        )
    finally:
        for s in reversed(servers):
            s.stop()
        cleanup(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())

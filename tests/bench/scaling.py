"""`make bench`: how rescue scales with the work (issue 19, point 4).

    .venv/bin/python tests/bench/scaling.py [--only repo,sparse,threads,chunks] [--rounds N]
                                            [--sparse-used GiB] [--images N] [--unique N]

threads: capture and restore --no-preverify of imaging.py's drive (4 GiB GPT, 2.1 GiB of this
    machine's files) with 1, 2, 4, ... up to every core (the configuration's capture.threads,
    which restore uses too), each restore onto a fresh target and checked (e2fsck, every file
    hashed); time and speed-up over one thread.
chunks: the same drive captured with 1 MiB chunks (the default) and 4 MiB chunks, each image
    restored --no-preverify --rounds times in alternating order: what the small chunks cost.
sparse: a 2 TiB drive (a sparse file, GPT, ext4) holding --sparse-used GiB (default 2; the
    issue's size is 20: `--sparse-used 20`, about 10 minutes more here), captured beside a
    drive just large enough for the same files: time, peak memory, index and manifest sizes.
    The empty space must cost neither time nor memory (the index grows with it: 33 bytes per
    chunk, docs/format.md).
repo: a repository of --images (200) images built synthetically in the repository format
    (docs/format.md): a real capture of an empty 6 GiB drive as the template, then each image
    an index of 6144 DATA chunks (1 MiB), --unique (5000) of them its own and the rest shared:
    200 images name 1.2 million chunks, a million of them distinct. Chunk objects are tiny
    files under the right names (nothing timed here reads a chunk's bytes). Timed at a tenth
    of --images and at --images: `rescue list`, `rescue info`, opening an image (manifest and
    indexes, in process, what every restore, verify and mount does first), `rescue prune
    --dry-run` (reads every index, lists every chunk) and a real prune of the oldest tenth.

Each run drops the page cache first. Asserts nothing about times; prints the machine and its
load. Takes about 15 minutes here with the defaults (the drives are built once, cached in
build/bench/)."""

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    say,
    spread,
)
from imaging import PART_START, WORK, Recipe, check_fs, drive, du, sh  # noqa: E402

GiB, TiB = 1 << 30, 1 << 40
SHM = Path("/dev/shm/rescue-scaling")  # repositories that are restored from


def rescue(*argv: str, threads: int | None = None, chunk_mib: int | None = None) -> Run:
    """`rescue ARGV`, measured; with `threads` or `chunk_mib`, through a configuration file
    that sets capture.threads (which restore uses too) or capture.chunk_mib."""
    env = None
    if threads is not None or chunk_mib is not None:
        conf = WORK / "scaling.toml"
        keys = {"threads": threads, "chunk_mib": chunk_mib}
        conf.write_text("[capture]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None))
        env = {**os.environ, "RESCUE_CONFIG": str(conf)}
    return measured([VENV_PY, "-m", "rescue", *argv], env=env)


def thread_counts() -> list[int]:
    counts, n = [], 1
    while n < CORES:
        counts.append(n)
        n *= 2
    return [*counts, CORES]


# -- threads 1 -> all cores ---------------------------------------------------------------------


def threads_part(out: Path) -> list[str]:
    recipe = Recipe()
    facts = drive(recipe)
    disk = losetup(recipe.path, ro=True)
    rows = []
    try:
        for n in thread_counts():
            repo = SHM / f"repo-t{n}"  # not on the targets' filesystem (a safety rule)
            shutil.rmtree(repo, ignore_errors=True)
            say(f"threads {n}: capture")
            cap = rescue("capture", disk, str(repo), "--name", "t", threads=n)
            say(f"threads {n}: restore --no-preverify")
            res = restore_onto_fresh(recipe, facts, repo, out, f"restore with {n} threads", threads=n)
            shutil.rmtree(repo)
            rows.append((n, cap, res))
    finally:
        detach(disk)
    c1, r1 = rows[0][1].seconds, rows[0][2].seconds
    lines = [f"threads (capture.threads), imaging.py's drive ({recipe.used / GiB:.1f} GiB in use):"]
    lines.append(f"  {'threads':>7}  {'capture':>9} {'speed-up':>8}  {'restore':>9} {'speed-up':>8}  peak memory")
    for n, cap, res in rows:
        lines.append(
            f"  {n:>7}  {cap.seconds:>7.2f} s {c1 / cap.seconds:>7.2f}x  {res.seconds:>7.2f} s "
            f"{r1 / res.seconds:>7.2f}x  {max(cap.peak_kib, res.peak_kib) / 1024:.0f} MiB"
        )
    return lines


# -- chunk size and restore speed --------------------------------------------------------------


def restore_onto_fresh(
    recipe: Recipe, facts: dict, repo: Path, out: Path, what: str, threads: int | None = None
) -> Run:
    """restore --no-preverify of image "t" onto a fresh sparse target, checked."""
    target = out / "target.img"
    with open(target, "wb") as f:
        f.truncate(recipe.size)
    dev = losetup(target)
    try:
        run = rescue("restore", str(repo), "t", dev, "--yes", "--no-preverify", threads=threads)
    finally:
        detach(dev)
    part = losetup(target, PART_START, recipe.part_size, ro=True)
    try:
        check_fs(part, facts["files"], what)
    finally:
        detach(part)
        target.unlink()
    return run


def chunks_part(out: Path, rounds: int) -> list[str]:
    recipe = Recipe()
    facts = drive(recipe)
    disk = losetup(recipe.path, ro=True)
    repos = {mib: SHM / f"repo-{mib}m" for mib in (1, 4)}
    try:
        for mib, repo in repos.items():
            say(f"capture with {mib} MiB chunks")
            shutil.rmtree(repo, ignore_errors=True)
            rescue("capture", disk, str(repo), "--name", "t", chunk_mib=mib)
    finally:
        detach(disk)
    times: dict[int, list[float]] = {1: [], 4: []}
    for r in range(rounds):
        for mib in alternate([1, 4], r):
            say(f"round {r + 1}/{rounds}: restore --no-preverify, {mib} MiB chunks")
            times[mib].append(restore_onto_fresh(recipe, facts, repos[mib], out, f"{mib} MiB chunks").seconds)
    lines = [f"restore --no-preverify of imaging.py's drive by chunk size ({rounds} rounds, order alternated):"]
    for mib, t in times.items():
        lines.append(f"  {mib} MiB chunks: {spread(t)}, image {du(repos[mib]) / MiB:.0f} MiB")
    lines.append(f"  1 MiB / 4 MiB: {statistics.median(times[1]) / statistics.median(times[4]):.2f}x the time")
    return lines


# -- a 2 TiB drive, mostly empty -----------------------------------------------------------------


def sparse_drive(size: int, used: int) -> Path:
    """A GPT drive of `size` (a sparse file) with one ext4 partition holding `used` bytes of
    half-compressible data in 64 MiB files: cached in build/bench/."""
    path = WORK / f"sparse-{size // GiB}G-used{used // MiB}M.img"
    if path.exists():
        return path
    say(f"building {path.name} ...")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
    part_size = size - PART_START - MiB
    sh("sfdisk", "-q", str(tmp), input=f'label: gpt\nstart=2048, size={part_size // 512}, name="big"\n'.encode())
    part = losetup(tmp, PART_START, part_size)
    mnt = Path(tempfile.mkdtemp(prefix="sparse-", dir=WORK))
    try:
        sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", part)
        sh("mount", part, str(mnt))
        text = (Path(__file__).read_bytes() * 64)[: 32 * 1024]
        written, n = 0, 0
        while written < used:
            with open(mnt / f"f{n:05d}", "wb") as f:
                for _ in range(min(64 * MiB, used - written) // (64 * 1024)):
                    f.write(os.urandom(32 * 1024) + text)  # about 2:1 for zstd, nothing to deduplicate
            written, n = written + 64 * MiB, n + 1
        os.sync()
    finally:
        subprocess.run(["umount", str(mnt)])
        mnt.rmdir()
        detach(part)
    tmp.rename(path)
    return path


def sparse_part(out: Path, used: int) -> list[str]:
    rows = []
    for size in (used + 4 * GiB, 2 * TiB):
        path = sparse_drive(size, used)
        disk = losetup(path, ro=True)
        repo = out / "repo-sparse"
        shutil.rmtree(repo, ignore_errors=True)
        try:
            say(f"capture of the {size / GiB:g} GiB drive")
            run = rescue("capture", disk, str(repo), "--name", "s")
        finally:
            detach(disk)
        image = repo / "images" / "s"
        idx = sum(p.stat().st_size for p in image.glob("*.idx"))
        manifest = (image / "manifest.json").stat().st_size
        read = json.loads((image / "manifest.json").read_text())["stats"]["read_bytes"]
        rows.append((size, run, idx, manifest, read))
        shutil.rmtree(repo)
    lines = [f"a mostly empty drive ({used / GiB:g} GiB in use), captured:"]
    lines.append(f"  {'drive':>9}  {'read':>9}  {'time':>9}  {'peak memory':>11}  {'indexes':>10}  manifest")
    for size, run, idx, manifest, read in rows:
        lines.append(
            f"  {size / GiB:>5.0f} GiB  {read / GiB:>5.2f} GiB  {run.seconds:>7.2f} s  {run.peak_kib / 1024:>7.0f} MiB"
            f"  {idx / MiB:>6.1f} MiB  {manifest / 1024:.1f} KiB"
        )
    (s0, r0, *_), (s1, r1, *_) = rows
    lines.append(
        f"  {s1 / s0:.0f}x the drive: {r1.seconds / r0.seconds:.2f}x the time, "
        f"{r1.peak_kib / r0.peak_kib:.2f}x the memory"
    )
    return lines


# -- a repository of many images --------------------------------------------------------------------

AREA = 6 * GiB
STUB = b"RESCHUNK"  # the bytes of every synthetic chunk object: nothing timed reads them


def template(out: Path) -> tuple[dict, dict[str, bytes]]:
    """A real image of an empty 6 GiB drive: its manifest and the index files of its areas."""
    path = out / "empty.img"
    with open(path, "wb") as f:
        f.truncate(AREA + 2 * MiB)
    sh("sfdisk", "-q", str(path), input=f"label: gpt\nstart=2048, size={AREA // 512}\n".encode())
    part = losetup(path, PART_START, AREA)
    try:
        sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", part)
    finally:
        detach(part)
    disk = losetup(path, ro=True)
    repo = out / "template"
    try:
        subprocess.run([VENV_PY, "-m", "rescue", "capture", disk, str(repo), "--name", "t"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    finally:
        detach(disk)
        path.unlink()
    image = repo / "images" / "t"
    manifest = json.loads((image / "manifest.json").read_text())
    files = {p.name: p.read_bytes() for p in image.glob("*.idx")}
    shutil.rmtree(repo)
    return manifest, files


class SyntheticRepo:
    """Images written straight in the repository format: each a copy of the template whose
    partition area is all DATA chunks, `unique` of them its own, the rest from a shared pool."""

    def __init__(self, path: Path, unique: int, tmpl: tuple[dict, dict[str, bytes]]):
        sys.path.insert(0, str(ROOT))
        from rescue.repo.store import Repository

        self.path, self.unique = path, unique
        self.manifest, self.files = tmpl
        self.area = next(a for a in self.manifest["areas"] if a.get("partition"))
        Repository.create(path).close()
        self.chunk_size = json.loads((path / "rescue-repo.json").read_text())["chunk_size"]
        self.count = -(-self.area["size"] // self.chunk_size)
        self.images = 0
        for h in range(256):
            (path / "chunks" / f"{h:02x}").mkdir(parents=True, exist_ok=True)
        self.pool = [self._chunk(f"pool{i}") for i in range(self.count)]

    def _chunk(self, seed: str) -> bytes:
        digest = hashlib.sha256(seed.encode()).digest()
        h = digest.hex()
        fd = os.open(self.path / "chunks" / h[:2] / h, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, STUB)
        finally:
            os.close(fd)
        return digest

    def add(self, n: int) -> None:
        from rescue.repo.index import Index, Kind

        for _ in range(n):
            k, self.images = self.images, self.images + 1
            name = f"img{k:04d}"
            index = Index.empty(self.chunk_size, self.area["size"])
            own = {(k + j) % self.count for j in range(min(self.unique, self.count))}
            for i in range(self.count):
                index.set(i, Kind.DATA, self._chunk(f"{name}-{i}") if i in own else self.pool[i])
            blob = index.to_bytes()
            image = self.path / "images" / name
            image.mkdir(parents=True)
            m = json.loads(json.dumps(self.manifest))
            m["name"] = name
            m["source"].update(model="synthetic", serial="SYN-1")  # one drive: keep rules count its images
            m["created"] = f"2026-{1 + k // 28 % 12:02d}-{1 + k % 28:02d}T{k % 24:02d}:00:00Z"
            for a in m["areas"]:
                blob_a = blob if a["name"] == self.area["name"] else self.files[a["index"]]
                (image / a["index"]).write_bytes(blob_a)
                a["index_sha256"] = hashlib.sha256(blob_a).hexdigest()
                if a["name"] == self.area["name"]:
                    a["stats"].update(data=self.count, zero=0, unused=0, unreadable=0)
                    a["stats"]["data_bytes"] = self.area["size"]
            m["stats"]["data_bytes"] = sum(a["stats"].get("data_bytes", 0) for a in m["areas"])
            m.pop("checksum", None)
            m["checksum"] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()  # docs/format.md
            (image / "manifest.json").write_text(json.dumps(m, indent=1))

    def chunk_files(self) -> int:
        return sum(len(os.listdir(d)) for d in (self.path / "chunks").iterdir())


def open_image(repo: Path, name: str) -> float:
    """Seconds to open an image as restore, verify and mount do: manifest and every index."""
    code = (
        "import sys, time; t = time.monotonic(); from rescue.repo.store import Repository; "
        "r = Repository.open(sys.argv[1]); m = r.manifest(sys.argv[2]); "
        "[r.load_index(sys.argv[2], m, a.name) for a in m.areas]; print(time.monotonic() - t)"
    )
    done = subprocess.run([VENV_PY, "-c", code, str(repo), name], check=True, stdout=subprocess.PIPE, text=True)
    return float(done.stdout)


def repo_part(out: Path, images: int, unique: int) -> list[str]:
    tmpl = template(out)
    path = out / "repo-many"
    shutil.rmtree(path, ignore_errors=True)
    syn = SyntheticRepo(path, unique, tmpl)
    sizes = sorted({max(1, images // 10), images})
    rows = []
    for size in sizes:
        started = time.monotonic()
        syn.add(size - len(os.listdir(path / "images")))  # a prune took a tenth
        built = time.monotonic() - started
        files = syn.chunk_files()
        say(f"{size} images, {files} chunk files (built in {built:.0f} s): timing")
        mid = f"img{size // 2:04d}"
        t = {
            "list": rescue("list", str(path)).seconds,
            "info": rescue("info", str(path), mid).seconds,
            "open an image": open_image(path, mid),
            "prune --dry-run": rescue("prune", str(path), "--dry-run").seconds,
        }
        t["prune (a tenth)"] = rescue("prune", str(path), "--keep-last", str(size - size // 10)).seconds
        left = syn.chunk_files()
        rows.append((size, files, size * syn.count, t, files - left))
    base = rescue("--version").seconds
    lines = [
        f"a repository of many images (synthetic, {syn.count} chunks of {syn.chunk_size // MiB} MiB per image, "
        f"{unique} of them its own; `rescue --version` alone takes {base:.2f} s):"
    ]
    lines.append(f"  {'':>16}" + "".join(f"  {f'{s} images':>12}" for s, *_ in rows) + "    growth")
    lines.append(f"  {'chunks named':>16}" + "".join(f"  {r[2]:>12,}" for r in rows))
    lines.append(f"  {'chunk files':>16}" + "".join(f"  {r[1]:>12,}" for r in rows))
    for what in rows[0][3]:
        vals = [r[3][what] for r in rows]
        lines.append(f"  {what:>16}" + "".join(f"  {v:>10.2f} s" for v in vals) + f"    {vals[-1] / vals[0]:.1f}x")
    lines.append(f"  {'prune removed':>16}" + "".join(f"  {r[4]:>6,} chunks" for r in rows))
    shutil.rmtree(path)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="repo,sparse,threads,chunks", help="the parts to run, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the chunk-size comparison")
    ap.add_argument("--sparse-used", type=float, default=2.0, help="GiB in use on the 2 TiB drive (issue: 20)")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--unique", type=int, default=5000, help="chunks of each synthetic image that are its own")
    args = ap.parse_args()
    begun = time.monotonic()
    parts = args.only.split(",")
    say(f"at the start: {machine_lines()[1]}")
    out = WORK / "scaling"
    for d in (out, SHM):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    lines: list[str] = []
    try:
        if "repo" in parts:
            lines += repo_part(out, args.images, args.unique)
        if "sparse" in parts:
            lines += sparse_part(out, int(args.sparse_used * GiB) // (64 * MiB) * 64 * MiB)
        if "threads" in parts:
            lines += threads_part(out)
        if "chunks" in parts:
            lines += chunks_part(out, args.rounds)
    finally:
        for d in (out, SHM):
            shutil.rmtree(d, ignore_errors=True)
    print()
    print("\n".join(lines + machine_lines()).replace("load average", "load average at the end"))
    print(f"bench run time: {time.monotonic() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

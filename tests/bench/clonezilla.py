"""`make bench`: restoring a Clonezilla image, rescue against Clonezilla's own path, one run.

The drive is tests/bench/imaging.py's (2.5 GiB, ext4, about 1.1 GiB in use), saved once by
Debian's ocs-sr (`-z9p -i 0`: one zstd stream, unsplit; cached in build/bench/clonezilla/).
Then, in alternating rounds on fresh targets (sparse files on a tmpfs of their own, page
cache dropped before every run):
  rescue restore CZDIR NAME DISK --no-preverify       (and once with its checking pass)
  sfdisk DISK < DISK-pt.sf; zstd -dc IMAGE | partclone.ext4 -r -o PART   (what ocs-sr runs)
and the partition's bytes of both targets are compared. Then `rescue import` into an empty
repository, in MB/s of data read. Prints times; asserts nothing about them."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging import DRIVE_SIZE, PART_SIZE, PART_START, VENV_PY, WORK, _losetup, build_drive, drop_caches, say  # noqa: E402

CZ = WORK / "clonezilla"
NAME = "bench-img"
ROUNDS = 5


def save_with_ocs_sr(drive: Path) -> Path:
    """ocs-sr's image of the bench drive (cached)."""
    image = CZ / NAME
    if (image / "disk").is_file():
        return image
    shutil.rmtree(CZ, ignore_errors=True)
    (CZ / "home" / "partimag").mkdir(parents=True)
    dev = _losetup(drive, ro=True)
    try:
        subprocess.run(["partx", "-a", dev], check=True)
        say(f"saving the bench drive with ocs-sr ({dev}) ...")
        script = (
            f"mount --bind {CZ / 'home'} /home && mount -t tmpfs ocs-log /var/log/clonezilla && "
            f"ocs-sr -b -q2 -j2 -z9p -i 0 -sfsck -scs -senc -nogui -p true savedisk {NAME} {os.path.basename(dev)}"
        )
        subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, stdin=subprocess.DEVNULL, capture_output=True)
    finally:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", dev])
    shutil.move(str(CZ / "home" / "partimag" / NAME), str(image))
    shutil.rmtree(CZ / "home")
    return image


def part_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(PART_START)
        left = PART_SIZE
        while left:
            block = f.read(min(left, 16 << 20))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def fresh(where: Path, name: str) -> Path:
    t = where / name
    t.unlink(missing_ok=True)
    with open(t, "wb") as f:
        f.truncate(DRIVE_SIZE)
    return t


def run_timed(argv: list[str] | str, shell: bool = False) -> float:
    drop_caches()
    start = time.monotonic()
    subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def rescue_restore(image: Path, target: Path, *extra: str) -> float:
    dev = _losetup(target)
    try:
        return run_timed([VENV_PY, "-m", "rescue", "restore", str(image), NAME, dev, "--yes", *extra])
    finally:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", dev])


def clonezilla_restore(image: Path, target: Path) -> float:
    """What ocs-sr's restore runs for this drive: the table, then the stream into partclone."""
    disk = (image / "disk").read_text().split()[0]
    table = "".join(line + "\n" for line in (image / f"{disk}-pt.sf").read_text().splitlines() if "device:" not in line)
    stream = next(image.glob("*p1.ext4-ptcl-img.zst"))
    dev = _losetup(target)
    part = _losetup(target, PART_START, PART_SIZE)
    try:
        drop_caches()
        start = time.monotonic()
        subprocess.run(
            ["sfdisk", "-q", "--no-reread", dev], input=table.encode(), check=True, stderr=subprocess.DEVNULL
        )
        subprocess.run(
            f"zstd -dc {stream} | partclone.ext4 -r -s - -o {part} -L /dev/null >/dev/null 2>&1", shell=True, check=True
        )
        return time.monotonic() - start
    finally:
        for d in (part, dev):
            subprocess.run(["losetup", "-d", d])


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    drive = WORK / "drive.img"
    if not drive.exists():
        build_drive(drive)
    image = save_with_ocs_sr(drive)
    data = int(
        subprocess.run(
            [
                VENV_PY,
                "-c",
                f"from rescue.clonezilla.source import ClonezillaImage as C; print(C.open('{image}').write_bytes())",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    where = Path(tempfile.mkdtemp(prefix="rescue-bench-cz-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "rescue-bench-cz", str(where)], check=True)
    times: dict[str, list[float]] = {"rescue restore --no-preverify": [], "sfdisk + zstd -dc | partclone.ext4 -r": []}
    try:
        for r in range(ROUNDS):
            order = [0, 1] if r % 2 == 0 else [1, 0]
            for which in order:
                if which == 0:
                    t = fresh(where, "rescue.img")
                    times["rescue restore --no-preverify"].append(rescue_restore(image, t, "--no-preverify"))
                else:
                    t = fresh(where, "clonezilla.img")
                    times["sfdisk + zstd -dc | partclone.ext4 -r"].append(clonezilla_restore(image, t))
            same = part_sha(where / "rescue.img") == part_sha(where / "clonezilla.img")
            say(f"round {r + 1}: partition bytes {'identical' if same else 'DIFFER'}")
            if not same:
                return 1
        t = fresh(where, "rescue.img")
        checked = rescue_restore(image, t)
        (where / "clonezilla.img").unlink()
        repo = where / "repo"
        imported = run_timed([VENV_PY, "-m", "rescue", "import", str(image), str(repo)])
    finally:
        subprocess.run(["umount", "--lazy", str(where)])
        os.rmdir(where)
    print()
    print(f"Clonezilla image of a 2.5 GiB ext4 drive, {data / 1e6:.0f} MB of used data, ocs-sr -z9p -i 0;")
    print(f"{os.cpu_count()} CPUs, {ROUNDS} alternating rounds, page cache dropped before each run")
    for label, ts in times.items():
        print(
            f"  {label:<42} median {statistics.median(ts):6.2f} s  ({', '.join(f'{x:.2f}' for x in ts)})  "
            f"{data / 1e6 / statistics.median(ts):6.0f} MB/s"
        )
    print(f"  {'rescue restore (with its checking pass)':<42} {checked:6.2f} s")
    print(f"  {'rescue import into an empty repository':<42} {imported:6.2f} s  {data / 1e6 / imported:6.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

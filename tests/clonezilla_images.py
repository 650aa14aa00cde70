"""Real Clonezilla images for the tests: Debian's `ocs-sr` (clonezilla, with partclone) saves
drives the tests build on loop devices, as a user would (`savedisk NAME loopN`).

ocs-sr writes under /home/partimag and logs under /var/log: it runs in its own mount
namespace (`unshare -m`, see _ocs_sr) with /home bound to a scratch directory, so nothing lands
in the system, and with a /proc/partitions that shows it its own drive only. It takes the loop
device's kernel name like any drive's (`loop3`, partitions `loop3p1`... through `partx -a`).

Each recipe (drive layout, filesystems, ocs-sr options) is built once and kept under
build/cache/clonezilla/<recipe hash>/ (or $RESCUE_CLONEZILLA_CACHE): the image directory, the
source drive (a sparse file) and what it holds (file hashes), so that the tests compare a
restore with the drive ocs-sr saved. One builder at a time (a lock file).

Where ocs-sr's time went (traced with bash -x): not into the drive (under 1 s to build) nor
partclone and compression (about 1 s an image), but into a device-list cache that
ocs-prep-cache builds by probing every drive of the host, other tests' loop devices included,
and that is then never used; into 2 s per partition in partclone's progress thread; and into
some 70 runs of ocs-get-dev-info (each sources 16,000 lines of shell) and 3 s of sleeps, which
stay. OCS_CONF_TAIL turns the first two off; the image does not change (same files, same
partclone streams as with the stock configuration).

A test session that will use these images starts `python tests/clonezilla_images.py` in the
background at collection (`start_builder`, from tests/conftest.py): it holds the cache lock from
before the first test runs, so a fixture waits for it, and a recipe it failed to build is
reported by the fixture with the builder's output."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# drives.py is in tests/system: on the path when a test there runs, not for the background
# builder (run as a script) nor for a QEMU test in tests/vm.
if str(Path(__file__).resolve().parent / "system") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "system"))

from disks import LoopRegistry, MiB, partition_table, sh  # noqa: E402
from drives import BASIC, LINUX, SWAP, Part, SourceDrive, fill  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RESCUE_CLONEZILLA_CACHE", REPO / "build" / "cache" / "clonezilla"))
BUILDER_VERSION = 1  # bump when the way drives are built changes
OCS_TIMEOUT = 600  # seconds for one ocs-sr run
BUILD_TIMEOUT = 900  # seconds for the background builder, all recipes

# Appended to ocs-sr's drbl-ocs.conf (bind-mounted over it in ocs-sr's mount namespace).
OCS_CONF = Path("/etc/drbl/drbl-ocs.conf")
OCS_CONF_TAIL = """
# tests/clonezilla_images.py: no device-list cache. ocs-prep-cache would partprobe every drive
# of the host and run ocs-get-dev-info three times for each (other tests' loop devices too), and
# ocs-get-dev-info would then run a full blkid on every call, for a cache it never hits (it
# compares /proc/partitions in another format than ocs-prep-cache kept).
use_dev_list_cache="no"
# partclone's progress thread sleeps its refresh interval (2 s) before partclone may exit: 2 s
# per partition. With 0 it refreshes without sleeping; its CPU time stays the same.
PARTCLONE_SAVE_OPT_INIT="$PARTCLONE_SAVE_OPT_INIT -f 0"
"""
# Tools ocs-sr runs on the whole host, made no-ops in its namespace: `swapoff -a` before any job,
# and deactivating every idle LVM volume group (renaming udev rules on the way).
HOST_WIDE = ("swapoff", "ocs-lvm2-stop")
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Recipe:
    name: str
    table: str  # "gpt" or "dos"
    size: int  # bytes
    parts: tuple[tuple[int, int, int, str | None, str], ...]  # (number, start, sectors, fs, label)
    options: tuple[str, ...]  # ocs-sr's, before `savedisk`

    def key(self) -> str:
        body = json.dumps([BUILDER_VERSION, asdict(self)], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


S = 2048  # sectors per MiB
GPT_ZSTD = Recipe(
    "gpt-zstd",
    "gpt",
    560 * MiB,
    (
        (1, 1 * S, 64 * S, "ext4", "cz-root"),
        (2, 65 * S, 300 * S, "xfs", "cz-xfs"),
        (3, 365 * S, 120 * S, "btrfs", "cz-btrfs"),
        (4, 485 * S, 36 * S, "vfat", "CZFAT"),
        (5, 521 * S, 16 * S, "swap", "cz-swap"),
        (6, 537 * S, 8 * S, "raw", ""),
    ),
    ("-z9p", "-i", "0"),
)
MBR_GZIP_SPLIT = Recipe(
    "mbr-gzip-split",
    "dos",
    200 * MiB,
    (
        (1, 1 * S, 60 * S, "ext4", "cz-boot"),
        (5, 62 * S, 20 * S, "swap", "cz-swap"),
        (6, 83 * S, 10 * S, "raw", ""),
        (7, 94 * S, 40 * S, "ntfs", "cz-ntfs"),
    ),
    ("-z1p", "-i", "1"),
)


# Large enough that the filesystems can shrink past the planner's margin (64 MiB over each
# minimum): ocs-sr keeps no minimum size, rescue measures it from the image
# (tests/system/test_clonezilla_shrink.py).
MBR_SHRINK = Recipe(
    "mbr-shrink",
    "dos",
    448 * MiB,
    (
        (1, 1 * S, 256 * S, "ext4", "cz-shrink"),
        (2, 257 * S, 160 * S, "ntfs", "cz-ntfs"),
    ),
    ("-z9p", "-i", "0"),
)


@dataclass
class CzFixture:
    recipe: Recipe
    directory: Path  # the Clonezilla image directory (read only: copy it to damage it)
    drive: SourceDrive  # the drive it was saved from (its backing file, files, bytes)

    @property
    def name(self) -> str:
        return self.directory.name


def _table_script(recipe: Recipe) -> str:
    if recipe.table == "gpt":
        types = {"vfat": BASIC, "swap": SWAP}
        return "label: gpt\n" + "".join(
            f'start={start}, size={n}, type={types.get(fs, LINUX)}, name="{label}"\n'
            for _, start, n, fs, label in recipe.parts
        )
    types = {"ntfs": "7", "swap": "82", "vfat": "c"}
    logical = [p for p in recipe.parts if p[0] >= 5]
    lines = [
        f"start={start}, size={n}, type={types.get(fs, '83')}, bootable\n"
        for num, start, n, fs, _ in recipe.parts
        if num < 5
    ]
    if logical:
        first, last = logical[0], logical[-1]
        lines.append(f"start={first[1] - S}, size={last[1] + last[2] - first[1] + S}, type=5\n")
        lines += [f"start={start}, size={n}, type={types.get(fs, '83')}\n" for _, start, n, fs, _ in logical]
    return "label: dos\nlabel-id: 0x5eed1234\n" + "".join(lines)


def _own_partitions(disk: str) -> str:
    """/proc/partitions with `disk` and its partitions only. ocs-sr takes every line matching
    `<disk>p?[0-9]*` for a partition of the disk: saving loop1, it also saved other tests'
    loop10 (the tests attach loop devices while it runs)."""
    ours = re.compile(rf"{re.escape(disk)}(p[0-9]+)?")
    lines = Path("/proc/partitions").read_text().splitlines(keepends=True)
    return "".join(lines[:2]) + "".join(line for line in lines[2:] if ours.fullmatch(line.split()[-1]))


def _ocs_sr(argv: list[str], home: Path, disk: str) -> tuple[int, str]:
    """Run ocs-sr on `disk` in a mount namespace of its own: /home is `home` (the image lands in
    home/partimag), /proc/partitions shows `disk` alone, /tmp and /var/log are empty tmpfs (on
    the host it leaves /tmp/parttable-ocs.* and /var/log/clonezilla.log* behind), its
    configuration has OCS_CONF_TAIL, and the HOST_WIDE tools do nothing. Its whole process
    group is killed on a timeout or when this process is stopped. Returns the exit code and the
    output."""
    conf = home / "drbl-ocs.conf"
    conf.write_text(OCS_CONF.read_text() + OCS_CONF_TAIL)
    partitions = home / "partitions"
    partitions.write_text(_own_partitions(disk))
    noop = str(shutil.which("true", path=SBIN))
    steps = [["mount", "--bind", str(home), "/home"], ["mount", "--bind", str(conf), str(OCS_CONF)]]
    steps += [["mount", "--bind", str(partitions), "/proc/partitions"]]
    steps += [["mount", "--bind", noop, path] for name in HOST_WIDE if (path := shutil.which(name, path=SBIN))]
    steps += [["mount", "-t", "tmpfs", "ocs-tmp", "/tmp"], ["mount", "-t", "tmpfs", "ocs-log", "/var/log"]]
    steps += [["mkdir", "/var/log/clonezilla"], ["exec", *argv]]
    script = " && ".join(shlex.join(step) for step in steps)
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=OCS_TIMEOUT)
    except subprocess.TimeoutExpired:
        out = f"(killed after {OCS_TIMEOUT} s)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def save_drive(
    loops: LoopRegistry, path: Path, name: str, work: Path, options: tuple[str, ...], parts: list[int]
) -> str:
    """`ocs-sr savedisk NAME` of the drive image `path` (attached as a loop device, its
    partitions added), as work/NAME; `parts` are the partition numbers ocs-sr must save (all
    but swap). Returns the loop device's kernel name the image was saved from."""
    dev = loops.attach(path)
    sh("partx", "-a", dev)
    home = work / "home"
    (home / "partimag").mkdir(parents=True)
    disk = os.path.basename(dev)
    argv = ["ocs-sr", "-b", "-q2", "-j2", *options, "-sfsck", "-scs", "-senc", "-nogui", "-p", "true"]
    rc, out = _ocs_sr([*argv, "savedisk", name, disk], home, disk)
    if rc != 0 or not (home / "partimag" / name / "disk").is_file():
        raise AssertionError(f"ocs-sr failed ({rc}):\n{out[-5000:]}")
    saved = (home / "partimag" / name / "parts").read_text().split()
    if saved != [f"{disk}p{num}" for num in parts]:
        raise AssertionError(f"ocs-sr saved other partitions than {disk}'s: {saved}\n{out[-5000:]}")
    shutil.move(str(home / "partimag" / name), str(work / name))
    shutil.rmtree(home)
    return disk


def _build(recipe: Recipe, work: Path) -> None:
    """The drive, then ocs-sr's image of it, in `work`."""
    loops = LoopRegistry(work / "loops")
    (work / "loops").mkdir()
    try:
        path = work / "source.img"
        with open(path, "wb") as f:
            f.truncate(recipe.size)
        partition_table(str(path), _table_script(recipe))
        rnd = random.Random(11)
        with open(path, "r+b") as f:  # boot code, and what boot loaders keep after the MBR
            f.write(rnd.randbytes(440))
            if recipe.table == "dos":
                f.seek(512)
                f.write(rnd.randbytes(64 * 1024))
        parts = [Part(num, start, n, fs, label) for num, start, n, fs, label in recipe.parts]
        drive = SourceDrive(path, "", parts)
        for p in parts:
            fill(loops, drive, p)
        loops.detach()
        wanted = [num for num, _, _, fs, _ in recipe.parts if fs != "swap"]
        disk = save_drive(loops, path, recipe.name, work, recipe.options, wanted)
        meta = {"hashes": drive.hashes, "raw_sha": drive.raw_sha, "device": disk}
        (work / "drive.json").write_text(json.dumps(meta))
    finally:
        loops.cleanup()
        shutil.rmtree(work / "loops", ignore_errors=True)


@contextlib.contextmanager
def _lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _built(recipe: Recipe, cache: Path) -> bool:
    return (cache / recipe.key() / "drive.json").is_file()


def _build_into(recipe: Recipe, cache: Path) -> None:
    """Build the recipe into the cache (the caller holds the lock)."""
    work = Path(tempfile.mkdtemp(prefix="tmp-", dir=cache))
    try:
        _build(recipe, work)
        shutil.rmtree(cache / recipe.key(), ignore_errors=True)
        work.rename(cache / recipe.key())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clonezilla_image(recipe: Recipe, cache: Path = CACHE) -> CzFixture:
    """The recipe's image from the cache, built on a miss; or the background builder's output
    when it failed to build it (waiting for the builder, which holds the lock until it ends)."""
    done = cache / recipe.key()
    with _lock(cache):
        if not _built(recipe, cache):
            if _builder is not None and _builder.cache == cache:
                raise AssertionError(_builder.failure(recipe))
            _build_into(recipe, cache)
    meta = json.loads((done / "drive.json").read_text())
    parts = [Part(num, start, n, fs, label) for num, start, n, fs, label in recipe.parts]
    drive = SourceDrive(
        done / "source.img",
        meta["device"],
        parts,
        {int(k): v for k, v in meta["hashes"].items()},
        {int(k): v for k, v in meta["raw_sha"].items()},
    )
    return CzFixture(recipe, done / recipe.name, drive)


RECIPES = (GPT_ZSTD, MBR_GZIP_SPLIT, MBR_SHRINK)


@dataclass
class Builder:
    """The session's background build of the recipes missing from `cache`."""

    cache: Path
    proc: subprocess.Popen[bytes]
    log: Path  # its output

    def failure(self, recipe: Recipe) -> str:
        code = self.proc.poll()
        out = self.log.read_text(errors="replace")[-8000:] if self.log.is_file() else "(no output)"
        return f"the background build of {recipe.name} failed (builder exit {code}):\n{out}"

    def stop(self) -> None:
        """End it (at the end of the session), its ocs-sr and loop devices with it."""
        if self.proc.poll() is None:
            self.proc.terminate()  # `main` turns it into SystemExit: its cleanups run
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


_builder: Builder | None = None  # started by start_builder in this process


def stop_builder() -> None:
    if _builder is not None:
        _builder.stop()


def start_builder(cache: Path = CACHE) -> Builder | None:
    """Start building the missing recipes in the background (root only), holding the cache lock
    from now on: this process takes it, then hands it to the builder (an inherited open file
    description keeps an flock), so no fixture can look before the builder has the lock. None
    when nothing is missing or another builder has the lock (fixtures wait for that one)."""
    global _builder
    if not any(not _built(r, cache) for r in RECIPES):
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        fd, log = tempfile.mkstemp(prefix="rescue-clonezilla-build-", suffix=".log")
        with os.fdopen(fd, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--cache", str(cache), "--locked-fd", str(lock.fileno())],
                pass_fds=(lock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops it
            )
    _builder = Builder(cache, proc, Path(log))
    return _builder


def main(argv: list[str] | None = None) -> int:
    """Build the recipes missing from the cache, one after the other; a failed one does not stop
    the others. Exit 1 when one failed."""
    parser = argparse.ArgumentParser(description="Build the Clonezilla test images into the cache (root).")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--locked-fd", type=int, help="the cache lock, taken by the test session that started us")
    parser.add_argument("--timeout", type=int, default=BUILD_TIMEOUT, help="seconds for all of it")
    args = parser.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(args.timeout)
    if args.locked_fd is not None:
        os.nice(10)  # beside the tests, not before them
    failed = 0
    with contextlib.nullcontext() if args.locked_fd is not None else _lock(args.cache):
        for recipe in RECIPES:
            if _built(recipe, args.cache):
                continue
            start = time.monotonic()
            try:
                _build_into(recipe, args.cache)
            except Exception as e:  # noqa: BLE001 - reported, and the next recipe still built
                failed += 1
                print(f"{recipe.name}: {e}", flush=True)
            else:
                print(f"{recipe.name}: built in {time.monotonic() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

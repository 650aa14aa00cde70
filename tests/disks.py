"""Building real test drives: sparse files, loop devices, partition tables, filesystems,
file trees, and comparing them after a round trip."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


def sh(*argv: str, input: bytes | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


class LoopRegistry:
    """Creates backing files and loop devices over them, and undoes it all.

    Backing files (`file`, `disk`) are stored under `drives` when given: a filesystem of
    their own, apart from the repositories and mount points tests make under `root`, as a
    real drive is (the safety rules refuse a target loop device stored on the repository's
    filesystem)."""

    def __init__(self, root: Path, drives: Path | None = None):
        self.root = Path(root)
        self.drives = Path(tempfile.mkdtemp(prefix="drives-", dir=drives)) if drives is not None else self.root
        self.devices: list[str] = []
        self.mounts: list[str] = []

    def file(self, name: str, size: int) -> Path:
        path = self.drives / name
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    def attach(self, path: Path | str, *, offset: int = 0, size: int | None = None, readonly: bool = False) -> str:
        argv = ["losetup", "--find", "--show", "--offset", str(offset)]
        if size is not None:
            argv += ["--sizelimit", str(size)]
        if readonly:
            argv.append("--read-only")
        dev = sh(*argv, str(path)).strip()
        self.devices.append(dev)
        return dev

    def disk(self, name: str, size: int) -> str:
        """A blank drive: a sparse file (under `drives`) behind a loop device."""
        return self.attach(self.file(name, size))

    def partition(self, disk: str, start_sector: int, sectors: int, sector_size: int = 512) -> str:
        """A loop device over one partition of `disk` (the kernel shows no partition nodes here)."""
        return self.attach(disk, offset=start_sector * sector_size, size=sectors * sector_size)

    @contextlib.contextmanager
    def mounted(self, dev: str, fstype: str | None = None, options: str = "") -> Iterator[Path]:
        self._seq = getattr(self, "_seq", 0) + 1
        mnt = Path(self.root) / f"mnt{self._seq}"
        mnt.mkdir()
        argv = ["mount"]
        if fstype:
            argv += ["-t", fstype]
        if options:
            argv += ["-o", options]
        sh(*argv, dev, str(mnt))
        self.mounts.append(str(mnt))
        try:
            yield mnt
        finally:
            umount(str(mnt))
            self.mounts.remove(str(mnt))

    def detach(self) -> None:
        """Unmount and detach everything, keeping the backing files (to boot them, say)."""
        for mnt in reversed(self.mounts):
            umount(mnt)
        self.mounts.clear()
        for dev in reversed(self.devices):
            # Partitions parted announced to the kernel outlive the loop device otherwise.
            subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            subprocess.run(["losetup", "--detach", dev], stderr=subprocess.DEVNULL)
        self.devices.clear()  # a second cleanup must not detach a loop someone else reuses
        # Anything else still attached to a file of ours (e.g. a loop the product forgot).
        out = subprocess.run(
            ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], stdout=subprocess.PIPE, text=True
        ).stdout
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[1].startswith((str(self.root), str(self.drives))):
                subprocess.run(["losetup", "--detach", parts[0]], stderr=subprocess.DEVNULL)

    def cleanup(self) -> None:
        """Detach everything and delete the drives stored apart (they take memory)."""
        self.detach()
        if self.drives != self.root:  # memory, on a tmpfs
            shutil.rmtree(self.drives, ignore_errors=True)


def rescue(*args: str, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    """The `rescue` command as a user runs it (a separate process, text output)."""
    import sys

    proc = subprocess.run([sys.executable, "-m", "rescue", *args], capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"rescue {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def umount(mnt: str) -> None:
    if subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)


def partition_table(disk: str, script: str) -> None:
    """Write a table with sfdisk (a fixture tool, independent of the product's pyparted code)."""
    sh("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk, input=script.encode())


def populate(root: Path, seed: int = 1, files: int = 40, max_size: int = 256 * 1024) -> None:
    """A reproducible tree: text, random binaries, a sparse-ish zero file, nested folders,
    a symlink and odd permissions."""
    import random

    rnd = random.Random(seed)
    for i in range(files):
        d = root / f"dir{i % 5}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        size = rnd.randint(0, max_size)
        if i % 3 == 0:
            data = (f"line {i} of text, seed {seed}\n" * (size // 24 + 1)).encode()[:size]
        elif i % 3 == 1:
            data = rnd.randbytes(size)
        else:
            data = bytes(size // 2) + rnd.randbytes(size - size // 2)
        (d / f"file{i}.bin").write_bytes(data)
    (root / "big.bin").write_bytes(rnd.randbytes(9 * MiB + 12345))
    try:
        os.symlink("dir0/sub0/file0.bin", root / "link")
    except OSError:
        pass


def tree_hashes(root: Path) -> dict[str, str]:
    """Path → sha256 of every regular file (and target of every symlink) under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sha_of(path: Path | str, offset: int, length: int) -> str:
    """SHA-256 of `length` bytes of a file or device from `offset` (fewer at its end)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(left, 4 * MiB))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()

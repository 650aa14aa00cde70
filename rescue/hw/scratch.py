"""Where scratch files may go, and how much they can take: the only place that asks the
kernel about free space and RAM for it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from rescue.errors import DeviceError
from rescue.hw import leftovers

RAM_FILESYSTEMS = ("tmpfs", "ramfs", "overlayfs")  # the live system's / is an overlay on tmpfs
RAM_RESERVE = 128 << 20  # left for the programs themselves


def default_dir() -> str:
    return tempfile.gettempdir()


def _fs_type(path: str) -> str:
    proc = subprocess.run(
        ["stat", "-f", "-c", "%T", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return proc.stdout.strip()


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def space(path: str) -> tuple[int, bool]:
    """(bytes a file in `path` can grow to now, whether that is RAM). For RAM-backed
    directories the smaller of the filesystem's free space and the available memory (less a
    reserve): a tmpfs may promise more than the machine has."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        raise DeviceError(f"scratch directory {path}: {e.strerror}") from None
    free = st.f_bavail * st.f_frsize
    ram = _fs_type(path) in RAM_FILESYSTEMS
    if ram:
        free = min(free, max(0, _mem_available() - RAM_RESERVE))
    return free, ram


def make_dir(path: str) -> Path:
    """A private directory for this job's scratch files inside `path`, writable or refused.
    Kept in the leftovers registry (rescue.hw.leftovers): if this process is killed, the
    next run of rescue removes it with its contents."""
    try:
        return leftovers.make_dir(path, "rescue-scratch-")[0]
    except OSError as e:
        raise DeviceError(f"cannot create scratch files in {path}: {e.strerror}") from None

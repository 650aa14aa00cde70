"""A plain-text log written beside the image (or wherever the caller says)."""

from __future__ import annotations

import time
from pathlib import Path


class JobLog:
    def __init__(self, path: Path | None):
        self.path = path
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        self.lines.append(line)
        if self.path is not None:
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
            except OSError:
                self.path = None  # read-only or vanished: keep the lines in memory


def log_file(job: str, dirs: list[Path]) -> Path | None:
    """A new log file `JOB-TIME.log` in the first of `dirs` that takes one, else in the run
    directory (/run/rescue: RAM, always writable on the rescue system); None when none does.
    Each job says where its log belongs first (beside the image, a given folder)."""
    from rescue.hw.leftovers import run_dir

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for d in [*dirs, run_dir()]:
        try:
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{job}-{stamp}.log"
            path.touch()
            return path
        except OSError:
            continue
    return None

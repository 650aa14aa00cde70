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

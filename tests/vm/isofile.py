"""The ISO the QEMU tests boot: RESCUE_ISO when given, else build/rescue-VERSION-amd64.iso,
built with `make iso` when it is missing or older than its sources. One place for that
decision, used by the `iso` fixture and by tests/vm/streams.py, which builds it once before
its parallel streams start (two streams building it at once would race)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _version() -> str:
    text = (ROOT / "rescue" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _newest_source() -> float:
    """mtime of the newest file that goes into the ISO."""
    paths = [ROOT / "scripts" / "build-iso", ROOT / "config" / "rescue.toml"]
    for tree in ("rescue", "live-build"):
        paths += [p for p in (ROOT / tree).rglob("*") if "__pycache__" not in p.parts]
    return max(p.lstat().st_mtime for p in paths if p.is_file() or p.is_symlink())


def ensure_iso() -> Path:
    """The ISO to boot, built first when it is missing or stale (and RESCUE_ISO is not set)."""
    given = os.environ.get("RESCUE_ISO")
    if given:
        return Path(given)
    path = ROOT / "build" / f"rescue-{_version()}-amd64.iso"
    if not path.exists() or path.stat().st_mtime < _newest_source():
        print(f"building {path} (missing or older than its sources)", flush=True)
        subprocess.run(["make", "iso"], cwd=ROOT, check=True)
    assert path.exists(), f"make iso did not produce {path}"
    return path

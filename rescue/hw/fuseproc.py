"""What the callers of rescue's llfuse servers share (hw/splitdev.py, browse/imagefs.py through
browse/mounts.py, clonezilla/view.py): each server runs as its own Python process, and its
log is where a failure is told."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from rescue.errors import RescueError

# From a server's unmount to its exit. Generous: the last opener of a loop device over one of
# its files (udev's probe, after the detach) can hold the mount for seconds on a loaded machine,
# and a healthy server exits at once, so the wait costs nothing then.
STOP_TIMEOUT = 60.0


def python_with_llfuse() -> str:
    """An interpreter that has llfuse: ours when it does (the venv, the ISO's python3),
    else Debian's."""
    return sys.executable if importlib.util.find_spec("llfuse") is not None else "/usr/bin/python3"


def first_error(log: Path, program: str, *, any_line: bool = True) -> str:
    """A server's first logged failure (`PROGRAM: error: ...`), else (any_line) the last line
    of anything else it printed (a Python traceback), else "" (it was killed and said nothing)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    ours = [ln.split(f"{program}: ", 1)[1] for ln in lines if f"{program}: " in ln]
    errors = [ln[len("error: ") :] for ln in ours if ln.startswith("error: ")]
    other = [ln.strip() for ln in lines if f"{program}: " not in ln] if any_line else []
    return errors[0] if errors else other[-1] if other else ""


def serve_main(serve: Callable[[], int], mountpoint: str, log: Callable[[str], None]) -> int:
    """A server's main: `serve()`'s exit status; its failure logged as `error: ...` (what
    first_error reads) with the error's own exit code, or 4 when llfuse cannot mount (the
    mountpoint is missing, FUSE is not available)."""
    try:
        return serve()
    except RescueError as e:
        log(f"error: {e}")
        return e.exit_code
    except RuntimeError as e:  # raised by llfuse.init
        log(f"error: cannot mount {mountpoint}: {e}")
        return 4

"""Running external tools: a failed tool becomes a one-line error naming the tool and its
last line of stderr, never a CalledProcessError traceback."""

from __future__ import annotations

import subprocess
from typing import Sequence

from rescue.errors import FilesystemError, RescueError


def run(argv: Sequence[str], *, error: type[RescueError] = FilesystemError, input: bytes | None = None,
        check: bool = True, timeout: float | None = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, env=env)
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise error(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or proc.stdout.decode(
            errors="replace").strip().splitlines()
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise error(f"{argv[0]} failed: {last}")
    return proc


def output(argv: Sequence[str], **kw) -> str:
    return run(argv, **kw).stdout.decode(errors="replace")

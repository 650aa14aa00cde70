"""Running external tools: a failed tool becomes a one-line error naming the tool and its
last line of stderr, never a CalledProcessError traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from rescue.errors import FilesystemError, RescueError


def run(
    argv: Sequence[str],
    *,
    error: type[RescueError] = FilesystemError,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise error(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise error(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        lines = (
            proc.stderr.decode(errors="replace").strip().splitlines()
            or proc.stdout.decode(errors="replace").strip().splitlines()
        )
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise error(f"{argv[0]} failed: {last}")
    return proc


def output(
    argv: Sequence[str],
    *,
    error: type[RescueError] = FilesystemError,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 600,
    env: Mapping[str, str] | None = None,
) -> str:
    """The tool's stdout as text (undecodable bytes replaced)."""
    proc = run(argv, error=error, input=input, check=check, timeout=timeout, env=env)
    return proc.stdout.decode(errors="replace")

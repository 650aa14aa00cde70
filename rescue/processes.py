"""Processes told apart over time: a pid's start (a later process may get the same pid) and the
boot (a pid of another boot means nothing). Used by the leftovers registry (rescue.hw) and the
repository's lock (rescue.repo), which may not import each other."""

from __future__ import annotations


def parse_stat(text: str) -> tuple[str, int]:
    """(state, start time in clock ticks after boot) from the text of /proc/PID/stat. The
    command name in parentheses may hold spaces and parentheses itself: the fields start
    after the last ")". ValueError for anything else."""
    head, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or "(" not in head or len(fields) < 20:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime)


def process_start(pid: int) -> int | None:
    """The start time of process `pid`, or None when there is none, or only its corpse (a
    zombie: killed, not yet reaped, as good as dead)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, start = parse_stat(f.read())
    except (OSError, ValueError):
        return None
    return None if state in ("Z", "X", "x") else start


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""

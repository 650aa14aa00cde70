"""Run the QEMU tier as two pytest processes at once, so that `make test` fits CI's time.

Under TCG a guest keeps one core busy and the test process beside it mostly waits on the
serial line, so on a 2-core machine two streams of VM tests take little more than the longer
of the two instead of their sum. The modules are split by hand into two streams of about the
same length (each stream prints its slowest tests, to rebalance by); modules that build the
same cached fixture stay in one stream (the system drive's cache is locked, the Debian
drive's is not). The ISO is built (when stale) once, before either starts. Every line a stream
prints is prefixed with its letter; the exit status is the worse of the two.

    python tests/vm/streams.py [PYTEST ARGS...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from isofile import ensure_iso  # noqa: E402

STREAMS: dict[str, list[str]] = {
    # 34 min here at load 6 to 14 (2026-12-07), before its last two modules moved in from B
    "A": [
        "tests/vm/test_debian_restore.py",  # shares the Debian drive's cache with test_debian
        "tests/vm/test_debian.py",
        "tests/vm/test_netboot.py",
        "tests/vm/test_record.py",
        "tests/vm/test_clonezilla_boot.py",
        "tests/system/test_postrestore.py",
    ],
    # 43 min here at load 6 to 14 with those two (test_places alone 28)
    "B": [
        "tests/vm/test_places.py",
        "tests/vm/test_e2e.py",
        "tests/vm/test_iso_boot.py",
        "tests/vm/test_sysdrive.py",
    ],
}


PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]


def unassigned() -> list[str]:
    """Modules holding tests marked vm that no stream runs (a new one must be placed). A
    collection that fails is a failure here: it would hide modules."""
    argv = PYTEST + ["--collect-only", "-q", "-m", "vm", "tests"]
    listed = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        raise SystemExit(f"tests/vm/streams.py: collecting the tests failed:\n{listed.stdout[-2000:]}")
    found = {line.split("::")[0] for line in listed.stdout.splitlines() if "::" in line}
    placed = {name for modules in STREAMS.values() for name in modules}
    return sorted(found - placed)


def _run(letter: str, proc: subprocess.Popen[bytes], started: float, codes: dict[str, int]) -> None:
    """Relay a stream's lines with its letter, then record how it ended."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.buffer.write(f"[{letter}] ".encode() + line)
        sys.stdout.buffer.flush()
    codes[letter] = proc.wait()
    print(f"== QEMU stream {letter} ended: exit {codes[letter]} after {time.monotonic() - started:.0f} s", flush=True)


def main(args: list[str]) -> int:
    missing = unassigned()
    if missing:
        print(f"tests/vm/streams.py: place {', '.join(missing)} in a stream (STREAMS)", file=sys.stderr)
        return 2
    env = dict(os.environ, RESCUE_ISO=str(ensure_iso()), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    codes: dict[str, int] = {}
    streams = []
    for letter, modules in STREAMS.items():
        argv = PYTEST + ["-v", "-rs", "-s", "--durations=30", "-m", "vm", *args, *modules]
        print(f"== QEMU stream {letter}: {', '.join(modules)}", flush=True)
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        streams.append(threading.Thread(target=_run, args=(letter, proc, started, codes)))
        streams[-1].start()
    for stream in streams:
        stream.join()
    # pytest's 5 (nothing collected) counts as a failure too: every stream names real modules.
    return max(codes.values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

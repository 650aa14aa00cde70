"""Safety fails closed: when the kernel's state cannot be read as expected, restore, clone and
capture refuse and write nothing. The fault is real: in a private mount namespace /proc/swaps
is replaced by a file the parser cannot read (an invalid octal escape), as a kernel could
print for a swap file whose name it escaped unexpectedly. Nothing in the product is patched."""

from __future__ import annotations

import subprocess
import sys

import pytest
from disks import MiB, partition_table, sh

pytestmark = pytest.mark.root

BAD_SWAPS = "Filename\tType\tSize\tUsed\tPriority\n/swap\\999file\tfile\t1024\t0\t-2\n"


def _rescue_with_bad_swaps(tmp_path, *args: str) -> subprocess.CompletedProcess:
    swaps = tmp_path / "swaps"
    swaps.write_text(BAD_SWAPS)
    script = 'mount --bind "$1" /proc/swaps && shift && exec "$@"'
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(swaps),
            sys.executable,
            "-m",
            "rescue",
            *args,
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def drives(loops):
    src = loops.file("src.img", 64 * MiB)
    partition_table(str(src), "label: gpt\nstart=2048, size=100000\n")
    part = loops.attach(src, offset=MiB, size=100000 * 512)
    sh("mkfs.ext4", "-q", part)
    source = loops.attach(src)
    repo = loops.root / "repo"
    sh(sys.executable, "-m", "rescue", "capture", source, str(repo), "--name", "img")
    target_file = loops.file("target.img", 64 * MiB)
    return source, repo, loops.attach(target_file), target_file


@pytest.mark.parametrize("job", ["restore", "clone", "capture"])
def test_a_safety_check_that_cannot_complete_refuses(tmp_path, drives, job):
    source, repo, target, target_file = drives
    args = {
        "restore": ("restore", str(repo), "img", target, "--yes"),
        "clone": ("clone", source, target, "--yes"),
        "capture": ("capture", source, str(tmp_path / "repo2"), "--name", "x"),
    }[job]
    proc = _rescue_with_bad_swaps(tmp_path, *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "the safety check could not be completed (ValueError" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert target_file.read_bytes() == bytes(64 * MiB), "the target was written"
    assert not (tmp_path / "repo2" / "images" / "x").exists()

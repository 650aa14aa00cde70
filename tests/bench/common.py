"""What the benches share: the machine they ran on, honest timing (rounds in alternating order,
medians and spread, peak memory), loop devices, and inputs taken from this machine's own files.

Inputs: `real_files(kind)` walks this machine's /usr and apt cache in a fixed (sorted) order and
yields each file once per inode and once per content, classified as text, binary (ELF) or
compressed (archives, packages, images): realistic data that zstd cannot compress trivially,
the same on every machine installed alike."""

from __future__ import annotations

import gzip
import hashlib
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
VENV_PY = str(ROOT / ".venv" / "bin" / "python")
CORES = os.cpu_count() or 1


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def machine_lines() -> list[str]:
    """The machine, kernel, cores, memory and load average, to print beside every figure."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.processor())
    mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {cpu}, {CORES} cores, {mem / 1024 / 1024:.0f} GiB RAM; kernel {platform.release()}; "
        f"Python {platform.python_version()}",
        f"load average (1, 5, 15 min): {load}",
    ]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def losetup(path: Path | str, offset: int = 0, size: int | None = None, ro: bool = False) -> str:
    argv = ["losetup", "-f", "--show", "-o", str(offset)]
    if size:
        argv += ["--sizelimit", str(size)]
    if ro:
        argv.append("-r")
    return subprocess.run(argv + [str(path)], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def detach(*devs: str) -> None:
    for dev in devs:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", dev], stderr=subprocess.DEVNULL)


@dataclass
class Run:
    seconds: float
    peak_kib: int  # the largest resident set of the command and its children


def measured(cmd: list[str] | str, env: dict[str, str] | None = None) -> Run:
    """Run a command (a list, or a bash pipeline with pipefail) after dropping the page cache:
    wall time, and peak RSS from GNU time (the largest of the command and every process it
    waited for: each stage of a pipeline). Not wait4 from here: a child forked from this
    process starts with this process's resident set as its peak."""
    drop_caches()
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss:
        start = time.monotonic()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)  # fmt: skip
        seconds = time.monotonic() - start
        if done.returncode:
            raise SystemExit(f"failed ({done.returncode}): {cmd}\n{done.stderr.decode(errors='replace')[-2000:]}")
        return Run(seconds, int(rss.read().split()[-1]))


def alternate(names: list[str], r: int) -> list[str]:
    """The names in round r's order: forward, then backward, alternating, so that no tool
    always runs first (cold) or last (after the others warmed the machine)."""
    return list(names if r % 2 == 0 else reversed(names))


def spread(values: list[float], unit: str = "s") -> str:
    """Median and range: "9.12 s (8.80-9.60, 3 runs)"."""
    return f"{statistics.median(values):.2f} {unit} ({min(values):.2f}-{max(values):.2f}, {len(values)} runs)"


# -- this machine's files as realistic inputs ---------------------------------------------------

COMPRESSED = (".gz", ".xz", ".zst", ".bz2", ".zip", ".jar", ".deb", ".png", ".jpg", ".jpeg", ".whl", ".lz4", ".gif")
ROOTS = {
    "text": ["/usr/share/doc", "/usr/include", "/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/google-cloud-sdk"]
    + ["/usr/share/man", "/usr/share", "/usr/lib", "/usr/local"],
    "binary": ["/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/llvm-14", "/usr/lib/gcc"]
    + ["/usr/lib/jvm", "/usr/lib"],
    "compressed": ["/var/cache/apt/archives", "/usr/share", "/usr/lib"],
}
GUNZIP = ("/usr/share/man/", "/usr/share/doc/")  # gzipped text there counts as text, unpacked


def kind_of(path: Path, head: bytes) -> str | None:
    if path.name.endswith(COMPRESSED):
        return "compressed"
    if head.startswith(b"\x7fELF"):
        return "binary"
    if b"\0" not in head:
        try:
            head[:4000].decode()
            return "text"
        except UnicodeDecodeError:
            return None
    return None


def _content(path: Path, kind: str) -> bytes | None:
    """The file's bytes if it is of `kind` (gzipped manuals and docs unpacked, as text)."""
    gunzip = kind == "text" and path.name.endswith(".gz") and str(path).startswith(GUNZIP)
    if not gunzip and path.name.endswith(COMPRESSED) != (kind == "compressed"):
        return None
    with open(path, "rb") as f:
        if gunzip:
            data = gzip.decompress(f.read())
            return data if kind_of(path.with_suffix(""), data[:8192]) == kind else None
        head = f.read(8192)
        return head + f.read() if kind_of(path, head) == kind else None


def real_files(kind: str, seen: set) -> Iterator[tuple[Path, bytes]]:
    """(path, content) of this machine's files of `kind` ("text", "binary", "compressed"), in a
    fixed order; `seen` (inodes and content hashes, shared across calls) makes every file
    come once: no hard links, no copies under other names."""
    for top in ROOTS[kind]:
        for here, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                path = Path(here, name)
                try:
                    st = path.lstat()
                    if not path.is_file() or path.is_symlink() or st.st_size == 0 or st.st_size > 128 * MiB:
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    data = _content(path, kind)
                except (OSError, EOFError, gzip.BadGzipFile):
                    continue
                if data is None:
                    continue
                seen.add((st.st_dev, st.st_ino))
                digest = hashlib.sha256(data).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                yield (path.with_suffix("") if path.name.endswith(".gz") and kind == "text" else path), data

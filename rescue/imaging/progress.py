"""Progress events from long jobs, and the terminal progress line.

Jobs call a `report(Progress)` callback from their own thread; front ends decide how to show
it (the CLI prints a line on a terminal, the wizard forwards it to its main loop)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rescue.errors import Cancelled
from rescue.repo.retry import waiting


@dataclass(frozen=True)
class Progress:
    phase: str  # "capture", "verify", "restore", "write table", ...
    area: str  # "disk head", "p1 (ext4)", ... or "" when not per area
    area_done: int
    area_total: int
    done: int  # bytes, over the whole job
    total: int
    rate: float  # bytes per second over the job so far
    eta: float | None  # seconds left, None when unknown


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    pass


class Meter:
    """Counts bytes for a job and emits Progress, at most every `interval` seconds (except the
    final one), and checks the cancel flag at each step so cancellation is prompt."""

    def __init__(
        self,
        phase: str,
        total: int,
        report: ProgressCallback = no_progress,
        cancel: threading.Event | None = None,
        interval: float = 0.25,
    ):
        self.phase, self.total, self.report, self.cancel = phase, total, report, cancel
        self.interval = interval
        self.done = 0
        self.area, self.area_done, self.area_total = "", 0, 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def begin_area(self, name: str, total: int) -> None:
        with self._lock:
            self.area, self.area_done, self.area_total = name, 0, total
        self._emit(force=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            self.area_done += nbytes
        self.check_cancel()
        self._emit()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.phase} cancelled by the user")

    def finish(self) -> None:
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total else None
        self.report(Progress(self.phase, self.area, self.area_done, self.area_total, self.done, self.total, rate, eta))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TerminalProgress:
    """A single self-overwriting line on a terminal; silent when the stream is not a tty. While
    a server does not answer (rescue.repo.retry), the line says "waiting for <server> (N s)"
    and is redrawn every second, though no byte moves."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False
        self.last: Progress | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.enabled:  # also before the first progress: opening a repository may wait
            threading.Thread(target=self._tick, name="progress-tick", daemon=True).start()

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.last = p
            self._draw(p)

    def _draw(self, p: Progress | None) -> None:
        note = waiting()
        if p is None:
            line = note or ""
        else:
            pct = 100.0 * p.done / p.total if p.total else 100.0
            line = (
                f"{p.phase}: {pct:5.1f}%  {note}"  # the server's name matters more than the numbers then
                if note
                else f"{p.phase}: {p.area:<14.14} {pct:5.1f}%  {fmt_bytes(p.done)} / {fmt_bytes(p.total)}"
                f"  {p.rate / 1e6:6.1f} MB/s  ETA {fmt_duration(p.eta)}"
            )
        self.stream.write("\r" + line[:79].ljust(79))
        self.stream.flush()
        self.shown = True

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if waiting() and not self._stop.is_set():
                    self._draw(self.last)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self.shown:
                self.stream.write("\n")
                self.stream.flush()
                self.shown = False

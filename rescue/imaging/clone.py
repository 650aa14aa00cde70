"""Clone: a drive straight onto another, without a repository. The same used-block reading as
capture (bad sectors included), the same layout planning and resizing as restore."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import RefusedError
from rescue.hw.badread import TolerantReader
from rescue.imaging import postrestore
from rescue.imaging.apply import AreaFacts, AreaSource, write_drive
from rescue.imaging.capture import CapturePlan, _keep_only, _used_parts, plan_capture
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.restore import RestorePlan, plan_onto
from rescue.repo.index import Index, Kind


@dataclass
class CloneResult:
    target_path: str
    bytes_written: int
    seconds: float
    sectors_lost: int
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)
    log_path: str = ""
    warnings: list[str] = field(default_factory=list)  # steps after writing that failed


def plan_clone(source: str, target: str, policy: str = "auto", capture_plan: CapturePlan | None = None,
               scratch_dir: str | None = None) -> RestorePlan:
    if os.path.realpath(source) == os.path.realpath(target):
        raise RefusedError(f"the target {target} is the source drive")
    cap = capture_plan or plan_capture(source)
    areas = [AreaFacts(a.name, a.partition, a.size, dict(vars(a.fs)) if a.fs else None, a.used) for a in cap.areas]
    return plan_onto(source, cap.layout, areas, target, policy, cap.read_bytes(), scratch_dir)


def clone(source: str, target: str, *, policy: str = "auto", retries: int = 1, read_timeout: float = 30.0,
          progress: ProgressCallback = no_progress, cancel: threading.Event | None = None,
          threads: int | None = None, log_dir: Path | None = None, fresh_ids: bool = False,
          scratch_dir: str | None = None) -> CloneResult:
    from rescue.hw.safety import check_source, check_target

    started = time.monotonic()
    check_source(source)
    check_target(target, source=source)
    log = JobLog(_log_path(log_dir))
    cap = plan_capture(source, log)
    plan = plan_clone(source, target, policy, cap, scratch_dir)
    plan.check()
    log(f"cloning {source} onto {target} ({fmt_bytes(plan.target_size)}), layout {plan.policy}")
    meter = Meter("clone", plan.write_bytes, progress, cancel)
    with TolerantReader(source, retries=retries, timeout=read_timeout) as reader:
        lock = threading.Lock()
        sources = []
        for ap in cap.areas:
            index = Index.empty(1 << 22, ap.size)
            for i in range(index.count):
                start, length = index.span(i)
                if _used_parts(ap, start, length):
                    index.set(i, Kind.DATA)

            def fetch(i: int, ap=ap, index=index) -> bytes:
                start, length = index.span(i)
                with lock:  # the reader is not thread-safe; writing still overlaps
                    got = reader.read(ap.offset + start, length)
                parts = _used_parts(ap, start, length)
                return got.data if len(parts) == 1 and parts[0].length == length else _keep_only(got.data, parts)

            fs = dict(vars(ap.fs)) if ap.fs else None
            sources.append(AreaSource(ap.name, ap.label, ap.size, fs, index, fetch))
        write_drive(target, plan.layout, sources, plan.placements, meter, threads or os.cpu_count() or 1,
                    log, plan.scratch_dir())
        # Bad sectors met on the way: a last trim and retry pass, then the recovered bytes
        # go to where their area now lives.
        lost = 0
        if reader.sectors_lost:
            _rewrite_recovered(reader, cap, plan, target, log)
            lost = reader.sectors_lost
        bad = list(reader.map.bad_ranges())
    warnings = postrestore.finish_drive(target, cap.layout, plan.layout, log, fresh_ids=fresh_ids)
    meter.finish()
    seconds = time.monotonic() - started
    log(f"done: wrote {fmt_bytes(meter.done)} in {seconds:.1f} s, {lost} unreadable sectors")
    return CloneResult(target, meter.done, seconds, lost, bad, str(log.path or ""), warnings)


def _rewrite_recovered(reader: TolerantReader, cap: CapturePlan, plan: RestorePlan, target: str, log: JobLog) -> None:
    from rescue.hw import blockdev

    recovered = reader.finish()
    fd = blockdev.open_drive(target, write=True)
    try:
        for offset, data in recovered:
            for ap in cap.areas:
                lo, hi = max(offset, ap.offset), min(offset + len(data), ap.offset + ap.size)
                place = plan.placements[ap.name]
                if lo < hi and place.action in ("keep", "move"):
                    blockdev.write_all(fd, data[lo - offset:hi - offset], place.offset + lo - ap.offset)
        blockdev.flush(fd)
    finally:
        os.close(fd)
    log(f"later passes recovered {sum(len(d) for _, d in recovered)} bytes; "
        f"{reader.sectors_lost} sectors remain unreadable (zero-filled)")


def _log_path(log_dir: Path | None) -> Path | None:
    d = log_dir or Path("/run/rescue")
    try:
        d.mkdir(parents=True, exist_ok=True)
        return d / f"clone-{time.strftime('%Y%m%dT%H%M%S')}.log"
    except OSError:
        return None

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
from rescue.imaging.apply import AreaSource, Job, execute
from rescue.imaging.capture import AreaPlan, CapturePlan, plan_capture
from rescue.imaging.chunkread import UsedChunkReader
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.restore import RestorePlan, TargetFacts, look_at, plan_onto
from rescue.model.actions import Action
from rescue.repo.index import Index

CHUNK = 4 << 20  # the size clone reads the source in, as capture's default chunk


@dataclass
class CloneResult:
    target_path: str
    bytes_written: int
    seconds: float
    sectors_lost: int
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)
    log_path: str = ""
    warnings: list[str] = field(default_factory=list)  # steps after writing that failed
    actions: list[Action] = field(default_factory=list)  # the plan's actions, as executed


def plan_clone(
    source: str,
    target: str,
    policy: str = "auto",
    capture_plan: CapturePlan | None = None,
    scratch_dir: str | None = None,
    fresh_ids: bool = False,
    facts: TargetFacts | None = None,
) -> RestorePlan:
    if os.path.realpath(source) == os.path.realpath(target):
        raise RefusedError(f"the target {target} is the source drive")
    cap = capture_plan or plan_capture(source)
    plan = plan_onto(
        source,
        cap.layout,
        cap.area_facts(),
        facts or look_at(target),
        policy,
        cap.read_bytes(),
        scratch_dir,
        fresh_ids=fresh_ids,
        clone=True,
    )
    plan.capture = cap
    return plan


def clone(
    source: str,
    target: str,
    *,
    policy: str = "auto",
    retries: int = 1,
    read_timeout: float = 30.0,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    log_dir: Path | None = None,
    fresh_ids: bool = False,
    scratch_dir: str | None = None,
    plan: RestorePlan | None = None,
) -> CloneResult:
    """Clone `source` onto `target`: exactly the confirmed `plan` when given (from plan_clone;
    policy, fresh_ids and scratch_dir are then the plan's), else a plan made here."""
    from rescue.hw.safety import check_source, check_target

    started = time.monotonic()
    check_source(source)
    check_target(target, source=source)
    log = JobLog(_log_path(log_dir))
    if plan is None:
        plan = plan_clone(source, target, policy, plan_capture(source, log), scratch_dir, fresh_ids)
    cap = plan.capture
    assert cap is not None, "a clone plan comes from plan_clone"
    plan.check()
    log(f"cloning {source} onto {target} ({fmt_bytes(plan.target_size)}), layout {plan.policy}")
    meter = Meter("clone", plan.write_bytes, progress, cancel)
    with TolerantReader(source, retries=retries, timeout=read_timeout, check=meter.check_cancel) as reader:
        chunk_reader = UsedChunkReader(reader, CHUNK)
        sources = {}
        for ap in cap.areas:
            index = chunk_reader.index(ap)

            def fetch(i: int, ap: AreaPlan = ap, index: Index = index) -> bytes:
                start, length = index.span(i)
                got = chunk_reader.read(ap, start, length)  # reads take turns; writing still overlaps
                return got.data if got is not None else bytes(length)  # the index asks for used chunks only

            fs = dict(vars(ap.fs)) if ap.fs else None
            sources[ap.name] = AreaSource(ap.name, ap.label, ap.size, fs, index, fetch)

        def recovered() -> None:
            """Bad sectors met on the way: a last trim and retry pass, then the recovered
            bytes go to where their area now lives."""
            if reader.sectors_lost:
                _rewrite_recovered(reader, cap, plan, target, log)

        job = Job(
            target,
            cap.layout,
            plan.layout,
            plan.placements,
            sources,
            meter,
            threads or os.cpu_count() or 1,
            log,
            plan.scratch_dir(),
            recovered,
            kind="clone",
            source=source,
        )
        warnings, done = execute(job, plan.actions)
        lost = reader.sectors_lost
        bad = list(reader.map.bad_ranges())
    meter.finish()
    seconds = time.monotonic() - started
    log(f"done: wrote {fmt_bytes(meter.done)} in {seconds:.1f} s, {lost} unreadable sectors")
    return CloneResult(target, meter.done, seconds, lost, bad, str(log.path or ""), warnings, done)


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
                    blockdev.write_all(fd, data[lo - offset : hi - offset], place.offset + lo - ap.offset)
        blockdev.flush(fd)
    finally:
        os.close(fd)
    log(
        f"later passes recovered {sum(len(d) for _, d in recovered)} bytes; "
        f"{reader.sectors_lost} sectors remain unreadable (zero-filled)"
    )


def _log_path(log_dir: Path | None) -> Path | None:
    d = log_dir or Path("/run/rescue")
    try:
        d.mkdir(parents=True, exist_ok=True)
        return d / f"clone-{time.strftime('%Y%m%dT%H%M%S')}.log"
    except OSError:
        return None

"""Restore: an image onto a drive. Plan (what will be written where, does it fit), check the
image, then write: the first MiB, the partition table, then every area's chunks.

Only chunks holding data are written, and ZERO chunks are zeroed; UNUSED chunks are left as
they are (the filesystem does not care what free blocks hold)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.errors import RefusedError, RescueError, TooSmallError, UsageError
from rescue.filesystems import lookup
from rescue.filesystems.windows import records_start
from rescue.hw import blockdev
from rescue.hw.firmware import uefi_firmware
from rescue.hw.partitions import read_layout
from rescue.hw.scratch import default_dir as default_scratch_dir
from rescue.hw.scratch import space as scratch_space
from rescue.imaging.apply import AreaFacts, AreaSource, Job, execute
from rescue.imaging.log import JobLog, log_file
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.verify import check_chunks, data_chunks, image_source, load_indexes
from rescue.model import gaps
from rescue.model import windows as win
from rescue.model.actions import Action, Placement, plan_actions
from rescue.model.extents import Extent, normalize
from rescue.model.layout import DiskLayout
from rescue.model.plan import LayoutPlan, PartFacts, plan_layout
from rescue.model.scratch import Scratch, shrink_need
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Manifest, area_label
from rescue.repo.store import Repository

if TYPE_CHECKING:
    from rescue.imaging.capture import CapturePlan

POLICIES = ("auto", "same", "proportional", "grow-last")


@dataclass
class RestorePlan:
    image: str
    target_path: str
    target_size: int
    policy: str
    layout: DiskLayout  # what will be written
    current: DiskLayout | None  # what the target holds now
    fits: bool
    reason: str
    write_bytes: int
    placements: dict[str, Placement]  # by area name
    notes: list[str] = field(default_factory=list)
    scratch: Scratch | None = None  # where shrinks keep the data past the new end; None: no shrink
    source_layout: DiskLayout | None = None  # the image's (or source drive's) table
    actions: list[Action] = field(default_factory=list)  # exactly what executing it does, in order
    layout_plan: LayoutPlan | None = None  # the planner's answer, for renderers
    capture: CapturePlan | None = None  # a clone's reading plan of its source
    target_sector_size: int = 0  # the target's logical sector size when planned
    areas: list[AreaFacts] = field(default_factory=list)  # what the plan places, as planned

    def check(self, now: TargetFacts | None = None) -> None:
        """Refuse a plan that cannot be carried out, before anything is written; and a plan
        made for a target that has changed since (another drive under the same name, a new
        table written by someone else): the person confirmed what they were shown. `now`:
        the target as it is now (default: looked at on this machine)."""
        if self.scratch is not None and not self.scratch.fits:
            raise RefusedError(self.reason)
        if not self.fits:
            raise TooSmallError(self.reason)
        now = now or look_at(self.target_path)
        was = self.current.to_dict() if self.current else None
        if (now.size, now.sector_size) != (self.target_size, self.target_sector_size) or (
            now.current.to_dict() if now.current else None
        ) != was:
            raise RefusedError(
                f"{self.target_path} changed since the plan was made (its size or partition "
                f"table is not what the plan was shown with); plan again"
            )

    def scratch_dir(self) -> str:
        return self.scratch.where if self.scratch else default_scratch_dir()


@dataclass
class RestoreResult:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str
    warnings: list[str] = field(default_factory=list)  # steps after writing that failed
    actions: list[Action] = field(default_factory=list)  # the plan's actions, as executed


@dataclass
class TargetFacts:
    """What planning needs from the machine besides the image: the target drive as it is now,
    the firmware, the scratch space. `look_at` reads them from the live machine; a recorded
    machine (rescue.machine) gives the ones it recorded, so the same planner runs over both."""

    path: str
    size: int
    sector_size: int
    current: DiskLayout | None  # the table on the target now, None when it has none
    uefi: bool
    scratch_space: Callable[[str], tuple[int, bool]] = scratch_space  # dir -> (free bytes, is RAM)


def look_at(target: str) -> TargetFacts:
    size, sector_size = target_geometry(target)
    try:
        current = read_layout(target)
    except RescueError:
        current = None
    return TargetFacts(target, size, sector_size, current, uefi_firmware())


def target_geometry(path: str) -> tuple[int, int]:
    """(size in bytes, logical sector size)."""
    fd = blockdev.open_drive(path)
    try:
        return blockdev.size_of(fd), blockdev.logical_sector_size(fd)
    finally:
        os.close(fd)


def facts_of(areas: list[AreaFacts]) -> dict[int, PartFacts]:
    """What the planner may do with each partition, from what capture recorded and what its
    filesystem class allows (nothing, for contents no class knows)."""
    out = {}
    for area in areas:
        if area.partition is not None:
            fstype = (area.fs or {}).get("type")
            fs = lookup(fstype)
            out[area.partition] = PartFacts(
                fstype=fstype,
                min_size=(area.fs or {}).get("min_size"),
                can_shrink=fs is not None and fs.can_shrink,
                can_grow=fs is not None and fs.can_grow,
            )
    return out


def plan_restore(
    repo: Repository,
    name: str,
    target: str,
    policy: str = "auto",
    manifest: Manifest | None = None,
    indexes: dict[str, Index] | None = None,
    scratch_dir: str | None = None,
    fresh_ids: bool = False,
    facts: TargetFacts | None = None,
) -> RestorePlan:
    """The layout that would be written on `target`, and whether the data fits. Writes nothing."""
    image = image_facts(repo, name, manifest, indexes)
    return plan_onto(
        name, image.layout, image.areas, facts or look_at(target), policy, image.write, scratch_dir, fresh_ids=fresh_ids
    )


@dataclass
class ImageFacts:
    """What the planner needs of an image: its table, its areas, the bytes a restore writes."""

    layout: DiskLayout
    areas: list[AreaFacts]
    write: int


def image_facts(
    repo: Repository, name: str, manifest: Manifest | None = None, indexes: dict[str, Index] | None = None
) -> ImageFacts:
    if manifest is None or indexes is None:
        manifest, indexes = load_indexes(repo, name)
    write = sum(
        indexes[a.name].span(i)[1]
        for a in manifest.areas
        for i, k in enumerate(indexes[a.name].kinds)
        if k in (Kind.DATA, Kind.ZERO)
    )
    areas = [AreaFacts(a.name, a.partition, a.size, a.fs, _held(indexes[a.name])) for a in manifest.areas]
    return ImageFacts(manifest.layout, areas, write)


def _held(index: Index) -> list[Extent]:
    """The chunks of an area that hold data (DATA, and UNREADABLE: bytes the source had)."""
    return normalize(index.span(i) for i, k in enumerate(index.kinds) if k in (Kind.DATA, Kind.UNREADABLE))


def _keep_gaps(areas: list[AreaFacts]) -> dict[int | None, int]:
    """Gaps that hold data, by the partition they follow (None: the head)."""
    out: dict[int | None, int] = {}
    for a in areas:
        if a.partition is None and gaps.is_gap(a.name):
            need = a.data_end()
            if need:
                out[None if a.name == gaps.HEAD else int(a.name[len("gap-p") :])] = need
    return out


def plan_onto(
    what: str,
    image: DiskLayout,
    areas: list[AreaFacts],
    facts: TargetFacts,
    policy: str,
    write: int,
    scratch_dir: str | None = None,
    *,
    fresh_ids: bool = False,
    clone: bool = False,
) -> RestorePlan:
    """Plan `image` (an image's or a source drive's layout) onto the target `facts` describe.
    Pure over its arguments. Policy auto: the same layout on a drive of the same size,
    proportional otherwise."""
    if policy not in POLICIES:
        raise UsageError(f"unknown layout policy {policy!r} (choose from {', '.join(POLICIES)})")
    target, size, sector_size, current = facts.path, facts.size, facts.sector_size, facts.current
    if image.table == "none":
        fits = image.size <= size
        reason = (
            f"fits: {what} needs {fmt_bytes(image.size)}, {target} has {fmt_bytes(size)}"
            if fits
            else _too_small(target, image.size, size, needs=what if clone else "the image")
        )
        layout = DiskLayout.from_dict({**image.to_dict(), "size": size})
        whole = {areas[0].name: Placement(0, areas[0].size, "keep")}
        return RestorePlan(
            what,
            target,
            size,
            "same",
            layout,
            current,
            fits,
            reason,
            write,
            whole,
            source_layout=image,
            actions=plan_actions(image, layout, whole, _labels(areas)),
            target_sector_size=sector_size,
            areas=areas,
        )
    if policy == "auto":
        policy = "same" if abs(size - image.size) < (1 << 20) else "proportional"
    bcd = win.bcd_stores({a.partition: a.fs for a in areas if a.partition is not None and a.fs})
    pinned = win.pinned(image, bcd) if image.table == "msdos" else {}
    lp = plan_layout(image, facts_of(areas), size, sector_size, policy, _keep_gaps(areas), pinned)
    moves = {m.number: m for m in lp.moves}
    placements = {}
    for area in areas:
        if area.partition is None:  # bytes outside partitions: after what they followed
            placements[area.name] = Placement(*gaps.place(area.name, area.size, lp.layout, size), "gap")
        else:
            m = moves[area.partition]
            placements[area.name] = Placement(m.new_start, m.new_size, m.action, (area.fs or {}).get("type"))
    needs = what if clone else "the image"
    reason = lp.reason if lp.fits else _too_small(target, size + lp.shortfall, size, lp.reason, needs=needs)
    plan = RestorePlan(
        what,
        target,
        size,
        policy,
        lp.layout,
        current,
        lp.fits,
        reason,
        write,
        placements,
        list(lp.notes),
        source_layout=image,
        target_sector_size=sector_size,
        layout_plan=lp,
        areas=areas,
    )
    plan.scratch = _scratch(areas, placements, scratch_dir, facts.scratch_space)
    plan.actions = plan_actions(
        image,
        lp.layout,
        placements,
        _labels(areas),
        fresh_ids=fresh_ids,
        uefi=facts.uefi,
        clone=clone,
        scratch=plan.scratch_dir(),
        fstypes={a.partition: (a.fs or {}).get("type") for a in areas if a.partition is not None},
        bcd=bcd,
        with_start={a.partition for a in areas if a.partition is not None and records_start((a.fs or {}).get("type"))},
    )
    hibernated = _resized_hibernated(areas, placements)
    if hibernated and plan.fits:
        plan.fits, plan.reason = False, hibernated
    if plan.scratch is not None:
        plan.notes.append(plan.scratch.describe(fmt_bytes))
        if plan.fits and not plan.scratch.fits:
            plan.fits, plan.reason = False, plan.scratch.refusal(fmt_bytes)
    return plan


def _resized_hibernated(areas: list[AreaFacts], placements: dict[str, Placement]) -> str:
    """The one-line refusal of a plan that would resize an NTFS Windows left hibernated
    (ntfsresize would refuse it halfway through the write, in many lines); "" when none."""
    for a in areas:
        why = (a.fs or {}).get("hibernated")
        if why and placements[a.name].action in ("grow", "shrink"):
            return (
                f"{area_label(a.name, 'ntfs')} cannot be resized: {why}; {win.HIBERNATED_FIX} "
                f"(or restore with --layout same onto a drive of at least the image's size)"
            )
    return ""


def _labels(areas: list[AreaFacts]) -> dict[str, str]:
    return {a.name: area_label(a.name, (a.fs or {}).get("type")) for a in areas}


def _scratch(
    areas: list[AreaFacts],
    placements: dict[str, Placement],
    where: str | None,
    space: Callable[[str], tuple[int, bool]],
) -> Scratch | None:
    """The scratch space the plan's shrinks need (the largest; they run one at a time), and
    what `where` (default: the temporary directory, RAM on the live system) can give."""
    needs = [
        shrink_need(a.held, a.size, placements[a.name].size) for a in areas if placements[a.name].action == "shrink"
    ]
    if not needs:
        return None
    where = where or default_scratch_dir()
    free, ram = space(where)
    return Scratch(max(needs), where, free, ram)


def _too_small(target: str, need: int, have: int, detail: str = "", *, needs: str = "the image") -> str:
    return (
        f"{target} is too small: {needs} needs {fmt_bytes(need)}, the drive has {fmt_bytes(have)}, "
        f"short by {fmt_bytes(need - have)} ({need - have} bytes)" + (f"; {detail}" if detail else "")
    )


def restore(
    repo: Repository,
    name: str,
    target: str,
    *,
    preverify: bool = True,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    plan: RestorePlan | None = None,
    threads: int | None = None,
    log_dir: Path | None = None,
    fresh_ids: bool = False,
    scratch_dir: str | None = None,
) -> RestoreResult:
    started = time.monotonic()
    manifest, indexes = load_indexes(repo, name)
    plan = plan or plan_restore(
        repo, name, target, manifest=manifest, indexes=indexes, scratch_dir=scratch_dir, fresh_ids=fresh_ids
    )
    workers = threads or os.cpu_count() or 1

    def check(progress: ProgressCallback, cancel: threading.Event | None) -> str:
        refs = data_chunks(manifest, indexes)
        check_chunks(repo, name, refs, Meter("verify", sum(r.length for r in refs.values()), progress, cancel), workers)
        return f"{len(refs)} chunks"

    return write_image(
        target,
        plan,
        ImageWrite(
            name,
            f"image {name} from {repo.where}",
            str(repo.path) if repo.path else None,
            manifest.layout,
            lambda: {area.name: image_source(repo, name, area, indexes[area.name]) for area in manifest.areas},
            check,
        ),
        lambda: _log_path(repo, name, log_dir),
        preverify=preverify,
        progress=progress,
        cancel=cancel,
        threads=workers,
        started=started,
    )


@dataclass
class ImageWrite:
    """What writing a planned image needs of where the image comes from (a repository, a
    Clonezilla directory): the same steps then run for each, in one place (write_image)."""

    name: str
    words: str  # "image NAME from WHERE", for the log
    holder: str | None  # the directory holding it: its drive is refused as the target
    layout: DiskLayout  # the image's own table
    sources: Callable[[], dict[str, AreaSource]]  # each area's checked chunks
    check: Callable[[ProgressCallback, threading.Event | None], str]  # the pass before writing; says what it read


def write_image(
    target: str,
    plan: RestorePlan,
    image: ImageWrite,
    log_path: Callable[[], Path | None],
    *,
    preverify: bool,
    progress: ProgressCallback,
    cancel: threading.Event | None,
    threads: int,
    started: float,
) -> RestoreResult:
    """Exactly the confirmed plan: the safety rules and the plan's own verdict first, then,
    unless told not to, a checking pass over the whole image (damage is found before the
    target is touched), then the plan's actions. The log file is made only once the checks
    passed (`log_path` makes it): a refused restore writes nothing, not even a log."""
    check_target_allowed(target, image.holder)
    plan.check()
    log = JobLog(log_path())
    log(f"restoring {image.words} onto {target} ({fmt_bytes(plan.target_size)})")
    if plan.scratch:
        log(plan.scratch.describe(fmt_bytes))
    if preverify:
        log(f"image verified: {image.check(progress, cancel)}")
    meter = Meter("restore", plan.write_bytes, progress, cancel)
    job = Job(
        target,
        image.layout,
        plan.layout,
        plan.placements,
        image.sources(),
        meter,
        threads,
        log,
        plan.scratch_dir(),
        kind="restore",
        source=image.name,
    )
    warnings, done = execute(job, plan.actions)  # a damaged chunk met on the way stops it there
    meter.finish()
    seconds = time.monotonic() - started
    log(f"done: wrote {fmt_bytes(meter.done)} in {seconds:.1f} s")
    return RestoreResult(target, meter.done, seconds, preverify, str(log.path or ""), warnings, done)


def check_target_allowed(target: str, repo_path: str | None) -> None:
    """The safety rules (rescue.hw.safety), applied before asking and again before writing."""
    from rescue.hw.safety import check_target

    check_target(target, repo_path=repo_path)


def _log_path(repo: Repository, name: str, log_dir: Path | None) -> Path | None:
    """Beside the image when the repository is a writable directory (and not encrypted: a log
    in clear), else in /run (read-only media, a server)."""
    beside = [repo.image_dir(name)] if repo.path is not None and not repo.encrypted else []
    return log_file("restore", ([log_dir] if log_dir else []) + beside)

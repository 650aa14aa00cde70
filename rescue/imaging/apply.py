"""Writing a planned layout onto a drive, from any source of chunks: an image (restore) or
another drive (clone). The only engine code that writes to a target drive.

It executes a confirmed plan's actions (model/actions.py) in their order and nothing else:
the partition table, the bytes outside partitions (imaging/outside.py: boot code in the gap
after the MBR, which writing a table clears), every partition's chunks at its planned offset,
filesystems grown in place or shrunk on the target (never writing past the end of a smaller
partition: a shrink writes the bytes past the new end to a scratch file, hw/splitdev.py), the
bytes outside partitions read back and compared, then the steps that make the drive boot.

From the first action that writes until the last action has run, the target is marked
partly written (rescue.hw.leftovers: /run/rescue/partly-written/<drive>.json, naming the
job, its source, its start and its log): a job that fails, is cancelled, interrupted or
killed leaves the mark, so that its error, the CLI's exit message, `rescue disks` and the
wizard's drive lists say that the drive will not boot. A job that completes removes it,
also one that a failed job left on the same drive."""

from __future__ import annotations

import fcntl
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rescue.errors import Cancelled, DeviceError, RescueError
from rescue.hw import blockdev, leftovers
from rescue.hw.mounts import loop_attached
from rescue.hw.partitions import apply_layout
from rescue.imaging import outside as outside_bytes
from rescue.imaging import postrestore
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, fmt_bytes
from rescue.model import actions
from rescue.model.actions import Action, Placement
from rescue.model.extents import Extent
from rescue.model.layout import DiskLayout
from rescue.repo.index import Index, Kind


@dataclass
class AreaFacts:
    """What planning needs to know of an area, whether it comes from an image or a drive."""

    name: str
    partition: int | None
    size: int
    fs: dict | None
    held: list[Extent] | None = None  # byte ranges holding data, normalized; None: every byte

    def data_end(self) -> int:
        """Where the area's last byte of data ends."""
        return self.size if self.held is None else (self.held[-1].end if self.held else 0)


@dataclass
class AreaSource:
    """One area's chunks: the index says which to write (DATA) or zero (ZERO); fetch(i)
    returns chunk i's bytes, checked, and may be called from several threads."""

    name: str
    label: str
    size: int
    fs: dict | None
    index: Index
    fetch: Callable[[int], bytes]

    def write_bytes(self) -> int:
        return sum(self.index.span(i)[1] for i, k in enumerate(self.index.kinds) if k in (Kind.DATA, Kind.ZERO))


@dataclass
class Job:
    """What executing a confirmed plan needs besides its actions."""

    target: str
    image: DiskLayout  # the source's layout (image or drive)
    layout: DiskLayout  # the layout being written
    placements: dict[str, Placement]
    sources: dict[str, AreaSource]  # by area name
    meter: Meter
    workers: int
    log: JobLog
    scratch_dir: str
    recovered: Callable[[], None] = lambda: None  # clone: rewrite what later passes recovered
    keep_out: list[Extent] = field(default_factory=list)  # the new table's own structures
    kind: str = "restore"  # "restore" or "clone": what the partly-written mark and words say
    source: str = "?"  # the image's name or the source drive


# Actions that only read the target; every other one writes it.
READ_ONLY = frozenset({actions.CHECK_GAPS, actions.GRUB_GAP})


def execute(job: Job, actions: list[Action]) -> tuple[list[str], list[Action]]:
    """Carry out `actions` (model/actions.py) in their order, each exactly as planned.
    A failing action that aborts stops the job (its error says whether the target is partly
    written); one that warns is logged and returned as a warning. Returns (warnings, the
    actions executed). The target is marked partly written from the first action that
    writes until all have run (see the module's docstring)."""
    mark = _Mark(job)
    try:
        result = _run(job, actions, mark)
    except (RescueError, OSError) as e:
        if not mark.started:
            raise
        raise _partly_written(job, e, mark) from None
    except BaseException:  # KeyboardInterrupt, SystemExit: the mark stays, the log says why
        if mark.started:
            job.log(f"INTERRUPTED: {mark.words()}")
            if mark.marker is not None:
                leftovers.ended(mark.marker, "interrupted")
        raise
    if mark.marker is not None:
        leftovers.finished(mark.marker)
    return result


def _run(job: Job, actions: list[Action], mark: _Mark) -> tuple[list[str], list[Action]]:
    warnings: list[str] = []
    done: list[Action] = []
    reread = False
    for act in actions:
        if not act.aborts and not reread:  # the steps after writing see the new table
            _reread(job.target)
            reread = True
        if act.kind not in READ_ONLY:
            mark.start()
        job.log(f"step {len(done) + 1}/{len(actions)}: {act.what}")
        try:
            _HANDLERS[act.kind](job, act)
        except (RescueError, OSError) as e:
            if act.aborts:
                raise
            warnings.append(f"the drive is written, but this step failed ({act.what}): {e}")
            job.log(f"WARNING: {warnings[-1]}")
        done.append(act)
    if not reread:
        _reread(job.target)
    return warnings, done


class _Mark:
    """The partly-written mark of one execution: made once, before the first write."""

    def __init__(self, job: Job):
        self.job = job
        self.started = False
        self.marker: leftovers.Marker | None = None
        self.kind, self.source = job.kind, job.source

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        path = self.job.log.path
        self.marker = leftovers.mark_partly_written(self.job.target, self.kind, self.source, str(path or ""))

    def words(self) -> str:
        return leftovers.partly_written_words(self.job.target, self.kind)


def _partly_written(job: Job, e: RescueError | OSError, mark: _Mark) -> RescueError:
    """Every writing action can fail half-way (a table commit too): once one started, the
    target is partly written, and the error says so (leftovers.partly_written_words, the
    one wording). A cancel keeps its exit code and is marked interrupted, not failed."""
    words = mark.words()
    cancelled = isinstance(e, Cancelled)
    text = str(e) if isinstance(e, RescueError) else _os_text(e)
    job.log(f"{'CANCELLED' if cancelled else 'FAILED'}: {text}; {words}")
    if mark.marker is not None:
        leftovers.ended(mark.marker, "interrupted" if cancelled else "failed", text)
    if not isinstance(e, RescueError):
        return DeviceError(f"{text}; {words}")
    try:
        err = type(e)(f"{text}; {words}")
    except TypeError:  # a subclass with its own constructor
        err = RescueError(f"{text}; {words}")
    err.exit_code = e.exit_code
    return err


def _os_text(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename else what


def _reread(target: str) -> None:
    fd = blockdev.open_drive(target)
    try:
        blockdev.reread_partitions(fd)
    finally:
        os.close(fd)


def _table(job: Job, act: Action) -> None:
    for note in apply_layout(job.target, job.layout):
        job.log(note)
    job.keep_out = outside_bytes.protected(job.target, job.layout, job.layout.size)


def _with_drive(job: Job, write: Callable[[int], None]) -> None:
    fd = blockdev.open_drive(job.target, write=True)
    try:
        write(fd)
        blockdev.flush(fd)
    finally:
        os.close(fd)


def _gap(job: Job, act: Action) -> None:
    """After the table: writing a table clears the gap after the MBR."""
    src, place = job.sources[act.area], job.placements[act.area]
    allowed = outside_bytes.pieces(place.offset, place.size, job.layout, job.keep_out)
    _with_drive(job, lambda fd: outside_bytes.write(fd, src, place.offset, allowed, job.meter))


def _write(job: Job, act: Action) -> None:
    src, place = job.sources[act.area], job.placements[act.area]
    _with_drive(job, lambda fd: write_area(fd, src, place.offset, job.meter, job.workers))


def _grow(job: Job, act: Action) -> None:
    """Written, then grown through a loop device over the new partition (the drive closed:
    the resize tool writes through its own device)."""
    _write(job, act)
    job.log(_resize_in_place(job.target, job.sources[act.area], job.placements[act.area]))


def _shrink(job: Job, act: Action) -> None:
    _write_shrunk(
        job.target, job.sources[act.area], job.placements[act.area], job.meter, job.workers, job.log, job.scratch_dir
    )


def _check_gaps(job: Job, act: Action) -> None:
    outside = [job.sources[n] for n, p in job.placements.items() if p.action == "gap"]
    outside_bytes.check(job.target, outside, job.placements, job.layout, job.keep_out)
    job.log("bytes outside the partitions read back equal to the source")


def _grub_pointers(job: Job, act: Action) -> None:
    moved = actions.bios_boot_moved(job.image, job.layout)
    assert moved is not None  # planned only when it moved
    job.log(postrestore.patch_grub_bios(job.target, *moved, sector_size=job.layout.sector_size))


_HANDLERS: dict[str, Callable[[Job, Action], None]] = {
    actions.TABLE: _table,
    actions.GAP: _gap,
    actions.WRITE: _write,
    actions.GROW: _grow,
    actions.SHRINK: _shrink,
    actions.RECOVERED: lambda job, act: job.recovered(),
    actions.CHECK_GAPS: _check_gaps,
    actions.BOOT_SECTORS: lambda job, act: postrestore.fix_boot_sectors(job.target, job.image, job.log),
    actions.GRUB_POINTERS: _grub_pointers,
    actions.GRUB_GAP: lambda job, act: job.log(postrestore.check_grub_gap(job.target, job.layout)),
    actions.NEW_IDS: lambda job, act: postrestore.new_ids(job.target, job.log),
    actions.WINDOWS_BCD: lambda job, act: postrestore.rewrite_bcd(job.target, job.image, job.log),
    actions.EFI_FALLBACK: lambda job, act: postrestore.ensure_efi_fallback(job.target, job.log),
    actions.BOOT_ENTRY: lambda job, act: postrestore.add_boot_entry(job.target, job.log),
}


def write_area(fd: int, src: AreaSource, base: int, meter: Meter, workers: int) -> None:
    with _DirectWriter(fd, base) as out:
        write_chunks(src, out.put, out.zero, meter, workers)


def write_chunks(
    src: AreaSource, put: Callable[[bytes, int], None], zero: Callable[[int, int], None], meter: Meter, workers: int
) -> None:
    """Every DATA chunk of `src` through put(bytes, area position), every ZERO chunk through
    zero(position, length), in order, from this thread; `workers` threads fetch (read, check,
    decompress) the chunks ahead of it, at most AHEAD_PER_WORKER each: the drive is written
    while the next chunks are decompressed, and in order, so its writes can be merged."""
    index = src.index
    meter.begin_area(src.label, src.write_bytes())
    todo = [i for i, k in enumerate(index.kinds) if k in (Kind.DATA, Kind.ZERO)]
    pool = ThreadPoolExecutor(max_workers=workers)
    fetched: deque[tuple[int, Future[bytes] | None]] = deque()  # None: a ZERO chunk

    def write(keep: int) -> None:  # the oldest, until `keep` are left
        while len(fetched) > keep:
            i, fut = fetched.popleft()
            start, length = index.span(i)
            if fut is None:
                zero(start, length)
            else:
                put(fut.result(), start)
            meter.advance(length)

    try:
        for i in todo:
            fetched.append((i, pool.submit(src.fetch, i) if index.kinds[i] == Kind.DATA else None))
            write(workers * AHEAD_PER_WORKER)
        write(0)
    except BaseException:  # a failure, a cancel, Ctrl-C: stop now, not after the whole area
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


AHEAD_PER_WORKER = 4  # chunks fetched ahead of the writes, per worker
DIRECT_RUN = 16 << 20  # bytes of consecutive chunks written in one O_DIRECT write


class _DirectWriter:
    """The chunks of an area written to the drive with O_DIRECT, consecutive ones merged into
    writes of up to DIRECT_RUN bytes: through the page cache, writing a drive costs about
    twice as long (copying, then writeback throttling the writer; measured on a loop device,
    issue 19), and the flush after the area writes back nothing. A piece off the alignment
    O_DIRECT needs, and every piece when the descriptor cannot take O_DIRECT (a file on tmpfs),
    goes through the cache as before. Only one thread writes (write_chunks)."""

    def __init__(self, fd: int, base: int):
        self.fd, self.base = fd, base
        self.align = max(4096, blockdev.logical_sector_size(fd))
        self.flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        self.direct = True
        self.buf = mmap.mmap(-1, DIRECT_RUN)
        self.start, self.held = 0, 0  # the run in buf: drive offset, bytes

    def __enter__(self) -> _DirectWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        try:
            if error is None:
                self._flush()
        finally:
            self._set_direct(False)
            self.buf.close()

    def put(self, data: bytes, pos: int) -> None:
        at = self.base + pos
        if self.held and (at != self.start + self.held or self.held + len(data) > DIRECT_RUN):
            self._flush()
        if len(data) > DIRECT_RUN or at % self.align:
            self._flush()
            self._set_direct(False)
            blockdev.write_all(self.fd, data, at)
            return
        if not self.held:
            self.start = at
        self.buf[self.held : self.held + len(data)] = data
        self.held += len(data)

    def zero(self, pos: int, length: int) -> None:
        self._flush()
        self._set_direct(False)  # zero_range may write from an unaligned buffer
        blockdev.zero_range(self.fd, self.base + pos, length)

    def _flush(self) -> None:
        if not self.held:
            return
        with memoryview(self.buf) as mv, mv[: self.held] as run:
            self._set_direct(self.held % self.align == 0)
            blockdev.write_all(self.fd, run, self.start)
        self.held = 0

    def _set_direct(self, on: bool) -> None:
        if not self.direct:
            return
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self.flags | os.O_DIRECT if on else self.flags)
        except OSError:
            self.direct = False  # no O_DIRECT here: every write through the cache


def _resize_in_place(target: str, src: AreaSource, place: Placement) -> str:
    from rescue.filesystems.resize import resizer

    fs = src.fs or {}
    with loop_attached(target, offset=place.offset, size=place.size) as dev:
        return resizer(fs["type"]).resize(dev, place.size, label=fs.get("label"), uuid=fs.get("uuid"))


def _write_shrunk(
    target: str, src: AreaSource, place: Placement, meter: Meter, workers: int, log: JobLog, scratch_dir: str
) -> None:
    """Shrink on the target itself (model/scratch.py says why): the filesystem's bytes inside
    the new partition go straight to their final place, those past its end to a scratch file
    in scratch_dir; the resize tool sees both as one device of the old size (hw/splitdev.py)
    and moves the tail into the partition. Nothing past the new partition's end is touched."""
    from rescue.filesystems.resize import resizer
    from rescue.hw.splitdev import split_device

    fs = src.fs or {}
    filesystem = resizer(fs["type"])
    filesystem.shrink_check(None, place.size, current_size=src.size)

    def write_into(sd) -> None:
        def zero(pos: int, n: int) -> None:  # past the new end the scratch file is a hole already
            if pos < place.size:
                sd.write(pos, bytes(min(n, place.size - pos)))

        write_chunks(src, lambda data, pos: sd.write(pos, data), zero, meter, workers)

    log(
        f"{src.label}: shrinking {fmt_bytes(src.size)} -> {fmt_bytes(place.size)} on the target, "
        f"scratch in {scratch_dir}"
    )
    with split_device(target, place.offset, place.size, src.size, scratch_dir, write_into) as sd:
        log(filesystem.resize(sd.path, place.size, label=fs.get("label"), uuid=fs.get("uuid")))
        peak = sd.scratch_bytes()
    log(f"{src.label}: shrunk in place; scratch space used {fmt_bytes(peak)}")

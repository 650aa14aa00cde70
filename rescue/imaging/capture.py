"""Capture: a whole drive into a repository as an image.

Plan first (which areas, which filesystems, which byte ranges are in use), then read only chunks
that hold used bytes, zero the free blocks inside them, and hand them to a thread pool that
hashes, compresses and stores what the repository does not hold yet."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from rescue import __version__
from rescue.config import CHUNK_SIZE
from rescue.errors import Cancelled, DeviceError, RepoError, RescueError
from rescue.filesystems import identify, windows
from rescue.filesystems.badfiles import annotate, write_badfiles
from rescue.filesystems.base import FsInfo, Volume
from rescue.hw import blockdev, leftovers
from rescue.hw.badread import TolerantReader
from rescue.hw.partitions import read_layout
from rescue.imaging import resume
from rescue.imaging.apply import AreaFacts
from rescue.imaging.chunkread import UsedChunkReader, keep_only, patch, used_chunks, used_parts
from rescue.imaging.log import JobLog
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.verify import chunk_where
from rescue.model import windows as win
from rescue.model.extents import Extent, total, with_edges
from rescue.model.gaps import gaps
from rescue.model.layout import DiskLayout
from rescue.repo import chunks
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import (
    FSUUID_RE,
    GPT_NAME_UNITS,
    MAX_TEXT,
    Area,
    Manifest,
    area_label,
    printable,
    unsafe_char,
    validate_fs,
    validate_layout,
)
from rescue.repo.store import NoSpaceError, Repository, check_name, now_iso, write_error


@dataclass
class AreaPlan:
    name: str
    offset: int
    size: int
    partition: int | None = None
    fs: FsInfo | None = None
    used: list[Extent] | None = None  # None: image every byte
    windows: dict = field(default_factory=dict)  # Windows facts kept with fs (filesystems/windows.py)

    def fs_facts(self) -> dict | None:
        return {**vars(self.fs), **self.windows} if self.fs is not None else None

    @property
    def label(self) -> str:
        return area_label(self.name, self.fs.type if self.fs else None)

    def read_bytes(self) -> int:
        return self.size if self.used is None else total(self.used)


@dataclass
class CapturePlan:
    source: str
    layout: DiskLayout
    areas: list[AreaPlan] = field(default_factory=list)

    def read_bytes(self) -> int:
        return sum(a.read_bytes() for a in self.areas)

    def area_facts(self) -> list[AreaFacts]:
        """What the planner needs of each area (as restore has them from an image)."""
        return [AreaFacts(a.name, a.partition, a.size, a.fs_facts(), a.used) for a in self.areas]


@dataclass
class CaptureResult:
    name: str
    bytes_read: int
    data_bytes: int
    stored_bytes: int
    seconds: float
    log_path: str
    sectors_lost: int = 0  # unreadable sectors (zero-filled, listed in badsectors.map)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (drive offset, bytes)


BAD_MAP = "badsectors.map"
TEMP_PATTERNS = ["chunks/*/.*.tmp", "images/*/.*.tmp", ".*.tmp"]  # rescue.repo.files.temp_name's names


def plan_capture(source: str, log=lambda m: None) -> CapturePlan:
    """Which areas to image and which bytes of each are in use. Reads metadata only."""
    layout = read_layout(source)
    plan = CapturePlan(source, layout)
    if layout.table == "none":  # a filesystem on the bare drive, or unknown content: one area
        spans = [("disk", None, Volume(source, 0, layout.size))]
    else:
        # the bytes outside partitions (boot code in the gap after the MBR, ...), whole
        plan.areas += [AreaPlan(g.name, g.offset, g.size) for g in gaps(layout)]
        spans = [
            (f"p{p.number}", p.number, Volume(source, p.offset(layout.sector_size), p.size(layout.sector_size)))
            for p in layout.data_partitions()
        ]
    for name, number, vol in spans:
        area = AreaPlan(name, vol.offset, vol.size, partition=number)
        try:
            found = identify(vol)  # facts and used-block map from one read of the metadata
            area.fs = found.info
            if found.extents is not None:
                area.used = with_edges(found.extents, vol.size)
        except RescueError as e:
            # A damaged filesystem is still imaged, whole: losing bytes is worse than time.
            log(f"{area.name}: cannot map used blocks ({e}); imaging every byte")
            area.used = None
        _windows_facts(area, vol, layout, log)
        log(
            f"{area.name}: {area.fs.type if area.fs else 'no filesystem'}, "
            f"{fmt_bytes(area.read_bytes())} of {fmt_bytes(area.size)} to read"
            + ("" if area.used is not None else " (whole area)")
        )
        plan.areas.append(area)
    return plan


def _windows_facts(area: AreaPlan, vol: Volume, layout: DiskLayout, log) -> None:
    """BitLocker (imaged whole: its contents are ciphertext without the key), a Windows BCD
    and what it names, a hibernated NTFS (imaged whole, as it is, and never resized)."""
    try:
        if area.fs is None and windows.is_bitlocker(vol):
            area.fs, area.used = windows.bitlocker_info(), None
            log(f"{area.name}: BitLocker: imaged whole, every byte (encrypted: its free space cannot be told apart)")
            return
        area.windows = windows.examine(vol, area.fs)
    except (RescueError, OSError) as e:
        log(f"{area.name}: Windows boot facts not read ({e})")
        return
    if area.windows.get("hibernated"):
        area.used = None
        log(
            f"WARNING: {area.name}: {area.windows['hibernated']}: imaged whole, as it is; it cannot be "
            f"resized on restore: {win.HIBERNATED_FIX}"
        )
    for ref in area.windows.get("bcd", []):
        log(f"{area.name}: Windows BCD {win.ref_words(ref, layout)}")


DEFER_BYTES = 64 << 20  # chunks held back for the reader's later passes, at the most


class _Storer:
    """Hash, compress and store chunks on worker threads. One compressor per thread
    (a ZstdCompressor is not thread-safe)."""

    def __init__(self, repo: Repository, level: int):
        self.repo, self.level = repo, level
        self.local = threading.local()
        self.lock = threading.Lock()
        self.seen: set[bytes] = set()
        self.stored_bytes = 0
        self.new_chunks = 0

    def store(self, data: bytes) -> bytes:
        dig = self.repo.chunk_id(data)  # SHA-256, or a keyed MAC in an encrypted repository
        with self.lock:
            known = dig in self.seen
            self.seen.add(dig)
        if known or self.repo.has_chunk(dig):
            return dig
        cctx = getattr(self.local, "cctx", None)
        if cctx is None:
            cctx = self.local.cctx = zstandard.ZstdCompressor(level=self.level)
        added = self.repo.write_chunk(dig, chunks.encode(data, cctx))
        with self.lock:
            self.stored_bytes += added
            self.new_chunks += 1 if added else 0
        return dig


def capture(
    source: str,
    repo_path: str | Path,
    name: str,
    *,
    level: int = 3,
    threads: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    retries: int = 1,
    read_timeout: float = 30.0,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
) -> CaptureResult:
    """Image `source`. Unreadable sectors do not stop it: they are zero-filled, retried
    `retries` times at the end (ddrescue's phases), recorded in badsectors.map beside the image
    and counted in the result. A capture that is stopped (cancelled, interrupted, killed, or
    the drive stopped answering) keeps what it read; the same capture again (same drive,
    repository and name) resumes it (rescue.imaging.resume)."""
    check_name(name)
    repo = Repository.open_or_create(repo_path, chunk_size)
    try:
        return _capture(source, repo, name, level, threads, retries, read_timeout, progress, cancel)
    finally:
        repo.close()


def _capture(
    source: str,
    repo: Repository,
    name: str,
    level: int,
    threads: int | None,
    retries: int,
    read_timeout: float,
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> CaptureResult:
    _check_source(source, str(repo.path) if repo.path else None)
    started = time.monotonic()
    workers = threads or os.cpu_count() or 1
    # A run killed while writing leaves only temporary files the next command may remove
    # (rescue.hw.leftovers, once it can take the writer's lock: nobody writes then). On a
    # server, a put is atomic: nothing half-written is left there.
    temps = (
        leftovers.temp_files(repo.path, TEMP_PATTERNS, repo.path / "lock")
        if repo.path is not None
        else contextlib.nullcontext()
    )
    with repo.writer_lock(), temps, _Undo(repo, name) as undo:
        log = undo.log
        log(f"rescue {__version__}: capturing {source} into {repo.where} as {name}")
        plan = plan_capture(source, log)
        _check_capturable(plan, log)
        meter = undo.meter = Meter("capture", plan.read_bytes(), progress, cancel)
        storer = _Storer(repo, level)
        with TolerantReader(source, retries=retries, timeout=read_timeout, check=meter.check_cancel) as reader:
            facts = _source_facts(source, reader.fd, plan.layout)
            fs_facts = [a.fs_facts() for a in plan.areas]
            checkpoint = undo.checkpoint = resume.begin(
                repo, name, facts, plan.areas, fs_facts, reader, undo.earlier, log
            )
            deferred: dict[tuple[int, int], bytes] = {}
            chunk_reader = UsedChunkReader(reader, repo.chunk_size)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                indexes = [
                    _capture_area(chunk_reader, a, ap, repo, storer, pool, meter, log, workers, deferred, checkpoint)
                    for a, ap in enumerate(plan.areas)
                ]
                lost = _finish_bad_sectors(
                    reader, name, plan, indexes, repo, storer, pool, deferred, meter, log, workers, checkpoint
                )
            bad = list(reader.map.bad_ranges())
            if bad:
                repo.write_image_file(name, BAD_MAP, reader.mapfile().encode())
        areas = [_area_record(ap, index, repo, name) for ap, index in zip(plan.areas, indexes)]
        meter.finish()
        if repo.path is not None:
            _sync(repo.path)
        seconds = time.monotonic() - started
        data_bytes = sum(a.stats["data_bytes"] for a in areas)
        manifest = Manifest(
            name=name,
            created=now_iso(),
            rescue_version=__version__,
            chunk_size=repo.chunk_size,
            hash="sha256",
            source=facts,
            layout=plan.layout,
            areas=areas,
            stats={
                "read_bytes": meter.done,
                "data_bytes": data_bytes,
                "stored_bytes": storer.stored_bytes,
                "new_chunks": storer.new_chunks,
                "seconds": round(seconds, 3),
                "sectors_lost": lost,
                "bad_map": BAD_MAP if bad else None,
            },
        )
        log(
            f"done: read {fmt_bytes(meter.done)}, data {fmt_bytes(data_bytes)}, "
            f"stored {fmt_bytes(storer.stored_bytes)} new in {storer.new_chunks} chunks, "
            f"{lost} unreadable sectors, {seconds:.1f} s"
        )
        undo.save_log()
        repo.commit_manifest(manifest)
        resume.discard(repo, name)
        if bad:
            _name_damaged_files(source, plan, bad, repo, name, log)
    return CaptureResult(name, meter.done, data_bytes, storer.stored_bytes, seconds, undo.log_where, lost, bad)


def _capture_area(
    chunk_reader: UsedChunkReader,
    a: int,
    ap: AreaPlan,
    repo: Repository,
    storer: _Storer,
    pool: ThreadPoolExecutor,
    meter: Meter,
    log: JobLog,
    workers: int,
    deferred: dict[tuple[int, int], bytes],
    checkpoint: resume.Checkpoint,
) -> Index:
    """Read and store one area's used chunks. A chunk whose bad sectors the reader left for
    its later passes is kept in `deferred` (within DEFER_BYTES) instead of being stored
    twice: once with holes now, once completed after finish(). Chunks an interrupted run
    stored are taken as they are."""
    index = Index.empty(repo.chunk_size, ap.size)
    checkpoint.indexes.append(index)
    settled = checkpoint.settled.get(ap.name, {})
    zero = bytes(repo.chunk_size)
    reader = chunk_reader.reader
    pending: list[tuple[Index, int, Future]] = []
    meter.begin_area(ap.label, ap.read_bytes())
    todo = used_chunks(ap, repo.chunk_size)  # Index.empty() marks every other chunk UNUSED
    chunk_reader.read_ahead(ap, [i for i in todo if i not in settled])
    for i in sorted(settled.keys() | todo):
        start, length = index.span(i)
        if i in settled:
            index.set(i, *settled[i])
            meter.advance(resume.used_bytes(ap, start, length))
            continue
        checkpoint.maybe_save()
        got = chunk_reader.read(ap, start, length)
        if got is None:
            continue  # Index.empty() marks every chunk UNUSED
        data = got.data
        meter.advance(got.used)
        if (
            got.bad
            and reader.unsettled(ap.offset + start, ap.offset + start + length)
            and len(deferred) * repo.chunk_size < DEFER_BYTES
        ):
            deferred[(a, i)] = data
        elif got.bad and sum(n for _, n in got.bad) >= length:
            index.set(i, Kind.UNREADABLE)
        elif data == zero[:length]:
            index.set(i, Kind.ZERO)
        else:
            pending.append((index, i, pool.submit(storer.store, data)))
            _settle(pending, workers * 3)
    _settle(pending, 0)
    counts = {k.name.lower(): index.kinds.count(k) for k in Kind}
    log(
        f"{ap.name}: {counts['data']} data, {counts['zero']} zero, {counts['unused']} unused, "
        f"{counts['unreadable']} unreadable chunks"
    )
    return index


def _settle(pending: list[tuple[Index, int, Future]], limit: int) -> None:
    """Record the digests of stored chunks, oldest first, until at most `limit` stores are
    in flight: each one holds a whole chunk in memory."""
    while len(pending) > limit:
        index, i, fut = pending.pop(0)
        index.set(i, Kind.DATA, fut.result())


def _finish_bad_sectors(
    reader: TolerantReader,
    name: str,
    plan: CapturePlan,
    indexes: list[Index],
    repo: Repository,
    storer: _Storer,
    pool: ThreadPoolExecutor,
    deferred: dict[tuple[int, int], bytes],
    meter: Meter,
    log: JobLog,
    workers: int,
    checkpoint: resume.Checkpoint,
) -> int:
    """ddrescue's later passes over what the first pass could not read, then store the
    deferred chunks and, completed, the chunks already stored whose bytes were recovered.
    Returns the sectors still unreadable."""
    if not reader.sectors_lost:
        return 0
    log(f"first pass done with {reader.sectors_lost} unreadable sectors; trimming, scraping, retrying")

    def step(phase: str, done: int, total: int) -> None:
        meter.check_cancel()
        checkpoint.maybe_save()

    recovered = reader.finish(step)
    touched: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    for offset, data in recovered:
        for a, ap in enumerate(plan.areas):
            lo, hi = max(offset, ap.offset), min(offset + len(data), ap.offset + ap.size)
            if lo < hi:
                cs = indexes[a].chunk_size
                for i in range((lo - ap.offset) // cs, (hi - 1 - ap.offset) // cs + 1):
                    touched.setdefault((a, i), []).append((offset, data))
    pending: list[tuple[Index, int, Future]] = []
    for a, i in sorted(set(touched) | set(deferred)):
        ap, index = plan.areas[a], indexes[a]
        start, length = index.span(i)
        parts = used_parts(ap, start, length)
        if not parts:
            continue
        base = ap.offset + start
        if (a, i) in deferred:
            chunk = deferred.pop((a, i))
        elif index.kinds[i] == Kind.DATA:
            chunk = repo.read_chunk(index.digests[i], chunk_where(name, ap.name, i, start), length)
        else:
            chunk = bytes(length)
        patched = keep_only(patch(chunk, base, touched.get((a, i), [])), parts)
        if sum(n for _, n in reader.map.missing_ranges(base, base + length)) >= length:
            index.set(i, Kind.UNREADABLE)
        elif patched == bytes(length):
            index.set(i, Kind.ZERO)
        else:
            pending.append((index, i, pool.submit(storer.store, patched)))
            _settle(pending, workers * 3)
    _settle(pending, 0)
    lost = reader.sectors_lost
    st = reader.stats
    log(
        f"bad sectors: {lost} unreadable ({fmt_bytes(lost * reader.sector_size)}), "
        f"{len(touched)} chunks completed by the later passes; {st.reads} reads "
        f"({st.read_errors} failed, {st.timeouts} timed out)"
    )
    return lost


def _name_damaged_files(
    source: str, plan: CapturePlan, bad: list[tuple[int, int]], repo: Repository, name: str, log: JobLog
) -> None:
    """badfiles.json, once the image is safely committed: the lookup reads the failing
    drive again through its filesystem tools, and whatever happens there must not cost the
    image."""
    try:
        write_badfiles(repo, name, annotate(source, plan.areas, bad, log))
    except Exception as e:  # noqa: BLE001 - best effort by design
        log(f"could not name the files hit by bad sectors: {e}")


def _area_record(ap: AreaPlan, index: Index, repo: Repository, name: str) -> Area:
    blob = index.to_bytes()
    repo.write_image_file(name, f"{ap.name}.idx", blob)
    counts = {k.name.lower(): index.kinds.count(k) for k in Kind}
    data_bytes = sum(index.span(i)[1] for i, k in enumerate(index.kinds) if k == Kind.DATA)
    return Area(
        name=ap.name,
        offset=ap.offset,
        size=ap.size,
        index=f"{ap.name}.idx",
        index_sha256=hashlib.sha256(blob).hexdigest(),
        partition=ap.partition,
        fs=ap.fs_facts(),
        stats={
            **counts,
            "data_bytes": data_bytes,
            "mapped_bytes": ap.read_bytes(),
            "map": "whole" if ap.used is None else (ap.fs.map_source if ap.fs else "map"),
        },
    )


def _source_facts(source: str, fd: int, layout: DiskLayout) -> dict:
    facts = {
        "path": source,
        "size": layout.size,
        "logical_sector_size": blockdev.logical_sector_size(fd),
        "physical_sector_size": blockdev.physical_sector_size(fd),
        "model": "",
        "serial": "",
        "bus": "",
    }
    try:
        from rescue.hw.devices import drive_info

        d = drive_info(source)
        facts.update(model=d.model or "", serial=d.serial or "", bus=d.bus or "")
    except (ImportError, RescueError):
        pass
    return facts


def _check_capturable(plan: CapturePlan, log: JobLog) -> None:
    """Refuse, before a byte is read, a drive whose image no restore would accept (the checks
    every manifest passes when it is loaded): a table with overlapping or out-of-range
    partitions. Text that could act on a terminal (a control character in a GPT partition name
    or a filesystem label) is kept with those characters visibly replaced, and a filesystem UUID
    of no known shape is left out, each logged: a damaged drive is still imaged."""
    for p in plan.layout.partitions:
        if unsafe_char(p.name) is not None:
            p.name = printable(p.name)[:GPT_NAME_UNITS]
            log(f"partition {p.number}: its name holds control characters; kept as {p.name!r}")
    for ap in plan.areas:
        fs = ap.fs
        if fs is None:
            continue
        if fs.label is not None and unsafe_char(fs.label) is not None:
            ap.fs = fs = dataclasses.replace(fs, label=printable(fs.label)[:MAX_TEXT])
            log(f"{ap.name}: its label holds control characters; kept as {fs.label!r}")
        if fs.uuid is not None and not FSUUID_RE.match(fs.uuid):
            log(f"{ap.name}: its filesystem UUID {printable(repr(fs.uuid))[:80]} has no known shape; left out")
            ap.fs = fs = dataclasses.replace(fs, uuid=None)
    where = f"{plan.source} cannot be imaged"
    validate_layout(plan.layout, where)
    for ap in plan.areas:
        validate_fs(ap.fs_facts(), f"{where}: area {ap.name}")


class _Undo:
    """A capture that fails takes back what it wrote: its new chunk files (no other image
    refers to them) and its image's files but the log, which says what happened; on a full
    drive the log goes too, and the failure becomes one line naming the space the capture
    needs. Earlier images are never touched, and an image whose manifest was written is
    complete: nothing is undone then."""

    def __init__(self, repo: Repository, name: str):
        self.repo, self.name = repo, name
        self.meter: Meter | None = None
        self.checkpoint: resume.Checkpoint | None = None

    def __enter__(self) -> _Undo:
        self.earlier = resume.load(self.repo, self.name)  # an interrupted capture to go on with
        if self.earlier is None:
            self.repo.start_image(self.name)
        # A local repository keeps the log beside the image as it grows (what an interrupted
        # capture leaves says how far it got); on a server, or sealed in an encrypted
        # repository (a log in clear would tell the drive's model, layout and errors), it is
        # put with the image.
        beside = self.repo.path is not None and not self.repo.encrypted
        local = self.repo.image_dir(self.name) / "log.txt" if beside else None
        self.log = JobLog(local)
        self.log_where = str(local) if local else f"{self.repo.where}/{self.repo.image_key(self.name, 'log.txt')}"
        return self

    def save_log(self) -> None:
        """Put the log of a capture into a remote or encrypted repository (a local one has
        it already)."""
        if self.repo.path is None or self.repo.encrypted:
            with contextlib.suppress(RescueError):
                text = "".join(f"{line}\n" for line in self.log.lines)
                self.repo.write_image_file(self.name, "log.txt", text.encode())

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None or self._committed():
            return
        if isinstance(error, (KeyboardInterrupt, Cancelled, DeviceError)) and self._keep(error):
            return
        failure: BaseException = error
        if isinstance(error, OSError):  # a write outside Repository's own methods, or the source
            inside = self.repo.path is not None and str(error.filename or "").startswith(str(self.repo.path))
            failure = write_error(self.repo.where, "write the image", error) if inside else _os_error(error)
        stored = self.repo.written_bytes + self.repo.failed_bytes  # chunks for the bytes read so far
        self.repo.undo_chunks()
        full = isinstance(failure, NoSpaceError)
        if not full:
            why = str(failure) or type(failure).__name__
            self.log(f"capture failed, its new chunks were removed: {why}")
            self.save_log()
        self.repo.discard_image(self.name, keep=() if full else ("log.txt",))
        if full:
            raise RepoError(self._space(stored)) from None
        if failure is not error:
            raise failure from None

    def _keep(self, error: BaseException) -> bool:
        """A capture stopped by the person or by the source drive keeps what it read, for the
        same capture to resume; raises the error again with that said, or returns False when
        there is nothing to keep."""
        state = self.earlier
        if self.checkpoint is not None:
            try:
                state = self.checkpoint.save()
            except RescueError as e:
                self.log(f"could not save where the capture got to: {e}")
        if state is None:
            return False
        self.repo.forget_chunks()
        why = "capture interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
        kept = (
            f"{why}; {state.fraction:.0%} of {self.name} is read and kept: the same capture "
            f"(same drive, repository and name) resumes it, rescue prune removes it"
        )
        self.log(kept)
        self.save_log()
        raise (DeviceError if isinstance(error, DeviceError) else Cancelled)(kept) from None

    def _committed(self) -> bool:
        """Whether the image's manifest was written; a server that stopped answering is taken
        for no (the failure is the server's, said by the error that got here)."""
        try:
            return self.repo.has_manifest(self.name)
        except RescueError:
            return False

    def _space(self, stored: int) -> str:
        """How much a full drive lacks: the chunks this capture stored or tried to store for
        what it read before it stopped, scaled to all it had to read (compression and
        deduplication as so far)."""
        free = self.repo.storage.free_bytes() or 0
        total = self.meter.total if self.meter else 0
        done = self.meter.done if self.meter else 0
        need = round(stored * total / done) if done else total
        lacking = need - free
        amount = f"about {fmt_bytes(lacking)} more than" if lacking > 0 else "more than"
        return (
            f"{self.repo.where}: the drive is full: capturing {self.name} needs {amount} the "
            f"{fmt_bytes(free)} free (about {fmt_bytes(need)} of new chunks for {fmt_bytes(total)} "
            f"to read); nothing of {self.name} was kept, earlier images are intact"
        )


def _os_error(e: OSError) -> RescueError:
    where = f" ({e.filename})" if e.filename else ""
    return DeviceError(f"capture failed: {e.strerror or e}{where}")


def _check_source(source: str, repo_path: str | None) -> None:
    from rescue.hw.safety import check_source

    check_source(source, repo_path=repo_path)


def _sync(path: Path) -> None:
    """Chunk files durable before the manifest that references them is written."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).syncfs(fd)
        except (OSError, AttributeError):
            os.sync()
    finally:
        os.close(fd)

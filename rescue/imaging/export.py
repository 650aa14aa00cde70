"""Export: an image as a virtual machine's disk file (raw, qcow2, VMDK, VHDX), of the image's
size or another (--size): physical to virtual, a dying machine kept alive in a VM.

An export is a restore onto a drive that does not exist yet. The disk is planned exactly as
a restore onto a drive of that size (the same planner, layout policies, resizing and boot
steps: imaging/restore.plan_onto), and written by the same code (imaging/apply.execute)
through a loop device over a new sparse file of the job's own; a qcow2, VMDK or VHDX disk is
then converted from that file by `qemu-img convert` (holes and zeros stay unallocated) and the
raw file removed. Why not write the virtual format directly: every step of a restore (the
table by pyparted, resize tools, GRUB and EFI fixes) works on a block device, and the kernel
has no nbd here, nor on many rescue machines.

What differs from a restore onto a drive, and why:
- No boot entry in this machine's UEFI variables: the disk is for another (virtual) machine.
  EFI/BOOT/BOOTX64.EFI is still added when the ESP has only a vendor loader: a VM's fresh
  firmware finds nothing else.
- No pre-verify pass: nothing is overwritten, and every chunk is still checked before its
  bytes are written; a damaged image fails the export, which leaves no file.
- The safety rule asked is the one about files: the new file may not lie inside the
  repository (rescue.hw.safety, in its own words). The loop device is the job's own, over the
  job's own file: the rule that refuses a loop device stored on the repository's filesystem
  protects a drive someone named, and an export next to the repository on the same USB disk
  is what was asked for; the free space it needs is checked before anything is written.
- Nothing appears under the output's name until the disk is complete: the job writes
  `.NAME.*` files beside it, and moves the finished one into place (never over an existing
  file unless --force). Its temporary files, its loop device and `qemu-img` are recorded in
  rescue.hw.leftovers, so a killed export leaves nothing behind once the next command runs."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import DeviceError, RefusedError, RescueError, UsageError
from rescue.hw import leftovers
from rescue.hw.run import run
from rescue.imaging.apply import Job, execute
from rescue.imaging.log import JobLog, log_file
from rescue.imaging.progress import Meter, ProgressCallback, fmt_bytes, no_progress
from rescue.imaging.restore import ImageFacts, RestorePlan, TargetFacts, plan_onto
from rescue.imaging.verify import image_source, load_indexes
from rescue.repo.index import Index
from rescue.repo.manifest import Manifest
from rescue.repo.store import Repository

FORMATS = {"img": "raw", "raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx"}  # by file extension
SECTOR = 512  # what a virtual disk's sectors are (QEMU, VMware, Hyper-V all default to it)
SLACK = 64 << 20  # free space kept besides the data: the tables, and what a grow writes
SLACK_PER_BYTE = 256  # ... and one byte in this many of the disk's size (new groups' metadata)


@dataclass
class ExportPlan:
    """What an export writes: the layout, as a restore onto a drive of `size` would write it
    (`restore` is that RestorePlan, shown by planview like any), and in which format."""

    image: str
    output: str
    fmt: str  # "raw", "qcow2", "vmdk", "vhdx"
    restore: RestorePlan
    data: int  # bytes of the image that hold data: what the disk file takes, about
    force: bool = False  # an existing output file is replaced

    @property
    def size(self) -> int:
        return self.restore.target_size


@dataclass
class ExportResult:
    output: str
    fmt: str
    size: int  # the disk's size as the VM sees it
    allocated: int  # bytes the file takes on disk
    seconds: float
    log_path: str
    warnings: list[str] = field(default_factory=list)  # boot steps that failed (as a restore's)


def disk_format(output: str) -> str:
    """The format the output's extension names; a UsageError listing them otherwise."""
    ext = output.rsplit(".", 1)[-1].lower() if "." in os.path.basename(output) else ""
    if ext not in FORMATS:
        names = ", ".join(f".{e}" for e in FORMATS)
        raise UsageError(f"{output}: unknown disk format; the file name must end in one of {names}")
    return FORMATS[ext]


def space_needed(data: int, size: int, fmt: str) -> int:
    """Free bytes an export needs: the raw file's data, and for another format the converted
    copy beside it until the raw file is removed; plus what growing writes. Never the disk's
    size: both files are sparse."""
    return data * (1 if fmt == "raw" else 2) + SLACK + size // SLACK_PER_BYTE


def plan_export(
    image: ImageFacts,
    name: str,
    output: str,
    size: int | None,
    policy: str,
    free: int,
    *,
    scratch_dir: str | None = None,
    fresh_ids: bool = False,
    force: bool = False,
) -> ExportPlan:
    """The export of image `name` into the file `output` of `size` bytes (None: the source
    drive's size), refused in one line when the name has no known format, the file exists
    (without `force`) or `free` bytes are too few. Writes nothing; a plan that does not fit
    the size is returned (plan.restore.fits False) and refused when executed."""
    fmt = disk_format(output)
    if os.path.lexists(output) and not force:
        raise RefusedError(f"{output} exists already: choose another name, or pass --force to replace it")
    if os.path.isdir(output):
        raise RefusedError(f"{output} is a directory")
    size = image.layout.size if size is None else size
    if size <= 0 or size % SECTOR:
        raise UsageError(f"the disk size must be a positive multiple of {SECTOR} bytes, not {size}")
    facts = TargetFacts(output, size, SECTOR, None, uefi=False)
    restore = plan_onto(name, image.layout, image.areas, facts, policy, image.write, scratch_dir, fresh_ids=fresh_ids)
    data = sum(e.length for a in image.areas for e in (a.held if a.held is not None else []))
    data += sum(a.size for a in image.areas if a.held is None)
    need = space_needed(data, size, fmt)
    if free < need:
        where = os.path.dirname(os.path.abspath(output))
        raise RefusedError(
            f"not enough free space in {where} for the {fmt} disk: it needs {fmt_bytes(need)} "
            f"(the image's data{'' if fmt == 'raw' else ' twice, raw and converted'}), there is {fmt_bytes(free)}"
        )
    return ExportPlan(name, output, fmt, restore, data, force)


def export(
    repo: Repository,
    plan: ExportPlan,
    *,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> ExportResult:
    """Carry out `plan`: the raw disk written through a loop device over a new sparse file,
    converted when the format asks, moved into place. Whatever fails or is cancelled, no
    file of the job's remains and the output is untouched."""
    started = time.monotonic()
    plan.restore.check(TargetFacts(plan.output, plan.size, SECTOR, None, uefi=False))  # fits, scratch
    manifest, indexes = load_indexes(repo, plan.image)
    where = os.path.dirname(os.path.abspath(plan.output))
    base = os.path.basename(plan.output)
    log = JobLog(_log_path())
    log(f"exporting image {plan.image} from {repo.where} to {plan.output} ({plan.fmt}, {fmt_bytes(plan.size)})")
    temps: list[tuple[Path, str]] = []  # (path, leftovers key) of every file made, newest last
    try:
        raw = _new_file(where, f".{base}.", ".raw", plan.size, temps)
        _check_place(raw, plan.output, str(repo.path) if repo.path else None)
        warnings = _write_raw(repo, plan, manifest, indexes, raw, log, progress, cancel, threads)
        done = raw
        if plan.fmt == "raw":  # chunks are written whole: the free blocks zeroed in them, too
            run(["fallocate", "--dig-holes", str(raw)], error=DeviceError, timeout=None)
        else:
            out = _new_file(where, f".{base}.", f".{plan.fmt}", 0, temps)
            _convert(raw, out, plan.fmt, Meter("convert", plan.data, progress, cancel))
            log(f"converted to {plan.fmt}")
            done = out
        _publish(done, plan.output, plan.force)
    except OSError as e:  # the output's folder: full, a file too large for FAT, gone
        log(f"FAILED: {e}; the unfinished files were removed")
        raise DeviceError(f"cannot write the disk file in {where}: {e.strerror}") from None
    except BaseException:
        log("FAILED: the unfinished files were removed")
        raise
    finally:  # the published file is no longer under its temporary name
        for path, key in reversed(temps):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            leftovers.forget(key)
    seconds = time.monotonic() - started
    allocated = os.stat(plan.output).st_blocks * 512
    log(f"done: {plan.output}, {fmt_bytes(allocated)} on disk, in {seconds:.1f} s")
    return ExportResult(plan.output, plan.fmt, plan.size, allocated, seconds, str(log.path or ""), warnings)


def _new_file(where: str, prefix: str, suffix: str, size: int, temps: list[tuple[Path, str]]) -> Path:
    """A new sparse file of `size` bytes beside the output, recorded in rescue.hw.leftovers
    and in `temps`; with the permissions any program gives a file the person asked for (the
    umask's), not a scratch file's."""
    path, fd, key = leftovers.make_file(where, prefix, suffix, "unfinished disk file")
    temps.append((path, key))
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


def _log_path() -> Path | None:
    """In /run/rescue: the repository may be read-only, and the output's folder is the
    person's (a log file there would be one more file they did not ask for)."""
    return log_file("export", [])


def _check_place(raw: Path, output: str, repo_path: str | None) -> None:
    """The safety rule about files (rescue.hw.safety.check_target, on the job's new file
    beside the output): not inside the repository. Said of the file the person named."""
    from rescue.hw.safety import check_target

    try:
        check_target(str(raw), repo_path=repo_path, role="export")
    except RefusedError as e:
        raise RefusedError(str(e).replace(str(raw), output)) from None


def _write_raw(
    repo: Repository,
    plan: ExportPlan,
    manifest: Manifest,
    indexes: dict[str, Index],
    raw: Path,
    log: JobLog,
    progress: ProgressCallback,
    cancel: threading.Event | None,
    threads: int | None,
) -> list[str]:
    """The restore plan's actions, executed onto a loop device over `raw`, as restore does
    (imaging/restore.restore without its safety check of the drive and its pre-verify: see
    the module's docstring). Returns the warnings of the boot steps."""
    from rescue.hw.mounts import loop_attached

    meter = Meter("export", plan.restore.write_bytes, progress, cancel)
    sources = {a.name: image_source(repo, plan.image, a, indexes[a.name]) for a in manifest.areas}
    with loop_attached(raw) as dev:
        job = Job(
            dev,
            manifest.layout,
            plan.restore.layout,
            plan.restore.placements,
            sources,
            meter,
            threads or os.cpu_count() or 1,
            log,
            plan.restore.scratch_dir(),
            kind="export",
            source=plan.image,
        )
        try:
            warnings, _ = execute(job, plan.restore.actions)
        except RescueError as e:
            raise _not_partly_written(e, dev) from None
        finally:
            _drop_marker(dev)
            # The partitions parted told the kernel of outlive the loop device otherwise.
            run(["partx", "--delete", dev], check=False, error=DeviceError)
    meter.finish()
    return warnings


def _not_partly_written(e: RescueError, dev: str) -> RescueError:
    """execute's error says the drive is partly written; the export's drive is a file that is
    removed: say that nothing was left instead."""
    words = "; " + leftovers.partly_written_words(dev, "export")
    text = str(e).removesuffix(words) + "; no file was left"
    err = RescueError(text)
    err.exit_code = e.exit_code
    return err


def _drop_marker(dev: str) -> None:
    """The partly-written mark execute kept for the loop device: its file goes with the job."""
    for m in leftovers.mine():
        if m.target == dev:
            leftovers.finished(m)


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _convert(raw: Path, out: Path, fmt: str, meter: Meter) -> None:
    """`qemu-img convert` from the raw file into `out` (which exists, empty, recorded as
    ours), its percentage turned into the meter's bytes. Only data is read and written
    (qemu-img skips holes and all-zero blocks), so the result is sparse. qemu-img is
    recorded in rescue.hw.leftovers while it runs: a killed export's next command stops it."""
    argv = ["qemu-img", "convert", "-p", "-f", "raw", "-O", fmt, str(raw), str(out)]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise DeviceError("qemu-img is not installed (Debian package qemu-utils)") from None
    owner = leftovers.Owner.of(proc.pid)
    key = None
    if owner is not None:
        key = leftovers.record("process", f"process-{proc.pid}", {"process": owner.to_json(), "what": "qemu-img"})
    meter.begin_area(fmt, meter.total)
    try:
        assert proc.stdout is not None
        shown = 0
        for piece in iter(lambda: proc.stdout.read1(4096), b""):
            hits = _PERCENT.findall(piece)
            if hits:
                now = int(float(hits[-1]) * meter.total / 100)
                meter.advance(max(now - shown, 0))
                shown = max(shown, now)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if key:
            leftovers.forget(key)
    if proc.returncode != 0:
        lines = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
        raise DeviceError(f"qemu-img convert failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    meter.advance(meter.total - shown)
    meter.finish()


def _publish(done: Path, output: str, force: bool) -> None:
    """The finished file under the output's name: replacing an existing one only with
    `force`; else a hard link, which fails rather than replace a file made meanwhile."""
    if force:
        os.replace(done, output)
        return
    try:
        os.link(done, output)
    except FileExistsError:
        raise RefusedError(f"{output} exists already: choose another name, or pass --force to replace it") from None
    except OSError:  # no hard links (FAT, exFAT): a rename, after a last look
        if os.path.lexists(output):
            raise RefusedError(f"{output} exists already: choose another name, or pass --force to replace it") from None
        os.rename(done, output)
        return
    done.unlink()

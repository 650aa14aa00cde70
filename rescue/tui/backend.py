"""The wizard's one seam to the imaging engine.

Screens and steps see only the plain dataclasses below and the `Backend` protocol. The real
implementation imports the engine inside each method, so the wizard (and its tests) import
without the engine, and a dry run (`rescue.tui.dryrun`) can stand in for the whole machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rescue import planview
from rescue.errors import Cancelled, FilesystemError, IntegrityError, RefusedError, RepoError, RescueError, UsageError
from rescue.model.layout import DiskLayout

ProgressFn = Callable[[object], None]  # receives rescue.imaging.progress.Progress


@dataclass
class DriveInfo:
    name: str  # kernel name, "sda"
    path: str  # "/dev/sda"
    model: str
    serial: str
    size: int  # bytes
    bus: str
    removable: bool = False


@dataclass
class PartInfo:
    """One partition as the person recognises it: name, size, filesystem, label."""

    name: str
    size: int
    fstype: str = ""
    label: str = ""


@dataclass
class RepoInfo:
    path: str
    drive: str | None = None  # kernel name of the drive holding it, when known
    read_only: bool = False


@dataclass
class ImageInfo:
    name: str
    created: str  # ISO 8601
    source_model: str
    source_serial: str
    source_size: int
    data_bytes: int
    stored_bytes: int
    verified: bool | None  # result of the last verify; None when never verified


POLICIES = ("auto", "same", "proportional", "grow-last")  # the engine's layout policies


@dataclass
class Plan:
    target_path: str
    target_size: int
    layout: DiskLayout  # what will be written
    current: DiskLayout | None  # what is on the target now
    fits: bool
    reason: str  # one line; when it does not fit, says by how much
    write_bytes: int
    new_fs: dict[int, str] = field(default_factory=dict)  # partition number -> filesystem type
    policy: str = "same"  # as resolved by the engine ("auto" becomes same or proportional)
    lines: list[tuple[str, str]] = field(default_factory=list)  # rescue.planview's lines: (kind, text)
    notes: list[str] = field(default_factory=list)
    engine_plan: Any = None  # handed back to the engine unchanged


@dataclass
class RestoreOutcome:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class CaptureOutcome:
    name: str
    bytes_read: int
    stored_bytes: int
    seconds: float
    log_path: str
    sectors_lost: int = 0  # unreadable sectors met (zero-filled)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (byte offset, length)


@dataclass
class CloneOutcome:
    target_path: str
    bytes_written: int
    seconds: float
    sectors_lost: int
    bad_ranges: list[tuple[int, int]]
    log_path: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImagePart:
    """One partition of an image, as the browse flow offers it."""

    number: int
    size: int
    fstype: str  # "" when unformatted
    label: str = ""
    used: int | None = None
    refused: str | None = None  # why it cannot be browsed (swap, no filesystem), None if it can

    @property
    def fat(self) -> bool:
        """FAT (the filesystem class says mtools reads it): listed only through the kernel's
        vfat, else copied whole with mtools."""
        from rescue.filesystems import lookup

        fs = lookup(self.fstype)
        return fs is not None and fs.mtools


@dataclass
class FileEntry:
    name: str
    path: str  # inside the partition, "/etc/hostname"
    is_dir: bool
    size: int  # bytes (0 for directories)
    mtime: float
    link: str | None = None  # symlink target; links are copied as links, never followed


@dataclass
class BrowseSession:
    """A partition opened for browsing. `root` is where its files are (a private read-only
    mount), None for a FAT partition that neither the kernel nor fusefat could mount: that
    one is copied whole, with mtools."""

    repo_path: str
    image: str
    part: ImagePart
    root: str | None
    handle: Any = None  # the back-end's own record (mount state)


@dataclass
class CopyOutcome:
    dest: str
    copied: list[str]  # paths written under dest
    files: int
    bytes: int
    seconds: float


class Backend(Protocol):
    def list_drives(self) -> list[DriveInfo]: ...

    def boot_drive(self) -> str | None:
        """Kernel name of the drive the rescue system booted from."""

    def find_repositories(self) -> list[RepoInfo]: ...

    def open_repository(self, path: str) -> RepoInfo:
        """Raises RepoError when `path` is not a usable repository."""

    def list_images(self, repo_path: str) -> list[ImageInfo]: ...

    def image_needs(self, repo_path: str, name: str) -> int:
        """Bytes a target drive needs to hold the image as captured."""

    def partitions(self, drive: DriveInfo) -> list[PartInfo]: ...

    def target_refusal(self, drive: DriveInfo, repo_path: str | None) -> str | None:
        """Why a safety rule refuses writing to the drive (mounted, in use...), or None."""

    def plan_restore(self, repo_path: str, name: str, target_path: str, policy: str = "auto") -> Plan: ...

    def restore(
        self, repo_path: str, name: str, target_path: str, plan: Plan, progress: ProgressFn, cancel: threading.Event
    ) -> RestoreOutcome: ...

    # clone
    def source_refusal(self, drive: DriveInfo) -> str | None:
        """Why a drive cannot be read now (a filesystem mounted read-write, in use), or None."""

    def clone_refusal(self, target: DriveInfo, source: DriveInfo) -> str | None:
        """Why the safety rules refuse writing to `target` while cloning `source`, or None."""

    def clone_needs(self, source: DriveInfo) -> int:
        """The smallest target size any layout policy can fit the source's partitions into."""

    def plan_clone(self, source_path: str, target_path: str, policy: str = "auto") -> Plan: ...

    def clone(
        self, source_path: str, target_path: str, plan: Plan, progress: ProgressFn, cancel: threading.Event
    ) -> CloneOutcome: ...

    # browse
    def image_partitions(self, repo_path: str, name: str) -> list[ImagePart]: ...

    def browse_open(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        """Mount the partition read-only, privately; undone by browse_close, also when this
        raises half-way."""

    def browse_list(self, session: BrowseSession, path: str) -> list[FileEntry]:
        """One directory, read when asked (directories first, then by name)."""

    def browse_close(self, session: BrowseSession) -> None: ...

    def check_copy(self, session: BrowseSession, paths: list[str], dest: str) -> None:
        """Refuses (UsageError) a destination where a chosen item would overwrite something."""

    def copy_files(
        self, session: BrowseSession, paths: list[str], dest: str, progress: ProgressFn, cancel: threading.Event
    ) -> CopyOutcome: ...

    def free_space(self, path: str) -> int:
        """Free bytes at a directory; raises RepoError when it is missing or not writable."""

    def capture_estimate(self, drive: DriveInfo) -> int | None:
        """Upper bound of the bytes a capture stores, None when unknown."""

    def capture(
        self, source_path: str, repo_path: str, name: str, progress: ProgressFn, cancel: threading.Event
    ) -> CaptureOutcome: ...

    def verify(self, repo_path: str, name: str, progress: ProgressFn, cancel: threading.Event) -> None:
        """Raises IntegrityError when the image is damaged."""

    def reboot(self) -> None: ...

    def poweroff(self) -> None: ...

    def close(self) -> None:
        """Undo what discovery did (mounts) when the wizard ends."""


def ascii_text(text: str) -> str:
    """The engine's words for a screen that may lack non-ASCII glyphs."""
    for a, b in (
        ("\u2192", "->"),
        ("\u2190", "<-"),
        ("\u2013", "-"),
        ("\u2014", "-"),
        ("\u00d7", "x"),
        ("\u2026", "..."),
    ):
        text = text.replace(a, b)
    return text.encode("ascii", "replace").decode()


def min_target_size(layout: DiskLayout, facts: dict) -> int:
    """The smallest drive some layout policy fits `layout` onto (shrinking what may shrink).
    Pure: the planner is asked about an empty target and says how much it lacks."""
    from rescue.model.plan import POLICIES as PLAN_POLICIES
    from rescue.model.plan import plan_layout

    if layout.table == "none":
        return layout.size
    needs = []
    for policy in PLAN_POLICIES:
        try:
            lp = plan_layout(layout, facts, 0, layout.sector_size, policy)
        except RescueError:
            continue
        needs.append(lp.shortfall)
    return min(needs) if needs else layout.end_bytes()


def tree_size(path: str) -> tuple[int, int]:
    """(regular files, their bytes) under `path`, symlinks not followed."""
    files = size = 0
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    if not os.path.isdir(path) or os.path.islink(path):
        return (1, st.st_size) if os.path.isfile(path) and not os.path.islink(path) else (0, 0)
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            files += 1
                            size += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return files, size


def check_copy_dest(dest: str, paths: list[str]) -> list[str]:
    """Where each chosen path lands (DEST/<its name>); refuses what would overwrite."""
    if not os.path.isdir(dest):
        raise UsageError(f"{dest} is not a directory")
    if not os.access(dest, os.W_OK):
        raise UsageError(f"{dest} is not writable (read-only or no permission)")
    names = [p.rstrip("/").rsplit("/", 1)[-1] or "" for p in paths]
    if len(set(names)) != len(names):
        raise UsageError("two chosen items have the same name and would land on the same place")
    out = []
    for n in names:
        target = os.path.join(dest, n) if n else dest
        if n and os.path.lexists(target):
            raise UsageError(f"{target} already exists: choose another folder or move it away first")
        out.append(target)
    return out


def writable_free_space(path: str) -> int:
    """Shared by real and dry-run back-ends for typed destination paths."""
    if not os.path.isdir(path):
        raise RepoError(f"{path} is not a directory")
    if not os.access(path, os.W_OK):
        raise RepoError(f"{path} is not writable (read-only or no permission)")
    return shutil.disk_usage(path).free


class RealBackend:
    """Calls the engine (rescue.imaging, rescue.repo, rescue.hw). Engine errors are
    RescueErrors with one-line messages; they pass through to the wizard unchanged."""

    def __init__(self, include_loop: bool = False):
        self.include_loop = include_loop
        self._located: list = []  # RepoLocations discovery mounted; released by close()

    # drives -------------------------------------------------------------------------------
    @staticmethod
    def _drive(d) -> DriveInfo:
        return DriveInfo(
            name=d.name,
            path=d.path,
            model=d.model or "unknown model",
            serial=d.serial or "-",
            size=d.size,
            bus=d.bus,
            removable=d.removable,
        )

    def list_drives(self) -> list[DriveInfo]:
        from rescue.hw.devices import list_drives

        return [self._drive(d) for d in list_drives(include_loop=self.include_loop)]

    def boot_drive(self) -> str | None:
        from rescue.hw.devices import boot_medium

        found = boot_medium()
        return os.path.basename(found) if found else None

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        import json

        from rescue.hw.run import output

        try:
            data = json.loads(output(["lsblk", "-J", "-b", "-o", "NAME,SIZE,FSTYPE,LABEL,TYPE", drive.path]))
        except Exception:  # noqa: BLE001 - an unreadable drive shows no partitions; the plan says more
            return []
        out = []
        for dev in data.get("blockdevices", []):
            for child in dev.get("children", []) or []:
                if child.get("type") == "part":
                    out.append(
                        PartInfo(
                            child["name"],
                            int(child.get("size") or 0),
                            child.get("fstype") or "",
                            child.get("label") or "",
                        )
                    )
        return out

    def target_refusal(self, drive: DriveInfo, repo_path: str | None) -> str | None:
        from rescue.hw.safety import check_target

        try:
            check_target(drive.path, repo_path=repo_path)
        except RefusedError as e:
            return str(e)
        return None

    # repositories ---------------------------------------------------------------------------
    def find_repositories(self) -> list[RepoInfo]:
        from rescue.hw.discover import find_repositories

        found = find_repositories(include_loop=self.include_loop)
        self._located += [r for r in found if r.mounted_by_us]
        return [RepoInfo(r.path, os.path.basename(r.drive) if r.drive else None, r.read_only) for r in found]

    def close(self) -> None:
        """Unmount what repository discovery mounted (read-only) for us."""
        from rescue.hw.discover import release

        located, self._located = self._located, []
        release(located)

    def open_repository(self, path: str) -> RepoInfo:
        from rescue.hw.devices import drive_of_path
        from rescue.repo.store import Repository

        repo = Repository.open(path)
        try:
            drives = drive_of_path(repo.path)
        except Exception:  # noqa: BLE001 - the repository is usable even when its drive is not known
            drives = []
        path = str(repo.path)
        return RepoInfo(path, drives[-1] if drives else None, not os.access(path, os.W_OK))

    def list_images(self, repo_path: str) -> list[ImageInfo]:
        from rescue.repo.store import Repository

        return [
            ImageInfo(
                s.name,
                s.created,
                s.source_model or "",
                s.source_serial or "",
                s.source_size,
                s.data_bytes,
                s.stored_bytes,
                s.verified,
            )
            for s in Repository.open(repo_path).images()
        ]

    def image_needs(self, repo_path: str, name: str) -> int:
        """The smallest drive the image fits onto with some layout policy."""
        from rescue.imaging.apply import AreaFacts
        from rescue.imaging.restore import facts_of
        from rescue.repo.store import Repository

        m = Repository.open(repo_path).manifest(name)
        return min_target_size(m.layout, facts_of([AreaFacts(a.name, a.partition, a.size, a.fs) for a in m.areas]))

    # jobs -----------------------------------------------------------------------------------
    @staticmethod
    def _plan(p, areas: list[tuple[int | None, dict | None]]) -> Plan:
        new_fs = {n: fs["type"] for n, fs in areas if n is not None and fs and fs.get("type")}
        return Plan(
            p.target_path,
            p.target_size,
            p.layout,
            p.current,
            p.fits,
            ascii_text(p.reason),
            p.write_bytes,
            new_fs,
            p.policy,
            [(k, ascii_text(t)) for k, t in planview.plan_lines(p)],
            [ascii_text(n) for n in p.notes],
            engine_plan=p,
        )

    def plan_restore(self, repo_path: str, name: str, target_path: str, policy: str = "auto") -> Plan:
        from rescue.imaging.restore import plan_restore
        from rescue.repo.store import Repository

        repo = Repository.open(repo_path)
        p = plan_restore(repo, name, target_path, policy=policy)
        return self._plan(p, [(a.partition, a.fs) for a in repo.manifest(name).areas])

    def restore(self, repo_path, name, target_path, plan, progress, cancel) -> RestoreOutcome:
        from rescue.imaging.restore import restore
        from rescue.repo.store import Repository

        r = restore(
            Repository.open(repo_path),
            name,
            target_path,
            preverify=True,
            progress=progress,
            cancel=cancel,
            plan=plan.engine_plan,
        )
        return RestoreOutcome(r.target_path, r.bytes_written, r.seconds, r.verified, r.log_path, r.warnings)

    # clone ------------------------------------------------------------------------------------
    def source_refusal(self, drive: DriveInfo) -> str | None:
        from rescue.hw.safety import check_source

        try:
            check_source(drive.path)
        except RefusedError as e:
            return str(e)
        return None

    def clone_refusal(self, target: DriveInfo, source: DriveInfo) -> str | None:
        from rescue.hw.safety import check_target

        try:
            check_target(target.path, source=source.path)
        except RefusedError as e:
            return str(e)
        return None

    def _capture_plan(self, source_path: str):
        """plan_capture reads every filesystem's metadata: once per source, not per policy."""
        from rescue.imaging.capture import plan_capture

        cached = getattr(self, "_cap", None)
        if cached is None or cached.source != source_path:
            self._cap = cached = plan_capture(source_path)
        return cached

    def clone_needs(self, source: DriveInfo) -> int:
        from rescue.imaging.apply import AreaFacts
        from rescue.imaging.restore import facts_of

        self._cap = None  # a fresh look at the source each time the target list is drawn
        cap = self._capture_plan(source.path)
        return min_target_size(
            cap.layout,
            facts_of([AreaFacts(a.name, a.partition, a.size, dict(vars(a.fs)) if a.fs else None) for a in cap.areas]),
        )

    def plan_clone(self, source_path: str, target_path: str, policy: str = "auto") -> Plan:
        from rescue.imaging.clone import plan_clone

        cap = self._capture_plan(source_path)
        p = plan_clone(source_path, target_path, policy, cap)
        return self._plan(p, [(a.partition, dict(vars(a.fs)) if a.fs else None) for a in cap.areas])

    def clone(self, source_path, target_path, plan, progress, cancel) -> CloneOutcome:
        from rescue.imaging.clone import clone

        self._cap = None
        # exactly the plan the person confirmed
        r = clone(
            source_path,
            target_path,
            policy=plan.policy,
            retries=1,
            progress=progress,
            cancel=cancel,
            plan=plan.engine_plan,
        )
        return CloneOutcome(
            r.target_path, r.bytes_written, r.seconds, r.sectors_lost, list(r.bad_ranges), r.log_path, r.warnings
        )

    # browse -----------------------------------------------------------------------------------
    def image_partitions(self, repo_path: str, name: str) -> list[ImagePart]:
        from rescue.filesystems import lookup
        from rescue.repo.store import Repository

        out = []
        m = Repository.open(repo_path).manifest(name)
        by_number = {p.number: p for p in m.layout.partitions}
        for a in m.areas:
            if a.partition is None:
                continue
            fs = a.fs or {}
            fstype = fs.get("type") or ""
            refused = None
            if not fstype or fstype == "raw":
                refused = "no filesystem"
            elif (kind := lookup(fstype)) is not None and kind.no_files:
                refused = kind.no_files
            part = by_number.get(a.partition)
            label = fs.get("label") or (part.name if part else "") or ""
            out.append(ImagePart(a.partition, a.size, fstype, label, fs.get("used_bytes"), refused))
        return out

    def browse_open(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        from rescue.errors import FilesystemError

        try:
            return self._browse_mount(repo_path, name, part)
        except FilesystemError:
            if not part.fat:
                raise
            return BrowseSession(repo_path, name, part, None)  # mtools still reads it, whole

    def _browse_mount(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        """A private read-only mount of the one partition, torn down again if anything fails.
        FAT only through the kernel's vfat: fusefat shows short names in capitals and dates a
        month late, and what the wizard copies must be exact; mtools copies it whole instead."""
        from rescue.browse import mounts

        _, manifest = mounts.open_image(repo_path, name)
        area = mounts.select_areas(manifest, part.number)[0]
        state, mnt = mounts.open_private(repo_path, name, area, "wizard", f"p{part.number}-", fusefat=False)
        return BrowseSession(repo_path, name, part, str(mnt / area.name), (state, mnt))

    def browse_list(self, session: BrowseSession, path: str) -> list[FileEntry]:
        if session.root is None:
            return []
        return list_directory(session.root, path)

    def browse_close(self, session: BrowseSession) -> None:
        from rescue.browse import mounts

        if session.handle is None:
            return
        (state, mnt), session.handle = session.handle, None
        mounts.close_private(state, mnt)

    def check_copy(self, session: BrowseSession, paths: list[str], dest: str) -> None:
        if session.root is None:
            paths = [f"{session.image}-p{session.part.number}"]
        check_copy_dest(dest, paths)

    def copy_files(self, session, paths, dest, progress, cancel) -> CopyOutcome:
        if session.root is None:  # FAT: the whole partition, through mtools
            from rescue.browse.extract import extract
            from rescue.imaging.progress import Progress

            started = time.monotonic()
            total = session.part.used or session.part.size
            target = os.path.join(dest, f"{session.image}-p{session.part.number}")
            if os.path.lexists(target):
                raise UsageError(f"{target} already exists: choose another folder or move it away first")
            progress(Progress("copy", f"p{session.part.number} (whole partition)", 0, total, 0, total, 0.0, None))
            extract(session.repo_path, session.image, session.part.number, ["/"], target)
            files, size = tree_size(target)
            return CopyOutcome(dest, [target], files, size, time.monotonic() - started)
        return copy_tree(session.root, paths, dest, progress, cancel)

    def free_space(self, path: str) -> int:
        return writable_free_space(path)

    def capture_estimate(self, drive: DriveInfo) -> int | None:
        """The bytes capture will read (used blocks); what it stores is at most that."""
        from rescue.errors import RescueError
        from rescue.imaging.capture import plan_capture

        try:
            return plan_capture(drive.path).read_bytes()
        except RescueError:
            return None  # unreadable now; capture itself will say why

    def capture(self, source_path, repo_path, name, progress, cancel) -> CaptureOutcome:
        from rescue.imaging.capture import capture

        r = capture(source_path, repo_path, name, progress=progress, cancel=cancel)
        return CaptureOutcome(
            r.name, r.bytes_read, r.stored_bytes, r.seconds, r.log_path, r.sectors_lost, list(r.bad_ranges)
        )

    def verify(self, repo_path, name, progress, cancel) -> None:
        from rescue.imaging.verify import verify_image
        from rescue.repo.store import Repository

        verify_image(Repository.open(repo_path), name, progress=progress, cancel=cancel)

    def reboot(self) -> None:
        from rescue.errors import DeviceError
        from rescue.hw.run import run

        run(["systemctl", "reboot"], error=DeviceError)

    def poweroff(self) -> None:
        from rescue.errors import DeviceError
        from rescue.hw.run import run

        run(["systemctl", "poweroff"], error=DeviceError)


# -- browsing helpers shared by the real back-end (and usable on any directory tree) -------------


def list_directory(root: str, path: str) -> list[FileEntry]:
    """The entries of ROOT/PATH, directories first, never following a symlink out of ROOT."""
    rel = "/" + "/".join(c for c in path.split("/") if c not in ("", ".", ".."))
    where = os.path.join(root, rel.lstrip("/"))
    if os.path.islink(where) or not os.path.isdir(where):
        raise UsageError(f"{rel} is not a folder")
    out = []
    try:
        with os.scandir(where) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                    is_dir = e.is_dir(follow_symlinks=False)
                    link = os.readlink(e.path) if e.is_symlink() else None
                except OSError:
                    continue  # unreadable entry (damaged image): left out, not fatal
                out.append(
                    FileEntry(
                        e.name, rel.rstrip("/") + "/" + e.name, is_dir, 0 if is_dir else st.st_size, st.st_mtime, link
                    )
                )
    except OSError as e:
        raise FilesystemError(f"cannot read folder {rel}: {e.strerror}") from None
    out.sort(key=lambda f: (not f.is_dir, f.name))
    return out


def copy_tree(
    root: str, paths: list[str], dest: str, progress: ProgressFn, cancel: threading.Event, poll: float = 0.5
) -> CopyOutcome:
    """Copy the chosen paths out of ROOT into DEST with `cp -a` (owners, permissions, times,
    symlinks, hard links), one item at a time, reporting the bytes that have arrived so far.
    cp runs as a child we hold (not through rescue.hw.run) so that Cancel can stop it; a
    cancelled item's partial copy is removed."""
    from rescue.imaging.progress import Progress

    if not paths:
        raise UsageError("choose at least one file or folder first (Space marks it)")
    targets = check_copy_dest(dest, paths)
    sources = [os.path.join(root, p.lstrip("/")) for p in paths]
    sizes = [tree_size(s) for s in sources]
    total = sum(b for _, b in sizes) or 1
    files = sum(f for f, _ in sizes)
    free = shutil.disk_usage(dest).free
    if free < total:
        from rescue.imaging.progress import fmt_bytes

        raise UsageError(f"{dest} has {fmt_bytes(free)} free, the chosen items need {fmt_bytes(total)}")
    started = time.monotonic()
    done_before = 0
    copied: list[str] = []
    io_errors: list[str] = []
    for path, src, target, (_, size) in zip(paths, sources, targets, sizes):
        area = path if len(path) <= 40 else ".." + path[-38:]
        proc = subprocess.Popen(
            ["cp", "-a", "--", src, target], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        err = b""
        try:
            while True:
                try:
                    err = proc.communicate(timeout=poll)[1]
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel.is_set():
                    proc.kill()
                    proc.wait()
                    _remove(target)
                    raise Cancelled("copy cancelled by the user")
                now = min(tree_size(target)[1], size)
                elapsed = max(time.monotonic() - started, 1e-3)
                rate = (done_before + now) / elapsed
                progress(
                    Progress(
                        "copy",
                        area,
                        now,
                        size,
                        done_before + now,
                        total,
                        rate,
                        (total - done_before - now) / rate if rate else None,
                    )
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        copied.append(target)
        text = err.decode(errors="replace")
        if proc.returncode != 0:
            bad = [ln for ln in text.splitlines() if "Input/output error" in ln]
            if bad:
                io_errors += bad
            else:
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                raise FilesystemError(f"copying {path} failed: {lines[-1] if lines else 'cp failed'}")
        done_before += size
        elapsed = max(time.monotonic() - started, 1e-3)
        progress(Progress("copy", area, size, size, done_before, total, done_before / elapsed, 0.0))
    if io_errors:
        raise IntegrityError(
            f"{len(io_errors)} file(s) could not be read (the image is damaged there); the rest was copied to {dest}"
        )
    return CopyOutcome(dest, copied, files, done_before, time.monotonic() - started)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

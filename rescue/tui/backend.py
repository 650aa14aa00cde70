"""The wizard's one seam to the imaging engine.

Screens and steps see only the plain dataclasses below and the `Backend` protocol. The real
implementation imports the engine inside each method, so the wizard (and its tests) import
without the engine, and a dry run (`rescue.tui.dryrun`) can stand in for the whole machine."""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from rescue.errors import RefusedError, RepoError
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


@dataclass
class Plan:
    target_path: str
    target_size: int
    layout: DiskLayout  # what will be written
    current: DiskLayout | None  # what is on the target now
    fits: bool
    reason: str
    write_bytes: int
    new_fs: dict[int, str] = field(default_factory=dict)  # partition number -> filesystem type


@dataclass
class RestoreOutcome:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str


@dataclass
class CaptureOutcome:
    name: str
    bytes_read: int
    stored_bytes: int
    seconds: float
    log_path: str


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

    def plan_restore(self, repo_path: str, name: str, target_path: str) -> Plan: ...

    def restore(self, repo_path: str, name: str, target_path: str, plan: Plan,
                progress: ProgressFn, cancel: threading.Event) -> RestoreOutcome: ...

    def free_space(self, path: str) -> int:
        """Free bytes at a directory; raises RepoError when it is missing or not writable."""

    def capture_estimate(self, drive: DriveInfo) -> int | None:
        """Upper bound of the bytes a capture stores, None when unknown."""

    def capture(self, source_path: str, repo_path: str, name: str, progress: ProgressFn,
                cancel: threading.Event) -> CaptureOutcome: ...

    def verify(self, repo_path: str, name: str, progress: ProgressFn,
               cancel: threading.Event) -> None:
        """Raises IntegrityError when the image is damaged."""

    def reboot(self) -> None: ...

    def poweroff(self) -> None: ...

    def close(self) -> None:
        """Undo what discovery did (mounts) when the wizard ends."""


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
        return DriveInfo(name=d.name, path=d.path, model=d.model or "unknown model",
                         serial=d.serial or "-", size=d.size, bus=d.bus, removable=d.removable)

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
            data = json.loads(output(["lsblk", "-J", "-b", "-o", "NAME,SIZE,FSTYPE,LABEL,TYPE",
                                      drive.path]))
        except Exception:  # an unreadable drive shows no partitions; the plan step says more
            return []
        out = []
        for dev in data.get("blockdevices", []):
            for child in dev.get("children", []) or []:
                if child.get("type") == "part":
                    out.append(PartInfo(child["name"], int(child.get("size") or 0),
                                        child.get("fstype") or "", child.get("label") or ""))
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
        return [RepoInfo(r.path, os.path.basename(r.drive) if r.drive else None, r.read_only)
                for r in found]

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
        except Exception:  # the repository is usable even when its drive is not known
            drives = []
        path = str(repo.path)
        return RepoInfo(path, drives[-1] if drives else None, not os.access(path, os.W_OK))

    def list_images(self, repo_path: str) -> list[ImageInfo]:
        from rescue.repo.store import Repository
        return [ImageInfo(s.name, s.created, s.source_model or "", s.source_serial or "",
                          s.source_size, s.data_bytes, s.stored_bytes, s.verified)
                for s in Repository.open(repo_path).images()]

    def image_needs(self, repo_path: str, name: str) -> int:
        from rescue.repo.store import Repository
        return Repository.open(repo_path).manifest(name).layout.end_bytes()

    # jobs -----------------------------------------------------------------------------------
    def plan_restore(self, repo_path: str, name: str, target_path: str) -> Plan:
        from rescue.imaging.restore import plan_restore
        from rescue.repo.store import Repository
        repo = Repository.open(repo_path)
        p = plan_restore(repo, name, target_path, policy="same")
        new_fs = {}
        for area in repo.manifest(name).areas:
            fs = area.fs or {}
            if area.partition is not None and fs.get("type"):
                new_fs[area.partition] = fs["type"]
        plan = Plan(p.target_path, p.target_size, p.layout, p.current, p.fits, p.reason,
                    p.write_bytes, new_fs)
        plan.engine_plan = p  # handed back to restore() unchanged
        return plan

    def restore(self, repo_path, name, target_path, plan, progress, cancel) -> RestoreOutcome:
        from rescue.imaging.restore import restore
        from rescue.repo.store import Repository
        r = restore(Repository.open(repo_path), name, target_path, preverify=True,
                    progress=progress, cancel=cancel, plan=getattr(plan, "engine_plan", None))
        return RestoreOutcome(r.target_path, r.bytes_written, r.seconds, r.verified, r.log_path)

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
        return CaptureOutcome(r.name, r.bytes_read, r.stored_bytes, r.seconds, r.log_path)

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

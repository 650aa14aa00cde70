"""A recorded machine instead of real disks, for demos and headless runs of the wizard
(`RESCUE_FAKE_BACKEND=machine.json rescue wizard`). Nothing here touches a drive: jobs only
count bytes and report progress, like the engine's Meter would.

machine.json:
    {"boot_drive": "sdc",
     "drives": [{"name": "sda", "model": "...", "serial": "...", "size": 500107862016,
                 "bus": "sata", "partitions": [{"name": "sda1", "size": 536870912,
                                                "fstype": "vfat", "label": "EFI"}]}],
     "repositories": [{"path": "/mnt/images", "drive": "sdb",
                       "images": [{"name": "...", "created": "2024-05-01T10:00:00",
                                   "source_model": "...", "source_serial": "...",
                                   "source_size": 0, "data_bytes": 0, "stored_bytes": 0,
                                   "verified": true,
                                   "partitions": [{"size": 536870912, "fstype": "vfat"}]}]}],
     "free_space": {"/mnt/images": 1000000000000},
     "job_seconds": 3}
"""

from __future__ import annotations

import json
import threading
import time

from rescue.errors import Cancelled, RepoError
from rescue.imaging.progress import Progress
from rescue.model.layout import DiskLayout, Partition
from rescue.tui.backend import (CaptureOutcome, DriveInfo, ImageInfo, PartInfo, Plan,
                                RepoInfo, RestoreOutcome)

MiB = 1 << 20
SECTOR = 512


def _layout_of(parts: list[dict], disk_size: int) -> DiskLayout:
    """A GPT layout with the given partition sizes laid end to end from 1 MiB."""
    start, out = MiB // SECTOR, []
    for i, p in enumerate(parts, 1):
        length = int(p["size"]) // SECTOR
        out.append(Partition(number=i, start=start, end=start + length - 1, name=p.get("label", "")))
        start += length
    return DiskLayout(table="gpt", sector_size=SECTOR, size=disk_size, partitions=out)


class DryRunBackend:
    """The Backend protocol over a machine description held in memory."""

    def __init__(self, machine: dict):
        self.machine = machine
        self.job_seconds = float(machine.get("job_seconds", 0))
        self.log_dir = machine.get("log_dir", "/tmp")
        self.power: str | None = None  # "reboot" | "poweroff" once asked

    @classmethod
    def from_file(cls, path: str) -> "DryRunBackend":
        try:
            with open(path) as f:
                return cls(json.load(f))
        except (OSError, ValueError) as e:
            raise RepoError(f"cannot read the machine description {path}: {e}") from None

    # lookups --------------------------------------------------------------------------------
    def _drives(self) -> list[dict]:
        return self.machine.get("drives", [])

    def _repo(self, path: str) -> dict:
        for r in self.machine.get("repositories", []):
            if r["path"] == path.rstrip("/") or r["path"] == path:
                return r
        raise RepoError(f"{path} is not an image repository (no rescue-repo.json)")

    def _image(self, repo_path: str, name: str) -> dict:
        for im in self._repo(repo_path).get("images", []):
            if im["name"] == name:
                return im
        raise RepoError(f"image {name} is not in {repo_path}")

    # Backend ----------------------------------------------------------------------------------
    def list_drives(self) -> list[DriveInfo]:
        return [DriveInfo(d["name"], d.get("path", "/dev/" + d["name"]), d.get("model", "unknown model"),
                          d.get("serial", "-"), int(d["size"]), d.get("bus", "sata"),
                          bool(d.get("removable", False))) for d in self._drives()]

    def boot_drive(self) -> str | None:
        return self.machine.get("boot_drive")

    def find_repositories(self) -> list[RepoInfo]:
        return [RepoInfo(r["path"], r.get("drive"), bool(r.get("read_only", False)))
                for r in self.machine.get("repositories", []) if r.get("found", True)]

    def open_repository(self, path: str) -> RepoInfo:
        r = self._repo(path)
        return RepoInfo(r["path"], r.get("drive"), bool(r.get("read_only", False)))

    def list_images(self, repo_path: str) -> list[ImageInfo]:
        fields = ImageInfo.__dataclass_fields__
        return [ImageInfo(**{k: v for k, v in im.items() if k in fields})
                for im in self._repo(repo_path).get("images", [])]

    def image_needs(self, repo_path: str, name: str) -> int:
        im = self._image(repo_path, name)
        return _layout_of(im.get("partitions", []), im["source_size"]).end_bytes()

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        for d in self._drives():
            if d["name"] == drive.name:
                return [PartInfo(p["name"], int(p["size"]), p.get("fstype", ""), p.get("label", ""))
                        for p in d.get("partitions", [])]
        return []

    def target_refusal(self, drive: DriveInfo, repo_path: str | None) -> str | None:
        for d in self._drives():
            if d["name"] == drive.name and d.get("refused"):
                return d["refused"]
        return None

    def plan_restore(self, repo_path: str, name: str, target_path: str) -> Plan:
        im = self._image(repo_path, name)
        drive = next(d for d in self.list_drives() if d.path == target_path)
        layout = _layout_of(im.get("partitions", []), im["source_size"])
        current = _layout_of([{"size": p.size, "label": p.label} for p in self.partitions(drive)],
                             drive.size)
        need = layout.end_bytes()
        fits = need <= drive.size
        reason = "" if fits else f"{drive.name} is too small: the image needs {need} bytes, it has {drive.size}"
        new_fs = {i: p.get("fstype", "") for i, p in enumerate(im.get("partitions", []), 1)}
        return Plan(target_path, drive.size, layout, current, fits, reason, im["data_bytes"], new_fs)

    def _run(self, phase: str, areas: list[tuple[str, int]], progress, cancel: threading.Event) -> float:
        """Count through the areas like a real job would, checking the cancel flag."""
        total = sum(size for _, size in areas) or 1
        steps, done, start = 10, 0, time.monotonic()
        for area, size in areas:
            for i in range(1, steps + 1):
                if cancel.is_set():
                    raise Cancelled(f"{phase} cancelled by the user")
                if self.job_seconds:
                    time.sleep(self.job_seconds / (steps * max(len(areas), 1)))
                step = size // steps if i < steps else size - (size // steps) * (steps - 1)
                done += step
                elapsed = max(time.monotonic() - start, 1e-3)
                rate = done / elapsed
                progress(Progress(phase, area, size // steps * i if i < steps else size, size,
                                  done, total, rate, (total - done) / rate))
        return time.monotonic() - start

    def restore(self, repo_path, name, target_path, plan, progress, cancel) -> RestoreOutcome:
        im = self._image(repo_path, name)
        areas = [(f"p{i} ({p.get('fstype') or 'raw'})", int(p.get("used", p["size"]) // 8))
                 for i, p in enumerate(im.get("partitions", []), 1)] or [("disk", im["data_bytes"])]
        seconds = self._run("restore", areas, progress, cancel)
        return RestoreOutcome(target_path, sum(s for _, s in areas), seconds, True,
                              f"{self.log_dir}/restore-{name}.log")

    def free_space(self, path: str) -> int:
        free = self.machine.get("free_space", {})
        if path in free:
            return int(free[path])
        raise RepoError(f"{path} is not a directory")

    def capture_estimate(self, drive: DriveInfo) -> int | None:
        return sum(p.size for p in self.partitions(drive)) or drive.size

    def capture(self, source_path, repo_path, name, progress, cancel) -> CaptureOutcome:
        drive = next(d for d in self.list_drives() if d.path == source_path)
        areas = [(p.name, p.size // 8) for p in self.partitions(drive)] or [("disk", drive.size // 8)]
        seconds = self._run("capture", areas, progress, cancel)
        size = sum(s for _, s in areas)
        repo = self._repo(repo_path) if any(
            r["path"] == repo_path for r in self.machine.get("repositories", [])) else None
        if repo is not None:
            repo.setdefault("images", []).append({
                "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "source_model": drive.model, "source_serial": drive.serial,
                "source_size": drive.size, "data_bytes": size, "stored_bytes": size // 2,
                "verified": None, "partitions": [{"size": p.size, "fstype": p.fstype}
                                                 for p in self.partitions(drive)]})
        return CaptureOutcome(name, size, size // 2, seconds, f"{repo_path}/images/{name}/log.txt")

    def verify(self, repo_path, name, progress, cancel) -> None:
        im = next((i for i in self._repo(repo_path).get("images", []) if i["name"] == name), None)
        self._run("verify", [("chunks", im["data_bytes"] if im else MiB)], progress, cancel)
        if im is not None:
            im["verified"] = True

    def reboot(self) -> None:
        self.power = "reboot"

    def poweroff(self) -> None:
        self.power = "poweroff"

    def close(self) -> None:
        pass

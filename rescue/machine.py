"""The machine the engine works on: the live one, or one recorded elsewhere and replayed.

The engine (`rescue.engine`) asks a `Machine` for facts only: the kernel's tables, a drive's
table and geometry, a source drive's filesystems, the repositories found and their images,
free space. Every decision over those facts (refusals, layout policy, plans, names) is the
engine's own, so the wizard's dry run (`rescue wizard --machine machine.json`) runs the same
decisions over a recorded machine as over the real one. Jobs on a recorded machine go to a
`LoggingRunner`: each of the plan's actions is logged instead of executed.

A record is made with `python3 -m rescue.hw.record > machine.json` (read-only: discovery
mounts filesystems read-only and unmounts them again). Its parts:

    kernel         rescue.hw.devices.KernelRecord: devices, mountinfo, swaps, identities
    uefi           booted with UEFI firmware
    scratch        {"dir", "free", "ram"}: where a shrink's scratch files would go
    drives         path -> {"sector_size", "layout" (its table now: DiskLayout dict or null),
                            "source_layout", "areas" (a capture plan, or null and "error")}
    probes         device path -> blkid's low-level probe ({"TYPE", "LABEL", "USAGE"...})
    repositories   [{"path", "drive", "device", "mountpoint", "read_only", "free",
                     "images": [{"manifest": its JSON text, "write": bytes a restore writes,
                                 "held": area -> [[start, end], ...] (data extents),
                                 "verified": true/false/null, "files": optional tree}]}]
    free_space     directory -> free bytes (a typed destination's)
    places         [rescue.hw.discover.Place as a dict]: every filesystem and blank drive
                   images could be written to (older records: made from the repositories)
    network        the main menu's network line (rescue.hw.network.summary)

Optional, for demos and tests only (a recorded machine says what a job would meet):
"simulate": {"bad_ranges": {drive path: [[offset, length], ...]}, "job_seconds": N,
"restore_warnings": [...], "existing_files": [paths]}.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rescue import __version__
from rescue.errors import Cancelled, DeviceError, RepoError, RescueError, UsageError
from rescue.hw import devices
from rescue.hw.destination import Opened
from rescue.hw.discover import Place, RepoLocation, locations
from rescue.hw.netmount import NfsExport, SmbShare
from rescue.imaging.apply import AreaFacts
from rescue.imaging.capture import AreaPlan, CapturePlan
from rescue.imaging.progress import Progress
from rescue.imaging.restore import ImageFacts, TargetFacts
from rescue.model.extents import Extent
from rescue.model.layout import DiskLayout
from rescue.repo.manifest import Manifest, SourceFacts
from rescue.repo.store import ImageSummary

FORMAT = "rescue-machine"
VERSION = 1


@dataclass
class PartInfo:
    """One partition as the person recognises it: name, size, filesystem, label."""

    name: str
    size: int
    fstype: str = ""
    label: str = ""


class Machine(Protocol):
    """Facts the engine asks for. Raises RescueErrors with one-line messages."""

    recorded: bool

    def snapshot(self) -> devices.Snapshot: ...

    def target(self, path: str) -> TargetFacts: ...

    def source(self, path: str) -> CapturePlan: ...

    def probe(self, node: str) -> dict[str, str]: ...

    def find_repositories(self, include_loop: bool) -> list[RepoLocation]: ...

    def release(self, located: list[RepoLocation]) -> None: ...

    def images(self, repo_path: str) -> list[ImageSummary]: ...

    def manifest(self, repo_path: str, name: str) -> Manifest: ...

    def image_facts(self, repo_path: str, name: str) -> ImageFacts: ...

    def plan_notes(self, repo_path: str, name: str, sizes: dict[str, int]) -> list[str]: ...

    def free_space(self, path: str) -> int: ...

    def places(self, include_loop: bool) -> list[Place]: ...

    def place_of(self, device: str) -> Place: ...

    def mount_share(self, share: SmbShare | NfsExport) -> Place: ...

    def release_place(self, place: Place) -> None: ...

    def network(self) -> str: ...

    def prepare(self, path: str) -> str: ...

    def open_place(self, place: Place, repo: str | None, folder: str | None = None) -> Opened: ...

    def close_place(self, opened: Opened) -> None: ...

    def close(self) -> None: ...


def writable_free_space(path: str) -> int:
    """Free bytes at a directory the person typed; refused when missing or not writable."""
    if not os.path.isdir(path):
        raise RepoError(f"{path} is not a directory")
    if not os.access(path, os.W_OK):
        raise RepoError(f"{path} is not writable (read-only or no permission)")
    return shutil.disk_usage(path).free


class LiveMachine:
    """This computer, read now."""

    recorded = False

    def snapshot(self) -> devices.Snapshot:
        return devices.snapshot()

    def target(self, path: str) -> TargetFacts:
        from rescue.imaging.restore import look_at

        return look_at(path)

    def source(self, path: str) -> CapturePlan:
        from rescue.imaging.capture import plan_capture

        return plan_capture(path)

    def probe(self, node: str) -> dict[str, str]:
        from rescue.hw.discover import probe

        return probe(node)

    def find_repositories(self, include_loop: bool) -> list[RepoLocation]:
        from rescue.hw.discover import find_repositories

        return find_repositories(include_loop=include_loop)

    def release(self, located: list[RepoLocation]) -> None:
        from rescue.hw.discover import release

        release(located)

    def _repo(self, path: str) -> Any:
        from rescue.repo.store import Repository

        return Repository.open(path)

    def images(self, repo_path: str) -> list[ImageSummary]:
        return list(self._repo(repo_path).images())

    def manifest(self, repo_path: str, name: str) -> Manifest:
        return self._repo(repo_path).manifest(name)  # type: ignore[no-any-return]

    def image_facts(self, repo_path: str, name: str) -> ImageFacts:
        from rescue.imaging.restore import image_facts

        return image_facts(self._repo(repo_path), name)

    def plan_notes(self, repo_path: str, name: str, sizes: dict[str, int]) -> list[str]:
        """What a plan that gives the areas these sizes does inside them, in words: an LVM
        PV's LVs (imaging/lvm.plan_notes), read from the image's own metadata."""
        from rescue.filesystems import lookup
        from rescue.filesystems.lvm import LvmPv
        from rescue.imaging.lvm import plan_notes
        from rescue.imaging.verify import load_indexes

        repo = self._repo(repo_path)
        resized = [a for a in repo.manifest(name).areas if sizes.get(a.name, a.size) != a.size]
        if not any(isinstance(lookup((a.fs or {}).get("type")), LvmPv) for a in resized):
            return []  # the indexes are read only for an LVM PV that changes size
        manifest, indexes = load_indexes(repo, name)
        return plan_notes(repo, manifest, indexes, sizes)

    def free_space(self, path: str) -> int:
        return writable_free_space(path)

    def places(self, include_loop: bool) -> list[Place]:
        from rescue.hw.discover import survey

        return survey(include_loop=include_loop)

    def place_of(self, device: str) -> Place:
        from rescue.hw.discover import survey

        return survey(devices=[device])[0]

    def mount_share(self, share: SmbShare | NfsExport) -> Place:
        from rescue.hw.discover import mount_share

        return mount_share(share)

    def release_place(self, place: Place) -> None:
        from rescue.hw.discover import release_place

        release_place(place)

    def network(self) -> str:
        from rescue.hw.network import summary

        return summary()

    def prepare(self, path: str) -> str:
        from rescue.hw.destination import prepare

        return prepare(path)

    def open_place(self, place: Place, repo: str | None, folder: str | None = None) -> Opened:
        from rescue.hw.destination import open_for_writing

        return open_for_writing(place, repo, folder)

    def close_place(self, opened: Opened) -> None:
        from rescue.hw.destination import close

        close(opened)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- recording


def _extents(extents: list[Extent] | None) -> list[list[int]] | None:
    return None if extents is None else [[e.start, e.end] for e in extents]


def _from_extents(raw: list[list[int]] | None) -> list[Extent] | None:
    """[[start, end], ...] as recorded (end exclusive) back to Extents (start, length)."""
    return None if raw is None else [Extent(int(s), int(e) - int(s)) for s, e in raw]


def record(include_loop: bool = True) -> dict[str, Any]:
    """Everything the engine asks of this machine, as JSON-ready data. Reads only."""
    live = LiveMachine()
    # Places are surveyed first and released last, so that the kernel's tables are recorded
    # as the wizard sees them: with the filesystems discovery mounted (read-only).
    places = live.places(include_loop)
    located = locations(places)
    try:
        return _record(live, places, located, include_loop)
    finally:
        live.release(located)


def _record(live: LiveMachine, places: list[Place], located: list[RepoLocation], include_loop: bool) -> dict[str, Any]:
    from rescue.hw.firmware import uefi_firmware
    from rescue.hw.scratch import default_dir, space
    from rescue.imaging.restore import image_facts
    from rescue.repo.store import Repository

    kernel = devices.record()
    snap = devices.Snapshot.from_record(kernel, live=True)
    scratch_dir = default_dir()
    free, ram = space(scratch_dir)
    out: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rescue": __version__,
        "kernel": kernel,
        "uefi": uefi_firmware(),
        "scratch": {"dir": scratch_dir, "free": free, "ram": ram},
        "drives": {},
        "probes": {},
        "repositories": [],
        "free_space": {},
        "places": [{**asdict(p), "mounted_by_us": False} for p in places],  # replaying never unmounts
        "network": live.network(),
    }
    for drive in devices.list_drives(include_loop=include_loop, snap=snap):
        entry: dict[str, Any] = {"sector_size": drive.logical_sector_size}
        try:
            facts = live.target(drive.path)
            entry["layout"] = facts.current.to_dict() if facts.current else None
            cap = live.source(drive.path)
            entry["areas"] = [
                {
                    "name": a.name,
                    "offset": a.offset,
                    "size": a.size,
                    "partition": a.partition,
                    "fs": asdict(a.fs) if a.fs else None,
                    "used": _extents(a.used),
                }
                for a in cap.areas
            ]
            entry["source_layout"] = cap.layout.to_dict()
        except RescueError as e:
            entry.setdefault("layout", None)
            entry["areas"] = None
            entry["error"] = str(e)
        out["drives"][drive.path] = entry
        for part in drive.partitions:
            d = snap.by_name(part)
            if d:
                out["probes"][d["node"]] = live.probe(d["node"])
    for loc in located:
        if loc.clonezilla:  # a Clonezilla image directory: not replayed (no chunk store to record)
            continue
        repo = Repository.open(loc.path)
        images = []
        for s in repo.images():
            if s.damaged:
                continue  # a damaged image is listed by the live machine, not replayed
            image = image_facts(repo, s.name)
            images.append(
                {
                    "manifest": repo.manifest(s.name).to_json(),
                    "write": image.write,
                    "held": {a.name: _extents(a.held) for a in image.areas},
                    "verified": s.verified,
                    "stored_bytes": s.stored_bytes,
                }
            )
        out["repositories"].append(
            {
                **asdict(loc),
                "mounted_by_us": False,  # replaying never unmounts
                "free": shutil.disk_usage(loc.path).free,
                "images": images,
            }
        )
    return out


# --------------------------------------------------------------------------- replaying


class RecordedMachine:
    """A machine recorded elsewhere (or written by hand for a demo or a test). While it is
    open, `rescue.hw.devices.snapshot()` answers with its kernel tables, so the safety rules
    look at this machine, not at the one the dry run runs on."""

    recorded = True

    def __init__(self, data: dict[str, Any]):
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise UsageError(f"not a recorded machine ({FORMAT} version {VERSION})")
        self.data = data
        self.snap = devices.Snapshot.from_record(data["kernel"], live=False)
        self.simulate: dict[str, Any] = data.get("simulate", {})
        self.runner = LoggingRunner(float(self.simulate.get("job_seconds", 0)))
        devices.replay(self.snap)

    @classmethod
    def from_file(cls, path: str) -> RecordedMachine:
        try:
            with open(path) as f:
                return cls(json.load(f))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the recorded machine {path}: {e}") from None

    def close(self) -> None:
        devices.replay(None)

    def snapshot(self) -> devices.Snapshot:
        return self.snap

    def _drive(self, path: str) -> dict[str, Any]:
        entry = self.data["drives"].get(path)
        if entry is None:
            raise DeviceError(f"{path} is not a drive of the recorded machine")
        return entry  # type: ignore[no-any-return]

    def target(self, path: str) -> TargetFacts:
        entry = self._drive(path)
        drive = devices.drive_info(path, self.snap)
        layout = entry.get("layout")
        scratch = self.data.get("scratch", {"free": 0, "ram": True})
        return TargetFacts(
            path,
            drive.size,
            int(entry.get("sector_size", 512)),
            DiskLayout.from_dict(layout) if layout else None,
            bool(self.data.get("uefi", False)),
            lambda where: (int(scratch["free"]), bool(scratch["ram"])),
        )

    def source(self, path: str) -> CapturePlan:
        from rescue.filesystems.base import FsInfo

        entry = self._drive(path)
        if entry.get("areas") is None:
            raise DeviceError(entry.get("error") or f"{path} cannot be read")
        plan = CapturePlan(path, DiskLayout.from_dict(entry["source_layout"]))
        plan.areas = [
            AreaPlan(
                a["name"],
                int(a["offset"]),
                int(a["size"]),
                a.get("partition"),
                FsInfo(**a["fs"]) if a.get("fs") else None,
                _from_extents(a.get("used")),
            )
            for a in entry["areas"]
        ]
        return plan

    def probe(self, node: str) -> dict[str, str]:
        return dict(self.data.get("probes", {}).get(node, {}))

    def find_repositories(self, include_loop: bool) -> list[RepoLocation]:
        fields = RepoLocation.__dataclass_fields__
        return [RepoLocation(**{k: v for k, v in r.items() if k in fields}) for r in self._repos()]

    def release(self, located: list[RepoLocation]) -> None:
        pass

    def _repos(self) -> list[dict[str, Any]]:
        return self.data.get("repositories", [])  # type: ignore[no-any-return]

    def repo(self, path: str) -> dict[str, Any]:
        for r in self._repos():
            if r["path"] == path.rstrip("/") or r["path"] == path:
                return r
        raise RepoError(f"{path} is not a rescue repository (no rescue-repo.json)")

    def _image(self, repo_path: str, name: str) -> dict[str, Any]:
        for im in self.repo(repo_path).get("images", []):
            if self._manifest(im).name == name:
                return im  # type: ignore[no-any-return]
        raise RepoError(f"no image named {name!r} in {repo_path}")

    @staticmethod
    def _manifest(im: dict[str, Any]) -> Manifest:
        return Manifest.from_json(im["manifest"], "a recorded image")

    def images(self, repo_path: str) -> list[ImageSummary]:
        out = []
        for im in self.repo(repo_path).get("images", []):
            m = self._manifest(im)
            out.append(
                ImageSummary(
                    m.name,
                    m.created,
                    m.source.get("model") or "",
                    m.source.get("serial") or "",
                    m.source.get("size", 0),
                    m.stats.get("data_bytes", 0),
                    int(im.get("stored_bytes", m.stats.get("stored_bytes", 0))),
                    im.get("verified"),
                )
            )
        return sorted(out, key=lambda s: (s.created, s.name))

    def manifest(self, repo_path: str, name: str) -> Manifest:
        return self._manifest(self._image(repo_path, name))

    def image_facts(self, repo_path: str, name: str) -> ImageFacts:
        im = self._image(repo_path, name)
        m = self._manifest(im)
        held = im.get("held", {})
        areas = [
            AreaFacts(a.name, a.partition, a.size, dict(a.fs) if a.fs else None, _from_extents(held.get(a.name)))
            for a in m.areas
        ]
        return ImageFacts(m.layout, areas, int(im.get("write", m.stats.get("data_bytes", 0))))

    def plan_notes(self, repo_path: str, name: str, sizes: dict[str, int]) -> list[str]:
        return []  # a recording keeps no chunks to read an LVM PV's metadata from

    def add_image(self, repo_path: str, name: str, cap: CapturePlan, source: devices.Drive) -> None:
        """What a capture leaves on the recorded machine: the image in its repository (made
        when the folder was none yet), so that verify, restore and browse find it."""
        import hashlib

        from rescue.repo.manifest import Area
        from rescue.repo.store import now_iso

        areas = [
            Area(
                a.name,
                a.offset,
                a.size,
                f"{a.name}.idx",
                hashlib.sha256(f"{name}/{a.name}".encode()).hexdigest(),
                a.partition,
                asdict(a.fs) if a.fs else None,  # type: ignore[arg-type]
            )
            for a in cap.areas
        ]
        source_facts: SourceFacts = {
            "path": source.path,
            "model": source.model or "",
            "serial": source.serial or "",
            "size": cap.layout.size,
            "logical_sector_size": cap.layout.sector_size,
        }
        read = cap.read_bytes()
        m = Manifest(
            name,
            now_iso(),
            __version__,
            4 << 20,
            "sha256",
            source_facts,
            cap.layout,
            areas,
            {"data_bytes": read, "stored_bytes": read // 2},
        )
        try:
            repo = self.repo(repo_path)
        except RepoError:
            repo = {"path": repo_path, "drive": None, "device": "", "mountpoint": repo_path, "read_only": False}
            repo |= {"mounted_by_us": False, "free": self.free_space(repo_path), "images": []}
            self.data.setdefault("repositories", []).append(repo)
        held = {a.name: _extents(a.used if a.used is not None else [Extent(0, a.size)]) for a in cap.areas}
        image = {"manifest": m.to_json(), "held": held, "write": read, "verified": None, "stored_bytes": read // 2}
        repo.setdefault("images", []).append(image)

    def files(self, repo_path: str, name: str, number: int) -> dict[str, Any] | None:
        """The file tree recorded for browsing a partition, when the record has one."""
        tree = self._image(repo_path, name).get("files", {}).get(str(number))
        return None if tree is None else {"files": tree}

    def places(self, include_loop: bool) -> list[Place]:
        recorded = self.data.get("places")
        if recorded is None:  # an older record: the places that hold its repositories
            by_device: dict[str, dict[str, Any]] = {}
            for r in self._repos():
                probed = self.probe(r["device"])
                p = by_device.setdefault(
                    r["device"],
                    {
                        "device": r["device"],
                        "drive": r["drive"],
                        "fstype": probed.get("TYPE", ""),
                        "label": probed.get("LABEL", ""),
                        "size": int(r.get("free", 0)),
                        "free": int(r.get("free", 0)),
                        "mountpoint": r["mountpoint"],
                        "mounted_by_us": False,
                        "read_only": r["read_only"],
                        "repos": [],
                    },
                )
                p["repos"].append(r["path"])
            recorded = list(by_device.values())
        out = []
        for p in recorded:
            place = Place(**p)
            place.repos = list(place.repos)  # the record's list is not handed out
            out.append(place)
        return out

    def place_of(self, device: str) -> Place:
        for p in self.places(False):
            if p.device == device:
                return p
        raise DeviceError(f"{device} is not a filesystem of the recorded machine")

    def mount_share(self, share: SmbShare | NfsExport) -> Place:
        """A share the record's "simulate": {"shares": {"//server/share": {"error": words} or
        {"size", "free", "repos": [paths]}}} describes; any other has no server to answer."""
        found = self.simulate.get("shares", {}).get(str(share))
        if found is None:
            raise RepoError(f"{share}: no route to host (the recorded machine has no network)")
        if "error" in found:
            raise RepoError(f"{share}: {found['error']}")
        self.runner.step(f"mount {share} read-only")
        where = f"/run/rescue/repos/share-{os.path.basename(str(share))}"
        for path in found.get("repos", []):
            if not any(r["path"] == path for r in self._repos()):
                entry = {"path": path, "drive": None, "device": str(share), "mountpoint": where, "read_only": True}
                self.data.setdefault("repositories", []).append(entry | {"mounted_by_us": False, "images": []})
        fstype = "cifs" if isinstance(share, SmbShare) else "nfs"
        size, free = int(found.get("size", 0)), int(found.get("free", 0))
        return Place(str(share), None, fstype, "", size, free, where, True, True, list(found.get("repos", [])), share)

    def release_place(self, place: Place) -> None:
        pass

    def network(self) -> str:
        return str(self.data.get("network", "no network (a recorded machine)"))

    def prepare(self, path: str) -> str:
        """The drive becomes one exFAT partition (the record's place changes with it)."""
        part = f"{path}p1" if path[-1].isdigit() else f"{path}1"
        self.runner.step(f"prepare {path}: MBR, one partition {part}, exFAT")
        places = [asdict(p) for p in self.places(False) if p.device != path]
        size = next((p.size for p in self.places(False) if p.device == path), 0)
        places.append(
            asdict(Place(part, os.path.basename(path), "exfat", "RESCUE", size, size, None, False, False, []))
        )
        self.data["places"] = places
        return part

    def open_place(self, place: Place, repo: str | None, folder: str | None = None) -> Opened:
        theirs = place.mountpoint is not None and not place.mounted_by_us  # used where it is
        where = (
            place.mountpoint if place.mountpoint and theirs else f"/run/rescue/dest/{os.path.basename(place.device)}"
        )
        path = os.path.join(where, folder) if folder else repo or os.path.join(where, "rescue-images")
        self.runner.step(f"use {where}" if theirs else f"mount {place.device} read-write at {where}")
        self.data.setdefault("free_space", {})[path] = place.free or 0
        return Opened(place, where, path, None)

    def close_place(self, opened: Opened) -> None:
        self.runner.step(f"sync and unmount {opened.where}")

    def free_space(self, path: str) -> int:
        for r in self._repos():
            if r["path"] == path:
                if r.get("read_only"):
                    raise RepoError(f"{path} is not writable (read-only or no permission)")
                return int(r.get("free", 0))
        free = self.data.get("free_space", {})
        if path in free:
            return int(free[path])
        scratch = self.data.get("scratch", {})
        if path == scratch.get("dir"):  # recorded with its free space: a destination as good as any
            return int(scratch["free"])
        raise RepoError(f"{path} is not a directory")


@dataclass
class LoggingRunner:
    """Carries out a job on a recorded machine: logs each step, writes nothing, and reports
    progress over the bytes the step would move, as the engine's Meter would."""

    seconds: float = 0.0  # how long a job takes, for demos
    log: list[str] = field(default_factory=list)

    def step(self, what: str) -> None:
        self.log.append(what)

    def move(
        self,
        phase: str,
        areas: list[tuple[str, int]],
        progress: Callable[[Progress], None],
        cancel: threading.Event,
    ) -> float:
        total = sum(size for _, size in areas)
        steps, done, start = 10, 0, time.monotonic()
        for area, size in areas:
            self.log.append(f"{phase} {area}: {size} bytes")
            for i in range(1, steps + 1):
                if cancel.is_set():
                    raise Cancelled(f"{phase} cancelled by the user")
                if self.seconds:
                    time.sleep(self.seconds / (steps * max(len(areas), 1)))
                now = size * i // steps
                rate = (done + now) / max(time.monotonic() - start, 1e-3)
                eta = (total - done - now) / rate if rate else None
                progress(Progress(phase, area, now, size, done + now, total, rate, eta))
            done += size
        return time.monotonic() - start

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

Optional per drive: "refused" (a target safety rule's words), "source_refused" (why it cannot
be read), "bad_ranges" ([[offset, length], ...] met when cloning or capturing it). Optional per
image partition: "min_size" (bytes it can shrink to), "files" (a tree for browsing: a name maps
to {"size": N, "mtime": T} for a file, {"files": {...}, "mtime": T} for a folder,
{"link": "target"} for a symlink).
"""

from __future__ import annotations

import json
import threading
import time

from rescue.errors import Cancelled, RefusedError, RepoError, UsageError
from rescue.filesystems import lookup
from rescue.imaging.progress import Progress, fmt_bytes
from rescue.model.layout import DiskLayout, Partition
from rescue.tui.backend import (
    BrowseSession,
    CaptureOutcome,
    CloneOutcome,
    CopyOutcome,
    DriveInfo,
    FileEntry,
    ImageInfo,
    ImagePart,
    PartInfo,
    Plan,
    RepoInfo,
    RestoreOutcome,
    ascii_text,
    min_target_size,
)

MiB = 1 << 20
SECTOR = 512
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def _is_fat(fstype: str | None) -> bool:
    """An ESP is FAT: the filesystem class that mtools reads."""
    kind = lookup(fstype)
    return kind is not None and kind.mtools


def _layout_of(parts: list[dict], disk_size: int) -> DiskLayout:
    """A GPT layout with the given partition sizes laid end to end from 1 MiB."""
    start, out = MiB // SECTOR, []
    for i, p in enumerate(parts, 1):
        length = int(p["size"]) // SECTOR
        esp = _is_fat(p.get("fstype")) and p.get("label", "").upper() == "EFI"
        out.append(
            Partition(
                number=i,
                start=start,
                end=start + length - 1,
                name=p.get("label", ""),
                type_guid=ESP_GUID if esp else None,
            )
        )
        start += length
    return DiskLayout(table="gpt", sector_size=SECTOR, size=disk_size, partitions=out)


def _facts(parts: list[dict]) -> dict:
    """What the engine's planner would know of each partition (min_size: used + 25% when the
    machine does not say)."""
    from rescue.model.plan import PartFacts

    out = {}
    for i, p in enumerate(parts, 1):
        fs = p.get("fstype") or None
        kind = lookup(fs)
        used = p.get("used", p["size"] // 4)
        out[i] = PartFacts(
            fs,
            int(p.get("min_size", used + used // 4)) if fs else None,
            can_shrink=kind is not None and kind.can_shrink,
            can_grow=kind is not None and kind.can_grow,
        )
    return out


def _plan(
    what: str,
    parts: list[dict],
    source_size: int,
    target: DriveInfo,
    policy: str,
    write: int,
    current: DiskLayout | None,
) -> Plan:
    """The engine's own planner (a pure function) over the recorded sizes."""
    from rescue.model.plan import plan_layout

    if policy not in ("auto", "same", "proportional", "grow-last"):
        raise UsageError(f"unknown layout policy {policy!r}")
    image = _layout_of(parts, source_size)
    if policy == "auto":
        policy = "same" if abs(target.size - source_size) < MiB else "proportional"
    lp = plan_layout(image, _facts(parts), target.size, SECTOR, policy)
    if lp.fits:
        reason = lp.reason
    else:
        need = target.size + lp.shortfall
        reason = (
            f"{target.path} is too small: {what} needs {fmt_bytes(need)}, the drive has "
            f"{fmt_bytes(target.size)}, short by {fmt_bytes(lp.shortfall)} ({lp.shortfall} bytes)"
            + (f"; {lp.reason}" if lp.reason else "")
        )
    new_fs = {i: p.get("fstype", "") for i, p in enumerate(parts, 1)}
    from rescue import planview

    shown = planview.lines(lp, image, reason, lp.notes, [])
    return Plan(
        target.path,
        target.size,
        lp.layout,
        current,
        lp.fits,
        ascii_text(reason),
        write,
        new_fs,
        policy,
        [(k, ascii_text(t)) for k, t in shown],
        [ascii_text(n) for n in lp.notes],
    )


def _entry(path: str, name: str, node: dict) -> FileEntry:
    is_dir = "files" in node
    return FileEntry(
        name,
        path,
        is_dir,
        0 if is_dir else int(node.get("size", 0)),
        float(node.get("mtime", 1714557600)),
        node.get("link"),
    )


def _node_size(node: dict) -> tuple[int, int]:
    if "files" not in node:
        return (0, 0) if "link" in node else (1, int(node.get("size", 0)))
    files = size = 0
    for child in node["files"].values():
        f, b = _node_size(child)
        files, size = files + f, size + b
    return files, size


DEFAULT_TREE = {  # shown for a browsable partition the machine gives no files for
    "etc": {"files": {"hostname": {"size": 6}, "fstab": {"size": 612}}},
    "home": {"files": {"user": {"files": {"notes.txt": {"size": 2048}}}}},
    "README": {"size": 120},
}


class DryRunBackend:
    """The Backend protocol over a machine description held in memory."""

    def __init__(self, machine: dict):
        self.machine = machine
        self.job_seconds = float(machine.get("job_seconds", 0))
        self.log_dir = machine.get("log_dir", "/tmp")
        self.power: str | None = None  # "reboot" | "poweroff" once asked

    @classmethod
    def from_file(cls, path: str) -> DryRunBackend:
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
        return [
            DriveInfo(
                d["name"],
                d.get("path", "/dev/" + d["name"]),
                d.get("model", "unknown model"),
                d.get("serial", "-"),
                int(d["size"]),
                d.get("bus", "sata"),
                bool(d.get("removable", False)),
            )
            for d in self._drives()
        ]

    def boot_drive(self) -> str | None:
        return self.machine.get("boot_drive")

    def find_repositories(self) -> list[RepoInfo]:
        return [
            RepoInfo(r["path"], r.get("drive"), bool(r.get("read_only", False)))
            for r in self.machine.get("repositories", [])
            if r.get("found", True)
        ]

    def open_repository(self, path: str) -> RepoInfo:
        r = self._repo(path)
        return RepoInfo(r["path"], r.get("drive"), bool(r.get("read_only", False)))

    def list_images(self, repo_path: str) -> list[ImageInfo]:
        fields = ImageInfo.__dataclass_fields__
        return [
            ImageInfo(**{k: v for k, v in im.items() if k in fields}) for im in self._repo(repo_path).get("images", [])
        ]

    def image_needs(self, repo_path: str, name: str) -> int:
        im = self._image(repo_path, name)
        parts = im.get("partitions", [])
        return min_target_size(_layout_of(parts, im["source_size"]), _facts(parts))

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        for d in self._drives():
            if d["name"] == drive.name:
                return [
                    PartInfo(p["name"], int(p["size"]), p.get("fstype", ""), p.get("label", ""))
                    for p in d.get("partitions", [])
                ]
        return []

    def target_refusal(self, drive: DriveInfo, repo_path: str | None) -> str | None:
        for d in self._drives():
            if d["name"] == drive.name and d.get("refused"):
                return d["refused"]
        return None

    def _drive(self, path: str) -> DriveInfo:
        for d in self.list_drives():
            if d.path == path:
                return d
        raise RepoError(f"{path} is not a drive of this machine")

    def _current(self, drive: DriveInfo) -> DiskLayout:
        return _layout_of([{"size": p.size, "label": p.label} for p in self.partitions(drive)], drive.size)

    def plan_restore(self, repo_path: str, name: str, target_path: str, policy: str = "auto") -> Plan:
        im = self._image(repo_path, name)
        drive = self._drive(target_path)
        return _plan(
            "the image",
            im.get("partitions", []),
            im["source_size"],
            drive,
            policy,
            im["data_bytes"],
            self._current(drive),
        )

    # clone ------------------------------------------------------------------------------------
    def _drive_desc(self, name: str) -> dict:
        return next((d for d in self._drives() if d["name"] == name), {})

    def source_refusal(self, drive: DriveInfo) -> str | None:
        return self._drive_desc(drive.name).get("source_refused")

    def clone_refusal(self, target: DriveInfo, source: DriveInfo) -> str | None:
        if target.name == source.name:
            return f"target {target.path} is the source drive ({source.path})"
        return self._drive_desc(target.name).get("refused")

    def _source_parts(self, source: DriveInfo) -> list[dict]:
        return [
            {
                "size": p.size,
                "fstype": p.fstype,
                "label": p.label,
                **{k: v for k, v in q.items() if k in ("used", "min_size")},
            }
            for p, q in zip(self.partitions(source), self._drive_desc(source.name).get("partitions", []))
        ]

    def clone_needs(self, source: DriveInfo) -> int:
        parts = self._source_parts(source)
        return min_target_size(_layout_of(parts, source.size), _facts(parts))

    def plan_clone(self, source_path: str, target_path: str, policy: str = "auto") -> Plan:
        source, target = self._drive(source_path), self._drive(target_path)
        if source.path == target.path:
            raise RefusedError(f"the target {target_path} is the source drive")
        parts = self._source_parts(source)
        used = sum(int(p.get("used", p["size"] // 4)) for p in parts)
        return _plan(source.path, parts, source.size, target, policy, used, self._current(target))

    def clone(self, source_path, target_path, plan, progress, cancel) -> CloneOutcome:
        source = self._drive(source_path)
        areas = [(f"{p.name} ({p.fstype or 'raw'})", p.size // 8) for p in self.partitions(source)] or [
            ("disk", source.size // 8)
        ]
        seconds = self._run("clone", areas, progress, cancel)
        bad = [(int(o), int(n)) for o, n in self._drive_desc(source.name).get("bad_ranges", [])]
        return CloneOutcome(
            target_path,
            sum(s for _, s in areas),
            seconds,
            sum(n for _, n in bad) // SECTOR,
            bad,
            f"{self.log_dir}/clone.log",
        )

    # browse -----------------------------------------------------------------------------------
    def image_partitions(self, repo_path: str, name: str) -> list[ImagePart]:
        out = []
        for i, p in enumerate(self._image(repo_path, name).get("partitions", []), 1):
            fs = p.get("fstype", "")
            kind = lookup(fs)
            refused = "no filesystem" if not fs else kind.no_files if kind is not None else None
            out.append(ImagePart(i, int(p["size"]), fs, p.get("label", ""), p.get("used"), refused))
        return out

    def _tree(self, session: BrowseSession) -> dict:
        p = self._image(session.repo_path, session.image)["partitions"][session.part.number - 1]
        return {"files": p.get("files", DEFAULT_TREE)}

    def _node(self, session: BrowseSession, path: str) -> dict:
        node = self._tree(session)
        for c in [c for c in path.split("/") if c]:
            node = node.get("files", {}).get(c)
            if node is None:
                raise UsageError(f"{path} does not exist in partition {session.part.number}")
        return node

    def browse_open(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        if part.refused:
            raise UsageError(f"partition {part.number} cannot be browsed: {part.refused}")
        root = None if part.fat else f"/run/rescue/wizard/p{part.number}"
        return BrowseSession(repo_path, name, part, root, handle="mounted")

    def browse_list(self, session: BrowseSession, path: str) -> list[FileEntry]:
        if session.root is None:
            return []
        node = self._node(session, path)
        if "files" not in node:
            raise UsageError(f"{path} is not a folder")
        out = [_entry(path.rstrip("/") + "/" + n, n, c) for n, c in node["files"].items()]
        return sorted(out, key=lambda f: (not f.is_dir, f.name))

    def browse_close(self, session: BrowseSession) -> None:
        session.handle = None

    def check_copy(self, session: BrowseSession, paths: list[str], dest: str) -> None:
        existing = self.machine.get("existing_files", [])  # paths that "exist" on this machine
        names = (
            [f"{session.image}-p{session.part.number}"]
            if session.root is None
            else [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]
        )
        for n in names:
            target = dest.rstrip("/") + "/" + n
            if target in existing:
                raise UsageError(f"{target} already exists: choose another folder or move it away first")

    def copy_files(self, session, paths, dest, progress, cancel) -> CopyOutcome:
        self.free_space(dest)  # must exist (be known) in the recorded machine
        if session.root is None:
            paths = ["/"]
            areas = [(f"p{session.part.number} (whole partition)", session.part.used or session.part.size)]
            files = 1
        else:
            if not paths:
                raise UsageError("choose at least one file or folder first (Space marks it)")
            sizes = [_node_size(self._node(session, p)) for p in paths]
            areas = [(p, max(b, 1)) for p, (_, b) in zip(paths, sizes)]
            files = sum(f for f, _ in sizes)
        seconds = self._run("copy", areas, progress, cancel)
        names = [
            dest.rstrip("/") + "/" + (p.rstrip("/").rsplit("/", 1)[-1] or f"{session.image}-p{session.part.number}")
            for p in paths
        ]
        return CopyOutcome(dest, names, files, sum(b for _, b in areas), seconds)

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
                progress(
                    Progress(
                        phase,
                        area,
                        size // steps * i if i < steps else size,
                        size,
                        done,
                        total,
                        rate,
                        (total - done) / rate,
                    )
                )
        return time.monotonic() - start

    def restore(self, repo_path, name, target_path, plan, progress, cancel) -> RestoreOutcome:
        im = self._image(repo_path, name)
        areas = [
            (f"p{i} ({p.get('fstype') or 'raw'})", int(p.get("used", p["size"]) // 8))
            for i, p in enumerate(im.get("partitions", []), 1)
        ] or [("disk", im["data_bytes"])]
        seconds = self._run("restore", areas, progress, cancel)
        return RestoreOutcome(
            target_path, sum(s for _, s in areas), seconds, True, f"{self.log_dir}/restore-{name}.log"
        )

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
        repo = (
            self._repo(repo_path) if any(r["path"] == repo_path for r in self.machine.get("repositories", [])) else None
        )
        if repo is not None:
            repo.setdefault("images", []).append(
                {
                    "name": name,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "source_model": drive.model,
                    "source_serial": drive.serial,
                    "source_size": drive.size,
                    "data_bytes": size,
                    "stored_bytes": size // 2,
                    "verified": None,
                    "partitions": [{"size": p.size, "fstype": p.fstype} for p in self.partitions(drive)],
                }
            )
        bad = [(int(o), int(n)) for o, n in self._drive_desc(drive.name).get("bad_ranges", [])]
        return CaptureOutcome(
            name, size, size // 2, seconds, f"{repo_path}/images/{name}/log.txt", sum(n for _, n in bad) // SECTOR, bad
        )

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

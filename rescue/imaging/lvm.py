"""The storage stack of an image's partitions (LUKS, LVM PV -> VG -> LVs, md members), read
back from the image itself for `rescue info`: a PV's label and metadata area are captured raw
(rescue/filesystems/lvm.py), so the volume group shown is the one the restore writes back;
and, from the same metadata, what a restore plan does to the LVs (`plan_notes`).
Layers imaged whole say why (model/stack.IMAGED_WHOLE; BitLocker is engine.windows_lines')."""

from __future__ import annotations

from typing import Any

from rescue.errors import RescueError
from rescue.filesystems import lookup
from rescue.filesystems.lvm import LvmPv, can_be_root
from rescue.hw import luks
from rescue.hw.lvm import read_pv
from rescue.imaging.verify import fetch_chunk
from rescue.model.lvmplan import pick_root, plan_words
from rescue.model.stack import IMAGED_WHOLE, LUKS_TYPE, Stack, lv_contents, stack_lines
from rescue.repo.index import Index, Kind
from rescue.repo.store import Repository


class _AreaReader:
    """pread over one area's stored chunks (UNUSED and ZERO read as zeros)."""

    def __init__(self, repo: Repository, image: str, area: str, index: Index):
        self.repo, self.image, self.area, self.index = repo, image, area, index
        self.cache: dict[int, bytes] = {}

    def _chunk(self, i: int) -> bytes:
        if i not in self.cache:
            start, length = self.index.span(i)
            kind = self.index.kinds[i]
            if kind == Kind.DATA:
                self.cache[i] = fetch_chunk(self.repo, self.image, self.area, self.index, i)
            elif kind == Kind.UNREADABLE:
                raise RescueError(f"area {self.area}: chunk {i} was unreadable on the source")
            else:
                self.cache[i] = bytes(length)
        return self.cache[i]

    def pread(self, length: int, offset: int) -> bytes:
        size = self.index.chunk_size
        out = b""
        while length > 0 and offset < self.index.area_size:
            i, at = divmod(offset, size)
            part = self._chunk(i)[at : at + length]
            if not part:
                break
            out += part
            offset, length = offset + len(part), length - len(part)
        return out


def image_stack_lines(repo_path: str, manifest: Any) -> list[str]:
    """One line per layer for each partition that is a PV, LUKS or an md member; a layer
    whose header cannot be read from the image says so instead."""
    out: list[str] = []
    repo: Repository | None = None
    for area in manifest.areas:
        fs = area.fs or {}
        fstype = fs.get("type")
        is_pv = isinstance(lookup(fstype), LvmPv)
        if not is_pv and fstype not in IMAGED_WHOLE:
            continue
        name = f"#{area.partition}" if area.partition is not None else area.name
        stack = Stack(whole=IMAGED_WHOLE.get(fstype))
        try:
            if manifest.hash == "clonezilla":
                raise RescueError("not read from a Clonezilla image")
            repo = repo or Repository.open(repo_path)
            reader = _AreaReader(repo, manifest.name, area.name, repo.load_index(manifest.name, manifest, area.name))
            if is_pv:
                stack.pv = read_pv(reader.pread)
                vg = stack.pv.vg if stack.pv else None
                sizes = {lv.name: lv.extent_count * vg.extent_size for lv in vg.lvs} if vg else {}
                stack.lvs = lv_contents(fs.get("map_source"), sizes)
            elif fstype == LUKS_TYPE:
                head = reader.pread(luks.BINARY_HEADER, 0)
                stack.luks = luks.parse_header(reader.pread(luks.hdr_size(head), 0))
        except (RescueError, OSError) as e:
            out.append(f"{name}: {fstype}: the header cannot be read from the image ({e})")
        out += stack_lines(name, stack)
    return out


def plan_notes(repo: Repository, manifest: Any, indexes: dict[str, Index], sizes: dict[str, int]) -> list[str]:
    """For each PV the plan resizes (sizes: the new partition size by area name), what
    happens to its LVs in words (model/lvmplan.plan_words), read from the image's metadata
    and the filesystem types the capture recorded per LV; the restore's own choice of the
    root LV (filesystems/lvm.root_lv) looks at the same types on the target. A PV whose
    metadata cannot be read from the image says so; a Clonezilla image has none to read."""
    out: list[str] = []
    if manifest.hash == "clonezilla":
        return out
    for area in manifest.areas:
        fs = area.fs or {}
        new = sizes.get(area.name)
        if not isinstance(lookup(fs.get("type")), LvmPv) or new is None or new == area.size:
            continue
        name = f"#{area.partition}" if area.partition is not None else area.name
        try:
            pv = read_pv(_AreaReader(repo, manifest.name, area.name, indexes[area.name]).pread)
        except (RescueError, OSError) as e:
            out.append(f"{name}: LVM: the metadata cannot be read from the image ({e})")
            continue
        if pv is None:
            continue
        roots = [c.name for c in lv_contents(fs.get("map_source"), {}) if _root_type(c.fstype)]
        words = plan_words(pv, pick_root(pv, roots), new)
        if words:
            out.append(f"{name}: {words}")
    return out


def _root_type(fstype: str | None) -> bool:
    fs = lookup(fstype)
    return fs is not None and can_be_root(fs)

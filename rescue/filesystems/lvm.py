"""An LVM2 physical volume, in the class `LvmPv`: a partition whose blkid TYPE is
LVM2_member. Its used-block map is the PV's head (label and metadata area, everything before
pe_start, kept raw), any other metadata area, and per logical volume the used blocks of the
filesystem inside it, found by that filesystem's own class on the byte range the LV's extents
cover; free extents are not read (docs/lvm-luks.md).

Nothing is activated: the metadata is read from the PV's bytes (rescue/hw/lvm.py), and an LV
that is one linear run of extents is an ordinary Volume at an offset of the partition. An LV
that is not (several segments, striped, raid, thin, snapshot) has all its extents on this PV
kept whole, and the map source says why.

Restore writes every kept byte back at its offset: the PV, VG and LVs come back with the
same UUIDs and names, each LV on the same extents, and the partition keeps its identity (no
renumbering). A larger or smaller partition resizes the PV and the root LV with its
filesystem, wherever root lies, moving the LVs after it (`_resize`, model/lvmplan.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

from rescue.errors import FilesystemError, RescueError
from rescue.filesystems.base import Examined, Filesystem, FsInfo, Volume, device_size, mib
from rescue.hw.lvm import format_text, lvm_run, parse_text, read_pv, read_text, relocate
from rescue.hw.mounts import loop_attached
from rescue.model.extents import Extent, normalize, total
from rescue.model.lvmplan import LvResize, copy_steps, lv_words, min_extents, pick_root, resize_layout, used_end
from rescue.model.stack import LogicalVolume, LvContent, PhysicalVolume, map_source_text

MOVE_CHUNK = 4 << 20  # bytes copied at a time when an LV's extents move on the device


class LvmPv(Filesystem):
    names = ("LVM2_member",)
    can_grow = True  # the PV fills the larger partition; the root LV grows (`root_lv`)
    grow_fills = True
    can_shrink = True  # down to FsInfo.min_size: the root LV's filesystem shrinks (`pv_min_size`)
    shrink_moves_data = True
    resize_floor = 0
    mount_type = None
    mount_ro = None
    mount_rw = None
    image_store = None
    owners = False
    no_files = "an LVM physical volume: the files of its logical volumes are not browsable yet"
    mtools = False
    linux_config = False
    can_renumber = False
    can_name_files = False

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        pv = read_pv(vol.pread)
        if pv is None:
            raise FilesystemError("no LVM2 label in the first four sectors")
        extents, contents, roots = pv_map(vol, pv)
        vg = pv.vg
        info = FsInfo(
            type=self.type,
            uuid=pv.label.uuid,
            label=vg.name if vg else None,
            used_bytes=total(extents),
            min_size=pv_min_size(pv, root_lv(pv, roots)),
            map_source=map_source_text(contents),
        )
        return Examined(info, extents)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """Resize the PV on `device` (the partition, or on a shrink the split device of the
        old size) to new_size, and the root LV (`root_lv`) with its filesystem by the extents
        gained or lost; the runs after root move up or down by as many (docs/lvm-luks.md,
        model/lvmplan.py): their bytes are copied on the device, then the edited metadata is
        written with vgcfgrestore, so every LV stays the run(s) it was. Growing: pvresize,
        moves, metadata, then the filesystem grows. Shrinking: the filesystem shrinks first,
        then moves, metadata, pvresize. Without a root LV only the PV changes (the new space
        stays free). lvm2 runs scoped to `device` and activates nothing."""
        vol = Volume(device, 0, device_size(device))
        before = read_pv(vol.pread)
        if before is None or before.vg is None or before.ref is None:
            raise FilesystemError(f"no LVM2 volume group on {device}")
        old, ext, pe_start = before.label.device_size, before.vg.extent_size, before.pe_start
        found = root_lv(before, pv_map(vol, before)[2])
        floor = pv_min_size(before, found)
        if new_size < old and (floor is None or new_size < floor):
            need = "" if floor is None else f": it needs at least {mib(floor)}"
            raise FilesystemError(f"cannot shrink the LVM physical volume on {device} to {mib(new_size)}{need}")
        pvresize = ["pvresize", "--yes", "--setphysicalvolumesize", f"{new_size}b", device]
        pv_done = self._done(device, old, new_size, "pvresize")
        pe_count = (new_size - pe_start) // ext
        if found is None or pe_count == used_end(before):
            lvm_run(device, pvresize)
            return pv_done + (
                "; no LV holds a Linux root filesystem that can grow" if found is None else "; the LVs keep their size"
            )
        lv, fs, _ = found
        try:
            layout = resize_layout(before, lv, pe_count)
        except ValueError as e:
            raise FilesystemError(f"cannot resize the LVM physical volume on {device}: {e}") from None
        span = before.lv_span(lv)
        assert span is not None  # root_lv picks one-run LVs
        new_bytes = layout.new_extents * ext
        done = []
        if layout.new_extents < layout.old_extents:
            with loop_attached(device, offset=span[0], size=span[1]) as dev:
                done.append(fs.resize(dev, new_bytes))
        else:
            lvm_run(device, pvresize)
            done.append(pv_done)
        move_runs(device, layout, pe_start, ext)
        text = read_text(vol.pread)
        if text is None or text[1] is None:
            raise FilesystemError(f"no LVM2 metadata on {device}")
        tree = relocate(
            parse_text(text[1]), before.ref.key, {m.src: m.dst for m in layout.moves}, (lv.name, layout.new_extents)
        )
        with tempfile.NamedTemporaryFile("w", suffix=".vg") as f:
            f.write(format_text(tree))
            f.flush()
            lvm_run(device, ["vgcfgrestore", "-f", f.name, before.vg.name])
        after = read_pv(vol.pread)
        got = after.lv_span(next(x for x in after.lvs_here() if x.uuid == lv.uuid)) if after else None
        if got != (span[0], new_bytes):
            raise FilesystemError(f"LV {lv.name} is not one run of {layout.new_extents} extents after vgcfgrestore")
        done.append(lv_words(layout, ext))
        if layout.new_extents < layout.old_extents:
            lvm_run(device, pvresize)
            done.append(pv_done)
        else:
            with loop_attached(device, offset=span[0], size=new_bytes) as dev:
                done.append(fs.resize(dev, new_bytes))
        return "; ".join(done)


def move_runs(device: str, layout: LvResize, pe_start: int, extent_size: int) -> None:
    """Copy the bytes of every run the layout moves, in its order, piece by piece in the
    order copy_steps gives, so that overlapping runs never lose a byte."""
    fd = os.open(device, os.O_RDWR)
    try:
        for m in layout.moves:
            src, dst = pe_start + m.src * extent_size, pe_start + m.dst * extent_size
            for at, to, n in copy_steps(src, dst, m.extent_count * extent_size, MOVE_CHUNK):
                data = os.pread(fd, n, at)
                if len(data) != n or os.pwrite(fd, data, to) != n:
                    raise FilesystemError(f"moving LV {m.lv} on {device}: short read or write at byte {at}")
        os.fsync(fd)
    finally:
        os.close(fd)


Root = tuple[LogicalVolume, Filesystem, FsInfo]


def root_lv(pv: PhysicalVolume, roots: dict[str, tuple[Filesystem, FsInfo]]) -> Root | None:
    """The LV resized with its PV (model/lvmplan.pick_root) and the filesystem in it, of the
    LVs pv_map found holding one that `can_be_root`."""
    root = pick_root(pv, roots)
    return (root, *roots[root.name]) if root is not None else None


def can_be_root(fs: Filesystem) -> bool:
    """A filesystem an LV resized with its PV may hold: one that can be a Linux root and
    grows to fill its device."""
    return fs.can_grow and fs.grow_fills and fs.linux_config


def pv_min_size(pv: PhysicalVolume, found: Root | None) -> int | None:
    """The smallest partition the PV can be resized to (FsInfo.min_size): its head, every
    used extent, less what the root LV can give up when its filesystem can shrink to its own
    min_size. The planner's margin over this minimum (model/plan.resize_margin) all goes to
    root, which takes every extent the PV has past the other LVs. None when a metadata area
    lies past pe_start (at the end of the PV: not moved by this code)."""
    if pv.vg is None or any(m.offset >= pv.pe_start for m in pv.label.metadata_areas):
        return None
    root_min = None
    if found is not None and found[1].can_shrink and found[2].min_size is not None:
        root_min = max(found[2].min_size, found[1].resize_floor)
    return pv.pe_start + min_extents(pv, found[0] if found else None, root_min) * pv.vg.extent_size


def pv_map(
    vol: Volume, pv: PhysicalVolume
) -> tuple[list[Extent], list[LvContent], dict[str, tuple[Filesystem, FsInfo]]]:
    """The PV's used byte ranges (relative to its start), what each LV on it holds, and the
    LVs (by name) whose filesystem `can_be_root`, with it."""
    from rescue.filesystems import identify  # the registry imports this module

    if pv.vg is None:
        # An orphan, or a PV whose metadata copies live on the VG's other PVs only: where its
        # LVs lie is not known from this PV, so nothing may be left out.
        raise FilesystemError("no volume group metadata on this PV")
    if pv.ref is None:
        raise FilesystemError(f"the metadata of VG {pv.vg.name} does not list this PV ({pv.label.uuid})")
    if pv.pe_start <= 0 or pv.pe_start > vol.size:
        raise FilesystemError(f"LVM2 pe_start {pv.pe_start} is outside the partition")
    ranges: list[tuple[int, int]] = list(pv.metadata_ranges())
    contents: list[LvContent] = []
    roots: dict[str, tuple[Filesystem, FsInfo]] = {}
    for lv in pv.lvs_here():
        span = pv.lv_span(lv)
        whole = pv.lv_ranges(lv)
        if any(o + n > vol.size for o, n in whole):
            raise FilesystemError(f"LV {lv.name} ends past the end of the partition")
        size = lv.extent_count * (pv.vg.extent_size if pv.vg else 0)
        if span is None or not lv.visible:
            # Hidden LVs are parts of another (raid images, thin pool data, cache origins whose
            # newest blocks may sit in the cache): their own bitmaps are not to be trusted.
            why = lv.why_not_linear() if span is None else "hidden, part of another LV"
            ranges += whole
            contents.append(LvContent(lv.name, size, None, f"imaged whole ({why})"))
            continue
        offset, length = span
        why = "imaged whole (no filesystem known to rescue)"
        try:
            found = identify(Volume(vol.path, vol.offset + offset, length))
        except RescueError as e:
            found, why = None, f"imaged whole (cannot map used blocks: {e})"
        fstype = found.info.type if found and found.info else None
        if found is not None and found.extents is not None and found.info is not None:
            ranges += [(offset + e.start, e.length) for e in found.extents]
            how = f"used blocks ({found.info.map_source or 'map'})"
            if found.fs is not None and can_be_root(found.fs):
                roots[lv.name] = (found.fs, found.info)
        else:
            ranges += whole
            how = why
        contents.append(LvContent(lv.name, length, fstype, how))
    return normalize(ranges, vol.size), contents, roots

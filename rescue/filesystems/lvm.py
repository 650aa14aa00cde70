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
renumbering). A larger partition grows the PV and the last LV with its filesystem
(`_resize`); shrinking is not built yet (docs/lvm-luks.md)."""

from __future__ import annotations

from collections.abc import Mapping

from rescue.errors import FilesystemError, RescueError
from rescue.filesystems.base import Examined, Filesystem, FsInfo, Volume, mib
from rescue.hw.lvm import lvm_run, read_pv
from rescue.hw.mounts import loop_attached
from rescue.model.extents import Extent, normalize, total
from rescue.model.stack import LvContent, PhysicalVolume, map_source_text


class LvmPv(Filesystem):
    names = ("LVM2_member",)
    can_grow = True  # the PV fills the larger partition; the last LV grows when it holds a Linux root
    grow_fills = True
    can_shrink = False
    shrink_moves_data = False
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
        extents, contents = pv_map(vol, pv)
        vg = pv.vg
        info = FsInfo(
            type=self.type,
            uuid=pv.label.uuid,
            label=vg.name if vg else None,
            used_bytes=total(extents),
            min_size=None,
            map_source=map_source_text(contents),
        )
        return Examined(info, extents)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """Grow the PV on `device` (exactly the new partition) to new_size with pvresize, then
        the last LV on it into the new free extents, contiguously, with lvextend, and the
        filesystem inside to fill it, when that filesystem can be a Linux root (the root LV
        by default: Ubuntu Server's is the only one). Otherwise the new space stays free in
        the VG. lvm2 runs scoped to `device` and activates nothing."""
        before = read_pv(Volume(device, 0, new_size).pread)
        if before is None or before.vg is None:
            raise FilesystemError(f"no LVM2 volume group on {device}")
        old = before.label.device_size
        if new_size < old:
            raise FilesystemError(
                f"cannot shrink an LVM physical volume ({mib(old)} to {mib(new_size)}): not built yet"
            )
        lvm_run(device, ["pvresize", "--yes", "--setphysicalvolumesize", f"{new_size}b", device])
        done = [self._done(device, old, new_size, "pvresize")]
        lv = before.last_lv()
        span = before.lv_span(lv) if lv is not None else None
        if lv is None or span is None:
            return done[0] + "; no LV can grow contiguously"
        from rescue.filesystems import identify

        fs = identify(Volume(device, *span)).fs
        if fs is None or not (fs.can_grow and fs.grow_fills and fs.linux_config):
            return done[0] + f"; LV {lv.name} kept at {mib(span[1])} (the new space stays free in the VG)"
        lvm_run(device, ["lvextend", "--alloc", "contiguous", "-l", "+100%FREE", f"{before.vg.name}/{lv.name}"])
        after = read_pv(Volume(device, 0, new_size).pread)
        grown = after.lv_span(next(x for x in after.lvs_here() if x.uuid == lv.uuid)) if after else None
        if grown is None or grown[0] != span[0]:
            raise FilesystemError(f"LV {lv.name} did not stay one run after lvextend")
        done.append(f"LV {lv.name} grown from {mib(span[1])} to {mib(grown[1])} (lvextend)")
        with loop_attached(device, offset=grown[0], size=grown[1]) as dev:
            done.append(fs.resize(dev, grown[1]))
        return "; ".join(done)


def pv_map(vol: Volume, pv: PhysicalVolume) -> tuple[list[Extent], list[LvContent]]:
    """The PV's used byte ranges (relative to its start) and what each LV on it holds."""
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
        else:
            ranges += whole
            how = why
        contents.append(LvContent(lv.name, length, fstype, how))
    return normalize(ranges, vol.size), contents

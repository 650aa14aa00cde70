"""What sits between a partition and its filesystems: LUKS, an LVM physical volume, its volume
group and logical volumes (docs/lvm-luks.md). Plain data read from on-disk headers
(rescue/hw/lvm.py, rescue/hw/luks.py) without activating anything, and the pure questions
asked of it: where each logical volume's bytes lie on the partition, and the lines `rescue
info` shows.

A linear logical volume is a list of segments, each a run of physical extents; extent e of a
physical volume is at pe_start + e * extent_size from the start of the PV. So an LV's bytes
on the partition follow from the metadata alone."""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1 << 20
SECTOR = 512


@dataclass(frozen=True)
class PvRun:
    """extent_count physical extents of one PV (the metadata's key, "pv0") from pv_extent."""

    pv: str
    pv_extent: int
    extent_count: int


@dataclass(frozen=True)
class Segment:
    """One run of an LV: LV extents [start_extent, start_extent + extent_count). A linear
    segment is one PvRun of the same length; a striped one has a PvRun per stripe; other
    kinds (raid, mirror, thin, snapshot, cache...) refer to other, hidden LVs, not to PVs,
    and have none."""

    start_extent: int
    extent_count: int
    type: str  # "linear", "striped" (more than one stripe), or the metadata's segment type
    runs: tuple[PvRun, ...] = ()


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    uuid: str
    segments: tuple[Segment, ...]
    visible: bool = True  # hidden LVs (thin pool data, raid images) are parts of another LV

    @property
    def extent_count(self) -> int:
        return sum(s.extent_count for s in self.segments)

    def linear_on(self, pv: str) -> PvRun | None:
        """The one run when the whole LV is a single linear segment on `pv`: then it is a
        contiguous byte range of the partition, readable through a loop device at an offset."""
        if len(self.segments) == 1 and self.segments[0].type == "linear" and self.segments[0].runs[0].pv == pv:
            return self.segments[0].runs[0]
        return None

    def runs_on(self, pv: str) -> list[PvRun]:
        return [r for s in self.segments for r in s.runs if r.pv == pv]

    def why_not_linear(self) -> str:
        kinds = sorted({s.type for s in self.segments if s.type != "linear"})
        if kinds:
            return f"{', '.join(kinds)} segments"
        if len(self.segments) > 1:
            return f"{len(self.segments)} segments"
        return "on another physical volume"


@dataclass(frozen=True)
class PhysicalVolumeRef:
    """A PV as the VG metadata lists it (key "pv0", ...)."""

    key: str
    uuid: str
    pe_start: int  # bytes
    pe_count: int
    device_hint: str | None = None


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    seqno: int
    extent_size: int  # bytes
    pvs: tuple[PhysicalVolumeRef, ...]
    lvs: tuple[LogicalVolume, ...]

    def pv_by_uuid(self, uuid: str) -> PhysicalVolumeRef | None:
        return next((p for p in self.pvs if p.uuid == uuid), None)


@dataclass(frozen=True)
class DiskArea:
    offset: int  # bytes from the start of the PV
    size: int  # 0: to the end of the device


@dataclass(frozen=True)
class PvLabel:
    """The PV label (one of the first four sectors) and pv_header: lib/format_text/layout.h."""

    uuid: str  # formatted as lvm2 prints it (6-4-4-4-4-4-6)
    device_size: int
    label_sector: int
    data_areas: tuple[DiskArea, ...]
    metadata_areas: tuple[DiskArea, ...]

    @property
    def pe_start(self) -> int:
        return self.data_areas[0].offset if self.data_areas else 0


@dataclass(frozen=True)
class PhysicalVolume:
    """A partition that is an LVM PV: its label and the VG its metadata describes."""

    label: PvLabel
    vg: VolumeGroup | None  # None: an orphan PV (pvcreate without vgcreate)

    @property
    def ref(self) -> PhysicalVolumeRef | None:
        return self.vg.pv_by_uuid(self.label.uuid) if self.vg else None

    @property
    def pe_start(self) -> int:
        ref = self.ref
        return ref.pe_start if ref else self.label.pe_start

    def lvs_here(self) -> list[LogicalVolume]:
        """The LVs with at least one extent on this PV (every LV has segments; thin LVs and
        the like, which hold no extents themselves, are left out)."""
        ref = self.ref
        if ref is None or self.vg is None:
            return []
        return [lv for lv in self.vg.lvs if lv.runs_on(ref.key)]

    def lv_span(self, lv: LogicalVolume) -> tuple[int, int] | None:
        """(offset, size) in bytes of a single-segment linear LV on this PV, else None."""
        ref = self.ref
        run = lv.linear_on(ref.key) if ref else None
        if run is None or self.vg is None:
            return None
        return self.pe_start + run.pv_extent * self.vg.extent_size, run.extent_count * self.vg.extent_size

    def lv_ranges(self, lv: LogicalVolume) -> list[tuple[int, int]]:
        """Every (offset, size) run of the LV's extents on this PV, in bytes from its start:
        what an LV that cannot be read as one range takes when it is imaged whole."""
        ref = self.ref
        if ref is None or self.vg is None:
            return []
        ext = self.vg.extent_size
        return [(self.pe_start + r.pv_extent * ext, r.extent_count * ext) for r in lv.runs_on(ref.key)]

    def head(self) -> tuple[int, int]:
        """The label and first metadata area, kept raw: everything before pe_start."""
        return 0, self.pe_start

    def metadata_ranges(self) -> list[tuple[int, int]]:
        """The head plus every other metadata area (a second copy at the end of the PV)."""
        return [self.head()] + [(m.offset, m.size) for m in self.label.metadata_areas if m.offset >= self.pe_start]


@dataclass(frozen=True)
class LuksHeader:
    version: int  # 1 or 2
    uuid: str
    label: str | None
    cipher: str
    data_offset: int  # bytes: the encrypted payload starts here; before it, header and keyslots


@dataclass(frozen=True)
class LvContent:
    """What was found inside one LV (for `rescue info` and the capture log)."""

    name: str
    size: int
    fstype: str | None
    how: str  # "used blocks (dumpe2fs)" or "imaged whole (2 segments)"


@dataclass
class Stack:
    """partition -> [LUKS] -> [PV -> VG -> LVs] -> filesystems, as far as it was read."""

    luks: LuksHeader | None = None
    pv: PhysicalVolume | None = None
    lvs: list[LvContent] = field(default_factory=list)
    whole: str | None = None  # why the partition is imaged whole (md member, no passphrase)


def size_words(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def stack_lines(name: str, stack: Stack) -> list[str]:
    """The stack of one partition as `rescue info` prints it, one layer per line."""
    out: list[str] = []
    if stack.luks is not None:
        lk = stack.luks
        out.append(
            f"{name}: LUKS{lk.version} {lk.uuid}" + (f" ({lk.label})" if lk.label else "") + f", {lk.cipher}, "
            f"payload at {size_words(lk.data_offset)}"
        )
    pv = stack.pv
    if pv is not None:
        out.append(f"{name}: LVM2 PV {pv.label.uuid}, data at {size_words(pv.pe_start)}")
        if pv.vg is None:
            out.append("  no volume group (orphan PV)")
        else:
            vg = pv.vg
            out.append(
                f"  -> VG {vg.name} ({len(vg.pvs)} PV, extent {size_words(vg.extent_size)}, "
                f"{len(vg.lvs)} LV, seqno {vg.seqno})"
            )
            for lv in stack.lvs:
                out.append(f"     -> LV {lv.name} {size_words(lv.size)}: {lv.fstype or 'no filesystem'}, {lv.how}")
    if stack.whole:
        out.append(f"{name}: imaged whole, every byte: {stack.whole}")
    return out


# blkid TYPEs of layers rescue recognises but images whole, and why (docs/lvm-luks.md).
LUKS_TYPE = "crypto_LUKS"
MD_TYPE = "linux_raid_member"
IMAGED_WHOLE = {
    LUKS_TYPE: "LUKS-encrypted: without the volume opened its free space cannot be told apart "
    "(capture through an opened volume is not built yet)",
    MD_TYPE: "an md RAID member: imaged whole as it is, the array is not assembled",
}

MAP_PREFIX = "lvm2 metadata"


def map_source_text(contents: list[LvContent]) -> str:
    """What a PV's used-block map came from, kept in the manifest's map_source (one string,
    read back by lv_contents): "lvm2 metadata; root: ext4, used blocks (dumpe2fs); ...".
    LV names never hold ";" or ":" (lvm2 allows [A-Za-z0-9+_.-])."""
    parts = [f"{c.name}: {c.fstype or '-'}, {c.how.replace(';', ',')}" for c in contents]
    return "; ".join([MAP_PREFIX, *parts]) if parts else f"{MAP_PREFIX}; no logical volume"


def lv_contents(map_source: str | None, sizes: dict[str, int]) -> list[LvContent]:
    """The LVs as map_source_text wrote them, with their sizes from the metadata (0 when the
    metadata does not list one)."""
    if not map_source or not map_source.startswith(MAP_PREFIX + "; "):
        return []
    out = []
    for part in map_source[len(MAP_PREFIX) + 2 :].split("; "):
        name, sep, rest = part.partition(": ")
        if not sep:
            continue
        fstype, _, how = rest.partition(", ")
        out.append(LvContent(name, sizes.get(name, 0), None if fstype == "-" else fstype, how))
    return out


def dm_lv_name(dm_name: str) -> tuple[str, str] | None:
    """(VG, LV) from a device-mapper name as lvm2 makes it: "vg-lv", each "-" inside a name
    doubled ("my--vg-root" is VG my-vg, LV root). None when it is not of that shape."""
    at = 0
    while True:
        at = dm_name.find("-", at)
        if at < 0:
            return None
        if dm_name[at + 1 : at + 2] == "-":
            at += 2
            continue
        vg, lv = dm_name[:at], dm_name[at + 1 :]
        return (vg.replace("--", "-"), lv.replace("--", "-")) if vg and lv else None


def holder_reason(holder: str, dm_name: str | None, dm_uuid: str | None) -> str:
    """A holder of a drive (sysfs holders/) in the words of the safety rule that refuses the
    drive: which volume group is active or which LUKS volume is open, and how to undo it.
    dm_name and dm_uuid are the holder's sysfs dm/name and dm/uuid (None: not device-mapper,
    an md array say, named as it is)."""
    uuid, name = dm_uuid or "", dm_name or ""
    if uuid.startswith("LVM-") and (vl := dm_lv_name(name)) is not None:
        return f"{holder} (volume group {vl[0]} is active, LV {vl[1]}: vgchange -an {vl[0]})"
    if uuid.startswith("CRYPT-LUKS"):
        return f"{holder} (LUKS volume open as {name}: cryptsetup close {name})"
    if uuid.startswith("CRYPT-"):
        return f"{holder} (dm-crypt volume open as {name}: cryptsetup close {name})"
    return f"{holder} ({name})" if name else holder

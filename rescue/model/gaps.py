"""The bytes of a drive that lie outside its partitions: where they are on the source, where
they go on a target, and which of a target's bytes they must never overwrite.

Boot loaders live there: GRUB for BIOS embeds its core image in the gap after the MBR (sectors
1..~100 on every Debian/Ubuntu BIOS install), some boot managers and licence schemes use gaps
between partitions. A restore that writes the table and the partitions but not these bytes
gives a drive that reports success and does not boot.

Each gap is imaged as its own area: `head` (from byte 0 to the first partition) and `gap-pN`
(after partition N, up to the next partition or the end of the drive). The space around
logical partitions inside an MBR extended partition is not a gap: it holds the EBR chain,
which the new table writes. A gap larger than GAP_WHOLE is unallocated space, not boot code:
only its first GAP_PART bytes are imaged (a 400 GB unpartitioned tail is not read).

On a target a gap goes where it stood relative to what precedes it: `head` at byte 0, `gap-pN`
right after partition N's new end, cut to the room before the next partition (or the usable
end of the drive). Inside that room the table's own structures are skipped: they belong to the
table just written (MBR signature and entries, GPT headers and entry arrays)."""

from __future__ import annotations

from dataclasses import dataclass

from rescue.model.extents import Extent, MiB, normalize
from rescue.model.layout import DiskLayout, Partition

GAP_WHOLE = 64 * MiB  # gaps up to this size are imaged whole
GAP_PART = MiB  # of a larger gap, only the first MiB
HEAD = "head"
MBR_TABLE = Extent(440, 72)  # disk signature, reserved bytes, four entries, 0x55AA
GPT_ENTRIES_BYTES = 128 * 128


@dataclass(frozen=True)
class Gap:
    name: str  # "head" or "gap-p<N>"
    offset: int  # bytes on the drive
    size: int  # bytes imaged
    after: int | None  # the partition number it follows; None for the head


def is_gap(name: str) -> bool:
    return name == HEAD or name.startswith("gap-p")


def label(name: str) -> str:
    """How logs and screens name a gap area."""
    return "disk head" if name == HEAD else f"gap after partition {name[len('gap-p') :]}"


def _occupied(layout: DiskLayout) -> list[Extent]:
    """Partitions in bytes; an extended partition covers its logicals and their EBRs."""
    ss = layout.sector_size
    return normalize([(p.offset(ss), p.size(ss)) for p in layout.partitions])


def _top(layout: DiskLayout) -> list[Partition]:
    """Primary and extended partitions by start: what a gap can follow."""
    return sorted((p for p in layout.partitions if p.kind != "logical"), key=lambda p: p.start)


def _end_room(layout: DiskLayout, size: int) -> int:
    """Where a drive's last gap ends: before the backup GPT, or the end of the drive."""
    if layout.table == "gpt":
        return size - GPT_ENTRIES_BYTES - layout.sector_size
    return size


def _imaged(size: int) -> int:
    return size if size <= GAP_WHOLE else GAP_PART


def gaps(layout: DiskLayout) -> list[Gap]:
    """The gaps of a source drive, in drive order. A drive without partitions has only a head
    (its first MiB), as it always had."""
    ss = layout.sector_size
    top = _top(layout)
    if not top:
        return [Gap(HEAD, 0, min(MiB, layout.size), None)]
    out = [Gap(HEAD, 0, _imaged(top[0].offset(ss)), None)] if top[0].offset(ss) > 0 else []
    ends = _end_room(layout, layout.size)
    for p, nxt in zip(top, top[1:] + [None], strict=True):
        start = (p.end + 1) * ss
        stop = nxt.offset(ss) if nxt is not None else ends
        if stop > start:
            out.append(Gap(f"gap-p{p.number}", start, _imaged(stop - start), p.number))
    return out


def place(name: str, size: int, written: DiskLayout, target_size: int) -> tuple[int, int]:
    """(offset, bytes) of a gap area on a target whose table is `written`: the area's first
    `bytes` go there (0 when the partition it followed is gone or no room is left)."""
    ss = written.sector_size
    top = _top(written)
    if name == HEAD:
        room = top[0].offset(ss) if top else target_size
        return 0, max(0, min(size, room))
    number = int(name[len("gap-p") :])
    p = next((q for q in top if q.number == number), None)
    if p is None:
        return 0, 0
    start = (p.end + 1) * ss
    later = [q.offset(ss) for q in top if q.offset(ss) >= start]
    stop = min(later) if later else _end_room(written, target_size)
    return start, max(0, min(size, stop - start))


def table_structures(written: DiskLayout, target_size: int, gpt_usable: tuple[int, int] | None) -> list[Extent]:
    """Bytes of a target that its new table owns: the MBR's signature and entries, and on GPT
    the primary header and entries up to the first usable sector and the backup ones after the
    last usable sector (`gpt_usable`, as read back from the written header)."""
    ss = written.sector_size
    out = [MBR_TABLE] if written.table in ("msdos", "gpt") else []
    if written.table == "gpt":
        entries = -(-GPT_ENTRIES_BYTES // ss)
        first, last = gpt_usable or (2 + entries, target_size // ss - 2 - entries)
        out += [Extent(ss, first * ss - ss), Extent((last + 1) * ss, target_size - (last + 1) * ss)]
    return normalize(out)


def writable(offset: int, length: int, written: DiskLayout, protected: list[Extent]) -> list[Extent]:
    """The parts of [offset, offset+length) a gap may write: outside every partition of the
    written table and outside its structures."""
    keep_out = normalize(_occupied(written) + protected)
    out, pos, end = [], offset, offset + length
    for e in keep_out:
        if e.end <= pos:
            continue
        if e.start >= end:
            break
        if e.start > pos:
            out.append(Extent(pos, e.start - pos))
        pos = max(pos, e.end)
    if pos < end:
        out.append(Extent(pos, end - pos))
    return out

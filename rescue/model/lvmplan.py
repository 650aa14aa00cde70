"""Where the extents of an LVM physical volume go when its partition is resized and the LV to
resize (the root LV) is not the last one on it (docs/lvm-luks.md): Debian's and Ubuntu's
installers put root first and swap_1 after it. Pure: the layout follows from the metadata
read from the PV (model/stack.py); rescue/filesystems/lvm.py moves the bytes and writes the
metadata.

Growing: root takes the new extents right after its old end, and every run after it moves up
by that many extents (the free extents at the end of the larger PV). Shrinking is the
reverse: root (its filesystem shrunk first) gives up the extents the smaller PV lacks and
the runs after it move down. Nothing else changes, so every LV stays the run(s) it was, and
free extents between LVs stay where they are. The moves are listed in copying order
(`copy_steps`), so that none overwrites bytes still to be read."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from rescue.model.stack import LogicalVolume, PhysicalVolume, size_words


@dataclass(frozen=True)
class RunMove:
    """extent_count extents of LV `lv` from PV extent src to PV extent dst."""

    lv: str
    src: int
    dst: int
    extent_count: int


@dataclass(frozen=True)
class LvResize:
    root: str
    old_extents: int
    new_extents: int
    moves: tuple[RunMove, ...]  # in the order to copy them

    @property
    def moved(self) -> list[str]:
        return list(dict.fromkeys(m.lv for m in self.moves))


def pick_root(pv: PhysicalVolume, candidates: Collection[str]) -> LogicalVolume | None:
    """The LV resized with its PV: of the visible LVs here that are one linear run and named
    in candidates (those holding a filesystem that can be a Linux root and grows to fill its
    device: ext4, xfs, btrfs), the largest; the first listed of equals. Debian's, Ubuntu's
    and Fedora's installers make one such LV, root."""
    ref, vg = pv.ref, pv.vg
    if ref is None or vg is None:
        return None
    ok = [lv for lv in pv.lvs_here() if lv.name in candidates and lv.visible and lv.linear_on(ref.key) is not None]
    return max(ok, key=lambda lv: lv.extent_count) if ok else None


def used_end(pv: PhysicalVolume) -> int:
    """One past the last PV extent any LV uses."""
    ref = pv.ref
    if ref is None:
        return 0
    return max((r.pv_extent + r.extent_count for lv in pv.lvs_here() for r in lv.runs_on(ref.key)), default=0)


def resize_layout(pv: PhysicalVolume, root: LogicalVolume, pe_count: int) -> LvResize:
    """The layout of a PV resized to pe_count extents: root (one linear run on this PV)
    grows by the free extents past the last used one, or shrinks by the extents missing;
    the runs after root move up or down by as many. The moves are in copying order: highest
    first when moving up, lowest first when moving down. ValueError when root is not one run
    here, when nothing changes, or when root would be left with no extent."""
    ref = pv.ref
    run = root.linear_on(ref.key) if ref else None
    if ref is None or run is None:
        raise ValueError(f"LV {root.name} is not one linear run on this PV")
    delta = pe_count - used_end(pv)
    if delta == 0:
        raise ValueError(f"the PV's {pe_count} extents are all in use already")
    if run.extent_count + delta < 1:
        raise ValueError(f"LV {root.name} cannot lose {-delta} of its {run.extent_count} extents")
    end = run.pv_extent + run.extent_count
    moves = [
        RunMove(lv.name, r.pv_extent, r.pv_extent + delta, r.extent_count)
        for lv in pv.lvs_here()
        for r in lv.runs_on(ref.key)
        if r.pv_extent >= end
    ]
    moves.sort(key=lambda m: m.src, reverse=delta > 0)
    return LvResize(root.name, run.extent_count, run.extent_count + delta, tuple(moves))


def min_extents(pv: PhysicalVolume, root: LogicalVolume | None, root_min: int | None) -> int:
    """The fewest extents the PV can be resized to: every used extent, less what root can
    give up when its filesystem can shrink to root_min bytes (None: root keeps its size)."""
    used = used_end(pv)
    ref = pv.ref
    run = root.linear_on(ref.key) if root is not None and ref is not None else None
    if run is None or root_min is None or pv.vg is None:
        return used
    need = max(1, -(-root_min // pv.vg.extent_size))
    return used - max(0, run.extent_count - need)


def copy_steps(src: int, dst: int, length: int, chunk: int) -> list[tuple[int, int, int]]:
    """(read offset, write offset, bytes) for moving length bytes from src to dst in pieces
    of at most chunk, ordered so that an overlapping move never reads what it already
    wrote: from the end backwards when moving up, from the start when moving down."""
    pieces = [(at, min(chunk, length - at)) for at in range(0, length, chunk)]
    if dst > src:
        pieces.reverse()
    return [(src + at, dst + at, n) for at, n in pieces]


def lv_words(layout: LvResize, extent_size: int) -> str:
    """The LV-level change: "LV root grown from 120.0 MiB to 188.0 MiB; swap_1 moved"."""
    verb = "grown" if layout.new_extents > layout.old_extents else "shrunk"
    old, new = size_words(layout.old_extents * extent_size), size_words(layout.new_extents * extent_size)
    words = f"LV {layout.root} {verb} from {old} to {new}"
    return words + (f"; {', '.join(layout.moved)} moved" if layout.moved else "")


def plan_words(pv: PhysicalVolume, root: LogicalVolume | None, new_size: int) -> str | None:
    """What resizing the PV to a partition of new_size bytes does, for the plan: "LVM: PV
    grown to 198.0 MiB; LV root grown from 120.0 MiB to 188.0 MiB; swap_1 moved". None when
    the PV keeps its size or has no VG."""
    vg, old = pv.vg, pv.label.device_size
    if vg is None or new_size == old:
        return None
    head = f"LVM: PV {'grown' if new_size > old else 'shrunk'} to {size_words(new_size)}"
    pe_count = (new_size - pv.pe_start) // vg.extent_size
    if root is None:
        return head + "; no LV holds a Linux root filesystem that can grow: the LVs keep their size"
    if pe_count == used_end(pv):
        return head + "; the LVs keep their size"
    try:
        return head + "; " + lv_words(resize_layout(pv, root, pe_count), vg.extent_size)
    except ValueError as e:
        return head + f"; {e}"

"""Where each partition of an image goes on a target drive of another size: a pure function
from (image layout, filesystem facts, target geometry, policy) to a plan that is shown to the
person before anything is written. docs/layout-planning.md explains the rules and why.

All positions and sizes inside the planner are bytes: the image and the target may use
different logical sector sizes, and bytes are the one unit both agree on. A partition that is
resized gets a whole number of MiB and every placed start is on a 1 MiB boundary, which makes
the space a resizable partition needs *linear* in its size (the next start moves by exactly
the size). The proportional and grow-last policies rely on that to compute the space left for
resizable partitions once, exactly, instead of searching."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

from rescue.errors import UsageError
from rescue.model.layout import DiskLayout, Partition

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

ALIGN = MiB  # every placed start, and every new size, is a multiple of this
EBR_GAP = MiB  # room kept before each logical partition for its extended boot record
GPT_ENTRIES_BYTES = 128 * 128  # 128 entries of 128 bytes, as every partitioner writes
MBR_MAX_SECTORS = 1 << 32  # 32-bit LBA fields: nothing may start or end beyond this sector
MARGIN_MIN = 64 * MiB  # safety margin over a filesystem's minimum: at least this ...
MARGIN_PERCENT = 5  # ... or this share of the minimum, whichever is larger

Policy = Literal["same", "proportional", "grow-last"]
POLICIES: tuple[Policy, ...] = ("same", "proportional", "grow-last")

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
MSR_GUID = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
WINRE_GUID = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
SWAP_GUID = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


@dataclass
class PartFacts:
    """What the filesystem inside a partition allows. min_size None means unknown: then the
    partition is never shrunk, whatever can_shrink says."""

    fstype: str | None = None
    min_size: int | None = None  # bytes: smallest partition the filesystem can shrink to
    can_shrink: bool = False
    can_grow: bool = False


@dataclass
class Move:
    """One data partition's fate. Positions and sizes in bytes (sector sizes may differ)."""

    number: int
    old_start: int
    old_size: int
    new_start: int
    new_size: int
    action: str  # keep | grow | shrink | move
    fstype: str | None = None  # from the facts, for showing the plan

    @property
    def moved(self) -> bool:
        return self.new_start != self.old_start


@dataclass
class LayoutPlan:
    policy: str
    target_size: int
    sector_size: int
    layout: DiskLayout  # what to write; when fits is False, the smallest attempt (do not write)
    moves: list[Move] = field(default_factory=list)  # data partitions only, not the extended
    fits: bool = False
    shortfall: int = 0  # bytes the target lacks; 0 when it fits
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def resize_margin(min_size: int) -> int:
    """Slack kept above a filesystem's reported minimum: minimum estimates (resize2fs -P,
    ntfsresize) are not exact, and a filesystem shrunk to the byte is full and useless."""
    return max(MARGIN_MIN, math.ceil(min_size * MARGIN_PERCENT / 100))


def fixed_role(p: Partition, table: str, facts: PartFacts | None) -> str | None:
    """Why this partition keeps its size under every policy, or None if it may be resized.
    Firmware, boot loaders and Windows find these by type and expect their size as created."""
    guid = (p.type_guid or "").upper()
    flags = set(p.flags)
    gpt = table == "gpt"
    if guid == ESP_GUID or p.mbr_type == 0xEF or (gpt and flags & {"esp", "boot"}):
        return "EFI system partition"
    if guid == BIOS_BOOT_GUID or "bios_grub" in flags:
        return "BIOS boot partition"
    if guid == MSR_GUID or (gpt and "msftres" in flags):
        return "Microsoft reserved partition"
    if guid == WINRE_GUID or p.mbr_type == 0x27 or (gpt and "diag" in flags):
        return "Windows recovery partition"
    if guid == SWAP_GUID or p.mbr_type == 0x82 or "swap" in flags or (facts is not None and facts.fstype == "swap"):
        return "swap, recreated at the same size"
    if facts is None:
        return "contents unknown"
    if not facts.can_shrink and not facts.can_grow:
        return f"{facts.fstype or 'unknown contents'} cannot be resized"
    return None


def plan_layout(
    image: DiskLayout,
    facts: dict[int, PartFacts],
    target_size: int,
    target_sector_size: int,
    policy: Policy = "proportional",
    keep_gaps: dict[int | None, int] | None = None,
    pinned: dict[int, str] | None = None,
) -> LayoutPlan:
    """Plan the image's partitions on a target of `target_size` bytes. Never raises for a
    target that is too small: the plan says fits=False, by how much and why.

    keep_gaps: bytes outside partitions that must find room again (model/gaps.py): after
    partition N (key N), and before the first partition (key None). Only gaps that hold data
    are passed (a gap of zeros needs no room).

    pinned: partitions whose start something on the drive names by offset (a Windows BCD on
    an MBR drive, model/windows.py), with why. The plan keeps their starts when it can: every
    partition up to the last pinned one keeps its place and size, the last pinned one keeps
    its start and may grow or shrink at its end, and what follows is planned as usual. When
    that plan does not fit, or leaves more of the target unused than the plan without pins,
    the plan without pins is taken and says that the references are rewritten instead."""
    if policy not in POLICIES:
        raise UsageError(f"unknown layout policy {policy!r} (choose {', '.join(POLICIES)})")
    ss = target_sector_size
    if ss < 512 or ss > ALIGN or ss & (ss - 1):
        raise UsageError(f"unsupported sector size {ss} (expected 512 or 4096)")
    size, gaps_ = max(0, target_size), keep_gaps or {}
    free = _Planner(image, facts, size, ss, policy, gaps_).plan()
    if not pinned or policy == "same":
        return free
    kept = _Planner(image, facts, size, ss, policy, gaps_, pinned).plan()
    if kept.fits and _end(kept) + ALIGN >= _end(free) or not free.fits:
        unmoved = {m.number for m in kept.moves if not m.moved and m.number in pinned}
        held = ", ".join(f"#{p.number} at {mib(p.start * ss)}" for p in kept.layout.partitions if p.number in unmoved)
        if kept.fits:
            kept.notes.append(
                f"kept in place: {held}: a Windows boot configuration (BCD) names them by their byte "
                "offset (the partitions before the last of them keep their size; its end may move)"
            )
        return kept
    free.notes.append(
        "the partitions a Windows boot configuration (BCD) names by offset move: keeping their "
        f"starts {'does not fit' if not kept.fits else 'would leave space unused'}; the BCD's "
        "device elements are rewritten to the new offsets after writing"
    )
    return free


def _end(lp: LayoutPlan) -> int:
    return max((p.end + 1 for p in lp.layout.partitions), default=0) * lp.sector_size


# -- internals ---------------------------------------------------------------------------


@dataclass
class _Item:
    part: Partition
    facts: PartFacts | None
    old_start: int
    old_size: int
    fixed: str | None  # why it keeps its size
    lo: int = 0  # smallest size the plan may give it (whole MiB unless fixed)
    hi: int | None = None  # largest (None: no limit)
    why_lo: str = ""

    @property
    def number(self) -> int:
        return self.part.number

    @property
    def logical(self) -> bool:
        return self.part.kind == "logical"


@dataclass
class _Placed:
    starts: dict[int, int]
    sizes: dict[int, int]
    end: int  # end of the last partition (bytes, exclusive)


def _up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _down(n: int, unit: int) -> int:
    return n // unit * unit


class _Planner:
    def __init__(
        self,
        image: DiskLayout,
        facts: dict[int, PartFacts],
        target_size: int,
        ss: int,
        policy: str,
        keep_gaps: dict[int | None, int],
        pinned: dict[int, str] | None = None,
    ):
        self.image, self.facts, self.policy = image, facts, policy
        self.keep_gaps = keep_gaps
        self.size, self.ss = target_size, ss
        self.notes: list[str] = []
        sectors = target_size // ss
        if image.table == "gpt":
            entries = -(-GPT_ENTRIES_BYTES // ss)
            self.first = (2 + entries) * ss
            self.usable_end = (sectors - 1 - entries) * ss  # backup entries + header at the end
        else:
            self.first = ss
            self.usable_end = min(sectors, MBR_MAX_SECTORS) * ss
            if image.table == "msdos" and sectors > MBR_MAX_SECTORS:
                self.notes.append(
                    f"MBR cannot address beyond {human(MBR_MAX_SECTORS * ss)}: the plan uses the "
                    f"first {human(self.usable_end)} of the {human(target_size)} target; the rest "
                    f"stays unallocated (a GPT table could use it)"
                )
        iss = image.sector_size
        if iss != ss:
            self.notes.append(
                f"target has {ss}-byte sectors, the image {iss}-byte ones: positions are converted through bytes"
            )
        self.ext = next((p for p in image.partitions if p.kind == "extended"), None)
        self.items: list[_Item] = []
        for p in sorted(image.data_partitions(), key=lambda p: p.start):
            f = facts.get(p.number)
            it = _Item(p, f, p.start * iss, p.length() * iss, fixed_role(p, image.table, f))
            self._bounds(it)
            self.items.append(it)
            if ss > iss and f is not None and f.fstype in ("vfat", "fat", "fat16", "fat32"):
                self.notes.append(
                    f"{label(p, f)} is FAT formatted for {iss}-byte sectors: on a "
                    f"{ss}-byte-sector drive neither Linux nor UEFI firmware reads "
                    f"it until it is re-created with {ss}-byte sectors"
                )
        # logicals without an extended partition (a damaged table) are placed as primaries
        self.logicals = [it for it in self.items if it.logical and self.ext is not None]
        self.primaries = [it for it in self.items if it not in self.logicals]
        top: list[_Item | Partition] = list(self.primaries)
        if self.ext is not None:
            top.append(self.ext)
        self.top = sorted(top, key=lambda x: x.old_start if isinstance(x, _Item) else x.start * iss)
        self.pin_starts: dict[int, int] = {}
        pins = [i for i, it in enumerate(self.items) if it.number in (pinned or {})]
        if pins:  # model/windows.py: a BCD names these by offset
            last = self.items[pins[-1]]
            for it in self.items[: pins[-1]]:
                if not it.fixed:
                    it.fixed = (
                        f"{label(last.part, last.facts)} after it keeps its start ({(pinned or {})[last.number]})"
                    )
                    it.lo = it.hi = _up(it.old_size, ss)
            self.pin_starts = {it.number: it.old_start for it in self.items[: pins[-1] + 1]}

    # ---- bounds -------------------------------------------------------------------------

    def _bounds(self, it: _Item) -> None:
        """lo/hi for a resizable partition, in whole MiB so that sizes stay linear."""
        old, f = it.old_size, it.facts
        kept = _up(old, self.ss)
        if it.fixed:
            it.lo = it.hi = kept
            return
        assert f is not None
        shrink_to = None
        if f.can_shrink and f.min_size is not None:
            shrink_to = _up(f.min_size + resize_margin(f.min_size), ALIGN)
        if shrink_to is not None and shrink_to < old:
            assert f.min_size is not None  # shrink_to is computed from it
            it.lo = shrink_to
            it.why_lo = (
                f"can shrink to {human(shrink_to)}: minimum {human(f.min_size)} "
                f"+ margin {human(resize_margin(f.min_size))}"
            )
        else:
            it.lo = _up(old, ALIGN)
            if f.fstype == "xfs":
                it.why_lo = "XFS cannot shrink"
            elif not f.can_shrink:
                it.why_lo = f"{f.fstype or 'its contents'} cannot shrink"
            elif f.min_size is None:
                it.why_lo = "cannot shrink: minimum size unknown"
            else:
                it.why_lo = (
                    f"cannot shrink: minimum {human(f.min_size)} + margin "
                    f"{human(resize_margin(f.min_size))} leaves no room"
                )
        it.hi = None if f.can_grow else _down(old, ALIGN)
        if it.hi is not None and it.lo >= it.hi:
            it.fixed = f"{f.fstype or 'its contents'} can neither grow nor shrink usefully"
            it.lo = it.hi = kept

    # ---- placement ----------------------------------------------------------------------

    def place(self, sizes: dict[int, int], prefer: dict[int, int], exact: bool) -> _Placed:
        """Lay partitions out in their image order. A preferred start is kept when it is a
        whole target sector and leaves room for what comes before; otherwise the partition
        goes to the next 1 MiB boundary (plus the EBR gap for a logical). `exact` keeps the
        extended partition's own extent as in the image (policy "same")."""
        ss, starts, out_sizes = self.ss, {}, dict(sizes)
        prefer = {**prefer, **self.pin_starts}
        cursor = max(self.first, _up(self.keep_gaps.get(None, 0), ss))
        end = 0

        def gap_after(top: _Item | Partition) -> int:
            """Room kept after a top-level partition for the bytes its image gap holds."""
            return _up(self.keep_gaps.get(top.number, 0), ss)

        def pick(pref: int | None, minimum: int, fallback: int) -> int:
            if pref is not None and pref % ss == 0 and pref >= minimum:
                return pref
            return fallback

        for top in self.top:
            if isinstance(top, _Item):
                s = pick(prefer.get(top.number), cursor, _up(cursor, ALIGN))
                starts[top.number] = s
                cursor = s + out_sizes[top.number] + gap_after(top)
                end = max(end, cursor)
                continue
            ext = top
            old_start = ext.start * self.image.sector_size
            es = pick(prefer.get(ext.number), cursor, _up(cursor, ALIGN))
            lcur = es
            for it in self.logicals:
                s = pick(prefer.get(it.number), lcur + ss, _up(lcur, ALIGN) + EBR_GAP)
                starts[it.number] = s
                lcur = s + out_sizes[it.number]
            old_end = old_start + ext.length() * self.image.sector_size
            if not self.logicals:
                lcur = es + _up(ext.length() * self.image.sector_size, ss)
            elif exact and es == old_start and lcur <= old_end <= self.usable_end and old_end % ss == 0:
                lcur = old_end
            starts[ext.number] = es
            out_sizes[ext.number] = lcur - es
            cursor = lcur + gap_after(ext)
            end = max(end, cursor)
        return _Placed(starts, out_sizes, end)

    # ---- policies -----------------------------------------------------------------------

    def plan(self) -> LayoutPlan:
        if not self.items:
            return self._empty()
        placed, shortfall = getattr(self, "_" + self.policy.replace("-", "_"))()
        return self._finish(placed, shortfall)

    def _old_sizes(self) -> dict[int, int]:
        return {it.number: _up(it.old_size, self.ss) for it in self.items}

    def _same(self) -> tuple[_Placed, int]:
        prefer = {it.number: it.old_start for it in self.items}
        if self.ext is not None:
            prefer[self.ext.number] = self.ext.start * self.image.sector_size
        placed = self.place(self._old_sizes(), prefer, exact=True)
        self.notes.insert(0, "every partition keeps its start and size from the image")
        for it in self.items:
            if placed.starts[it.number] != it.old_start:
                self.notes.append(
                    f"{label(it.part, it.facts)} moves to "
                    f"{mib(placed.starts[it.number])}: its image start is not "
                    f"usable on the target ({self.ss}-byte sectors)"
                )
        return placed, max(0, placed.end - self.usable_end)

    def _proportional(self) -> tuple[_Placed, int]:
        movable = [it for it in self.items if not it.fixed]
        base = {it.number: (0 if not it.fixed else it.lo) for it in self.items}
        empty = self.place(base, {}, exact=False)
        avail = self.usable_end - empty.end  # bytes for the resizable ones, exactly (linear)
        need = sum(it.lo for it in movable)
        self.notes.insert(
            0,
            "resizable partitions share the space left after the fixed ones in "
            "proportion to their sizes in the image; each starts on a 1 MiB "
            "boundary; gaps between partitions are kept only where they hold data",
        )
        if need > avail or not movable:
            sizes = {**base, **{it.number: it.lo for it in movable}}
            placed = self.place(sizes, {}, exact=False)
            return placed, max(0, placed.end - self.usable_end)
        share = _share(
            avail // ALIGN,
            [it.old_size for it in movable],
            [it.lo // ALIGN for it in movable],
            [None if it.hi is None else it.hi // ALIGN for it in movable],
        )
        sizes = {**base, **{it.number: n * ALIGN for it, n in zip(movable, share, strict=True)}}
        placed = self._keep_near(sizes, movable, {})
        smaller = self.size < self.image.size
        for it in movable:
            new, name = placed.sizes[it.number], label(it.part, it.facts)
            if new == it.lo and it.lo < it.old_size:
                self.notes.append(f"{name} is held at its minimum {human(new)} ({it.why_lo})")
            elif smaller and it.lo >= it.old_size:
                self.notes.append(f"{name} keeps its size: {it.why_lo}")
            elif not smaller and it.hi is not None and new == it.hi:
                self.notes.append(f"{name} cannot grow: keeps {human(new)}")
        return placed, 0

    def _grow_last(self) -> tuple[_Placed, int]:
        """The last resizable partition takes the difference. When it cannot give back
        enough, the one before it is tried, and so on; when it cannot grow, an earlier one
        that can grows instead. First with the image's starts kept up to the changing
        partition (less data moves), then packed from 1 MiB on (drops the image's gaps)."""
        movable = [it for it in self.items if not it.fixed]
        self.notes.insert(
            0, "every partition keeps its size except the last resizable one, which takes or gives back the difference"
        )
        best_short: tuple[int, _Placed] | None = None
        for keep_starts in (True, False):
            capped: tuple[_Item, dict[int, int], dict[int, int], int, int] | None = None
            candidates: list[_Item | None] = [*reversed(movable)] or [None]
            for cand in candidates:
                prefer = self._prefix_starts(cand) if keep_starts else {}
                sizes = self._old_sizes()
                for it in movable:  # whole MiB keeps the arithmetic linear; see _keep_near
                    sizes[it.number] = 0 if it is cand else _up(it.old_size, ALIGN)
                empty = self.place(sizes, prefer, exact=False)
                avail = self.usable_end - empty.end
                if cand is not None and avail >= cand.lo:
                    new = max(_down(avail, ALIGN), cand.lo)
                    if cand.hi is not None and new > cand.hi:
                        capped = capped or (cand, prefer, sizes, avail, cand.hi)
                        continue
                    sizes[cand.number] = new
                    return self._grown(cand, movable, prefer, sizes, keep_starts), 0
                if cand is not None:
                    sizes[cand.number] = cand.lo
                placed = self.place(sizes, prefer, exact=False)
                if cand is None and placed.end <= self.usable_end:
                    return placed, 0
                short = placed.end - self.usable_end
                if best_short is None or short < best_short[0]:
                    best_short = (short, placed)
            if capped is not None:
                cand, prefer, sizes, avail, hi = capped
                sizes[cand.number] = hi
                self.notes.append(f"no resizable partition can grow: {human(avail - hi)} stays unallocated")
                return self._grown(cand, movable, prefer, sizes, keep_starts), 0
        assert best_short is not None
        return best_short[1], best_short[0]

    def _prefix_starts(self, cand: _Item | None) -> dict[int, int]:
        """Image starts (when 1 MiB aligned) of the partitions up to and including `cand`."""
        upto = self.items[: self.items.index(cand) + 1] if cand is not None else self.items
        prefer = {it.number: it.old_start for it in upto if it.old_start % ALIGN == 0}
        if self.ext is not None and any(it.logical for it in upto):
            es = self.ext.start * self.image.sector_size
            if es % ALIGN == 0:
                prefer[self.ext.number] = es
        return prefer

    def _grown(
        self, cand: _Item, movable: list[_Item], prefer: dict[int, int], sizes: dict[int, int], keep_starts: bool
    ) -> _Placed:
        placed = self._keep_near(sizes, movable, prefer)
        last = movable[-1]
        if cand is not last:
            new = placed.sizes[cand.number]
            if new < cand.old_size:
                self.notes.append(
                    f"{label(last.part, last.facts)} cannot give back enough "
                    f"({last.why_lo}): {label(cand.part, cand.facts)} gives back "
                    "the difference instead"
                )
            elif new > cand.old_size:
                self.notes.append(
                    f"{label(last.part, last.facts)} cannot grow: "
                    f"{label(cand.part, cand.facts)} takes the difference instead"
                )
        if not keep_starts:
            self.notes.append("partitions are packed from 1 MiB on: with their image starts kept they do not fit")
        return placed

    def _keep_near(self, sizes: dict[int, int], movable: list[_Item], prefer: dict[int, int]) -> _Placed:
        """Sizes are whole MiB; a partition that ends up within 1 MiB of its image size gets
        its exact image size back when the layout still fits: no pointless resize. (Rounding
        to whole MiB, its own and its neighbours', is what moves it by up to 1 MiB.)"""
        near = {
            it.number: _up(it.old_size, self.ss)
            for it in movable
            if sizes[it.number] != it.old_size and abs(sizes[it.number] - it.old_size) <= ALIGN
        }
        trial = {**sizes, **near}  # all at once first: together they may fit where one alone
        if self.place(trial, prefer, exact=False).end <= self.usable_end:  # does not
            return self.place(trial, prefer, exact=False)
        for number, exact in near.items():
            trial = {**sizes, number: exact}
            if self.place(trial, prefer, exact=False).end <= self.usable_end:
                sizes = trial
        return self.place(sizes, prefer, exact=False)

    # ---- results ------------------------------------------------------------------------

    def _empty(self) -> LayoutPlan:
        """No partitions: a whole-disk filesystem ("none") needs the image's size; an empty
        table needs only room for itself."""
        if self.image.table == "none":
            short = max(0, self.image.size - self.size)
        else:
            short = max(0, self.first - self.usable_end)
        layout = replace(self.image, sector_size=self.ss, size=self.size, partitions=[], physical_sector_size=self.ss)
        reason = (
            "fits: no partitions to place"
            if not short
            else f"does not fit: needs at least {human(self.size + short, 'up')}, target has "
            f"{human(self.size, 'down')} (short by {human(short, 'up')})"
        )
        return LayoutPlan(self.policy, self.size, self.ss, layout, [], not short, short, reason, self.notes)

    def _finish(self, placed: _Placed, shortfall: int) -> LayoutPlan:
        ss, moves, parts = self.ss, [], []
        by_number = {it.number: it for it in self.items}
        for p in self.image.partitions:
            s, n = placed.starts[p.number], placed.sizes[p.number]
            parts.append(replace(p, start=s // ss, end=(s + n) // ss - 1, flags=list(p.flags)))
            it = by_number.get(p.number)
            if it is None:
                continue
            moves.append(
                Move(
                    p.number,
                    it.old_start,
                    it.old_size,
                    s,
                    n,
                    _action(it, s, n, ss),
                    it.facts.fstype if it.facts else None,
                )
            )
        layout = DiskLayout(
            table=self.image.table,
            sector_size=ss,
            size=self.size,
            disk_id=self.image.disk_id,
            partitions=parts,
            physical_sector_size=ss,
        )
        fits = shortfall == 0
        if fits:
            for it in self.items:
                if it.fixed and self.policy != "same":
                    self.notes.append(f"{label(it.part, it.facts)} keeps its size: {it.fixed}")
            spare = self.usable_end - placed.end
            if spare >= ALIGN:
                self.notes.append(f"{human(spare)} at the end of the target stays unallocated")
            reason = self._fit_reason(moves)
        else:
            reason = self._misfit_reason(placed, shortfall)
            if self.policy != "same":
                for it in self.items:
                    if not it.fixed:
                        self.notes.append(
                            f"{label(it.part, it.facts)} needs at least {human(it.lo, 'up')} ({it.why_lo})"
                        )
                    else:
                        self.notes.append(f"{label(it.part, it.facts)} needs {human(it.lo, 'up')} ({it.fixed})")
        return LayoutPlan(self.policy, self.size, ss, layout, moves, fits, shortfall, reason, self.notes)

    def _fit_reason(self, moves: list[Move]) -> str:
        changes = []
        for m in moves:
            it = next(i for i in self.items if i.number == m.number)
            name = label(it.part, it.facts)
            if m.action in ("grow", "shrink"):
                a, b = human(m.old_size), human(m.new_size)
                if a == b:
                    a, b = mib(m.old_size), mib(m.new_size)
                changes.append(f"{name} {m.action}s {a} → {b}")
            elif m.action == "move":
                changes.append(f"{name} moves")
        what = ", ".join(changes) if changes else "every partition stays as in the image"
        return f"fits in {human(self.size)}: {what}"

    def _misfit_reason(self, placed: _Placed, shortfall: int) -> str:
        beyond = [it for it in self.items if placed.starts[it.number] + placed.sizes[it.number] > self.usable_end]
        names = ", ".join(label(it.part, it.facts) for it in beyond) or "the partitions"
        has = self.size
        where = f"target has {human(has, 'down')}"
        if self.image.table == "msdos" and self.size // self.ss > MBR_MAX_SECTORS:
            has = self.usable_end
            where = f"MBR can use {human(has, 'down')} of the target"
        verb = "does not fit" if len(beyond) == 1 else "do not fit"
        return (
            f"{names} {verb}: needs at least {human(has + shortfall, 'up')}, {where} "
            f"(short by {human(shortfall, 'up')})"
        )


def _action(it: _Item, start: int, size: int, ss: int) -> str:
    """A kept size rounded up to whole target sectors is not a resize."""
    if size not in (it.old_size, _up(it.old_size, ss)):
        return "grow" if size > it.old_size else "shrink"
    return "move" if start != it.old_start else "keep"


def _share(total: int, weights: list[int], lo: list[int], hi: list[int | None]) -> list[int]:
    """Split `total` units in proportion to `weights`, each within [lo, hi] (hi None: no
    cap), whole units that add up to `total` unless every one is at its cap. Exact: finds the
    factor k with sum(clamp(k·w)) == total on the piecewise linear curve, then hands the
    rounding remainder to the largest fractions. The caller guarantees sum(lo) <= total."""
    n = len(weights)
    caps = [h for h in hi if h is not None]
    if len(caps) == n and sum(caps) <= total:
        return caps

    def at(k: Fraction) -> list[Fraction]:
        out = []
        for w, low, h in zip(weights, lo, hi, strict=True):
            x = max(k * w, Fraction(low))
            out.append(x if h is None else min(x, Fraction(h)))
        return out

    points = sorted(
        {Fraction(low, w) for low, w in zip(lo, weights, strict=True)}
        | {Fraction(h, w) for h, w in zip(hi, weights, strict=True) if h is not None}
    )
    k_lo, k_hi = Fraction(0), None
    for b in points:
        if sum(at(b)) >= total:
            k_hi = b
            break
        k_lo = b
    mid = k_lo + 1 if k_hi is None else (k_lo + k_hi) / 2
    slope = sum(w for w, low, h in zip(weights, lo, hi, strict=True) if mid * w > low and (h is None or mid * w < h))
    if slope == 0:
        # Flat only at a breakpoint that reached total: were every size capped below it,
        # the early return above would have answered.
        assert k_hi is not None
        k = k_hi
    else:
        k = k_lo + (total - sum(at(k_lo), Fraction(0))) / slope
    exact = at(k)
    sizes = [math.floor(x) for x in exact]
    left = total - sum(sizes)
    order = sorted(range(n), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[:left]:
        sizes[i] += 1
    return sizes


# ---- words --------------------------------------------------------------------------------


def names(p: Partition, fstype: str | None) -> list[str]:
    bits = [p.name] if p.name else []
    if fstype and fstype.lower() != p.name.lower():
        bits.append(fstype)
    return bits


def label(p: Partition, facts: PartFacts | None = None) -> str:
    """How a partition is named to the person: number, then name and filesystem if known."""
    bits = names(p, facts.fstype if facts else None)
    return f"#{p.number} ({', '.join(bits)})" if bits else f"#{p.number}"


def human(n: int, rounding: str = "nearest") -> str:
    """Sizes for people: 1 decimal in TiB/GiB, whole MiB below. 'up' never understates (a
    need), 'down' never overstates (what a target has)."""
    if n < 0:
        return "-" + human(-n, {"up": "down", "down": "up"}.get(rounding, rounding))
    for unit, size, scale in (("TiB", TiB, 10), ("GiB", GiB, 10), ("MiB", MiB, 1), ("KiB", KiB, 1)):
        if n >= size:
            q = Fraction(n * scale, size)
            v = {"up": math.ceil, "down": math.floor}.get(rounding, round)(q)
            return f"{v / scale:.1f} {unit}" if scale == 10 else f"{v} {unit}"
    return f"{n} bytes"


def mib(n: int) -> str:
    """Positions and sizes in plan tables and notes: whole MiB, or two decimals when not."""
    if n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n / MiB:.2f} MiB"

"""Scratch space for shrinking a filesystem during a restore or clone, as planned data.

A filesystem is shrunk on the target itself (imaging/apply.py, hw/splitdev.py): its bytes that
stay inside the new, smaller partition are written there once, at their final place; only the
bytes it holds past the new end go to a scratch file, from where the resize tool moves them
into the partition. So the scratch a shrink needs is what the image holds past the new end,
plus room for the tool's own writes there; not the data size. Shrinks run one after another
and each deletes its scratch file, so a plan needs the largest of them, not the sum."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rescue.model.extents import Extent, MiB

# The resize tools move data out of the tail and write their metadata in front (resize2fs,
# ntfsresize, btrfs's relocation, our FAT cut); this covers the little they may write past
# the new end (journal replay, a relocated block group's header) with room to spare.
TOOL_MARGIN = 32 * MiB


def held_past(held: list[Extent] | None, size: int, new_size: int) -> int:
    """Bytes of an area of `size` holding data at or after `new_size` (held None: all)."""
    if held is None:
        return max(0, size - new_size)
    return sum(max(0, e.end - max(e.start, new_size)) for e in held)


def shrink_need(held: list[Extent] | None, size: int, new_size: int) -> int:
    return held_past(held, size, new_size) + TOOL_MARGIN


@dataclass(frozen=True)
class Scratch:
    """Where a plan's shrinks keep the bytes past their new end."""

    need: int  # bytes, the largest single shrink's
    where: str  # directory
    free: int  # bytes it can take now
    ram: bool  # RAM-backed (tmpfs, or the live system's overlay)

    @property
    def fits(self) -> bool:
        return self.need <= self.free

    def describe(self, human: Callable[[int], str]) -> str:
        place = f"RAM ({self.where})" if self.ram else self.where
        return (
            f"scratch space for shrinking: up to {human(self.need)} (the data past the new end), "
            f"in {place}, {human(self.free)} free"
        )

    def refusal(self, human: Callable[[int], str]) -> str:
        return (
            f"shrinking needs up to {human(self.need)} of scratch space for the data past the new "
            f"end, and {'RAM' if self.ram else self.where} has only {human(self.free)} free: choose "
            f"scratch space on a writable drive other than the target (--scratch DIR), or a "
            f"larger target, or --layout grow-last"
        )

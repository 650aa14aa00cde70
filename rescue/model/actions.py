"""What a restore or clone will do to the target, in order, as data: the plan a person confirms
is this list, and the engine executes exactly this list (imaging/apply.py), nothing decided
on the spot after confirming.

Each action says what it does in words, and whether its failure aborts the job (the drive is
not usable without it: the table, the data, a resize) or comes back as a warning (a step after
the data is written that the person can redo: GRUB's pointers, the EFI fallback loader, the
boot entry, new ids). Planning is pure: the same inputs give the same list."""

from __future__ import annotations

from dataclasses import dataclass

from rescue.model.layout import DiskLayout, Partition
from rescue.model.plan import BIOS_BOOT_GUID, ESP_GUID, human
from rescue.model.windows import BcdRef, boot_sectors_to_fix, stale_refs

# kinds, in the order they run
TABLE = "table"  # write the partition table
GAP = "gap"  # bytes outside partitions (boot code after the MBR, gaps)
WRITE = "write"  # a partition's data at its place, same size
GROW = "grow"  # a partition's data, then its filesystem grown
SHRINK = "shrink"  # a filesystem shrunk on the target (tail through scratch)
RECOVERED = "recovered"  # clone: bytes the later bad-sector passes recovered
CHECK_GAPS = "check-gaps"  # read the gaps back
BOOT_SECTORS = "boot-sectors"  # NTFS/FAT boot sectors of moved partitions: hidden sectors = new start
GRUB_POINTERS = "grub-bios-pointers"  # GRUB's BIOS boot code follows a moved BIOS boot partition
GRUB_GAP = "grub-mbr-gap"  # GRUB's core image after the MBR: in place, or what to run
NEW_IDS = "new-ids"  # new disk, partition and filesystem ids, references rewritten
WINDOWS_BCD = "windows-bcd"  # a Windows BCD's device elements follow moved partitions or new ids
EFI_FALLBACK = "efi-fallback"  # EFI/BOOT/BOOTX64.EFI beside a vendor-only loader
BOOT_ENTRY = "boot-entry"  # a UEFI NVRAM entry for the restored drive
KINDS = (
    TABLE,
    GAP,
    WRITE,
    GROW,
    SHRINK,
    RECOVERED,
    CHECK_GAPS,
    BOOT_SECTORS,
    GRUB_POINTERS,
    GRUB_GAP,
    NEW_IDS,
    WINDOWS_BCD,
    EFI_FALLBACK,
    BOOT_ENTRY,
)


@dataclass(frozen=True)
class Placement:
    """Where one area lands on the target and what happens to its filesystem."""

    offset: int  # bytes on the target
    size: int  # bytes of the new partition (the area's own size when not resized)
    action: str  # keep | move | grow | shrink | gap
    fstype: str | None = None


@dataclass(frozen=True)
class Action:
    kind: str  # one of KINDS
    what: str  # for people: what happens, where, how big
    aborts: bool  # True: a failure stops the job; False: it becomes a warning
    area: str | None = None  # the area it works on, for the kinds that have one

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "what": self.what,
            "on_failure": "abort" if self.aborts else "warn",
            "area": self.area,
        }


def bios_boot_moved(image: DiskLayout, written: DiskLayout) -> tuple[int, int] | None:
    """(old, new) start sector of the BIOS boot partition when a plan places it elsewhere."""

    def start(layout: DiskLayout) -> dict[int, int]:
        return {
            p.number: p.start
            for p in layout.partitions
            if "bios_grub" in p.flags or (p.type_guid or "").upper() == BIOS_BOOT_GUID
        }

    old, new = start(image), start(written)
    for number, s in old.items():
        if number in new and new[number] != s:
            return s, new[number]
    return None


ESP_MBR = 0xEF


def esp_partitions(layout: DiskLayout) -> list[Partition]:
    """EFI system partitions, by type (GPT type GUID or MBR id 0xEF): what the EFI steps
    after writing work on, and whether a plan lists them."""
    return [p for p in layout.data_partitions() if (p.type_guid or "").upper() == ESP_GUID or p.mbr_type == ESP_MBR]


def plan_actions(
    image: DiskLayout,
    written: DiskLayout,
    placements: dict[str, Placement],
    labels: dict[str, str],
    *,
    fresh_ids: bool = False,
    uefi: bool = False,
    clone: bool = False,
    scratch: str = "",
    fstypes: dict[int, str | None] | None = None,
    bcd: dict[int, list[BcdRef]] | None = None,
    with_start: set[int] | None = None,
) -> list[Action]:
    """Every step of writing `written` from an image (or drive) laid out as `image`, in order.
    labels: how each area is named for people; uefi: whether this machine runs on UEFI
    firmware (a boot entry can be added); scratch: where shrinks keep their tail, for words;
    fstypes: each partition's filesystem, for words; bcd: the Windows BCD references by the
    partition holding the store; with_start: partitions whose boot sector records their start
    (model/windows.py)."""
    out: list[Action] = []
    if written.table != "none":
        n = len(written.partitions)
        out.append(
            Action(
                TABLE, f"write a new {written.table} partition table with {n} partition{'' if n == 1 else 's'}", True
            )
        )
    order = sorted(placements, key=lambda n: (placements[n].action != "gap", placements[n].offset))
    for name in order:
        p = placements[name]
        at = f"at {human(p.offset)}"
        if p.action == "gap":
            if p.size:
                out.append(
                    Action(GAP, f"write {labels[name]} ({human(p.size)}) {at}, around the new table", True, name)
                )
        elif p.action == "shrink":
            continue  # after every plain write: the shrink's tail may lie where later partitions go
        elif p.action == "grow":
            out.append(Action(GROW, f"write {labels[name]} {at}, then grow it to {human(p.size)}", True, name))
        else:
            verb = "move" if p.action == "move" else "write"
            out.append(Action(WRITE, f"{verb} {labels[name]} {at}", True, name))
    for name in order:
        p = placements[name]
        if p.action == "shrink":
            out.append(
                Action(
                    SHRINK,
                    f"write {labels[name]} at {human(p.offset)} and shrink it to {human(p.size)} "
                    f"on the target (the data past its new end through scratch in "
                    f"{scratch or 'the temporary directory'})",
                    True,
                    name,
                )
            )
    if clone:
        out.append(
            Action(
                RECOVERED, "write what the later bad-sector passes recovered (if any) where its area now lives", True
            )
        )
    if any(p.action == "gap" and p.size for p in placements.values()):
        out.append(Action(CHECK_GAPS, "read the bytes outside partitions back and compare them with the source", True))
    fixes = boot_sectors_to_fix(image, written, with_start or set())
    if fixes:
        which = ", ".join(f"#{n} ({(fstypes or {}).get(n)})" for n in fixes)
        out.append(
            Action(
                BOOT_SECTORS,
                f"set the hidden-sectors field of the boot sector of {which} to the new start "
                "(Windows' boot code and chkdsk read the partition's place there)",
                False,
            )
        )
    moved = bios_boot_moved(image, written)
    if moved:
        out.append(
            Action(
                GRUB_POINTERS,
                f"point GRUB's BIOS boot code at its core image, moved from sector {moved[0]} to {moved[1]}",
                False,
            )
        )
    elif written.table != "none":
        out.append(
            Action(
                GRUB_GAP,
                "check GRUB's core image after the MBR, if there is one (it must lie before the first partition)",
                False,
            )
        )
    if fresh_ids:
        out.append(
            Action(
                NEW_IDS,
                "give the drive, its partitions and filesystems new ids; rewrite fstab, "
                "crypttab and GRUB's configuration to match",
                False,
            )
        )
    stale = stale_refs(image, written, bcd or {}, fresh_ids)
    if stale:
        holders = ", ".join(f"#{n}" for n in sorted(bcd or {}))
        out.append(
            Action(
                WINDOWS_BCD,
                f"rewrite the device elements of the Windows BCD on {holders} with hivex: {', '.join(stale)}",
                False,
            )
        )
    if esp_partitions(written):
        out.append(
            Action(
                EFI_FALLBACK, "add EFI/BOOT/BOOTX64.EFI when the EFI system partition has only a vendor loader", False
            )
        )
        if uefi:
            out.append(Action(BOOT_ENTRY, "add a UEFI boot entry for the restored drive", False))
    return out

"""Windows system drives as data: what a Boot Configuration Data (BCD) store says about the
partitions Windows boots from, and what a restore must keep or rewrite so that it still boots.
Pure: the BCD is read and written with hivex elsewhere (rescue/filesystems/bcd.py); this module
only interprets and patches the bytes of one device element.

The BCD is a registry hive: Objects/{GUID}/Description/Type says what an object is, and
Objects/{GUID}/Elements/<element type in hex>/Element holds each element. An element type's
bits 24-27 are its format; format 1 is a device (e.g. 0x11000001 ApplicationDevice: where the
boot manager or a loader lives; 0x21000001 OSDevice: the Windows partition). Public
descriptions of these: Microsoft's BCD WMI reference ("BcdLibraryElementTypes",
"BcdOSLoaderElementTypes", "BcdBootMgrElementTypes") and Geoff Chappell's "BCD Elements"
notes for the type numbers; the device element's bytes are described in Misty Projects'
"BCDEdit - Devices Partition - Data" (mistyprojects.co.uk/documents/BCDEdit/files/
device_partition.htm) and decoded the same way by pbcdedit (Marc Lehmann, 2019):

    0x00  16  additional options object GUID (zero when none)
    0x10   4  device type: 6 = partition (5 = "boot": the device booted from, no reference)
    0x14   4  flags
    0x18   4  size of the rest (0x48 for a partition)
    0x20  16  MBR: partition start in BYTES (u64 LE) + 8 zero bytes
              GPT: the partition's unique GUID (mixed-endian, as stored on disk)
    0x30   4  block device type (0: hard disk)
    0x34   4  partition style: 0 = GPT, 1 = MBR
    0x38  16  MBR: the disk signature (u32 LE, the MBR's bytes 0x1B8-0x1BB) + 12 zero bytes
              GPT: the disk GUID (mixed-endian)

So on an MBR drive Windows finds its partitions by disk signature *and byte offset*: a
partition that moves breaks the reference (0xc000000e "A required device isn't accessible").
On GPT it finds them by partition and disk GUID, which a restore keeps unless told to renew
them (--new-ids)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import NotRequired, TypedDict

from rescue.model.layout import DiskLayout, Partition

DEVICE_FORMAT = 0x1  # bits 24-27 of an element type: the element names a device
PARTITION_DEVICE = 6
STYLE_GPT, STYLE_MBR = 0, 1
DEVICE_MIN = 0x48  # bytes up to the end of the disk id field

# Description/Type of the objects people know (Microsoft's BCD object type numbers)
BOOTMGR_TYPE = 0x10100002  # Windows Boot Manager
OSLOADER_TYPE = 0x10200003  # Windows Boot Loader (winload)
RESUME_TYPE = 0x10200004  # Resume from Hibernate (winresume)
APP_DEVICE = "11000001"  # BcdLibraryDevice_ApplicationDevice
OS_DEVICE = "21000001"  # BcdOSLoaderDevice_OSDevice

BCD_PATHS = ("Boot/BCD", "EFI/Microsoft/Boot/BCD")  # BIOS (on NTFS or FAT), UEFI (on the ESP)
HIBERNATED_FIX = "start Windows and shut it down with Shift+Shut down, or `shutdown /s /t 0`, then capture it again"


class BcdRef(TypedDict):
    """One device element of a BCD that names a partition, as a manifest keeps it."""

    object: str  # the BCD object's GUID, "{...}"
    type: int  # the object's Description/Type (BOOTMGR_TYPE, OSLOADER_TYPE, ...)
    element: str  # the element type in hex, as the key is named: "11000001"
    style: str  # "mbr" | "gpt"
    disk: str  # MBR: "0x1234abcd" (disk signature); GPT: the disk GUID, lower case
    offset: NotRequired[int]  # MBR: the partition's first byte
    partition: NotRequired[str]  # GPT: the partition's unique GUID, lower case
    description: NotRequired[str]  # the object's 12000004 element, e.g. "Windows 10"


@dataclass(frozen=True)
class Device:
    """A partition device element, decoded."""

    style: str  # "mbr" | "gpt"
    disk: str
    offset: int | None = None
    partition: str | None = None


def is_device_element(element: str) -> bool:
    try:
        return (int(element, 16) >> 24) & 0xF == DEVICE_FORMAT
    except ValueError:
        return False


def parse_device(data: bytes) -> Device | None:
    """The partition a device element names; None for any other device (boot, ramdisk, file,
    locate...) or bytes too short to be one."""
    if len(data) < DEVICE_MIN + 0x10:
        return None
    (kind,) = struct.unpack_from("<I", data, 0x10)
    (style,) = struct.unpack_from("<I", data, 0x34)
    if kind != PARTITION_DEVICE:
        return None
    if style == STYLE_MBR:
        (offset,) = struct.unpack_from("<Q", data, 0x20)
        (sig,) = struct.unpack_from("<I", data, 0x38)
        return Device("mbr", f"0x{sig:08x}", offset=offset)
    if style == STYLE_GPT:
        part = str(uuid.UUID(bytes_le=bytes(data[0x20:0x30])))
        disk = str(uuid.UUID(bytes_le=bytes(data[0x38:0x48])))
        return Device("gpt", disk, partition=part)
    return None


def patch_device(data: bytes, new: Device) -> bytes:
    """The element with its partition reference replaced; every other byte kept."""
    if parse_device(data) is None:
        raise ValueError("not a partition device element")
    out = bytearray(data)
    if new.style == "mbr":
        assert new.offset is not None
        struct.pack_into("<Q", out, 0x20, new.offset)
        struct.pack_into("<I", out, 0x38, int(new.disk, 16))
        struct.pack_into("<I", out, 0x34, STYLE_MBR)
    else:
        assert new.partition is not None
        out[0x20:0x30] = uuid.UUID(new.partition).bytes_le
        out[0x38:0x48] = uuid.UUID(new.disk).bytes_le
        struct.pack_into("<I", out, 0x34, STYLE_GPT)
    return bytes(out)


def device_element(dev: Device) -> bytes:
    """A partition device element as bcdedit writes one (what test fixtures store)."""
    head = bytes(16) + struct.pack("<IIII", PARTITION_DEVICE, 0, 0x48, 0)
    body = bytes(16) + struct.pack("<II", 0, STYLE_MBR if dev.style == "mbr" else STYLE_GPT) + bytes(16)
    return patch_device(head + body + bytes(16), dev)


# --- what a reference names -------------------------------------------------------------------


def _disk_matches(dev: Device | BcdRef, layout: DiskLayout) -> bool:
    disk = dev.disk if isinstance(dev, Device) else dev["disk"]
    style = dev.style if isinstance(dev, Device) else dev["style"]
    if not layout.disk_id:
        return False
    if style == "mbr":
        return layout.table == "msdos" and int(layout.disk_id, 16) == int(disk, 16)
    return layout.table == "gpt" and layout.disk_id.lower() == disk.lower()


def resolve(dev: Device | BcdRef, layout: DiskLayout) -> Partition | None:
    """The partition of `layout` a reference names, None when it names another disk or no
    partition of this one."""
    if not _disk_matches(dev, layout):
        return None
    d = dev if isinstance(dev, Device) else Device(dev["style"], dev["disk"], dev.get("offset"), dev.get("partition"))
    for p in layout.data_partitions():
        if d.style == "mbr" and p.offset(layout.sector_size) == d.offset:
            return p
        if d.style == "gpt" and (p.uuid or "").lower() == (d.partition or "").lower():
            return p
    return None


def device_for(p: Partition, layout: DiskLayout) -> Device:
    """How a BCD names partition `p` of `layout`."""
    if layout.table == "msdos":
        return Device("mbr", f"0x{int(layout.disk_id or '0', 16):08x}", offset=p.offset(layout.sector_size))
    return Device("gpt", (layout.disk_id or "").lower(), partition=(p.uuid or "").lower())


def bcd_stores(fs_facts: dict[int, dict[str, object]]) -> dict[int, list[BcdRef]]:
    """The BCD references by the partition whose filesystem holds the store."""
    out: dict[int, list[BcdRef]] = {}
    for number, fs in fs_facts.items():
        refs = fs.get("bcd")
        if isinstance(refs, list):
            out[number] = refs
    return out


def pinned(layout: DiskLayout, stores: dict[int, list[BcdRef]]) -> dict[int, str]:
    """Partitions whose start a BCD names (MBR references: byte offsets), with why, for the
    planner: moving them breaks the boot unless the BCD is rewritten."""
    out: dict[int, str] = {}
    for holder, refs in sorted(stores.items()):
        for ref in refs:
            p = resolve(ref, layout) if ref["style"] == "mbr" else None
            if p is not None and p.number not in out:
                out[p.number] = f"the Windows boot configuration (BCD) on #{holder} names #{p.number} by its offset"
    return out


def stale_refs(image: DiskLayout, written: DiskLayout, stores: dict[int, list[BcdRef]], fresh_ids: bool) -> list[str]:
    """Why the BCD must be rewritten after writing `written`, per partition it names: moved
    (MBR references are byte offsets), or every one when new ids are given (the disk
    signature, or the disk and partition GUIDs, change). Empty: the BCD stays as it is."""
    out: list[str] = []
    starts = {p.number: p.offset(written.sector_size) for p in written.data_partitions()}
    for refs in stores.values():
        for ref in refs:
            p = resolve(ref, image)
            if p is None:
                continue
            if fresh_ids:
                out.append(f"#{p.number} gets new ids")
            elif ref["style"] == "mbr" and starts.get(p.number) != ref.get("offset"):
                out.append(f"#{p.number} moves to byte {starts.get(p.number)}")
    return sorted(set(out))


def boot_sectors_to_fix(image: DiskLayout, written: DiskLayout, with_start: set[int]) -> list[int]:
    """Partitions whose boot sector records where the partition starts (`with_start`: NTFS
    and FAT, as their classes say: filesystems/windows.py) and that start elsewhere on the
    target: the hidden-sectors field must say the new start (Windows' boot code and chkdsk
    read it)."""
    old = {p.number: p.offset(image.sector_size) for p in image.data_partitions()}
    return [
        p.number
        for p in written.data_partitions()
        if p.number in with_start and p.number in old and old[p.number] != p.offset(written.sector_size)
    ]


# --- words -------------------------------------------------------------------------------------


def _label(ref: BcdRef) -> str:
    what = {BOOTMGR_TYPE: "boot manager", OSLOADER_TYPE: "loader", RESUME_TYPE: "resume"}.get(ref["type"], "object")
    return f"{what} {ref['object']} element {ref['element']}"


def ref_words(ref: BcdRef, layout: DiskLayout) -> str:
    """One BCD reference for people: which object, which element, what it names."""
    if ref["style"] == "mbr":
        where = f"MBR disk {ref['disk']} offset {ref.get('offset')}"
    else:
        where = f"GPT disk {ref['disk']} partition {ref.get('partition')}"
    p = resolve(ref, layout)
    found = f"#{p.number}" if p is not None else "no partition of this drive"
    desc = f" ({ref['description']})" if ref.get("description") else ""
    return f"{_label(ref)}{desc}: {where} -> {found}"


def summary(layout: DiskLayout, stores: dict[int, list[BcdRef]]) -> list[str]:
    """What `rescue info` and the wizard say of a Windows drive: "Windows boot manager on #1,
    Windows on #2", then each device reference. Empty for a drive without a BCD."""
    out = []
    for holder, refs in sorted(stores.items()):
        oses = sorted(
            {
                p.number
                for r in refs
                if r["type"] == OSLOADER_TYPE and r["element"] == OS_DEVICE and (p := resolve(r, layout)) is not None
            }
        )
        head = f"Windows boot manager on #{holder}"
        if oses:
            head += ", Windows on " + ", ".join(f"#{n}" for n in oses)
        out.append(head)
        out += [f"  BCD {ref_words(r, layout)}" for r in refs]
    return out

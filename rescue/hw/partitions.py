"""Partition tables through pyparted, behind one seam: read a drive's table into a DiskLayout
and write a DiskLayout onto a drive.

pyparted (parted 3.5) does not expose GPT partition GUIDs, the disk GUID, GPT attribute bits or
raw MBR type ids, so those are read from and written with util-linux sfdisk after pyparted has
done the geometry, names and flags. pyparted calls are not thread-safe: call from one thread."""

from __future__ import annotations

import json
import os
import struct
from typing import TypedDict

import parted

from rescue.errors import DeviceError, RescueError
from rescue.hw.run import output, run
from rescue.model.layout import DiskLayout, Partition

_KIND = {parted.PARTITION_NORMAL: "primary", parted.PARTITION_LOGICAL: "logical", parted.PARTITION_EXTENDED: "extended"}
_PED_TYPE = {
    "primary": parted.PARTITION_NORMAL,
    "logical": parted.PARTITION_LOGICAL,
    "extended": parted.PARTITION_EXTENDED,
}
_FLAG_BY_NAME = {name: code for code, name in parted.partitionFlag.items()}


class TableError(RescueError):
    exit_code = 4


class _SfdiskEntry(TypedDict, total=False):
    """One partition of `sfdisk --json`, the keys read here."""

    start: int  # sector
    type: str  # GPT type GUID, or the MBR id in hex
    uuid: str  # GPT partition GUID
    attrs: str  # GPT attribute names
    bootable: bool  # MBR active flag


def _device(path: str) -> parted.Device:
    """libparted keeps every device it opened in a cache keyed by path, with the size it had
    then: a drive swapped under the same name (a USB disk replugged, a loop device reused)
    would be written with the old geometry. So each look is a fresh one."""
    try:
        dev = parted.getDevice(path)
        dev.removeFromCache()
        return parted.getDevice(path)
    except Exception as e:  # noqa: BLE001 - pyparted raises several unrelated classes here
        raise DeviceError(f"{path}: cannot open with parted ({e})") from None


def read_layout(path: str) -> DiskLayout:
    dev = _device(path)
    size = dev.length * dev.sectorSize
    try:
        disk = parted.newDisk(dev)
    except Exception:  # noqa: BLE001 - pyparted's way of saying "no (readable) table"
        return DiskLayout(
            table="none", sector_size=dev.sectorSize, size=size, physical_sector_size=dev.physicalSectorSize
        )
    if disk.type not in ("gpt", "msdos"):
        raise TableError(f"{path}: partition table type {disk.type!r} is not supported (GPT and MBR are)")
    disk_id, extra = _sfdisk_details(path)
    parts = []
    for p in disk.partitions:
        flags = sorted(
            name for code, name in parted.partitionFlag.items() if p.isFlagAvailable(code) and p.getFlag(code)
        )
        sf = extra.get(p.geometry.start) or _SfdiskEntry()
        part = Partition(
            number=p.number, start=p.geometry.start, end=p.geometry.end, kind=_KIND.get(p.type, "primary"), flags=flags
        )
        if disk.type == "gpt":
            part.name = p.name or ""
            part.type_guid = sf.get("type")
            part.uuid = sf.get("uuid")
            part.attrs = sf.get("attrs", "")
        else:
            part.mbr_type = int(sf["type"], 16) if "type" in sf else None
            part.bootable = bool(sf.get("bootable", False))
        parts.append(part)
    return DiskLayout(
        table=disk.type,
        sector_size=dev.sectorSize,
        size=size,
        disk_id=disk_id,
        partitions=sorted(parts, key=lambda q: q.number),
        physical_sector_size=dev.physicalSectorSize,
    )


def _sfdisk_details(path: str) -> tuple[str | None, dict[int, _SfdiskEntry]]:
    """The disk id, and GUIDs, attributes and MBR ids by start sector."""
    proc = run(["sfdisk", "--json", "--", path], check=False, error=DeviceError)
    if proc.returncode != 0:
        return None, {}
    table = json.loads(proc.stdout)["partitiontable"]
    by_start: dict[int, _SfdiskEntry] = {p["start"]: p for p in table.get("partitions", [])}
    return table.get("id"), by_start


def apply_layout(path: str, layout: DiskLayout) -> list[str]:
    """Write `layout` as a fresh table on the drive (replacing whatever is there, old
    signatures of other table types included). Returns notes for the log."""
    notes: list[str] = []
    dev = _device(path)
    if dev.sectorSize != layout.sector_size:
        raise TableError(f"{path} has {dev.sectorSize}-byte sectors, the layout {layout.sector_size}-byte")
    if layout.table == "none":
        return notes
    if layout.end_bytes() > dev.length * dev.sectorSize:
        raise TableError(f"{path} is too small for the layout")
    try:
        disk = parted.freshDisk(dev, layout.table)
        order = sorted(layout.partitions, key=lambda p: (p.kind == "logical", p.start))
        for p in order:
            geom = parted.Geometry(device=dev, start=p.start, end=p.end)
            part = parted.Partition(disk=disk, type=_PED_TYPE[p.kind], geometry=geom)
            disk.addPartition(part, parted.Constraint(exactGeom=geom))
            if layout.table == "gpt" and p.name:
                part.set_name(p.name)
            for name in p.flags:
                code = _FLAG_BY_NAME.get(name)
                if code is not None and part.isFlagAvailable(code):
                    part.setFlag(code)
            if part.number != p.number:
                notes.append(f"partition {p.number} became number {part.number} (parted numbers in order)")
        disk.commitToDevice()
    except RescueError:
        raise
    except Exception as e:  # noqa: BLE001 - any pyparted failure: the table was not written
        raise TableError(f"{path}: writing the partition table failed ({e})") from None
    try:
        disk.commitToOS()
    except Exception:  # noqa: BLE001 - best effort: the table is on the drive either way
        notes.append("the kernel was not told about the new partitions (drive busy or a loop device)")
    _set_ids(path, layout)
    return notes


def gpt_usable(path: str, sector_size: int) -> tuple[int, int] | None:
    """(first, last) usable LBA from the primary GPT header on the drive, or None when there
    is no valid-looking header: what a freshly written table owns at both ends."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = os.pread(fd, 92, sector_size)
    finally:
        os.close(fd)
    if len(header) < 92 or header[:8] != b"EFI PART":
        return None
    first, last = struct.unpack_from("<QQ", header, 40)
    return (first, last) if 0 < first <= last else None


def _set_ids(path: str, layout: DiskLayout) -> None:
    """What pyparted cannot set: disk id, GUIDs, type ids, attributes, exact MBR types.

    Every value comes from an image's manifest, so each call ends its options with `--`:
    whatever a value holds (a manifest is validated, but this is the last line of defence),
    sfdisk reads it as an argument, never as an option such as `--delete`."""

    def sfdisk(command: str, *args: str) -> None:
        output(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", command, "--", *args], error=TableError)

    if layout.disk_id:
        sfdisk("--disk-id", path, layout.disk_id)
    for p in layout.partitions:
        n = str(p.number)
        if layout.table == "gpt":
            if p.type_guid:
                sfdisk("--part-type", path, n, p.type_guid)
            if p.uuid:
                sfdisk("--part-uuid", path, n, p.uuid)
            if p.attrs:
                sfdisk("--part-attrs", path, n, p.attrs)
        elif p.mbr_type is not None and p.kind != "extended":
            sfdisk("--part-type", path, n, f"{p.mbr_type:x}")

"""A drive's partition table as plain data, as recorded in a manifest and as planned for a
target. Sizes are in bytes or sectors as named; sectors are logical sectors of the drive."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import NotRequired, TypedDict, cast


class PartitionDict(TypedDict):
    """A Partition as JSON (manifest.json); keys with a default may be absent."""

    number: int
    start: int
    end: int
    type_guid: NotRequired[str | None]
    mbr_type: NotRequired[int | None]
    kind: NotRequired[str]
    name: NotRequired[str]
    flags: NotRequired[list[str]]
    uuid: NotRequired[str | None]
    attrs: NotRequired[str]
    bootable: NotRequired[bool]


class LayoutDict(TypedDict):
    """A DiskLayout as JSON (manifest.json); keys with a default may be absent."""

    table: str
    sector_size: int
    size: int
    disk_id: NotRequired[str | None]
    partitions: NotRequired[list[PartitionDict]]
    physical_sector_size: NotRequired[int]


@dataclass
class Partition:
    number: int
    start: int  # first sector
    end: int  # last sector, inclusive (parted's convention)
    type_guid: str | None = None  # GPT partition type GUID
    mbr_type: int | None = None  # MBR system id (0x83, 0x07, ...)
    kind: str = "primary"  # primary | logical | extended (MBR only)
    name: str = ""  # GPT partition name
    flags: list[str] = field(default_factory=list)  # parted flag names: boot, esp, bios_grub ...
    uuid: str | None = None  # GPT unique partition GUID
    attrs: str = ""  # GPT attribute names as sfdisk spells them, e.g. "LegacyBIOSBootable"
    bootable: bool = False  # MBR active flag

    def length(self) -> int:
        return self.end - self.start + 1

    def offset(self, sector_size: int) -> int:
        return self.start * sector_size

    def size(self, sector_size: int) -> int:
        return self.length() * sector_size


@dataclass
class DiskLayout:
    table: str  # "gpt" | "msdos" | "none"
    sector_size: int  # logical
    size: int  # bytes of the whole drive
    disk_id: str | None = None  # GPT disk GUID or MBR id as "0x1234abcd"
    partitions: list[Partition] = field(default_factory=list)
    physical_sector_size: int = 512

    def to_dict(self) -> LayoutDict:
        return cast(LayoutDict, asdict(self))  # asdict gives exactly the fields, recursively

    @classmethod
    def from_dict(cls, d: LayoutDict) -> DiskLayout:
        """The inverse of to_dict. An unknown key is a TypeError, as for Partition(**p)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unexpected layout keys {sorted(unknown)}")
        layout = cls(
            table=d["table"],
            sector_size=d["sector_size"],
            size=d["size"],
            partitions=[Partition(**p) for p in d.get("partitions", [])],
        )
        if "disk_id" in d:
            layout.disk_id = d["disk_id"]
        if "physical_sector_size" in d:
            layout.physical_sector_size = d["physical_sector_size"]
        return layout

    def data_partitions(self) -> list[Partition]:
        """Partitions that hold data (not the MBR extended container)."""
        return [p for p in self.partitions if p.kind != "extended"]

    def end_bytes(self) -> int:
        """Bytes a target needs for this layout as is, including the backup GPT."""
        last = max((p.end + 1 for p in self.partitions), default=0) * self.sector_size
        if self.table == "gpt":  # backup entries (128 x 128 bytes) and header
            last += 128 * 128 + self.sector_size
        return max(last, 1 << 20)

"""A drive's partition table as plain data, as recorded in a manifest and as planned for a
target. Sizes are in bytes or sectors as named; sectors are logical sectors of the drive."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiskLayout":
        parts = [Partition(**p) for p in d.get("partitions", [])]
        return cls(**{**d, "partitions": parts})

    def data_partitions(self) -> list[Partition]:
        """Partitions that hold data (not the MBR extended container)."""
        return [p for p in self.partitions if p.kind != "extended"]

    def end_bytes(self) -> int:
        """Bytes a target needs for this layout as is, including the backup GPT."""
        last = max((p.end + 1 for p in self.partitions), default=0) * self.sector_size
        if self.table == "gpt":  # backup entries (128 x 128 bytes) and header
            last += 128 * 128 + self.sector_size
        return max(last, 1 << 20)

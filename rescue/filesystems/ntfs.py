"""NTFS: the used-block map from $Bitmap (MFT record 6, one bit per cluster, least significant
bit first), read with `ntfscat`, plus the two boot sectors.

$Bitmap knows clusters only. The boot sector is cluster 0 (always marked), but the backup
boot sector lies past the last cluster: NTFS's sector count stops one sector short of the
partition, and the copy sits in the sector after it. We add that sector and also the
partition's last sector (they are the same one unless the filesystem is smaller than its
partition): Windows refuses a volume whose backup boot sector is missing."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from rescue.errors import FilesystemError
from rescue.filesystems.base import FsInfo, Volume
from rescue.hw.run import run
from rescue.model.extents import Extent, normalize

TYPES = ("ntfs",)


@dataclass(frozen=True)
class Boot:
    bytes_per_sector: int
    cluster_bytes: int
    total_sectors: int  # of the filesystem; the backup boot sector is the one after these
    serial: int

    @property
    def clusters(self) -> int:
        return self.total_sectors * self.bytes_per_sector // self.cluster_bytes

    @property
    def uuid(self) -> str:
        """The volume serial as blkid prints it."""
        return f"{self.serial:016X}"


def parse_boot(boot: bytes) -> Boot:
    """Geometry from the boot sector. Sectors per cluster above 0x80 is a negative power of
    two (0xF4 = -12: 4096 sectors), how NTFS spells clusters of 128 KiB and more."""
    if len(boot) < 512 or boot[3:11] != b"NTFS    ":
        raise FilesystemError("not an NTFS boot sector")
    bps, spc = struct.unpack_from("<HB", boot, 0x0B)
    total, = struct.unpack_from("<Q", boot, 0x28)
    serial, = struct.unpack_from("<Q", boot, 0x48)
    if bps not in (256, 512, 1024, 2048, 4096):
        raise FilesystemError(f"NTFS boot sector: {bps} bytes per sector is not valid")
    if spc > 0x80:
        sectors = 1 << (256 - spc)
    elif spc and not spc & (spc - 1):
        sectors = spc
    else:
        raise FilesystemError(f"NTFS boot sector: sectors per cluster 0x{spc:02X} is not valid")
    if total == 0:
        raise FilesystemError("NTFS boot sector: sector count is zero")
    return Boot(bps, bps * sectors, total, serial)


# One entry per byte value: the runs of set bits inside it, as (first bit, count).
_BYTE_RUNS = [[(m.start(), m.end() - m.start()) for m in re.finditer("1+", f"{b:08b}"[::-1])]
              for b in range(256)]


def bitmap_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int]]:
    """(first bit, count) for every run of set bits among the first `nbits`, LSB first.

    Runs of whole 0xFF or 0x00 bytes are found by a regex, so a big, mostly full or mostly
    empty bitmap costs little Python work; only mixed bytes are looked at bit by bit."""
    runs: list[list[int]] = []

    def add(start: int, count: int) -> None:
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] += count
        else:
            runs.append([start, count])

    view = bitmap[:(nbits + 7) // 8]
    for m in re.finditer(rb"\xff+|[\x01-\xfe]+", view):
        if m.group()[0] == 0xFF:
            add(m.start() * 8, (m.end() - m.start()) * 8)
            continue
        for i in range(m.start(), m.end()):
            for bit, count in _BYTE_RUNS[view[i]]:
                add(i * 8 + bit, count)
    out = []
    for start, count in runs:  # bits past the last cluster may be set as padding
        count = min(count, nbits - start)
        if count > 0:
            out.append((start, count))
    return out


def extents_from(boot: Boot, bitmap: bytes, volume_size: int) -> list[Extent]:
    out = [Extent(0, boot.bytes_per_sector)]
    out += [Extent(s * boot.cluster_bytes, n * boot.cluster_bytes) for s, n in bitmap_runs(bitmap, boot.clusters)]
    bps = boot.bytes_per_sector
    out += [Extent(boot.total_sectors * bps, bps), Extent(volume_size // bps * bps - bps, bps)]
    return normalize(out, volume_size)


def parse_min_size(text: str) -> int | None:
    """ntfsresize --info's estimate; None when it gives none (e.g. a volume it can't shrink)."""
    m = re.search(r"You might resize at (\d+) bytes", text)
    return int(m.group(1)) if m else None


# --- the thin I/O part ---------------------------------------------------------------------

def read_boot(vol: Volume) -> Boot:
    boot = parse_boot(vol.pread(512, 0))
    if boot.total_sectors * boot.bytes_per_sector > vol.size:
        raise FilesystemError(f"NTFS filesystem ({boot.total_sectors * boot.bytes_per_sector} bytes) "
                              f"is larger than its partition ({vol.size} bytes)")
    return boot


def read_bitmap(dev: str, boot: Boot) -> bytes:
    bitmap = run(["ntfscat", "--force", "--inode", "6", dev], timeout=1800).stdout
    if len(bitmap) * 8 < boot.clusters:
        raise FilesystemError(f"NTFS $Bitmap on {dev} covers {len(bitmap) * 8} clusters, "
                              f"the boot sector says {boot.clusters}")
    return bitmap


def used_extents(vol: Volume) -> list[Extent]:
    boot = read_boot(vol)
    with vol.device() as dev:
        bitmap = read_bitmap(dev, boot)
    return extents_from(boot, bitmap, vol.size)


def info(vol: Volume, fstype: str) -> FsInfo:
    """Label from blkid (it reads $Volume itself); min_size from ntfsresize, None when
    ntfsresize cannot tell (an unclean or hibernated volume): unknown, not zero."""
    from rescue.filesystems import probe

    boot = read_boot(vol)
    with vol.device() as dev:
        bitmap = read_bitmap(dev, boot)
        resize = run(["ntfsresize", "--info", "--force", "--no-action", dev], check=False, timeout=1800)
    used = sum(n for _, n in bitmap_runs(bitmap, boot.clusters)) * boot.cluster_bytes
    label = probe(vol).get("LABEL") or None
    return FsInfo(type=fstype, uuid=boot.uuid, label=label, used_bytes=used,
                  min_size=parse_min_size(resize.stdout.decode(errors="replace")),
                  map_source="ntfscat $Bitmap")

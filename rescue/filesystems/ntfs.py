"""NTFS: everything we know about it, in the class `Ntfs`. The used-block map comes from
$Bitmap (MFT record 6, one bit per cluster, least significant bit first), read with
`ntfscat`, plus the two boot sectors; ntfsresize resizes it, ntfslabel renumbers it,
ntfscluster names the files a bad sector hits. Mounted through ntfs-3g (FUSE): no kernel
driver here.

$Bitmap knows clusters only. The boot sector is cluster 0 (always marked), but the backup
boot sector lies past the last cluster: NTFS's sector count stops one sector short of the
partition, and the copy sits in the sector after it. We add that sector and also the
partition's last sector (they are the same one unless the filesystem is smaller than its
partition): Windows refuses a volume whose backup boot sector is missing."""

from __future__ import annotations

import os
import re
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rescue.errors import FilesystemError
from rescue.filesystems.badfiles import C_LOCALE, TOOL_TIMEOUT
from rescue.filesystems.base import FREE, METADATA, Examined, Filesystem, FsInfo, Range, Volume, probe
from rescue.filesystems.resize import tool
from rescue.hw.run import output, run
from rescue.model.extents import Extent, normalize
from rescue.model.windows import HIBERNATED_FIX

NTFS_SECONDS = 120.0  # ntfscluster scans the whole MFT per range: stop asking after this


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
    (total,) = struct.unpack_from("<Q", boot, 0x28)
    (serial,) = struct.unpack_from("<Q", boot, 0x48)
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
_BYTE_RUNS = [[(m.start(), m.end() - m.start()) for m in re.finditer("1+", f"{b:08b}"[::-1])] for b in range(256)]


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

    view = bitmap[: (nbits + 7) // 8]
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
        raise FilesystemError(
            f"NTFS filesystem ({boot.total_sectors * boot.bytes_per_sector} bytes) "
            f"is larger than its partition ({vol.size} bytes)"
        )
    return boot


def read_bitmap(dev: str, boot: Boot) -> bytes:
    bitmap = run(["ntfscat", "--force", "--inode", "6", dev], timeout=1800).stdout
    if len(bitmap) * 8 < boot.clusters:
        raise FilesystemError(
            f"NTFS $Bitmap on {dev} covers {len(bitmap) * 8} clusters, the boot sector says {boot.clusters}"
        )
    return bitmap


class Ntfs(Filesystem):
    names = ("ntfs",)
    can_grow = True
    grow_fills = True
    can_shrink = True
    shrink_moves_data = True
    resize_floor = 0
    mount_type = "ntfs-3g"  # FUSE: no NTFS kernel driver here
    mount_ro = "ro"
    mount_rw = "rw"
    image_store = "noatime"
    owners = False  # ntfs-3g without a user mapping
    no_files = None
    mtools = False
    linux_config = False
    can_renumber = True
    can_name_files = True

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """Label from blkid (it reads $Volume itself; the caller's probe when it has one);
        min_size from ntfsresize, None when ntfsresize cannot tell (an unclean or hibernated
        volume): unknown, not zero."""
        boot = read_boot(vol)
        with vol.device() as dev:
            bitmap = read_bitmap(dev, boot)
            resize = run(["ntfsresize", "--info", "--force", "--no-action", dev], check=False, timeout=1800)
        used = sum(n for _, n in bitmap_runs(bitmap, boot.clusters)) * boot.cluster_bytes
        label = (probed or probe(vol)).get("LABEL") or None
        info = FsInfo(
            type=self.type,
            uuid=boot.uuid,
            label=label,
            used_bytes=used,
            min_size=parse_min_size(resize.stdout.decode(errors="replace")),
            map_source="ntfscat $Bitmap",
        )
        return Examined(info, extents_from(boot, bitmap, vol.size))

    def used_extents(self, vol: Volume) -> list[Extent]:
        boot = read_boot(vol)
        with vol.device() as dev:
            bitmap = read_bitmap(dev, boot)
        return extents_from(boot, bitmap, vol.size)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """ntfsresize marks the volume dirty so that Windows runs chkdsk at the next boot.
        When the volume was clean before, we clear that flag again with `ntfsfix -d`:
        ntfsresize checked the whole volume before touching it and refuses an inconsistent
        one, so the chkdsk would only cost the person a long first boot (ntfs-3g mounts it
        either way). A volume that Windows itself had marked for chkdsk keeps the mark."""
        old = _size(device)
        if old == new_size:
            return self._done(device, old, old, "ntfsresize not needed")
        state = hibernation(device)  # ntfsresize --force does not check it (tried: 2022.10.3)
        if state:
            raise FilesystemError(f"cannot resize the NTFS on {device}: {state}; {HIBERNATED_FIX}")
        was_dirty = _dirty(device)
        base = ["ntfsresize", "--force", "--no-progress-bar", "--size", str(new_size)]
        tool(base + ["--no-action", device], device, input=b"y\n")
        tool(base + [device], device, input=b"y\n")
        if not was_dirty:
            tool(["ntfsfix", "--clear-dirty", device], device)
        note = "; still marked for chkdsk, as before" if was_dirty else ""
        return self._done(device, old, _size(device), "ntfsresize") + note

    def new_uuid(self, device: str) -> str:
        new = f"{secrets.randbits(64):016X}"
        run(["ntfslabel", f"--new-serial={new}", device])
        return new

    def files_at(self, device: str, ranges: Sequence[Range], max_blocks: int) -> dict[Range, list[str]]:
        """ntfscluster --sector A-B per range: every MFT record with a run on those sectors.
        It scans the whole MFT each time, so a time budget, not a block budget."""
        fd = os.open(device, os.O_RDONLY)
        try:
            sector = parse_boot(os.pread(fd, 512, 0)).bytes_per_sector
        finally:
            os.close(fd)
        out: dict[Range, list[str]] = {}
        deadline = time.monotonic() + NTFS_SECONDS
        for r in ranges:
            if time.monotonic() > deadline:
                break
            first, last = r[0] // sector, (r[0] + r[1] - 1) // sector
            proc = run(
                ["ntfscluster", "--force", "--sector", f"{first}-{last}", device],
                env=C_LOCALE,
                check=False,
                timeout=TOOL_TIMEOUT,
            )
            text = proc.stdout.decode(errors="replace")
            names = {file_name(int(m.group(1)), m.group(2)) for m in _HIT.finditer(text)}
            if names:
                out[r] = sorted(names)
            elif proc.returncode == 0 and "no inode found" in text:
                # Every allocated cluster of NTFS belongs to a file (metadata files included).
                out[r] = [FREE]
        return out


HIBERNATED, UNCLEAN = 14, 15  # ntfs-3g.probe's exit codes (NTFS_VOLUME_HIBERNATED, _UNCLEAN_UNMOUNT)


def hibernation(dev: str) -> str | None:
    """Whether Windows left the volume hibernated or with Fast Startup's unfinished state:
    ntfs-3g's own check (hiberfil.sys's "hibr" signature, the $LogFile state) through
    ntfs-3g.probe --readwrite (on a read-only device it falls back to read-only and still
    checks). None when it is clean."""
    code = run(["ntfs-3g.probe", "--readwrite", dev], check=False).returncode
    if code == HIBERNATED:
        return "Windows is hibernated or Fast Startup is on (hiberfil.sys is active)"
    if code == UNCLEAN:
        return "Windows did not shut down fully (Fast Startup is on, or it crashed): the volume is in use"
    return None


def _size(device: str) -> int:
    """Bytes the volume spans: its sector count plus the backup boot sector after them."""
    with open(device, "rb") as f:
        boot = parse_boot(f.read(512))
    return (boot.total_sectors + 1) * boot.bytes_per_sector


def _dirty(device: str) -> bool:
    """Whether the volume is marked for chkdsk (--force: ntfsinfo refuses such a volume)."""
    found = re.search(r"Volume Flags:\s*0x([0-9a-fA-F]+)", output(["ntfsinfo", "--force", "--mft", device]))
    if not found:
        raise FilesystemError(f"ntfsinfo gave no volume flags for {device}")
    return bool(int(found.group(1), 16) & 0x0001)


_HIT = re.compile(r"^Inode (\d+) (.*)$", re.M)


def file_name(ino: int, text: str) -> str:
    """What ntfscluster names a record: '/dir/file.txt/$DATA' -> '/dir/file.txt'; the
    $-files (inodes below 16, $Extend/...) are the filesystem's own metadata."""
    path = text.strip()
    head, _, last = path.rpartition("/")
    if last.startswith("$") and head:
        path = head
    top = path.lstrip("/").split("/", 1)[0]
    if ino < 16 or top.startswith("$"):
        return METADATA
    return path or "/"

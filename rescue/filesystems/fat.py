"""FAT12/16/32: everything we know about it, in the class `Fat`. The used-block map is read
from the FAT itself; rescue resizes it (see Fat._resize) and gives it a new volume id by
writing the boot sector; mtools reads its files without a kernel driver.

We parse the boot sector and the FAT in Python rather than trusting partclone, whose 0.3.23
release decodes FAT12's packed 12-bit entries wrongly and marks used data clusters free.
The parsing functions take bytes and return values; only the class (Fat) and the read_* helpers read.

What counts as used:
- everything before the data area: reserved sectors (boot sector, FAT32's FSInfo and backup
  boot sector), every FAT copy, and FAT12/16's fixed root directory;
- every data cluster whose entry is non-zero in *any* FAT copy. Copies normally agree; when
  they don't, fsck or the driver may pick either, so we keep the union (it only costs space);
- not bad clusters (0xFF7, 0xFFF7, 0x0FFFFFF7): they hold no data, the FAT keeps them out of
  use on the restored drive too, and reading them is what fails on a failing drive.

FAT type follows Linux and dosfstools, not the Microsoft rule alone: a BPB whose 16-bit FAT
size is zero is FAT32 (mkfs.vfat -F 32 makes FAT32 with fewer than 65525 clusters, and Linux,
mtools and blkid accept it); otherwise fewer than 4085 clusters is FAT12, else FAT16."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import struct
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

from rescue.errors import FilesystemError
from rescue.filesystems.base import Examined, Filesystem, FsInfo, Volume, device_size, mib
from rescue.model.extents import Extent, MiB, normalize

MAX_FAT12_CLUSTERS = 4084  # dosfstools' MAX_FAT12: more clusters than this is FAT16
MIN_FAT16_CLUSTERS = 4085
MIN_FAT32_CLUSTERS = 65525  # below this a resizer must switch type; we don't plan for that
BAD = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}
FLOOR = {12: 1, 16: MIN_FAT16_CLUSTERS, 32: MIN_FAT32_CLUSTERS}  # fewer clusters changes the type
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


@dataclass(frozen=True)
class Bpb:
    """The geometry a FAT boot sector describes, in sectors unless named otherwise."""

    fat_bits: int  # 12, 16 or 32
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    num_fats: int
    root_entries: int  # 0 on FAT32
    total_sectors: int
    fat_sectors: int  # per copy
    root_cluster: int  # FAT32 only, else 0
    active_fat: int | None  # FAT32 with mirroring off: the one FAT in use, else None
    volume_id: int | None  # None when the extended boot signature is absent
    bpb_label: str | None

    @property
    def cluster_bytes(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def root_dir_sectors(self) -> int:
        return (self.root_entries * 32 + self.bytes_per_sector - 1) // self.bytes_per_sector

    @property
    def first_fat_sector(self) -> int:
        return self.reserved_sectors

    @property
    def root_dir_sector(self) -> int:
        return self.reserved_sectors + self.num_fats * self.fat_sectors

    @property
    def first_data_sector(self) -> int:
        return self.root_dir_sector + self.root_dir_sectors

    @property
    def data_offset(self) -> int:
        """Byte offset of cluster 2: everything before it is metadata."""
        return self.first_data_sector * self.bytes_per_sector

    @property
    def cluster_count(self) -> int:
        return (self.total_sectors - self.first_data_sector) // self.sectors_per_cluster

    @property
    def fat_bytes(self) -> int:
        return self.fat_sectors * self.bytes_per_sector

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_bytes

    @property
    def uuid(self) -> str | None:
        """The volume id as blkid and mdir print it: "1234-ABCD"."""
        return None if self.volume_id is None else volume_id_text(self.volume_id)


def volume_id_text(volume_id: int) -> str:
    """blkid's spelling of a FAT volume id: "47F0-C63C"."""
    return f"{volume_id >> 16:04X}-{volume_id & 0xFFFF:04X}"


def mtools_env() -> dict[str, str]:
    """The environment for mtools on a FAT image or partition file: MTOOLS_SKIP_CHECK, since
    a restored or imaged FAT need not match mtools' idea of a consistent geometry."""
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _label(raw: bytes) -> str | None:
    """An 11-byte FAT label; "NO NAME" (what mkfs writes without -n) means none."""
    if raw[:1] == b"\x05":  # 0xE5 escaped, as in directory entries
        raw = b"\xe5" + raw[1:]
    text = raw.rstrip(b" \x00").decode("cp437", errors="replace")
    return None if not text or text == "NO NAME" else text


def parse_bpb(boot: bytes) -> Bpb:
    """Geometry from the first sector. Raises FilesystemError for anything that is not a
    plausible FAT boot sector, so a damaged volume gives a one-line message, not a crash."""
    if len(boot) < 512:
        raise FilesystemError("FAT boot sector is truncated")
    (bps, spc, rsvd, nfats, root_ent, tot16, _media, fat16) = struct.unpack_from("<HBHBHHBH", boot, 11)
    tot32, fat32 = struct.unpack_from("<II", boot, 32)
    if bps not in (512, 1024, 2048, 4096):
        raise FilesystemError(f"not a FAT boot sector: {bps} bytes per sector")
    if spc == 0 or spc & (spc - 1):
        raise FilesystemError(f"not a FAT boot sector: {spc} sectors per cluster")
    if rsvd == 0 or nfats == 0:
        raise FilesystemError("not a FAT boot sector: no reserved sectors or no FAT")
    total = tot16 or tot32
    if fat16 == 0:
        if fat32 == 0:
            raise FilesystemError("not a FAT boot sector: FAT size is zero")
        ext_flags, _ver, root_cluster = struct.unpack_from("<HHI", boot, 40)
        active = ext_flags & 0x0F if ext_flags & 0x80 and ext_flags & 0x0F < nfats else None
        ext = 64
        bits, fat_sectors, root_ent = 32, fat32, 0
    else:
        active, root_cluster, ext = None, 0, 36
        bits, fat_sectors = 16, fat16  # 12 or 16 is decided by the cluster count below
    volume_id = label = None
    if boot[ext + 2] in (0x28, 0x29):
        volume_id = struct.unpack_from("<I", boot, ext + 3)[0]
        if boot[ext + 2] == 0x29:
            label = _label(boot[ext + 7 : ext + 18])
    bpb = Bpb(bits, bps, spc, rsvd, nfats, root_ent, total, fat_sectors, root_cluster, active, volume_id, label)
    if total <= bpb.first_data_sector or bpb.cluster_count < 1:
        raise FilesystemError("not a FAT boot sector: no room for a data area")
    if bits == 16 and bpb.cluster_count <= MAX_FAT12_CLUSTERS:
        bpb = dataclasses.replace(bpb, fat_bits=12)
    need = -(-(bpb.cluster_count + 2) * bpb.fat_bits // 8)
    if bpb.fat_bytes < need:
        raise FilesystemError(f"FAT{bpb.fat_bits} table too small for {bpb.cluster_count} clusters")
    return bpb


def fat12_entry(fat: bytes, n: int) -> int:
    """Entry n of a FAT12 table: two entries share three bytes; the even one takes the low
    12 bits of the little-endian pair at n*3/2, the odd one the high 12 bits."""
    off = n * 3 // 2
    pair = fat[off] | fat[off + 1] << 8
    return pair >> 4 if n & 1 else pair & 0xFFF


def fat_entries(fat: bytes, fat_bits: int, count: int) -> array[int]:
    """The first `count` entries (including the two reserved ones) as integers; FAT32's
    reserved top four bits are masked off, as the spec says they must be."""
    if fat_bits == 12:
        return array("I", (fat12_entry(fat, n) for n in range(count)))
    code = "H" if fat_bits == 16 else "I"
    width = 2 if fat_bits == 16 else 4
    raw = bytes(fat[: count * width])
    if fat_bits == 32:  # clear the top nibble of each entry's last byte, at C speed
        buf = bytearray(raw)
        buf[3::4] = buf[3::4].translate(_LOW_NIBBLE)
        raw = bytes(buf)
    out = array(code, raw)
    if sys.byteorder == "big":
        out.byteswap()
    return out


def used_flags(fat: bytes, fat_bits: int, cluster_count: int) -> bytes:
    """One byte per entry (index = cluster number), 1 where a data cluster is in use:
    non-zero and not marked bad. Entries 0 and 1 are reserved, never clusters."""
    entries = fat_entries(fat, fat_bits, cluster_count + 2)
    flags = bytearray(map(bool, entries))
    flags[0:2] = b"\x00\x00"
    bad = BAD[fat_bits]
    pos = 2
    while True:
        try:
            pos = entries.index(bad, pos)
        except ValueError:
            break
        flags[pos] = 0
        pos += 1
    return bytes(flags)


def cluster_runs(flags: bytes) -> list[tuple[int, int]]:
    """(first cluster, count) for each run of used clusters."""
    return [(m.start(), m.end() - m.start()) for m in re.finditer(rb"\x01+", flags)]


def used_flags_all(bpb: Bpb, fats: list[bytes]) -> bytes:
    """Union over the FAT copies that the filesystem may use (see the module docstring)."""
    if bpb.active_fat is not None:
        fats = [fats[bpb.active_fat]]
    distinct = list(dict.fromkeys(fats))  # identical copies are parsed once
    flags = [used_flags(f, bpb.fat_bits, bpb.cluster_count) for f in distinct]
    if len(flags) == 1:
        return flags[0]
    merged = 0
    for f in flags:
        merged |= int.from_bytes(f, "little")
    return merged.to_bytes(len(flags[0]), "little")


def extents_from(bpb: Bpb, flags: bytes) -> list[Extent]:
    out = [Extent(0, bpb.data_offset)]
    out += [Extent(bpb.cluster_offset(c), n * bpb.cluster_bytes) for c, n in cluster_runs(flags)]
    return normalize(out)


def min_size(bpb: Bpb, flags: bytes) -> int:
    """The size after moving every used cluster to the front while keeping the current
    reserved/FAT/root layout, but never so few clusters that the FAT type would change (a
    shrink below that needs a reformat, not a resize). Rounded up to 1 MiB. Fat._resize
    moves no data (Fat.shrink_moves_data is False): what it can reach is `end_of_used`."""
    used = flags.count(1)
    size = bpb.data_offset + max(used, FLOOR[bpb.fat_bits]) * bpb.cluster_bytes
    return min(-(-size // MiB) * MiB, bpb.total_sectors * bpb.bytes_per_sector)


def end_of_used(bpb: Bpb, flags: bytes) -> int:
    """Byte offset just past the highest used cluster: what an in-place truncation keeps."""
    last = flags.rfind(b"\x01")
    return bpb.data_offset if last < 0 else bpb.cluster_offset(last + 1)


def _dir_label(entries: bytes) -> tuple[bool, str | None]:
    """(seen the end of the directory, label) from raw 32-byte directory entries."""
    for off in range(0, len(entries) - 31, 32):
        entry = entries[off : off + 32]
        if entry[0] == 0:
            return True, None
        if entry[0] == 0xE5 or entry[11] & 0x0F == 0x0F:  # deleted, or a long-name slot
            continue
        if entry[11] & 0x08:
            return True, _label(entry[:11])
    return False, None


def root_label(bpb: Bpb, root_dir: bytes) -> str | None:
    """The volume label entry in the root directory (what blkid and mlabel prefer)."""
    return _dir_label(root_dir)[1]


# --- the thin I/O part ---------------------------------------------------------------------


def read_bpb(vol: Volume) -> Bpb:
    boot = vol.pread(512, 0)
    bpb = parse_bpb(boot)
    if bpb.total_sectors * bpb.bytes_per_sector > vol.size:
        raise FilesystemError(
            f"FAT filesystem ({bpb.total_sectors * bpb.bytes_per_sector} bytes) "
            f"is larger than its partition ({vol.size} bytes)"
        )
    return bpb


def read_fats(vol: Volume, bpb: Bpb) -> list[bytes]:
    fats = [
        vol.pread(bpb.fat_bytes, (bpb.first_fat_sector + i * bpb.fat_sectors) * bpb.bytes_per_sector)
        for i in range(bpb.num_fats)
    ]
    if any(len(f) < bpb.fat_bytes for f in fats):
        raise FilesystemError("FAT table is truncated")
    return fats


def read_label(vol: Volume, bpb: Bpb, fat: bytes) -> str | None:
    """The root directory's label entry, else the boot sector's. FAT32's root directory is a
    cluster chain; we follow it (bounded, in case the chain loops)."""
    if bpb.fat_bits != 32:
        found = root_label(
            bpb, vol.pread(bpb.root_dir_sectors * bpb.bytes_per_sector, bpb.root_dir_sector * bpb.bytes_per_sector)
        )
        return found or bpb.bpb_label
    cluster, seen = bpb.root_cluster, 0
    while 2 <= cluster < bpb.cluster_count + 2 and seen < 4096:
        end, found = _dir_label(vol.pread(bpb.cluster_bytes, bpb.cluster_offset(cluster)))
        if end:
            return found or bpb.bpb_label
        cluster = struct.unpack_from("<I", fat, cluster * 4)[0] & 0x0FFFFFFF
        seen += 1
    return bpb.bpb_label


class Fat(Filesystem):
    """FAT12/16/32, whatever a tool calls it: blkid says vfat (msdos for some old volumes),
    parted and lsblk fat16/fat32."""

    names = ("vfat", "msdos", "fat", "fat12", "fat16", "fat32")
    can_grow = True  # left as it is in the larger partition (see _resize)
    grow_fills = False
    can_shrink = True
    shrink_moves_data = False  # cut short only where no used cluster lies past the new end
    resize_floor = 0
    mount_type = "vfat"  # never msdos: long names
    mount_ro = "ro"
    mount_rw = "rw"
    image_store = "noatime,flush"  # flush: written back as each file closes, for a stick pulled out early
    owners = False
    no_files = None
    mtools = True
    linux_config = False
    can_renumber = True
    can_name_files = False  # no per-block owner index short of walking every chain

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        bpb = read_bpb(vol)
        fats = read_fats(vol, bpb)
        flags = used_flags_all(bpb, fats)
        info = FsInfo(
            type=self.type,
            uuid=bpb.uuid,
            label=read_label(vol, bpb, fats[bpb.active_fat or 0]),
            used_bytes=bpb.data_offset + flags.count(1) * bpb.cluster_bytes,
            min_size=min_size(bpb, flags),
            map_source=f"FAT{bpb.fat_bits} table",
        )
        return Examined(info, extents_from(bpb, flags))

    def used_extents(self, vol: Volume) -> list[Extent]:
        bpb = read_bpb(vol)
        return extents_from(bpb, used_flags_all(bpb, read_fats(vol, bpb)))

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """fatresize (libparted's FAT code) was tried and is not fit for this: on a device
        without a partition table it aborts (libparted assertion); given a partition table it
        refuses 512-byte and 2 KiB clusters ("cannot resize this partition to this size"),
        silently converts FAT16 to FAT32 (breaking boot code), and once made a filesystem
        larger than the size it was asked for, ending past its partition.

        So, without moving any data:
        - grow: the filesystem is left as it is. It stays valid in a larger partition (the
          boot sector says how big it is); making it larger needs a larger FAT, which moves
          the data area and every cluster.
        - shrink: allowed when every used cluster already lies below the new end and the
          cluster count stays within its FAT type (Windows decides FAT12/16/32 by the count
          alone). The boot sector, its FAT32 backup and the FSInfo free count are rewritten;
          the FAT keeps its size (larger than needed is valid) and its unused tail."""
        vol = Volume(device, 0, device_size(device))
        bpb = read_bpb(vol)
        bps = bpb.bytes_per_sector
        old = bpb.total_sectors * bps
        new_sectors = new_size // bps
        if new_sectors >= bpb.total_sectors:
            return (
                f"{self.type} on {device} left at {mib(old)} in {mib(new_size)}: growing FAT needs a larger "
                f"table and moving every cluster; the filesystem is valid as it is"
            )
        flags = used_flags_all(bpb, read_fats(vol, bpb))
        used_end = end_of_used(bpb, flags)
        new_clusters = (new_sectors - bpb.first_data_sector) // bpb.sectors_per_cluster
        floor = FLOOR[bpb.fat_bits]
        if used_end > new_size:
            raise FilesystemError(
                f"cannot shrink FAT{bpb.fat_bits} on {device} to {mib(new_size)} ({new_size} "
                f"bytes): data lies up to {mib(used_end)} ({used_end} bytes) and FAT is not "
                f"shrunk by moving data"
            )
        if new_clusters < floor:
            least = bpb.data_offset + floor * bpb.cluster_bytes
            raise FilesystemError(
                f"cannot shrink FAT{bpb.fat_bits} on {device} to {mib(new_size)} ({new_size} "
                f"bytes): FAT{bpb.fat_bits} needs at least {floor} clusters, {mib(least)} "
                f"({least} bytes)"
            )
        new_sectors = bpb.first_data_sector + new_clusters * bpb.sectors_per_cluster  # no partial cluster
        free = new_clusters - flags.count(1)
        fd = os.open(device, os.O_RDWR)
        try:
            boot = bytearray(os.pread(fd, bps, 0))
            _set_total(boot, new_sectors, bpb.fat_bits)
            os.pwrite(fd, bytes(boot), 0)
            if bpb.fat_bits == 32:
                fsinfo, backup = struct.unpack_from("<HH", boot, 48)
                for sector in (fsinfo, backup + 1 if backup not in (0, 0xFFFF) else 0):
                    if 0 < sector < bpb.reserved_sectors:
                        _update_fsinfo(fd, sector * bps, free, new_clusters)
                if backup not in (0, 0xFFFF) and backup < bpb.reserved_sectors:
                    copy = bytearray(os.pread(fd, bps, backup * bps))
                    if copy[510:512] == b"\x55\xaa":
                        _set_total(copy, new_sectors, 32)
                        os.pwrite(fd, bytes(copy), backup * bps)
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._done(device, old, new_sectors * bps, "boot sector rewritten, no data moved")

    def new_uuid(self, device: str) -> str:
        """No tool here rewrites a FAT volume id (mlabel -N would, but also touches the
        label), so the 4 bytes are written in the boot sector, and in FAT32's backup boot
        sector."""
        bpb = read_bpb(Volume(device, 0, device_size(device)))
        if bpb.volume_id is None:
            raise FilesystemError(f"FAT on {device}: no extended boot signature, so no volume id to change")
        at = 0x43 if bpb.fat_bits == 32 else 0x27
        new_id = secrets.randbits(32)
        bps = bpb.bytes_per_sector
        fd = os.open(device, os.O_RDWR)
        try:
            sectors = [0]
            if bpb.fat_bits == 32:
                backup = int.from_bytes(os.pread(fd, bps, 0)[0x32:0x34], "little")
                if 0 < backup < bpb.reserved_sectors:
                    sectors.append(backup)
            for s in sectors:
                sector = bytearray(os.pread(fd, bps, s * bps))
                if s and sector[510:512] != b"\x55\xaa":
                    continue  # no valid backup there: leave whatever it is
                sector[at : at + 4] = new_id.to_bytes(4, "little")
                os.pwrite(fd, bytes(sector), s * bps)
            os.fsync(fd)
        finally:
            os.close(fd)
        return volume_id_text(new_id)


def _set_total(boot: bytearray, sectors: int, fat_bits: int) -> None:
    """Both total-sector fields: the 16-bit one when it fits (FAT12/16), else the 32-bit one."""
    if fat_bits != 32 and sectors < 0x10000:
        struct.pack_into("<H", boot, 19, sectors)
        struct.pack_into("<I", boot, 32, 0)
    else:
        struct.pack_into("<H", boot, 19, 0)
        struct.pack_into("<I", boot, 32, sectors)


def _update_fsinfo(fd: int, offset: int, free: int, clusters: int) -> None:
    """FSInfo's free count and next-free hint are only hints, but Windows trusts them: a
    free count past the new end would promise space that does not exist."""
    info = bytearray(os.pread(fd, 512, offset))
    if info[0:4] != b"RRaA" or info[484:488] != b"rrAa":
        return
    hint = struct.unpack_from("<I", info, 492)[0]
    if hint != 0xFFFFFFFF and hint >= clusters + 2:
        hint = 0xFFFFFFFF
    struct.pack_into("<II", info, 488, free, hint)
    os.pwrite(fd, bytes(info), offset)

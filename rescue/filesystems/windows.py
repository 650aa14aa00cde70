"""What a volume tells about the Windows on a drive, read with the field's own tools: the Boot
Configuration Data store (a registry hive, read and written only with hivex, Debian's
python3-hivex), a hibernated or Fast Startup NTFS (ntfs-3g's own check), a BitLocker volume
(its boot sector signature), and the hidden-sectors field that NTFS and FAT boot sectors keep.

Files are reached without mounting: NTFS through ntfscat/ntfscp (ntfs-3g's tools), FAT through
mtools (no vfat driver on the development machines). What the BCD's bytes mean is
rescue/model/windows.py (pure)."""

from __future__ import annotations

import contextlib
import importlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from rescue.errors import FilesystemError
from rescue.filesystems import lookup
from rescue.filesystems.base import FsInfo, Volume
from rescue.filesystems.fat import mtools_env
from rescue.filesystems.ntfs import hibernation
from rescue.hw.run import run
from rescue.model import windows as win

BITLOCKER_SIGNATURE = b"-FVE-FS-"  # the OEM id at byte 3 of a BitLocker volume's boot sector
HIDDEN_SECTORS = 0x1C  # u32 LE in the BPB of NTFS and FAT (DOS 3.31 BPB and later)
FAT_GEOMETRY = 0x18  # u16 sectors per track, u16 heads


def is_bitlocker(vol: Volume) -> bool:
    return vol.pread(11, 0)[3:11] == BITLOCKER_SIGNATURE


def bitlocker_info() -> FsInfo:
    return FsInfo(type="BitLocker", map_source=None)


# --- the BCD file on a volume -------------------------------------------------------------------


def _is_fat(fstype: str | None) -> bool:
    fs = lookup(fstype)
    return fs is not None and fs.mtools


def records_start(fstype: str | None) -> bool:
    """Whether the filesystem's boot sector keeps the partition's start (hidden sectors):
    NTFS and FAT (the BPB of DOS 3.31 and later)."""
    return fstype == "ntfs" or _is_fat(fstype)


def may_hold_bcd(fstype: str) -> bool:
    """Windows keeps its BCD on NTFS (BIOS) or FAT (the ESP; rarely a FAT active partition)."""
    return fstype == "ntfs" or _is_fat(fstype)


@contextlib.contextmanager
def bcd_file(dev: str, fstype: str) -> Iterator[tuple[str, Path] | None]:
    """The volume's BCD copied to a temporary file: (its path on the volume, the copy), or
    None when the volume holds none. NTFS names are matched as Windows writes them."""
    with tempfile.TemporaryDirectory(prefix="rescue-bcd-") as tmp:
        local = Path(tmp) / "BCD"
        for path in win.BCD_PATHS:
            if _is_fat(fstype):
                proc = run(["mcopy", "-n", "-i", dev, f"::/{path}", str(local)], check=False, env=mtools_env())
            elif fstype == "ntfs":
                proc = run(["ntfscat", "--force", dev, f"/{path}"], check=False)
                if proc.returncode == 0:
                    local.write_bytes(proc.stdout)
            else:
                break
            if proc.returncode == 0 and local.exists() and local.stat().st_size:
                yield path, local
                return
        yield None


def put_bcd(dev: str, fstype: str, path: str, local: Path) -> None:
    """Write the changed hive back where it came from, in place (same length: hivex keeps the
    file's size unless the hive grows)."""
    if _is_fat(fstype):
        run(["mcopy", "-o", "-i", dev, str(local), f"::/{path}"], env=mtools_env(), error=FilesystemError)
    else:
        run(["ntfscp", dev, str(local), f"/{path}"], error=FilesystemError)


class _Hive(Protocol):
    """The part of python3-hivex's Hivex class used here (hivex has no type information)."""

    def root(self) -> int: ...
    def node_get_child(self, node: int, name: str) -> int: ...
    def node_children(self, node: int) -> list[int]: ...
    def node_name(self, node: int) -> str: ...
    def node_get_value(self, node: int, key: str) -> int: ...
    def value_value(self, value: int) -> tuple[int, bytes]: ...
    def value_dword(self, value: int) -> int: ...
    def value_string(self, value: int) -> str: ...
    def node_set_value(self, node: int, value: dict[str, object]) -> None: ...
    def commit(self, path: str | None) -> None: ...


def _hive(path: Path, write: bool = False) -> _Hive:
    try:
        hivex = importlib.import_module("hivex")  # python3-hivex: the field's registry library
    except ImportError:
        raise FilesystemError("cannot read the Windows BCD: python3-hivex is not installed") from None
    try:
        h: _Hive = hivex.Hivex(str(path), write=write)
    except RuntimeError as e:
        raise FilesystemError(f"the BCD is not a registry hive hivex can open: {e}") from None
    return h


def _elements(h: _Hive) -> Iterator[tuple[str, int, str, int, str]]:
    """(object GUID, object type, element type, Element value handle, description) of every
    device element in the hive."""
    objects = h.node_get_child(h.root(), "Objects")
    if not objects:
        return
    for obj in h.node_children(objects):
        guid = h.node_name(obj)
        otype, desc = 0, ""
        d = h.node_get_child(obj, "Description")
        if d and (t := h.node_get_value(d, "Type")):
            otype = h.value_dword(t)
        elements = h.node_get_child(obj, "Elements")
        if not elements:
            continue
        names = {h.node_name(e): e for e in h.node_children(elements)}
        if (text := names.get("12000004")) and (v := h.node_get_value(text, "Element")):
            with contextlib.suppress(RuntimeError, UnicodeDecodeError):
                text_value = h.value_string(v)
                desc = text_value if text_value.isprintable() and len(text_value) <= 200 else ""
        for name, node in sorted(names.items()):
            if win.is_device_element(name) and (v := h.node_get_value(node, "Element")):
                yield guid.lower(), otype, name.lower(), node, desc


def read_refs(hive: Path) -> list[win.BcdRef]:
    """Every device element of the BCD that names a partition."""
    h = _hive(hive)
    out: list[win.BcdRef] = []
    for guid, otype, element, node, desc in _elements(h):
        dev = win.parse_device(h.value_value(h.node_get_value(node, "Element"))[1])
        if dev is None:
            continue
        ref = win.BcdRef(object=guid, type=otype, element=element, style=dev.style, disk=dev.disk)
        if dev.offset is not None:
            ref["offset"] = dev.offset
        if dev.partition is not None:
            ref["partition"] = dev.partition
        if desc:
            ref["description"] = desc
        out.append(ref)
    return out


def rewrite_refs(hive: Path, fix: Callable[[win.Device], win.Device | None]) -> list[str]:
    """Replace each partition device element by fix(device) when it returns another one;
    hivex commits the hive in place. Returns one line per element changed."""
    h = _hive(hive, write=True)
    done = []
    for guid, _otype, element, node, _desc in list(_elements(h)):
        raw = h.value_value(h.node_get_value(node, "Element"))[1]
        dev = win.parse_device(raw)
        new = fix(dev) if dev is not None else None
        if dev is None or new is None or new == dev:
            continue
        h.node_set_value(node, {"key": "Element", "t": 3, "value": win.patch_device(raw, new)})
        was = dev.offset if dev.style == "mbr" else dev.partition
        now = new.offset if new.style == "mbr" else new.partition
        done.append(f"{guid} {element}: {dev.style} disk {dev.disk} {was} -> disk {new.disk} {now}")
    if done:
        h.commit(None)
    return done


def examine(vol: Volume, info: FsInfo | None) -> dict[str, object]:
    """Facts a capture records beside the filesystem's own: the BCD references of a volume
    that holds one ("bcd"), and why an NTFS volume must not be resized ("hibernated")."""
    if info is None:
        return {}
    out: dict[str, object] = {}
    if may_hold_bcd(info.type):
        with vol.device() as dev:
            if info.type == "ntfs":
                state = hibernation(dev)
                if state:
                    out["hibernated"] = state
            with bcd_file(dev, info.type) as found:
                if found is not None:
                    out["bcd"] = read_refs(found[1])
    return out


# --- boot sectors --------------------------------------------------------------------------------


def boot_sector_kind(sector: bytes) -> str | None:
    """Which boot sector this is ("NTFS", "FAT") when it has a hidden-sectors field, else None."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return None
    if sector[3:11] == b"NTFS    ":
        return "NTFS"
    if sector[0x36:0x3B] == b"FAT12" or sector[0x36:0x3B] == b"FAT16" or sector[0x52:0x57] == b"FAT32":
        return "FAT"
    return None


def set_hidden_sectors(path: str, offset: int, size: int, start_sector: int) -> str:
    """Write the partition's start (in sectors of 512 or the drive's size, as the partition
    table counts them) into the hidden-sectors field of the boot sector at `offset` on
    `path`, and of its backup: NTFS keeps one in the sector after the filesystem, FAT32 at
    the sector its BPB names (0x32). FAT's geometry fields are set when they are zero (some
    formatters leave them so; BIOS boot code divides by them). Returns what it did."""
    fd = os.open(path, os.O_RDWR)
    try:
        first = os.pread(fd, 512, offset)
        kind = boot_sector_kind(first)
        if kind is None:
            return "no NTFS or FAT boot sector; left as is"
        (bps,) = struct.unpack_from("<H", first, 0x0B)
        if bps not in (512, 1024, 2048, 4096):  # a damaged BPB: its offsets mean nothing
            return f"{kind} boot sector with {bps} bytes per sector; left as is"
        (old,) = struct.unpack_from("<I", first, HIDDEN_SECTORS)
        copies = [0]
        if kind == "NTFS":
            (total,) = struct.unpack_from("<Q", first, 0x28)
            copies += [total * bps, size // bps * bps - bps]
        elif first[0x52:0x57] == b"FAT32":
            (backup,) = struct.unpack_from("<H", first, 0x32)
            if 0 < backup < 0xFFFF:
                copies.append(backup * bps)
        patched = 0
        for at in sorted(set(copies)):
            if at < 0 or at + bps > size:  # never past the partition's end
                continue
            sector = bytearray(os.pread(fd, bps, offset + at))
            if boot_sector_kind(bytes(sector)) != kind:
                continue  # no valid copy there
            struct.pack_into("<I", sector, HIDDEN_SECTORS, start_sector)
            if kind == "FAT":
                spt, heads = struct.unpack_from("<HH", sector, FAT_GEOMETRY)
                if not spt or not heads:
                    struct.pack_into("<HH", sector, FAT_GEOMETRY, spt or 63, heads or 255)
            os.pwrite(fd, bytes(sector), offset + at)
            patched += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    copies_word = "boot sector" if patched == 1 else f"boot sector and its {patched - 1} backup"
    return f"{kind} {copies_word}: hidden sectors {old} -> {start_sector}"


def hidden_sectors(path: str, offset: int) -> int | None:
    """The hidden-sectors field of the boot sector at `offset`, None without one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        sector = os.pread(fd, 512, offset)
    finally:
        os.close(fd)
    return struct.unpack_from("<I", sector, HIDDEN_SECTORS)[0] if boot_sector_kind(sector) else None

"""An LVM2 physical volume read from its own bytes: the label, the metadata area and the
volume group metadata text in it (lvm2's lib/format_text/layout.h and doc/ describe the
format). Nothing is activated and no lvm2 tool runs: discovery works on a drive, a loop
device or an image file alike, also where the kernel has no device-mapper, and cannot write.

The label is in one of the first four 512-byte sectors: "LABELONE", the sector number, a
CRC, the offset of the pv_header, "LVM2 001". The pv_header holds the PV UUID, the device
size and two zero-terminated lists of (offset, size): data areas (the first offset is
pe_start) and metadata areas. A metadata area starts with an mda_header (checksum, magic,
version, start, size, raw_locn list); the first raw_locn points at the current metadata
text, a circular buffer after the 512-byte header."""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable

from rescue.errors import FilesystemError
from rescue.hw.run import run
from rescue.model.stack import (
    SECTOR,
    DiskArea,
    LogicalVolume,
    PhysicalVolume,
    PhysicalVolumeRef,
    PvLabel,
    PvRun,
    Segment,
    VolumeGroup,
)

LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
MDA_MAGIC = b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e"  # " LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
RAW_LOCN_IGNORED = 1
MAX_METADATA = 64 << 20  # refuse a claimed text larger than this (a damaged header)
INITIAL_CRC = 0xF597A6CF  # lib/format_text/layout.h

Pread = Callable[[int, int], bytes]  # (length, offset) -> bytes, like Volume.pread

Value = int | str | list["Value"] | dict[str, "Value"]
Section = dict[str, Value]


def crc(data: bytes, start: int = INITIAL_CRC) -> int:
    """lvm2's calc_crc: CRC-32 (zlib's polynomial) from `start`, without the final inversion
    zlib applies (hence the two XORs)."""
    return zlib.crc32(data, start ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def format_uuid(raw: str) -> str:
    """lvm2's 32-character id as its tools print it: 6-4-4-4-4-4-6."""
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out: list[str] = []
    at = 0
    for n in cuts:
        out.append(raw[at : at + n])
        at += n
    return "-".join(out)


def _areas(data: bytes, at: int) -> tuple[tuple[DiskArea, ...], int]:
    out: list[DiskArea] = []
    while at + 16 <= len(data):
        offset, size = struct.unpack_from("<QQ", data, at)
        at += 16
        if offset == 0:
            return tuple(out), at
        out.append(DiskArea(offset, size))
    raise FilesystemError("LVM2 label: the pv_header's area list has no end")


def parse_label(head: bytes) -> PvLabel | None:
    """The PV label from the first 2 KiB (four sectors) of a volume, None when none is there."""
    for sector in range(4):
        at = sector * SECTOR
        block = head[at : at + SECTOR]
        if len(block) < SECTOR or block[:8] != LABEL_ID or block[24:32] != LABEL_TYPE:
            continue
        sector_xl, crc_xl, offset_xl = struct.unpack_from("<QII", block, 8)
        if sector_xl != sector or not 32 <= offset_xl < SECTOR - 40 or crc(block[20:]) != crc_xl:
            raise FilesystemError(f"LVM2 label in sector {sector} is damaged")
        pvh = block[offset_xl:]
        uuid = pvh[:32].decode("ascii", errors="replace")
        (device_size,) = struct.unpack_from("<Q", pvh, 32)
        data_areas, at2 = _areas(pvh, 40)
        metadata_areas, _ = _areas(pvh, at2)
        return PvLabel(format_uuid(uuid), device_size, sector, data_areas, metadata_areas)
    return None


def metadata_text(pread: Pread, mda: DiskArea) -> str | None:
    """The current metadata text of one metadata area (None when the area is marked ignored
    or holds none yet)."""
    header = pread(MDA_HEADER_SIZE, mda.offset)
    if len(header) < MDA_HEADER_SIZE or header[4:20] != MDA_MAGIC:
        raise FilesystemError(f"LVM2 metadata area at {mda.offset}: no mda_header magic")
    if crc(header[4:]) != struct.unpack_from("<I", header, 0)[0]:
        raise FilesystemError(f"LVM2 metadata area at {mda.offset}: the mda_header checksum is wrong")
    _version, start, size = struct.unpack_from("<IQQ", header, 20)
    offset, length, checksum, flags = struct.unpack_from("<QQII", header, 40)
    if offset == 0 or length == 0 or flags & RAW_LOCN_IGNORED:
        return None
    if length > min(MAX_METADATA, size) or start != mda.offset or not MDA_HEADER_SIZE <= offset < size:
        raise FilesystemError(f"LVM2 metadata area at {mda.offset}: the metadata location is damaged")
    first = min(length, size - offset)
    raw = pread(first, start + offset)
    if first < length:  # the circular buffer wraps to just after the header
        raw += pread(length - first, start + MDA_HEADER_SIZE)
    if crc(raw) != checksum:
        raise FilesystemError(f"LVM2 metadata area at {mda.offset}: the metadata text's checksum is wrong")
    return raw.rstrip(b"\x00").decode("utf-8", errors="replace")


_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?![\w.+-]))|(?P<word>[A-Za-z0-9_.+-]+)|(?P<punct>[={}\[\],]))'
)


def parse_text(text: str) -> Section:
    """lvm2's text format (a config tree: `key = value`, `name { ... }`, values are integers,
    "strings" and [lists]) into nested dicts. FilesystemError for anything else."""
    tokens: list[tuple[str, str]] = []
    at = 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None:
            if text[at:].strip() == "":
                break
            raise FilesystemError(f"LVM2 metadata: cannot read text at {text[at : at + 20]!r}")
        at = m.end()
        kind = m.lastgroup or ""
        if kind != "comment":
            tokens.append((kind, m.group(kind)))
    pos = 0

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(tokens):
            raise FilesystemError("LVM2 metadata: the text ends too early")
        pos += 1
        return tokens[pos - 1]

    def value() -> Value:
        kind, tok = take()
        if kind == "num":
            return int(tok)
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", tok[1:-1])
        if kind == "word":  # an unquoted value (a float in a config file, say): kept as text
            return tok
        if tok == "[":
            items: list[Value] = []
            while True:
                if tokens[pos][1] == "]":
                    take()
                    return items
                items.append(value())
                if tokens[pos][1] == ",":
                    take()
        raise FilesystemError(f"LVM2 metadata: unexpected {tok!r}")

    def section(closing: bool) -> Section:
        out: Section = {}
        while pos < len(tokens):
            kind, tok = take()
            if tok == "}" and closing:
                return out
            if kind != "word":
                raise FilesystemError(f"LVM2 metadata: unexpected {tok!r}")
            _, op = take()
            if op == "{":
                out[tok] = section(True)
            elif op == "=":
                out[tok] = value()
            else:
                raise FilesystemError(f"LVM2 metadata: unexpected {op!r} after {tok}")
        if closing:
            raise FilesystemError("LVM2 metadata: a section has no end")
        return out

    try:
        return section(False)
    except IndexError:
        raise FilesystemError("LVM2 metadata: the text ends too early") from None


def _sec(v: Value | None, what: str) -> Section:
    if not isinstance(v, dict):
        raise FilesystemError(f"LVM2 metadata: {what} is missing or not a section")
    return v


def _int(s: Section, key: str, what: str) -> int:
    v = s.get(key)
    if not isinstance(v, int):
        raise FilesystemError(f"LVM2 metadata: {what}.{key} is missing or not a number")
    return v


def _str(s: Section, key: str, what: str) -> str:
    v = s.get(key)
    if not isinstance(v, str):
        raise FilesystemError(f"LVM2 metadata: {what}.{key} is missing or not a string")
    return v


def _segment(s: Section, what: str, pvs: set[str]) -> Segment:
    """A segment and the PV extents it takes. Only "striped" segments (linear: one stripe)
    name PVs; a segment of another kind that names one is a layout this reader does not know,
    refused rather than guessed (the partition is then imaged whole)."""
    start, count = _int(s, "start_extent", what), _int(s, "extent_count", what)
    kind = _str(s, "type", what)
    if kind != "striped":
        named = [v for key, value in s.items() if isinstance(value, list) for v in value if v in pvs]
        if named:
            raise FilesystemError(f"LVM2 metadata: {what}: a {kind} segment on PVs is not understood")
        return Segment(start, count, kind)
    stripes = s.get("stripes")
    n = _int(s, "stripe_count", what)
    if not isinstance(stripes, list) or n < 1 or len(stripes) != 2 * n or count % n:
        raise FilesystemError(f"LVM2 metadata: {what}.stripes does not match stripe_count")
    runs = []
    for pv, first in zip(stripes[::2], stripes[1::2], strict=True):
        if not isinstance(pv, str) or pv not in pvs or not isinstance(first, int):
            raise FilesystemError(f"LVM2 metadata: {what}.stripes names no known PV")
        runs.append(PvRun(pv, first, count // n))
    return Segment(start, count, "linear" if n == 1 else "striped", tuple(runs))


def volume_group(tree: Section) -> VolumeGroup:
    """The VG from a parsed metadata text (the one section at the top level)."""
    names = [k for k, v in tree.items() if isinstance(v, dict)]
    if len(names) != 1:
        raise FilesystemError(f"LVM2 metadata: expected one volume group, found {len(names)}")
    name = names[0]
    vg = _sec(tree[name], name)
    sectors = _int(vg, "extent_size", name)
    pvs = []
    for key, pv in _sec(vg.get("physical_volumes", {}), "physical_volumes").items():
        p = _sec(pv, key)
        hint = p.get("device")
        pvs.append(
            PhysicalVolumeRef(
                key,
                _str(p, "id", key),
                _int(p, "pe_start", key) * SECTOR,
                _int(p, "pe_count", key),
                hint if isinstance(hint, str) else None,
            )
        )
    lvs = []
    for lv_name, lv in _sec(vg.get("logical_volumes", {}), "logical_volumes").items():
        v = _sec(lv, lv_name)
        status = v.get("status")
        keys = {p.key for p in pvs}
        segs = [
            _segment(s, f"{lv_name}.{k}", keys) for k, s in v.items() if isinstance(s, dict) and k.startswith("segment")
        ]
        segs.sort(key=lambda seg: seg.start_extent)
        lvs.append(
            LogicalVolume(
                lv_name,
                _str(v, "id", lv_name),
                tuple(segs),
                visible=isinstance(status, list) and "VISIBLE" in status,
            )
        )
    return VolumeGroup(name, _str(vg, "id", name), _int(vg, "seqno", name), sectors * SECTOR, tuple(pvs), tuple(lvs))


def read_text(pread: Pread) -> tuple[PvLabel, str | None] | None:
    """The PV label and the current metadata text of the first metadata area that holds one
    (each copy holds the whole VG); None when the volume carries no LVM2 label."""
    label = parse_label(pread(4 * SECTOR, 0))
    if label is None:
        return None
    for mda in label.metadata_areas:
        text = metadata_text(pread, mda)
        if text is not None:
            return label, text
    return label, None


def read_pv(pread: Pread) -> PhysicalVolume | None:
    """The PV on a volume read through `pread`, None when it carries no LVM2 label."""
    found = read_text(pread)
    if found is None:
        return None
    label, text = found
    return PhysicalVolume(label, volume_group(parse_text(text)) if text is not None else None)


def format_text(tree: Section, indent: str = "") -> str:
    """parse_text's inverse: the tree in lvm2's text format, as vgcfgrestore reads a backup
    file (sections in braces, strings quoted with " and \\ escaped, lists in brackets). An
    unquoted word parse_text kept as text comes back quoted: VG metadata holds none."""

    def value(v: Value) -> str:
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise FilesystemError("LVM2 metadata: a section cannot be a list item")

    out: list[str] = []
    for key, v in tree.items():
        if isinstance(v, dict):
            inner = format_text(v, indent + "\t")
            out.append(f"{indent}{key} {{\n{inner}{indent}}}\n")
        else:
            out.append(f"{indent}{key} = {value(v)}\n")
    return "".join(out)


def relocate(tree: Section, pv_key: str, moves: dict[int, int], grow: tuple[str, int] | None) -> Section:
    """A copy of a parsed metadata text (top level: the one VG section and its header keys)
    with every PV run of `pv_key` that starts at a key of `moves` starting at its value
    instead, and the LV grow[0] (one segment) given grow[1] extents. The seqno goes up by
    one, as for any change lvm2 makes."""
    import copy

    out = copy.deepcopy(tree)
    names = [k for k, v in out.items() if isinstance(v, dict)]
    if len(names) != 1:
        raise FilesystemError(f"LVM2 metadata: expected one volume group, found {len(names)}")
    vg = _sec(out[names[0]], names[0])
    vg["seqno"] = _int(vg, "seqno", names[0]) + 1
    for lv_name, lv in _sec(vg.get("logical_volumes", {}), "logical_volumes").items():
        v = _sec(lv, lv_name)
        segs = [s for k, s in v.items() if isinstance(s, dict) and k.startswith("segment")]
        for seg in segs:
            stripes = seg.get("stripes")
            if isinstance(stripes, list):
                for i in range(0, len(stripes) - 1, 2):
                    first = stripes[i + 1]
                    if stripes[i] == pv_key and isinstance(first, int) and first in moves:
                        stripes[i + 1] = moves[first]
        if grow is not None and lv_name == grow[0]:
            if len(segs) != 1:
                raise FilesystemError(f"LVM2 metadata: LV {lv_name} is not one segment")
            segs[0]["extent_count"] = grow[1]
    return out


def scoped_config(device: str) -> str:
    """lvm2 --config for a command that sees `device` alone (never the machine's other
    drives, which may hold the same PV UUIDs: the source of a restore), activates nothing
    and leaves no backup or archive of the metadata in /etc/lvm."""
    if not re.fullmatch(r"/dev/[A-Za-z0-9_./-]+", device):
        raise FilesystemError(f"refusing to run lvm2 on {device!r}: not a device path")
    return (
        f'devices {{ filter = [ "a|^{device}$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 }} '
        "global { activation = 0 } backup { backup = 0 archive = 0 }"
    )


def lvm_run(device: str, argv: list[str]) -> None:
    """An lvm2 command (argv[0] a tool: pvresize, vgcfgrestore) scoped to `device`."""
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    run([argv[0], "--config", scoped_config(device), *argv[1:]], timeout=None, env=env)

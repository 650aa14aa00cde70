"""manifest.json: what an image is. Written last and atomically; it carries a checksum of its
own canonical JSON so a truncated or hand-edited manifest is detected, not trusted.

A manifest is also validated completely before anything uses it (`validate`): a checksum only
says the file is what some writer wrote, not that the writer was rescue, or sane. Every field
has its type and range checked, the partition table must be one a drive can hold, every
partition has its area and every area its partition, and names, GUIDs and labels have the
shapes they must have, so that nothing in a manifest can reach a command line, a path or a
terminal as anything but the plain value it claims to be. Each refusal is an IntegrityError
naming the image and the field."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TypedDict

from rescue.errors import IntegrityError
from rescue.model import gaps
from rescue.model.layout import DiskLayout, Partition
from rescue.model.windows import BcdRef

FORMAT = "rescue-image"
VERSION = 1

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # image names (also directory names)
GUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
MBR_ID_RE = re.compile(r"^0x[0-9A-Fa-f]{1,8}$")
AREA_RE = re.compile(r"^(head|disk|p[1-9][0-9]{0,2}|gap-p[1-9][0-9]{0,2})$")
CREATED_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}$")
FSTYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
FSUUID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")  # ext/xfs/btrfs GUIDs, FAT 1234-ABCD, NTFS hex
FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # parted flag names
GPT_ATTR_NAMES = ("RequiredPartition", "NoBlockIOProtocol", "LegacyBIOSBootable")  # as sfdisk spells them
GPT_ATTR_BIT_RE = re.compile(r"^(GUID:)?([0-9]{1,2})$")  # type-specific bits 48-63, as sfdisk takes them
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

MIN_CHUNK, MAX_CHUNK = 64 << 10, 64 << 20  # chunk sizes a reader accepts (rescue writes 1-16 MiB)
MAX_SECTOR = 64 << 10
MAX_DRIVE = 1 << 60  # bytes: an exbibyte; beyond it a size is damage, not a drive
MAX_PARTITIONS = 256
MAX_TEXT = 256
GPT_ENTRIES = 128  # the table rescue writes (parted's), and the partition numbers it allows
GPT_NAME_UNITS = 36  # UTF-16 code units in a GPT partition name
MBR_MAX_SECTORS = 1 << 32
BAD_MAP = "badsectors.map"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"  # an unused GPT entry: writing it deletes the partition
MBR_EXTENDED_TYPES = (0x05, 0x0F, 0x85)  # the ids that make an MBR entry an extended container

# Characters that must never reach a terminal as themselves: controls (escape sequences,
# newlines, carriage returns), format characters (bidirectional overrides that reorder what is
# shown), surrogates (undecodable bytes), line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def unsafe_char(text: str) -> str | None:
    """The first character of `text` that must not reach a terminal, or None."""
    for c in text:
        if unicodedata.category(c) in _UNSAFE_CATEGORIES:
            return c
    return None


def printable(text: str) -> str:
    """`text` with every character that could act on a terminal replaced visibly: `\\x1b`,
    `\\u202e`, an undecodable byte of a file name as `\\xNN`, a backslash as `\\\\`."""
    if unsafe_char(text) is None and "\\" not in text:
        return text
    out = []
    for c in text:
        o = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif unicodedata.category(c) not in _UNSAFE_CATEGORIES:
            out.append(c)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def shown(value: object, limit: int = 40) -> str:
    """A value as a message may quote it: repr, printable, and short."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class FsFacts(TypedDict, total=False):
    """A filesystem's facts as captured (rescue.filesystems.base.FsInfo as a dict)."""

    type: str  # ext4, xfs, btrfs, vfat, ntfs, swap ...
    uuid: str | None
    label: str | None
    used_bytes: int | None
    min_size: int | None  # smallest partition it can be shrunk to, if known
    map_source: str | None  # how the used-block map was obtained
    bcd: list[BcdRef]  # a Windows BCD on this filesystem: its partition references (model/windows.py)
    hibernated: str  # why this NTFS must not be resized (Windows hibernated, Fast Startup)


class AreaStats(TypedDict, total=False):
    """Chunk counts of an area's index by kind (Kind names, lower case), and bytes."""

    data: int
    zero: int
    unused: int
    unreadable: int
    data_bytes: int  # bytes in DATA chunks
    mapped_bytes: int  # bytes the used-block map asked to read
    map: str  # "whole", or where the used-block map came from


class SourceFacts(TypedDict, total=False):
    """The drive an image was captured from."""

    path: str
    model: str
    serial: str
    bus: str
    size: int  # bytes
    logical_sector_size: int
    physical_sector_size: int


class ImageStats(TypedDict, total=False):
    """Totals of a capture."""

    read_bytes: int
    data_bytes: int
    stored_bytes: int  # chunk bytes this image added to the repository
    new_chunks: int
    seconds: float
    sectors_lost: int  # unreadable sectors, zero-filled
    bad_map: str | None  # the ddrescue mapfile beside the manifest, when sectors were lost


@dataclass
class Area:
    name: str  # "p<N>" for partition N; "head", "gap-p<N>" for bytes outside partitions (model/gaps.py)
    offset: int  # byte offset on the source drive
    size: int
    index: str  # index file name inside the image directory
    index_sha256: str
    partition: int | None = None
    fs: FsFacts | None = None  # None when unformatted or unknown
    stats: AreaStats = field(default_factory=lambda: AreaStats())

    @property
    def label(self) -> str:
        return area_label(self.name, (self.fs or {}).get("type"))


def area_label(name: str, fstype: str | None) -> str:
    """How logs and screens name an area: "p2 (ext4)", "disk head", "gap after partition 1"."""
    return gaps.label(name) if gaps.is_gap(name) else f"{name} ({fstype or 'raw'})"


@dataclass
class Manifest:
    name: str
    created: str  # ISO 8601, UTC
    rescue_version: str
    chunk_size: int
    hash: str
    source: SourceFacts
    layout: DiskLayout
    areas: list[Area]
    stats: ImageStats = field(default_factory=lambda: ImageStats())

    def to_json(self) -> str:
        body = {"format": FORMAT, "version": VERSION, **asdict(self)}
        body["checksum"] = _checksum(body)
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """Parse, check the checksum, then validate every field (`validate`)."""
        try:
            body: object = json.loads(text)
        except (ValueError, RecursionError):
            raise IntegrityError(f"{where}: manifest is not valid JSON (truncated or damaged)") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise IntegrityError(f"{where}: not a rescue image manifest")
        if body.get("version") != VERSION:
            raise IntegrityError(f"{where}: unsupported manifest version {shown(body.get('version'))}")
        stored = body.pop("checksum", None)
        try:
            sealed = stored == _checksum(body)
        except (ValueError, RecursionError):
            sealed = False
        if not sealed:
            raise IntegrityError(f"{where}: manifest checksum mismatch (edited or damaged)")
        return validate(body, where)

    def area(self, name: str) -> Area:
        for a in self.areas:
            if a.name == name:
                return a
        raise KeyError(name)


def _checksum(body: Mapping[str, object]) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()


# -- validation ------------------------------------------------------------------------------


class _Bad(Exception):
    """A field that is not what it must be: (field path, what is wrong)."""

    def __init__(self, path: str, problem: str):
        super().__init__(path, problem)
        self.path, self.problem = path, problem


def validate(body: object, where: str) -> Manifest:
    """The Manifest a parsed manifest.json (checksum removed) describes, or IntegrityError
    naming `where` and the first field that is wrong. Nothing else reads a manifest's fields
    before this has run."""
    try:
        manifest = _build(body)
        _check_layout(manifest.layout)
        _check_source(manifest)
        _check_areas(manifest)
    except _Bad as e:
        raise IntegrityError(f"{where}: manifest field {e.path} {e.problem}") from None
    return manifest


def validate_layout(layout: DiskLayout, where: str) -> None:
    """The checks `validate` makes of a partition table, for a table about to be captured:
    a drive whose table no restore could accept is refused before it is read, not after."""
    try:
        _check_layout(_layout(layout.to_dict(), "layout"))
    except _Bad as e:
        raise IntegrityError(f"{where}: {e.path} {e.problem}") from None


def validate_fs(fs: Mapping[str, object] | None, where: str) -> None:
    """The checks `validate` makes of a filesystem's facts, for facts about to be captured."""
    try:
        _fs(fs, "fs")
    except _Bad as e:
        raise IntegrityError(f"{where}: {e.path} {e.problem}") from None


def _obj(v: object, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, object]:
    if not isinstance(v, dict):
        raise _Bad(path, f"is not an object ({shown(v)})")
    out: dict[str, object] = {}
    for key, value in v.items():
        if key not in required and key not in optional:
            raise _Bad(path, f"has an unknown key {shown(key)}")
        out[key] = value
    for key in required:
        if key not in out:
            raise _Bad(f"{path}.{key}", "is missing")
    return out


def _int(v: object, path: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Bad(path, f"is not an integer ({shown(v)})")
    if not lo <= v <= hi:
        raise _Bad(path, f"is out of range ({v} not in {lo}..{hi})")
    return v


def _opt_int(v: object, path: str, lo: int, hi: int) -> int | None:
    return None if v is None else _int(v, path, lo, hi)


def _power_of_two(v: object, path: str, lo: int, hi: int) -> int:
    n = _int(v, path, lo, hi)
    if n & (n - 1):
        raise _Bad(path, f"is not a power of two ({n})")
    return n


def _str(v: object, path: str, pattern: re.Pattern[str] | None = None, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        raise _Bad(path, f"is not a string ({shown(v)})")
    if len(v) > limit:
        raise _Bad(path, f"is longer than {limit} characters")
    bad = unsafe_char(v)
    if bad is not None:
        raise _Bad(path, f"contains a control character ({shown(bad)})")
    if pattern is not None and not pattern.match(v):
        raise _Bad(path, f"is not well-formed ({shown(v)})")
    return v


def _opt_str(v: object, path: str, pattern: re.Pattern[str] | None = None, limit: int = MAX_TEXT) -> str | None:
    return None if v is None else _str(v, path, pattern, limit)


def _bool(v: object, path: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(path, f"is not true or false ({shown(v)})")
    return v


def _list(v: object, path: str, limit: int) -> list[object]:
    if not isinstance(v, list):
        raise _Bad(path, f"is not a list ({shown(v)})")
    if len(v) > limit:
        raise _Bad(path, f"has more than {limit} entries")
    return list(v)


def _build(body: object) -> Manifest:
    top = _obj(
        body,
        "manifest",
        ("format", "version", "name", "created", "rescue_version", "chunk_size", "hash", "source", "layout", "areas"),
        ("stats",),
    )
    layout = _layout(top["layout"], "layout")
    areas = [_area(a, f"areas[{i}]") for i, a in enumerate(_list(top["areas"], "areas", 2 * MAX_PARTITIONS + 2))]
    if _str(top["hash"], "hash") != "sha256":
        raise _Bad("hash", f"names an unsupported hash ({shown(top['hash'])})")
    return Manifest(
        name=_str(top["name"], "name", NAME_RE),
        created=_str(top["created"], "created", CREATED_RE),
        rescue_version=_str(top["rescue_version"], "rescue_version", VERSION_RE),
        chunk_size=_power_of_two(top["chunk_size"], "chunk_size", MIN_CHUNK, MAX_CHUNK),
        hash="sha256",
        source=_source(top["source"], "source"),
        layout=layout,
        areas=areas,
        stats=_image_stats(top.get("stats", {}), "stats"),
    )


def _source(v: object, path: str) -> SourceFacts:
    d = _obj(v, path, (), ("path", "model", "serial", "bus", "size", "logical_sector_size", "physical_sector_size"))
    out = SourceFacts()
    if "path" in d:
        out["path"] = _str(d["path"], f"{path}.path")
    if "model" in d:
        out["model"] = _str(d["model"], f"{path}.model")
    if "serial" in d:
        out["serial"] = _str(d["serial"], f"{path}.serial")
    if "bus" in d:
        out["bus"] = _str(d["bus"], f"{path}.bus")
    if "size" in d:
        out["size"] = _int(d["size"], f"{path}.size", 0, MAX_DRIVE)
    if "logical_sector_size" in d:
        out["logical_sector_size"] = _int(d["logical_sector_size"], f"{path}.logical_sector_size", 0, MAX_SECTOR)
    if "physical_sector_size" in d:
        out["physical_sector_size"] = _int(d["physical_sector_size"], f"{path}.physical_sector_size", 0, MAX_SECTOR)
    return out


def _count(d: Mapping[str, object], key: str, path: str) -> int | None:
    return _int(d[key], f"{path}.{key}", 0, MAX_DRIVE) if key in d else None


def _image_stats(v: object, path: str) -> ImageStats:
    keys = ("read_bytes", "data_bytes", "stored_bytes", "new_chunks", "seconds", "sectors_lost", "bad_map")
    d = _obj(v, path, (), keys)
    out = ImageStats()
    if (n := _count(d, "read_bytes", path)) is not None:
        out["read_bytes"] = n
    if (n := _count(d, "data_bytes", path)) is not None:
        out["data_bytes"] = n
    if (n := _count(d, "stored_bytes", path)) is not None:
        out["stored_bytes"] = n
    if (n := _count(d, "new_chunks", path)) is not None:
        out["new_chunks"] = n
    if (n := _count(d, "sectors_lost", path)) is not None:
        out["sectors_lost"] = n
    if "seconds" in d:
        s = d["seconds"]
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or not 0 <= s < 1e9:
            raise _Bad(f"{path}.seconds", f"is not a duration ({shown(s)})")
        out["seconds"] = float(s)
    if "bad_map" in d:
        bad_map = d["bad_map"]
        if bad_map is not None and bad_map != BAD_MAP:
            raise _Bad(f"{path}.bad_map", f"is not {BAD_MAP!r} or null ({shown(bad_map)})")
        out["bad_map"] = BAD_MAP if bad_map is not None else None
    if out.get("sectors_lost") and out.get("bad_map") is None:
        raise _Bad(f"{path}.bad_map", "is missing for an image with lost sectors")
    return out


def _layout(v: object, path: str) -> DiskLayout:
    d = _obj(v, path, ("table", "sector_size", "size"), ("disk_id", "partitions", "physical_sector_size"))
    table = _str(d["table"], f"{path}.table")
    if table not in ("gpt", "msdos", "none"):
        raise _Bad(f"{path}.table", f"is not gpt, msdos or none ({shown(table)})")
    sector_size = _power_of_two(d["sector_size"], f"{path}.sector_size", 512, MAX_SECTOR)
    size = _int(d["size"], f"{path}.size", 1, MAX_DRIVE)
    layout = DiskLayout(table=table, sector_size=sector_size, size=size)
    disk_id = d.get("disk_id")
    if disk_id is not None:
        if table == "none":
            raise _Bad(f"{path}.disk_id", "is set for a drive without a partition table")
        layout.disk_id = _str(disk_id, f"{path}.disk_id", GUID_RE if table == "gpt" else MBR_ID_RE, 64)
        if layout.disk_id == ZERO_GUID:
            raise _Bad(f"{path}.disk_id", "is the all-zero GUID")
    if "physical_sector_size" in d:
        layout.physical_sector_size = _power_of_two(
            d["physical_sector_size"], f"{path}.physical_sector_size", 512, MAX_SECTOR
        )
    for i, p in enumerate(_list(d.get("partitions", []), f"{path}.partitions", MAX_PARTITIONS)):
        layout.partitions.append(_partition(p, f"{path}.partitions[{i}]"))
    return layout


def _partition(v: object, path: str) -> Partition:
    d = _obj(
        v,
        path,
        ("number", "start", "end"),
        ("type_guid", "mbr_type", "kind", "name", "flags", "uuid", "attrs", "bootable"),
    )
    p = Partition(
        number=_int(d["number"], f"{path}.number", 1, MAX_PARTITIONS),
        start=_int(d["start"], f"{path}.start", 0, MAX_DRIVE),
        end=_int(d["end"], f"{path}.end", 0, MAX_DRIVE),
    )
    p.type_guid = _opt_str(d.get("type_guid"), f"{path}.type_guid", GUID_RE, 36)
    p.mbr_type = _opt_int(d.get("mbr_type"), f"{path}.mbr_type", 0, 255)
    kind = _str(d.get("kind", "primary"), f"{path}.kind")
    if kind not in ("primary", "logical", "extended"):
        raise _Bad(f"{path}.kind", f"is not primary, logical or extended ({shown(kind)})")
    p.kind = kind
    p.name = _str(d.get("name", ""), f"{path}.name", None, GPT_NAME_UNITS)
    if len(p.name.encode("utf-16-le")) > 2 * GPT_NAME_UNITS:
        raise _Bad(f"{path}.name", f"is longer than a GPT name can be ({GPT_NAME_UNITS} UTF-16 units)")
    flags = _list(d.get("flags", []), f"{path}.flags", 32)
    p.flags = [_str(f, f"{path}.flags[{i}]", FLAG_RE, 32) for i, f in enumerate(flags)]
    p.uuid = _opt_str(d.get("uuid"), f"{path}.uuid", GUID_RE, 36)
    p.attrs = _str(d.get("attrs", ""), f"{path}.attrs")
    for word in re.split(r"[ ,]+", p.attrs.strip()):
        bit = GPT_ATTR_BIT_RE.match(word)
        if word and word not in GPT_ATTR_NAMES and not (bit and 48 <= int(bit.group(2)) <= 63):
            raise _Bad(f"{path}.attrs", f"holds {shown(word)}, not a GPT attribute sfdisk sets")
    p.bootable = _bool(d.get("bootable", False), f"{path}.bootable")
    return p


def _fs(v: object, path: str) -> FsFacts | None:
    if v is None:
        return None
    d = _obj(v, path, ("type",), ("uuid", "label", "used_bytes", "min_size", "map_source", "bcd", "hibernated"))
    out = FsFacts(type=_str(d["type"], f"{path}.type", FSTYPE_RE, 64))
    if "uuid" in d:
        out["uuid"] = _opt_str(d["uuid"], f"{path}.uuid", FSUUID_RE, 128)
    if "label" in d:
        out["label"] = _opt_str(d["label"], f"{path}.label")
    if "used_bytes" in d:
        out["used_bytes"] = _opt_int(d["used_bytes"], f"{path}.used_bytes", 0, MAX_DRIVE)
    if "min_size" in d:
        out["min_size"] = _opt_int(d["min_size"], f"{path}.min_size", 0, MAX_DRIVE)
    if "map_source" in d:
        out["map_source"] = _opt_str(d["map_source"], f"{path}.map_source")
    if "bcd" in d:
        out["bcd"] = [_bcd_ref(r, f"{path}.bcd[{i}]") for i, r in enumerate(_list(d["bcd"], f"{path}.bcd", 256))]
    if "hibernated" in d:
        out["hibernated"] = _str(d["hibernated"], f"{path}.hibernated")
    return out


BCD_OBJECT_RE = re.compile(r"^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$")
BCD_ELEMENT_RE = re.compile(r"^[0-9a-f]{8}$")


def _bcd_ref(v: object, path: str) -> BcdRef:
    """One BCD partition reference (Added with issue 24; images without it stay valid)."""
    d = _obj(v, path, ("object", "type", "element", "style", "disk"), ("offset", "partition", "description"))
    style = _str(d["style"], f"{path}.style")
    if style not in ("mbr", "gpt"):
        raise _Bad(f"{path}.style", f"is not mbr or gpt ({shown(style)})")
    ref = BcdRef(
        object=_str(d["object"], f"{path}.object", BCD_OBJECT_RE, 38),
        type=_int(d["type"], f"{path}.type", 0, 0xFFFFFFFF),
        element=_str(d["element"], f"{path}.element", BCD_ELEMENT_RE, 8),
        style=style,
        disk=_str(d["disk"], f"{path}.disk", MBR_ID_RE if style == "mbr" else GUID_RE, 36),
    )
    if style == "mbr":
        ref["offset"] = _int(d.get("offset"), f"{path}.offset", 0, MAX_DRIVE)
    else:
        ref["partition"] = _str(d.get("partition"), f"{path}.partition", GUID_RE, 36)
    if "description" in d:
        ref["description"] = _str(d["description"], f"{path}.description")
    return ref


def _area_stats(v: object, path: str) -> AreaStats:
    d = _obj(v, path, (), ("data", "zero", "unused", "unreadable", "data_bytes", "mapped_bytes", "map"))
    out = AreaStats()
    if (n := _count(d, "data", path)) is not None:
        out["data"] = n
    if (n := _count(d, "zero", path)) is not None:
        out["zero"] = n
    if (n := _count(d, "unused", path)) is not None:
        out["unused"] = n
    if (n := _count(d, "unreadable", path)) is not None:
        out["unreadable"] = n
    if (n := _count(d, "data_bytes", path)) is not None:
        out["data_bytes"] = n
    if (n := _count(d, "mapped_bytes", path)) is not None:
        out["mapped_bytes"] = n
    if "map" in d:
        out["map"] = _str(d["map"], f"{path}.map")
    return out


def _area(v: object, path: str) -> Area:
    d = _obj(v, path, ("name", "offset", "size", "index", "index_sha256"), ("partition", "fs", "stats"))
    name = _str(d["name"], f"{path}.name", AREA_RE, 16)
    index = _str(d["index"], f"{path}.index", None, 32)
    if index != f"{name}.idx":  # the one file name an area's index has: nothing else is opened
        raise _Bad(f"{path}.index", f"is not {name}.idx ({shown(index)})")
    return Area(
        name=name,
        offset=_int(d["offset"], f"{path}.offset", 0, MAX_DRIVE),
        size=_int(d["size"], f"{path}.size", 0, MAX_DRIVE),
        index=index,
        index_sha256=_str(d["index_sha256"], f"{path}.index_sha256", SHA256_RE, 64),
        partition=_opt_int(d.get("partition"), f"{path}.partition", 1, MAX_PARTITIONS),
        fs=_fs(d.get("fs"), f"{path}.fs"),
        stats=_area_stats(d.get("stats", {}), f"{path}.stats"),
    )


def _check_source(m: Manifest) -> None:
    """The source drive's facts agree with its table (capture takes both from the same drive)."""
    if m.source.get("size", m.layout.size) != m.layout.size:
        raise _Bad("source.size", f"is {m.source.get('size')}, the table's drive {m.layout.size} bytes")
    if m.source.get("logical_sector_size", m.layout.sector_size) not in (m.layout.sector_size, 0):
        raise _Bad("source.logical_sector_size", f"is not the table's sector size {m.layout.sector_size}")


def _check_layout(layout: DiskLayout) -> None:
    """A table a drive can hold: partitions inside the drive (and inside the GPT's usable
    sectors), no overlaps, unique numbers; GPT has only primary partitions; MBR has at most
    four primary and extended entries, one extended, its logicals inside it."""
    ss, table = layout.sector_size, layout.table
    sectors = layout.size // ss
    if layout.size % ss:
        raise _Bad("layout.size", f"is not a whole number of {ss}-byte sectors ({layout.size})")
    parts = layout.partitions
    if table == "none":
        if parts:
            raise _Bad("layout.partitions", "lists partitions on a drive without a partition table")
        return
    first, last = 1, sectors - 1  # MBR: sector 0 holds the table
    if table == "gpt":
        entries = -(-GPT_ENTRIES * 128 // ss)
        first, last = 2 + entries, sectors - 2 - entries
    elif last >= MBR_MAX_SECTORS:
        last = MBR_MAX_SECTORS - 1
    seen: set[int] = set()
    for i, p in enumerate(parts):
        path = f"layout.partitions[{i}]"
        if p.number in seen:
            raise _Bad(f"{path}.number", f"repeats partition number {p.number}")
        seen.add(p.number)
        if p.start > p.end:
            raise _Bad(f"{path}.end", f"is before its start ({p.end} < {p.start})")
        if p.start < first or p.end > last:
            raise _Bad(path, f"lies outside the drive's usable sectors {first}..{last} ({p.start}..{p.end})")
        if table == "gpt":
            if p.kind != "primary":
                raise _Bad(f"{path}.kind", f"is {p.kind} on a GPT drive (GPT has only primary partitions)")
            if p.number > GPT_ENTRIES:
                raise _Bad(f"{path}.number", f"is beyond the GPT's {GPT_ENTRIES} entries ({p.number})")
            if ZERO_GUID in ((p.type_guid or "").upper(), (p.uuid or "").upper()):
                raise _Bad(path, "has an all-zero GUID (the mark of an unused entry: writing it deletes the partition)")
            continue
        if p.kind == "logical" and p.number < 5:
            raise _Bad(f"{path}.number", f"is {p.number} for a logical partition (logicals are 5 and up)")
        if p.kind != "logical" and p.number > 4:
            raise _Bad(f"{path}.number", f"is {p.number} for a {p.kind} partition (MBR entries are 1-4)")
        if p.mbr_type is None:
            continue
        if p.kind == "extended" and p.mbr_type not in MBR_EXTENDED_TYPES:
            raise _Bad(f"{path}.mbr_type", f"is 0x{p.mbr_type:02x} for an extended partition (0x05, 0x0f or 0x85)")
        if p.kind != "extended" and (p.mbr_type in MBR_EXTENDED_TYPES or p.mbr_type == 0):
            raise _Bad(f"{path}.mbr_type", f"is 0x{p.mbr_type:02x}, which would make it an empty or extended entry")
    top = sorted((p for p in parts if p.kind != "logical"), key=lambda p: p.start)
    _no_overlap(top, 0)
    if table == "msdos":
        extended = [p for p in parts if p.kind == "extended"]
        if len(extended) > 1:
            raise _Bad("layout.partitions", f"has {len(extended)} extended partitions (an MBR has at most one)")
        logicals = sorted((p for p in parts if p.kind == "logical"), key=lambda p: p.start)
        if logicals and not extended:
            raise _Bad("layout.partitions", "has logical partitions but no extended partition")
        for q in logicals:
            ext = extended[0]
            if not ext.start < q.start <= q.end <= ext.end:
                raise _Bad("layout.partitions", f"has logical partition {q.number} outside the extended one")
        _no_overlap(logicals, 1)  # each logical is preceded by its EBR sector


def _no_overlap(parts: list[Partition], ebr: int) -> None:
    for a, b in zip(parts, parts[1:]):
        if b.start - ebr <= a.end:
            raise _Bad("layout.partitions", f"has partitions {a.number} and {b.number} overlapping")


def _check_areas(m: Manifest) -> None:
    """Every data partition has its area `p<N>` at its bytes; the bytes outside partitions are
    the gap areas model/gaps.py computes for this table (or, in images older than gaps, a head
    of the first MiB only); a drive without a table is one area `disk`. Nothing else."""
    layout, ss = m.layout, m.layout.sector_size
    names = [a.name for a in m.areas]
    for i, a in enumerate(m.areas):
        path = f"areas[{i}]"
        if names.index(a.name) != i:
            raise _Bad(f"{path}.name", f"repeats area {a.name}")
        if a.offset + a.size > layout.size:
            raise _Bad(path, f"ends beyond the drive ({a.offset}+{a.size} > {layout.size})")
        if a.name.startswith("p"):
            number = int(a.name[1:])
            part = next((p for p in layout.partitions if p.number == number), None)
            if part is None or part.kind == "extended":
                raise _Bad(f"{path}.name", f"is area {a.name} but the table has no data partition {number}")
            if a.partition != number:
                raise _Bad(f"{path}.partition", f"is {shown(a.partition)}, not {number}")
            if (a.offset, a.size) != (part.offset(ss), part.size(ss)):
                raise _Bad(path, f"does not cover partition {number}'s bytes")
        elif a.partition is not None:
            raise _Bad(f"{path}.partition", f"is set for area {a.name}, which is not a partition")
        elif a.fs is not None and a.name != "disk":
            raise _Bad(f"{path}.fs", f"is set for area {a.name}, which is not a partition")
    for p in layout.data_partitions():
        if f"p{p.number}" not in names:
            raise _Bad("areas", f"lacks area p{p.number} for partition {p.number}")
    gap_areas = {a.name: (a.offset, a.size) for a in m.areas if a.name == gaps.HEAD or a.name.startswith("gap-")}
    if layout.table == "none":
        disk = next((a for a in m.areas if a.name == "disk"), None)
        if disk is None or len(m.areas) != 1 or (disk.offset, disk.size) != (0, layout.size):
            raise _Bad("areas", "is not the one area 'disk' covering the whole drive (no partition table)")
        return
    if "disk" in names:
        raise _Bad("areas", "has area 'disk' on a drive with a partition table")
    expected = {g.name: (g.offset, g.size) for g in gaps.gaps(layout)}
    old_style = {gaps.HEAD: (0, min(gaps.GAP_PART, layout.size))}  # images made before gaps
    if gap_areas != expected and gap_areas != old_style:
        missing = sorted(set(expected) - set(gap_areas))
        extra = sorted(set(gap_areas) - set(expected))
        wrong = sorted(n for n in set(expected) & set(gap_areas) if expected[n] != gap_areas[n])
        what = (
            f"lacks area {missing[0]}"
            if missing
            else f"has area {extra[0]}, which is not a gap of this table"
            if extra
            else f"has area {wrong[0]} at other bytes than the table's gap there"
        )
        raise _Bad("areas", what)

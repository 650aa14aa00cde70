"""manifest.json: what an image is. Written last and atomically; it carries a checksum of its
own canonical JSON so a truncated or hand-edited manifest is detected, not trusted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TypedDict

from rescue.errors import IntegrityError
from rescue.model import gaps
from rescue.model.layout import DiskLayout

FORMAT = "rescue-image"
VERSION = 1


class FsFacts(TypedDict, total=False):
    """A filesystem's facts as captured (rescue.filesystems.base.FsInfo as a dict)."""

    type: str  # ext4, xfs, btrfs, vfat, ntfs, swap ...
    uuid: str | None
    label: str | None
    used_bytes: int | None
    min_size: int | None  # smallest partition it can be shrunk to, if known
    map_source: str | None  # how the used-block map was obtained


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
        try:
            body = json.loads(text)
        except ValueError:
            raise IntegrityError(f"{where}: manifest is not valid JSON (truncated or damaged)") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise IntegrityError(f"{where}: not a rescue image manifest")
        if body.get("version") != VERSION:
            raise IntegrityError(f"{where}: unsupported manifest version {body.get('version')!r}")
        stored = body.pop("checksum", None)
        if stored != _checksum(body):
            raise IntegrityError(f"{where}: manifest checksum mismatch (edited or damaged)")
        try:
            return cls(
                name=body["name"],
                created=body["created"],
                rescue_version=body["rescue_version"],
                chunk_size=body["chunk_size"],
                hash=body["hash"],
                source=body["source"],
                layout=DiskLayout.from_dict(body["layout"]),
                areas=[Area(**a) for a in body["areas"]],
                stats=body.get("stats", {}),
            )
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"{where}: manifest lacks or mangles {e}") from None

    def area(self, name: str) -> Area:
        for a in self.areas:
            if a.name == name:
                return a
        raise KeyError(name)


def _checksum(body: Mapping[str, object]) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()

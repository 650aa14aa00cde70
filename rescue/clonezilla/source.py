"""A Clonezilla image directory presented as a read-only image: the facts the planner needs
(layout, areas, what a restore writes), a Manifest for `info`, and per-area chunk sources
for the writer (rescue.imaging.apply). Planning, resizing, the safety rules and the boot steps
are then the very code a rescue image goes through.

Areas are a capture's: `head` and `gap-pN` (rescue.model.gaps), one `pN` per partition. The
head holds what Clonezilla kept of it (the MBR sector, the data after it, the GPT's first
sectors); Clonezilla keeps no other gap, so those areas hold nothing and nothing is written
there. A partition's chunks (of the repository's chunk size, aligned to the partition) are DATA
where its partclone bitmap marks a used block, free blocks read as zeros; a dd image is all
DATA; a swap partition is its header page, made from the UUID and label Clonezilla kept.

A partition's image is a sequential stream: chunks come in order, each checked (every
partclone checksum, the decompressor's own checks) before it is handed out; a writer thread
asking for an earlier chunk again restarts the stream."""

from __future__ import annotations

import struct
import threading
import uuid as uuidlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from rescue.clonezilla import layout as czlayout
from rescue.clonezilla.decompress import Decompressed
from rescue.clonezilla.layout import CzDir, PartImage
from rescue.clonezilla.partclone import NTFS_MAGIC, Image
from rescue.errors import IntegrityError, RescueError, UsageError
from rescue.filesystems import lookup
from rescue.imaging.apply import AreaFacts, AreaSource
from rescue.imaging.progress import Meter
from rescue.model import gaps
from rescue.model.extents import Extent, normalize
from rescue.repo.index import Index, Kind
from rescue.repo.manifest import Area, Manifest, SourceFacts, area_label
from rescue.repo.store import ImageSummary

CHUNK = 4 << 20
FOREIGN = "clonezilla"  # Manifest.hash of a Clonezilla image: no chunk store behind it
SWAP_PAGE = 4096
SWAP_MIN_PAGES = 10


@dataclass
class CzArea:
    name: str
    offset: int
    size: int
    partition: int | None
    fs: dict | None
    index: Index
    part: PartImage | None = None
    static: bytes | None = None  # head and swap: the bytes, known at once

    @property
    def label(self) -> str:
        return area_label(self.name, (self.fs or {}).get("type"))

    def held(self) -> list[Extent]:
        return normalize(self.index.span(i) for i, k in enumerate(self.index.kinds) if k == Kind.DATA)

    def write_bytes(self) -> int:
        return sum(self.index.span(i)[1] for i, k in enumerate(self.index.kinds) if k == Kind.DATA)


def _known(fs: dict) -> dict:
    """The facts that are known (a filesystem without a label has none)."""
    return {k: v for k, v in fs.items() if v is not None}


def swap_header(size: int, uuid: str | None, label: str | None) -> bytes:
    """The first page mkswap writes (linux/swap.h, version 1): what a swap partition is
    restored as; the kernel needs nothing else of it."""
    page = bytearray(SWAP_PAGE)
    raw_uuid = uuidlib.UUID(uuid).bytes if uuid else bytes(16)
    struct.pack_into("<III16s16s", page, 1024, 1, size // SWAP_PAGE - 1, 0, raw_uuid, (label or "").encode()[:16])
    page[SWAP_PAGE - 10 :] = b"SWAPSPACE2"
    return bytes(page)


class ClonezillaImage:
    """One Clonezilla image directory, read only."""

    def __init__(self, cz: CzDir, chunk_size: int = CHUNK):
        self.cz, self.chunk_size = cz, chunk_size
        self.name = cz.name
        self.layout = cz.layout
        self.areas = self._areas()

    @classmethod
    def open(cls, path: str, name: str | None = None, chunk_size: int = CHUNK) -> ClonezillaImage:
        image = cls(czlayout.read(path), chunk_size)
        if name is not None and name != image.name:
            raise UsageError(f"{path} is a Clonezilla image directory holding one image, {image.name}, not {name}")
        return image

    # what it holds ---------------------------------------------------------------------------
    def _areas(self) -> list[CzArea]:
        lay, ss = self.layout, self.layout.sector_size
        out = []
        for g in gaps.gaps(lay):
            index = Index.empty(self.chunk_size, g.size)
            static = None
            if g.name == gaps.HEAD:
                static = self._head(g.size)
                known = len(self._known_head())
                for i in range(index.count):
                    if index.span(i)[0] < known:
                        index.set(i, Kind.DATA)
            out.append(CzArea(g.name, g.offset, g.size, None, None, index, static=static))
        for p in lay.data_partitions():
            size = p.size(ss)
            part = self.cz.parts.get(p.number)
            out.append(self._partition(f"p{p.number}", p.offset(ss), size, p.number, part))
        return sorted(out, key=lambda a: a.offset)

    def _known_head(self) -> bytes:
        """The bytes from the drive's start Clonezilla kept, contiguous from byte 0."""
        boot = self.cz.boot
        head = bytearray(boot.get("gpt-1st", b""))
        mbr = boot.get("mbr", b"")[:512]
        head[: len(mbr)] = mbr
        hidden = boot.get("hidden-data-after-mbr", b"")
        if hidden and len(head) <= 512:
            head[512:] = hidden
        return bytes(head)

    def _head(self, size: int) -> bytes:
        known = self._known_head()[:size]
        return known + bytes(-(-len(known) // self.chunk_size) * self.chunk_size - len(known))

    def _partition(self, name: str, offset: int, size: int, number: int, part: PartImage | None) -> CzArea:
        index = Index.empty(self.chunk_size, size)
        if part is None:  # nothing kept of it (Clonezilla skipped it): nothing is written
            return CzArea(name, offset, size, number, None, index)
        fs: dict = {"type": part.fstype, "uuid": part.uuid, "label": part.label, "map_source": "partclone"}
        if part.kind == "swapinfo":
            fs.update(used_bytes=SWAP_PAGE, min_size=SWAP_MIN_PAGES * SWAP_PAGE, map_source="swappt.info")
            index.set(0, Kind.DATA)
            static = swap_header(size, part.uuid, part.label)
            static += bytes(index.span(0)[1] - len(static))
            return CzArea(name, offset, size, number, _known(fs), index, part, static)
        if part.kind == "dd":
            for i in range(index.count):
                index.set(i, Kind.DATA)
            return CzArea(name, offset, size, number, {"type": part.fstype} if part.fstype else None, index, part)
        with self._open(part) as stream:
            image = Image(stream, size)
        for i in range(index.count):
            if image.chunk_used(i, self.chunk_size):
                index.set(i, Kind.DATA)
        if image.header.fs == NTFS_MAGIC:  # the backup boot sector, in the last sector (see _ntfs_backup)
            index.set((size - 512) // self.chunk_size, Kind.DATA)
        fs["used_bytes"] = image.used_bytes()
        # Not in the image: the smallest size a shrink reaches. One that cannot shrink keeps its size.
        kind = lookup(part.fstype)
        fs["min_size"] = size if kind is not None and not kind.can_shrink else None
        return CzArea(name, offset, size, number, _known(fs), index, part)

    @staticmethod
    def _open(part: PartImage) -> Decompressed:
        return Decompressed(part.paths, part.compression, f"partition {part.number}")

    def write_bytes(self) -> int:
        return sum(a.write_bytes() for a in self.areas)

    def area_facts(self) -> list[AreaFacts]:
        return [AreaFacts(a.name, a.partition, a.size, a.fs, a.held()) for a in self.areas]

    def manifest(self) -> Manifest:
        """The image as `rescue info` shows any image (no index files: `hash` says so)."""
        data = self.write_bytes()
        source = SourceFacts(
            path=f"/dev/{self.cz.disk}",
            size=self.layout.size,
            logical_sector_size=self.layout.sector_size,
            physical_sector_size=self.layout.physical_sector_size,
            model="",
            serial="",
            bus="",
        )
        areas = [
            Area(a.name, a.offset, a.size, "", "", a.partition, a.fs, {"data_bytes": a.write_bytes()})  # type: ignore[arg-type]
            for a in self.areas
        ]
        return Manifest(
            self.name,
            self.cz.created,
            self.cz.command or "ocs-sr",
            self.chunk_size,
            FOREIGN,
            source,
            self.layout,
            areas,
            {"data_bytes": data, "stored_bytes": 0},  # type: ignore[arg-type]
        )

    def summary(self) -> ImageSummary:
        return ImageSummary(
            self.name, self.cz.created, "Clonezilla image", "", self.layout.size, self.write_bytes(), 0, None
        )

    # its bytes ---------------------------------------------------------------------------------
    def chunks(self, area: CzArea) -> Generator[tuple[int, bytes], None, None]:
        """(i, bytes) of the area's DATA chunks, in order, each checked before it is given
        (a generator: close() ends its reading, files and decompressor processes with it)."""
        if area.static is not None:
            for i, k in enumerate(area.index.kinds):
                if k == Kind.DATA:
                    start, length = area.index.span(i)
                    yield i, area.static[start : start + length]
            return
        if area.part is None:
            return
        with self._open(area.part) as stream:
            if area.part.kind == "dd":
                for i in range(area.index.count):
                    yield i, stream.read_exact(area.index.span(i)[1], f"chunk {i}")
                if not stream.at_end():
                    raise IntegrityError(f"{stream.where}: longer than the partition ({area.size} bytes)")
                return
            image = Image(stream, area.size)
            chunks = image.chunks(self.chunk_size, area.size)
            yield from _ntfs_backup(chunks, area, self.chunk_size) if image.header.fs == NTFS_MAGIC else chunks

    def sources(self) -> dict[str, AreaSource]:
        """Every area as the writer takes it (rescue.imaging.apply.AreaSource)."""
        return {
            a.name: AreaSource(a.name, a.label, a.size, a.fs, a.index, _Sequential(self, a).fetch) for a in self.areas
        }

    def check(self, meter: Meter) -> tuple[int, int]:
        """The checking pass: every partition's image read to its end, every checksum checked.
        Returns (chunks, bytes); raises IntegrityError naming the file, partition and block."""
        count = 0
        for area in self.areas:
            meter.begin_area(area.label, area.write_bytes())
            for _, data in self.chunks(area):
                count += 1
                meter.advance(len(data))
        return count, meter.done


def _ntfs_backup(chunks: Iterator[tuple[int, bytes]], area: CzArea, chunk_size: int) -> Iterator[tuple[int, bytes]]:
    """NTFS keeps a copy of its boot sector right after the volume, in the partition's last
    sector; partclone's bitmap covers the volume only, so the image lacks it (chkdsk and
    ntfsfix then call the alternate boot sector bad). It is the boot sector again: put back
    from the first sector, where the boot sector says, unless the image holds bytes there."""
    boot = b""
    ci = (area.size - 512) // chunk_size
    done = False

    def patched(i: int, data: bytes) -> bytes:
        bps = int.from_bytes(boot[11:13], "little") if len(boot) == 512 else 0
        at = int.from_bytes(boot[0x28:0x30], "little") * bps - i * chunk_size if bps else -1
        if 0 <= at <= len(data) - bps and not any(data[at : at + bps]):
            return data[:at] + boot[:bps] + data[at + bps :]
        return data

    for i, data in chunks:
        if i == 0:
            boot = data[:512]
        if i > ci and not done:
            done = True
            yield ci, patched(ci, bytes(area.index.span(ci)[1]))
        if i == ci:
            done = True
            data = patched(i, data)
        yield i, data
    if not done:
        yield ci, patched(ci, bytes(area.index.span(ci)[1]))


class _Sequential:
    """Random access for the writer's threads over a sequential stream: chunks asked for
    ahead of the stream are decoded on the way and held for their thread (the writer asks
    in order, so at most one per thread is held); an earlier one restarts the stream."""

    def __init__(self, image: ClonezillaImage, area: CzArea):
        self.image, self.area = image, area
        self.lock = threading.Lock()
        self.stream: Iterator[tuple[int, bytes]] | None = None
        self.pos = -1
        self.held: dict[int, bytes] = {}
        self.failed: RescueError | None = None  # the stream's damage, for every thread after
        data = [i for i, k in enumerate(area.index.kinds) if k == Kind.DATA]
        self.last = data[-1] if data else -1

    def fetch(self, i: int) -> bytes:
        with self.lock:
            if i in self.held:
                return self.held.pop(i)
            if self.failed is not None:  # not "not in the image": the ended stream says why
                raise self.failed
            if self.stream is None or i <= self.pos:
                self.stream, self.pos, self.held = self.image.chunks(self.area), -1, {}
            try:
                for j, data in self.stream:
                    self.pos = j
                    if j == i:
                        if j == self.last:
                            for _ in self.stream:  # the end: the last checksum, nothing after it
                                pass
                        return data
                    self.held[j] = data
            except RescueError as e:
                self.failed = e
                raise
        raise IntegrityError(f"{self.area.label}: chunk {i} is not in the image")

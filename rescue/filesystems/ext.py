"""ext2/ext3/ext4: everything we know about it, in the class `Ext`. The used-block map comes
from the group block bitmaps, read through `dumpe2fs`; resize2fs resizes, tune2fs renumbers,
debugfs names the files a bad block hits.

Why dumpe2fs and not our own bitmap parser: libext2fs already knows the two traps. A
BLOCK_UNINIT group has no bitmap on disk; libext2fs synthesizes it (superblock backup, group
descriptors, reserved GDT blocks, and with flex_bg the bitmaps and inode tables of *other*
groups that live in it). dumpe2fs prints each group's free ranges from those bitmaps, so
"everything not listed free" is exactly what the filesystem uses, journal included. It reads
only the superblock, descriptors and bitmaps: a 2 GiB filesystem maps in milliseconds."""

from __future__ import annotations

import os
import re
import tempfile
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rescue.errors import FilesystemError
from rescue.filesystems.badfiles import C_LOCALE, TOOL_TIMEOUT, blocks_of, collect, runs
from rescue.filesystems.base import FREE, METADATA, Examined, Filesystem, FsInfo, Range, Volume
from rescue.filesystems.resize import tool
from rescue.hw.run import run
from rescue.model.extents import Extent, normalize


@dataclass
class Dump:
    """The parts of `dumpe2fs` output the map and the facts need. Blocks are fs blocks."""

    block_size: int = 0
    block_count: int = 0
    cluster_size: int = 0  # bigalloc only
    first_inode: int = 11  # inodes below this (but the root, 2) are the filesystem's own
    groups: int = 0
    features: set[str] = field(default_factory=set)
    uuid: str | None = None
    label: str | None = None
    free: list[tuple[int, int]] = field(default_factory=list)  # (first block, count)

    @property
    def needs_recovery(self) -> bool:
        return "needs_recovery" in self.features

    def used_blocks(self) -> list[tuple[int, int]]:
        """Complement of the free ranges within [0, block_count). Block 0 of a 1 KiB-block
        filesystem belongs to no group and is never free: it comes out used, as it should
        (boot code lives there)."""
        used, pos = [], 0
        for start, count in sorted(self.free):
            if start > pos:
                used.append((pos, start - pos))
            pos = max(pos, start + count)
        if pos < self.block_count:
            used.append((pos, self.block_count - pos))
        return used


_GROUP = re.compile(r"Group \d+: ")
_HEADER = {
    "Block size": "block_size",
    "Block count": "block_count",
    "Cluster size": "cluster_size",
    "First inode": "first_inode",
}


def parse(text: str, *, groups: bool = True) -> Dump:
    """Parse full `dumpe2fs` output (header plus per-group sections), or with groups=False
    the superblock alone (`dumpe2fs -h`: sizes, features, UUID, label; no free ranges). One
    parser for every reader of ext metadata: the map, resize and the bad-block lookup."""
    d = Dump()
    free_lines = 0
    ranges: list[tuple[int, int]] = []
    for line in text.splitlines():
        if line.startswith("  Free blocks:"):
            free_lines += 1
            for part in line.split(":", 1)[1].split(","):
                part = part.strip()
                if not part:
                    continue
                first, _, last = part.partition("-")
                a = int(first)
                b = int(last) if last else a
                ranges.append((a, b))
            continue
        if _GROUP.match(line):
            d.groups += 1
            continue
        key, sep, value = line.partition(":")
        if not sep or line.startswith(" "):
            continue
        value = value.strip()
        if key in _HEADER:
            setattr(d, _HEADER[key], int(value))
        elif key == "Filesystem features":
            d.features = set(value.split())
        elif key == "Filesystem UUID":
            d.uuid = value or None
        elif key == "Filesystem volume name":
            d.label = None if value in ("", "<none>") else value
    if not groups:
        if not d.block_size or not d.block_count:
            raise FilesystemError("dumpe2fs printed no block count (not an ext filesystem?)")
        return d
    if not d.block_size or not d.block_count or not d.groups:
        raise FilesystemError("dumpe2fs printed no block groups (not an ext filesystem?)")
    # With bigalloc a range names the first block of its first and last free cluster.
    tail = d.cluster_size // d.block_size - 1 if "bigalloc" in d.features and d.cluster_size else 0
    d.free = [(a, b - a + 1 + tail) for a, b in ranges]
    if free_lines != d.groups:
        raise FilesystemError(
            f"dumpe2fs printed free blocks for {free_lines} of {d.groups} groups (unreadable bitmaps?)"
        )
    return d


def dump(dev: str, *, header: bool = False) -> Dump:
    """dumpe2fs parsed; `header`: the superblock only (-h), which reads no bitmaps. A failing
    dumpe2fs fails the map (its bitmaps were not all read); with `header` what it printed
    still counts when the superblock is in it: -h also reads the journal inode, and a damaged
    inode table fails that while the superblock was read fine (what the bad-block lookup on
    a failing drive needs)."""
    proc = run(["dumpe2fs", *(["-h"] if header else []), dev], env=C_LOCALE, check=False)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        failed = FilesystemError(f"dumpe2fs failed: {err[-1] if err else proc.returncode}")
        if not header:
            raise failed
        try:
            return parse(text, groups=False)
        except FilesystemError:
            raise failed from None
    return parse(text, groups=not header)


def _extents(d: Dump, size: int) -> list[Extent]:
    if d.needs_recovery:
        # The bitmaps on disk lag behind the journal: blocks allocated by transactions still
        # in the journal (ordered-mode data already written!) read as free. Take everything.
        return [Extent(0, size)]
    return [Extent(start * d.block_size, count * d.block_size) for start, count in d.used_blocks()]


def resize2fs_min(dev: str, block_size: int) -> int | None:
    """`resize2fs -P`'s estimate, in bytes; None when resize2fs will not say (e.g. it wants
    an fsck first): a missing estimate must not stop a capture. resize2fs reads only the
    superblock and the group descriptors for it."""
    proc = run(["resize2fs", "-P", dev], env=C_LOCALE, check=False)
    m = re.search(r"minimum size of the filesystem:\s*(\d+)", proc.stdout.decode(errors="replace"))
    return int(m.group(1)) * block_size if m and proc.returncode == 0 else None


class Ext(Filesystem):
    """ext2/3/4 (one class: the same tools and driver serve all three)."""

    names = ("ext2", "ext3", "ext4")
    can_grow = True
    grow_fills = True
    can_shrink = True
    shrink_moves_data = True
    resize_floor = 0
    mount_type = "ext4"  # the ext4 driver reads ext2 and ext3 too
    mount_ro = "ro,noload"  # no journal replay: nothing is written
    mount_rw = "rw"
    image_store = "noatime"
    owners = True
    no_files = None
    mtools = False
    linux_config = True
    can_renumber = True
    can_name_files = True

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """min_size from `resize2fs -P`, asked only here: the map alone does not need it."""
        with vol.device() as dev:
            d = dump(dev)
            smallest = resize2fs_min(dev, d.block_size)
        if d.needs_recovery:
            source = "dumpe2fs (journal needs recovery: whole volume)"
            used = sum(c for _, c in d.used_blocks()) * d.block_size
        else:
            source = "dumpe2fs"
            used = sum(e.length for e in _extents(d, vol.size))
        info = FsInfo(
            type=self.type,
            uuid=d.uuid,
            label=d.label,
            used_bytes=used,
            min_size=smallest,
            map_source=source,
        )
        return Examined(info, normalize(_extents(d, vol.size), vol.size))

    def used_extents(self, vol: Volume) -> list[Extent]:
        with vol.device() as dev:
            return normalize(_extents(dump(dev), vol.size), vol.size)

    def min_size(self, vol: Volume) -> int | None:
        """Without dumpe2fs's pass over every group's bitmaps: the header and resize2fs -P."""
        with vol.device() as dev:
            return resize2fs_min(dev, dump(dev, header=True).block_size)

    def check(self, device: str) -> None:
        """e2fsck -fy: 0 clean, 1 errors corrected; anything else means the filesystem is not
        fit to resize or renumber (resize2fs refuses an unchecked filesystem; tune2fs -U on a
        metadata_csum filesystem rewrites every checksum and insists on a fresh check)."""
        proc = run(["e2fsck", "-fy", device], check=False, timeout=None)
        if proc.returncode not in (0, 1):
            last = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
            raise FilesystemError(
                f"e2fsck found errors it could not fix on {device} (exit {proc.returncode})"
                + (f": {last[-1]}" if last else "")
            )

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """e2fsck -fy first (see check), then resize2fs to an explicit size."""
        self.check(device)
        head = dump(device, header=True)
        bsize = head.block_size
        new_blocks = new_size // bsize
        if new_blocks != head.block_count:
            tool(["resize2fs", device, f"{new_blocks * bsize // 1024}K"], device)
        return self._done(device, head.block_count * bsize, dump(device, header=True).block_count * bsize, "resize2fs")

    def new_uuid(self, device: str) -> str:
        self.check(device)
        new = str(uuidlib.uuid4())
        run(["tune2fs", "-U", new, device], timeout=None)
        return new

    def files_at(self, device: str, ranges: Sequence[Range], max_blocks: int) -> dict[Range, list[str]]:
        return _files_at(device, ranges, max_blocks)


# --- files hit by bad blocks ---------------------------------------------------------------------


def _files_at(device: str, ranges: Sequence[Range], budget: int) -> dict[Range, list[str]]:
    """debugfs icheck (block -> inode), testb (an unowned block: metadata or free), ncheck
    (inode -> paths)."""
    head = dump(device, header=True)
    bs, count, first_ino = head.block_size, head.block_count, head.first_inode
    per_range, cut = blocks_of(ranges, bs, budget)
    blocks = sorted({b for bl in per_range.values() for b in bl if b < count})
    owner: dict[int, int | None] = {}
    if blocks:
        text = _debugfs(device, "-R", "icheck " + " ".join(map(str, blocks)))
        for m in re.finditer(r"^(\d+)\s+(\d+|<block not found>)\s*$", text, re.M):
            owner[int(m.group(1))] = int(m.group(2)) if m.group(2).isdigit() else None
    # No owner: metadata or free. Not answered (icheck stopped at a damaged inode table):
    # the bitmap can still say free, and a free block holds no file.
    unowned = [b for b in blocks if b and owner.get(b) is None]
    used = _used(device, unowned)
    inodes = sorted({i for i in owner.values() if i is not None and (i == 2 or i >= first_ino)})
    paths = _paths(device, inodes)

    def name(block: int) -> str | None:
        if block >= count:
            return None
        if block not in owner:
            return FREE if used.get(block) is False else None  # used but owner unknown
        ino = owner[block]
        if ino is None:
            if block == 0:
                return METADATA  # boot block / primary superblock: in no group's bitmap
            state = used.get(block)
            return None if state is None else METADATA if state else FREE
        if ino != 2 and ino < first_ino:
            return METADATA  # journal, resize inode, bad-blocks inode...
        return paths.get(ino) or f"(inode {ino}, no name found)"

    return collect(per_range, cut, name)


def _debugfs(device: str, *args: str) -> str:
    return run(["debugfs", *args, device], env=C_LOCALE, check=False, timeout=TOOL_TIMEOUT).stdout.decode(
        errors="replace"
    )


def _used(device: str, blocks: list[int]) -> dict[int, bool]:
    """testb for blocks no inode owns: in use means group descriptors, bitmaps, inode tables."""
    if not blocks:
        return {}
    script = "".join(f"testb {first} {n}\n" for first, n in runs(blocks))
    out: dict[int, bool] = {}
    fd, path = tempfile.mkstemp(prefix="rescue-badfiles-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(script)
        text = _debugfs(device, "-f", path)
    finally:
        os.unlink(path)
    for m in re.finditer(r"^Block (\d+) (marked in use|not in use)", text, re.M):
        out[int(m.group(1))] = m.group(2) == "marked in use"
    return out


def _paths(device: str, inodes: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    if 2 in inodes:
        out[2] = "/"
    rest = [i for i in inodes if i != 2]
    for start in range(0, len(rest), 2000):
        text = _debugfs(device, "-R", "ncheck " + " ".join(map(str, rest[start : start + 2000])))
        for m in re.finditer(r"^(\d+)\t(.+)$", text, re.M):
            ino, path = int(m.group(1)), re.sub("/+", "/", m.group(2))
            if ino in out and path not in out[ino].split(" = "):
                out[ino] += " = " + path  # hard links: one file, several names
            else:
                out.setdefault(ino, path)
    return out

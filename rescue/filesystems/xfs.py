"""XFS: everything we know about it, in the class `Xfs`. The used-block map comes from the
free-space btrees, read with `xfs_db -r -c 'freesp -d'`; xfs_growfs grows it (it cannot
shrink), xfs_admin renumbers it, xfs_db's blockuse names the files a bad block hits.

freesp walks each allocation group's by-block free-space btree (and the AG free list, whose
blocks hold nothing yet) and prints every free extent as "agno agbno len". Everything else
inside the data section is in use: AG headers, inode chunks, btrees, file data and the
internal log. Byte offset of an extent = (agno * agblocks + agbno) * blocksize.

The on-disk btrees are only the truth when the log is clean: after a crash, allocations
still sitting in the log read as free. A dirty internal log (`xfs_logprint -t` says so)
therefore maps the whole volume. An external log cannot be looked at from the volume alone;
it is trusted to be clean."""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rescue.errors import FilesystemError
from rescue.filesystems.badfiles import C_LOCALE, TOOL_TIMEOUT, blocks_of, collect
from rescue.filesystems.base import FREE, METADATA, Examined, Filesystem, FsInfo, Range, Volume, mib
from rescue.filesystems.resize import tool
from rescue.hw.run import run
from rescue.model.extents import Extent, normalize

_SB_FIELDS = ("blocksize", "agblocks", "agcount", "dblocks", "logstart", "logblocks", "uuid")


@dataclass
class Dump:
    """Superblock facts and the free extents (agno, agbno, len), in fs blocks."""

    sb: dict[str, str] = field(default_factory=dict)
    free: list[tuple[int, int, int]] = field(default_factory=list)
    label: str | None = None

    def num(self, name: str) -> int:
        return int(self.sb[name])

    @property
    def size(self) -> int:
        """Bytes the filesystem spans (it may be smaller than its partition)."""
        return self.num("dblocks") * self.num("blocksize")

    def used_blocks(self) -> list[tuple[int, int]]:
        """Complement of the free extents within [0, dblocks), as (fs block, count)."""
        agblocks = self.num("agblocks")
        free = sorted((ag * agblocks + bno, n) for ag, bno, n in self.free)
        used, pos = [], 0
        for start, count in free:
            if start > pos:
                used.append((pos, start - pos))
            pos = max(pos, start + count)
        if pos < self.num("dblocks"):
            used.append((pos, self.num("dblocks") - pos))
        return used


_FREE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse(text: str) -> Dump:
    """Parse the output of `xfs_db -r -c 'sb 0' -c 'p ...' -c label [-c 'freesp -d']`: one
    parser for every reader of XFS metadata (the map, resize, the bad-block lookup)."""
    d = Dump()
    for line in text.splitlines():
        m = _FREE.match(line)
        if m:  # the histogram after the extents has five columns, never three
            d.free.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
            continue
        key, sep, value = line.partition(" = ")
        key = key.strip()
        if not sep:
            continue
        if key in _SB_FIELDS:
            d.sb[key] = value.strip()
        elif key == "label":
            d.label = value.strip().strip('"') or None
    missing = [f for f in _SB_FIELDS if f not in d.sb]
    if missing:
        raise FilesystemError(f"xfs_db did not print {', '.join(missing)} (not an XFS filesystem?)")
    return d


def dump(dev: str, *, freesp: bool = True) -> Dump:
    """The superblock and label, and with `freesp` the free extents (which walks every
    allocation group's btree: the superblock alone is what resize needs)."""
    argv = ["xfs_db", "-r", "-c", "sb 0", "-c", "p " + " ".join(_SB_FIELDS), "-c", "label"]
    return parse(
        run(argv + (["-c", "freesp -d"] if freesp else []) + [dev], env=C_LOCALE).stdout.decode(errors="replace")
    )


def log_dirty(dev: str, d: Dump) -> bool:
    if d.num("logstart") == 0:
        return False  # external log: not on this volume
    text = run(["xfs_logprint", "-t", dev], check=False).stdout.decode(errors="replace")
    m = re.search(r"state:\s*<(\w+)>", text)
    return m is None or m.group(1) != "CLEAN"


def _read(vol: Volume) -> tuple[Dump, bool]:
    with vol.device() as dev:
        d = dump(dev)
        return d, log_dirty(dev, d)


def _extents(d: Dump, dirty: bool, size: int) -> list[Extent]:
    if dirty:
        return [Extent(0, size)]
    bs = d.num("blocksize")
    return [Extent(start * bs, count * bs) for start, count in d.used_blocks()]


class Xfs(Filesystem):
    """XFS: grows while mounted, never shrinks."""

    names = ("xfs",)
    can_grow = True
    grow_fills = True
    can_shrink = False
    shrink_moves_data = False
    resize_floor = 0
    mount_type = "xfs"
    mount_ro = "ro,norecovery,nouuid"  # no log replay; nouuid: the source may be mounted too
    mount_rw = "rw,nouuid"
    image_store = "noatime"
    owners = True
    no_files = None
    mtools = False
    linux_config = True
    can_renumber = True
    can_name_files = True

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """min_size is the filesystem's current size: XFS cannot shrink (kernels since 5.12
        can drop free space from the last AG only, an experimental corner not worth planning
        on), so a restore target must hold the whole data section."""
        d, dirty = _read(vol)
        used = sum(n for _, n in d.used_blocks()) * d.num("blocksize")
        source = "xfs_db freesp (log dirty: whole volume)" if dirty else "xfs_db freesp"
        info = FsInfo(
            type=self.type, uuid=d.sb["uuid"], label=d.label, used_bytes=used, min_size=d.size, map_source=source
        )
        return Examined(info, normalize(_extents(d, dirty, vol.size), vol.size))

    def shrink_check(self, min_size: int | None, new_size: int, *, current_size: int | None = None) -> None:
        if current_size is not None and new_size < current_size:
            raise FilesystemError(
                f"cannot shrink {self.type} from {mib(current_size)} to {mib(new_size)}: "
                f"XFS can only grow; choose a partition of at least {mib(current_size)}"
            )
        super().shrink_check(min_size, new_size, current_size=current_size)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """Grown while mounted (xfs_growfs works on a mounted filesystem only)."""
        head = dump(device, freesp=False)
        blocks, bsize = head.num("dblocks"), head.num("blocksize")
        old = blocks * bsize
        new_blocks = new_size // bsize
        if new_blocks < blocks:
            self.shrink_check(None, new_size, current_size=old)
        if new_blocks == blocks:
            return self._done(device, old, old, "xfs_growfs not needed")
        with self.mounted(device) as mnt:
            tool(["xfs_growfs", "-D", str(new_blocks), mnt], device)
        return self._done(device, old, dump(device, freesp=False).num("dblocks") * bsize, "xfs_growfs")

    def new_uuid(self, device: str) -> str:
        new = str(uuidlib.uuid4())
        run(["xfs_admin", "-U", new, device], timeout=None)
        return new

    def files_at(self, device: str, ranges: Sequence[Range], max_blocks: int) -> dict[Range, list[str]]:
        return _files_at(device, ranges, max_blocks)


# --- files hit by bad blocks ---------------------------------------------------------------------

_FREE_KINDS = {"free1", "free2", "rtfree"}
_FILE_KINDS = {"data", "dir", "attr", "symlink", "rtdata", "btbmapa", "btbmapd"}
_BLOCKUSE = re.compile(r"^block \d+ \((\d+)/(\d+)\) type (\S+)(?: inode (\d+)(?: (.*))?)?$", re.M)


def _files_at(device: str, ranges: Sequence[Range], budget: int) -> dict[Range, list[str]]:
    """xfs_db -r: `blockget -n` walks all metadata once, then `blockuse -n` gives each
    block's type (data, dir, btree, log, free...) and its inode and path."""
    head = dump(device, freesp=False)
    bs, agblocks, dblocks = head.num("blocksize"), head.num("agblocks"), head.num("dblocks")
    per_range, cut = blocks_of(ranges, bs, budget)
    blocks = sorted({b for bl in per_range.values() for b in bl if b < dblocks})
    # One command per block: `blockuse -c N` stops at an AG's end, and daddr (512-byte units,
    # linear) spares us the AG-encoded fsblock numbers.
    script = "blockget -n\n" + "".join(f"daddr {b * bs // 512}\nblockuse -n\n" for b in blocks)
    text = run(
        ["xfs_db", "-r", device], input=script.encode(), env=C_LOCALE, check=False, timeout=TOOL_TIMEOUT
    ).stdout.decode(errors="replace")
    kinds: dict[int, str] = {}
    for m in _BLOCKUSE.finditer(text):
        block = int(m.group(1)) * agblocks + int(m.group(2))
        kind, ino, path = m.group(3), m.group(4), m.group(5)
        if kind in _FREE_KINDS:
            kinds[block] = FREE
        elif kind in _FILE_KINDS and ino:
            kinds[block] = "/" + path.lstrip("/") if path else f"(inode {ino}, no name found)"
        else:
            kinds[block] = METADATA  # sb, agf, agi, agfl, free-space/inode btrees, inodes, log
    return collect(per_range, cut, kinds.get)

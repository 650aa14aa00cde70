"""XFS: the used-block map from the free-space btrees, read with `xfs_db -r -c 'freesp -d'`.

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
from dataclasses import dataclass, field

from rescue.errors import FilesystemError
from rescue.filesystems.base import FsInfo, Volume
from rescue.hw.run import run
from rescue.model.extents import Extent, normalize

TYPES = ("xfs",)

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
    """Parse the output of `xfs_db -r -c 'sb 0' -c 'p ...' -c label -c 'freesp -d'`."""
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


def dump(dev: str) -> Dump:
    return parse(run(["xfs_db", "-r", "-c", "sb 0", "-c", "p " + " ".join(_SB_FIELDS), "-c", "label",
                      "-c", "freesp -d", dev]).stdout.decode(errors="replace"))


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


def used_extents(vol: Volume) -> list[Extent]:
    d, dirty = _read(vol)
    return normalize(_extents(d, dirty, vol.size), vol.size)


def info(vol: Volume, fstype: str) -> FsInfo:
    """min_size is the filesystem's current size: XFS cannot shrink (kernels since 5.12 can
    drop free space from the last AG only, an experimental corner not worth planning on), so
    a restore target must hold the whole data section."""
    d, dirty = _read(vol)
    used = sum(n for _, n in d.used_blocks()) * d.num("blocksize")
    source = "xfs_db freesp (log dirty: whole volume)" if dirty else "xfs_db freesp"
    return FsInfo(type=fstype, uuid=d.sb["uuid"], label=d.label, used_bytes=used, min_size=d.size,
                  map_source=source)

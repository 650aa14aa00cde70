"""btrfs: the used-block map from the device tree, read with
`btrfs inspect-internal dump-tree -t dev`.

btrfs puts nothing on a device outside its chunks except the superblock copies: every tree
block and every data extent lives inside a chunk, and each chunk's slice of this device is a
DEV_EXTENT item (key objectid = devid, key offset = byte offset on the device, length). So
the map is: the device extents of *this* device, the superblock mirrors that fit, and the
first MiB (btrfs never allocates there; boot loaders do). DUP chunks have two device extents
on the same device and both are listed, so both copies of DUP metadata are kept: partclone
0.3.23 maps only one of them.

The map is chunk-granular: free space inside a half-empty chunk is imaged too. That is the
price of not walking the extent tree (big and slow on large filesystems); `btrfs balance`
before capture shrinks it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rescue.errors import FilesystemError
from rescue.filesystems.base import FsInfo, Volume
from rescue.hw.run import run
from rescue.model.extents import MiB, Extent, normalize

TYPES = ("btrfs",)

SUPER_MIRRORS = (64 << 10, 64 << 20, 256 << 30, 1 << 50)
SUPER_SPAN = 64 << 10  # the superblock is 4 KiB; keep the whole 64 KiB slot, it costs nothing
RESERVED = MiB  # btrfs allocates nothing below 1 MiB
# Shrinking relocates chunks, which needs room for a few new chunks while the old ones
# still exist; one 1 GiB data chunk plus DUP metadata is a comfortable bound on big volumes.
MIN_MARGIN = 256 * MiB
MAX_MARGIN = 1536 * MiB


@dataclass
class Super:
    fields: dict[str, str] = field(default_factory=dict)

    def num(self, name: str) -> int:
        try:
            return int(self.fields[name])
        except (KeyError, ValueError):
            raise FilesystemError(f"btrfs dump-super did not print {name}") from None

    @property
    def zoned(self) -> bool:
        return "ZONED" in self.fields.get("incompat_flags", "")


def parse_super(text: str) -> Super:
    """`btrfs inspect-internal dump-super` prints "name<TAB>value"; flag names follow on
    continuation lines, which we fold into the previous field."""
    s = Super()
    last = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and last:
            s.fields[last] += " " + line.strip()
            continue
        parts = re.split(r"\t+", line.strip(), maxsplit=1)
        if len(parts) == 2:
            last = parts[0].strip()
            s.fields[last] = parts[1].strip()
    if s.fields.get("magic", "").split()[:1] != ["_BHRfS_M"]:
        raise FilesystemError("no btrfs superblock (bad magic)")
    return s


_KEY = re.compile(r"key \((\d+) DEV_EXTENT (\d+)\)")
_LEN = re.compile(r"\blength (\d+)")


def parse_dev_extents(text: str, devid: int) -> list[Extent]:
    """DEV_EXTENT items of `devid` from `dump-tree -t dev` output."""
    out = []
    pending: int | None = None
    for line in text.splitlines():
        m = _KEY.search(line)
        if m:
            pending = int(m.group(2)) if int(m.group(1)) == devid else None
            continue
        m = _LEN.search(line)
        if m and pending is not None:
            out.append(Extent(pending, int(m.group(1))))
            pending = None
    return out


def _read(vol: Volume) -> tuple[Super, list[Extent]]:
    with vol.device() as dev:
        sup = parse_super(run(["btrfs", "inspect-internal", "dump-super", dev]).stdout.decode(
            errors="replace"))
        if sup.zoned:
            return sup, []
        tree = run(["btrfs", "inspect-internal", "dump-tree", "-t", "dev", dev]).stdout.decode(
            errors="replace")
    extents = parse_dev_extents(tree, sup.num("dev_item.devid"))
    if not extents:
        raise FilesystemError("btrfs device tree lists no device extents for this device")
    return sup, extents


def _map(sup: Super, dev_extents: list[Extent], size: int) -> list[Extent]:
    if sup.zoned:
        # Zoned btrfs keeps rotating superblock logs in reserved zones outside the device
        # extents; rather than model them, image everything.
        return [Extent(0, size)]
    extra = [Extent(0, RESERVED)] + [Extent(o, SUPER_SPAN) for o in SUPER_MIRRORS if o + 4096 <= size]
    return normalize(dev_extents + extra, size)


def used_extents(vol: Volume) -> list[Extent]:
    sup, ext = _read(vol)
    return _map(sup, ext, vol.size)


def estimate_min_size(dev_bytes_used: int, size: int) -> int:
    """What `btrfs filesystem resize` could plausibly shrink to: the reserved first MiB, the
    device extents in use (dev_item.bytes_used), and a margin for relocating chunks (10 %,
    at least 256 MiB, at most 1.5 GiB), rounded up to a MiB; never more than the volume. An
    estimate, not a promise: the resize itself is what finally decides."""
    margin = min(max(dev_bytes_used // 10, MIN_MARGIN), MAX_MARGIN)
    need = RESERVED + dev_bytes_used + margin
    need = -(-need // MiB) * MiB
    return min(need, size)


def info(vol: Volume, fstype: str) -> FsInfo:
    sup, ext = _read(vol)
    label = sup.fields.get("label") or None
    dev_used = sup.num("dev_item.bytes_used")
    source = "btrfs dump-tree (zoned: whole volume)" if sup.zoned else "btrfs dump-tree -t dev (device extents)"
    return FsInfo(type=fstype, uuid=sup.fields.get("fsid"), label=label, used_bytes=sup.num("bytes_used"),
                  min_size=estimate_min_size(dev_used, vol.size), map_source=source)

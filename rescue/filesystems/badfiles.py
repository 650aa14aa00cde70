"""Which files a drive's bad sectors hit.

A bad-sector map says "bytes 1234567-1235078 are lost"; the person needs "your thesis.odt is
damaged". The filesystem's own tools answer that from its metadata; each filesystem class
does it in its `files_at` (rescue/filesystems/<name>.py):

    ext2/3/4  debugfs: `icheck BLOCK...` names the inode owning each block, `ncheck INODE...`
              its paths, `testb` tells a block owned by no inode used (metadata) or free
    XFS       xfs_db -r: `blockget -n` walks all metadata once, then `blockuse -n` gives
              each block's type (data, dir, btree, log, free...) and its inode and path
    NTFS      ntfscluster --sector A-B: every MFT record with a run on those sectors
    btrfs     dump-tree, no mount (a failing drive is not mounted): the chunk tree maps the
              drive's bytes to logical addresses (metadata/system chunks, unallocated space),
              the extent tree names the (subvolume, inode) owning a data extent, the
              subvolume's tree (INODE_REF) and the root tree (ROOT_BACKREF) its path
    FAT, other  nothing ({}): FAT has no per-block owner index short of walking every chain

This module holds what they share (the block budget, the answer's vocabulary) and the part
that is about a whole drive: `annotate`, what capture calls once the map is final; its
result is stored beside the image as badfiles.json.

Why at capture time and on the source: the image stores partitions as chunk indexes, not as
block devices, and the lookup wants the live metadata anyway.

Nothing here raises for a damaged filesystem: a tool that fails or stops half way gives the
ranges it could answer, and the ranges missing from the result are "unknown" to the caller.
Work is bounded (a block budget for ext/XFS, a time budget for NTFS) so a drive with a huge
bad area does not turn the end of a capture into hours of lookups.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from rescue.errors import RescueError

if TYPE_CHECKING:
    from rescue.repo.store import Repository
from rescue.filesystems.base import FREE, METADATA, MORE, Range

__all__ = [
    "BADFILES",
    "FREE",
    "METADATA",
    "MORE",
    "MAX_BLOCKS",
    "Range",
    "annotate",
    "damaged_files",
    "files_hit",
    "range_key",
    "read_badfiles",
    "supported",
    "write_badfiles",
]

BADFILES = "badfiles.json"

MAX_BLOCKS = 10_000  # blocks looked up per filesystem; past that a range gets MORE
TOOL_TIMEOUT = 300.0

C_LOCALE = {**os.environ, "LC_ALL": "C"}  # the tools' English output is what is parsed


def files_hit(
    fstype: str, device: str, ranges: Sequence[Range], *, max_blocks: int = MAX_BLOCKS
) -> dict[Range, list[str]]:
    """For each (offset, length) byte range of the filesystem on `device` (a block device or
    a file holding exactly the partition), the sorted names of the files it hits, or FREE /
    METADATA. A range the lookup could not answer is absent."""
    from rescue.filesystems import lookup

    ranges = [(int(s), int(n)) for s, n in ranges if n > 0]
    fs = lookup(fstype)
    if not ranges or fs is None or not fs.can_name_files:
        return {}
    try:
        found = fs.files_at(device, ranges, max_blocks)
    except (RescueError, OSError, ValueError):
        return {}
    return {r: sorted(set(names), key=_order) for r, names in found.items() if names}


def supported(fstype: str | None) -> bool:
    from rescue.filesystems import lookup

    fs = lookup(fstype)
    return fs is not None and fs.can_name_files


def _order(name: str) -> tuple[int, str]:
    """Real paths first, then the notes in parentheses, "more not examined" last."""
    return (name.startswith("(") + (name == MORE), name)


# --- shared by the block-based lookups (ext, XFS) ----------------------------------------------


def blocks_of(ranges: Sequence[Range], block_size: int, budget: int) -> tuple[dict[Range, list[int]], set[Range]]:
    """Filesystem blocks per range, within `budget` blocks in all; the ranges cut short."""
    out: dict[Range, list[int]] = {}
    cut: set[Range] = set()
    left = budget
    for r in ranges:
        first, last = r[0] // block_size, (r[0] + r[1] - 1) // block_size
        take = min(last - first + 1, left)
        if take <= 0:
            cut.add(r)
            continue
        out[r] = list(range(first, first + take))
        if take < last - first + 1:
            cut.add(r)
        left -= take
    return out, cut


def collect(
    per_range: dict[Range, list[int]], cut: set[Range], name: Callable[[int], str | None]
) -> dict[Range, list[str]]:
    """Each range's names: those of its blocks (None: unknown), MORE when it was cut short."""
    out: dict[Range, list[str]] = {}
    for r, blocks in per_range.items():
        names = {n for n in map(name, blocks) if n}
        if names:
            out[r] = sorted(names) + ([MORE] if r in cut else [])
    return out


def runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """(first, count) for each run of consecutive numbers."""
    found: list[list[int]] = []
    for n in sorted(numbers):
        if found and found[-1][0] + found[-1][1] == n:
            found[-1][1] += 1
        else:
            found.append([n, 1])
    return [(a, b) for a, b in found]


# --- a whole drive -----------------------------------------------------------------------------


def range_key(start: int, length: int) -> str:
    """How a range is named in badfiles.json and by `rescue info`: first-last byte, inclusive."""
    return f"{start}-{start + length - 1}"


class _AreaLike(Protocol):
    name: str
    offset: int
    size: int


def annotate(
    source_path: str,
    areas: Iterable[_AreaLike],
    bad_ranges: Sequence[Range],
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, list[str]]:
    """Files hit by each bad range of a drive: "first-last" (drive byte offsets, inclusive,
    see range_key) → names. `areas` are capture's AreaPlans or a manifest's Areas (name,
    offset, size, fs). Each area with a known filesystem is looked at through a read-only loop
    device over exactly its bytes. Ranges outside every such area, or that the lookup could
    not answer, are absent. Never raises: at the end of a capture, failing here must not lose
    the image."""
    from rescue.filesystems.base import Volume

    result: dict[str, list[str]] = {}
    for area in areas:
        fs = getattr(area, "fs", None)
        fstype = fs.get("type") if isinstance(fs, dict) else getattr(fs, "type", None)
        if not isinstance(fstype, str) or not supported(fstype):
            continue
        local: dict[Range, Range] = {}  # range relative to the area → the drive's range
        for start, length in bad_ranges:
            lo, hi = max(start, area.offset), min(start + length, area.offset + area.size)
            if lo < hi:
                local[(lo - area.offset, hi - lo)] = (start, length)
        if not local:
            continue
        began = time.monotonic()
        try:
            with Volume(source_path, area.offset, area.size).device() as dev:
                found = files_hit(fstype, dev, list(local))
        except (RescueError, OSError) as e:
            log(f"{area.name}: cannot tell which files the bad sectors hit ({e})")
            continue
        for r, names in found.items():
            key = range_key(*local[r])
            merged = result.setdefault(key, [])
            merged.extend(n for n in names if n not in merged)
        log(
            f"{area.name}: files hit by bad sectors looked up for {len(found)} of {len(local)} ranges "
            f"({time.monotonic() - began:.1f} s)"
        )
    return result


def damaged_files(hits: dict[str, list[str]]) -> list[str]:
    """Every file named in `hits`, once: the list a person acts on (restore these from a
    backup), whatever the number of bad ranges."""
    return sorted({n for names in hits.values() for n in names if not n.startswith("(")})


def write_badfiles(repo: Repository, name: str, hits: dict[str, list[str]]) -> None:
    """badfiles.json beside image `name`: {"version": 1, "ranges": {"first-last": [names]}},
    written as every file of an image is (a temporary name, fsync, rename)."""
    body = json.dumps({"version": 1, "ranges": hits}, indent=1, sort_keys=True) + "\n"
    repo.write_image_file(name, BADFILES, body.encode())


def read_badfiles(repo: Repository, name: str) -> dict[str, list[str]]:
    """What write_badfiles stored for image `name`; {} when absent or unreadable (older images
    have none). Read through the repository: a regular file of bounded size, never a FIFO."""
    try:
        raw = repo.read_image_file(name, BADFILES)
        if raw is None:
            return {}
        body = json.loads(raw)
        ranges = body["ranges"]
        return {str(k): [str(n) for n in v] for k, v in ranges.items()}
    except (OSError, RescueError, ValueError, KeyError, TypeError, AttributeError):
        return {}

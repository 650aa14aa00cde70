"""Which files a drive's bad sectors hit.

A bad-sector map says "bytes 1234567-1235078 are lost"; the person needs "your thesis.odt is
damaged". The filesystem's own tools answer that from its metadata:

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

Why at capture time and on the source: the image stores partitions as chunk indexes, not as
block devices, and the lookup wants the live metadata anyway. `annotate` is what capture calls
once the map is final; its result is stored beside the image as badfiles.json.

Nothing here raises for a damaged filesystem: a tool that fails or stops half way gives the
ranges it could answer, and the ranges missing from the result are "unknown" to the caller.
Work is bounded (a block budget for ext/XFS, a time budget for NTFS) so a drive with a huge
bad area does not turn the end of a capture into hours of lookups.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rescue.errors import RescueError
from rescue.hw.run import run

FREE = "(free space)"
METADATA = "(filesystem metadata)"
MORE = "(more blocks not examined)"
BADFILES = "badfiles.json"

MAX_BLOCKS = 10_000  # blocks looked up per filesystem; past that a range gets MORE
NTFS_SECONDS = 120.0  # ntfscluster scans the whole MFT per range: stop asking after this
TOOL_TIMEOUT = 300.0

_C = {**os.environ, "LC_ALL": "C"}

Range = tuple[int, int]  # (byte offset, length), relative to the filesystem's start


def files_hit(fstype: str, device: str, ranges: Sequence[Range], *,
              max_blocks: int = MAX_BLOCKS) -> dict[Range, list[str]]:
    """For each (offset, length) byte range of the filesystem on `device` (a block device or
    a file holding exactly the partition), the sorted names of the files it hits, or FREE /
    METADATA. A range the lookup could not answer is absent."""
    ranges = [(int(s), int(n)) for s, n in ranges if n > 0]
    if not ranges:
        return {}
    finder = _FINDERS.get(fstype)
    if finder is None:
        return {}
    try:
        found = finder(device, ranges, max_blocks)
    except (RescueError, OSError, ValueError):
        return {}
    return {r: sorted(set(names), key=_order) for r, names in found.items() if names}


def supported(fstype: str | None) -> bool:
    return fstype in _FINDERS


def _order(name: str) -> tuple[int, str]:
    """Real paths first, then the notes in parentheses, "more not examined" last."""
    return (name.startswith("(") + (name == MORE), name)


def _blocks_of(ranges: Sequence[Range], block_size: int, budget: int) -> tuple[dict[Range, list[int]], set[Range]]:
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


def _out(proc) -> str:
    return proc.stdout.decode(errors="replace")


# --- ext2/3/4 ----------------------------------------------------------------------------------

def _ext(device: str, ranges: list[Range], budget: int) -> dict[Range, list[str]]:
    head = _out(run(["dumpe2fs", "-h", device], env=_C, check=False, timeout=TOOL_TIMEOUT))
    bs = _field(head, "Block size")
    count = _field(head, "Block count")
    first_ino = _field(head, "First inode") or 11
    if not bs or not count:
        return {}
    per_range, cut = _blocks_of(ranges, bs, budget)
    blocks = sorted({b for bl in per_range.values() for b in bl if b < count})
    owner: dict[int, int | None] = {}
    if blocks:
        text = _out(run(["debugfs", "-R", "icheck " + " ".join(map(str, blocks)), device],
                        env=_C, check=False, timeout=TOOL_TIMEOUT))
        for m in re.finditer(r"^(\d+)\s+(\d+|<block not found>)\s*$", text, re.M):
            owner[int(m.group(1))] = int(m.group(2)) if m.group(2).isdigit() else None
    # No owner: metadata or free. Not answered (icheck stopped at a damaged inode table):
    # the bitmap can still say free, and a free block holds no file.
    unowned = [b for b in blocks if b and owner.get(b) is None]
    used = _ext_used(device, unowned)
    inodes = sorted({i for i in owner.values() if i is not None and (i == 2 or i >= first_ino)})
    paths = _ext_paths(device, inodes)

    def name(block: int) -> str | None:
        if block >= count:
            return None
        if block not in owner:
            return FREE if used.get(block) is False else None  # used but owner unknown
        ino = owner[block]
        if ino is None:
            if block == 0:
                return METADATA  # boot block / primary superblock: in no group's bitmap
            return {True: METADATA, False: FREE}.get(used.get(block))  # type: ignore[arg-type]
        if ino != 2 and ino < first_ino:
            return METADATA  # journal, resize inode, bad-blocks inode...
        return paths.get(ino) or f"(inode {ino}, no name found)"

    return _collect(per_range, cut, name)


def _ext_used(device: str, blocks: list[int]) -> dict[int, bool]:
    """testb for blocks no inode owns: in use means group descriptors, bitmaps, inode tables."""
    if not blocks:
        return {}
    script = "".join(f"testb {first} {n}\n" for first, n in _runs(blocks))
    out: dict[int, bool] = {}
    path = _tmpfile(script)
    try:
        text = _out(run(["debugfs", "-f", path, device], env=_C, check=False, timeout=TOOL_TIMEOUT))
    finally:
        os.unlink(path)
    for m in re.finditer(r"^Block (\d+) (marked in use|not in use)", text, re.M):
        out[int(m.group(1))] = m.group(2) == "marked in use"
    return out


def _ext_paths(device: str, inodes: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    if 2 in inodes:
        out[2] = "/"
    rest = [i for i in inodes if i != 2]
    for start in range(0, len(rest), 2000):
        text = _out(run(["debugfs", "-R", "ncheck " + " ".join(map(str, rest[start:start + 2000])), device],
                        env=_C, check=False, timeout=TOOL_TIMEOUT))
        for m in re.finditer(r"^(\d+)\t(.+)$", text, re.M):
            ino, path = int(m.group(1)), re.sub("/+", "/", m.group(2))
            if ino in out and path not in out[ino].split(" = "):
                out[ino] += " = " + path  # hard links: one file, several names
            else:
                out.setdefault(ino, path)
    return out


def _field(text: str, label: str) -> int | None:
    m = re.search(rf"^{re.escape(label)}:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return [(a, b) for a, b in runs]


def _tmpfile(text: str) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="rescue-badfiles-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _collect(per_range: dict[Range, list[int]], cut: set[Range],
             name: Callable[[int], str | None]) -> dict[Range, list[str]]:
    out: dict[Range, list[str]] = {}
    for r, blocks in per_range.items():
        names = {n for n in map(name, blocks) if n}
        if names:
            out[r] = sorted(names) + ([MORE] if r in cut else [])
    return out


# --- XFS ---------------------------------------------------------------------------------------

_XFS_FREE = {"free1", "free2", "rtfree"}
_XFS_FILE = {"data", "dir", "attr", "symlink", "rtdata", "btbmapa", "btbmapd"}
_XFS_LINE = re.compile(r"^block \d+ \((\d+)/(\d+)\) type (\S+)(?: inode (\d+)(?: (.*))?)?$", re.M)


def _xfs(device: str, ranges: list[Range], budget: int) -> dict[Range, list[str]]:
    sb = _out(run(["xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize agblocks dblocks", device],
                  env=_C, check=False, timeout=TOOL_TIMEOUT))
    vals = dict(re.findall(r"^(\w+) = (\d+)$", sb, re.M))
    if not {"blocksize", "agblocks", "dblocks"} <= vals.keys():
        return {}
    bs, agblocks, dblocks = int(vals["blocksize"]), int(vals["agblocks"]), int(vals["dblocks"])
    per_range, cut = _blocks_of(ranges, bs, budget)
    blocks = sorted({b for bl in per_range.values() for b in bl if b < dblocks})
    # One command per block: `blockuse -c N` stops at an AG's end, and daddr (512-byte units,
    # linear) spares us the AG-encoded fsblock numbers.
    script = "blockget -n\n" + "".join(f"daddr {b * bs // 512}\nblockuse -n\n" for b in blocks)
    text = _out(run(["xfs_db", "-r", device], input=script.encode(), env=_C, check=False,
                    timeout=TOOL_TIMEOUT))
    kinds: dict[int, str] = {}
    for m in _XFS_LINE.finditer(text):
        block = int(m.group(1)) * agblocks + int(m.group(2))
        kind, ino, path = m.group(3), m.group(4), m.group(5)
        if kind in _XFS_FREE:
            kinds[block] = FREE
        elif kind in _XFS_FILE and ino:
            kinds[block] = "/" + path.lstrip("/") if path else f"(inode {ino}, no name found)"
        else:
            kinds[block] = METADATA  # sb, agf, agi, agfl, free-space/inode btrees, inodes, log
    return _collect(per_range, cut, kinds.get)


# --- NTFS --------------------------------------------------------------------------------------

_NTFS_HIT = re.compile(r"^Inode (\d+) (.*)$", re.M)


def _ntfs(device: str, ranges: list[Range], budget: int) -> dict[Range, list[str]]:
    fd = os.open(device, os.O_RDONLY)
    try:
        boot = os.pread(fd, 512, 0)
    finally:
        os.close(fd)
    sector = int.from_bytes(boot[11:13], "little") if boot[3:11] == b"NTFS    " else 0
    if sector not in (512, 1024, 2048, 4096):
        return {}
    out: dict[Range, list[str]] = {}
    deadline = time.monotonic() + NTFS_SECONDS
    for r in ranges:
        if time.monotonic() > deadline:
            break
        first, last = r[0] // sector, (r[0] + r[1] - 1) // sector
        proc = run(["ntfscluster", "--force", "--sector", f"{first}-{last}", device], env=_C,
                   check=False, timeout=TOOL_TIMEOUT)
        text = _out(proc)
        names = {_ntfs_name(int(m.group(1)), m.group(2)) for m in _NTFS_HIT.finditer(text)}
        if names:
            out[r] = sorted(names)
        elif proc.returncode == 0 and "no inode found" in text:
            # Every allocated cluster of NTFS belongs to a file (metadata files included).
            out[r] = [FREE]
    return out


def _ntfs_name(ino: int, text: str) -> str:
    """'/dir/file.txt/$DATA' → '/dir/file.txt'; the $-files (inodes below 16, $Extend/...)
    are the filesystem's own metadata."""
    path = text.strip()
    head, _, last = path.rpartition("/")
    if last.startswith("$") and head:
        path = head
    top = path.lstrip("/").split("/", 1)[0]
    if ino < 16 or top.startswith("$"):
        return METADATA
    return path or "/"


# --- btrfs -------------------------------------------------------------------------------------

_CHUNK = re.compile(r"CHUNK_ITEM (\d+)\).*?\n\s+length (\d+) owner \d+ stripe_len \d+ type (\S+)"
                    r"(.*?)(?=\n\s+item |\Z)", re.S)
_STRIPE = re.compile(r"stripe \d+ devid \d+ offset (\d+)")
_ITEM = re.compile(r"^\s+item \d+ key \((\S+) (\S+) (\d+)\)")
_ROOT_IDS = {"ROOT_TREE": 1, "EXTENT_TREE": 2, "CHUNK_TREE": 3, "DEV_TREE": 4, "FS_TREE": 5}
_FS_ROOT_DIR = 256


def _dump_tree(device: str, tree: str | int) -> str:
    return _out(run(["btrfs", "inspect-internal", "dump-tree", "-t", str(tree), device], env=_C,
                    check=False, timeout=TOOL_TIMEOUT))


def _btrfs(device: str, ranges: list[Range], budget: int) -> dict[Range, list[str]]:
    """Physical → logical through the chunk tree (single and DUP profiles: one device), then
    the extent tree names the (subvolume, inode) owning a data extent, and the subvolume's
    tree its path. All read with dump-tree, no mount: a failing drive is not mounted."""
    spans: list[tuple[int, int, int, bool]] = []  # physical start, end, logical start, data?
    for m in _CHUNK.finditer(_dump_tree(device, "chunk")):
        logical, length, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        data = kind.split("|")[0] == "DATA"
        for st in _STRIPE.finditer(m.group(4)):
            spans.append((int(st.group(1)), int(st.group(1)) + length, logical, data))
    if not spans:
        return {}
    names: dict[Range, set[str]] = {}
    wanted: dict[Range, list[tuple[int, int]]] = {}  # logical intervals of data to resolve
    for r in ranges:
        lo, hi = r[0], r[0] + r[1]
        got = names.setdefault(r, set())
        covered = 0
        for s, e, logical, data in spans:
            a, b = max(s, lo), min(e, hi)
            if a >= b:
                continue
            covered += b - a
            if data:
                wanted.setdefault(r, []).append((logical + a - s, logical + b - s))
            else:
                got.add(METADATA)
        if lo < 1 << 20:
            got.add(METADATA)  # the first MiB: superblock at 64 KiB, nothing else allocated
        elif covered < hi - lo:
            got.add(FREE)  # not in any chunk: unallocated
    if wanted:
        _btrfs_data(device, wanted, names)
    return {r: sorted(n) for r, n in names.items() if n}


def _btrfs_data(device: str, wanted: dict[Range, list[tuple[int, int]]], names: dict[Range, set[str]]) -> None:
    extents: list[tuple[int, int]] = []  # logical start, length of data extents
    owners: dict[int, set[tuple[int, int]]] = {}  # extent start → (root, inode)
    shared: set[int] = set()
    current = 0
    for line in _dump_tree(device, "extent").splitlines():
        m = _ITEM.match(line)
        if m:
            current = int(m.group(1)) if m.group(1).isdigit() else -1
            if m.group(2) == "EXTENT_ITEM":
                extents.append((current, int(m.group(3))))
            continue
        line = line.strip()
        if line.startswith("extent data backref root "):
            f = line.split()
            owners.setdefault(current, set()).add((_root_id(f[4]), int(f[6])))
        elif line.startswith("shared data backref "):
            shared.add(current)
    extents.sort()
    starts = [s for s, _ in extents]
    need: dict[Range, set[tuple[int, int]]] = {}
    for r, intervals in wanted.items():
        for lo, hi in intervals:
            i = max(0, bisect.bisect_right(starts, lo) - 1)
            pos = lo
            while i < len(extents) and extents[i][0] < hi:
                s, n = extents[i]
                if s + n > lo:
                    if s > pos:
                        names[r].add(FREE)
                    pos = max(pos, s + n)
                    need.setdefault(r, set()).update(owners.get(s, ()))
                    if s in shared and not owners.get(s):
                        names[r].add("(shared extent: snapshot or reflink, owner not resolved)")
                i += 1
            if pos < hi:
                names[r].add(FREE)  # allocated chunk, no extent there
    roots = {root for pairs in need.values() for root, _ in pairs}
    paths = _btrfs_paths(device, roots)
    for r, pairs in need.items():
        for root, ino in pairs:
            names[r].update(paths.get((root, ino)) or [f"(subvolume {root} inode {ino}, no name found)"])


def _root_id(text: str) -> int:
    return _ROOT_IDS.get(text) or int(text)


def _btrfs_paths(device: str, roots: set[int]) -> dict[tuple[int, int], list[str]]:
    """(subvolume, inode) → paths, from INODE_REF items; a subvolume's own path from its
    ROOT_BACKREF (parent subvolume, directory, name) in the root tree."""
    refs: dict[int, dict[int, list[tuple[int, str]]]] = {}  # root → inode → [(parent, name)]

    def tree_refs(root: int) -> dict[int, list[tuple[int, str]]]:
        if root not in refs:
            out: dict[int, list[tuple[int, str]]] = {}
            key: tuple[int, int] | None = None
            for line in _dump_tree(device, root).splitlines():
                m = _ITEM.match(line)
                if m:
                    key = ((int(m.group(1)), int(m.group(3)))
                           if m.group(2) == "INODE_REF" and m.group(1).isdigit() else None)
                    continue
                if key and "name: " in line:
                    out.setdefault(key[0], []).append((key[1], line.split("name: ", 1)[1]))
            refs[root] = out
        return refs[root]

    backrefs: dict[int, tuple[int, int, str]] = {}  # subvolume → (parent root, dir inode, name)
    if any(r != 5 for r in roots):
        key = None
        for line in _dump_tree(device, "root").splitlines():
            m = _ITEM.match(line)
            if m:
                key = (_root_id(m.group(1)), int(m.group(3))) if m.group(2) == "ROOT_BACKREF" else None
                continue
            mm = re.search(r"dirid (\d+) sequence \d+ name (.*)$", line)
            if key and mm:
                backrefs[key[0]] = (key[1], int(mm.group(1)), mm.group(2))

    def dir_path(root: int, ino: int, depth: int = 0) -> str | None:
        if depth > 64:
            return None
        if ino == _FS_ROOT_DIR:
            if root == 5:
                return ""
            if root not in backrefs:
                return f"(subvolume {root})"
            parent, dirid, name = backrefs[root]
            above = dir_path(parent, dirid, depth + 1)
            return None if above is None else f"{above}/{name}"
        up = tree_refs(root).get(ino)
        if not up:
            return None
        parent, name = up[0]
        above = dir_path(root, parent, depth + 1)
        return None if above is None else f"{above}/{name}"

    out: dict[tuple[int, int], list[str]] = {}
    for root in roots:
        for ino, ups in tree_refs(root).items():
            paths = []
            for parent, name in ups:
                above = dir_path(root, parent)
                if above is not None:
                    paths.append(f"{above}/{name}")
            if paths:
                out[(root, ino)] = [" = ".join(sorted(paths))]
    return out


_FINDERS: dict[str, Callable[[str, list[Range], int], dict[Range, list[str]]]] = {
    "ext2": _ext, "ext3": _ext, "ext4": _ext, "xfs": _xfs, "ntfs": _ntfs, "btrfs": _btrfs,
}


# --- a whole drive -----------------------------------------------------------------------------

def range_key(start: int, length: int) -> str:
    """How a range is named in badfiles.json and by `rescue info`: first-last byte, inclusive."""
    return f"{start}-{start + length - 1}"


def annotate(source_path: str, areas: Iterable, bad_ranges: Sequence[Range],
             log: Callable[[str], None] = lambda m: None) -> dict[str, list[str]]:
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
        if not supported(fstype):
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
        log(f"{area.name}: files hit by bad sectors looked up for {len(found)} of {len(local)} ranges "
            f"({time.monotonic() - began:.1f} s)")
    return result


def damaged_files(hits: dict[str, list[str]]) -> list[str]:
    """Every file named in `hits`, once: the list a person acts on (restore these from a
    backup), whatever the number of bad ranges."""
    return sorted({n for names in hits.values() for n in names if not n.startswith("(")})


def write_badfiles(image_dir: str | Path, hits: dict[str, list[str]]) -> None:
    """badfiles.json beside the image: {"version": 1, "ranges": {"first-last": [names]}}."""
    path = Path(image_dir) / BADFILES
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "ranges": hits}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_badfiles(image_dir: str | Path) -> dict[str, list[str]]:
    """What write_badfiles stored; {} when absent or unreadable (older images have none)."""
    try:
        body = json.loads((Path(image_dir) / BADFILES).read_text())
        ranges = body["ranges"]
        return {str(k): [str(n) for n in v] for k, v in ranges.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}

"""btrfs: everything we know about it, in the class `Btrfs`. The used-block map comes from
the extent tree, mapped to this device through the chunk tree (`btrfs inspect-internal
dump-tree -t chunk` and `-t extent`); `btrfs filesystem resize` resizes it while mounted,
btrfstune renumbers it, and the same trees name the files a bad block hits.

Every tree block and every data extent has an item in the extent tree: EXTENT_ITEM (key =
logical bytenr, length) or, for tree blocks on skinny-metadata filesystems, METADATA_ITEM
(key = logical bytenr, level; length = nodesize). That covers the chunk tree, the free-space
tree (v2) and the free-space cache inodes (v1, stored as data extents) too. Logical addresses
become device offsets through the chunk tree: each CHUNK_ITEM (logical start, length, profile)
lists its stripes as (devid, physical offset), and for single, DUP and the RAID1 family every
stripe on *this* device holds a full copy, so each copy gets the range: partclone 0.3.23 maps
only the first DUP copy, which is why a restore from its map fails scrub. RAID0/10/5/6 stripe
the logical range across devices in stripe_len pieces (with parity for 5/6); rather than model
that, such a chunk maps its whole device extent. Outside chunks btrfs keeps only the
superblock and its mirrors; the first MiB is added too (btrfs never allocates there, boot
loaders do).

Trust, but check: the extent tree also holds each block group's BLOCK_GROUP_ITEM with its
"used" byte count, which must equal the sum of the extents inside it (btrfs check tests the
same). A block group whose extents do not add up, or that has no BLOCK_GROUP_ITEM, is mapped
whole. The whole map falls back to the old chunk-granular one (every DEV_EXTENT of this
device, from `dump-tree -t dev`) when the extent or chunk tree cannot be read (the extent
tree lists nothing; the chunks' stripes on this device do not add up to the superblock's
dev_item.bytes_used) or does not tell the whole story: a tree log waiting for replay (log
tree blocks and the data they reference are not in the extent tree until the next mount),
extent tree v2 or a RAID stripe tree (formats this parser does not know). Zoned filesystems
map the whole volume (superblock logs live in reserved zones outside the device extents).

dump-tree's text is parsed as it streams, in large blocks with one regular expression, so a
filesystem with millions of extents costs memory for the merged runs only."""

from __future__ import annotations

import bisect
import re
import subprocess
import tempfile
import uuid as uuidlib
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from rescue.errors import FilesystemError
from rescue.filesystems.badfiles import C_LOCALE, TOOL_TIMEOUT
from rescue.filesystems.base import FREE, METADATA, Examined, Filesystem, FsInfo, Range, Volume, mib
from rescue.filesystems.resize import tool
from rescue.hw.run import run
from rescue.model.extents import Extent, MiB, normalize

SUPER_MIRRORS = (64 << 10, 64 << 20, 256 << 30, 1 << 50)
SUPER_SPAN = 64 << 10  # the superblock is 4 KiB; keep the whole 64 KiB slot, it costs nothing
RESERVED = MiB  # btrfs allocates nothing below 1 MiB
# Shrinking relocates chunks, which needs room for a few new chunks while the old ones
# still exist; one 1 GiB data chunk plus DUP metadata is a comfortable bound on big volumes.
MIN_MARGIN = 256 * MiB
MAX_MARGIN = 1536 * MiB
# The kernel's btrfs_resize() answers EINVAL below this, whatever the data.
MIN_RESIZE = 256 * MiB

BLOCK_GROUP_TREE = "11"  # tree id of the block group tree (compat_ro BLOCK_GROUP_TREE)
# Profiles whose every stripe is a whole copy of the chunk; the others stripe it.
COPY_PROFILES = {"single", "dup", "raid1", "raid1c3", "raid1c4"}
# Formats whose mapping is not (only) in the extent and chunk trees.
UNKNOWN_FORMATS = ("EXTENT_TREE_V2", "RAID_STRIPE_TREE")

SOURCE_EXTENTS = "btrfs extent tree + chunk tree"
SOURCE_DEV = "btrfs device tree (chunk-granular)"
SOURCE_ZONED = "btrfs zoned: whole volume"


@dataclass
class Super:
    fields: dict[str, str] = field(default_factory=dict)

    def num(self, name: str) -> int:
        try:
            return int(self.fields[name])
        except (KeyError, ValueError):
            raise FilesystemError(f"btrfs dump-super did not print {name}") from None

    def flags(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def zoned(self) -> bool:
        return "ZONED" in self.flags("incompat_flags")


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


# -- the device tree (fallback: chunk-granular) ---------------------------------------------

_KEY = re.compile(r"item \d+ key \((\d+) DEV_EXTENT (\d+)\)")
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


# -- the chunk tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One CHUNK_ITEM: logical [logical, logical + length) and where its stripes live."""

    logical: int
    length: int
    flags: str  # e.g. "METADATA|DUP", "DATA|single"
    stripes: tuple[tuple[int, int], ...]  # (devid, physical offset)
    sub_stripes: int = 1

    @property
    def end(self) -> int:
        return self.logical + self.length

    @property
    def profile(self) -> str:
        return self.flags.rsplit("|", 1)[-1].lower()

    @property
    def copies(self) -> bool:
        """Each stripe holds the whole logical range (single, DUP, RAID1*)."""
        return self.profile in COPY_PROFILES

    def stripe_length(self) -> int:
        """Bytes of one stripe on its device (the DEV_EXTENT length)."""
        n = len(self.stripes)
        data_stripes = {"raid0": n, "raid10": n // max(1, self.sub_stripes), "raid5": n - 1, "raid6": n - 2}.get(
            self.profile, 1
        )
        return -(-self.length // max(1, data_stripes))

    def on_device(self, devid: int) -> list[int]:
        return [phys for dev, phys in self.stripes if dev == devid]


_CHUNK = re.compile(r"item \d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)")
_CHUNK_HEAD = re.compile(r"^\s*length (\d+) owner \d+ stripe_len \d+ type (\S+)")
_SUB = re.compile(r"\bnum_stripes (\d+) sub_stripes (\d+)")
_STRIPE = re.compile(r"^\s*stripe \d+ devid (\d+) offset (\d+)")


@dataclass
class _ChunkItem:
    """A CHUNK_ITEM while its lines are read."""

    logical: int
    length: int | None = None
    flags: str = ""
    sub: int = 1
    stripes: list[tuple[int, int]] = field(default_factory=list)


def parse_chunks(text: str) -> list[Chunk]:
    """CHUNK_ITEMs from `dump-tree -t chunk` output, sorted by logical address."""
    out: list[Chunk] = []
    cur: _ChunkItem | None = None

    def flush() -> None:
        if cur and cur.length is not None and cur.stripes:
            out.append(Chunk(cur.logical, cur.length, cur.flags, tuple(cur.stripes), cur.sub))

    for line in text.splitlines():
        m = _CHUNK.search(line)
        if m:
            flush()
            cur = _ChunkItem(int(m.group(1)))
            continue
        if cur is None:
            continue
        if " key (" in line:  # any other item ends the chunk item
            flush()
            cur = None
            continue
        if m := _CHUNK_HEAD.match(line):
            cur.length, cur.flags = int(m.group(1)), m.group(2)
        elif m := _SUB.search(line):
            cur.sub = int(m.group(2))
        elif m := _STRIPE.match(line):
            cur.stripes.append((int(m.group(1)), int(m.group(2))))
    flush()
    return sorted(out, key=lambda c: c.logical)


# -- the extent tree ------------------------------------------------------------------------

_ITEM = re.compile(
    rb"\titem \d+ key \((\d+) (EXTENT_ITEM|METADATA_ITEM|BLOCK_GROUP_ITEM) (\d+)\)[^\n]*\n"
    rb"(?:\s*block group used (\d+))?"
)
_ITEM_START = b"\n\titem "


@dataclass
class ExtentScan:
    """Allocated logical ranges (touching ones merged) and each block group's "used" bytes
    as its BLOCK_GROUP_ITEM states them. Runs are kept in two arrays of 64-bit integers,
    16 bytes each, so that millions of scattered extents fit in memory."""

    starts: array[int] = field(default_factory=lambda: array("Q"))
    ends: array[int] = field(default_factory=lambda: array("Q"))
    bg_used: dict[int, int] = field(default_factory=dict)  # logical start -> used bytes
    items: int = 0
    _unsorted: bool = False

    def add(self, start: int, length: int) -> None:
        self.items += 1
        end = start + length
        if self.ends and self.starts[-1] <= start <= self.ends[-1]:
            if end > self.ends[-1]:
                self.ends[-1] = end
            return
        if self.ends and start < self.starts[-1]:
            self._unsorted = True
        self.starts.append(start)
        self.ends.append(end)

    def merged(self) -> tuple[array[int], array[int]]:
        """Run starts and ends, sorted and merged (dump-tree prints keys in order, but a
        damaged tree need not)."""
        if self._unsorted:
            runs = normalize((s, e - s) for s, e in zip(self.starts, self.ends, strict=True))
            self.starts, self.ends = array("Q", (e.start for e in runs)), array("Q", (e.end for e in runs))
            self._unsorted = False
        return self.starts, self.ends


def scan_extent_tree(blocks: Iterable[bytes], nodesize: int, scan: ExtentScan | None = None) -> ExtentScan:
    """Feed `dump-tree -t extent` output in arbitrary pieces. Only leaf items count
    ("\titem N key (...)"); the key lines of interior nodes ("\tkey (...) block ...") are
    copies of keys and are skipped by the pattern. A BLOCK_GROUP_ITEM's "used" is on the
    line after its key, so each piece is cut at the last item start and the rest carried
    over to the next one."""
    scan = scan or ExtentScan()
    tail = b""
    for block in blocks:
        buf = tail + block
        cut = buf.rfind(_ITEM_START)
        if cut <= 0:
            tail = buf
            continue
        tail = buf[cut:]
        _feed(scan, buf[: cut + 1], nodesize)
    _feed(scan, tail + b"\n", nodesize)
    return scan


def _feed(scan: ExtentScan, text: bytes, nodesize: int) -> None:
    for m in _ITEM.finditer(text):
        kind = m.group(2)
        if kind == b"EXTENT_ITEM":
            scan.add(int(m.group(1)), int(m.group(3)))
        elif kind == b"METADATA_ITEM":
            scan.add(int(m.group(1)), nodesize)
        elif m.group(4) is not None:
            scan.bg_used[int(m.group(1))] = int(m.group(4))


def scan_block_groups(text: bytes, scan: ExtentScan) -> None:
    """BLOCK_GROUP_ITEMs from the block group tree, which holds them instead of the extent
    tree on filesystems with the BLOCK_GROUP_TREE feature."""
    for m in _ITEM.finditer(text):
        if m.group(2) == b"BLOCK_GROUP_ITEM" and m.group(4) is not None:
            scan.bg_used[int(m.group(1))] = int(m.group(4))


# -- logical -> physical --------------------------------------------------------------------


@dataclass
class Mapped:
    extents: list[Extent]
    whole: list[tuple[Chunk, str]]  # chunks of this device mapped whole, and why


def map_to_device(chunks: Sequence[Chunk], scan: ExtentScan, devid: int) -> Mapped:
    """Physical ranges on device `devid` of every allocated extent. A chunk is mapped whole
    when its profile stripes, or when its extents do not add up to its block group's used
    bytes (a damaged or half-read extent tree must not lose data)."""
    starts, ends = scan.merged()
    out: list[Extent] = []
    whole: list[tuple[Chunk, str]] = []
    for c in chunks:
        phys = c.on_device(devid)
        if not phys:
            continue
        i = max(0, bisect.bisect_right(starts, c.logical) - 1)
        inside: list[tuple[int, int]] = []
        while i < len(starts) and starts[i] < c.end:
            s, e = max(starts[i], c.logical), min(ends[i], c.end)
            if e > s:
                inside.append((s, e))
            i += 1
        used = sum(e - s for s, e in inside)
        why = None
        if not c.copies:
            why = f"{c.profile} stripes across devices"
        elif c.logical not in scan.bg_used:
            why = "no block group item"
        elif scan.bg_used[c.logical] != used:
            why = f"extents add up to {used} bytes, block group says {scan.bg_used[c.logical]}"
        if why:
            whole.append((c, why))
            out += [Extent(p, c.stripe_length()) for p in phys]
            continue
        for p in phys:
            out += [Extent(p + s - c.logical, e - s) for s, e in inside]
    return Mapped(out, whole)


# -- running dump-tree ----------------------------------------------------------------------


def _stream(argv: list[str], block: int = 1 << 20) -> Iterator[bytes]:
    """stdout of a tool in blocks as it runs, for output too large to hold whole. Failure
    is a FilesystemError naming the tool and its last line of stderr, as hw.run.run does."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        except FileNotFoundError:
            raise FilesystemError(f"{argv[0]} is not installed") from None
        try:
            assert proc.stdout is not None
            while data := proc.stdout.read(block):
                yield data
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if code != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise FilesystemError(f"{argv[0]} failed: {lines[-1] if lines else f'exit status {code}'}")


def _dump_tree(dev: str, tree: str, sup: Super) -> list[str]:
    argv = ["btrfs", "inspect-internal", "dump-tree", "-t", tree]
    if sup.num("num_devices") == 1:
        argv.append("--noscan")  # never pick up another device with the same fsid (a copy)
    return argv + [dev]


def _dev_tree_map(dev: str, sup: Super) -> list[Extent]:
    tree = run(_dump_tree(dev, "dev", sup)).stdout.decode(errors="replace")
    extents = parse_dev_extents(tree, sup.num("dev_item.devid"))
    if not extents:
        raise FilesystemError("btrfs device tree lists no device extents for this device")
    return extents


def _extent_tree_map(dev: str, sup: Super) -> Mapped:
    chunks = parse_chunks(run(_dump_tree(dev, "chunk", sup)).stdout.decode(errors="replace"))
    devid = sup.num("dev_item.devid")
    # The chunks' stripes on this device must add up to what the superblock says this
    # device has allocated, or a chunk was missed (and its data with it).
    on_device = sum(c.stripe_length() * len(c.on_device(devid)) for c in chunks)
    if on_device != sup.num("dev_item.bytes_used"):
        raise FilesystemError(
            f"btrfs chunk tree puts {on_device} bytes on this device, "
            f"the superblock says {sup.num('dev_item.bytes_used')}"
        )
    scan = scan_extent_tree(_stream(_dump_tree(dev, "extent", sup)), sup.num("nodesize"))
    if "BLOCK_GROUP_TREE" in sup.flags("compat_ro_flags"):
        scan_block_groups(run(_dump_tree(dev, BLOCK_GROUP_TREE, sup)).stdout, scan)
    if not scan.items:
        raise FilesystemError("btrfs extent tree lists no extents")
    return map_to_device(chunks, scan, devid)


@dataclass
class Analysis:
    sup: Super
    extents: list[Extent]  # device extents in use, without the superblocks and first MiB
    source: str


def _fallback_reason(sup: Super) -> str | None:
    if sup.num("log_root") != 0:
        return "tree log not replayed"
    for name in UNKNOWN_FORMATS:
        if name in sup.flags("incompat_flags"):
            return f"{name.lower()} not supported"
    return None


def read_super(dev: str) -> Super:
    return parse_super(run(["btrfs", "inspect-internal", "dump-super", dev]).stdout.decode(errors="replace"))


def analyse(vol: Volume) -> Analysis:
    with vol.device() as dev:
        sup = read_super(dev)
        if sup.zoned:
            return Analysis(sup, [], SOURCE_ZONED)
        reason = _fallback_reason(sup)
        if reason is None:
            try:
                mapped = _extent_tree_map(dev, sup)
            except FilesystemError as e:
                reason = str(e)
            else:
                source = SOURCE_EXTENTS
                if mapped.whole:
                    n = len(mapped.whole)
                    source += f" ({n} chunk{'s' if n > 1 else ''} mapped whole: {mapped.whole[0][1]})"
                return Analysis(sup, mapped.extents, source)
        return Analysis(sup, _dev_tree_map(dev, sup), f"{SOURCE_DEV}: {reason}")


def _map(sup: Super, extents: list[Extent], size: int) -> list[Extent]:
    if sup.zoned:
        # Zoned btrfs keeps rotating superblock logs in reserved zones outside the device
        # extents; rather than model them, image everything.
        return [Extent(0, size)]
    extra = [Extent(0, RESERVED)] + [Extent(o, SUPER_SPAN) for o in SUPER_MIRRORS if o + 4096 <= size]
    return normalize(extents + extra, size)


def estimate_min_size(dev_bytes_used: int, size: int) -> int:
    """What `btrfs filesystem resize` could plausibly shrink to: the reserved first MiB, the
    device extents in use (dev_item.bytes_used), and a margin for relocating chunks (10 %,
    at least 256 MiB, at most 1.5 GiB), rounded up to a MiB; never more than the volume. An
    estimate, not a promise: the resize itself is what finally decides."""
    margin = min(max(dev_bytes_used // 10, MIN_MARGIN), MAX_MARGIN)
    need = RESERVED + dev_bytes_used + margin
    need = -(-need // MiB) * MiB
    return min(need, size)


class Btrfs(Filesystem):
    """btrfs (one device of it: this volume's devid)."""

    names = ("btrfs",)
    can_grow = True
    grow_fills = True
    can_shrink = True
    shrink_moves_data = True
    resize_floor = MIN_RESIZE
    mount_type = "btrfs"
    mount_ro = "ro,rescue=nologreplay"  # no tree-log replay: nothing is written
    mount_rw = "rw"
    image_store = "noatime"
    owners = True
    no_files = None
    mtools = False
    linux_config = True
    can_renumber = True
    can_name_files = True

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """The map's source is only known by building the map (the extent tree may turn out
        unreadable), so the facts come from the same walk: one dump-tree, not two."""
        a = analyse(vol)
        label = a.sup.fields.get("label") or None
        dev_used = a.sup.num("dev_item.bytes_used")
        info = FsInfo(
            type=self.type,
            uuid=a.sup.fields.get("fsid"),
            label=label,
            used_bytes=a.sup.num("bytes_used"),
            min_size=estimate_min_size(dev_used, vol.size),
            map_source=a.source,
        )
        return Examined(info, _map(a.sup, a.extents, vol.size))

    def shrink_check(self, min_size: int | None, new_size: int, *, current_size: int | None = None) -> None:
        if new_size < self.resize_floor:
            raise FilesystemError(
                f"cannot resize {self.type} to {mib(new_size)}: the kernel resizes btrfs to "
                f"no less than {mib(self.resize_floor)}"
            )
        super().shrink_check(min_size, new_size, current_size=current_size)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """Resized while mounted; to this device's size as the filesystem records it
        (dev_item.total_bytes), in whole sectors."""
        old = read_super(device).num("dev_item.total_bytes")
        new = new_size // 4096 * 4096
        if new < old:
            self.shrink_check(None, new)
        elif new < self.resize_floor:
            # The kernel refuses any resize to less than 256 MiB, growing included; the
            # filesystem stays valid at its old size inside the larger partition.
            return f"{self.type} on {device} kept at {mib(old)}: btrfs cannot be resized below {mib(self.resize_floor)}"
        if new != old:
            with self.mounted(device) as mnt:
                tool(["btrfs", "filesystem", "resize", str(new), mnt], device)
        return self._done(device, old, read_super(device).num("dev_item.total_bytes"), "btrfs filesystem resize")

    def new_uuid(self, device: str) -> str:
        """-U rewrites the fsid in every metadata block (slower than -M, which only records a
        metadata_uuid, but any kernel mounts the result). The kernel's cache of btrfs devices
        still lists this one under the old fsid: forget it."""
        new = str(uuidlib.uuid4())
        _forget(device)
        run(["btrfstune", "-f", "-U", new, device], timeout=None)
        _forget(device)
        return new

    def _mount_options(self, device: str, options: str) -> str:
        """A restored btrfs shares its fsid with the original and other copies: every
        unmounted btrfs device the kernel saw is forgotten and this one is pinned (device=),
        or the mount may use another."""
        _forget()
        return f"{options},device={device}"

    def _unmounted(self, device: str) -> None:
        """Forgotten again: a stale entry for a loop device detached next makes a later
        mount pick it."""
        _forget(device)

    def files_at(self, device: str, ranges: Sequence[Range], max_blocks: int) -> dict[Range, list[str]]:
        return _files_at(device, ranges)


def _forget(device: str | None = None) -> None:
    """`btrfs device scan --forget [DEV]`: drop unmounted devices from the kernel's list."""
    run(["btrfs", "device", "scan", "--forget", *([device] if device else [])], check=False)


# --- files hit by bad blocks ---------------------------------------------------------------------

_ITEM_KEY = re.compile(r"^\s+item \d+ key \((\S+) (\S+) (\d+)\)")
_ROOT_IDS = {"ROOT_TREE": 1, "EXTENT_TREE": 2, "CHUNK_TREE": 3, "DEV_TREE": 4, "FS_TREE": 5}
_FS_ROOT_DIR = 256


def _tree_text(device: str, tree: str | int) -> str:
    return run(
        ["btrfs", "inspect-internal", "dump-tree", "-t", str(tree), device],
        env=C_LOCALE,
        check=False,
        timeout=TOOL_TIMEOUT,
    ).stdout.decode(errors="replace")


def _files_at(device: str, ranges: Sequence[Range]) -> dict[Range, list[str]]:
    """Physical -> logical through the chunk tree (single and DUP profiles: one device), then
    the extent tree names the (subvolume, inode) owning a data extent, and the subvolume's
    tree its path. All read with dump-tree, no mount: a failing drive is not mounted."""
    spans: list[tuple[int, int, int, bool]] = []  # physical start, end, logical start, data?
    for c in parse_chunks(_tree_text(device, "chunk")):
        data = c.flags.split("|")[0] == "DATA"
        for _devid, phys in c.stripes:
            spans.append((phys, phys + c.length, c.logical, data))
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
        _data_owners(device, wanted, names)
    return {r: sorted(n) for r, n in names.items() if n}


def _data_owners(device: str, wanted: dict[Range, list[tuple[int, int]]], names: dict[Range, set[str]]) -> None:
    extents: list[tuple[int, int]] = []  # logical start, length of data extents
    owners: dict[int, set[tuple[int, int]]] = {}  # extent start -> (root, inode)
    shared: set[int] = set()
    current = 0
    for line in _tree_text(device, "extent").splitlines():
        m = _ITEM_KEY.match(line)
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
    paths = _paths(device, roots)
    for r, pairs in need.items():
        for root, ino in pairs:
            names[r].update(paths.get((root, ino)) or [f"(subvolume {root} inode {ino}, no name found)"])


def _root_id(text: str) -> int:
    return _ROOT_IDS.get(text) or int(text)


def _paths(device: str, roots: set[int]) -> dict[tuple[int, int], list[str]]:
    """(subvolume, inode) -> paths, from INODE_REF items; a subvolume's own path from its
    ROOT_BACKREF (parent subvolume, directory, name) in the root tree."""
    refs: dict[int, dict[int, list[tuple[int, str]]]] = {}  # root -> inode -> [(parent, name)]

    def tree_refs(root: int) -> dict[int, list[tuple[int, str]]]:
        if root not in refs:
            out: dict[int, list[tuple[int, str]]] = {}
            key: tuple[int, int] | None = None
            for line in _tree_text(device, root).splitlines():
                m = _ITEM_KEY.match(line)
                if m:
                    key = (
                        (int(m.group(1)), int(m.group(3)))
                        if m.group(2) == "INODE_REF" and m.group(1).isdigit()
                        else None
                    )
                    continue
                if key and "name: " in line:
                    out.setdefault(key[0], []).append((key[1], line.split("name: ", 1)[1]))
            refs[root] = out
        return refs[root]

    backrefs: dict[int, tuple[int, int, str]] = {}  # subvolume -> (parent root, dir inode, name)
    if any(r != 5 for r in roots):
        bkey: tuple[int, int] | None = None
        for line in _tree_text(device, "root").splitlines():
            m = _ITEM_KEY.match(line)
            if m:
                bkey = (_root_id(m.group(1)), int(m.group(3))) if m.group(2) == "ROOT_BACKREF" else None
                continue
            mm = re.search(r"dirid (\d+) sequence \d+ name (.*)$", line)
            if bkey and mm:
                backrefs[bkey[0]] = (bkey[1], int(mm.group(1)), mm.group(2))

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

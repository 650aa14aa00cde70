"""A Clonezilla image directory (ocs-sr savedisk), read: which drive, its partition table,
the bytes outside partitions it kept, and what stands for each partition.

What ocs-sr writes (scripts/sbin/ocs-functions of Clonezilla), for a drive DISK:

    disk                      the drive's kernel name(s): one line, "sda"
    parts                     the partitions imaged: "sda1 sda2 sda5"
    DISK-pt.sf                sfdisk --dump of the table (label, label-id, start, size, type,
                              uuid, name, attrs, bootable)
    DISK-pt.parted            parted's print in sectors: the drive's size is only here
    DISK-mbr                  sector 0 (boot code and MBR table)
    DISK-hidden-data-after-mbr  sectors 1 up to the first partition (MBR drives, -j2)
    DISK-gpt-1st, -gpt-2nd    the GPT's first 34 and last 33 sectors
    PART-ebr                  an extended partition's boot record (the table rewrites it)
    PART.FS-ptcl-img.COMP[.aa ...]  a partition's partclone image (FS: ext4, xfs, ntfs,
                              vfat, btrfs ...; "dd" for partclone.dd: the raw bytes)
    swappt-PART.info          a swap partition: no image, only UUID="..." and LABEL="..."
    blkid.list, dev-fs.list   blkid's and ocs's view of filesystems (UUID, LABEL, TYPE: read)
    blkdev.list, Info-*.txt   lsblk's tree; the command (Info-saved-by-cmd.txt: read), packages, DMI

File names carry the source's kernel names, so partitions are told by number. The table is
read the way rescue reads a drive's: the dump is written onto a sparse scratch file of the
drive's size by sfdisk and read back with rescue.hw.partitions.read_layout (same flags,
types and ids as a capture would record)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rescue.clonezilla.decompress import COMPRESSIONS, missing_piece
from rescue.errors import IntegrityError, RepoError, RescueError
from rescue.model.layout import DiskLayout

IMAGE_RE = re.compile(
    r"^(?P<part>.+?)\.(?P<fs>[A-Za-z0-9_+]+)-ptcl-img\.(?P<comp>[a-z0-9]+)(?:\.(?P<piece>[a-z]{2,}))?$"
)
OLD_IMAGE_RE = re.compile(r"^(?P<part>.+?)\.(?P<fs>[A-Za-z0-9_+]+)-img\.(?P<comp>[a-z0-9]+)(?:\.[a-z]{2,})?$")
PARTED_DISK_RE = re.compile(r"^Disk \S+: (\d+)s$", re.M)
PARTED_SECTOR_RE = re.compile(r"^Sector size \(logical/physical\): (\d+)B/(\d+)B$", re.M)
KEY_VALUE_RE = re.compile(r'([A-Z_]+)="([^"]*)"')
MAX_SMALL = 4 << 20  # the largest small file read whole (the post-MBR data is 1 MiB)


@dataclass
class PartImage:
    """What stands for one partition in the directory."""

    number: int
    name: str  # the source's kernel name, "sda1"
    kind: str  # "partclone", "dd" (raw bytes), "swapinfo" (a swap partition: UUID and label only)
    fstype: str | None = None  # blkid's TYPE
    uuid: str | None = None
    label: str | None = None
    compression: str = ""
    paths: list[Path] = field(default_factory=list)  # the image's pieces, in order


@dataclass
class CzDir:
    path: Path
    disk: str
    layout: DiskLayout
    parts: dict[int, PartImage]
    boot: dict[str, bytes]  # "mbr", "hidden-data-after-mbr", "gpt-1st": the bytes outside partitions kept
    command: str  # the ocs-sr command that saved it
    created: str  # ISO 8601, from the directory's files

    @property
    def name(self) -> str:
        return self.path.name


def is_image_dir(path: str | Path) -> bool:
    """Whether `path` is a Clonezilla image directory (rescue.hw.discover.clonezilla_dir:
    the wizard finds them with the same test)."""
    from rescue.hw.discover import clonezilla_dir

    return clonezilla_dir(str(path))


def _small(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SMALL + 1)
    except OSError as e:
        raise RepoError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_SMALL:
        raise IntegrityError(f"{path}: larger than any Clonezilla file of its kind")
    return data


def _text(path: Path) -> str:
    return _small(path).decode(errors="replace")


def part_number(disk: str, name: str) -> int:
    """sda5 -> 5, nvme0n1p3 -> 3, loop0p1 -> 1 (the name Clonezilla saved under the drive's)."""
    m = re.fullmatch(re.escape(disk) + r"p?([0-9]+)", name)
    if not m:
        raise IntegrityError(f"partition {name} is not on drive {disk}")
    return int(m.group(1))


def read(path: str | Path) -> CzDir:
    """The directory read and checked: RepoError when it is no Clonezilla image of a drive,
    IntegrityError when a file it needs is missing or damaged."""
    p = Path(path)
    if not is_image_dir(p):
        raise RepoError(f"{p} is not a Clonezilla image directory (no disk or parts file, no *-pt.sf)")
    if not (p / "disk").is_file():
        raise RepoError(f"{p}: a Clonezilla image of partitions (saveparts), not of a drive; not supported yet")
    disks = _text(p / "disk").split()
    if len(disks) != 1:
        raise RepoError(f"{p}: holds images of {len(disks)} drives ({' '.join(disks)}); one drive per image only")
    disk = disks[0]
    sf = p / f"{disk}-pt.sf"
    parted = p / f"{disk}-pt.parted"
    for need in (sf, parted, p / "parts"):
        if not need.is_file():
            raise IntegrityError(f"{p}: {need.name} is missing")
    layout = _layout(_text(sf), _text(parted), sf)
    parts = _parts(p, disk, _text(p / "parts").split(), layout)
    boot = {
        key: _small(p / f"{disk}-{key}")
        for key in ("mbr", "hidden-data-after-mbr", "gpt-1st")
        if (p / f"{disk}-{key}").is_file()
    }
    cmd = p / "Info-saved-by-cmd.txt"
    command = _text(cmd).strip() if cmd.is_file() else ""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.stat(sf).st_mtime))
    return CzDir(p, disk, layout, parts, boot, command, created)


def _layout(sf: str, parted: str, where: Path) -> DiskLayout:
    """The table of the dump, read as rescue reads a drive's (see the module's docstring)."""
    from rescue.hw.partitions import read_layout
    from rescue.hw.run import run

    size_m, sector_m = PARTED_DISK_RE.search(parted), PARTED_SECTOR_RE.search(parted)
    if not size_m or not sector_m:
        raise IntegrityError(f"{where.parent}: {where.name.replace('-pt.sf', '-pt.parted')} names no drive size")
    logical, physical = int(sector_m.group(1)), int(sector_m.group(2))
    if logical != 512:
        raise RepoError(f"{where.parent}: a drive with {logical}-byte sectors; only 512-byte sectors are supported yet")
    size = int(size_m.group(1)) * logical
    script = "".join(line + "\n" for line in sf.splitlines() if not line.startswith("device:"))
    with tempfile.TemporaryDirectory(prefix="rescue-cz-") as tmp:
        scratch = os.path.join(tmp, "table")
        try:
            with open(scratch, "wb") as f:
                f.truncate(size)
        except (OSError, OverflowError):  # a damaged size: larger than any file can be
            raise IntegrityError(f"{where.parent}: its -pt.parted names an impossible drive size ({size})") from None
        try:
            run(
                ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", scratch],
                input=script.encode(),
                error=IntegrityError,
            )
            layout = read_layout(scratch)
        except RescueError as e:
            raise IntegrityError(f"{where}: not a partition table sfdisk can write ({e})") from None
    layout.physical_sector_size = physical
    return layout


def _blkid(directory: Path) -> dict[str, dict[str, str]]:
    """blkid.list's facts by kernel name."""
    out: dict[str, dict[str, str]] = {}
    path = directory / "blkid.list"
    if path.is_file():
        for line in _text(path).splitlines():
            dev, _, rest = line.partition(":")
            out[os.path.basename(dev.strip())] = dict(KEY_VALUE_RE.findall(rest))
    return out


def _parts(directory: Path, disk: str, names: list[str], layout: DiskLayout) -> dict[int, PartImage]:
    files: dict[str, list[tuple[str, str, str, Path]]] = {}
    for f in directory.iterdir():
        m = IMAGE_RE.match(f.name)
        if m:
            files.setdefault(m.group("part"), []).append((m.group("fs"), m.group("comp"), m.group("piece") or "", f))
        elif OLD_IMAGE_RE.match(f.name) and not f.name.endswith(".info"):
            raise RepoError(f"{directory}: {f.name} is an image of Clonezilla 1.x (partimage/ntfsclone); not supported")
    facts = _blkid(directory)
    numbers = {p.number for p in layout.partitions}
    out: dict[int, PartImage] = {}
    for name in names:
        number = part_number(disk, name)
        if number not in numbers:
            raise IntegrityError(f"{directory}: partition {name} is imaged but not in {disk}-pt.sf")
        blk = facts.get(name, {})
        swap = directory / f"swappt-{name}.info"
        if name in files:
            out[number] = _image(directory, name, number, files[name], blk)
        elif swap.is_file():
            out[number] = _swap(swap, name, number)
        else:
            raise IntegrityError(f"{directory}: the image of partition {name} is missing (no {name}.*-ptcl-img.*)")
    for p in layout.partitions:  # swap is saved without being in `parts`
        for kernel_name in (f"{disk}{p.number}", f"{disk}p{p.number}"):
            info = directory / f"swappt-{kernel_name}.info"
            if p.number not in out and info.is_file():
                out[p.number] = _swap(info, kernel_name, p.number)
    return out


def _swap(info: Path, name: str, number: int) -> PartImage:
    """A swap partition: Clonezilla keeps its UUID and label only."""
    facts = dict(KEY_VALUE_RE.findall(_text(info)))
    return PartImage(number, name, "swapinfo", "swap", facts.get("UUID") or None, facts.get("LABEL") or None)


def _image(
    directory: Path, name: str, number: int, found: list[tuple[str, str, str, Path]], blk: dict[str, str]
) -> PartImage:
    kinds = {(fs, comp) for fs, comp, _, _ in found}
    if len(kinds) != 1:
        raise IntegrityError(f"{directory}: more than one image of partition {name}: {sorted(kinds)}")
    fs, comp = kinds.pop()
    if comp not in COMPRESSIONS:
        raise RepoError(f"{directory}: {found[0][3].name}: compression {comp!r} is not supported")
    pieces = sorted(found, key=lambda f: f[2])
    suffixes = [piece for _, _, piece, _ in pieces]
    if suffixes != [""]:
        if "" in suffixes:
            raise IntegrityError(f"{directory}: partition {name} has a whole image and split pieces")
        gap = missing_piece(suffixes)
        if gap is not None:
            stem = pieces[0][3].name.rsplit(".", 1)[0]
            raise IntegrityError(f"{directory}: {stem}.{gap} is missing (a piece of partition {number}'s image)")
    kind = "dd" if fs == "dd" else "partclone"
    fstype = blk.get("TYPE") or (None if kind == "dd" else fs)  # partclone's name is a blkid TYPE too
    return PartImage(
        number, name, kind, fstype, blk.get("UUID") or None, blk.get("LABEL") or None, comp, [f[3] for f in pieces]
    )

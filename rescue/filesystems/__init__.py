"""Per-filesystem knowledge behind one lookup.

Each filesystem is one class in one module (rescue/filesystems/<name>.py, a subclass of
base.Filesystem) holding everything we know about it: the blkid TYPEs it answers to, what it
allows (grow, shrink, mount, renumber...), its used-block map and facts, resize, new UUID,
mount options, the files a bad sector hits. Callers ask `lookup(fstype)` or `identify(vol)`
and never test type names themselves.

Adding a filesystem: a new module with its class, and one entry in FILESYSTEMS below (see
docs/filesystems.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rescue.filesystems.base import CAPABILITIES, Examined, Filesystem, FsInfo, Volume, probe
from rescue.filesystems.btrfs import Btrfs
from rescue.filesystems.ext import Ext
from rescue.filesystems.fat import Fat
from rescue.filesystems.lvm import LvmPv
from rescue.filesystems.ntfs import Ntfs
from rescue.filesystems.swap import Swap
from rescue.filesystems.whole import ImagedWhole
from rescue.filesystems.xfs import Xfs
from rescue.model.extents import Extent

__all__ = ["FILESYSTEMS", "Examined", "Filesystem", "FsInfo", "Identified", "Volume", "identify", "lookup", "probe"]

# The registration: one entry per filesystem class.
FILESYSTEMS: tuple[type[Filesystem], ...] = (Ext, Xfs, Btrfs, Fat, Ntfs, Swap, LvmPv, ImagedWhole)


def _by_type(classes: tuple[type[Filesystem], ...]) -> dict[str, type[Filesystem]]:
    """Type name -> class, refusing (at import, so no test run can miss it) a class that
    leaves a capability unanswered or a type name that two classes claim."""
    out: dict[str, type[Filesystem]] = {}
    for cls in classes:
        missing = [c for c in CAPABILITIES if not hasattr(cls, c)]
        if missing:
            raise TypeError(f"{cls.__name__} does not say {', '.join(missing)}")
        for name in cls.names:
            if name in out:
                raise TypeError(f"{name!r} is claimed by both {out[name].__name__} and {cls.__name__}")
            out[name] = cls
    return out


_BY_TYPE = _by_type(FILESYSTEMS)


def lookup(fstype: str | None) -> Filesystem | None:
    """The class that handles a blkid TYPE (as a manifest or blkid spells it), bound to that
    name; None for an unknown or missing type (LUKS, LVM, swsuspend, unformatted...)."""
    cls = _BY_TYPE.get(fstype or "")
    return cls(fstype) if cls is not None and fstype else None


@dataclass(frozen=True)
class Identified:
    """What a volume holds: its facts (None: unformatted or not a filesystem), the class that
    handles it (None: unknown to us, imaged whole) and its used-block map from the same read
    of the metadata (None when there is no class)."""

    info: FsInfo | None
    fs: Filesystem | None
    extents: list[Extent] | None

    def __iter__(self) -> Iterator[FsInfo | Filesystem | None]:
        """Unpacks as (info, fs), the pair identify returned before it carried the map."""
        return iter((self.info, self.fs))


def identify(vol: Volume) -> Identified:
    """Probe the volume with blkid, then have its class read the metadata once for both the
    facts and the used-block map. Raises FilesystemError (RescueError) for a filesystem whose
    metadata cannot be read: the caller images it whole."""
    found = probe(vol)
    known = found.get("TYPE") in _BY_TYPE  # also the classes of an LVM PV, LUKS, md (USAGE raid, crypto)
    if (found.get("USAGE") not in ("filesystem", "other") and not known) or "TYPE" not in found:
        return Identified(None, None, None)
    fs = lookup(found["TYPE"])
    if fs is None:
        return Identified(FsInfo(type=found["TYPE"], uuid=found.get("UUID"), label=found.get("LABEL")), None, None)
    examined = fs.examine(vol, found)
    return Identified(examined.info, fs, examined.extents)

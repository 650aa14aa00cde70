"""Per-filesystem knowledge behind one lookup: detect what a volume holds, and ask its
module for the used-block map and facts (UUID, label, used bytes, minimum size)."""

from __future__ import annotations

import importlib

from rescue.filesystems.base import FilesystemModule, FsInfo, Volume
from rescue.hw.run import run

_MODULES = ("ext", "xfs", "btrfs", "fat", "ntfs", "swap")


def probe(vol: Volume) -> dict[str, str]:
    """blkid's low-level probe of the volume (works without udev and without a loop device)."""
    proc = run(["blkid", "-p", "-o", "export", "-O", str(vol.offset), "-S", str(vol.size), vol.path],
               check=False)
    out = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def module_for(fstype: str | None) -> FilesystemModule | None:
    if not fstype:
        return None
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"rescue.filesystems.{name}")
        except ModuleNotFoundError:
            continue
        if fstype in mod.TYPES:
            return mod  # type: ignore[return-value]
    return None


def identify(vol: Volume) -> tuple[FsInfo | None, FilesystemModule | None]:
    """What the volume holds. (None, None) for an unformatted or unknown area."""
    found = probe(vol)
    if found.get("USAGE") not in ("filesystem", "other") or "TYPE" not in found:
        return None, None
    mod = module_for(found["TYPE"])
    if mod is None:
        return FsInfo(type=found["TYPE"], uuid=found.get("UUID"), label=found.get("LABEL")), None
    return mod.info(vol, found["TYPE"]), mod

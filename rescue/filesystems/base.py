"""What every filesystem module provides. The engine knows filesystems only through this.

A filesystem is looked at through a `Volume`: a path (block device or image file) plus the
byte offset and size of the partition inside it. Tools that need a device of their own get
a read-only loop device over exactly that range (`Volume.device()`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Protocol

from rescue.model.extents import Extent


@dataclass(frozen=True)
class Volume:
    path: str
    offset: int
    size: int

    @contextlib.contextmanager
    def device(self) -> Iterator[str]:
        """A read-only block device showing exactly this volume; detached on exit."""
        from rescue.hw.loop import attached

        with attached(self.path, offset=self.offset, size=self.size, readonly=True) as dev:
            yield dev

    def pread(self, length: int, offset: int) -> bytes:
        import os

        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, self.offset + offset)
        finally:
            os.close(fd)


@dataclass
class FsInfo:
    type: str  # ext4, xfs, btrfs, vfat, ntfs, swap ...
    uuid: str | None = None
    label: str | None = None
    used_bytes: int | None = None  # what the filesystem says is in use
    min_size: int | None = None  # smallest partition it can be shrunk to, if known
    map_source: str | None = None  # how the used-block map was obtained, e.g. "dumpe2fs"


class FilesystemModule(Protocol):
    """Each module in rescue/filesystems/ (ext.py, xfs.py, ...) exposes these names."""

    TYPES: tuple[str, ...]  # blkid TYPE values it handles

    def used_extents(self, vol: Volume) -> list[Extent]:
        """Byte ranges in use, relative to the volume start, from the filesystem's own
        allocation metadata. Need not be normalized; the caller adds the first/last MiB."""
        ...

    def info(self, vol: Volume, fstype: str) -> FsInfo:
        ...

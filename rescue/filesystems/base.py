"""What every filesystem class provides. The engine knows filesystems only through this.

One class per filesystem (rescue/filesystems/<name>.py), as partclone has one source file per
filesystem: everything we know about a filesystem lives in its class, and callers reach it
only through the registry (rescue.filesystems.lookup / identify). A caller never tests a type
name; it asks the class (`fs.can_shrink`, `fs.mount_ro`, `fs.new_uuid(dev)`).

A filesystem is looked at through a `Volume`: a path (block device or image file) plus the
byte offset and size of the partition inside it. Tools that need a device of their own get
a read-only loop device over exactly that range (`Volume.device()`).

Reading a filesystem's metadata is the expensive part (dumpe2fs, xfs_db freesp, btrfs
dump-tree, ntfscat $Bitmap), and facts, used-block map and minimum size all come from the
same metadata. So `examine` reads it once and answers both; `info` and `used_extents` exist
for callers that want only one of them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rescue.errors import FilesystemError
from rescue.hw import mounts as hwmounts
from rescue.hw.run import run
from rescue.model.extents import Extent

MiB = 1 << 20

Range = tuple[int, int]  # (byte offset, length), relative to the filesystem's start
# What files_at says of a range that hits no file (see rescue.filesystems.badfiles).
FREE = "(free space)"
METADATA = "(filesystem metadata)"
MORE = "(more blocks not examined)"


@dataclass(frozen=True)
class Volume:
    path: str
    offset: int
    size: int

    @contextlib.contextmanager
    def device(self) -> Iterator[str]:
        """A read-only block device showing exactly this volume; detached on exit."""
        with hwmounts.loop_attached(self.path, offset=self.offset, size=self.size, read_only=True) as dev:
            yield dev

    def pread(self, length: int, offset: int) -> bytes:
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


@dataclass(frozen=True)
class Examined:
    """One read of a filesystem's metadata, both ways the engine uses it."""

    info: FsInfo
    extents: list[Extent]  # byte ranges in use, relative to the volume start (see used_extents)


def probe(vol: Volume) -> dict[str, str]:
    """blkid's low-level probe of the volume (works without udev and without a loop device)."""
    proc = run(["blkid", "-p", "-o", "export", "-O", str(vol.offset), "-S", str(vol.size), vol.path], check=False)
    out = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def device_size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def mib(n: int) -> str:
    """Sizes in resize messages, as people and tests read them: "384.0 MiB"."""
    return f"{n / MiB:.1f} MiB"


# Every class answers each of these (a class attribute, no default in the base): the registry
# refuses a class that leaves one out, so a new filesystem cannot forget one silently.
CAPABILITIES = (
    "names",
    "can_grow",
    "grow_fills",
    "can_shrink",
    "shrink_moves_data",
    "resize_floor",
    "mount_type",
    "mount_ro",
    "mount_rw",
    "image_store",
    "owners",
    "no_files",
    "mtools",
    "linux_config",
    "can_renumber",
    "can_name_files",
)


@dataclass(frozen=True)
class Filesystem:
    """One filesystem kind, looked up by the blkid TYPE it was found as (`type`, e.g. "ext3"
    for the Ext class): messages name the type the person knows the partition by.

    Subclasses set every capability below and implement examine. What a filesystem cannot
    do (resize, renumber, name damaged files) keeps the base method, which refuses or
    answers nothing, and its capability says False."""

    type: str

    # blkid TYPEs this class handles (and the spellings other tools use for the same thing).
    names: ClassVar[tuple[str, ...]]
    # A restore may give it a larger partition (resize() then grows it, or leaves it valid).
    can_grow: ClassVar[bool]
    # A grow makes the filesystem use the new space (FAT: False, left at its size).
    grow_fills: ClassVar[bool]
    # A restore may give it a smaller partition, down to FsInfo.min_size.
    can_shrink: ClassVar[bool]
    # A shrink relocates data inside the filesystem. False: only the space past the last used
    # block can go (FAT), or nothing needs keeping (swap, recreated).
    shrink_moves_data: ClassVar[bool]
    # Bytes below which no resize can go whatever the data (btrfs: the kernel's 256 MiB).
    resize_floor: ClassVar[int]
    # `mount -t` value, None when there is nothing to mount (swap).
    mount_type: ClassVar[str | None]
    # Options for looking at an image or a failing drive: never writes, not even a journal
    # replay (browse, extract).
    mount_ro: ClassVar[str | None]
    # Options for a private read-write mount of a restored copy (tools that need it mounted,
    # rewriting fstab): the original with the same UUID may be mounted at the same time.
    mount_rw: ClassVar[str | None]
    # Options for a read-write mount that stores images (or files copied out of one) on it, a
    # technician's USB disk: noatime (reading never writes); None: rescue stores nothing there.
    image_store: ClassVar[str | None]
    # Holds a file's owner and mode bits as Linux has them (files copied onto it keep them).
    owners: ClassVar[bool]
    # Why it holds no files to browse (swap), None when it does.
    no_files: ClassVar[str | None]
    # mtools (and fusefat) read it from the partition's bytes, without a kernel driver (FAT):
    # extract copies with mcopy, an ESP is edited with mtools.
    mtools: ClassVar[bool]
    # May be a Linux root or /boot: holds fstab, crypttab or grub.cfg naming filesystems by
    # UUID, rewritten through a read-write mount when the ids change.
    linux_config: ClassVar[bool]
    # new_uuid() works.
    can_renumber: ClassVar[bool]
    # files_at() can name the files a byte range hits.
    can_name_files: ClassVar[bool]

    # --- reading -----------------------------------------------------------------------------

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """Facts (UUID, label, used bytes, minimum size, map source) and the used-block map
        from one read of the metadata: what capture needs. `probed` is blkid's answer for
        the volume when the caller has it (it spares a second probe for the label)."""
        raise NotImplementedError

    def info(self, vol: Volume, probed: Mapping[str, str] | None = None) -> FsInfo:
        return self.examine(vol, probed).info

    def used_extents(self, vol: Volume) -> list[Extent]:
        """Byte ranges in use, relative to the volume start, from the filesystem's own
        allocation metadata. The caller adds the first/last MiB. A class overrides this where
        the map alone costs less than examine (no minimum-size tool to run)."""
        return self.examine(vol).extents

    def min_size(self, vol: Volume) -> int | None:
        """FsInfo.min_size alone, for an image that did not record it (a Clonezilla image,
        rescue.clonezilla.minsize, read through a view of its stream where every byte read
        costs). A class overrides this where the minimum alone reads less than examine."""
        return self.examine(vol).info.min_size

    # --- resizing ----------------------------------------------------------------------------

    def shrink_check(self, min_size: int | None, new_size: int, *, current_size: int | None = None) -> None:
        """Refuse a size the filesystem cannot reach, before anything is written. min_size is
        FsInfo.min_size from the image (None: unknown, the resize itself decides);
        current_size lets a filesystem that cannot shrink be refused here rather than halfway
        through."""
        if min_size is not None and new_size < min_size:
            raise FilesystemError(
                f"cannot shrink {self.type} to {mib(new_size)} ({new_size} bytes): "
                f"it needs at least {mib(min_size)} ({min_size} bytes)"
            )

    def resize(self, device: str, new_size: int, *, label: str | None = None, uuid: str | None = None) -> str:
        """Make the filesystem on `device` fill new_size bytes (rounded down to what the
        filesystem can address). `device` must be at least new_size bytes; sizes are always
        passed to the tools explicitly, never "fill the device", so that a device larger than
        intended (the split device of a shrink, a partition rounded up) never decides the
        result. label and uuid are for filesystems that are recreated (swap); when absent
        they are read from the old one. Returns one line for the log."""
        if not (self.can_grow or self.can_shrink):
            raise FilesystemError(f"cannot resize a {self.type} filesystem: no resize method for this type")
        have = device_size(device)
        if have < new_size:
            raise FilesystemError(
                f"cannot resize {self.type} on {device} to {mib(new_size)}: the device holds only {mib(have)}"
            )
        return self._resize(device, new_size, label, uuid)

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        raise FilesystemError(f"cannot resize a {self.type} filesystem: no resize method for this type")

    def check(self, device: str) -> None:
        """Run the filesystem's own checker in repair mode where a tool insists on a freshly
        checked filesystem (resize2fs, tune2fs -U); FilesystemError when it cannot repair.
        Nothing for filesystems whose tools check for themselves."""

    def _done(self, device: str, old: int, new: int, tool: str) -> str:
        verb = "grown" if new > old else "shrunk" if new < old else "kept"
        return f"{self.type} on {device} {verb} from {mib(old)} to {mib(new)} ({tool})"

    # --- identity ----------------------------------------------------------------------------

    def new_uuid(self, device: str) -> str:
        """Give the filesystem on `device` (exactly the partition) a new random UUID; returns
        it as blkid will print it."""
        raise FilesystemError(f"no way to renumber {self.type}")

    # --- mounting ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def mounted(self, device: str, options: str | None = None) -> Iterator[str]:
        """A private mount of a restored filesystem (mount_rw unless `options` say otherwise),
        in a fresh directory, unmounted (lazily if busy) and removed on exit: for tools that
        work only on mounted filesystems, and for rewriting files on it."""
        if self.mount_type is None:
            raise FilesystemError(f"{self.type} cannot be mounted")
        opts = self._mount_options(device, options or self.mount_rw or "rw")
        mnt = tempfile.mkdtemp(prefix="rescue-mount-")
        try:
            with hwmounts.mounted(device, mnt, self.mount_type, opts) as where:
                yield where
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)
            self._unmounted(device)

    def _mount_options(self, device: str, options: str) -> str:
        """Hook before a private mount (btrfs pins the device); returns the options to use."""
        return options

    def _unmounted(self, device: str) -> None:
        """Hook after a private mount is gone."""

    # --- damaged files -----------------------------------------------------------------------

    def files_at(self, device: str, ranges: Sequence[Range], max_blocks: int) -> dict[Range, list[str]]:
        """For each (offset, length) byte range of the filesystem on `device`, the names of
        the files it hits, or FREE / METADATA (MORE when the block budget ran out). A range
        the lookup could not answer is absent; nothing at all ({}) where the filesystem has
        no way to tell. May raise RescueError/OSError (badfiles.files_hit turns that into {})."""
        return {}

"""Linux swap, in the class `Swap`: nothing but the header page is worth keeping; the rest is
scratch space the kernel rewrites after boot. Resizing it is running mkswap again with the
same UUID and label; it holds no files to browse.

The header is the first page: the "SWAPSPACE2" magic in its last 10 bytes, UUID and label
inside it. The page size is that of the machine that ran mkswap (4 KiB on x86, up to 64 KiB
elsewhere), so we find the magic rather than assume, and always keep the first 64 KiB.

A hibernation image replaces the magic (blkid then says TYPE="swsuspend"), which is not one
of Swap.names: such an area is imaged whole, never cut down to a header that would make the
restored machine resume from half an image."""

from __future__ import annotations

import contextlib
import struct
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass

from rescue.errors import FilesystemError
from rescue.filesystems.base import Examined, Filesystem, FsInfo, Volume, mib
from rescue.hw.run import run
from rescue.model.extents import Extent

HEADER_SPAN = 64 * 1024  # the largest page size mkswap uses; always kept
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
MAGIC = b"SWAPSPACE2"
MIN_PAGES = 10  # mkswap refuses fewer


@dataclass(frozen=True)
class SwapHeader:
    page_size: int
    version: int
    last_page: int
    uuid: str | None
    label: str | None


def parse_header(data: bytes) -> SwapHeader:
    """The header from the first bytes of the area (at least one page; 64 KiB covers all).
    Layout (linux/swap.h, union swap_header): bootbits[1024], version, last_page,
    nr_badpages (u32 each), uuid[16], volume_name[16]; magic at page_size - 10."""
    for page in PAGE_SIZES:
        if len(data) >= page and data[page - 10 : page] == MAGIC:
            break
    else:
        raise FilesystemError("no swap signature (SWAPSPACE2) found")
    version, last_page = struct.unpack_from("<II", data, 1024)
    if version != 1 and struct.unpack_from(">I", data, 1024)[0] == 1:  # a big-endian host's mkswap
        version, last_page = struct.unpack_from(">II", data, 1024)
    raw_uuid = data[1036:1052]
    raw_label = data[1052:1068].split(b"\x00", 1)[0]
    return SwapHeader(
        page_size=page,
        version=version,
        last_page=last_page,
        uuid=str(uuidlib.UUID(bytes=raw_uuid)) if any(raw_uuid) else None,
        label=raw_label.decode(errors="replace") or None,
    )


class Swap(Filesystem):
    names = ("swap",)
    can_grow = True  # recreated at the new size
    grow_fills = True
    can_shrink = True
    shrink_moves_data = False  # nothing in it survives a reboot
    resize_floor = 0  # mkswap's ten pages are FsInfo.min_size
    mount_type = None
    mount_ro = None
    mount_rw = None
    image_store = None
    owners = False
    no_files = "swap space holds no files"
    mtools = False
    linux_config = False
    can_renumber = True
    can_name_files = False

    def examine(self, vol: Volume, probed: Mapping[str, str] | None = None) -> Examined:
        """used_bytes is the header page. min_size is mkswap's smallest swap area (ten pages):
        restoring into less space than the original means running mkswap again with the same
        UUID and label, since the header's last_page must not point past the partition."""
        header = parse_header(vol.pread(HEADER_SPAN, 0))
        info = FsInfo(
            type=self.type,
            uuid=header.uuid,
            label=header.label,
            used_bytes=header.page_size,
            min_size=MIN_PAGES * header.page_size,
            map_source="swap header",
        )
        return Examined(info, [Extent(0, min(vol.size, max(HEADER_SPAN, header.page_size)))])

    def _resize(self, device: str, new_size: int, label: str | None, uuid: str | None) -> str:
        """Nothing in swap survives a reboot; a fresh header of the new size is the resize."""
        if uuid is None or label is None:
            with open(device, "rb") as f:
                head = f.read(HEADER_SPAN)
            with contextlib.suppress(FilesystemError):
                old = parse_header(head)
                uuid = uuid or old.uuid
                label = label if label is not None else old.label
        argv = ["mkswap"]
        if uuid:
            argv += ["-U", uuid]
        if label:
            argv += ["-L", label]
        run(argv + [device, str(new_size // 1024)])  # size in KiB, not the device's
        return f"swap on {device} recreated with {mib(new_size)} (mkswap, same UUID and label)"

    def new_uuid(self, device: str) -> str:
        new = str(uuidlib.uuid4())
        run(["swaplabel", "-U", new, device])
        return new

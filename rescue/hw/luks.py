"""A LUKS header (version 1 or 2) read from its own bytes: version, UUID, label, cipher and
where the encrypted payload starts. Nothing is opened, no key is asked for and cryptsetup
does not run: this is discovery, which must never open a volume behind the person's back.

LUKS1 (cryptsetup's docs/on-disk-format.pdf): "LUKS\\xba\\xbe", version u16 BE, cipher name
[32] at 8, cipher mode [32] at 40, hash spec [32] at 72, payload offset u32 BE (sectors) at
104, key bytes at 108, ..., UUID [40] at 168.
LUKS2 (docs/on-disk-format-luks2.pdf): the same magic and version field, header size u64 BE
at 8, label [48] at 24, UUID [40] at 168; the JSON metadata follows the 4096-byte binary
header and says where each data segment starts."""

from __future__ import annotations

import json
import struct

from rescue.errors import FilesystemError
from rescue.model.stack import SECTOR, LuksHeader

MAGIC = b"LUKS\xba\xbe"
BINARY_HEADER = 4096
MAX_HDR = 4 << 20  # LUKS2 metadata areas are at most 4 MiB


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")


def header_version(head: bytes) -> int | None:
    """1 or 2 for a LUKS header at the start of `head`, None for anything else."""
    if head[:6] != MAGIC or len(head) < 8:
        return None
    (version,) = struct.unpack_from(">H", head, 6)
    return version if version in (1, 2) else None


def parse_header(head: bytes) -> LuksHeader | None:
    """The header from the first bytes of the volume (LUKS2 needs its whole metadata area:
    read hdr_size bytes, 16 KiB by default). None when the volume is not LUKS."""
    version = header_version(head)
    if version is None:
        return None
    uuid = _text(head[168:208])
    if version == 1:
        (payload,) = struct.unpack_from(">I", head, 104)
        cipher = f"{_text(head[8:40])}-{_text(head[40:72])}"
        return LuksHeader(1, uuid, None, cipher, payload * SECTOR)
    (hdr_size,) = struct.unpack_from(">Q", head, 8)
    if not BINARY_HEADER < hdr_size <= MAX_HDR or len(head) < hdr_size:
        raise FilesystemError(f"LUKS2 header of {hdr_size} bytes: damaged, or not read whole")
    try:
        meta = json.loads(_text(head[BINARY_HEADER:hdr_size]))
        segments = meta["segments"]
        first = segments[min(segments, key=int)]
        offset, cipher = int(first["offset"]), str(first.get("encryption", "?"))
    except (ValueError, KeyError, TypeError) as e:
        raise FilesystemError(f"LUKS2 metadata cannot be read ({e})") from None
    return LuksHeader(2, uuid, _text(head[24:72]) or None, cipher, offset)


def hdr_size(head: bytes) -> int:
    """How many bytes parse_header needs, from the first 4 KiB."""
    if header_version(head) == 2:
        (size,) = struct.unpack_from(">Q", head, 8)
        return min(MAX_HDR, int(size))
    return BINARY_HEADER

"""Linux swap: only the header is imaged. Synthetic headers (no root), and real ones from
mkswap whose copy (header only, into zeros) blkid and swaplabel must read back the same."""

from __future__ import annotations

import random
import struct
import uuid as uuidlib
from pathlib import Path

import pytest
from disks import MiB, sh

from rescue.errors import FilesystemError
from rescue.filesystems import identify, lookup, probe, swap
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent

SWAP = lookup("swap")  # the class the registry hands out for this filesystem

root = pytest.mark.root
UUID = "0b5e2a3c-93c4-4f7e-a1d2-5c6b7a8f9e01"


def header(page=4096, label=b"myswap", uid=UUID, magic=swap.MAGIC, endian="<") -> bytes:
    b = bytearray(65536)
    struct.pack_into(endian + "III", b, 1024, 1, 8191, 0)
    b[1036:1052] = uuidlib.UUID(uid).bytes if uid else bytes(16)
    b[1052 : 1052 + len(label)] = label
    b[page - len(magic) : page] = magic
    return bytes(b)


@pytest.mark.parametrize("page", swap.PAGE_SIZES)
def test_header_at_any_page_size(page):
    h = swap.parse_header(header(page=page))
    assert (h.page_size, h.version, h.last_page, h.uuid, h.label) == (page, 1, 8191, UUID, "myswap")


def test_header_without_uuid_or_label_and_big_endian():
    h = swap.parse_header(header(label=b"", uid=None, endian=">"))
    assert (h.version, h.last_page, h.uuid, h.label) == (1, 8191, None, None)


def test_hibernation_image_is_not_swap():
    """A suspended system's image must be imaged whole, never cut to the header."""
    with pytest.raises(FilesystemError):
        swap.parse_header(header(magic=b"S1SUSPEND\x00"))
    assert lookup("swsuspend") is None


def test_old_or_missing_signature_is_one_line_error():
    for data in (header(magic=b"SWAP-SPACE"), bytes(65536), b"short"):
        with pytest.raises(FilesystemError) as err:
            swap.parse_header(data)
        assert "\n" not in str(err.value)


def garbage_file(path: Path, size: int) -> None:
    """Random bytes everywhere: what the map leaves out must not matter."""
    rnd = random.Random(9)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rnd.randbytes(MiB))


def copy_extents(vol: Volume, extents: list[Extent], dest: Path) -> Volume:
    with open(vol.path, "rb") as src, open(dest, "wb") as dst:
        dst.truncate(vol.size)
        for e in extents:
            src.seek(vol.offset + e.start)
            dst.seek(e.start)
            dst.write(src.read(e.length))
    return Volume(str(dest), 0, vol.size)


def swaplabel(path: str) -> str:
    return sh("swaplabel", path)


@root
def test_copy_of_the_header_is_the_same_swap(tmp_path):
    path = tmp_path / "swap.img"
    garbage_file(path, 32 * MiB)
    sh("mkswap", "-L", "rescue-swap", "-U", UUID, str(path))
    vol = Volume(str(path), 0, 32 * MiB)

    assert SWAP.used_extents(vol) == [Extent(0, 64 * 1024)]
    facts = SWAP.info(vol)
    seen = probe(vol)
    assert (facts.uuid, facts.label) == (seen["UUID"], seen["LABEL"]) == (UUID, "rescue-swap")
    assert (facts.used_bytes, facts.min_size, facts.map_source) == (4096, 40960, "swap header")

    copy = copy_extents(vol, SWAP.used_extents(vol), tmp_path / "copy.img")
    again = probe(copy)
    assert (again["TYPE"], again["UUID"], again["LABEL"]) == ("swap", UUID, "rescue-swap")
    assert swaplabel(copy.path) == swaplabel(str(path))
    assert f"UUID:  {UUID}" in swaplabel(copy.path)
    assert swap.parse_header(copy.pread(65536, 0)).last_page == 32 * MiB // 4096 - 1


@root
def test_swap_inside_a_bigger_file_at_an_offset(loops, tmp_path):
    path = tmp_path / "disk.img"
    garbage_file(path, 48 * MiB)
    offset, size = 5 * MiB + 4096, 24 * MiB
    dev = loops.attach(path, offset=offset, size=size)
    sh("mkswap", "-L", "inner", "-U", UUID, dev)
    vol = Volume(str(path), offset, size)

    found = identify(vol)
    assert found.fs == SWAP and (found.info.type, found.info.uuid, found.info.label) == ("swap", UUID, "inner")
    copy = copy_extents(vol, SWAP.used_extents(vol), tmp_path / "copy.img")
    again = probe(copy)
    assert (again["TYPE"], again["UUID"], again["LABEL"]) == ("swap", UUID, "inner")
    assert "LABEL: inner" in swaplabel(copy.path)

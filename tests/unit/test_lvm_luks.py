"""LUKS headers read from their bytes (rescue.hw.luks), version 1 and 2, built here as the
on-disk format documents lay them out (the root tier checks the reader against headers that
cryptsetup luksFormat wrote)."""

from __future__ import annotations

import json
import struct

import pytest

from rescue.errors import FilesystemError
from rescue.hw.luks import MAGIC, hdr_size, header_version, parse_header

MiB = 1 << 20
UUID = "1e0fb4cd-c0b7-4b93-84c7-2a766b17125b"


def luks1(payload_sectors: int = 4096) -> bytes:
    b = bytearray(4096)
    b[0:6] = MAGIC
    struct.pack_into(">H", b, 6, 1)
    b[8:11] = b"aes"
    b[40:51] = b"xts-plain64"
    b[72:78] = b"sha256"
    struct.pack_into(">II", b, 104, payload_sectors, 64)
    b[168 : 168 + len(UUID)] = UUID.encode()
    return bytes(b)


def luks2(meta: dict | str | None = None, size: int = 16384, label: bytes = b"cryptroot") -> bytes:
    b = bytearray(size)
    b[0:6] = MAGIC
    struct.pack_into(">HQ", b, 6, 2, size)
    b[24 : 24 + len(label)] = label
    b[168 : 168 + len(UUID)] = UUID.encode()
    if meta is None:
        meta = {"segments": {"0": {"type": "crypt", "offset": "16777216", "encryption": "aes-xts-plain64"}}}
    text = (meta if isinstance(meta, str) else json.dumps(meta)).encode()
    b[4096 : 4096 + len(text)] = text
    return bytes(b)


def test_luks1_header():
    h = parse_header(luks1())
    assert h is not None
    assert (h.version, h.uuid, h.label, h.cipher, h.data_offset) == (1, UUID, None, "aes-xts-plain64", 2 * MiB)
    assert hdr_size(luks1()) == 4096


def test_luks2_header_takes_the_first_data_segment():
    meta = {
        "segments": {
            "1": {"offset": "33554432", "encryption": "serpent-xts-plain64"},
            "0": {"offset": "16777216", "encryption": "aes-xts-plain64"},
        }
    }
    h = parse_header(luks2(meta))
    assert h is not None
    assert (h.version, h.uuid, h.label, h.cipher, h.data_offset) == (2, UUID, "cryptroot", "aes-xts-plain64", 16 * MiB)
    assert hdr_size(luks2()[:4096]) == 16384
    assert parse_header(luks2(label=b"")).label is None


@pytest.mark.parametrize("data", [bytes(4096), b"LUKS\xba\xbe\x00\x03" + bytes(4088), b"LUK"])
def test_not_luks_is_none(data):
    assert header_version(data) is None and parse_header(data) is None


@pytest.mark.parametrize(
    "data, words",
    [
        (luks2()[:8192], "LUKS2 header of 16384 bytes: damaged, or not read whole"),
        (luks2("{not json"), "LUKS2 metadata cannot be read"),
        (luks2({"segments": {}}), "LUKS2 metadata cannot be read"),
        (luks2({"segments": {"0": {"encryption": "aes"}}}), "LUKS2 metadata cannot be read"),
    ],
)
def test_damaged_luks2_is_one_line(data, words):
    with pytest.raises(FilesystemError, match=words) as err:
        parse_header(data)
    assert "\n" not in str(err.value)

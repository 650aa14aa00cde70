"""mountinfo as the kernel writes it, decoded by the one parser (rescue.hw.devices) that
rescue.hw.mounts and every ownership check read it through. The kernel escapes bytes
(\\ooo is one byte in octal), so a name is decoded as bytes, then as a file name."""

from __future__ import annotations

import os

import pytest

from rescue.hw import devices
from rescue.hw.mounts import OurLoop, OurMount, mount_at


def line(mountpoint: str, source: str = "/dev/loop7", mount_id: int = 50, fstype: str = "ext4") -> str:
    return f"{mount_id} 27 7:7 / {mountpoint} rw,relatime shared:1 - {fstype} {source} rw\n"


def test_escaped_utf8_bytes_and_space_decode_to_the_name():
    # "café x": é is the two bytes C3 A9, written as two octal escapes; the space as \040.
    [m] = devices.parse_mountinfo(line("/mnt/caf\\303\\251\\040x"))
    assert m.mountpoint == "/mnt/café x"
    assert os.fsencode(m.mountpoint) == "/mnt/café x".encode()


def test_unescaped_utf8_is_kept_and_mixes_with_escapes():
    # What real kernels write: non-ASCII bytes as they are, only space/tab/newline/\ escaped.
    [m] = devices.parse_mountinfo(line("/mnt/café\\040x"))
    assert m.mountpoint == "/mnt/café x"
    # One byte of é escaped, the other raw (read with os.fsdecode, it is a surrogate): one é.
    [m] = devices.parse_mountinfo(line("/mnt/caf\\303" + os.fsdecode(b"\xa9")))
    assert m.mountpoint == "/mnt/café"


def test_tab_newline_and_backslash():
    [m] = devices.parse_mountinfo(line("/mnt/a\\011b\\012c\\134d"))
    assert m.mountpoint == "/mnt/a\tb\nc\\d"


def test_the_source_is_decoded_too():
    [m] = devices.parse_mountinfo(line("/srv/x", source="/tmp/my\\040image\\303\\251.img"))
    assert m.source == "/tmp/my imageé.img"


def test_bytes_that_are_not_utf8_round_trip_like_file_names():
    # \377 is not UTF-8: it becomes a surrogate, as os.listdir would give the same name.
    [m] = devices.parse_mountinfo(line("/mnt/x\\377y"))
    assert os.fsencode(m.mountpoint) == b"/mnt/x\xffy"


@pytest.mark.parametrize("raw", ["/mnt/a\\8bc", "/mnt/a\\12", "/mnt/a\\", "/mnt/a\\777"])
def test_a_backslash_the_kernel_would_have_escaped_makes_the_table_unreadable(raw):
    """The kernel writes every backslash as \\134: a bare one (not octal, too short, trailing,
    more than a byte) means this is not the kernel's table, and the safety rules, which read
    it, must refuse rather than guess (tests/system/test_safety_fails_closed.py)."""
    with pytest.raises(ValueError, match="escape the kernel does not write"):
        devices.parse_mountinfo(line(raw))


def test_plain_names_pass_through():
    [m] = devices.parse_mountinfo(line("/mnt/plain"))
    assert m.mountpoint == "/mnt/plain"


def test_swaps_use_the_same_decoding():
    text = "Filename\tType\tSize\tUsed\tPriority\n/swap\\040caf\\303\\251 file 10 0 -3\n"
    assert devices.parse_swaps(text) == ["/swap café"]


def test_mount_at_finds_the_decoded_name_and_the_topmost_mount():
    table = devices.parse_mountinfo(
        line("/mnt/caf\\303\\251\\040x", source="/dev/loop7", mount_id=50)
        + line("/mnt/other", source="/dev/loop8", mount_id=51)
        + line("/mnt/caf\\303\\251\\040x", source="tmpfs", mount_id=52, fstype="tmpfs")
    )
    found = mount_at("/mnt/café x", table)
    assert found is not None and found.source == "tmpfs"  # mounted on top of ours: umount removes it
    assert mount_at("/mnt/café x/", table) is found  # the same directory, however it is written
    assert mount_at("/mnt/café", table) is None
    assert mount_at("/mnt/caf\\303\\251\\040x", table) is None  # never the escaped form


def test_records_survive_a_state_file():
    lo = OurLoop("/dev/loop3", "/run/rescue/mounts/k/areas/p2", 1 << 20, 4 << 20, ("file", 41, 7))
    assert OurLoop.from_json(lo.to_json()) == lo
    plain = OurLoop("/dev/loop4", "/tmp/x.img", 0, 0, None)
    assert OurLoop.from_json(plain.to_json()) == plain
    m = OurMount("/dev/loop3", "/mnt/café x")
    assert OurMount.from_json(m.to_json()) == m
    for bad in ("/dev/loop3", {"device": "/dev/loop3"}, {"device": 3, "backing_file": "/x"}, None):
        with pytest.raises(ValueError):
            OurLoop.from_json(bad)
    with pytest.raises(ValueError):
        OurMount.from_json({"where": "/mnt"})

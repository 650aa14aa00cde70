"""The bad-sector map and its ddrescue mapfile form."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from rescue.errors import IntegrityError
from rescue.model.badmap import BadSectorMap, Block, MapfileStatus, parse_mapfile, parse_mapfile_with_status, to_mapfile

MiB = 1 << 20


def manual_example() -> BadSectorMap:
    """The example mapfile of GNU ddrescue's manual (chapter 'Mapfile structure')."""
    m = BadSectorMap.new(0x168000)
    m.mark(0, 0x117000, "+")
    m.mark(0x117000, 0x200, "-")
    m.mark(0x117200, 0x1000, "/")
    m.mark(0x118200, 0x7E00, "*")
    return m


def test_marks_merge_into_runs_covering_the_whole_size():
    m = BadSectorMap.new(10 * 512)
    for s in range(10):
        m.mark(s * 512, 512, "+")
    m.mark(3 * 512, 512, "-")
    m.mark(4 * 512, 1024, "-")
    assert m.blocks == [Block(0, 1536, "+"), Block(1536, 1536, "-"), Block(3072, 2048, "+")]
    m.mark(0, 10 * 512, "+")
    assert m.blocks == [Block(0, 5120, "+")]


def test_mark_is_clipped_to_the_map():
    m = BadSectorMap.new(4096)
    m.mark(-512, 1024, "-")
    m.mark(4096 - 512, 4096, "-")
    assert m.bad_ranges() == [(0, 512), (3584, 512)]
    assert m.totals() == {"?": 3072, "*": 0, "/": 0, "-": 1024, "+": 0}


def test_random_marks_agree_with_a_per_sector_model():
    rnd = random.Random(7)
    sectors = 300
    m = BadSectorMap.new(sectors * 512)
    model = ["?"] * sectors
    for _ in range(2000):
        s = rnd.randrange(sectors)
        n = rnd.randint(1, 12)
        st = rnd.choice("?*/-+")
        m.mark(s * 512, n * 512, st)
        for k in range(s, min(s + n, sectors)):
            model[k] = st
    assert [m.status_at(k * 512) for k in range(sectors)] == model
    # Merged: no two neighbours share a status; contiguous from 0 to size.
    assert all(a.status != b.status and a.end == b.start for a, b in zip(m.blocks, m.blocks[1:]))
    assert m.bad_bytes() == 512 * model.count("-")
    assert parse_mapfile(m.to_mapfile()) == m


def test_mapfile_has_ddrescues_layout():
    text = to_mapfile(
        manual_example(),
        0x120000,
        "?",
        1,
        program="rescue 0.1.0",
        command_line="rescue capture /dev/fd0",
        start_time="2015-07-21 09:37:44",
        current_time="2015-07-21 09:38:19",
    )
    assert text == (
        "# Mapfile. Created by rescue 0.1.0\n"
        "# Command line: rescue capture /dev/fd0\n"
        "# Start time:   2015-07-21 09:37:44\n"
        "# Current time: 2015-07-21 09:38:19\n"
        "# Copying non-tried blocks... Pass 1 (forwards)\n"
        "# current_pos  current_status  current_pass\n"
        "0x00120000     ?               1\n"
        "#      pos        size  status\n"
        "0x00000000  0x00117000  +\n"
        "0x00117000  0x00000200  -\n"
        "0x00117200  0x00001000  /\n"
        "0x00118200  0x00007E00  *\n"
        "0x00120000  0x00048000  ?\n"
    )


def test_large_offsets_use_more_digits():
    m = BadSectorMap.new(32 << 40)
    m.mark(0x1234_5678_9A00, 512, "-")
    text = m.to_mapfile()
    assert "0x123456789A00  0x00000200  -\n" in text
    assert parse_mapfile(text) == m


def test_parse_reads_ddrescues_own_example_with_status_line():
    text = """\
     # Mapfile. Created by GNU ddrescue version 1.27
     # Command line: ddrescue -d -c18 /dev/fd0 fdimage mapfile
     # Start time:   2015-07-21 09:37:44
     # Current time: 2015-07-21 09:38:19
     # Copying non-tried blocks... Pass 1 (forwards)
     # current_pos  current_status  current_pass
     0x00120000     ?               1
     #      pos        size  status
     0x00000000  0x00117000  +
     0x00117000  0x00000200  -
     0x00117200  0x00001000  /
     0x00118200  0x00007E00  *
     0x00120000  0x00048000  ?
"""
    m, status = parse_mapfile_with_status(text)
    assert status == MapfileStatus(0x120000, "?", 1)
    assert m == manual_example()
    assert m.bad_ranges() == [(0x117000, 0x200)]
    assert m.bad_bytes() == 0x200
    assert m.missing_ranges() == [(0x117000, 0x168000 - 0x117000)]


def test_parse_accepts_decimal_octal_and_trailing_comments():
    m = parse_mapfile("0 + 1\n0 512 + # good\n512 01000 -\n1024 0x200 -\n")
    assert m.size == 1536
    assert m.blocks == [Block(0, 512, "+"), Block(512, 1024, "-")]


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "no status line"),
        ("0x0 + 1\n0x0 0x200 +\n0x400 0x200 -\n", "should start at 0x200"),
        ("0x0 + 1\n0x0 0x200 X\n", "line 2"),
        ("0x0 + 1\n0x0 0x0 +\n", "size 0"),
        ("0x0 + 1\n0x0 banana +\n", "'banana' is not a number"),
        ("0x0 Q 1\n", "line 1"),
        ("0x0 + 1\n0x0 0x200\n", "line 2"),
    ],
)
def test_parse_rejects_damaged_mapfiles_with_one_line(text, words):
    with pytest.raises(IntegrityError) as err:
        parse_mapfile(text)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_map_round_trips():
    m = BadSectorMap.new(0)
    assert parse_mapfile(m.to_mapfile()) == m


@pytest.mark.skipif(shutil.which("ddrescuelog") is None, reason="gddrescue not installed (config/apt-test.txt)")
def test_ddrescuelog_reads_our_mapfile(tmp_path):
    m = BadSectorMap.new(64 * MiB, "+")
    m.mark(MiB, 512, "-")
    m.mark(2 * MiB, 1000 * 512, "-")
    m.mark(10 * MiB, 4096, "*")
    m.mark(11 * MiB, 4096, "/")
    m.mark(60 * MiB, 4 * MiB, "?")
    path = tmp_path / "map"
    path.write_text(m.to_mapfile(12 * MiB, "*", 1))
    proc = subprocess.run(["ddrescuelog", "-t", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # ddrescuelog counts bytes in SI units; check its area counts and its list of bad sectors.
    assert "bad-sector:" in proc.stdout
    lines = {ln.split(":")[0].strip(): ln for ln in proc.stdout.splitlines() if ":" in ln}
    assert "in      2 area(s)" in lines["bad-sector"]
    assert "in      1 area(s)" in lines["non-trimmed"]
    assert "in      1 area(s)" in lines["non-scraped"]
    listed = subprocess.run(["ddrescuelog", "-b", "512", "-l", "-", str(path)], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    sectors = [int(x) for x in listed.stdout.split()]
    assert sectors == [MiB // 512] + list(range(2 * MiB // 512, 2 * MiB // 512 + 1000))

"""Resuming the bad-sector passes from an interrupted run's map (Passes.resume, what
rescue.imaging.resume hands back to a capture that runs again): over random failing devices
in memory, a job stopped after any number of chunks and resumed from its map as a ddrescue
mapfile gives every good byte and the exact map, and makes no failed read again of a sector
the stopped run had found bad, but the retry pass's (one sector, once per pass)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from test_badpass import PROPERTIES, SECTOR, SMALL, SMALL_CHUNK, MemoryDevice, drives, sectors_of, with_holes

from rescue.errors import UsageError
from rescue.model.badmap import BAD, FINISHED, BadSectorMap, parse_mapfile
from rescue.model.badpass import Passes


@PROPERTIES
@given(dev=drives(), retries=st.integers(0, 2), stop=st.integers(0, 8), data=st.data())
def test_a_resumed_job_reads_no_bad_sector_again_but_to_retry_it(dev, retries, stop, data):
    first = Passes(dev, retries=retries, **SMALL)
    chunks = list(range(0, dev.size, SMALL_CHUNK))
    for off in chunks[:stop]:
        first.read(off, SMALL_CHUNK)
    if stop > len(chunks) and data.draw(st.booleans()):
        first.finish()  # stopped after its passes, or in the middle of them: the same
    mapfile = first.map.to_mapfile(first.pos, first.phase, first.pass_)
    known = sectors_of(first.map.bad_ranges())
    seen = len(dev.log)

    again = Passes(dev, retries=retries, **SMALL)
    again.resume(parse_mapfile(mapfile))
    image = bytearray(dev.size)
    for off in chunks:
        got = again.read(off, SMALL_CHUNK)
        image[off : off + len(got.data)] = got.data
    for off, part in again.finish():
        image[off : off + len(part)] = part

    assert image == with_holes(dev.data, dev.bad)
    assert sectors_of(again.map.bad_ranges()) == dev.bad
    assert again.map.totals()[FINISHED] + again.map.totals()[BAD] == dev.size
    for off, n, res in dev.log[seen:]:
        if res == "EIO" and sectors_of([(off, n)]) & known:
            assert n <= SECTOR, (off, n)  # a retry of one sector (the last may be short)
    for s in known:
        assert sum(1 for off, n, res in dev.log[seen:] if res == "EIO" and off == s * SECTOR) <= retries


def test_a_map_of_another_size_is_refused():
    dev = MemoryDevice(bytes(8 * SECTOR))
    passes = Passes(dev)
    try:
        passes.resume(BadSectorMap.new(16 * SECTOR))
    except UsageError as e:
        assert "4096" in str(e) and "8192" in str(e)
    else:
        raise AssertionError("a map of another drive was taken")

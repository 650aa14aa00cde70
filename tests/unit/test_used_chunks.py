"""Which chunks of an area hold used bytes (rescue.imaging.chunkread.used_chunks): walked from
the used map, so a 2 TiB drive with little in use costs little; it must name exactly the
chunks that have a used byte, as asking every chunk would."""

from __future__ import annotations

import random
from dataclasses import dataclass

from rescue.imaging.chunkread import used_chunks, used_parts
from rescue.model.extents import Extent, normalize

CHUNK = 4096


@dataclass
class Area:
    offset: int
    size: int
    used: list[Extent] | None


def every_chunk(area: Area) -> list[int]:
    return [i for i in range(-(-area.size // CHUNK)) if used_parts(area, i * CHUNK, CHUNK)]


def test_the_chunks_with_a_used_byte_and_no_other():
    rng = random.Random(3)
    for _ in range(300):
        size = rng.randrange(1, 64) * 512 * rng.choice((1, 8, 64))
        runs = [(rng.randrange(size), rng.randrange(1, 3 * CHUNK)) for _ in range(rng.randrange(0, 12))]
        area = Area(0, size, normalize(runs, size))
        assert used_chunks(area, CHUNK) == every_chunk(area), area


def test_a_whole_area_is_every_chunk():
    assert used_chunks(Area(0, 5 * CHUNK + 512, None), CHUNK) == list(range(6))

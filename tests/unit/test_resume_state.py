"""The resume file of a stopped capture (rescue.imaging.resume), without a drive: it reads back
as written, a damaged or foreign one is not resumed from (the capture starts over), and the
plan digest changes when what the capture would read changes."""

from __future__ import annotations

import pytest

from rescue.errors import IntegrityError
from rescue.imaging import resume
from rescue.imaging.capture import AreaPlan
from rescue.model.badmap import BadSectorMap
from rescue.model.extents import Extent
from rescue.repo.index import Kind
from rescue.repo.store import Repository

MiB = 1 << 20


def state() -> resume.ResumeState:
    return resume.ResumeState(
        source={"size": 64 * MiB, "logical_sector_size": 512, "model": "WDC", "serial": "X1"},
        plan="ab" * 32,
        chunk_size=4 * MiB,
        done_bytes=24 * MiB,
        total_bytes=40 * MiB,
        chunks={"p1": {0: (Kind.DATA, bytes(range(32))), 3: (Kind.ZERO, bytes(32))}, "head": {}},
        mapfile=BadSectorMap.new(64 * MiB).to_mapfile(),
    )


def test_a_resume_file_reads_back_as_written(tmp_path):
    s = state()
    assert resume.ResumeState.from_json(s.to_json()) == s
    assert s.fraction == 0.6

    repo = Repository.create(tmp_path / "repo")
    repo.start_image("dying")
    repo.write_image_file("dying", resume.RESUME_FILE, s.to_json().encode())
    assert resume.load(repo, "dying") == s
    resume.discard(repo, "dying")
    assert resume.load(repo, "dying") is None
    assert not (tmp_path / "repo" / "images" / "dying" / resume.RESUME_FILE).exists()


@pytest.mark.parametrize(
    "text",
    [
        "{",
        '{"format": "rescue-resume", "version": 2}',
        '{"format": "something-else", "version": 1}',
        state().to_json().replace('"mapfile": "', '"mapfile": "0x0 0x0 ?\\n'),
        state().to_json().replace('"p1": "', '"p1": "!!'),
    ],
)
def test_a_damaged_or_foreign_resume_file_is_not_resumed_from(tmp_path, text):
    with pytest.raises(IntegrityError):
        resume.ResumeState.from_json(text)
    repo = Repository.create(tmp_path / "repo")
    repo.start_image("dying")
    repo.write_image_file("dying", resume.RESUME_FILE, text.encode())
    assert resume.load(repo, "dying") is None


def test_the_plan_digest_follows_what_would_be_read():
    area = AreaPlan("p1", MiB, 62 * MiB, partition=1, used=[Extent(0, 8 * MiB)])
    facts = [{"type": "ext4", "uuid": "1234"}]
    digest = resume.plan_digest([area], facts, 4 * MiB)
    assert resume.plan_digest([area], facts, 4 * MiB) == digest
    assert resume.plan_digest([area], facts, 1 * MiB) != digest
    assert resume.plan_digest([area], [{"type": "ext4", "uuid": "5678"}], 4 * MiB) != digest
    written = AreaPlan("p1", MiB, 62 * MiB, partition=1, used=[Extent(0, 9 * MiB)])
    assert resume.plan_digest([written], facts, 4 * MiB) != digest
    whole = AreaPlan("p1", MiB, 62 * MiB, partition=1, used=None)
    assert resume.plan_digest([whole], facts, 4 * MiB) != digest
    assert resume.identity({"path": "/dev/sdb", "size": 1, "model": "m", "serial": "s"}) == resume.identity(
        {"path": "/dev/sdc", "size": 1, "model": "m", "serial": "s"}
    )

"""Resuming an interrupted capture: what it read is kept, and the next run of the same capture
goes on from there (GNU ddrescue's mapfile resume, for a whole image).

Why: a dying drive costs 0.5-2 s per failed read and may die for good at any moment; a capture
that was stopped (Ctrl-C, SIGTERM, the machine lost power, the drive dropped off the bus) must
not start again from the first sector, nor make its failed reads again.

What is kept, and where: `images/NAME/resume.json` in the repository, beside the partial image
(its log.txt is there too). An image without a manifest does not exist (DESIGN.md), so a
partial image is never restored or listed as usable; `rescue list` shows it as incomplete and
`rescue prune` removes it with its chunks. Keeping it in the repository, not on the rescue
system, is what lets it survive a reboot of a live system (RAM only) and a move of the
repository drive to another machine. It holds:
- the source's identity (size, sector size, model, serial) and a digest of the capture plan
  (areas, their filesystems and used-block maps): a rerun resumes only when both match, so a
  different drive, or the same drive written to in between, starts over;
- the chunks already stored whose bytes are final: their index entries (DATA with its digest,
  or ZERO). The chunk files themselves are in the repository already (content addressed; they
  are fsynced before they count as stored);
- the drive's bad-sector map so far, as a ddrescue mapfile: what read fine, what failed and
  how far the passes got (rescue.model.badpass resumes from it).

A rerun finds it by the same repository and image name, checks the identity, does not read
the settled chunks again and hands the map to the passes: areas found bad are not read
again except by the retry pass. The good bytes of chunks that hold bad sectors (a few MiB) are
read again, since such a chunk is stored only once it is complete. It is saved at most every
second while reads fail (where each one lost costs seconds), every 30 s otherwise, and once
more when the capture is stopped; it is removed when the image is complete, and with the
partial image when a capture fails for another reason than an interruption (a full drive,
a repository that cannot be written): then nothing of it is worth resuming.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rescue.errors import IntegrityError, RescueError
from rescue.hw.badread import TolerantReader
from rescue.model.badmap import parse_mapfile
from rescue.model.extents import Extent, in_range, total
from rescue.repo.index import Index, Kind
from rescue.repo.store import Repository

RESUME_FILE = "resume.json"
VERSION = 1
MAX_RESUME = 64 << 20  # 1.3 million settled chunks
ENTRY = struct.Struct("<IB32s")  # chunk number, kind, digest
SETTLED_KINDS = (Kind.DATA, Kind.ZERO)
SAVE_AFTER_FAILURE = 1.0  # seconds between saves while reads fail
SAVE_EVERY = 30.0  # seconds between saves otherwise


class PlannedArea(Protocol):
    """What is needed of an area (capture's AreaPlan is one)."""

    name: str
    offset: int
    size: int
    used: list[Extent] | None


@dataclass
class ResumeState:
    source: dict[str, object]  # identity: size, logical_sector_size, model, serial
    plan: str  # plan_digest() of the plan it was made for
    chunk_size: int
    done_bytes: int  # used bytes in the settled chunks
    total_bytes: int  # used bytes of the whole plan
    chunks: dict[str, dict[int, tuple[Kind, bytes]]]  # area name -> chunk number -> entry
    mapfile: str  # the bad-sector map so far (ddrescue's format)

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0

    def to_json(self) -> str:
        areas = {
            name: base64.b64encode(b"".join(ENTRY.pack(i, int(k), d) for i, (k, d) in sorted(got.items()))).decode()
            for name, got in self.chunks.items()
        }
        return json.dumps(
            {
                "format": "rescue-resume",
                "version": VERSION,
                "source": self.source,
                "plan": self.plan,
                "chunk_size": self.chunk_size,
                "done_bytes": self.done_bytes,
                "total_bytes": self.total_bytes,
                "chunks": areas,
                "mapfile": self.mapfile,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ResumeState:
        """IntegrityError when it is not a resume file this version wrote."""
        try:
            doc = json.loads(text)
            if doc.get("format") != "rescue-resume" or doc.get("version") != VERSION:
                raise IntegrityError("not a resume file of this version")
            chunks: dict[str, dict[int, tuple[Kind, bytes]]] = {}
            for name, blob in doc["chunks"].items():
                raw = base64.b64decode(blob, validate=True)
                entries = chunks[str(name)] = {}
                for i, kind, digest in ENTRY.iter_unpack(raw):
                    entries[i] = (Kind(kind), digest)
            state = cls(
                dict(doc["source"]),
                str(doc["plan"]),
                int(doc["chunk_size"]),
                int(doc["done_bytes"]),
                int(doc["total_bytes"]),
                chunks,
                str(doc["mapfile"]),
            )
            parse_mapfile(state.mapfile)
            return state
        except (ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
            raise IntegrityError(f"resume file is damaged: {e}") from None


def plan_digest(areas: Sequence[PlannedArea], fs_facts: Sequence[dict | None], chunk_size: int) -> str:
    """What a capture will read, as one digest: the same drive, unchanged, plans the same."""
    doc = [
        [a.name, a.offset, a.size, None if a.used is None else [(e.start, e.length) for e in a.used], fs]
        for a, fs in zip(areas, fs_facts, strict=True)
    ]
    return hashlib.sha256(json.dumps([chunk_size, doc], sort_keys=True, default=str).encode()).hexdigest()


def identity(source_facts: dict) -> dict[str, object]:
    """The parts of a source's facts that tell one drive from another. Not its path: a
    failing drive that dropped off the bus often comes back under another name."""
    return {k: source_facts.get(k) for k in ("size", "logical_sector_size", "model", "serial")}


def load(repo: Repository, name: str) -> ResumeState | None:
    """The resume file of an interrupted capture `name`; None when there is none (or the
    image is complete). A damaged one is None too: the capture then starts over."""
    try:
        if repo.has_manifest(name):
            return None
        blob = repo.read_image_file(name, RESUME_FILE, MAX_RESUME)
        return None if blob is None else ResumeState.from_json(blob.decode())
    except (RescueError, UnicodeDecodeError):
        return None


def discard(repo: Repository, name: str) -> None:
    """Remove the resume file (the image is complete, or starts over)."""
    try:
        repo.storage.delete(repo.image_key(name, RESUME_FILE))
    except (OSError, RescueError):
        pass


class Checkpoint:
    """Saves a running capture's progress (see the module's docstring for when). The capture
    adds each area's index as it starts it."""

    def __init__(
        self,
        repo: Repository,
        name: str,
        source: dict[str, object],
        plan: str,
        areas: Sequence[PlannedArea],
        reader: TolerantReader,
    ):
        self.repo, self.name, self.source, self.plan, self.areas = repo, name, source, plan, areas
        self.reader = reader
        self.indexes: list[Index] = []
        self.settled: dict[str, dict[int, tuple[Kind, bytes]]] = {}  # from the interrupted run
        self.total = sum(used_bytes(a, 0, a.size) for a in areas)
        self._saved_at, self._failures_saved = time.monotonic(), 0

    def _failures(self) -> int:
        return self.reader.stats.read_errors + self.reader.stats.timeouts

    def maybe_save(self) -> None:
        """Save when enough time has passed since the last save (less when reads failed)."""
        wait = time.monotonic() - self._saved_at
        if wait >= SAVE_EVERY or (wait >= SAVE_AFTER_FAILURE and self._failures() > self._failures_saved):
            self.save()

    def save(self) -> ResumeState:
        self._saved_at, self._failures_saved = time.monotonic(), self._failures()
        state = self.state()
        self.repo.write_image_file(self.name, RESUME_FILE, state.to_json().encode())
        return state

    def state(self) -> ResumeState:
        """The chunks stored so far whose bytes are final (no byte of them missing from the
        map: one with a hole is stored again once the later passes are done)."""
        missing = self.reader.map.missing_ranges()
        starts = [s for s, _ in missing]
        chunks: dict[str, dict[int, tuple[Kind, bytes]]] = {}
        done = 0
        for area, index in zip(self.areas, self.indexes, strict=False):
            got = chunks[area.name] = {}
            for i, kind in enumerate(index.kinds):
                if kind not in SETTLED_KINDS:
                    continue
                start, length = index.span(i)
                lo, hi = area.offset + start, area.offset + start + length
                j = max(bisect.bisect_right(starts, lo) - 1, 0)
                if any(s < hi and s + n > lo for s, n in missing[j : j + 2]):
                    continue
                got[i] = (kind, index.digests[i])
                done += used_bytes(area, start, length)
        return ResumeState(
            self.source, self.plan, self.repo.chunk_size, done, self.total, chunks, self.reader.mapfile()
        )


def begin(
    repo: Repository,
    name: str,
    source_facts: dict,
    areas: Sequence[PlannedArea],
    fs_facts: Sequence[dict | None],
    reader: TolerantReader,
    earlier: ResumeState | None,
    log: Callable[[str], None],
) -> Checkpoint:
    """The checkpoint of a capture about to read; when `earlier` (the interrupted run's state)
    is of the same drive and plan, the reader goes on from its map and the checkpoint's
    `settled` says which chunks need no reading (those whose chunk file is still there)."""
    cp = Checkpoint(repo, name, identity(source_facts), plan_digest(areas, fs_facts, repo.chunk_size), areas, reader)
    if earlier is None:
        return cp
    if earlier.source != cp.source or earlier.plan != cp.plan or earlier.chunk_size != repo.chunk_size:
        log("the interrupted capture under this name was of another drive, or the drive changed since: starting over")
        discard(repo, name)
        return cp
    reader.resume(parse_mapfile(earlier.mapfile))
    cp.settled = {
        area: {i: (k, d) for i, (k, d) in got.items() if k == Kind.ZERO or repo.has_chunk(d)}
        for area, got in earlier.chunks.items()
    }
    log(
        f"resuming: {earlier.fraction:.0%} already read ({sum(map(len, cp.settled.values()))} chunks stored, "
        f"{reader.map.bad_bytes() // reader.sector_size} bad sectors known); areas found bad are not read again"
    )
    return cp


def used_bytes(area: PlannedArea, start: int, length: int) -> int:
    return length if area.used is None else total(in_range(area.used, start, start + length))

"""The bad-sector map of a drive, and GNU ddrescue's mapfile text format.

Why ddrescue's format: it is what people who rescue drives already know, and its tools
(`ddrescuelog -t` for a summary, `ddrescue -m` to limit a later run to the damaged areas)
read it. An image whose index says UNREADABLE for a chunk stores this map beside it so the
user can see which sectors are missing and go back to the drive with ddrescue.

The map covers [0, size) with contiguous, non-overlapping blocks, each with one status:

    '?' non-tried     '*' failed, non-trimmed     '/' failed, non-scraped
    '-' bad sector(s) '+' finished (read fine)

Only '+' means the bytes are known; everything else is missing (zero-filled in the image).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from rescue.errors import IntegrityError

NON_TRIED, NON_TRIMMED, NON_SCRAPED, BAD, FINISHED = "?", "*", "/", "-", "+"
BLOCK_STATUSES = NON_TRIED + NON_TRIMMED + NON_SCRAPED + BAD + FINISHED
# The status line's character names the phase in progress; 'F' and 'G' are ddrescue's fill and
# generate modes, accepted when reading a mapfile that ddrescue wrote.
PHASE_STATUSES = BLOCK_STATUSES + "FG"

PHASE_MESSAGES = {
    NON_TRIED: "Copying non-tried blocks... Pass {pass_} (forwards)",
    NON_TRIMMED: "Trimming failed blocks... (forwards)",
    NON_SCRAPED: "Scraping failed blocks... (forwards)",
    BAD: "Retrying bad sectors... Retry {pass_} (forwards)",
    "F": "Filling specified blocks...",
    "G": "Generating approximate mapfile...",
    FINISHED: "Finished",
}


@dataclass(frozen=True)
class Block:
    start: int
    length: int
    status: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class BadSectorMap:
    """Status of every byte of a drive, as merged runs. `blocks` always covers [0, size)."""

    size: int
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.blocks and self.size > 0:
            self.blocks = [Block(0, self.size, NON_TRIED)]
        self._check()
        self._starts = [b.start for b in self.blocks]

    def _index(self) -> list[int]:
        """Block starts, for bisecting. Kept in step by mark(); rebuilt if `blocks` was
        replaced from outside."""
        if len(self._starts) != len(self.blocks) or (self.blocks and self._starts[-1] != self.blocks[-1].start):
            self._starts = [b.start for b in self.blocks]
        return self._starts

    @classmethod
    def new(cls, size: int, status: str = NON_TRIED) -> BadSectorMap:
        return cls(size, [Block(0, size, status)] if size > 0 else [])

    def _check(self) -> None:
        pos = 0
        for b in self.blocks:
            if b.start != pos or b.length <= 0 or b.status not in BLOCK_STATUSES:
                raise ValueError(f"bad-sector map is not contiguous at {pos:#x}: {b}")
            pos = b.end
        if pos != self.size:
            raise ValueError(f"bad-sector map ends at {pos:#x}, not at its size {self.size:#x}")

    # -- changing it -------------------------------------------------------------------------

    def mark(self, start: int, length: int, status: str) -> None:
        """Give [start, start+length) one status, clipped to the map; neighbours of the same
        status merge, so the block list stays as short as the damage is scattered."""
        if status not in BLOCK_STATUSES:
            raise ValueError(f"unknown block status {status!r}")
        start, end = max(0, start), min(self.size, start + length)
        if end <= start:
            return
        starts = self._index()
        i = bisect.bisect_right(starts, start) - 1  # block holding `start`
        j = bisect.bisect_left(starts, end)  # first block starting at or after `end`
        first, last = self.blocks[i], self.blocks[j - 1]
        new: list[Block] = []
        if first.start < start:
            new.append(Block(first.start, start - first.start, first.status))
        new.append(Block(start, end - start, status))
        if last.end > end:
            new.append(Block(end, last.end - end, last.status))
        # Merge with the blocks just outside the replaced span.
        if i > 0 and self.blocks[i - 1].status == new[0].status:
            i -= 1
            new[0] = Block(self.blocks[i].start, self.blocks[i].length + new[0].length, new[0].status)
        if j < len(self.blocks) and self.blocks[j].status == new[-1].status:
            new[-1] = Block(new[-1].start, new[-1].length + self.blocks[j].length, new[-1].status)
            j += 1
        new = _merged(new)
        self.blocks[i:j] = new
        starts[i:j] = [b.start for b in new]

    # -- reading it --------------------------------------------------------------------------

    def status_at(self, offset: int) -> str:
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset:#x} is outside the map (size {self.size:#x})")
        i = bisect.bisect_right(self._index(), offset) - 1
        return self.blocks[i].status

    def ranges(self, statuses: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """(start, length) of the runs whose status is one of `statuses`, clipped to
        [start, end). Adjacent runs of different listed statuses are joined."""
        end = self.size if end is None else min(end, self.size)
        out: list[tuple[int, int]] = []
        for b in self.blocks:
            if b.end <= start or b.start >= end or b.status not in statuses:
                continue
            s, e = max(b.start, start), min(b.end, end)
            if out and out[-1][0] + out[-1][1] == s:
                out[-1] = (out[-1][0], e - out[-1][0])
            else:
                out.append((s, e - s))
        return out

    def bad_ranges(self) -> list[tuple[int, int]]:
        """The runs known to be unreadable ('-')."""
        return self.ranges(BAD)

    def bad_bytes(self) -> int:
        return sum(n for _, n in self.bad_ranges())

    def missing_ranges(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """Everything not read fine: bad, not yet trimmed/scraped, or never tried."""
        return self.ranges(NON_TRIED + NON_TRIMMED + NON_SCRAPED + BAD, start, end)

    def totals(self) -> dict[str, int]:
        """Bytes per status, every status present as a key."""
        out = {s: 0 for s in BLOCK_STATUSES}
        for b in self.blocks:
            out[b.status] += b.length
        return out

    # -- ddrescue's text format --------------------------------------------------------------

    def to_mapfile(
        self,
        current_pos: int = 0,
        current_status: str = FINISHED,
        current_pass: int = 1,
        *,
        program: str = "rescue",
        command_line: str | None = None,
        start_time: str | None = None,
        current_time: str | None = None,
    ) -> str:
        """The map as a ddrescue mapfile. Times are passed in (not read from the clock) so the
        text is a function of its arguments; lines whose value is None are left out."""
        return to_mapfile(
            self,
            current_pos,
            current_status,
            current_pass,
            program=program,
            command_line=command_line,
            start_time=start_time,
            current_time=current_time,
        )


def _merged(blocks: Iterable[Block]) -> list[Block]:
    out: list[Block] = []
    for b in blocks:
        if out and out[-1].status == b.status and out[-1].end == b.start:
            out[-1] = Block(out[-1].start, out[-1].length + b.length, b.status)
        else:
            out.append(b)
    return out


def to_mapfile(
    badmap: BadSectorMap,
    current_pos: int = 0,
    current_status: str = FINISHED,
    current_pass: int = 1,
    *,
    program: str = "rescue",
    command_line: str | None = None,
    start_time: str | None = None,
    current_time: str | None = None,
) -> str:
    """Layout as GNU ddrescue 1.27 writes it: comment heading, the status line
    `0x<pos>     <status>               <pass>`, then one `0x<pos>  0x<size>  <status>` line per
    merged block, hex upper case, at least 8 digits."""
    if current_status not in PHASE_STATUSES:
        raise ValueError(f"unknown phase status {current_status!r}")
    if current_pass < 1:
        raise ValueError(f"pass must be at least 1, not {current_pass}")
    lines = [f"# Mapfile. Created by {program}"]
    if command_line is not None:
        lines.append(f"# Command line: {command_line}")
    if start_time is not None:
        lines.append(f"# Start time:   {start_time}")
    if current_time is not None:
        lines.append(f"# Current time: {current_time}")
    lines.append("# " + PHASE_MESSAGES[current_status].format(pass_=current_pass))
    lines.append("# current_pos  current_status  current_pass")
    lines.append(f"0x{current_pos:08X}     {current_status}               {current_pass}")
    lines.append("#      pos        size  status")
    for b in _merged(badmap.blocks):
        lines.append(f"0x{b.start:08X}  0x{b.length:08X}  {b.status}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MapfileStatus:
    """The status line: where ddrescue was, in which phase, in which pass."""

    current_pos: int
    current_status: str
    current_pass: int


_COMMENT = re.compile(r"(^|\s)#.*$")


def _int(text: str, line_no: int) -> int:
    """A C++ integer constant, as ddrescue accepts: decimal, 0x hex, or 0-prefixed octal."""
    try:
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"0[0-7]+", text):
            return int(text, 8)
        if re.fullmatch(r"0|[1-9][0-9]*", text):
            return int(text, 10)
    except ValueError:
        pass
    raise IntegrityError(f"mapfile line {line_no}: {text!r} is not a number")


def parse_mapfile_with_status(text: str) -> tuple[BadSectorMap, MapfileStatus]:
    """Read a ddrescue mapfile. The map's size is the end of its last block (ddrescue's
    'mapfile extent'); blocks must be contiguous from 0, as ddrescue itself requires."""
    status: MapfileStatus | None = None
    blocks: list[Block] = []
    pos = 0
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        fields = line.split()
        if status is None:
            if len(fields) != 3 or fields[1] not in PHASE_STATUSES or not fields[2].isdigit():
                raise IntegrityError(f"mapfile line {line_no}: expected 'position status pass', got {raw.strip()!r}")
            status = MapfileStatus(_int(fields[0], line_no), fields[1], int(fields[2]))
            continue
        if len(fields) != 3 or fields[2] not in BLOCK_STATUSES:
            raise IntegrityError(f"mapfile line {line_no}: expected 'position size status', got {raw.strip()!r}")
        start, length = _int(fields[0], line_no), _int(fields[1], line_no)
        if start != pos:
            raise IntegrityError(f"mapfile line {line_no}: block at {start:#x} should start at {pos:#x}")
        if length <= 0:
            raise IntegrityError(f"mapfile line {line_no}: block at {start:#x} has size 0")
        blocks.append(Block(start, length, fields[2]))
        pos = start + length
    if status is None:
        raise IntegrityError("mapfile has no status line")
    return BadSectorMap(pos, _merged(blocks)), status


def parse_mapfile(text: str) -> BadSectorMap:
    return parse_mapfile_with_status(text)[0]

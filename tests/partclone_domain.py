"""partclone's --domain map (a ddrescue domain mapfile) as extents: the independent reference
our used-block maps are checked against."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rescue.model.extents import Extent, normalize


def parse_domain(text: str) -> list[Extent]:
    used = []
    in_blocks = False
    for line in text.splitlines():
        if line.startswith("#"):
            in_blocks = in_blocks or "pos" in line and "size" in line
            continue
        fields = line.split()
        if in_blocks and len(fields) == 3 and fields[2] == "+":
            used.append(Extent(int(fields[0], 16), int(fields[1], 16)))
    return normalize(used)


def partclone_used(tool: str, device: str, workdir: Path) -> list[Extent]:
    """Run e.g. tool='partclone.ext4' in domain mode on `device`."""
    out = Path(workdir) / f"{tool}.domain"
    subprocess.run(
        [tool, "-D", "-s", device, "-o", str(out), "-L", "/dev/null"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return parse_domain(out.read_text())


def uncovered(reference: list[Extent], ours: list[Extent]) -> list[Extent]:
    """Bytes the reference says are used that our map misses (must be empty: missing bytes
    would be lost on restore)."""
    from rescue.model.extents import in_range

    missing = []
    ours = normalize(ours)
    for ref in reference:
        covered = in_range(ours, ref.start, ref.end)
        pos = 0
        for c in covered:
            if c.start > pos:
                missing.append(Extent(ref.start + pos, c.start - pos))
            pos = c.end
        if pos < ref.length:
            missing.append(Extent(ref.start + pos, ref.length - pos))
    return missing

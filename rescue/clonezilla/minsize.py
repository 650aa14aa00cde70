"""The smallest size each filesystem of a Clonezilla image can shrink to: ocs-sr does not keep
it, so it is measured from the image itself, by the filesystem's own class (the very
`examine` capture runs on a drive: resize2fs -P, ntfsresize --info, ...) over a read-only
view of the partition's partclone image (rescue.clonezilla.view). One place decides a
filesystem's minimum size, whatever the image came from.

When: `import` measures every partition, so the imported image carries its minimums like a
captured one; a direct restore measures at plan time, only when the target is too small for
the partitions at their saved sizes (rescue.clonezilla.jobs.plan). A filesystem that cannot
shrink (XFS) is not measured: the source already holds its size as its minimum, and the plan
says why it keeps it. A measurement that fails leaves the minimum unknown, as before: the
partition keeps its size, and the line says why."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rescue.clonezilla.source import ClonezillaImage, CzArea
from rescue.errors import RescueError
from rescue.filesystems import lookup
from rescue.filesystems.base import Volume
from rescue.model.plan import human

if TYPE_CHECKING:
    from rescue.clonezilla.view import View


def unmeasured(image: ClonezillaImage) -> list[CzArea]:
    """Partitions a measurement can tell more about: a partclone image of a filesystem whose
    class can shrink it, minimum not known yet."""
    out = []
    for a in image.areas:
        fs = lookup((a.fs or {}).get("type"))
        kind = a.part.kind if a.part is not None else None
        if kind == "partclone" and fs is not None and fs.can_shrink and a.fs and a.fs.get("min_size") is None:
            out.append(a)
    return out


def measure(image: ClonezillaImage, scratch_dir: str | None = None) -> list[str]:
    """Measure the unmeasured partitions' minimum sizes into their facts (area.fs["min_size"],
    which the planner and an import's manifest take). Returns one line per partition, for the
    plan's notes and the import's log."""
    from rescue.clonezilla.view import partition_files

    areas = unmeasured(image)
    if not areas:
        return []
    lines = []
    try:
        with partition_files(image.cz.path, [a.name for a in areas], scratch_dir) as view:
            for a in areas:
                lines.append(_measure(a, view))
    except (RescueError, OSError) as e:
        lines.append(f"minimum sizes not measured ({e}): the partitions keep their sizes")
    return lines


def _measure(area: CzArea, view: View) -> str:
    assert area.fs is not None
    fs = lookup(area.fs["type"])
    assert fs is not None
    try:
        found = fs.min_size(Volume(str(view.files[area.name]), 0, area.size))
    except (RescueError, OSError) as e:
        return f"{area.label}: minimum size not measured ({view.failure() or e}): it keeps its size"
    if found is None:
        return f"{area.label}: {fs.type} names no minimum size for it: it keeps its size"
    area.fs["min_size"] = found
    return f"{area.label}: minimum size {human(found, 'up')}, measured in the Clonezilla image"

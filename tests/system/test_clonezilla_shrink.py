"""A Clonezilla image restored onto a drive too small for its partitions at their saved sizes
(issue 17): ocs-sr keeps no filesystem's minimum size, so rescue measures it in the image
(rescue.clonezilla.minsize, through rescue.clonezilla.view) with the filesystem classes'
own probes, at plan time for a direct restore and at import, and the planner then shrinks
the partitions as it does for a captured image.

The image: tests/clonezilla_images.py's MBR_SHRINK, saved by Debian's ocs-sr (zstd, one
frame): ext4 of 256 MiB and NTFS of 160 MiB, ending at 417 MiB of a 448 MiB drive, each with
a few MiB of files."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clonezilla_images import GPT_ZSTD, MBR_SHRINK, clonezilla_image  # noqa: E402
from disks import MiB, rescue  # noqa: E402
from drives import check_restored, table  # noqa: E402

from rescue.filesystems import lookup  # noqa: E402
from rescue.filesystems.base import Volume  # noqa: E402

SMALL = 240 * MiB  # fits only with both filesystems shrunk (each keeps 64 MiB over its minimum)


@pytest.fixture(scope="module")
def cz():
    return clonezilla_image(MBR_SHRINK)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_minimums(cz) -> dict[str, int | None]:
    """What capture records for the drive ocs-sr saved: the same classes on the drive itself."""
    return {
        f"p{p.number}": lookup(p.fs).info(Volume(str(cz.drive.image), p.offset, p.nbytes)).min_size
        for p in cz.drive.parts
    }


def restored_smaller(cz, loops, repo: str, name: str) -> None:
    """Plan and restore onto SMALL: the plan shows both shrinks, the drive holds every file,
    fsck clean, same ids, and both partitions are smaller than in the image."""
    target = loops.file(f"small-{Path(repo).name}.img", SMALL)
    dev = loops.attach(target)
    plan = rescue("plan", repo, name, dev, check=True).stdout
    assert "fits in 240 MiB" in plan and "#1 (ext4) shrinks 256 MiB" in plan and "#2 (ntfs) shrinks 160 MiB" in plan
    assert "and shrink it to" in plan, plan
    proc = rescue("restore", repo, name, dev, "--yes")
    assert proc.returncode == 0, proc.stderr
    check_restored(loops, cz.drive, str(target))
    sizes = [p["size"] for p in table(target)["parts"]]
    assert sizes[0] < 256 * 2048 and sizes[1] < 160 * 2048, sizes


def test_direct_restore_measures_and_shrinks(cz, loops):
    restored_smaller(cz, loops, str(cz.directory), cz.name)


def test_import_records_the_minimums_and_its_restore_shrinks(cz, loops, tmp_path):
    repo = tmp_path / "repo"
    rescue("import", str(cz.directory), str(repo), check=True)
    manifest = json.loads((repo / "images" / cz.name / "manifest.json").read_text())
    recorded = {a["name"]: a["fs"]["min_size"] for a in manifest["areas"] if a.get("fs")}
    assert recorded == source_minimums(cz), "measured in the image, not what capture finds on the drive"
    log = (repo / "images" / cz.name / "log.txt").read_text()
    assert "p1 (ext4): minimum size" in log and "measured in the Clonezilla image" in log
    restored_smaller(cz, loops, str(repo), cz.name)


def test_too_small_even_shrunk_is_refused_untouched(cz, loops):
    target = loops.file("tiny.img", 120 * MiB)
    with open(target, "r+b") as f:
        f.write(b"old contents")
    before = sha(target)
    dev = loops.attach(target)
    proc = rescue("restore", str(cz.directory), cz.name, dev, "--yes")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rescue: {dev} is too small"), proc.stderr
    assert sha(target) == before, "the target was written"


def test_what_cannot_shrink_says_why(loops):
    """XFS is not measured (it cannot shrink); the others are, and the plan says both."""
    gpt = clonezilla_image(GPT_ZSTD)
    dev = loops.attach(loops.file("small-gpt.img", 400 * MiB))
    plan = rescue("plan", str(gpt.directory), gpt.name, dev)
    assert plan.returncode == 3 and "DOES NOT FIT" in plan.stdout, plan.stdout
    assert "#2 (cz-xfs, xfs) needs at least 300 MiB (XFS cannot shrink)" in plan.stdout, plan.stdout
    for measured in ("p1 (ext4)", "p3 (btrfs)", "p4 (vfat)"):
        assert f"{measured}: minimum size" in plan.stdout, plan.stdout
    assert "p2 (xfs): minimum" not in plan.stdout

"""Bytes outside the partitions survive restore and clone: the gap after the MBR (GRUB's core
image on every BIOS Debian/Ubuntu install), the post-GPT gap, gaps between partitions and the
space after the last partition. Each is compared on the target with the source, at the place
the target's own table gives it: right after the partition it followed.

Expected places are computed here from sfdisk's view of both drives, not by the product's code."""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import pytest
from disks import MiB, partition_table, sh
from disks import rescue as run_rescue
from drives import Part, SourceDrive, check_restored, fill

pytestmark = pytest.mark.root
rescue = functools.partial(run_rescue, check=True)

SIZE = 256 * MiB


def _build(loops, table: str) -> SourceDrive:
    """p1 ext4 16 MiB at 1 MiB, a 3 MiB gap, then (MBR) an extended partition holding a logical
    ext4 or (GPT) a second ext4, and 56 MiB unpartitioned at the end; every byte outside
    the partitions random, as boot code and a boot manager's data would be."""
    path = loops.file(f"src-{table}.img", SIZE)
    if table == "msdos":
        parts = [Part(1, 2048, 16 * 2048, "ext4", "root"), Part(5, 21 * 2048, 178 * 2048, "ext4", "home")]
        script = (
            "label: dos\nlabel-id: 0x5eed0001\n"
            f"start=2048, size={16 * 2048}, type=83, bootable\n"
            f"start={20 * 2048}, size={180 * 2048}, type=5\n"
            f"start={21 * 2048}, size={178 * 2048}, type=83\n"
        )
    else:
        parts = [Part(1, 2048, 16 * 2048, "ext4", "root"), Part(2, 20 * 2048, 180 * 2048, "ext4", "home")]
        script = (
            "label: gpt\n" + f"start=2048, size={16 * 2048}, name=root\n"
            f"start={20 * 2048}, size={180 * 2048}, name=home\n"
        )
    partition_table(str(path), script)
    rnd = random.Random(table)
    taken = _occupied(path)
    with open(path, "r+b") as f:
        for start, end in _outside(taken, SIZE, table):
            f.seek(start)
            f.write(rnd.randbytes(end - start))
    drive = SourceDrive(path, "", parts)
    for p in parts:
        fill(loops, drive, p)
    drive.device = loops.attach(path)
    return drive


def _sfdisk(path) -> dict:
    return json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]


def _occupied(path) -> list[tuple[int, int, int]]:
    """(number, start byte, end byte) of every partition, extended ones included."""
    return [
        (int(p["node"].rsplit("img", 1)[-1]), p["start"] * 512, (p["start"] + p["size"]) * 512)
        for p in _sfdisk(path)["partitions"]
    ]


def _outside(parts, size: int, table: str) -> list[tuple[int, int]]:
    """Byte ranges outside partitions and table structures: boot code, the gap after the table,
    gaps between top-level partitions, the tail (before a backup GPT)."""
    top = sorted((s, e) for n, s, e in parts if not _inside_extended(parts, s, n))
    end = size - 33 * 512 if table == "gpt" else size
    first_free = 34 * 512 if table == "gpt" else 512
    out = [(0, 440), (first_free, top[0][0])]
    for (_, e), (s, _) in zip(top, top[1:] + [(end, end)]):
        if s > e:
            out.append((e, s))
    return out


def _inside_extended(parts, start: int, number: int) -> bool:
    return number >= 5


def _gaps_by_follower(path, size: int, table: str) -> dict[object, tuple[int, int]]:
    """Each gap keyed by the partition number it follows ("head" for the first)."""
    parts = _occupied(path)
    top = sorted((s, e, n) for n, s, e in parts if n < 5)
    end = size - 33 * 512 if table == "gpt" else size
    first_free = 34 * 512 if table == "gpt" else 512
    out: dict[object, tuple[int, int]] = {"boot": (0, 440), "head": (first_free, top[0][0])}
    for (_, e, n), nxt in zip(top, top[1:] + [(end, end, None)]):
        out[n] = (e, nxt[0])
    return out


def _read(path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(max(0, end - start))


def assert_outside_restored(src: Path, dst: Path, table: str) -> None:
    sgaps = _gaps_by_follower(src, SIZE, table)
    dgaps = _gaps_by_follower(dst, os.path.getsize(dst), table)
    checked = 0
    for key, (s0, s1) in sgaps.items():
        d0, d1 = dgaps[key]
        n = min(s1 - s0, d1 - d0)
        assert n > 0 or s1 == s0, f"no room for the gap after {key}"
        got, want = _read(dst, d0, d0 + n), _read(src, s0, s0 + n)
        if got != want:
            bad = next(i for i in range(n) if got[i] != want[i])
            raise AssertionError(f"gap {key!r}: target byte {d0 + bad} differs from source byte {s0 + bad}")
        checked += n
    assert checked > 50 * MiB  # the tail and the gaps, not just the boot code


@pytest.fixture(scope="module", params=["msdos", "gpt"])
def source(request, mloops):
    drive = _build(mloops, request.param)
    repo = mloops.root / f"repo-{request.param}"
    rescue("capture", drive.device, str(repo), "--name", "img")
    return request.param, drive, repo


@pytest.mark.parametrize("size_mib,layout", [(256, "same"), (400, "proportional"), (200, "proportional")])
def test_restore_keeps_every_byte_outside_partitions(source, mloops, size_mib, layout):
    table, drive, repo = source
    target = mloops.disk(f"restore-{table}-{size_mib}.img", size_mib * MiB)
    rescue("restore", str(repo), "img", target, "--yes", "--layout", layout)
    dst = mloops.drives / f"restore-{table}-{size_mib}.img"
    assert_outside_restored(drive.image, dst, table)
    check_restored(mloops, drive, str(dst))
    out = rescue("verify", str(repo), "img", target).stdout
    assert "outside its partitions match the image" in out


@pytest.mark.parametrize("size_mib", [256, 400])
def test_clone_keeps_every_byte_outside_partitions(source, mloops, size_mib):
    table, drive, _ = source
    target = mloops.disk(f"clone-{table}-{size_mib}.img", size_mib * MiB)
    rescue("clone", drive.device, target, "--yes")
    dst = mloops.drives / f"clone-{table}-{size_mib}.img"
    assert_outside_restored(drive.image, dst, table)
    check_restored(mloops, drive, str(dst))


def test_verify_against_a_drive_names_a_changed_byte_outside_partitions(source, mloops):
    table, drive, repo = source
    target = mloops.disk(f"tampered-{table}.img", SIZE)
    rescue("restore", str(repo), "img", target, "--yes")
    with open(target, "r+b") as f:  # what libparted did to GRUB's core image: sectors 1-18 zeroed
        f.seek(512 if table == "msdos" else 40 * 512)
        f.write(bytes(18 * 512))
    proc = run_rescue("verify", str(repo), "img", target)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    first = 512 if table == "msdos" else 40 * 512
    assert f"byte {first}" in proc.stderr and "disk head" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_restore_check_refuses_a_drive_whose_gap_did_not_arrive(source, mloops):
    """The check a restore runs last: a head area that reads back wrong fails the job."""
    from rescue.errors import IntegrityError
    from rescue.imaging import outside
    from rescue.imaging.restore import plan_restore
    from rescue.imaging.verify import image_source, load_indexes
    from rescue.repo.store import Repository

    table, drive, repo_path = source
    target = mloops.disk(f"check-{table}.img", SIZE)
    rescue("restore", str(repo_path), "img", target, "--yes")
    repo = Repository.open(repo_path)
    manifest, indexes = load_indexes(repo, "img")
    plan = plan_restore(repo, "img", target, "same")
    sources = [image_source(repo, "img", a, indexes[a.name]) for a in manifest.areas if a.partition is None]
    keep_out = outside.protected(target, plan.layout, plan.target_size)
    outside.check(target, sources, plan.placements, plan.layout, keep_out)  # as restored: fine
    with open(target, "r+b") as f:
        f.seek(SIZE - 40 * 512 if table == "msdos" else SIZE - 40 * 512)
        f.write(b"\xff" * 512)
    with pytest.raises(IntegrityError, match="would not boot as the source did"):
        outside.check(target, sources, plan.placements, plan.layout, keep_out)

"""Which files bad sectors hit: real ext4, XFS, NTFS and btrfs filesystems with real files, a
byte range inside a file's data (found with an independent tool: filefrag's FIEMAP, ntfsinfo's
runlist), in free space (from the filesystem's own free map) and in metadata. Then a whole
capture of a GPT drive whose bad sectors (a FUSE file returning EIO under a loop device) fall
inside a known file."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh
from faulty_disk import faulty_block_device

from rescue.errors import SECTORS_LOST
from rescue.filesystems.badfiles import (
    BADFILES,
    FREE,
    METADATA,
    MORE,
    annotate,
    damaged_files,
    files_hit,
    range_key,
    read_badfiles,
    write_badfiles,
)
from rescue.filesystems.ntfs import file_name as ntfs_name
from rescue.model.badmap import parse_mapfile
from rescue.repo.store import Repository

root = pytest.mark.root


# --- no root: names and the stored file --------------------------------------------------------


def test_range_names_match_what_rescue_info_prints():
    assert range_key(1225728, 512) == "1225728-1226239"


def test_badfiles_json_round_trip_and_damage(tmp_path):
    repo = Repository.create(tmp_path / "repo")
    image_dir = repo.image_dir("img")
    image_dir.mkdir(parents=True)
    hits = {"10-521": ["/a b.txt", FREE], "1024-2047": [METADATA]}
    write_badfiles(repo, "img", hits)
    assert read_badfiles(repo, "img") == hits
    assert damaged_files({**hits, "5-9": ["/a b.txt", "/c"]}) == ["/a b.txt", "/c"]
    (image_dir / BADFILES).write_text('{"version": 1, "ranges": ')
    assert read_badfiles(repo, "img") == {}
    assert read_badfiles(repo, "missing") == {}
    (image_dir / BADFILES).unlink()
    os.mkfifo(image_dir / BADFILES)  # would hang a plain read
    assert read_badfiles(repo, "img") == {}


def test_ntfs_attribute_suffixes_and_system_files():
    assert ntfs_name(64, "/docs/a.txt/$DATA") == "/docs/a.txt"
    assert ntfs_name(70, "/docs/$INDEX_ALLOCATION($I30)") == "/docs"
    assert ntfs_name(0, "/$MFT/$DATA") == METADATA
    assert ntfs_name(30, "/$Extend/$UsnJrnl/$DATA($J)") == METADATA


def write_tree(root: Path) -> dict[str, int]:
    """A few files of known sizes, in folders and with a space in a name."""
    rnd = random.Random(7)
    files = {
        "docs/report final.odt": 300_000,
        "photos/cat.jpg": 1_200_000,
        "notes.txt": 70_000,
        "photos/2024/dog.jpg": 500_000,
    }
    for rel, size in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rnd.randbytes(size))
    sh("sync")
    return files


def fiemap(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(block size, [(first physical block, count)]) of a file, by filefrag (FIEMAP): the
    kernel's own answer, independent of the tools under test."""
    out = sh("filefrag", "-v", "-e", str(path))
    bs = int(re.search(r"blocks of (\d+) bytes", out).group(1))
    runs = [
        (int(m.group(1)), int(m.group(2)) - int(m.group(1)) + 1)
        for m in re.finditer(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):", out, re.M)
    ]
    assert runs, out
    return bs, runs


def inside(bs: int, runs: list[tuple[int, int]], sector: int = 3) -> tuple[int, int]:
    """One 512-byte sector inside the middle block of a file's data."""
    total = sum(n for _, n in runs)
    k = total // 2
    for first, n in runs:
        if k < n:
            return ((first + k) * bs + sector * 512, 512)
        k -= n
    raise AssertionError("unreachable")


def files_and_blocks(loops, dev: str, fstype: str | None = None) -> dict[str, tuple[int, int]]:
    """Write the tree, then one bad sector per file (byte range relative to the fs)."""
    with loops.mounted(dev, fstype) as mnt:
        files = write_tree(mnt)
        return {"/" + rel: inside(*fiemap(mnt / rel)) for rel in files}


def check_files_named(fstype: str, dev: str, where: dict[str, tuple[int, int]]) -> None:
    hits = files_hit(fstype, dev, list(where.values()))
    for path, r in where.items():
        assert hits.get(r) == [path], (path, r, hits)


# --- ext4 --------------------------------------------------------------------------------------


@root
def test_ext4_names_files_free_space_and_metadata(loops):
    dev = loops.attach(loops.file("ext4.img", 64 * MiB))
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", dev)
    where = files_and_blocks(loops, dev)
    check_files_named("ext4", dev, where)

    dump = sh("dumpe2fs", dev)
    free = [(int(a), int(b)) for a, b in re.findall(r"^\s+Free blocks: (\d+)-(\d+)", dump, re.M)]
    first, last = max(free, key=lambda r: r[1] - r[0])
    free_range = ((first + last) // 2 * 4096, 8192)
    itable = int(re.search(r"Inode table at (\d+)-", dump).group(1))
    sb, inode_table = (1024, 1024), (itable * 4096 + 512, 512)
    cat = where["/photos/cat.jpg"]
    two = (where["/notes.txt"], cat)
    hits = files_hit("ext4", dev, [free_range, sb, inode_table, *two])
    assert hits[free_range] == [FREE]
    assert hits[sb] == [METADATA] and hits[inode_table] == [METADATA]
    assert hits[cat] == ["/photos/cat.jpg"] and hits[two[0]] == ["/notes.txt"]

    # A range over a whole file and the free space after it names the file and the free space.
    bs, runs = sh_fiemap_after_unmount(loops, dev, "notes.txt")
    start, count = runs[-1]
    span = (start * bs, (count + 1) * bs)
    got = files_hit("ext4", dev, [span])[span]
    assert "/notes.txt" in got and got[0] == "/notes.txt"

    # The block budget: a range larger than it is answered for its start and says so.
    big = (0, 64 * MiB)
    assert files_hit("ext4", dev, [big], max_blocks=100)[big][-1] == MORE


def sh_fiemap_after_unmount(loops, dev: str, rel: str) -> tuple[int, list[tuple[int, int]]]:
    with loops.mounted(dev, options="ro") as mnt:
        return fiemap(mnt / rel)


@root
def test_damaged_or_foreign_filesystems_give_no_answer_and_no_error(loops):
    blank = loops.file("zeros.img", 16 * MiB)
    assert files_hit("ext4", str(blank), [(4096, 512)]) == {}
    assert files_hit("xfs", str(blank), [(4096, 512)]) == {}
    assert files_hit("ntfs", str(blank), [(4096, 512)]) == {}
    assert files_hit("btrfs", str(blank), [(4096, 512)]) == {}
    assert files_hit("vfat", str(blank), [(4096, 512)]) == {}
    # An ext4 whose inode table was overwritten (icheck gives up on the checksums): nothing
    # raises, the bitmap still tells free space, and no sector is said to hold a file.
    img = loops.file("broken.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", str(img))
    itable = int(re.search(r"Inode table at (\d+)-", sh("dumpe2fs", str(img))).group(1))
    with open(img, "r+b") as f:
        f.seek(itable * 4096)
        f.write(random.Random(3).randbytes(256 * 1024))
    hits = files_hit("ext4", str(img), [(40 * MiB, 512), (itable * 4096, 512)])
    assert hits[(40 * MiB, 512)] == [FREE]
    assert hits.get((itable * 4096, 512), [METADATA]) == [METADATA]


# --- XFS ---------------------------------------------------------------------------------------


@root
def test_xfs_names_files_free_space_and_metadata(loops):
    dev = loops.attach(loops.file("xfs.img", 320 * MiB))
    sh("mkfs.xfs", "-q", "-f", dev)
    where = files_and_blocks(loops, dev)
    check_files_named("xfs", dev, where)

    sb = sh("xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize agblocks", dev)
    bs = int(re.search(r"blocksize = (\d+)", sb).group(1))
    agblocks = int(re.search(r"agblocks = (\d+)", sb).group(1))
    freesp = sh("xfs_db", "-r", "-c", "freesp -d", dev)
    ag, agbno, length = max(
        ((int(a), int(b), int(c)) for a, b, c in re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", freesp, re.M)),
        key=lambda x: x[2],
    )
    free_range = ((ag * agblocks + agbno + length // 2) * bs, 512)
    sb_range = (0, 512)
    hits = files_hit("xfs", dev, [free_range, sb_range])
    assert hits == {free_range: [FREE], sb_range: [METADATA]}


# --- NTFS --------------------------------------------------------------------------------------


def ntfs_runlist(dev: str, path: str) -> tuple[int, list[tuple[int, int]]]:
    """(cluster size, [(first LCN, count)]) from ntfsinfo (ntfs-3g's FUSE has no FIEMAP)."""
    info = sh("ntfsinfo", "-m", dev)
    cluster = int(re.search(r"Cluster Size: (\d+)", info).group(1))
    out = sh("ntfsinfo", "-v", "-F", path, dev)
    runs = [
        (int(lcn, 16), int(n, 16))
        for lcn, n in re.findall(r"^\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s*$", out, re.M)
    ]
    assert runs, out
    return cluster, runs


@root
def test_ntfs_names_files_free_space_and_metadata(loops):
    dev = loops.attach(loops.file("ntfs.img", 64 * MiB))
    sh("mkntfs", "-Q", "-F", dev)
    with loops.mounted(dev, "ntfs-3g") as mnt:
        files = write_tree(mnt)
    where = {"/" + rel: inside(*ntfs_runlist(dev, "/" + rel)) for rel in files}
    check_files_named("ntfs", dev, where)

    # A free cluster from $Bitmap (inode 6), read with ntfscat: the filesystem's own record.
    bitmap = subprocess_bytes("ntfscat", "-i", "6", dev)
    cluster = 4096
    free = next(
        c
        for c in range(len(bitmap) * 8 - 1, 0, -1)
        if c < 64 * MiB // cluster - 16 and not bitmap[c // 8] >> (c % 8) & 1
    )
    free_range, boot = (free * cluster, 512), (0, 512)
    hits = files_hit("ntfs", dev, [free_range, boot])
    assert hits == {free_range: [FREE], boot: [METADATA]}


def subprocess_bytes(*argv: str) -> bytes:
    import subprocess

    return subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout


# --- btrfs -------------------------------------------------------------------------------------


def btrfs_physical(dev: str, logical: int) -> int:
    """Drive offset of a logical address, by btrfs-map-logical (not the chunk-tree parsing
    under test)."""
    out = sh("btrfs-map-logical", "-l", str(logical), dev)
    return int(re.search(r"mirror 1 logical \d+ physical (\d+)", out).group(1))


@root
def test_btrfs_names_files_in_subvolumes_metadata_and_unallocated_space(loops):
    dev = loops.attach(loops.file("btrfs.img", 256 * MiB))
    sh("mkfs.btrfs", "-q", "-f", dev)
    with loops.mounted(dev) as mnt:
        write_tree(mnt)
        sh("btrfs", "subvolume", "create", str(mnt / "home"))
        (mnt / "home" / "ann").mkdir()
        (mnt / "home" / "ann" / "thesis.tex").write_bytes(random.Random(9).randbytes(200_000))
        sh("sync")
        where = {}
        for rel in ("docs/report final.odt", "photos/cat.jpg", "home/ann/thesis.tex"):
            bs, runs = fiemap(mnt / rel)  # FIEMAP on btrfs gives logical addresses
            logical, length = inside(bs, runs)
            where["/" + rel] = (btrfs_physical(dev, logical - logical % 512) + logical % 512, length)
    check_files_named("btrfs", dev, where)

    chunks = sh("btrfs", "inspect-internal", "dump-tree", "-t", "chunk", dev)
    meta = int(re.search(r"type METADATA\|DUP.*?stripe 0 devid 1 offset (\d+)", chunks, re.S).group(1))
    ends = [
        int(o) + int(n) for n, o in re.findall(r"length (\d+) owner.*?stripe \d+ devid \d+ offset (\d+)", chunks, re.S)
    ]
    unallocated = (max(ends) + 8 * MiB, 512)
    meta_range = (meta + 4096, 512)
    hits = files_hit("btrfs", dev, [unallocated, meta_range, (64 * 1024, 512)])
    assert hits == {unallocated: [FREE], meta_range: [METADATA], (64 * 1024, 512): [METADATA]}


# --- a whole drive, captured through a device with bad sectors --------------------------------

P1 = (MiB, 62 * MiB)  # ext4 partition: offset, size on the drive


@pytest.fixture(scope="module")
def failing_capture(mloops, tmp_path_factory):
    """A GPT drive, one ext4 partition with files; two bad sectors inside /docs/report final.odt,
    one in /photos/cat.jpg, one in the inode table, one in free space (which capture never
    reads, so it is not in the map). Captured while the faulty device is attached; yields
    (bad ranges in the map, repo, capture output, annotate() of the map, where)."""
    backing = mloops.file("drive.img", 64 * MiB)
    partition_table(str(backing), f'label: gpt\nstart=2048, size={P1[1] // 512}, name="data"\n')
    part = mloops.attach(backing, offset=P1[0], size=P1[1])
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", part)
    with mloops.mounted(part) as mnt:
        files = write_tree(mnt)
        report_bs, report_runs = fiemap(mnt / "docs/report final.odt")
        cat = inside(*fiemap(mnt / "photos/cat.jpg"))
    assert files
    dump = sh("dumpe2fs", part)
    first, last = max(
        ((int(a), int(b)) for a, b in re.findall(r"^\s+Free blocks: (\d+)-(\d+)", dump, re.M)),
        key=lambda r: r[1] - r[0],
    )
    itable = int(re.search(r"Inode table at (\d+)-", dump).group(1))
    rel = [
        inside(report_bs, report_runs, 1),
        inside(report_bs, report_runs, 5),
        cat,
        ((first + last) // 2 * 4096, 512),
        ((itable + 2) * 4096 + 1024, 512),
    ]
    bad = sorted((P1[0] + s, n) for s, n in rel)
    in_map = sorted(r for r in bad if r != (P1[0] + rel[3][0], 512))
    repo = tmp_path_factory.mktemp("badfiles-repo") / "repo"
    with faulty_block_device(mloops, backing, bad=bad) as dev:
        proc = rescue("capture", dev, str(repo), "--name", "failing")
        assert proc.returncode == SECTORS_LOST, proc.stderr  # done, not clean: sectors were lost
        from rescue.repo.store import Repository

        m = Repository.open(repo).manifest("failing")
        mapped = parse_mapfile((repo / "images" / "failing" / "badsectors.map").read_text()).bad_ranges()
        hits = annotate(dev, m.areas, mapped)
    names = {
        "report": (P1[0] + rel[0][0], 512),
        "report2": (P1[0] + rel[1][0], 512),
        "cat": (P1[0] + rel[2][0], 512),
        "free": (P1[0] + rel[3][0], 512),
        "meta": (P1[0] + rel[4][0], 512),
    }
    assert mapped == in_map
    return in_map, repo, proc, hits, names


@root
def test_annotate_on_the_failing_drive_names_the_damaged_files(failing_capture):
    bad, repo, proc, hits, where = failing_capture
    assert proc.returncode == SECTORS_LOST, proc.stderr
    assert "4 sectors could not be read and were zero-filled, in 4 places, hitting 2 files" in proc.stdout, proc.stdout
    assert hits[range_key(*where["report"])] == ["/docs/report final.odt"]
    assert hits[range_key(*where["report2"])] == ["/docs/report final.odt"]
    assert hits[range_key(*where["cat"])] == ["/photos/cat.jpg"]
    assert hits[range_key(*where["meta"])] == [METADATA]
    assert set(hits) == {range_key(s, n) for s, n in bad}


@root
def test_capture_stores_the_damaged_files_and_info_shows_them(failing_capture):
    bad, repo, proc, hits, where = failing_capture
    image_dir = repo / "images" / "failing"
    stored = read_badfiles(Repository.open(repo), "failing")
    assert stored == hits
    assert json.loads((image_dir / BADFILES).read_text())["version"] == 1
    info = rescue("info", str(repo), "failing", check=True).stdout
    assert "hits: /docs/report final.odt" in info and "hits: /photos/cat.jpg" in info, info
    assert "files hit by bad sectors (2): /docs/report final.odt, /photos/cat.jpg" in info, info

"""btrfs used-block maps on real filesystems: the map holds every tree block reachable from
the roots and every data extent a file references (all copies of DUP metadata), little else,
and a copy of only the mapped bytes is a clean, identical filesystem whose copies all scrub
clean.

partclone 0.3.23 is no coverage reference for btrfs: it marks file extents at their
*logical* address as if it were a device offset, marks stale tree blocks, and maps only the
first copy of DUP metadata. Its map is only used for a size bound. The coverage reference is
a walk of every tree (`dump-tree` of all trees), which is independent of the extent tree that
the map is built from."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from disks import MiB, sh
from fscheck import check_against_partclone, check_copy_restores, copy_mapped, make_fs
from partclone_domain import uncovered

from rescue.filesystems import btrfs, identify, lookup, probe
from rescue.filesystems.base import Volume
from rescue.model.extents import Extent, normalize, total, with_edges

BTRFS = lookup("btrfs")  # the class the registry hands out for this filesystem

pytestmark = pytest.mark.root


def scrub_errors(mnt: Path) -> dict[str, int]:
    """Non-zero error counters of a read-only scrub of the mounted filesystem."""
    report = sh("btrfs", "scrub", "start", "-B", "-R", "-r", str(mnt))
    counters = dict(
        line.split(":")
        for line in report.splitlines()
        if line.strip().endswith(tuple("0123456789")) and "_errors:" in line
    )
    assert counters, report
    return {k.strip(): int(v) for k, v in counters.items() if int(v)}


def no_scrub_errors(mnt: Path) -> None:
    # Scrub reads every copy of every block (both halves of DUP) and checks checksums: this
    # is what fails when a map keeps only one DUP copy. (A copy made from partclone's map
    # fails here: verify_errors 60, "mirror 2 has bad bytenr" for every tree block.) Scrub
    # exits 0 either way, so read its counters.
    errors = scrub_errors(mnt)
    assert errors == {}, errors


def super_field(dev: str, name: str) -> int:
    for line in sh("btrfs", "inspect-internal", "dump-super", dev).splitlines():
        if line.startswith(name + "\t") or line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"dump-super printed no {name}")


def dump(dev: str, *tree: str) -> str:
    return sh("btrfs", "inspect-internal", "dump-tree", "--noscan", *tree, dev)


def physical(dev: str, logical: list[tuple[int, int]], devid: int = 1) -> list[Extent]:
    """Every copy on device `devid` of logical ranges, through the chunk tree."""
    chunks = btrfs.parse_chunks(dump(dev, "-t", "chunk"))
    out = []
    for start, length in logical:
        c = next(c for c in chunks if c.logical <= start < c.end)
        assert start + length <= c.end and c.copies, (start, length, c)
        out += [Extent(p + start - c.logical, length) for p in c.on_device(devid)]
    return normalize(out)


def reachable(dev: str) -> list[Extent]:
    """What the filesystem's trees reference, found by walking them rather than by the
    extent tree: every node and leaf printed by a dump of all trees, and every data extent
    a file extent item (in a subvolume, or a v1 free-space cache inode in the root tree)
    points at."""
    text = dump(dev)
    nodesize = super_field(dev, "nodesize")
    blocks = {int(m) for m in re.findall(r"^(?:leaf|node) (\d+) ", text, re.M)}
    data = {(int(a), int(b)) for a, b in re.findall(r"data disk byte (\d+) nr (\d+)", text) if int(a)}
    assert blocks and data
    return physical(dev, [(b, nodesize) for b in blocks] + sorted(data))


def overhead(size: int) -> list[Extent]:
    """What the map adds outside the trees: the first MiB and the superblock slots."""
    return [Extent(0, MiB)] + [Extent(o, btrfs.SUPER_SPAN) for o in btrfs.SUPER_MIRRORS if o + 4096 <= size]


CASES = {
    # name: (mkfs argv, size, offset, mount options). Default profiles: DUP metadata and
    # system, single data, free-space tree.
    "btrfs-512m": (["mkfs.btrfs", "-q", "-f", "-L", "data"], 512 * MiB, 0, ""),
    "btrfs-offset": (["mkfs.btrfs", "-q", "-f"], 320 * MiB, MiB, ""),
    # Data and metadata share block groups.
    "btrfs-mixed": (["mkfs.btrfs", "-q", "-f", "--mixed"], 256 * MiB, 0, ""),
    "btrfs-single-meta": (["mkfs.btrfs", "-q", "-f", "-m", "single"], 512 * MiB, 0, ""),
    # Two copies of every data extent on one device.
    "btrfs-dup-data": (["mkfs.btrfs", "-q", "-f", "-d", "dup"], 512 * MiB, 0, ""),
    # The v1 free-space cache: inodes in the root tree whose contents are data extents.
    # The kernel writes no cache for block groups under 100 MiB: 2 GiB gives 200 MiB ones.
    "btrfs-space-cache-v1": (["mkfs.btrfs", "-q", "-f", "-R", "^free-space-tree"], 2048 * MiB, 0, "space_cache=v1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_map_is_the_allocated_extents_and_copy_is_identical(loops, tmp_path, case):
    mkfs, size, offset, options = CASES[case]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, "btrfs", options)

    ours = normalize(BTRFS.used_extents(vol))
    assert ours and ours[-1].end <= vol.size
    if "space_cache=v1" in options:
        assert "data disk byte" in dump(dev, "-t", "root")  # the cache inodes' contents
    assert BTRFS.info(vol).map_source == btrfs.SOURCE_EXTENTS  # no chunk mapped whole
    # Exactly what the trees reference (every copy), plus the first MiB and superblocks.
    expected = normalize(reachable(dev) + overhead(vol.size), vol.size)
    assert uncovered(expected, ours) == []
    assert uncovered(ours, expected) == []
    # Within the device extents, and far below them: free space inside chunks is not mapped.
    dev_used = super_field(dev, "dev_item.bytes_used")
    assert total(ours) <= dev_used + MiB + 2 * btrfs.SUPER_SPAN
    # DUP metadata legitimately doubles what partclone (one copy) maps.
    mine, theirs = check_against_partclone(
        "partclone.btrfs", dev, ours, tmp_path, factor=2.2, slack=4 * MiB, must_cover=False
    )
    print(
        f"{case}: ours {mine / MiB:.1f} MiB, partclone {theirs / MiB:.1f} MiB, device extents {dev_used / MiB:.1f} MiB"
    )
    check_copy_restores(loops, vol, ours, hashes, tmp_path, ["btrfs", "check", "--readonly"], "btrfs", no_scrub_errors)


def test_damaged_extent_tree_falls_back_to_device_extents(loops, tmp_path):
    """With the extent tree's root block unreadable (both DUP copies zeroed), dump-tree
    still exits 0 but lists nothing: the map must fall back to whole chunks, never to an
    empty map."""
    mkfs, size, offset, options = CASES["btrfs-512m"]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, "btrfs", options)
    precise = BTRFS.used_extents(vol)
    devid = super_field(dev, "dev_item.devid")
    whole = normalize(btrfs.parse_dev_extents(dump(dev, "-t", "dev"), devid) + overhead(vol.size), vol.size)
    assert total(precise) < total(whole)

    root = dump(dev, "-t", "root")
    m = re.search(r"key \(EXTENT_TREE ROOT_ITEM 0\).*\n\s*generation \d+ root_dirid \d+ bytenr (\d+)", root)
    assert m, root
    copies = physical(dev, [(int(m.group(1)), super_field(dev, "nodesize"))], devid)
    assert len(copies) == 2  # DUP
    fd = os.open(vol.path, os.O_WRONLY)
    try:
        for c in copies:
            os.pwrite(fd, bytes(c.length), vol.offset + c.start)
    finally:
        os.close(fd)
    subprocess.run(["sync"])

    assert normalize(BTRFS.used_extents(vol)) == whole
    assert BTRFS.info(vol).map_source.startswith(btrfs.SOURCE_DEV)


def test_info_matches_blkid(loops, tmp_path):
    mkfs, size, offset, options = CASES["btrfs-512m"]
    vol, dev, hashes = make_fs(loops, mkfs, size, offset, "btrfs", options)
    fi = BTRFS.info(vol)
    found = identify(vol)  # the engine's lookup finds this class, and the map from the same read
    assert (found.info, found.fs, found.extents) == (fi, BTRFS, BTRFS.used_extents(vol))
    found = probe(vol)
    assert (fi.type, fi.uuid, fi.label) == ("btrfs", found["UUID"], "data")
    assert fi.map_source == btrfs.SOURCE_EXTENTS
    assert 12 * MiB < fi.used_bytes < vol.size // 2  # populate() left over 12 MiB of files
    assert super_field(dev, "dev_item.bytes_used") < fi.min_size <= vol.size


def test_two_devices_raid0_data_raid1_metadata(loops, tmp_path):
    """Each device maps on its own: RAID1 metadata precisely (its copy on this device),
    RAID0 data as whole stripes. Restoring both devices from their maps gives a filesystem
    that checks, holds the same files and scrubs clean."""
    from disks import populate, tree_hashes

    paths = [loops.file(f"dev{i}.img", 256 * MiB) for i in (1, 2)]
    devs = [loops.attach(p) for p in paths]
    sh("mkfs.btrfs", "-q", "-f", "-d", "raid0", "-m", "raid1", *devs)
    sh("btrfs", "device", "scan", *devs)
    with loops.mounted(devs[0], "btrfs") as mnt:
        populate(mnt, seed=5, files=30)
        hashes = tree_hashes(mnt)
    vols = [Volume(str(p), 0, 256 * MiB) for p in paths]
    maps = [normalize(BTRFS.used_extents(v)) for v in vols]
    text = dump(devs[0], "-t", "chunk")
    chunks = btrfs.parse_chunks(text)
    assert {c.profile for c in chunks} >= {"raid0", "raid1"}
    for devid, (dev, ours) in enumerate(zip(devs, maps), 1):
        stripes = [Extent(p, c.stripe_length()) for c in chunks if c.profile == "raid0" for p in c.on_device(devid)]
        assert stripes and uncovered(stripes, ours) == []
        extents = btrfs.parse_dev_extents(sh("btrfs", "inspect-internal", "dump-tree", "-t", "dev", dev), devid)
        assert uncovered(ours, normalize(extents + overhead(256 * MiB))) == []
        assert total(ours) < total(extents)  # the RAID1 chunks are not mapped whole
        assert BTRFS.info(vols[devid - 1]).map_source.startswith(btrfs.SOURCE_EXTENTS + " (")

    copies = [tmp_path / f"copy{i}.img" for i in (1, 2)]
    for vol, ours, copy in zip(vols, maps, copies):
        copy_mapped(vol, with_edges(ours, vol.size), copy)
    # The kernel must see the copies, not the originals (same fsid and devids).
    sh("btrfs", "device", "scan", "--forget", *devs)
    for dev in devs:
        sh("losetup", "--detach", dev)
        loops.devices.remove(dev)  # its name may be reused by a copy: not to be detached twice
    cdevs = [loops.attach(c) for c in copies]
    sh("btrfs", "device", "scan", *cdevs)
    sh("btrfs", "check", "--readonly", cdevs[0])
    with loops.mounted(cdevs[0], "btrfs", "ro") as mnt:
        assert tree_hashes(mnt) == hashes
        no_scrub_errors(mnt)


# -- the pure parts: profiles that stripe, and an extent tree that does not add up ----------

CHUNK_TEXT = """\
\titem 0 key (DEV_ITEMS DEV_ITEM 1) itemoff 16185 itemsize 98
\t\tdevid 1 total_bytes 536870912 bytes_used 360710144
\titem 1 key (FIRST_CHUNK_TREE CHUNK_ITEM 13631488) itemoff 16105 itemsize 80
\t\tlength 8388608 owner 2 stripe_len 65536 type DATA|single
\t\tio_align 65536 io_width 65536 sector_size 4096
\t\tnum_stripes 1 sub_stripes 1
\t\t\tstripe 0 devid 1 offset 13631488
\t\t\tdev_uuid dc268357-72d8-475a-bebe-59983c0c51e7
\titem 2 key (FIRST_CHUNK_TREE CHUNK_ITEM 22020096) itemoff 15993 itemsize 112
\t\tlength 8388608 owner 2 stripe_len 65536 type METADATA|DUP
\t\tio_align 65536 io_width 65536 sector_size 4096
\t\tnum_stripes 2 sub_stripes 1
\t\t\tstripe 0 devid 1 offset 22020096
\t\t\tdev_uuid dc268357-72d8-475a-bebe-59983c0c51e7
\t\t\tstripe 1 devid 1 offset 30408704
\t\t\tdev_uuid dc268357-72d8-475a-bebe-59983c0c51e7
\titem 3 key (FIRST_CHUNK_TREE CHUNK_ITEM 40000000) itemoff 15881 itemsize 112
\t\tlength 16777216 owner 2 stripe_len 65536 type DATA|RAID0
\t\tio_align 65536 io_width 65536 sector_size 4096
\t\tnum_stripes 2 sub_stripes 1
\t\t\tstripe 0 devid 1 offset 50000000
\t\t\tdev_uuid dc268357-72d8-475a-bebe-59983c0c51e7
\t\t\tstripe 1 devid 2 offset 60000000
\t\t\tdev_uuid 11111111-72d8-475a-bebe-59983c0c51e7
"""


def extent_text(used_single: int, used_dup: int) -> bytes:
    return f"""\
leaf 1 items 9 free space 10 generation 7 owner EXTENT_TREE
\tkey (13631488 EXTENT_ITEM 8192) block 30507008 gen 7
\titem 0 key (13631488 EXTENT_ITEM 8192) itemoff 16230 itemsize 53
\t\trefs 1 gen 7 flags DATA
\titem 1 key (13631488 BLOCK_GROUP_ITEM 8388608) itemoff 16206 itemsize 24
\t\tblock group used {used_single} chunk_objectid 256 flags DATA|single
\titem 2 key (13639680 EXTENT_ITEM 4096) itemoff 16153 itemsize 53
\t\trefs 1 gen 7 flags DATA
\titem 3 key (22020096 METADATA_ITEM 0) itemoff 16153 itemsize 33
\t\trefs 1 gen 7 flags TREE_BLOCK
\titem 4 key (22020096 BLOCK_GROUP_ITEM 8388608) itemoff 16206 itemsize 24
\t\tblock group used {used_dup} chunk_objectid 256 flags METADATA|DUP
\titem 5 key (22052864 METADATA_ITEM 1) itemoff 16153 itemsize 33
\t\trefs 1 gen 7 flags TREE_BLOCK
\titem 6 key (40000000 EXTENT_ITEM 4096) itemoff 16153 itemsize 53
\t\trefs 1 gen 7 flags DATA
\titem 7 key (40000000 BLOCK_GROUP_ITEM 16777216) itemoff 16206 itemsize 24
\t\tblock group used 4096 chunk_objectid 256 flags DATA|RAID0
""".encode()


def test_chunks_parse_with_profiles_and_stripes():
    chunks = btrfs.parse_chunks(CHUNK_TEXT)
    assert [(c.logical, c.length, c.profile, c.stripes) for c in chunks] == [
        (13631488, 8388608, "single", ((1, 13631488),)),
        (22020096, 8388608, "dup", ((1, 22020096), (1, 30408704))),
        (40000000, 16777216, "raid0", ((1, 50000000), (2, 60000000))),
    ]
    assert [c.stripe_length() for c in chunks] == [8388608, 8388608, 8388608]


@pytest.mark.parametrize("piece", [7, 100, 1 << 20])
def test_extents_map_to_every_copy_and_striped_chunks_whole(piece):
    chunks = btrfs.parse_chunks(CHUNK_TEXT)
    text = extent_text(8192 + 4096, 2 * 16384)
    scan = btrfs.scan_extent_tree((text[i : i + piece] for i in range(0, len(text), piece)), 16384)
    assert scan.bg_used == {13631488: 12288, 22020096: 32768, 40000000: 4096}
    m = btrfs.map_to_device(chunks, scan, 1)
    assert normalize(m.extents) == [
        Extent(13631488, 12288),  # data extents, touching, merged
        Extent(22020096, 16384),
        Extent(22052864, 16384),  # DUP copy 1 (nodesize each)
        Extent(30408704, 16384),
        Extent(30441472, 16384),  # DUP copy 2
        Extent(50000000, 8388608),  # RAID0: this device's whole stripe
    ]
    assert [(c.profile, why) for c, why in m.whole] == [("raid0", "raid0 stripes across devices")]
    # The other device of the RAID0 chunk gets its own stripe and nothing else.
    assert btrfs.map_to_device(chunks, scan, 2).extents == [Extent(60000000, 8388608)]


def test_block_group_that_does_not_add_up_is_mapped_whole():
    chunks = btrfs.parse_chunks(CHUNK_TEXT)
    scan = btrfs.scan_extent_tree([extent_text(8192 + 4096, 3 * 16384)], 16384)  # one leaf lost
    m = btrfs.map_to_device(chunks, scan, 1)
    assert Extent(22020096, 8388608) in m.extents and Extent(30408704, 8388608) in m.extents
    assert "block group says 49152" in m.whole[0][1]


def test_min_size_estimate():
    assert btrfs.estimate_min_size(100 * MiB, 10 << 30) == 357 * MiB  # 1 MiB + used + 256 MiB
    assert btrfs.estimate_min_size(100 * MiB, 200 * MiB) == 200 * MiB  # never above the volume
    assert btrfs.estimate_min_size(100 << 30, 1 << 40) == (100 << 30) + MiB + 1536 * MiB


def test_not_btrfs_is_a_one_line_error(loops, tmp_path):
    from rescue.errors import FilesystemError

    path = loops.file("blank.img", 16 * MiB)
    with pytest.raises(FilesystemError) as err:
        BTRFS.used_extents(Volume(str(path), 0, 16 * MiB))
    assert "\n" not in str(err.value)

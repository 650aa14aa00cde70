"""A manifest, its indexes and its chunks are validated completely before anything uses them:
each refusal is one IntegrityError naming the image and the field, whatever the manifest says,
even with a checksum that matches (re-sealed after the edit). Files are read only when they are
regular files inside the repository, of the size they can have."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import zstandard

from rescue.errors import IntegrityError, RepoError
from rescue.model.gaps import gaps
from rescue.model.layout import DiskLayout, Partition
from rescue.repo import chunks
from rescue.repo.index import NO_DIGEST, Index, Kind
from rescue.repo.manifest import Area, Manifest, _checksum, printable
from rescue.repo.store import Repository

MiB = 1 << 20
CHUNK = 64 << 10
LINUX = "0FC63DAF-8483-4772-8E79-3D69E8477DE4"


def gpt_layout() -> DiskLayout:
    return DiskLayout(
        "gpt",
        512,
        8 * MiB,
        "6E1B4C5A-1D2E-4F30-9A8B-0C1D2E3F4A5B",
        [
            Partition(1, 2048, 4095, LINUX, name="one", uuid="11111111-2222-3333-4444-555555555555"),
            Partition(2, 6144, 10239, LINUX, name="two", uuid="11111111-2222-3333-4444-666666666666"),
        ],
    )


def mbr_layout() -> DiskLayout:
    return DiskLayout(
        "msdos",
        512,
        8 * MiB,
        "0x1234abcd",
        [
            Partition(1, 2048, 4095, mbr_type=0x83, bootable=True),
            Partition(2, 4096, 14335, mbr_type=0x05, kind="extended"),
            Partition(5, 6144, 8191, mbr_type=0x83, kind="logical"),
            Partition(6, 10240, 12287, mbr_type=0x83, kind="logical"),
        ],
    )


def areas_for(layout: DiskLayout) -> list[Area]:
    ss = layout.sector_size
    out = [Area(g.name, g.offset, g.size, f"{g.name}.idx", "0" * 64) for g in gaps(layout)]
    for p in layout.data_partitions():
        out.append(
            Area(
                f"p{p.number}",
                p.offset(ss),
                p.size(ss),
                f"p{p.number}.idx",
                "0" * 64,
                p.number,
                {"type": "ext4", "uuid": "0b5d0c43-6b0e-4c4f-9d0e-3a1b2c3d4e5f", "label": "root", "used_bytes": 1},
            )
        )
    return out


def manifest_for(layout: DiskLayout, name: str = "img") -> Manifest:
    return Manifest(
        name=name,
        created="2024-01-02T03:04:05Z",
        rescue_version="0.1.0",
        chunk_size=CHUNK,
        hash="sha256",
        source={"path": "/dev/sdz", "model": "Disk", "serial": "S1", "size": layout.size},
        layout=layout,
        areas=areas_for(layout),
        stats={"data_bytes": 0, "sectors_lost": 0, "bad_map": None, "seconds": 1.5},
    )


def body_of(m: Manifest) -> dict:
    body = json.loads(m.to_json())
    del body["checksum"]
    return body


def sealed(body: dict) -> str:
    """A manifest as a forger would write it: any content, with a checksum that matches."""
    return json.dumps({**body, "checksum": _checksum(body)})


def load(body: dict) -> Manifest:
    return Manifest.from_json(sealed(body), "image img")


def refused(body: dict, *words: str) -> str:
    with pytest.raises(IntegrityError) as e:
        load(body)
    message = str(e.value)
    assert message.startswith("image img: "), message
    assert "\n" not in message and len(message) < 300, message
    for w in words:
        assert w in message, message
    return message


@pytest.mark.parametrize("layout", [gpt_layout, mbr_layout])
def test_a_valid_manifest_loads_as_it_was_written(layout):
    m = manifest_for(layout())
    again = Manifest.from_json(m.to_json(), "image img")
    assert again == m


def test_a_drive_without_a_table_is_one_area():
    layout = DiskLayout("none", 512, 8 * MiB)
    m = manifest_for(layout)
    m.areas = [Area("disk", 0, 8 * MiB, "disk.idx", "0" * 64, None, {"type": "ext4"})]
    assert Manifest.from_json(m.to_json(), "x").areas[0].name == "disk"
    body = body_of(m)
    body["areas"].append({**body["areas"][0], "name": "head", "index": "head.idx", "fs": None, "size": MiB})
    refused(body, "areas")


def test_an_image_made_before_gaps_has_a_head_of_one_mib_only():
    m = manifest_for(gpt_layout())
    m.areas = [a for a in m.areas if not a.name.startswith("gap-")]
    m.areas[0] = Area("head", 0, MiB, "head.idx", "0" * 64)
    assert Manifest.from_json(m.to_json(), "x").area("head").size == MiB


def test_an_unsealed_edit_is_a_checksum_mismatch():
    text = manifest_for(gpt_layout()).to_json().replace('"one"', '"uno"')
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        Manifest.from_json(text, "image img")


def gpt() -> dict:
    return body_of(manifest_for(gpt_layout()))


def mbr() -> dict:
    return body_of(manifest_for(mbr_layout()))


def part(body: dict, i: int) -> dict:
    return body["layout"]["partitions"][i]


def area(body: dict, name: str) -> dict:
    return next(a for a in body["areas"] if a["name"] == name)


@pytest.mark.parametrize("value", [0, -512, 1000, 256, 3 * 512, "512", True, 1.5, None, 1 << 20])
def test_sector_size_is_a_power_of_two_of_at_least_512(value):
    body = gpt()
    body["layout"]["sector_size"] = value
    refused(body, "layout.sector_size")


@pytest.mark.parametrize(
    "field, value",
    [
        ("chunk_size", "4M"),
        ("chunk_size", 1000),
        ("chunk_size", 1 << 40),
        ("chunk_size", -CHUNK),
        ("name", 7),
        ("name", "../evil"),
        ("name", "a\nb"),
        ("created", "yesterday\x1b[2J"),
        ("rescue_version", "--delete"),
        ("hash", "md5"),
        ("source", []),
        ("layout", "gpt"),
        ("areas", {}),
        ("stats", 1),
    ],
)
def test_top_level_fields_have_their_types_and_shapes(field, value):
    body = gpt()
    body[field] = value
    refused(body, field)


def test_a_missing_field_and_an_unknown_key_are_named():
    body = gpt()
    del body["layout"]
    refused(body, "layout", "missing")
    body = gpt()
    body["surprise"] = 1
    refused(body, "unknown key")
    body = gpt()
    part(body, 0)["size_bytes"] = 1
    refused(body, "layout.partitions[0]", "unknown key")


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("start", -1, ["start", "out of range"]),
        ("start", "2048", ["start", "not an integer"]),
        ("end", 2047, ["end", "before its start"]),
        ("end", 16383, ["outside the drive"]),  # over the backup GPT
        ("start", 10, ["outside the drive"]),  # over the primary GPT
        ("end", 1 << 62, ["end", "out of range"]),
        ("number", 0, ["number"]),
        ("number", 2, ["repeats partition number"]),
        ("number", True, ["number", "not an integer"]),
        ("kind", "logical", ["kind", "GPT"]),
        ("kind", "extended", ["kind", "GPT"]),
        ("kind", "weird", ["kind"]),
        ("type_guid", "not-a-guid", ["type_guid", "not well-formed"]),
        ("type_guid", "--delete", ["type_guid"]),
        ("type_guid", 42, ["type_guid", "not a string"]),
        ("uuid", "--delete", ["uuid", "not well-formed"]),
        ("uuid", "11111111-2222-3333-4444-55555555555g", ["uuid"]),
        ("name", "evil\x1b]0;owned\x07", ["name", "control character"]),
        ("name", "right\u202eleft", ["name", "control character"]),
        ("name", "x" * 37, ["name"]),
        ("flags", ["boot", "--delete"], ["flags[1]"]),
        ("flags", "boot", ["flags", "not a list"]),
        ("attrs", "--delete", ["attrs"]),
        ("attrs", "x", ["attrs", "not a GPT attribute"]),  # found by the fuzz test: sfdisk refused it mid-restore
        ("attrs", "GUID:47", ["attrs"]),
        ("attrs", "requiredpartition", ["attrs"]),
        ("attrs", "Legacy\nBIOS", ["attrs", "control character"]),
        ("bootable", "yes", ["bootable"]),
        ("mbr_type", 256, ["mbr_type"]),
    ],
)
def test_gpt_partition_fields(key, value, words):
    body = gpt()
    part(body, 0)[key] = value
    refused(body, "layout.partitions", *words)


@pytest.mark.parametrize("key", ["type_guid", "uuid"])
def test_an_all_zero_guid_would_delete_a_partition(key):
    body = gpt()
    part(body, 1)[key] = "00000000-0000-0000-0000-000000000000"
    refused(body, "layout.partitions[1]", "all-zero GUID")
    body = gpt()
    body["layout"]["disk_id"] = "00000000-0000-0000-0000-000000000000"
    refused(body, "layout.disk_id")


@pytest.mark.parametrize("attrs", ["", "RequiredPartition", "LegacyBIOSBootable GUID:60,62", "48,49", "GUID:63"])
def test_gpt_attributes_as_sfdisk_writes_them(attrs):
    body = gpt()
    part(body, 0)["attrs"] = attrs
    assert load(body).layout.partitions[0].attrs == attrs


def test_overlapping_partitions_are_refused():
    body = gpt()
    part(body, 1)["start"] = 4000
    area(body, "p2")["offset"] = 4000 * 512
    area(body, "p2")["size"] = (10239 - 4000 + 1) * 512
    refused(body, "overlapping")


@pytest.mark.parametrize("value", ["--delete", "0x1234abcd", "6E1B4C5A-1D2E-4F30-9A8B-0C1D2E3F4A5", 7])
def test_the_disk_guid_is_a_guid(value):
    body = gpt()
    body["layout"]["disk_id"] = value
    refused(body, "layout.disk_id")


def test_mbr_rules():
    body = mbr()
    body["layout"]["disk_id"] = "--delete"
    refused(body, "layout.disk_id")

    body = mbr()
    part(body, 2)["start"] = 1  # a logical before its extended partition
    refused(body, "logical partition 5 outside the extended one")

    body = mbr()
    part(body, 1).update(kind="primary", mbr_type=0x83)  # logicals without an extended partition
    refused(body, "no extended partition")

    body = mbr()
    part(body, 1)["kind"] = "primary"  # a primary with an extended type id is an extended one
    refused(body, "layout.partitions[1].mbr_type", "extended")

    body = mbr()
    part(body, 1)["mbr_type"] = 0x83  # an extended partition typed as data
    refused(body, "layout.partitions[1].mbr_type")

    body = mbr()
    part(body, 2)["mbr_type"] = 0  # type 0 is an empty entry: writing it deletes the partition
    refused(body, "layout.partitions[2].mbr_type", "empty")

    body = mbr()
    part(body, 2)["number"] = 3  # a logical numbered as a primary entry
    refused(body, "layout.partitions[2].number")

    body = mbr()
    part(body, 0)["number"] = 7  # a primary numbered as a logical
    refused(body, "layout.partitions[0].number")

    body = mbr()
    part(body, 3)["start"] = 8192  # no room for the EBR before logical 6
    refused(body, "overlapping")

    body = mbr()
    part(body, 0)["mbr_type"] = -1
    refused(body, "mbr_type")


def test_at_most_four_primary_partitions_and_one_extended():
    layout = DiskLayout(
        "msdos", 512, 8 * MiB, None, [Partition(n, 2048 * n, 2048 * n + 1023, mbr_type=0x83) for n in range(1, 5)]
    )
    assert Manifest.from_json(manifest_for(layout).to_json(), "x")
    body = body_of(manifest_for(layout))
    part(body, 3)["number"] = 5
    refused(body, "number")
    body = mbr()
    part(body, 0)["kind"] = "extended"
    refused(body)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda b: b["areas"].remove(area(b, "head")), ["areas", "lacks area head"]),
        (lambda b: b["areas"].remove(area(b, "p2")), ["areas", "lacks area p2"]),
        (lambda b: b["areas"].remove(area(b, "gap-p1")), ["areas", "lacks area gap-p1"]),
        (lambda b: b["areas"].append({**area(b, "p2"), "name": "p3", "index": "p3.idx"}), ["no data partition 3"]),
        (lambda b: b["areas"].append(copy.deepcopy(area(b, "p2"))), ["repeats area p2"]),
        (lambda b: area(b, "p1").update(offset=0), ["does not cover partition 1"]),
        (lambda b: area(b, "p1").update(size=512), ["does not cover partition 1"]),
        (lambda b: area(b, "p1").update(partition=2), ["partition"]),
        (lambda b: area(b, "p1").update(partition=None), ["partition"]),
        (lambda b: area(b, "head").update(partition=1), ["partition"]),
        (lambda b: area(b, "head").update(size=3 * MiB), ["head"]),
        (lambda b: area(b, "gap-p1").update(offset=0), ["gap-p1"]),
        (lambda b: area(b, "p1").update(name="../p1", index="../p1.idx"), ["name"]),
        (lambda b: area(b, "p1").update(name="p1/x"), ["name"]),
        (lambda b: area(b, "p1").update(index="/dev/zero"), ["index", "p1.idx"]),
        (lambda b: area(b, "p1").update(index="../../../etc/passwd"), ["index"]),
        (lambda b: area(b, "p1").update(index="p2.idx"), ["index"]),
        (lambda b: area(b, "p1").update(index_sha256="../x"), ["index_sha256"]),
        (lambda b: area(b, "p1").update(offset=-1), ["offset"]),
        (lambda b: area(b, "p1").update(size=1 << 62), ["size"]),
        (lambda b: area(b, "p1").update(fs="ext4"), ["fs", "not an object"]),
        (lambda b: area(b, "p1")["fs"].update(uuid="--delete"), ["fs.uuid"]),
        (lambda b: area(b, "p1")["fs"].update(label="a\x1b[31mred"), ["fs.label", "control character"]),
        (lambda b: area(b, "p1")["fs"].update(type="ext4; rm -rf /"), ["fs.type"]),
        (lambda b: area(b, "p1")["fs"].update(used_bytes=-1), ["fs.used_bytes"]),
        (lambda b: area(b, "p1")["fs"].pop("type"), ["fs.type", "missing"]),
        (lambda b: area(b, "head").update(fs={"type": "ext4"}), ["fs"]),
        (lambda b: area(b, "p1").update(stats={"data": "many"}), ["stats.data"]),
        (lambda b: b["stats"].update(bad_map="../../etc/shadow"), ["stats.bad_map"]),
        (lambda b: b["stats"].update(sectors_lost=-3), ["stats.sectors_lost"]),
        (lambda b: b["stats"].update(seconds=float("nan")), ["stats.seconds"]),
        (lambda b: b["source"].update(size="big"), ["source.size"]),
        (lambda b: b["source"].update(size=4 * MiB), ["source.size"]),
        (lambda b: b["source"].update(logical_sector_size=4096), ["source.logical_sector_size"]),
        (lambda b: b["source"].update(model="\x1b[2J"), ["source.model", "control character"]),
        (lambda b: b["layout"].update(size=8 * MiB + 1), ["layout.size"]),
        (lambda b: b["layout"].update(size=0), ["layout.size"]),
        (lambda b: b["layout"].update(table="bsd"), ["layout.table"]),
        (lambda b: b["layout"].update(table="none"), ["layout"]),
    ],
)
def test_areas_and_their_partitions(damage, words):
    body = gpt()
    damage(body)
    refused(body, *words)


def test_json_that_is_not_a_manifest():
    for text in ["[" * 100000 + "]" * 100000, "1" * 10000, '{"format": "rescue-image", "version": true}', "null"]:
        with pytest.raises(IntegrityError):
            Manifest.from_json(text, "image img")


def test_printable_replaces_what_could_act_on_a_terminal():
    assert printable("plain-name_1.0") == "plain-name_1.0"
    assert printable("a\x1b[2Jb\nc\x7f\x9b") == "a\\x1b[2Jb\\x0ac\\x7f\\x9b"
    assert printable("right\u202eleft") == "right\\u202eleft"
    assert printable(os.fsdecode(b"bad\xffbyte")) == "bad\\xffbyte"
    assert printable("back\\slash") == "back\\\\slash"


# -- indexes and chunks --------------------------------------------------------------------


def test_an_index_entry_must_agree_with_its_kind():
    index = Index.empty(CHUNK, 3 * CHUNK)
    index.set(0, Kind.DATA, b"\x01" * 32)
    assert Index.from_bytes(index.to_bytes(), "x").kinds[0] == Kind.DATA
    for kind, dig in [(Kind.ZERO, b"\x02" * 32), (Kind.DATA, NO_DIGEST)]:
        bad = Index.empty(CHUNK, 3 * CHUNK)
        bad.set(1, kind, dig)
        with pytest.raises(IntegrityError, match="index entry 1"):
            Index.from_bytes(bad.to_bytes(), "x")


def blob_for(data: bytes) -> bytes:
    return chunks.encode(data, zstandard.ZstdCompressor(level=3))


def test_chunk_headers_are_checked_field_by_field():
    dctx = zstandard.ZstdDecompressor()
    data = b"abc" * 10000
    blob = blob_for(data)
    dig = chunks.digest(data)
    assert chunks.decode(blob, dig, "w", dctx, len(data)) == data
    magic, version, codec, _, length = chunks.HEADER.unpack_from(blob)
    for header, words in [
        ((magic, version, codec, 1, length), "bad header"),
        ((b"XXXX", version, codec, 0, length), "bad header"),
        ((magic, 2, codec, 0, length), "bad header"),
        ((magic, version, 9, 0, length), "unknown codec"),
        ((magic, version, codec, 0, length - 1), "damaged"),
        ((magic, version, codec, 0, 1 << 31), "claims"),
        ((magic, version, chunks.CODEC_STORED, 0, length), "hash mismatch"),
    ]:
        bad = chunks.HEADER.pack(*header) + blob[chunks.HEADER.size :]
        with pytest.raises(IntegrityError, match=words):
            chunks.decode(bad, dig, "w", dctx, len(data))
    with pytest.raises(IntegrityError, match="after its zstd frame"):
        chunks.decode(blob + b"junk", dig, "w", dctx, len(data))
    with pytest.raises(IntegrityError):
        chunks.decode(blob[:-5], dig, "w", dctx, len(data))


def test_a_zstd_frame_that_would_inflate_beyond_the_chunk_is_not_inflated():
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 * MiB))  # about 8 KiB
    blob = chunks.HEADER.pack(chunks.MAGIC, chunks.VERSION, chunks.CODEC_ZSTD, 0, CHUNK) + bomb
    with pytest.raises(IntegrityError, match="frame holds"):
        chunks.decode(blob, bytes(32), "w", zstandard.ZstdDecompressor(), CHUNK)


# -- files in a repository -------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path) -> Repository:
    """A repository with one image written by hand: each area's index, one chunk in p1."""
    r = Repository.create(tmp_path / "repo", chunk_size=CHUNK)
    m = manifest_for(gpt_layout())
    r.start_image("img")
    data = os.urandom(CHUNK)
    r.write_chunk(chunks.digest(data), blob_for(data))
    for a in m.areas:
        index = Index.empty(CHUNK, a.size)
        if a.name == "p1":
            index.set(0, Kind.DATA, chunks.digest(data))
        blob = index.to_bytes()
        r.write_image_file("img", a.index, blob)
        a.index_sha256 = hashlib.sha256(blob).hexdigest()
        a.stats = {"data": index.kinds.count(Kind.DATA)}
    r.commit_manifest(m)
    return Repository.open(r.path)


def test_the_hand_made_image_reads(repo):
    m = repo.manifest("img")
    index = repo.load_index("img", m, "p1")
    assert len(repo.read_chunk(index.digests[0], "w", CHUNK)) == CHUNK
    assert [s.name for s in repo.images()] == ["img"]


def replace(path: Path, what: str) -> None:
    path.unlink()
    if what == "fifo":
        os.mkfifo(path)
    elif what == "dev-zero":
        path.symlink_to("/dev/zero")
    elif what == "outside":
        outside = path.parent.parent.parent.parent / "elsewhere"
        outside.write_bytes(b"x")
        path.symlink_to(outside)
    elif what == "directory":
        path.mkdir()
    elif what == "huge":
        with open(path, "wb") as f:
            f.truncate(64 << 30)


@pytest.mark.parametrize("what", ["fifo", "dev-zero", "outside", "directory", "huge"])
def test_index_files_that_are_not_regular_files_are_refused_not_read(repo, what):
    replace(repo.image_dir("img") / "p1.idx", what)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="image img, area p1: index file p1.idx"):
        repo.load_index("img", repo.manifest("img"), "p1")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("what", ["fifo", "dev-zero", "directory", "huge"])
def test_manifests_that_are_not_regular_files_are_refused(repo, what):
    replace(repo.image_dir("img") / "manifest.json", what)
    with pytest.raises(IntegrityError, match="image img: manifest.json"):
        repo.manifest("img")
    listed = repo.listing()
    assert [(s.name, bool(s.damaged)) for s in listed.images] == [("img", True)]


@pytest.mark.parametrize("what", ["fifo", "dev-zero", "directory", "huge"])
def test_chunks_that_are_not_regular_files_are_refused(repo, what):
    index = repo.load_index("img", repo.manifest("img"), "p1")
    replace(repo.chunk_path(index.digests[0]), what)
    with pytest.raises(IntegrityError, match="chunk"):
        repo.read_chunk(index.digests[0], "w", CHUNK)


def test_a_chunk_directory_that_is_a_link_is_not_followed(repo, tmp_path):
    index = repo.load_index("img", repo.manifest("img"), "p1")
    path = repo.chunk_path(index.digests[0])
    moved = tmp_path / "moved"
    path.parent.rename(moved)
    path.parent.symlink_to(moved)
    with pytest.raises(IntegrityError, match="symbolic link"):
        repo.read_chunk(index.digests[0], "w", CHUNK)


def test_an_image_directory_that_is_a_link_is_refused(repo, tmp_path):
    d = repo.image_dir("img")
    d.rename(tmp_path / "real")
    d.symlink_to(tmp_path / "real")
    with pytest.raises(IntegrityError, match="symbolic link"):
        repo.manifest("img")


def test_a_manifest_naming_another_image_is_refused(repo):
    repo.image_dir("img").rename(repo.path / "images" / "other")
    with pytest.raises(IntegrityError, match="image other: manifest field name"):
        repo.manifest("other")


def test_an_index_that_lies_about_its_counts_is_refused(repo):
    m = repo.manifest("img")
    m.area("p1").stats = {"data": 2}
    (repo.image_dir("img") / "manifest.json").write_text(m.to_json())
    with pytest.raises(IntegrityError, match="counts 2 data chunks"):
        repo.load_index("img", repo.manifest("img"), "p1")


def test_the_listing_shows_everything_and_breaks_on_nothing(repo):
    images = repo.path / "images"
    (images / "stray-file").write_text("x")
    (images / ".hidden").mkdir()
    (images / "evil\x1b[2Jname").mkdir()
    (images / "interrupted").mkdir()
    damaged = images / "broken"
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{")
    (images / "link").symlink_to("/dev/zero")
    listed = repo.listing()
    assert [(s.name, s.damaged is None) for s in listed.images] == [("img", True), ("broken", False)]
    assert "not valid JSON" in listed.images[1].damaged
    assert listed.incomplete == ["interrupted"]
    assert sorted(n for n, _ in listed.foreign) == sorted(["stray-file", ".hidden", "evil\x1b[2Jname", "link"])
    assert [s.name for s in repo.images()] == ["img"]


def test_a_repository_with_parts_of_the_wrong_type_is_one_line(tmp_path):
    r = Repository.create(tmp_path / "r", chunk_size=CHUNK)
    (r.path / "chunks").rmdir()
    (r.path / "chunks").write_text("not a directory")
    with pytest.raises(RepoError, match="chunks is a file, not a directory"):
        Repository.open(r.path)
    marker = tmp_path / "m"
    marker.mkdir()
    os.mkfifo(marker / "rescue-repo.json")
    with pytest.raises(RepoError, match="FIFO"):
        Repository.open(marker)
    with pytest.raises(RepoError, match="not a rescue repository"):
        Repository.open(marker / "rescue-repo.json")


@pytest.mark.parametrize(
    "meta",
    [
        {"chunk_size": 0},
        {"chunk_size": 3 << 20},
        {"chunk_size": "4M"},
        {"chunk_size": True},
        {"hash": "md5"},
        {"version": 2},
        {"compression": "lz4"},
    ],
)
def test_the_repository_description_is_validated(tmp_path, meta):
    r = Repository.create(tmp_path / "r", chunk_size=CHUNK)
    body = json.loads((r.path / "rescue-repo.json").read_text())
    (r.path / "rescue-repo.json").write_text(json.dumps({**body, **meta}))
    with pytest.raises(RepoError):
        Repository.open(r.path)


def test_small_files_beside_an_image_are_read_only_when_regular(repo):
    assert repo.read_image_file("img", "badsectors.map") is None
    (repo.image_dir("img") / "badsectors.map").write_text("# map\n")
    assert repo.read_image_file("img", "badsectors.map") == b"# map\n"
    replace(repo.image_dir("img") / "badsectors.map", "fifo")
    with pytest.raises(IntegrityError, match="badsectors.map is a FIFO"):
        repo.read_image_file("img", "badsectors.map")
    with pytest.raises(IntegrityError, match="not a file name"):
        repo.read_image_file("img", "../../rescue-repo.json")


def test_a_repository_reached_through_a_link_opens(repo, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(repo.path)
    again = Repository.open(link)
    assert again.load_index("img", again.manifest("img"), "p1").count == 16  # 1 MiB in 64 KiB chunks

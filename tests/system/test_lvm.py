"""A drive whose partition is an LVM2 physical volume, built with the real lvm2 tools on a loop
device without device-mapper (nothing is ever activated: `global/activation = 0`), with real
ext4 and swap made inside LVs through loop devices at their offsets. Captured, shown and
restored through the CLI: only the used blocks of each LV's filesystem and the PV's metadata
are stored; the restored PV, VG and LVs have the same UUIDs, names and extents, the ext4 is
fsck-clean with identical files.

The lvm2 tools here see only the loop device of the test (a private LVM_SYSTEM_DIR whose
filter accepts that device alone) and never touch the host's own disks."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
from disks import MiB, partition_table, populate, sh, tree_hashes
from disks import rescue as run_rescue
from drives import sha_of, table

from rescue.hw import luks
from rescue.hw.lvm import read_pv

pytestmark = pytest.mark.root
rescue = functools.partial(run_rescue, check=True)

DISK = 180 * MiB
PART_START = 1 * MiB
PART_SIZE = 150 * MiB
LUKS_START = 152 * MiB
LUKS_SIZE = 24 * MiB
PASSPHRASE = b"correct horse"
EXTENT = 4 * MiB
PE_START = 1 * MiB  # lvm2's default data alignment
ROOT = "8-17"


def lvm(conf: Path, *argv: str) -> str:
    """An lvm2 command that sees only the devices conf's filter accepts."""
    env = {**os.environ, "LVM_SYSTEM_DIR": str(conf), "LVM_SUPPRESS_FD_WARNINGS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def lvm_dir(root: Path, name: str, device: str) -> Path:
    conf = root / name
    conf.mkdir()
    (conf / "lvm.conf").write_text(
        f'devices {{ filter = [ "a|^{device}$|", "r|.*|" ] obtain_device_list_from_udev = 0 }}\n'
        "global { activation = 0 }\n"
        "backup { backup = 0 archive = 0 }\n"
    )
    return conf


def lvs(conf: Path) -> dict[str, dict]:
    """lvs's own view, read-only: name -> uuid, segments as PE ranges."""
    out = json.loads(
        lvm(conf, "lvs", "--readonly", "--reportformat", "json", "-o", "lv_name,lv_uuid,vg_name,vg_uuid,seg_pe_ranges")
    )
    found: dict[str, dict] = {}
    for row in out["report"][0]["lv"]:
        lv = found.setdefault(row["lv_name"], {"uuid": row["lv_uuid"], "vg": row["vg_name"], "ranges": []})
        lv["ranges"].append(row["seg_pe_ranges"].split(":", 1)[1])
        lv["vg_uuid"] = row["vg_uuid"]
    return found


def pv_uuid(conf: Path) -> str:
    return json.loads(lvm(conf, "pvs", "--readonly", "--reportformat", "json", "-o", "pv_uuid"))["report"][0]["pv"][0][
        "pv_uuid"
    ]


def extent_offset(first_extent: int) -> int:
    return PART_START + PE_START + first_extent * EXTENT


class PvDrive:
    def __init__(self, image: Path, device: str, conf: Path, files: dict[str, str], home_sha: str, luks_uuid: str):
        self.image, self.device, self.conf, self.files, self.home_sha = image, device, conf, files, home_sha
        self.luks_uuid = luks_uuid


@pytest.fixture(scope="module")
def pvdrive(mloops) -> PvDrive:
    """GPT, one partition that is a PV of VG "vgr": root (40 MiB, ext4 with files, extents
    8-17, the last LV, as Ubuntu Server's root is), home (two segments: extents 0-3 and
    6-7, random bytes, no filesystem), swap (extents 4-5, mkswap), free extents 18-36 filled
    with garbage that must not be stored.
    Partition 2 is LUKS2 (imaged whole: no passphrase is given to the capture)."""
    image = mloops.file("lvm.img", DISK)
    partition_table(
        str(image),
        f"label: gpt\nstart={PART_START // 512}, size={PART_SIZE // 512}, type=L\n"
        f"start={LUKS_START // 512}, size={LUKS_SIZE // 512}, type=L\n",
    )
    part = mloops.attach(image, offset=PART_START, size=PART_SIZE)
    conf = lvm_dir(mloops.root, "lvm-src", part)
    lvm(conf, "pvcreate", part)
    lvm(conf, "vgcreate", "-s", "4m", "vgr", part)
    lvm(conf, "lvcreate", "-an", "-Zn", "-L", "16m", "-n", "home", "vgr")
    lvm(conf, "lvcreate", "-an", "-Zn", "-L", "8m", "-n", "swap", "vgr")
    lvm(conf, "lvextend", "-L", "+8m", "vgr/home")  # a second segment after swap
    lvm(conf, "lvcreate", "-an", "-Zn", "-L", "40m", "-n", "root", "vgr")
    got = lvs(conf)
    assert got["root"]["ranges"] == [ROOT] and got["home"]["ranges"] == ["0-3", "6-7"]
    assert got["swap"]["ranges"] == ["4-5"]

    rnd = random.Random(16)
    with open(image, "r+b") as f:
        f.seek(extent_offset(18))
        f.write(rnd.randbytes(16 * MiB))  # free extents: old garbage
        for first, count in ((0, 4), (6, 2)):
            f.seek(extent_offset(first))
            f.write(rnd.randbytes(count * EXTENT))
    root = mloops.attach(image, offset=extent_offset(8), size=40 * MiB)
    sh("mkfs.ext4", "-q", "-L", "lvroot", root)
    with mloops.mounted(root) as mnt:
        populate(mnt, seed=16, files=20, max_size=128 * 1024)
        files = tree_hashes(mnt)
    sh("mkswap", "-L", "lvswap", mloops.attach(image, offset=extent_offset(4), size=8 * MiB))
    home_sha = sha_of(image, extent_offset(0), 4 * EXTENT) + sha_of(image, extent_offset(6), 2 * EXTENT)
    luks = mloops.attach(image, offset=LUKS_START, size=LUKS_SIZE)
    luks_uuid = luks_format(luks, "luks2")
    return PvDrive(image, mloops.attach(image), conf, files, home_sha, luks_uuid)


def luks_format(path: str, kind: str) -> str:
    """cryptsetup writes the header and keyslots in userspace: no device-mapper needed."""
    sh(
        "cryptsetup",
        "luksFormat",
        "-q",
        "--type",
        kind,
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        "-",
        path,
        *(["--pbkdf", "pbkdf2", "--label", "cryptroot"] if kind == "luks2" else []),
        input=PASSPHRASE,
    )
    return sh("cryptsetup", "luksUUID", path).strip()


def opens_with_the_passphrase(path: str) -> bool:
    proc = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", path], input=PASSPHRASE, capture_output=True
    )
    return proc.returncode == 0


@pytest.mark.parametrize("kind", ["luks1", "luks2"])
def test_luks_headers_read_from_bytes_agree_with_cryptsetup(tmp_path, kind):
    path = tmp_path / f"{kind}.img"
    path.write_bytes(b"")
    os.truncate(path, 20 * MiB)
    uuid = luks_format(str(path), kind)
    dump = sh("cryptsetup", "luksDump", str(path))
    data = path.read_bytes()[: 4 * MiB]
    header = luks.parse_header(data[: luks.hdr_size(data)])
    assert header is not None and header.uuid == uuid and header.version == int(kind[-1])
    words = " ".join(dump.split())  # luksDump aligns with tabs and spaces
    if kind == "luks1":
        assert f"Payload offset: {header.data_offset // 512}" in words and "Cipher mode: xts-plain64" in words
    else:
        assert f"offset: {header.data_offset} [bytes]" in words and "Label: cryptroot" in words
        assert f"cipher: {header.cipher}" in words


def test_the_metadata_read_from_bytes_is_what_lvm2_reports(pvdrive):
    """rescue.hw.lvm parses the label and metadata itself (no lvm2 tool, nothing activated):
    it must agree with lvs and pvs on every UUID and extent."""
    fd = os.open(pvdrive.image, os.O_RDONLY)
    try:
        pv = read_pv(lambda n, o: os.pread(fd, n, PART_START + o))
    finally:
        os.close(fd)
    assert pv is not None and pv.vg is not None
    assert pv.label.uuid == pv_uuid(pvdrive.conf) and pv.pe_start == PE_START
    assert pv.vg.extent_size == EXTENT and pv.vg.name == "vgr"
    reported = lvs(pvdrive.conf)
    for lv in pv.lvs_here():
        ranges = [f"{r.pv_extent}-{r.pv_extent + r.extent_count - 1}" for r in lv.runs_on("pv0")]
        assert (lv.uuid, ranges) == (reported[lv.name]["uuid"], reported[lv.name]["ranges"])
        assert pv.vg.uuid == reported[lv.name]["vg_uuid"]


@pytest.fixture(scope="module")
def captured(pvdrive, mloops) -> Path:
    repo = mloops.root / "repo"
    rescue("capture", pvdrive.device, str(repo), "--name", "lvm")
    return repo


def test_capture_stores_used_blocks_and_metadata_only(pvdrive, captured):
    info = json.loads(rescue("info", str(captured), "lvm", "--json").stdout)
    area = next(a for a in info["areas"] if a["partition"] == 1)
    fs = area["fs"]
    assert fs["type"] == "LVM2_member" and fs["uuid"] == pv_uuid(pvdrive.conf) and fs["label"] == "vgr"
    assert "root: ext4, used blocks (dumpe2fs)" in fs["map_source"]
    assert "home: -, imaged whole (2 segments)" in fs["map_source"]
    assert "swap: swap, used blocks (swap header)" in fs["map_source"]
    stats = area["stats"]
    print(
        f"\nLVM PV: partition {PART_SIZE} bytes, used+metadata {fs['used_bytes']}, "
        f"read {stats['mapped_bytes']}, in data chunks {stats['data_bytes']} bytes"
    )
    # root's files (~11 MiB) + home's 24 MiB + metadata: far below the partition, and the
    # 16 MiB of garbage in free extents is not there (the first and last MiB are always read).
    assert stats["mapped_bytes"] <= fs["used_bytes"] + 2 * MiB
    assert stats["data_bytes"] < fs["used_bytes"] + 2 * 4 * MiB < PART_SIZE - 60 * MiB
    luks_area = next(a for a in info["areas"] if a["partition"] == 2)
    assert luks_area["fs"]["type"] == "crypto_LUKS" and luks_area["stats"]["map"] == "whole"


def test_info_shows_the_stack(pvdrive, captured):
    out = rescue("info", str(captured), "lvm").stdout
    assert f"#1: LVM2 PV {pv_uuid(pvdrive.conf)}, data at 1.0 MiB" in out
    assert "-> VG vgr (1 PV, extent 4.0 MiB, 3 LV" in out
    assert "-> LV root 40.0 MiB: ext4, used blocks (dumpe2fs)" in out
    assert "-> LV home 24.0 MiB: no filesystem, imaged whole (2 segments)" in out
    assert "-> LV swap 8.0 MiB: swap, used blocks (swap header)" in out
    assert f"#2: LUKS2 {pvdrive.luks_uuid} (cryptroot), aes-xts-plain64, payload at 16.0 MiB" in out
    assert "#2: imaged whole, every byte: LUKS-encrypted" in out


def test_restore_brings_back_the_same_pv_vg_and_lvs(pvdrive, captured, mloops):
    target = mloops.disk("blank.img", DISK)
    out = rescue("restore", str(captured), "lvm", target, "--yes", "--layout", "same")
    assert "restored lvm" in out.stdout
    path = mloops.drives / "blank.img"
    part = mloops.attach(path, offset=PART_START, size=PART_SIZE)
    conf = lvm_dir(mloops.root, "lvm-dst", part)
    assert lvs(conf) == lvs(pvdrive.conf)
    assert pv_uuid(conf) == pv_uuid(pvdrive.conf)
    lvm(conf, "vgck", "vgr")

    root = mloops.attach(path, offset=extent_offset(8), size=40 * MiB)
    fsck = subprocess.run(["e2fsck", "-fn", root], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with mloops.mounted(root, options="ro") as mnt:
        assert tree_hashes(mnt) == pvdrive.files
    home = sha_of(path, extent_offset(0), 4 * EXTENT) + sha_of(path, extent_offset(6), 2 * EXTENT)
    assert home == pvdrive.home_sha, "the multi-segment LV was not restored byte for byte"
    swap = sh("blkid", "-p", "-o", "export", "-O", str(extent_offset(4)), str(path))
    assert "TYPE=swap" in swap and "LABEL=lvswap" in swap
    assert sha_of(path, extent_offset(18), 16 * MiB) == sha_of("/dev/zero", 0, 16 * MiB), "free extents were stored"
    restored_luks = mloops.attach(path, offset=LUKS_START, size=LUKS_SIZE)
    assert sh("cryptsetup", "luksUUID", restored_luks).strip() == pvdrive.luks_uuid
    assert opens_with_the_passphrase(restored_luks)
    assert sha_of(path, LUKS_START, LUKS_SIZE) == sha_of(pvdrive.image, LUKS_START, LUKS_SIZE)


def test_restore_onto_a_larger_drive_grows_the_pv_and_the_last_lv(pvdrive, captured, mloops):
    """The PV fills its larger partition; root, the last LV, grows into the new extents as one
    run, and its ext4 with it: same UUIDs, fsck clean, files identical."""
    path = mloops.file("larger.img", DISK + 64 * MiB)
    plan = json.loads(rescue("plan", str(captured), "lvm", str(path), "--layout", "proportional", "--json").stdout)
    assert plan["fits"]
    rescue("restore", str(captured), "lvm", mloops.attach(path), "--yes", "--layout", "proportional", "--no-preverify")
    p1 = table(path)["parts"][0]
    size = p1["size"] * 512
    assert size > PART_SIZE + 32 * MiB, "the PV's partition did not grow"
    part = mloops.attach(path, offset=p1["start"] * 512, size=size)
    conf = lvm_dir(mloops.root, "lvm-larger", part)
    got, before = lvs(conf), lvs(pvdrive.conf)
    assert {n: v["uuid"] for n, v in got.items()} == {n: v["uuid"] for n, v in before.items()}
    assert got["home"]["ranges"] == before["home"]["ranges"] and got["swap"]["ranges"] == ["4-5"]
    last = (size - PE_START) // EXTENT - 1
    assert got["root"]["ranges"] == [f"8-{last}"], "root did not grow to the end of the PV as one run"
    assert pv_uuid(conf) == pv_uuid(pvdrive.conf)
    lvm(conf, "vgck", "vgr")
    root_size = (last - 7) * EXTENT
    check_root_lv(mloops, path, p1["start"] * 512 + PE_START + 8 * EXTENT, root_size, pvdrive.files)


def check_root_lv(mloops, path: Path, offset: int, size: int, files: dict) -> None:
    """The root LV at [offset, offset+size) of the drive: its ext4 fsck clean, filling the
    LV exactly, holding exactly `files`."""
    root = mloops.attach(path, offset=offset, size=size)
    fsck = subprocess.run(["e2fsck", "-fn", root], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    head = sh("dumpe2fs", "-h", root)
    blocks = int(next(ln.split()[-1] for ln in head.splitlines() if ln.startswith("Block count:")))
    block = int(next(ln.split()[-1] for ln in head.splitlines() if ln.startswith("Block size:")))
    assert blocks * block == size, "ext4 does not fill its LV"
    with mloops.mounted(root, options="ro") as mnt:
        assert tree_hashes(mnt) == files


DEB_DISK = 160 * MiB
DEB_PART = DEB_DISK - 2 * MiB  # GPT leaves its backup table in the last MiB
VG = "deb-vg"


class DebianDrive:
    def __init__(self, image: Path, conf: Path, files: dict[str, str], swap_uuid: str, repo: Path):
        self.image, self.conf, self.files, self.swap_uuid, self.repo = image, conf, files, swap_uuid, repo


@pytest.fixture(scope="module")
def debdrive(mloops) -> DebianDrive:
    """Debian's installer layout ("guided - use entire disk and set up LVM"): VG deb-vg with
    root first (ext4 with files, extents 0-29) and swap_1 right after it (extents 30-31); the
    rest of the PV free. Root is mostly empty, so that it can shrink by more than the
    planner's 64 MiB margin. Captured once."""
    image = mloops.file("debian.img", DEB_DISK)
    partition_table(str(image), f"label: gpt\nstart={PART_START // 512}, size={DEB_PART // 512}, type=L\n")
    part = mloops.attach(image, offset=PART_START, size=DEB_PART)
    conf = lvm_dir(mloops.root, "lvm-deb", part)
    lvm(conf, "pvcreate", part)
    lvm(conf, "vgcreate", "-s", "4m", VG, part)
    lvm(conf, "lvcreate", "-an", "-Zn", "-L", "120m", "-n", "root", VG)
    lvm(conf, "lvcreate", "-an", "-Zn", "-L", "8m", "-n", "swap_1", VG)
    assert {n: v["ranges"] for n, v in lvs(conf).items()} == {"root": ["0-29"], "swap_1": ["30-31"]}
    root = mloops.attach(image, offset=extent_offset(0), size=120 * MiB)
    sh("mkfs.ext4", "-q", root)
    with mloops.mounted(root) as mnt:
        populate(mnt, seed=17, files=12, max_size=96 * 1024)
        files = tree_hashes(mnt)
    sh("mkswap", mloops.attach(image, offset=extent_offset(30), size=8 * MiB))
    swap_uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", "-O", str(extent_offset(30)), str(image)).strip()
    repo = mloops.root / "deb-repo"
    rescue("capture", mloops.attach(image), str(repo), "--name", "deb")
    return DebianDrive(image, conf, files, swap_uuid, repo)


def restored_root(debdrive: DebianDrive, mloops, path: Path, name: str) -> int:
    """Restore the Debian drive onto `path` (proportional layout) and check what every
    layout must keep: same PV, VG and LV UUIDs, vgck clean, root first taking every extent
    but swap_1's, its ext4 fsck clean, filling it, with identical files, and swap_1 right
    after root with its swap UUID. `rescue plan` says what happens to the LVs first. Root's size."""
    plan = rescue("plan", str(debdrive.repo), "deb", str(path), "--layout", "proportional").stdout
    assert re.search(r"#1: LVM: PV (grown|shrunk) to .*; LV root (grown|shrunk) from .*; swap_1 moved", plan), plan
    rescue(
        "restore", str(debdrive.repo), "deb", mloops.attach(path), "--yes", "--layout", "proportional", "--no-preverify"
    )
    p1 = table(path)["parts"][0]
    start, size = p1["start"] * 512, p1["size"] * 512
    part = mloops.attach(path, offset=start, size=size)
    conf = lvm_dir(mloops.root, name, part)
    got, before = lvs(conf), lvs(debdrive.conf)
    assert {n: v["uuid"] for n, v in got.items()} == {n: v["uuid"] for n, v in before.items()}
    assert pv_uuid(conf) == pv_uuid(debdrive.conf)
    lvm(conf, "vgck", VG)
    first, last = (int(x) for x in got["root"]["ranges"][0].split("-"))
    assert first == 0 and len(got["root"]["ranges"]) == 1, "root is not one run at the start of the PV"
    root_size = (last + 1) * EXTENT
    assert root_size == ((size - PE_START) // EXTENT - 2) * EXTENT, "root does not take every extent but swap_1's"
    check_root_lv(mloops, path, start + PE_START, root_size, debdrive.files)
    assert got["swap_1"]["ranges"] == [f"{last + 1}-{last + 2}"], "swap_1 does not follow root"
    swap_at = start + PE_START + (last + 1) * EXTENT
    probe = sh("blkid", "-p", "-o", "export", "-O", str(swap_at), str(path))
    assert "TYPE=swap" in probe and f"UUID={debdrive.swap_uuid}" in probe, probe
    return root_size


def test_debian_layout_onto_a_larger_drive_grows_root_and_moves_swap(debdrive, mloops):
    path = mloops.file("deb-larger.img", DEB_DISK + 40 * MiB)
    assert restored_root(debdrive, mloops, path, "lvm-deb-larger") > 120 * MiB + 40 * MiB


def test_debian_layout_onto_a_smaller_drive_shrinks_root_and_moves_swap(debdrive, mloops):
    info = json.loads(rescue("info", str(debdrive.repo), "deb", "--json").stdout)
    fs = next(a for a in info["areas"] if a["partition"] == 1)["fs"]
    assert PE_START + 2 * EXTENT < fs["min_size"] < PE_START + 12 * EXTENT, "root's shrink room is not counted"
    path = mloops.file("deb-smaller.img", DEB_DISK - 48 * MiB)
    assert restored_root(debdrive, mloops, path, "lvm-deb-smaller") < 120 * MiB


@pytest.mark.parametrize(
    ("size", "words"),
    [
        (198 * MiB, "#1: LVM: PV grown to 198.0 MiB; LV root grown from 120.0 MiB to 188.0 MiB; swap_1 moved"),
        (110 * MiB, "#1: LVM: PV shrunk to 110.0 MiB; LV root shrunk from 120.0 MiB to 100.0 MiB; swap_1 moved"),
    ],
)
def test_the_plan_says_what_happens_to_the_lvs(debdrive, size, words):
    """The words read from the image alone (its metadata and the types captured per LV),
    for the partition sizes the restores above get: root takes every extent but swap_1's."""
    from rescue.imaging.lvm import plan_notes
    from rescue.imaging.verify import load_indexes
    from rescue.repo.store import Repository

    repo = Repository.open(str(debdrive.repo))
    manifest, indexes = load_indexes(repo, "deb")
    area = next(a for a in manifest.areas if a.partition == 1)
    assert plan_notes(repo, manifest, indexes, {area.name: size}) == [words]
    assert plan_notes(repo, manifest, indexes, {area.name: area.size}) == []

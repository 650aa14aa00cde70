"""Windows system drives (issue 24), built by the tests with ntfs-3g's tools, mkfs.fat, mtools,
sfdisk and hivex (windisks.py): restored onto larger and smaller drives and cloned, then
checked as Windows would look at them: each NTFS/FAT boot sector's hidden-sectors field equals
its partition's start, every BCD device element names a partition that is there (offset and
disk signature on MBR, partition and disk GUID on GPT), the files are identical, ntfsfix -n is
clean. Booting Windows itself cannot be tested here (docs/windows.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from disks import MiB, rescue, sh, tree_hashes
from windisks import MBR_SIG, SIZE, WinDrive, build, hibernate

from rescue.filesystems import windows
from rescue.filesystems.base import Volume
from rescue.model import windows as win
from rescue.model.layout import DiskLayout, Partition

pytestmark = pytest.mark.root

KINDS = ("bios", "bios-c", "uefi")
LARGER, SMALLER = SIZE + 256 * MiB, SIZE - 160 * MiB


@pytest.fixture(scope="module")
def repo(mloops):
    return mloops.root / "repo"


@pytest.fixture(scope="module")
def drives(mloops, repo) -> dict[str, WinDrive]:
    """Each fixture built once and captured once."""
    out = {}
    for kind in KINDS:
        d = build(mloops, kind)
        proc = rescue("capture", d.device, str(repo), "--name", kind)
        assert proc.returncode == 0, proc.stderr
        out[kind] = d
    return out


def layout_of(path: Path | str) -> DiskLayout:
    t = json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]
    table = "gpt" if t["label"] == "gpt" else "msdos"
    parts = [
        Partition(
            int(p["node"].rsplit("img", 1)[-1]) if "img" in p["node"] else int(p["node"][-1]),
            p["start"],
            p["start"] + p["size"] - 1,
            uuid=p.get("uuid", "").lower() or None,
        )
        for p in t["partitions"]
    ]
    return DiskLayout(table, 512, 0, t["id"].lower() if table == "gpt" else t["id"], parts)


def types(path: Path | str) -> list[str]:
    return [p["type"] for p in json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]["partitions"]]


def check_windows(mloops, drive: WinDrive, target: Path, *, same_ids: bool = True) -> list[str]:
    """What a restore or clone must leave: per partition, hidden sectors == start; every BCD
    device element names a partition of this drive (returns them in words); files identical;
    ntfsfix -n clean."""
    layout = layout_of(target)
    assert (layout.disk_id == drive.disk_id) is same_ids
    parts = {p.number: p for p in layout.partitions}
    refs: list[win.BcdRef] = []
    for wp in drive.parts:
        p = parts[wp.number]
        assert (p.uuid == wp.uuid or not wp.uuid) is same_ids or not wp.uuid
        if wp.fs is None:
            continue
        offset, size = p.start * 512, (p.end - p.start + 1) * 512
        assert windows.hidden_sectors(str(target), offset) == p.start, f"#{wp.number}: hidden sectors"
        dev = mloops.attach(target, offset=offset, size=size)
        with windows.bcd_file(dev, wp.fs) as bcd:
            if bcd is not None:
                refs += windows.read_refs(bcd[1])
        if wp.fs == "ntfs":
            proc = subprocess.run(["ntfsfix", "-n", dev], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            with mloops.mounted(dev, "ntfs-3g", "ro") as mnt:
                files, want = tree_hashes(mnt), dict(drive.hashes[wp.number])
                if not same_ids:  # the BCD was rewritten on purpose; read back below
                    files.pop("Boot/BCD", None), want.pop("Boot/BCD", None)
                assert files == want, f"#{wp.number}: files differ"
        else:
            assert subprocess.run(["fsck.vfat", "-n", dev], capture_output=True).returncode == 0
        subprocess.run(["losetup", "--detach", dev])
        mloops.devices.remove(dev)
    assert refs, "no BCD found on the target"
    for ref in refs:
        assert win.resolve(ref, layout) is not None, f"BCD names nothing on the target: {ref}"
    return [win.ref_words(r, layout) for r in refs]


@pytest.mark.parametrize("kind", KINDS)
def test_info_names_the_boot_manager_and_windows(drives, repo, kind):
    proc = rescue("info", str(repo), kind)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    want = {
        "bios": "Windows boot manager on #1, Windows on #2",
        "bios-c": "Windows boot manager on #1, Windows on #1",
        "uefi": "Windows boot manager on #1, Windows on #3",
    }[kind]
    assert want in proc.stdout
    assert "element 21000001" in proc.stdout and "-> #" in proc.stdout
    assert "no partition of this drive" not in proc.stdout


CASES = [
    # kind, target size, layout, clone
    ("bios", LARGER, "proportional", False),
    ("bios", SMALLER, "grow-last", False),
    ("bios", LARGER, "same", True),
    ("bios-c", LARGER, "grow-last", False),
    ("bios-c", SMALLER, "proportional", True),
    ("bios-c", LARGER, "same", False),
    ("uefi", LARGER, "proportional", False),
    ("uefi", LARGER, "same", False),
    ("uefi", SMALLER, "grow-last", True),
    ("uefi", SMALLER, "proportional", False),
]


@pytest.mark.parametrize(("kind", "size", "layout", "clone"), CASES)
def test_restore_and_clone_keep_windows_bootable(drives, repo, mloops, kind, size, layout, clone):
    d = drives[kind]
    name = f"{kind}-{size // MiB}-{layout}-{'clone' if clone else 'restore'}.img"
    target = mloops.disk(name, size)
    if clone:
        proc = rescue("clone", d.device, target, "--yes", "--layout", layout)
    else:
        proc = rescue("restore", str(repo), kind, target, "--yes", "--layout", layout)
    assert proc.returncode == 0, proc.stderr
    path = mloops.drives / name
    words = check_windows(mloops, d, path)
    print("\n".join(words))
    new = {p.number: p for p in layout_of(path).partitions}
    assert types(path) == types(d.image), "partition types changed"
    for wp in d.parts:
        if wp.role in ("c", "system-reserved") and d.table == "msdos":
            assert new[wp.number].start == wp.start, "a partition the BCD names by offset moved"
        if wp.role == "recovery":  # keeps its size and type, after C:
            assert new[wp.number].end - new[wp.number].start + 1 == wp.size
            assert new[wp.number].start > new[d.part("c").number].end
    if layout != "same":
        assert "Windows boot configuration" in proc.stdout or d.table == "gpt"


def test_moved_ntfs_and_fat_get_their_hidden_sectors_on_a_linux_drive_too(mloops, repo):
    """Not only Windows drives: any NTFS or FAT whose partition moves (here the second and
    third, moved by a grown ext4 before them) gets the field set, and the plan says so."""
    image = mloops.file("linux.img", 256 * MiB)
    table = b"label: dos\nstart=2048, size=100MiB, type=83\nsize=80MiB, type=7\nsize=40MiB, type=c\n"
    sh("sfdisk", "--quiet", str(image), input=table)
    sh("mkfs.ext4", "-q", mloops.attach(image, offset=MiB, size=100 * MiB))
    sh("mkntfs", "-q", "-f", "-F", "-p", str(101 * 2048), mloops.attach(image, offset=101 * MiB, size=80 * MiB))
    sh("mkfs.fat", "-F", "32", "-s", "1", "-h", str(181 * 2048), mloops.attach(image, offset=181 * MiB, size=40 * MiB))
    dev = mloops.attach(image)
    assert rescue("capture", dev, str(repo), "--name", "linux").returncode == 0
    target = mloops.disk("linux-larger.img", 512 * MiB)
    plan = rescue("plan", str(repo), "linux", target)
    assert "hidden-sectors field of the boot sector of #2 (ntfs), #3 (vfat)" in plan.stdout, plan.stdout
    assert rescue("clone", dev, target, "--yes").returncode == 0
    path = mloops.drives / "linux-larger.img"
    for p in layout_of(path).partitions[1:]:
        assert p.start != {2: 101, 3: 181}[p.number] * 2048
        assert windows.hidden_sectors(str(path), p.start * 512) == p.start
        part = mloops.attach(path, offset=p.start * 512, size=(p.end - p.start + 1) * 512)
        fsck = ["ntfsfix", "-n"] if p.number == 2 else ["fsck.vfat", "-n"]
        assert subprocess.run([*fsck, part], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["bios", "uefi"])
def test_new_ids_rewrite_the_bcd(drives, repo, mloops, kind):
    """--new-ids: the MBR disk signature, or the GPT disk and partition GUIDs, are new; the
    BCD's device elements follow them (as fstab does on Linux)."""
    d = drives[kind]
    target = mloops.disk(f"{kind}-newids.img", LARGER)
    plan = rescue("plan", str(repo), kind, target, "--new-ids")
    assert "rewrite the device elements of the Windows BCD" in plan.stdout, plan.stdout
    proc = rescue("restore", str(repo), kind, target, "--yes", "--new-ids")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr
    words = check_windows(mloops, d, mloops.drives / f"{kind}-newids.img", same_ids=False)
    assert all(f"{MBR_SIG:08x}" not in w and d.disk_id not in w for w in words)


def test_hibernated_windows_is_captured_and_resize_refused_in_one_line(mloops, repo):
    image = mloops.file("hibernated.img", 128 * MiB)
    sh("sfdisk", "--quiet", str(image), input=b"label: dos\nstart=2048, size=120MiB, type=7, bootable\n")
    sh("mkntfs", "-q", "-f", "-F", "-p", "2048", mloops.attach(image, offset=MiB, size=120 * MiB))
    hibernate(mloops, image, MiB, 120 * MiB)
    dev = mloops.attach(image)
    proc = rescue("capture", dev, str(repo), "--name", "hibernated")
    assert proc.returncode == 0, proc.stderr
    log = (repo / "images" / "hibernated" / "log.txt").read_text()
    assert "WARNING: p1: Windows is hibernated" in log
    info = rescue("info", str(repo), "hibernated").stdout
    assert "Shift+Shut down" in info
    target = mloops.disk("hib-larger.img", 256 * MiB)
    for cmd in (["plan"], ["restore"]):
        proc = rescue(*cmd, str(repo), "hibernated", target, *(["--yes"] if cmd == ["restore"] else []))
        assert proc.returncode != 0
        err = proc.stderr.strip()
        print(err)
        assert len(err.splitlines()) == 1 and "shutdown /s /t 0" in err and "Traceback" not in err, err
    assert subprocess.run(["sfdisk", "--dump", target], capture_output=True).returncode != 0, "nothing written"
    same = mloops.disk("hib-same.img", 128 * MiB)
    proc = rescue("restore", str(repo), "hibernated", same, "--yes", "--layout", "same")
    assert proc.returncode == 0, proc.stderr


def test_bitlocker_volume_is_imaged_whole_and_said_to_be(mloops, repo):
    image = mloops.file("bitlocker.img", 64 * MiB)
    sh("sfdisk", "--quiet", str(image), input=b"label: dos\nstart=2048, size=60MiB, type=7\n")
    with open(image, "r+b") as f:  # a BitLocker volume's boot sector: "-FVE-FS-" as OEM id
        f.seek(MiB)
        f.write(b"\xeb\x58\x90-FVE-FS-" + bytes(499) + b"\x55\xaa")
        f.seek(2 * MiB)
        f.write(b"ciphertext" * 1000)
    assert windows.is_bitlocker(Volume(str(image), MiB, 60 * MiB))
    dev = mloops.attach(image)
    assert rescue("capture", dev, str(repo), "--name", "bitlocker").returncode == 0
    info = rescue("info", str(repo), "bitlocker").stdout
    assert "BitLocker: imaged whole" in info
    manifest = json.loads((repo / "images" / "bitlocker" / "manifest.json").read_text())
    p1 = next(a for a in manifest["areas"] if a["partition"] == 1)
    assert p1["fs"]["type"] == "BitLocker" and p1["stats"]["map"] == "whole"

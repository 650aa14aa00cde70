"""A realistic multi-filesystem source drive for engine tests: GPT with a BIOS boot partition,
ext4, XFS, btrfs, FAT32, NTFS and an unformatted partition holding random bytes; and an MBR
variant. Built once per test module (it takes a few seconds)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from disks import LoopRegistry, MiB, partition_table, populate, sh, sha_of, tree_hashes

LINUX = "0FC63DAF-8483-4772-8E79-3D69E8477DE4"
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B97199C7"
BIOS = "21686148-6449-6E6F-744E-656564454649"
SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"


@dataclass
class Part:
    number: int
    start: int  # sector
    size: int  # sectors
    fs: str | None
    label: str = ""

    @property
    def offset(self) -> int:
        return self.start * 512

    @property
    def nbytes(self) -> int:
        return self.size * 512


@dataclass
class SourceDrive:
    image: Path
    device: str
    parts: list[Part]
    hashes: dict[int, dict[str, str]] = field(default_factory=dict)  # per partition: file hashes
    raw_sha: dict[int, str] = field(default_factory=dict)  # unformatted partitions: content hash

    def part(self, fs: str) -> Part:
        return next(p for p in self.parts if p.fs == fs)


GPT_PARTS = [
    Part(1, 2048, 2048, None, "bios"),
    Part(2, 4096, 160 * 2048, "ext4", "rootfs"),
    Part(3, 4096 + 160 * 2048, 320 * 2048, "xfs", "data-xfs"),
    Part(4, 4096 + 480 * 2048, 200 * 2048, "btrfs", "data-btrfs"),
    Part(5, 4096 + 680 * 2048, 64 * 2048, "vfat", "ESPDATA"),
    Part(6, 4096 + 744 * 2048, 64 * 2048, "ntfs", "winstuff"),
    Part(7, 4096 + 808 * 2048, 8 * 2048, "raw", "scratch"),
]
GPT_SIZE = 824 * MiB


def mib_layout(*parts: tuple[int, str | None, str]) -> list[Part]:
    """Partitions one after another from 1 MiB: (size in MiB, filesystem, label) each."""
    out, start = [], 2048
    for number, (mib, fs, label) in enumerate(parts, 1):
        out.append(Part(number, start, mib * 2048, fs, label))
        start += mib * 2048
    return out


def build_gpt_drive(
    loops: LoopRegistry, name: str = "source.img", parts: list[Part] = GPT_PARTS, size: int = GPT_SIZE
) -> SourceDrive:
    path = loops.file(name, size)
    types = {None: BIOS, "vfat": BASIC, "ntfs": BASIC, "swap": SWAP}
    script = "label: gpt\n" + "".join(
        f'start={p.start}, size={p.size}, type={types.get(p.fs, LINUX)}, name="{p.label}"\n' for p in parts
    )
    partition_table(str(path), script)
    # Boot code and a post-GPT gap payload, as GRUB would leave them.
    rnd = random.Random(7)
    with open(path, "r+b") as f:
        f.write(rnd.randbytes(440))
        f.seek(34 * 512)
        f.write(rnd.randbytes((2048 - 34) * 512))
    drive = SourceDrive(path, "", [Part(**vars(p)) for p in parts])
    for p in drive.parts:
        fill(loops, drive, p)
    drive.device = loops.attach(path)
    return drive


def build_mbr_drive(loops: LoopRegistry, name: str = "mbr.img") -> SourceDrive:
    parts = [Part(1, 2048, 100 * 2048, "ext4", "mbr-root"), Part(5, 2048 + 102 * 2048, 80 * 2048, "ext4", "logical")]
    path = loops.file(name, 200 * MiB)
    partition_table(
        str(path),
        "label: dos\nlabel-id: 0x1234abcd\n"
        f"start=2048, size={100 * 2048}, type=83, bootable\n"
        f"start={2048 + 101 * 2048}, size={82 * 2048}, type=5\n"
        f"start={2048 + 102 * 2048}, size={80 * 2048}, type=83\n",
    )
    with open(path, "r+b") as f:
        f.write(random.Random(9).randbytes(440))
    drive = SourceDrive(path, "", parts)
    for p in parts:
        fill(loops, drive, p)
    drive.device = loops.attach(path)
    return drive


def fill(loops: LoopRegistry, drive: SourceDrive, p: Part) -> None:
    dev = loops.attach(drive.image, offset=p.offset, size=p.nbytes)
    if p.fs is None:
        return
    if p.fs == "raw":
        data = random.Random(p.number).randbytes(p.nbytes // 2)
        with open(dev, "r+b") as f:
            f.write(data)
        drive.raw_sha[p.number] = sha_of(drive.image, p.offset, p.nbytes)
        return
    if p.fs == "swap":
        sh("mkswap", "-L", p.label, dev)
        return
    mkfs = {
        "ext4": ["mkfs.ext4", "-q", "-L"],
        "xfs": ["mkfs.xfs", "-q", "-f", "-L"],
        "btrfs": ["mkfs.btrfs", "-q", "-f", "-L"],
        "vfat": ["mkfs.vfat", "-F", "32", "-n"],
        "ntfs": ["mkntfs", "-Q", "-F", "-L"],
    }[p.fs]
    sh(*mkfs, p.label, dev)
    if p.fs == "vfat":
        drive.hashes[p.number] = fill_fat(loops.root, dev, p.number)
        return
    fstype = "ntfs-3g" if p.fs == "ntfs" else p.fs
    with loops.mounted(dev, fstype) as mnt:
        populate(mnt, seed=p.number, files=30)
        # Churn: delete some files so freed blocks hold stale data the map must skip.
        for victim in sorted(mnt.rglob("file1*.bin"))[:3]:
            victim.unlink()
        drive.hashes[p.number] = tree_hashes(mnt)


def fill_fat(root: Path, dev: str, seed: int) -> dict[str, str]:
    src = root / f"fatsrc{seed}"
    src.mkdir()
    populate(src, seed=seed, files=20)
    os.unlink(src / "link")  # FAT has no symlinks
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for entry in src.iterdir():
        subprocess.run(["mcopy", "-s", "-i", dev, str(entry), "::/"], check=True, env=env)
    return tree_hashes(src)


def fat_hashes(loops: LoopRegistry, dev: str) -> dict[str, str]:
    out = loops.root / f"fatout{len(loops.devices)}"
    out.mkdir()
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-s", "-n", "-i", dev, "::/*", str(out)], check=True, env=env)
    return tree_hashes(out)


def check_restored(loops: LoopRegistry, drive: SourceDrive, target: str) -> None:
    """What a user checks after a restore: fsck clean, same UUID and label, every file identical.
    Partitions are found in the target's own table (a resized restore moves them)."""
    placed = {
        int(q["node"].rsplit("img", 1)[-1]): q
        for q in __import__("json").loads(sh("sfdisk", "--json", str(target)))["partitiontable"]["partitions"]
    }
    for p in drive.parts:
        if p.fs is None:
            continue
        q = placed[p.number]
        dev = loops.attach(target, offset=q["start"] * 512, size=q["size"] * 512)
        if p.fs == "raw":
            assert sha_of(target, q["start"] * 512, p.nbytes) == drive.raw_sha[p.number], f"p{p.number} bytes differ"
            continue
        src_dev = loops.attach(drive.image, offset=p.offset, size=p.nbytes, readonly=True)
        assert blkid(dev) == blkid(src_dev), f"p{p.number}: UUID/LABEL/TYPE changed"
        if p.fs == "swap":
            continue
        fsck = {
            "ext4": ["e2fsck", "-fn"],
            "xfs": ["xfs_repair", "-n"],
            "btrfs": ["btrfs", "check", "--readonly"],
            "vfat": ["fsck.vfat", "-n"],
            "ntfs": ["ntfsfix", "-n"],
        }[p.fs]
        proc = subprocess.run(fsck + [dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.returncode == 0, f"p{p.number} ({p.fs}) fsck failed:\n{proc.stdout.decode()[-2000:]}"
        if p.fs == "vfat":
            assert fat_hashes(loops, dev) == drive.hashes[p.number]
            continue
        fstype = "ntfs-3g" if p.fs == "ntfs" else p.fs
        opts = "ro,norecovery" if p.fs == "xfs" else "ro"
        with loops.mounted(dev, fstype, opts) as mnt:
            assert tree_hashes(mnt) == drive.hashes[p.number], f"p{p.number} ({p.fs}) files differ"


def blkid(dev: str) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", dev], stdout=subprocess.PIPE, text=True).stdout
    keep = ("UUID", "LABEL", "TYPE")
    return {k: v for k, v in (line.split("=", 1) for line in out.splitlines() if "=" in line) if k in keep}


def table(path: Path | str) -> dict:
    import json

    t = json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]
    return {
        "label": t["label"],
        "id": t.get("id"),
        "parts": [{k: v for k, v in p.items() if k != "node"} for p in t["partitions"]],
    }


def data_drive(loops: LoopRegistry, name: str, size: int, files: int, tree: Path) -> str:
    """A GPT drive of `size` bytes with one ext4 partition ("data") from 1 MiB to 1 MiB
    before its end, holding `files` random MiB-files (they do not compress) and a copy of
    `tree`; attached read-only, whole. The small source of the fleet and multicast tests."""
    sectors = (size // MiB - 2) * 2048
    path = loops.file(name, size)
    partition_table(str(path), f'label: gpt\nstart=2048, size={sectors}, name="data"\n')
    part = loops.attach(path, offset=MiB, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-m", "0", "-L", "data", part)
    with loops.mounted(part) as mnt:
        for i in range(files):
            (mnt / f"r{i}.bin").write_bytes(os.urandom(MiB))
        shutil.copytree(tree, mnt / "src")
    return loops.attach(path, readonly=True)

"""Windows-like system drives built by the tests (no Windows here): NTFS by mkntfs, FAT by
mkfs.fat and mtools, MBR/GPT tables by sfdisk, and a Boot Configuration Data store written with
hivex the way bcdedit lays one out.

hivex cannot create a hive from nothing, and Debian ships no empty one; `empty_hive` builds
the smallest valid hive for these fixtures only, from the public description of the regf
format (Maxim Suhanov, "Windows registry file format specification", github.com/msuhanov/
regf): a 4096-byte base block, then one 4096-byte hive bin holding the root key node (nk)
and its security cell (sk). Everything after that (keys, values) is written through hivex."""

from __future__ import annotations

import struct
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from disks import LoopRegistry, MiB, partition_table, populate, sh, tree_hashes

from rescue.model import windows as win

BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B97199C7"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
WINRE = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"  # bcdedit's well-known {bootmgr}
RAMDISK_OPTIONS = "{ae5534e0-a924-466c-b836-758539a3ee3a}"  # {ramdiskoptions}
LOADER = "{3c1e2f4a-7d0b-11ee-9c5a-0242ac120002}"
MBR_SIG = 0x1234ABCD


def empty_hive() -> bytes:
    """A registry hive with only its root key (see the module's docstring for the source)."""
    hbin = bytearray(4096)
    hbin[0:4] = b"hbin"
    struct.pack_into("<II", hbin, 4, 0, 4096)  # offset of this bin, its size
    nk_at, name = 0x20, b"NewStoreRoot"
    nk_size = (4 + 76 + len(name) + 7) // 8 * 8
    sk_at = nk_at + nk_size
    none = 0xFFFFFFFF
    nk = struct.pack(
        "<2sHQIIIIIIIIIIIIIIIHH",
        b"nk",
        0x2C,  # KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME
        0,  # last written
        0,  # access bits
        0,  # parent
        0,  # subkeys
        0,  # volatile subkeys
        none,  # subkeys list
        none,  # volatile subkeys list
        0,  # values
        none,  # values list
        sk_at,  # security cell
        none,  # class name
        0,
        0,
        0,
        0,
        0,  # largest name/class/value lengths, workvar
        len(name),
        0,
    )
    struct.pack_into("<i", hbin, nk_at, -nk_size)  # negative: allocated
    hbin[nk_at + 4 : nk_at + 4 + len(nk) + len(name)] = nk + name
    sd = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)  # self-relative, DACL present (null)
    sk = struct.pack("<2sHIIII", b"sk", 0, sk_at, sk_at, 1, len(sd)) + sd
    sk_size = (4 + len(sk) + 7) // 8 * 8
    struct.pack_into("<i", hbin, sk_at, -sk_size)
    hbin[sk_at + 4 : sk_at + 4 + len(sk)] = sk
    struct.pack_into("<i", hbin, sk_at + sk_size, 4096 - sk_at - sk_size)  # the rest: one free cell
    base = bytearray(4096)
    base[0:4] = b"regf"
    # sequence numbers, timestamp, version 1.3, primary file, direct memory load, root, bins size, clustering
    struct.pack_into("<IIQIIIIIII", base, 4, 1, 1, 0, 1, 3, 0, 1, nk_at, 4096, 1)
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(base[:508])):
        checksum ^= word
    struct.pack_into("<I", base, 508, checksum)
    return bytes(base + hbin)


@dataclass
class BcdObject:
    guid: str
    type: int
    devices: dict[str, win.Device]  # element type -> partition device
    description: str = ""


def write_bcd(path: Path, objects: list[BcdObject]) -> None:
    """A BCD hive as bcdedit lays it out: Objects/{GUID}/Description/Type and
    Objects/{GUID}/Elements/<type>/Element, written with hivex."""
    import hivex

    path.write_bytes(empty_hive())
    h = hivex.Hivex(str(path), write=True)
    objs = h.node_add_child(h.root(), "Objects")
    for o in objects:
        node = h.node_add_child(objs, o.guid)
        desc = h.node_add_child(node, "Description")
        h.node_set_value(desc, {"key": "Type", "t": 4, "value": struct.pack("<I", o.type)})
        elements = h.node_add_child(node, "Elements")
        if o.description:
            e = h.node_add_child(elements, "12000004")
            h.node_set_value(e, {"key": "Element", "t": 1, "value": (o.description + "\0").encode("utf-16-le")})
        for element, dev in o.devices.items():
            e = h.node_add_child(elements, element)
            h.node_set_value(e, {"key": "Element", "t": 3, "value": win.device_element(dev)})
    h.commit(None)


@dataclass
class WinPart:
    number: int
    start: int  # sector
    size: int  # sectors
    fs: str | None  # "ntfs", "vfat" or None (MSR)
    role: str  # "system-reserved", "c", "esp", "msr", "recovery"
    type: str  # GPT type GUID or MBR id
    uuid: str = ""  # GPT partition GUID

    @property
    def offset(self) -> int:
        return self.start * 512


@dataclass
class WinDrive:
    kind: str
    image: Path
    device: str
    table: str
    disk_id: str
    parts: list[WinPart]
    hashes: dict[int, dict[str, str]] = field(default_factory=dict)

    def part(self, role: str) -> WinPart:
        return next(p for p in self.parts if p.role == role)


SIZE = 512 * MiB


def _layout(kind: str) -> list[WinPart]:
    s = 2048
    mib = 2048  # sectors
    if kind == "bios":
        return [
            WinPart(1, s, 100 * mib, "ntfs", "system-reserved", "7"),
            WinPart(2, s + 100 * mib, 410 * mib, "ntfs", "c", "7"),
        ]
    if kind == "bios-c":
        return [WinPart(1, s, 510 * mib, "ntfs", "c", "7")]
    return [
        WinPart(1, s, 100 * mib, "vfat", "esp", ESP, str(uuid.uuid4())),
        WinPart(2, s + 100 * mib, 16 * mib, None, "msr", MSR, str(uuid.uuid4())),
        WinPart(3, s + 116 * mib, 328 * mib, "ntfs", "c", BASIC, str(uuid.uuid4())),
        WinPart(4, s + 444 * mib, 64 * mib, "ntfs", "recovery", WINRE, str(uuid.uuid4())),
    ]


def build(loops: LoopRegistry, kind: str) -> WinDrive:
    """kind: "bios" (System Reserved 100 MiB, active, with Boot/BCD; then C:), "bios-c" (C:
    alone, active, holding Boot/BCD), "uefi" (ESP FAT32 with EFI/Microsoft/Boot/BCD, MSR, C:,
    Recovery)."""
    parts = _layout(kind)
    image = loops.file(f"win-{kind}.img", SIZE)
    disk_id = str(uuid.uuid4()) if kind == "uefi" else f"0x{MBR_SIG:08x}"
    if kind == "uefi":
        lines = [f"label: gpt\nlabel-id: {disk_id.upper()}"]
        for p in parts:
            lines.append(f"start={p.start}, size={p.size}, type={p.type}, uuid={p.uuid.upper()}")
    else:
        lines = [f"label: dos\nlabel-id: {disk_id}"]
        for p in parts:
            lines.append(f"start={p.start}, size={p.size}, type={p.type}" + (", bootable" if p.number == 1 else ""))
    partition_table(str(image), "\n".join(lines) + "\n")
    device = loops.attach(image)
    drive = WinDrive(kind, image, device, "gpt" if kind == "uefi" else "msdos", disk_id, parts)
    for p in parts:
        if p.fs is None:
            continue
        dev = loops.attach(image, offset=p.offset, size=p.size * 512)
        if p.fs == "ntfs":
            label = {"c": "Windows", "recovery": "Recovery", "system-reserved": "System Reserved"}[p.role]
            sh("mkntfs", "-q", "-f", "-F", "-L", label, "-p", str(p.start), "-H", "255", "-S", "63", dev)
            with loops.mounted(dev, "ntfs-3g") as mnt:
                _fill(drive, p, mnt)
                drive.hashes[p.number] = tree_hashes(mnt)
        else:
            sh("mkfs.fat", "-F", "32", "-n", "SYSTEM", "-h", str(p.start), dev)
            _fill_esp(drive, p, dev, loops.root)
        subprocess.run(["losetup", "--detach", dev])
        loops.devices.remove(dev)
    return drive


def _bcd(drive: WinDrive) -> list[BcdObject]:
    def dev(p: WinPart) -> win.Device:
        if drive.table == "gpt":
            return win.Device("gpt", drive.disk_id, partition=p.uuid)
        return win.Device("mbr", drive.disk_id, offset=p.offset)

    if drive.kind == "uefi":
        boot = drive.part("esp")
    elif drive.kind == "bios":
        boot = drive.part("system-reserved")
    else:
        boot = drive.part("c")
    c = drive.part("c")
    objs = [
        BcdObject(BOOTMGR, win.BOOTMGR_TYPE, {win.APP_DEVICE: dev(boot)}, "Windows Boot Manager"),
        BcdObject(LOADER, win.OSLOADER_TYPE, {win.APP_DEVICE: dev(c), win.OS_DEVICE: dev(c)}, "Windows 10"),
    ]
    if drive.kind == "uefi":  # WinRE's ramdisk options name the Recovery partition
        objs.append(BcdObject(RAMDISK_OPTIONS, 0x30000000, {"31000003": dev(drive.part("recovery"))}))
    return objs


def _fill(drive: WinDrive, p: WinPart, mnt: Path) -> None:
    if p.role == "c":
        populate(mnt, seed=p.number, files=24, max_size=128 * 1024)
        (mnt / "Windows" / "System32").mkdir(parents=True)
        (mnt / "Windows" / "System32" / "winload.exe").write_bytes(b"MZ not really winload\n" * 100)
    if p.role == "recovery":
        (mnt / "Recovery" / "WindowsRE").mkdir(parents=True)
        (mnt / "Recovery" / "WindowsRE" / "Winre.wim").write_bytes(b"MSWIM\0\0\0" * 4096)
    if (p.role == "system-reserved") or (p.role == "c" and drive.kind == "bios-c"):
        (mnt / "Boot").mkdir()
        (mnt / "bootmgr").write_bytes(b"not really bootmgr\n" * 64)
        write_bcd(mnt / "Boot" / "BCD", _bcd(drive))


def _fill_esp(drive: WinDrive, p: WinPart, dev: str, scratch: Path) -> None:
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for d in ("::/EFI", "::/EFI/Microsoft", "::/EFI/Microsoft/Boot", "::/EFI/Boot"):
        subprocess.run(["mmd", "-i", dev, d], check=True, env=env)
    bcd = scratch / "BCD"
    write_bcd(bcd, _bcd(drive))
    loader = scratch / "bootmgfw.efi"
    loader.write_bytes(b"MZ not really bootmgfw\n" * 200)
    subprocess.run(["mcopy", "-i", dev, str(bcd), "::/EFI/Microsoft/Boot/BCD"], check=True, env=env)
    subprocess.run(["mcopy", "-i", dev, str(loader), "::/EFI/Microsoft/Boot/bootmgfw.efi"], check=True, env=env)
    subprocess.run(["mcopy", "-i", dev, str(loader), "::/EFI/Boot/bootx64.efi"], check=True, env=env)


def hibernate(loops: LoopRegistry, image: Path, offset: int, size: int) -> None:
    """Make the NTFS at `offset` look as Windows leaves it hibernated: hiberfil.sys starting
    with the "hibr" signature ntfs-3g checks for."""
    dev = loops.attach(image, offset=offset, size=size)
    with loops.mounted(dev, "ntfs-3g") as mnt:
        (mnt / "hiberfil.sys").write_bytes(b"hibr" + bytes(64 * 1024 - 4))
    subprocess.run(["losetup", "--detach", dev])
    loops.devices.remove(dev)

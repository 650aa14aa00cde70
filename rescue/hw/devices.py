"""Drives as plain data. This is the one module that talks to pyudev: each block device is
read once into a dict (`_device_to_dict`), and everything else works on those dicts, the
kernel's mount table, /proc/swaps and the loop devices' backing files.

The udev database is empty where no udev daemon runs (the development machines) and full
in the live system, so every fact udev offers has a sysfs fallback.

Who uses a drive is answered through "views": the drive itself, its partitions, and loop
devices stacked on any of those (recursively). A filesystem mounted from any view counts as
mounted on the drive. That is how this machine's tests see partitions (loop devices with an
offset over a loop device), and how an image file attached to a loop device is seen to be
in use."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

from rescue.errors import DeviceError

if TYPE_CHECKING:
    import pyudev

SECTOR = 512  # sysfs `size` is always in 512-byte units, whatever the logical sector size
LIVE_MEDIUM = "/run/live/medium"

# Kernel names that are never drives a person images or restores.
_NOT_DRIVES = ("ram", "zram", "fd", "sr", "dm-", "md", "mtdblock", "nbd")

# A node in the graph of "what sits on what": a block device or a regular file.
DevNode = tuple[Literal["dev"], int]  # ("dev", devnum)
FileNode = tuple[Literal["file"], int, int]  # ("file", st_dev, st_ino)
Node = DevNode | FileNode


class DeviceDict(TypedDict):
    """One block device as plain data: what _device_to_dict reads through pyudev, and all
    that the rest of this module looks at. Recordable (JSON) and built by hand in tests."""

    name: str  # kernel name: "sda", "sda1", "loop3"
    node: str  # "/dev/sda"
    devtype: str  # "disk" | "partition"
    devnum: int  # os.makedev(major, minor)
    sys_path: str
    attrs: dict[str, str]  # sysfs attributes of _ATTRS that exist, stripped
    props: dict[str, str]  # udev properties of _PROPS that are set (none without a udev daemon)
    holders: list[str]  # sysfs holders/ entries
    parent: str | None  # the whole disk's kernel name, for a partition
    partitions: list[str]  # kernel names of its partitions
    ancestors: list[str]  # subsystems of the sysfs ancestors: "usb", "scsi", "nvme" ...


@dataclass
class Drive:
    name: str  # kernel name: "sda", "loop3"; the file name for an image file
    path: str  # "/dev/sda", or the image file's path
    model: str | None
    serial: str | None
    size: int  # bytes
    logical_sector_size: int = SECTOR
    physical_sector_size: int = SECTOR
    bus: str = "unknown"  # usb, sata, scsi, nvme, virtio, mmc, loop, file, unknown
    removable: bool = False
    read_only: bool = False
    partitions: list[str] = field(default_factory=list)  # kernel partition names
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (device, mountpoint)
    holders: list[str] = field(default_factory=list)  # sysfs holders (md, dm, bcache ...)
    swap: bool = False
    backing_file: str | None = None  # loop devices only
    fs_type: str | None = None  # a filesystem on the whole drive, when udev knows it
    label: str | None = None
    uuid: str | None = None
    loops: list[str] = field(default_factory=list)  # loop devices stacked on it or its partitions
    parent: str | None = None  # the whole disk, when this "drive" is a partition
    devnum: int | None = None  # os.makedev(major, minor); None for an image file


# --------------------------------------------------------------------------- system tables


@dataclass(frozen=True)
class Mount:
    devnum: int  # major:minor that mountinfo shows (anonymous 0:N for btrfs and FUSE)
    source: str  # "/dev/loop3", "tmpfs", ...
    mountpoint: str
    fstype: str
    read_only: bool


_OCTAL = b"01234567"


def _unescape(s: str) -> str:
    """mountinfo and /proc/swaps escape space, tab, newline and backslash as \\ooo: the
    octal value of one BYTE. So the text goes back to the kernel's bytes, the escapes become
    bytes, and the result is decoded as the file system encoding decodes names (os.fsdecode:
    UTF-8, undecodable bytes as surrogates): an escaped byte of a multi-byte character joins
    its neighbours ("caf\\303\\251" is "café"), and a name that is not UTF-8 still compares
    equal to the same path from os.listdir. This module is the one parser of those tables
    (rescue.hw.mounts reads them through it)."""
    if "\\" not in s:
        return s
    raw = os.fsencode(s)
    out, i = bytearray(), 0
    while i < len(raw):
        digits = raw[i + 1 : i + 4]
        if raw[i] == 0x5C:
            # The kernel escapes every backslash itself (\134): a bare one means the table is
            # not what the kernel writes, and no question about it may be answered from it
            # (the safety rules refuse: they fail closed).
            if not (len(digits) == 3 and all(c in _OCTAL for c in digits) and int(digits, 8) < 256):
                raise ValueError(f"a kernel table holds an escape the kernel does not write: {s!r}")
            out.append(int(digits, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        major, minor = f[2].split(":")
        mounts.append(
            Mount(
                devnum=os.makedev(int(major), int(minor)),
                source=_unescape(r[1]),
                mountpoint=_unescape(f[4]),
                fstype=r[0],
                read_only="ro" in f[5].split(","),
            )
        )
    return mounts


def parse_swaps(text: str) -> list[str]:
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def _read(path: str) -> str:
    """A kernel table as text, its bytes decoded as file names are (a mount point that is not
    UTF-8 must not make the table unreadable)."""
    try:
        with open(path, "rb") as f:
            return os.fsdecode(f.read())
    except OSError:
        return ""


def identity(path: str) -> Node | None:
    """What a path is in the node graph: a block device by number, anything else by inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return ("dev", st.st_rdev)
    return ("file", st.st_dev, st.st_ino)


@dataclass(frozen=True)
class Loop:
    name: str
    devnum: int
    backing_file: str
    backing: Node | None  # None when the backing file was deleted or is unreachable
    offset: int
    sizelimit: int


@dataclass
class Snapshot:
    """The kernel's tables at one moment, so one question sees one consistent picture. Plain
    data: `record()` reads it from the kernel as a JSON-ready dict, `from_record` parses one
    (the live one or one saved on another machine), and every query below is pure."""

    mounts: list[Mount]
    swaps: list[str]
    devices: dict[int, DeviceDict]  # devnum -> device dict, every block device
    loops: list[Loop]
    idents: dict[str, Node] = field(default_factory=dict)  # stat identity of each path the tables name
    live: bool = True  # False for a recorded machine: a path the record does not name does not exist

    @classmethod
    def from_record(cls, rec: KernelRecord, live: bool = False) -> Snapshot:
        """The one parser of each source: mountinfo and /proc/swaps as the kernel wrote them,
        the device dicts, the identities."""
        devices = {d["devnum"]: d for d in rec["devices"]}
        idents: dict[str, Node] = {p: _node_of(v) for p, v in rec["idents"].items()}
        idents.update({d["node"]: ("dev", d["devnum"]) for d in rec["devices"]})
        loops = []
        for d in rec["devices"]:
            backing = d["attrs"].get("loop/backing_file")
            if not d["name"].startswith("loop") or not backing:
                continue
            loops.append(
                Loop(
                    name=d["name"],
                    devnum=d["devnum"],
                    backing_file=backing,
                    backing=idents.get(backing),
                    offset=int(d["attrs"].get("loop/offset") or 0),
                    sizelimit=int(d["attrs"].get("loop/sizelimit") or 0),
                )
            )
        return cls(parse_mountinfo(rec["mountinfo"]), parse_swaps(rec["swaps"]), devices, loops, idents, live)

    def identity(self, path: str) -> Node | None:
        """What a path is, as recorded; on the live machine a path the tables do not name is
        looked at now (an image file, a repository directory)."""
        if path in self.idents:
            return self.idents[path]
        return identity(path) if self.live else None

    def mount_device(self, m: Mount) -> int | None:
        """The block device behind a mount. btrfs and FUSE (ntfs-3g) mounts show an anonymous
        0:N number in mountinfo; their source names the device."""
        if os.major(m.devnum) != 0:
            return m.devnum
        if m.source.startswith("/dev/"):
            ident = self.identity(m.source)
            if ident and ident[0] == "dev":
                return ident[1]
        return None

    def mounts_of(self, devnum: int) -> list[Mount]:
        return [m for m in self.mounts if self.mount_device(m) == devnum]

    def swap_nodes(self) -> set[Node]:
        return {n for n in (self.identity(p) for p in self.swaps) if n}

    def by_name(self, name: str) -> DeviceDict | None:
        for d in self.devices.values():
            if d["name"] == name:
                return d
        return None

    def views(self, node: Node) -> list[Node]:
        """The node, its partitions, and loop devices stacked on any of them: everything
        through which the same bytes can be read or written."""
        out: list[Node] = []
        todo = [node]
        while todo:
            n = todo.pop(0)
            if n in out:
                continue
            out.append(n)
            if n[0] == "dev" and n[1] in self.devices:
                for child in self.devices[n[1]]["partitions"]:
                    cd = self.by_name(child)
                    if cd:
                        todo.append(("dev", cd["devnum"]))
            todo += [("dev", lo.devnum) for lo in self.loops if lo.backing == n]
            if n == node and n[0] == "dev":
                # Another loop over the same file or device with an overlapping range shows
                # the same bytes. Only for the starting node: overlap is not transitive.
                me = next((lo for lo in self.loops if lo.devnum == n[1]), None)
                if me and me.backing:
                    todo += [
                        ("dev", lo.devnum)
                        for lo in self.loops
                        if lo.backing == me.backing and lo is not me and _overlap(me, lo)
                    ]
        return out

    def underlying(self, node: Node, path: str | None = None, through_files: bool = True) -> list[Node]:
        """The node and what it is stored on: a partition's disk, a loop device's backing
        file or device, a file's filesystem device, down to the physical drives. Without
        through_files the walk stops at a loop device's backing file."""
        out: list[Node] = []
        todo: list[tuple[Node, str | None]] = [(node, path)]
        while todo:
            n, p = todo.pop(0)
            if n in out:
                continue
            out.append(n)
            if n[0] == "file":
                if not through_files:
                    continue
                dev = self.device_of_path(p) if p else None
                if dev is not None:
                    todo.append((("dev", dev), None))
                continue
            d = self.devices.get(n[1])
            if d and d["parent"]:
                pd = self.by_name(d["parent"])
                if pd:
                    todo.append((("dev", pd["devnum"]), None))
            lo = next((lo for lo in self.loops if lo.devnum == n[1]), None)
            if lo and lo.backing:
                todo.append((lo.backing, lo.backing_file))
        return out

    def mount_of_path(self, path: str) -> Mount | None:
        """The mount that holds a path: the longest mountpoint containing it (the last one
        mounted wins). Not st_dev: btrfs subvolumes report a different st_dev than mountinfo."""
        real = os.path.realpath(path)
        best = None
        for m in self.mounts:
            mp = m.mountpoint.rstrip("/") or "/"
            if real == mp or real.startswith(mp if mp.endswith("/") else mp + "/"):
                if best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/"):
                    best = m
        return best

    def device_of_path(self, path: str) -> int | None:
        m = self.mount_of_path(path)
        return self.mount_device(m) if m else None

    def whole_disk(self, devnum: int) -> DeviceDict | None:
        d = self.devices.get(devnum)
        if d and d["parent"]:
            return self.by_name(d["parent"]) or d
        return d

    def drives_under(self, node: Node, path: str | None = None, through_files: bool = True) -> list[str]:
        """Kernel names of the whole disks a node is stored on (partitions become disks),
        nearest first."""
        names: list[str] = []
        for n in self.underlying(node, path, through_files):
            if n[0] == "dev":
                d = self.whole_disk(n[1])
                if d and d["name"] not in names:
                    names.append(d["name"])
        return names


def _overlap(a: Loop, b: Loop) -> bool:
    a_end = a.offset + a.sizelimit if a.sizelimit else float("inf")
    b_end = b.offset + b.sizelimit if b.sizelimit else float("inf")
    return a.offset < b_end and b.offset < a_end


# --------------------------------------------------------------------------- the pyudev seam

_ATTRS = (
    "size",
    "ro",
    "removable",
    "queue/logical_block_size",
    "queue/physical_block_size",
    "device/model",
    "device/vendor",
    "device/serial",
    "device/type",
    "serial",
    "loop/backing_file",
    "loop/offset",
    "dm/name",  # a device-mapper holder: the LV or LUKS volume the safety rules name
    "dm/uuid",
    "loop/sizelimit",
)
_PROPS = (
    "ID_MODEL",
    "ID_MODEL_ENC",
    "ID_VENDOR",
    "ID_SERIAL",
    "ID_SERIAL_SHORT",
    "ID_BUS",
    "ID_FS_TYPE",
    "ID_FS_LABEL",
    "ID_FS_UUID",
    "ID_FS_USAGE",
    "ID_DRIVE_FLASH_SD",
)


def _device_to_dict(dev: pyudev.Device) -> DeviceDict:
    """Everything this module needs from one pyudev Device, as plain strings."""
    attrs: dict[str, str] = {}
    for a in _ATTRS:
        value = dev.attributes.get(a)
        if value is not None:
            attrs[a] = value.decode(errors="replace").strip()
    props = {p: dev.properties[p] for p in _PROPS if p in dev.properties}
    parent = None
    if dev.device_type == "partition":
        pdev = dev.find_parent("block")
        parent = pdev.sys_name if pdev is not None else None
    try:
        holders = sorted(os.listdir(os.path.join(dev.sys_path, "holders")))
    except OSError:
        holders = []
    return {
        "name": dev.sys_name,
        "node": dev.device_node or f"/dev/{dev.sys_name}",
        "devtype": dev.device_type,
        "devnum": dev.device_number,
        "sys_path": dev.sys_path,
        "attrs": attrs,
        "props": props,
        "holders": holders,
        "parent": parent,
        "partitions": sorted(c.sys_name for c in dev.children if c.device_type == "partition"),
        "ancestors": [a.subsystem for a in dev.ancestors if a.subsystem],
    }


def _all_block_devices() -> dict[int, DeviceDict]:
    import pyudev

    ctx = pyudev.Context()
    return {d.device_number: _device_to_dict(d) for d in ctx.list_devices(subsystem="block")}


class KernelRecord(TypedDict):
    """The kernel's tables as recorded: the sources as the kernel wrote them (parsed by the
    same code live and replayed) and the stat identity of every path they name."""

    devices: list[DeviceDict]
    mountinfo: str
    swaps: str
    idents: dict[str, list[int | str]]  # path -> ["dev", devnum] or ["file", st_dev, st_ino]


def _node_of(value: list[int | str] | tuple[int | str, ...]) -> Node:
    kind, *nums = value
    if kind == "dev" and len(nums) == 1:
        return ("dev", int(nums[0]))
    if kind == "file" and len(nums) == 2:
        return ("file", int(nums[0]), int(nums[1]))
    raise DeviceError(f"a recorded machine names an unknown kind of node: {value!r}")


def record() -> KernelRecord:
    """Read the kernel's tables now: every block device, mountinfo, swaps, and the identity of
    every path they name (mount sources under /dev, swap areas, loop devices' backing files)."""
    devices = list(_all_block_devices().values())
    mountinfo = _read("/proc/self/mountinfo")
    swaps = _read("/proc/swaps")
    paths = [m.source for m in parse_mountinfo(mountinfo) if m.source.startswith("/dev/")]
    paths += parse_swaps(swaps)
    paths += [
        b
        for d in devices
        if (b := d["attrs"].get("loop/backing_file")) and d["name"].startswith("loop") and not b.endswith(" (deleted)")
    ]
    idents: dict[str, list[int | str]] = {}
    for path in dict.fromkeys(paths):
        node = identity(path)
        if node is not None:
            idents[path] = list(node)
    return {"devices": devices, "mountinfo": mountinfo, "swaps": swaps, "idents": idents}


_replayed: Snapshot | None = None  # a recorded machine this process looks at instead of the kernel


def replay(snap: Snapshot | None) -> None:
    """Make `snapshot()` answer with a recorded machine (None: the kernel again). For the
    wizard's dry run, which runs the real engine over a machine recorded elsewhere."""
    global _replayed
    _replayed = snap


def snapshot() -> Snapshot:
    if _replayed is not None:
        return _replayed
    return Snapshot.from_record(record(), live=True)


# --------------------------------------------------------------------------- dict -> Drive


def _udev_unescape(s: str) -> str:
    """udev's *_ENC values escape unsafe bytes as \\xNN."""
    out, i = bytearray(), 0
    raw = s.encode()
    while i < len(raw):
        if raw[i : i + 2] == b"\\x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode(errors="replace")


def bus_of(d: DeviceDict) -> str:
    """Where the drive hangs. USB mass storage also sits under scsi, so usb is asked first."""
    name, ancestors = d["name"], d["ancestors"]
    if name.startswith("loop"):
        return "loop"
    if "usb" in ancestors or d["props"].get("ID_BUS") == "usb":
        return "usb"
    for bus in ("mmc", "nvme"):
        if bus in ancestors:
            return bus
    if "/ata" in d["sys_path"] or d["props"].get("ID_BUS") == "ata":
        return "sata"
    if "scsi" in ancestors:
        return "scsi"
    if "virtio" in ancestors:
        return "virtio"
    if "xen" in ancestors:
        return "xen"
    return "unknown"


def model_of(d: DeviceDict) -> str | None:
    props, attrs = d["props"], d["attrs"]
    if props.get("ID_MODEL_ENC"):
        return _udev_unescape(props["ID_MODEL_ENC"]).strip()
    if props.get("ID_MODEL"):
        return props["ID_MODEL"].replace("_", " ").strip()
    bus = bus_of(d)
    if bus == "loop":
        backing = attrs.get("loop/backing_file")
        return f"Loop device ({os.path.basename(backing)})" if backing else "Loop device"
    model = attrs.get("device/model")
    vendor = attrs.get("device/vendor", "")
    if model:
        # SCSI vendors are padded 8-character names; "ATA" says nothing a person wants.
        if vendor and not vendor.startswith("0x") and vendor != "ATA":
            return f"{vendor} {model}"
        return model
    if bus == "virtio":
        return "Virtio disk"
    return None


def serial_of(d: DeviceDict) -> str | None:
    props, attrs = d["props"], d["attrs"]
    for key in ("ID_SERIAL_SHORT", "ID_SERIAL"):
        if props.get(key):
            return props[key]
    for key in ("device/serial", "serial"):  # scsi/nvme, virtio
        if attrs.get(key):
            return attrs[key]
    return None


def removable_of(d: DeviceDict) -> bool:
    """`removable` in sysfs means removable media (card readers, CD); most USB sticks say 0,
    so the bus decides. SD cards are removable, soldered eMMC (device/type MMC) is not."""
    if d["attrs"].get("removable") == "1":
        return True
    if "usb" in d["ancestors"]:
        return True
    if "mmc" in d["ancestors"]:
        return d["attrs"].get("device/type", "SD") == "SD" or d["props"].get("ID_DRIVE_FLASH_SD") == "1"
    return False


def drive_from_dict(d: DeviceDict, snap: Snapshot) -> Drive:
    attrs, props = d["attrs"], d["props"]
    node: Node = ("dev", d["devnum"])
    views = snap.views(node)
    dev_views = [n[1] for n in views if n[0] == "dev"]
    mounts = []
    for dn in dev_views:
        vd = snap.devices.get(dn)
        for m in snap.mounts_of(dn):
            shown = m.source if m.source.startswith("/dev/") else (vd["node"] if vd else m.source)
            if (shown, m.mountpoint) not in mounts:
                mounts.append((shown, m.mountpoint))
    holders: list[str] = []
    for dn in dev_views:
        vd = snap.devices.get(dn)
        for h in vd["holders"] if vd else []:
            if h not in holders:
                holders.append(h)
    loops = [lo.name for lo in snap.loops if ("dev", lo.devnum) in views and lo.devnum != d["devnum"]]
    return Drive(
        name=d["name"],
        path=d["node"],
        model=model_of(d),
        serial=serial_of(d),
        size=int(attrs.get("size") or 0) * SECTOR,
        logical_sector_size=int(attrs.get("queue/logical_block_size") or SECTOR),
        physical_sector_size=int(attrs.get("queue/physical_block_size") or SECTOR),
        bus=bus_of(d),
        removable=removable_of(d),
        read_only=attrs.get("ro") == "1",
        partitions=list(d["partitions"]),
        mounts=mounts,
        holders=holders,
        swap=bool(snap.swap_nodes().intersection(views)),
        backing_file=attrs.get("loop/backing_file") or None,
        fs_type=props.get("ID_FS_TYPE") or None,
        label=props.get("ID_FS_LABEL") or None,
        uuid=props.get("ID_FS_UUID") or None,
        loops=loops,
        parent=d["parent"],
        devnum=d["devnum"],
    )


def file_drive(path: str, snap: Snapshot) -> Drive:
    """An image file is a drive too: it can be captured from and restored to."""
    st = os.stat(path)
    node: Node = ("file", st.st_dev, st.st_ino)
    views = snap.views(node)
    mounts: list[tuple[str, str]] = []
    holders: list[str] = []
    for n in views[1:]:
        vd = snap.devices.get(n[1])
        shown = vd["node"] if vd else "?"
        for m in snap.mounts_of(n[1]):
            mounts.append((m.source if m.source.startswith("/dev/") else shown, m.mountpoint))
        holders += [h for h in (vd["holders"] if vd else []) if h not in holders]
    return Drive(
        name=os.path.basename(path),
        path=path,
        model="Image file",
        serial=None,
        size=st.st_size,
        bus="file",
        read_only=not os.access(path, os.W_OK),
        mounts=mounts,
        holders=holders,
        swap=bool(snap.swap_nodes().intersection(views)),
        loops=[lo.name for lo in snap.loops if ("dev", lo.devnum) in views],
    )


# --------------------------------------------------------------------------- public API


def _is_drive(d: DeviceDict, include_loop: bool) -> bool:
    name = d["name"]
    if d["devtype"] != "disk":
        return False
    if name.startswith("loop"):
        return include_loop and bool(d["attrs"].get("loop/backing_file"))
    if name.startswith(_NOT_DRIVES):
        return False
    return int(d["attrs"].get("size") or 0) > 0  # an empty card reader slot has size 0


def list_drives(include_loop: bool = True, snap: Snapshot | None = None) -> list[Drive]:
    """Whole disks a person could image or restore to, sorted by name."""
    snap = snap or snapshot()
    found = [drive_from_dict(d, snap) for d in snap.devices.values() if _is_drive(d, include_loop)]
    return sorted(found, key=lambda dr: (len(dr.name), dr.name))


def drive_info(path: str, snap: Snapshot | None = None) -> Drive:
    """A drive by any name: /dev/sdX, /dev/loopN, a /dev/disk/by-id symlink, a partition
    node, or a regular image file (on the live machine; a recorded one has only drives)."""
    snap = snap or snapshot()
    node: Node | None = snap.idents.get(path) or snap.idents.get(os.path.realpath(path))
    if node is None and not snap.live:
        raise DeviceError(f"{path} does not exist on the recorded machine")
    if node is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DeviceError(f"{path} does not exist") from None
        except OSError as e:
            raise DeviceError(f"{path} cannot be examined: {e.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return file_drive(path, snap)
        if not stat.S_ISBLK(st.st_mode):
            raise DeviceError(f"{path} is neither a drive nor an image file")
        node = ("dev", st.st_rdev)
    if node is not None and node[0] == "file" and snap.live:
        return file_drive(path, snap)  # an image file some loop device shows
    if node is None or node[0] != "dev":
        raise DeviceError(f"{path} is neither a drive nor an image file")
    d = snap.devices.get(node[1])
    if d is None:
        raise DeviceError(f"{path} is not a block device the kernel knows (stale device node?)")
    return drive_from_dict(d, snap)


def drive_of_path(path: str, snap: Snapshot | None = None) -> list[str]:
    """Kernel names of the whole drives that hold a file or directory, following loop
    devices down to their backing file's drive. Empty for tmpfs and other memory mounts."""
    snap = snap or snapshot()
    dev = snap.device_of_path(path)
    return snap.drives_under(("dev", dev)) if dev is not None else []


def boot_medium(medium: str = LIVE_MEDIUM, snap: Snapshot | None = None) -> str | None:
    """The whole drive the live system booted from (behind /run/live/medium), or None when
    not booted live or when the medium was copied to RAM and unmounted."""
    snap = snap or snapshot()
    real = os.path.realpath(medium)
    m = next((m for m in reversed(snap.mounts) if m.mountpoint == real), None)
    dev = snap.mount_device(m) if m else None
    if dev is None:
        return None
    # Through partitions and loop devices over block devices, not through files: booted
    # from an ISO file (fromiso=), the drive holding the file is refused as mounted anyway.
    names = snap.drives_under(("dev", dev), through_files=False)
    d = snap.by_name(names[-1]) if names else None
    return d["node"] if d else None

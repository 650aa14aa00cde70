"""Machines nobody could record here (a 500 GB SATA disk, a 2 TB USB disk holding images, an
NVMe Windows drive), written as a short description and turned into the same record that
`python3 -m rescue.hw.record` writes: udev/sysfs device dicts, mountinfo, partition tables,
filesystem facts, repositories with real image manifests. The engine reads them exactly as it
reads a recorded machine.

    python3 tests/machines/synthesize.py tests/machines/two-disks-and-usb.desc.json \
        > tests/machines/two-disks-and-usb.json

Description: {"uefi", "drives": [{"name", "model", "serial", "size", "bus", "removable",
"partitions": [{"size", "fstype", "label", "used", "min_size", "mounted": "/where",
"read_only": bool, "free"}], "blank": bool}], "boot": "sdc1" (mounted at /run/live/medium), "repositories":
[{"partition": "sdb1", "folder": "" , "read_only", "free", "images": [{"name", "created",
"source_model", "source_serial", "source_size", "data_bytes", "stored_bytes", "verified",
"partitions": [{"size", "fstype", "label", "used", "min_size"}], "files": {N: tree}}]}],
"free_space": {dir: bytes}, "simulate": {...}}"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from rescue.model.layout import DiskLayout, Partition
from rescue.model.plan import ESP_GUID
from rescue.repo.manifest import Area, Manifest

MiB = 1 << 20
SECTOR = 512
LINUX_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MSDATA_GUID = "EBD0A0A2-B9E5-4433-87C0-68B6B97044C7"
MAJORS = {"sd": 8, "nvme": 259}
ANCESTORS = {
    "sata": ["scsi", "pci"],
    "usb": ["scsi", "usb", "pci"],
    "nvme": ["nvme", "pci"],
    "virtio": ["virtio", "pci"],
}


def _guid(fstype: str, label: str) -> str:
    if fstype == "vfat" and label.upper() == "EFI":
        return ESP_GUID
    return MSDATA_GUID if fstype in ("ntfs", "vfat", "exfat") else LINUX_GUID


def layout_of(parts: list[dict[str, Any]], size: int) -> DiskLayout:
    """GPT, partitions end to end from 1 MiB, numbered from 1."""
    start, out = MiB // SECTOR, []
    for i, p in enumerate(parts, 1):
        length = int(p["size"]) // SECTOR
        out.append(
            Partition(
                number=i,
                start=start,
                end=start + length - 1,
                type_guid=_guid(p.get("fstype", ""), p.get("label", "")),
                name=p.get("label", ""),
                uuid=f"00000000-0000-4000-8000-{i:012d}",
            )
        )
        start += length
    return DiskLayout(table="gpt", sector_size=SECTOR, size=size, partitions=out)


def fs_facts(p: dict[str, Any]) -> dict[str, Any] | None:
    if not p.get("fstype"):
        return None
    used = int(p.get("used", p["size"] // 4))
    return {
        "type": p["fstype"],
        "uuid": None,
        "label": p.get("label") or None,
        "used_bytes": used,
        "min_size": int(p.get("min_size", used + used // 4)),
        "map_source": "described",
    }


def areas_of(parts: list[dict[str, Any]], layout: DiskLayout) -> list[dict[str, Any]]:
    """A capture plan's areas: the head before the first partition, then each partition with
    its used bytes at its start."""
    out: list[dict[str, Any]] = [
        {"name": "head", "offset": 0, "size": MiB, "partition": None, "fs": None, "used": None}
    ]
    for p, lp in zip(parts, layout.partitions):
        fs = fs_facts(p)
        size = lp.size(SECTOR)
        used = [[0, fs["used_bytes"]]] if fs else None
        out.append(
            {
                "name": f"p{lp.number}",
                "offset": lp.offset(SECTOR),
                "size": size,
                "partition": lp.number,
                "fs": fs,
                "used": used,
            }
        )
    return out


def _node_name(drive: str, n: int) -> str:
    return f"{drive}p{n}" if drive[-1].isdigit() else f"{drive}{n}"


def _device(name: str, devnum: int, devtype: str, size: int, d: dict[str, Any], **extra: Any) -> dict[str, Any]:
    bus = d.get("bus", "sata")
    props = {"ID_BUS": "usb" if bus == "usb" else "ata" if bus == "sata" else bus}
    attrs = {
        "size": str(size // SECTOR),
        "ro": "0",
        "removable": "1" if d.get("removable") else "0",
        "queue/logical_block_size": "512",
        "queue/physical_block_size": "512",
    }
    if devtype == "disk":
        props |= {"ID_MODEL": d["model"].replace(" ", "_"), "ID_SERIAL_SHORT": d.get("serial", "")}
    return {
        "name": name,
        "node": f"/dev/{name}",
        "devtype": devtype,
        "devnum": devnum,
        "sys_path": f"/sys/devices/pci0000:00/{bus}/block/{name}",
        "attrs": attrs,
        "props": props,
        "holders": [],
        "parent": extra.get("parent"),
        "partitions": extra.get("partitions", []),
        "ancestors": ANCESTORS.get(bus, []),
    }


def _manifest(im: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """A real manifest (its own checksum and all) for a described image, the data extents of
    each area, and the bytes a restore writes."""
    parts = im["partitions"]
    layout = layout_of(parts, int(im["source_size"]))
    areas, held = [], {}
    write = 0
    for a in areas_of(parts, layout):
        data = a["used"] or [[0, a["size"]]]
        held[a["name"]] = data
        write += sum(e - s for s, e in data)
        areas.append(
            Area(
                a["name"],
                a["offset"],
                a["size"],
                f"{a['name']}.idx",
                hashlib.sha256(a["name"].encode()).hexdigest(),
                a["partition"],
                a["fs"],
            )
        )
    m = Manifest(
        name=im["name"],
        created=im["created"] if im["created"].endswith("Z") else im["created"] + "Z",
        rescue_version="0.1.0",
        chunk_size=4 * MiB,
        hash="sha256",
        source={
            "path": "/dev/sda",
            "model": im["source_model"],
            "serial": im["source_serial"],
            "bus": "sata",
            "size": int(im["source_size"]),
            "logical_sector_size": SECTOR,
            "physical_sector_size": SECTOR,
        },
        layout=layout,
        areas=areas,
        stats={"data_bytes": int(im["data_bytes"]), "stored_bytes": int(im["stored_bytes"])},
    )
    return m.to_json(), held, write


def synthesize(desc: dict[str, Any]) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    mounts = [
        "22 1 0:21 / / rw,noatime - overlay overlay rw",
        "23 22 0:5 / /dev rw,nosuid - devtmpfs udev rw",
        "24 22 0:22 / /run rw,nosuid - tmpfs tmpfs rw",
    ]
    drives: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    minors: dict[int, int] = {}
    mount_id = 30
    by_part: dict[str, str] = {}  # partition name -> mount point
    for d in desc["drives"]:
        major = MAJORS["nvme" if d["name"].startswith("nvme") else "sd"]
        minor = minors.get(major, 0)
        minors[major] = minor + 16
        parts = d.get("partitions", [])
        names = [_node_name(d["name"], i) for i in range(1, len(parts) + 1)]
        devices.append(_device(d["name"], os.makedev(major, minor), "disk", int(d["size"]), d, partitions=names))
        layout = layout_of(parts, int(d["size"]))
        for i, (p, name) in enumerate(zip(parts, names), 1):
            dev = _device(name, os.makedev(major, minor + i), "partition", int(p["size"]), d, parent=d["name"])
            if p.get("fstype"):
                dev["props"] |= {
                    "ID_FS_TYPE": p["fstype"],
                    "ID_FS_LABEL": p.get("label", ""),
                    "ID_FS_USAGE": "filesystem",
                }
            devices.append(dev)
            probes[f"/dev/{name}"] = {"TYPE": p.get("fstype", ""), "LABEL": p.get("label", ""), "USAGE": "filesystem"}
            where = p.get("mounted") or (LIVE if name == desc.get("boot") else None)
            if where:
                ro = "ro" if p.get("read_only") or where == LIVE else "rw"
                mounts.append(
                    f"{mount_id} 22 {major}:{minor + i} / {where.replace(' ', chr(92) + '040')} {ro},noatime - "
                    f"{p.get('fstype', 'auto')} /dev/{name} {ro}"
                )
                mount_id += 1
                by_part[name] = where
        drives[f"/dev/{d['name']}"] = {
            "sector_size": SECTOR,
            "layout": layout.to_dict() if parts else None,
            "source_layout": layout.to_dict(),
            "areas": areas_of(parts, layout),
        }
    repositories: list[dict[str, Any]] = []
    for r in desc.get("repositories", []):
        top = by_part[r["partition"]]
        path = os.path.join(top, r["folder"]) if r.get("folder") else top
        images = []
        for im in r.get("images", []):
            text, held, write = _manifest(im)
            write = int(im.get("data_bytes", write))  # as described, when it says
            entry = {"manifest": text, "held": held, "write": write, "verified": im.get("verified")}
            entry["stored_bytes"] = int(im["stored_bytes"])
            if any("files" in p for p in im["partitions"]):
                entry["files"] = {str(i): p["files"] for i, p in enumerate(im["partitions"], 1) if "files" in p}
            images.append(entry)
        drive = next(d["name"] for d in desc["drives"] if r["partition"].startswith(d["name"]))
        repositories.append(
            {
                "path": path,
                "drive": drive,
                "device": f"/dev/{r['partition']}",
                "mountpoint": top,
                "mounted_by_us": False,
                "read_only": bool(r.get("read_only", False)),
                "free": int(r.get("free", 0)),
                "images": images,
            }
        )
    return {
        "places": places_of(desc, by_part, repositories),
        "format": "rescue-machine",
        "version": 1,
        "recorded": "described",
        "rescue": "tests/machines/synthesize.py",
        "kernel": {
            "devices": devices,
            "mountinfo": "\n".join(mounts) + "\n",
            "swaps": "Filename\tType\tSize\tUsed\tPriority\n",
            "idents": {},
        },
        "uefi": bool(desc.get("uefi", True)),
        "scratch": {"dir": "/tmp", "free": int(desc.get("scratch_free", 2 << 30)), "ram": True},
        "drives": drives,
        "probes": probes,
        "repositories": repositories,
        "free_space": desc.get("free_space", {}),
        "simulate": desc.get("simulate", {}),
    }


def places_of(
    desc: dict[str, Any], by_part: dict[str, str], repositories: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What rescue.hw.discover.survey would find: every filesystem, with its free space (as
    described, else its size less what is used), and every blank drive."""
    places = []
    for d in desc["drives"]:
        parts = d.get("partitions", [])
        if not parts and d.get("blank"):
            places.append(_place(f"/dev/{d['name']}", d["name"], "", "", int(d["size"]), None, None, False, []))
        for i, p in enumerate(parts, 1):
            if p.get("fstype", "swap") == "swap":
                continue
            name = _node_name(d["name"], i)
            size = int(p["size"])
            free = int(p.get("free", size - int(p.get("used", 0))))
            where = by_part.get(name)
            repos = [r["path"] for r in repositories if r["device"] == f"/dev/{name}"]
            free = next((int(r["free"]) for r in repositories if r["device"] == f"/dev/{name}"), free)
            ro = bool(p.get("read_only")) or name == desc.get("boot")
            places.append(
                _place(f"/dev/{name}", d["name"], p["fstype"], p.get("label", ""), size, free, where, ro, repos)
            )
    return places


def _place(
    device: str,
    drive: str,
    fstype: str,
    label: str,
    size: int,
    free: int | None,
    where: str | None,
    ro: bool,
    repos: list[str],
) -> dict[str, Any]:
    return {
        "device": device,
        "drive": drive,
        "fstype": fstype,
        "label": label,
        "size": size,
        "free": free,
        "mountpoint": where,
        "mounted_by_us": False,
        "read_only": ro,
        "repos": repos,
    }


LIVE = "/run/live/medium"

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        json.dump(synthesize(json.load(f)), sys.stdout, indent=1, sort_keys=True)
    print()

"""Parsing and classification in rescue.hw.devices, fed with device dicts shaped like the
ones the pyudev seam produces: a full udev database (live system) and an empty one
(development machines), and kernel tables as text."""

from __future__ import annotations

import os

import pytest

from rescue.errors import RefusedError
from rescue.hw import devices, safety
from rescue.hw.devices import Loop, Snapshot, bus_of, drive_from_dict, model_of, removable_of, serial_of


def dev(
    name,
    major,
    minor,
    *,
    devtype="disk",
    attrs=None,
    props=None,
    holders=(),
    parent=None,
    partitions=(),
    ancestors=(),
    sys_path=None,
):
    return {
        "name": name,
        "node": f"/dev/{name}",
        "devtype": devtype,
        "devnum": os.makedev(major, minor),
        "sys_path": sys_path or f"/sys/devices/virtual/block/{name}",
        "attrs": {"size": "2048", "ro": "0", "removable": "0", **(attrs or {})},
        "props": dict(props or {}),
        "holders": list(holders),
        "parent": parent,
        "partitions": list(partitions),
        "ancestors": list(ancestors),
    }


def snap_of(*devs, mounts="", swaps="Filename Type Size Used Priority\n", loops=()):
    return Snapshot(
        mounts=devices.parse_mountinfo(mounts),
        swaps=devices.parse_swaps(swaps),
        devices={d["devnum"]: d for d in devs},
        loops=list(loops),
    )


USB_PATH = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
USB_STICK = dev(
    "sdb",
    8,
    16,
    partitions=["sdb1"],
    ancestors=["scsi", "scsi", "usb", "usb", "pci"],
    sys_path=USB_PATH,
    attrs={"device/vendor": "SanDisk", "device/model": "Cruzer Blade", "size": "60062500"},
)


def test_mountinfo_unescapes_and_reads_flags():
    text = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "43 27 0:39 / /mnt/my\\040disk ro,relatime - btrfs /dev/loop0 ro,space_cache=v2\n"
    )
    m = devices.parse_mountinfo(text)
    assert [(x.mountpoint, x.source, x.fstype, x.read_only) for x in m] == [
        ("/", "/dev/vda", "ext4", False),
        ("/mnt/my disk", "/dev/loop0", "btrfs", True),
    ]
    assert m[0].devnum == os.makedev(254, 0)
    assert os.major(m[1].devnum) == 0  # btrfs: anonymous device, the source names the drive


def test_swaps_lists_files_and_devices():
    text = "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2  partition 100 0 -2\n/swap\\040file file 10 0 -3\n"
    assert devices.parse_swaps(text) == ["/dev/sda2", "/swap file"]


def test_usb_stick_without_udev_is_removable_usb_with_sysfs_model():
    d = USB_STICK
    assert bus_of(d) == "usb"
    assert removable_of(d) is True  # sysfs removable=0, the usb parent decides
    assert model_of(d) == "SanDisk Cruzer Blade"
    assert serial_of(d) is None


def test_udev_database_wins_over_sysfs():
    d = dict(
        USB_STICK,
        props={
            "ID_MODEL_ENC": "Cruzer\\x20Blade\\x20\\x20",
            "ID_MODEL": "Cruzer_Blade",
            "ID_SERIAL": "SanDisk_Cruzer_4C53",
            "ID_SERIAL_SHORT": "4C53",
            "ID_FS_TYPE": "vfat",
            "ID_FS_LABEL": "STICK",
            "ID_FS_UUID": "AB-CD",
        },
    )
    assert model_of(d) == "Cruzer Blade"
    assert serial_of(d) == "4C53"
    drive = drive_from_dict(d, snap_of(d))
    assert (drive.fs_type, drive.label, drive.uuid) == ("vfat", "STICK", "AB-CD")
    assert drive.size == 60062500 * 512


def test_sata_disk_drops_the_useless_ata_vendor():
    d = dev(
        "sda",
        8,
        0,
        ancestors=["scsi", "scsi", "scsi", "pci"],
        sys_path="/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        attrs={
            "device/vendor": "ATA",
            "device/model": "Samsung SSD 860",
            "queue/logical_block_size": "512",
            "queue/physical_block_size": "4096",
        },
    )
    drive = drive_from_dict(d, snap_of(d))
    assert (drive.bus, drive.model, drive.removable) == ("sata", "Samsung SSD 860", False)
    assert (drive.logical_sector_size, drive.physical_sector_size) == (512, 4096)


def test_virtio_and_nvme_fallbacks():
    vda = dev("vda", 254, 0, ancestors=["virtio", "pci"], attrs={"serial": "QEMU-7", "device/vendor": "0x1af4"})
    assert (bus_of(vda), model_of(vda), serial_of(vda)) == ("virtio", "Virtio disk", "QEMU-7")
    nvme = dev(
        "nvme0n1",
        259,
        0,
        ancestors=["nvme", "nvme", "pci"],
        attrs={"device/model": "WD Blue SN570", "device/serial": "2131A1", "queue/logical_block_size": "4096"},
    )
    drive = drive_from_dict(nvme, snap_of(nvme))
    assert (drive.bus, drive.model, drive.serial) == ("nvme", "WD Blue SN570", "2131A1")
    assert drive.logical_sector_size == 4096


def test_sd_card_is_removable_but_emmc_is_not():
    sd = dev("mmcblk0", 179, 0, ancestors=["mmc", "mmc_host"], attrs={"device/type": "SD"})
    emmc = dev("mmcblk1", 179, 8, ancestors=["mmc", "mmc_host"], attrs={"device/type": "MMC"})
    assert (removable_of(sd), removable_of(emmc)) == (True, False)


def test_loop_model_names_its_backing_file():
    lo = dev("loop3", 7, 3, attrs={"loop/backing_file": "/srv/images/disk.img"})
    drive = drive_from_dict(lo, snap_of(lo))
    assert (drive.bus, drive.model) == ("loop", "Loop device (disk.img)")
    assert drive.backing_file == "/srv/images/disk.img"


def test_partition_holders_mounts_and_swap_belong_to_the_drive():
    sda = dev("sda", 8, 0, partitions=["sda1", "sda2", "sda3"])
    sda1 = dev("sda1", 8, 1, devtype="partition", parent="sda", holders=["md0"])
    sda2 = dev("sda2", 8, 2, devtype="partition", parent="sda")
    sda3 = dev("sda3", 8, 3, devtype="partition", parent="sda")
    snap = snap_of(sda, sda1, sda2, sda3, mounts="30 1 8:2 / /home rw - ext4 /dev/sda2 rw\n")
    drive = drive_from_dict(sda, snap)
    assert drive.partitions == ["sda1", "sda2", "sda3"]
    assert drive.holders == ["md0"]
    assert drive.mounts == [("/dev/sda2", "/home")]
    assert drive.swap is False
    # A partition on its own sees only its own users.
    assert drive_from_dict(sda3, snap).mounts == [] and drive_from_dict(sda3, snap).parent == "sda"


def test_btrfs_mount_is_matched_through_its_source_device():
    """btrfs shows 0:N in mountinfo; the source path is what names the drive."""
    vda_num = os.stat("/dev/vda").st_rdev if os.path.exists("/dev/vda") else None
    if vda_num is None:
        pytest.skip("needs a /dev/vda node to stat")
    vda = dev("vda", os.major(vda_num), os.minor(vda_num))
    snap = snap_of(vda, mounts="43 27 0:39 / /data rw - btrfs /dev/vda rw\n")
    assert drive_from_dict(vda, snap).mounts == [("/dev/vda", "/data")]


def test_loop_stacked_on_a_drive_carries_its_mounts_down():
    base = dev("loop1", 7, 1, attrs={"loop/backing_file": "/img/a.img"})
    part = dev("loop2", 7, 2, attrs={"loop/backing_file": "/dev/loop1", "loop/offset": "1048576"})
    loops = [Loop("loop2", part["devnum"], "/dev/loop1", ("dev", base["devnum"]), 1048576, 0)]
    snap = snap_of(base, part, loops=loops, mounts="50 1 7:2 / /mnt/p rw - ext4 /dev/loop2 rw\n")
    drive = drive_from_dict(base, snap)
    assert drive.loops == ["loop2"]
    assert drive.mounts == [("/dev/loop2", "/mnt/p")]


def test_holders_rule_names_the_holders():
    drive = devices.Drive(name="sda", path="/dev/sda", model=None, serial=None, size=1 << 30, holders=["md0", "dm-1"])
    with pytest.raises(RefusedError, match=r"target /dev/sda is in use by md0, dm-1 \(holders\)"):
        safety._check_use("target /dev/sda", drive)

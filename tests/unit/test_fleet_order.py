"""The boot parameters of an unattended job (rescue.fleet.order): read whole, every bad or
contradicting value refused in one line naming the parameter."""

from __future__ import annotations

import pytest

from rescue.errors import UsageError
from rescue.fleet.order import Drive, matching, parse, parse_rules, size_of, wanted

GOOD = (
    "BOOT_IMAGE=/live/vmlinuz boot=live quiet rescue.console=ttyS0 "
    "rescue.mode=restore rescue.repo=http://10.0.0.5/repo rescue.image=latest:lab- "
    "rescue.target=internal,size:100G..2T rescue.layout=proportional rescue.confirm=destroy "
    "rescue.after=poweroff rescue.on_fail=wait"
)

SSD = Drive("/dev/nvme0n1", "Samsung SSD 980", "S64ANS0T1", 500 * 10**9, "nvme", False)
USB = Drive("/dev/sda", "SanDisk Ultra", "4C53", 32 * 10**9, "usb", True)
HDD = Drive("/dev/sdb", "WDC WD20EZRZ", "WD-WCC4", 2 * 10**12, "sata", False)
BOOT = Drive("/dev/vdb", "QEMU disk", "-", 300 * 10**9, "virtio", False, boot_medium=True)


def test_the_issue_s_line_is_one_order():
    o = parse(GOOD)
    assert (o.mode, o.repo, o.image, o.latest) == ("restore", "http://10.0.0.5/repo", "latest:lab-", "lab-")
    assert (o.layout, o.confirmed, o.after, o.on_fail, o.force) == ("proportional", True, "poweroff", "wait", False)
    assert [str(r) for r in o.rules] == ["internal", f"size:{100 * 10**9}..{2 * 10**12}"]
    assert "rescue.console" not in o.text and o.text.startswith("rescue.mode=restore")
    assert wanted(GOOD) and not wanted("boot=live quiet rescue.console=ttyS0")


def test_defaults_write_nothing_and_wait():
    o = parse("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal")
    assert (o.confirmed, o.after, o.on_fail, o.layout) == (False, "wait", "wait", "auto")


@pytest.mark.parametrize(
    "line, words",
    [
        ("quiet", "no rescue.mode"),
        ("rescue.mode=rescue rescue.repo=/r", "rescue.mode=rescue is not one of: restore, capture"),
        ("rescue.mode=restore rescue.image=a rescue.target=internal", "needs rescue.repo="),
        ("rescue.mode=restore rescue.repo=/r rescue.target=internal", "needs rescue.image="),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a", "needs rescue.target="),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.confirm=yes", "only"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.colour=red", "unknown"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.after=halt", "halt"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.layout=big", "big"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.force=yes", "force"),
        ("rescue.mode=restore rescue.repo=/r rescue.repo=/s rescue.image=a rescue.target=internal", "twice"),
        ("rescue.mode=restore rescue.repo= rescue.image=a rescue.target=internal", "needs a value"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=internal rescue.source=internal", "source"),
        ("rescue.mode=capture rescue.repo=/r rescue.image=a", "rescue.image= is for a restore"),
        ("rescue.mode=capture rescue.repo=/r rescue.target=internal", "rescue.target= is for a restore"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=size:2T..1T", "smaller"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=size:lots..", "not a size"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=size:10G", "MIN..MAX"),
        ("rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target=biggest", "not a rule"),
        ("rescue.mode=restore rescue.repo='/r rescue.image=a", "cannot be read"),
        ("rescue.mode=restore rescue.repo=http://u:s3cret@h/r rescue.image=a rescue.target=internal", "password"),
    ],
)
def test_bad_or_contradicting_parameters_stop_in_one_line(line, words):
    with pytest.raises(UsageError) as e:
        parse(line)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert "s3cret" not in str(e.value)  # a secret is never repeated


def test_the_same_value_twice_is_no_contradiction():
    assert parse("rescue.mode=capture rescue.mode=capture rescue.repo=/r").mode == "capture"


def test_sizes_are_sold_decimal_unless_said_binary():
    assert size_of("100G", "p") == 100 * 10**9
    assert size_of("2T", "p") == 2 * 10**12
    assert size_of("512GiB", "p") == 512 * 2**30
    assert size_of("1.5T", "p") == 1.5 * 10**12
    assert size_of("4096", "p") == 4096


def test_internal_is_not_removable_not_usb_not_the_boot_medium():
    drives = [SSD, USB, HDD, BOOT]
    assert matching(parse_rules("internal"), drives) == [SSD, HDD]
    assert matching(parse_rules("internal,size:100G..1T"), drives) == [SSD]
    assert matching(parse_rules("model~samsung"), drives) == [SSD]
    assert matching(parse_rules("serial:WD-WCC4"), drives) == [HDD]
    assert matching(parse_rules("bus:USB"), drives) == [USB]
    assert matching(parse_rules("size:..100G"), drives) == [USB]
    assert matching(parse_rules("size:3T.."), drives) == []
    squashfs = Drive("/dev/loop0", "", "-", 200 * 10**6, "loop", False)
    assert matching(parse_rules("internal"), [squashfs]) == []


def test_loop_devices_are_drives_only_when_a_rule_names_them():
    line = "rescue.mode=restore rescue.repo=/r rescue.image=a rescue.target="
    assert not parse(line + "internal").loops and not parse(line + "size:1G..").loops
    assert parse(line + "bus:loop,size:1G..").loops


def _gpt(disk_id: str, *uuids: str):
    from rescue.model.layout import DiskLayout, Partition

    parts = [Partition(n, 2048 * n, 2048 * n + 2047, uuid=u) for n, u in enumerate(uuids, 1)]
    return DiskLayout("gpt", 512, 10 << 20, disk_id=disk_id, partitions=parts)


def test_a_drive_holds_the_image_only_with_its_disk_id_partitions_and_filesystems():
    from rescue.fleet.order import holds_image

    image = _gpt("D1", "P1", "P2")
    fs = {1: "F1", 2: ""}  # partition 2 holds no filesystem the image knows
    assert holds_image(image, fs, _gpt("d1", "p1", "p2"), {1: "f1", 2: "whatever"})  # case does not matter
    assert not holds_image(image, fs, None, {})  # blank drive
    assert not holds_image(image, fs, _gpt("D9", "P1", "P2"), {1: "F1"})  # another disk
    assert not holds_image(image, fs, _gpt("D1", "P1", "P3"), {1: "F1"})  # a partition made anew
    assert not holds_image(image, fs, _gpt("D1", "P1"), {1: "F1"})  # one partition fewer
    assert not holds_image(image, fs, _gpt("D1", "P1", "P2"), {1: "F7"})  # reformatted
    assert not holds_image(_gpt("", "P1"), {}, _gpt("", "P1"), {})  # no disk id: nothing to go by


def test_a_machine_is_its_uuid_serial_and_mac_not_a_placeholder(tmp_path):
    from rescue.fleet.run import Machine

    dmi, net = tmp_path / "dmi", tmp_path / "net"
    dmi.mkdir()
    (dmi / "product_uuid").write_text("03000200-0400-0500-0006-000700080009\n")  # a board's placeholder
    (dmi / "product_serial").write_text("To be filled by O.E.M.\n")
    for name, mac, card in (("lo", "00:00:00:00:00:00", False), ("enp2s0", "52:54:00:12:34:56", True)):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        if card:
            (net / name / "device").mkdir()
    m = Machine.read(str(dmi), str(net))
    assert (m.uuid, m.serial, m.mac, m.known) == ("", "", "52:54:00:12:34:56", True)
    assert m.key == "525400123456"
    (dmi / "product_uuid").write_text("5A1E0000-0000-4000-8000-000000000001\n")
    (dmi / "product_serial").write_text("PF2ABC12\n")
    assert Machine.read(str(dmi), str(net)).key == "5a1e0000-0000-4000-8000-000000000001_PF2ABC12_525400123456"
    assert not Machine(hostname="rescue").known and Machine(hostname="rescue").key == "rescue"

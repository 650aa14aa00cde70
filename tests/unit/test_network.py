"""The network summary of the wizard's main menu, over `ip -j addr` output recorded on real
machines: the development machine (a VM with a static address, two virtual ifb links), and the
rescue ISO in QEMU on the user network (DHCP from QEMU, SLAAC on its fec0:: prefix), plus
edited copies of them for the cases a recording did not show."""

from __future__ import annotations

import json
import shutil

import pytest

from rescue.hw import network
from rescue.hw.network import Address, Link, NetworkError, describe, parse_ip_addr, wireless_interfaces

# `ip -j addr` on the development machine (Debian bookworm, iproute2 6.1).
DEV_MACHINE = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue",'
    '"operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback",'
    '"address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet",'
    '"local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,'
    '"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host",'
    '"valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"ifname":"ifb0",'
    '"flags":["BROADCAST","NOARP"],"mtu":1500,"qdisc":"noop","operstate":"DOWN","group":"default",'
    '"txqlen":32,"link_type":"ether","address":"f6:fb:87:45:82:d2","broadcast":"ff:ff:ff:ff:ff:ff",'
    '"addr_info":[]},{"ifindex":3,"ifname":"ifb1","flags":["BROADCAST","NOARP"],"mtu":1500,'
    '"qdisc":"noop","operstate":"DOWN","group":"default","txqlen":32,"link_type":"ether",'
    '"address":"26:b4:51:c6:6b:45","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[]},{"ifindex":4,'
    '"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"pfifo_fast",'
    '"operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"02:fc:00:00:00:01",'
    '"broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,'
    '"broadcast":"192.0.2.255","scope":"global","label":"eth0","valid_life_time":4294967295,'
    '"preferred_life_time":4294967295},{"family":"inet6","local":"fd00::2","prefixlen":64,'
    '"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},'
    '{"family":"inet6","local":"fe80::fc:ff:fe00:1","prefixlen":64,"scope":"link",'
    '"valid_life_time":4294967295,"preferred_life_time":4294967295}]}]'
)

# `ip -j addr` in the rescue ISO under QEMU (-netdev user, virtio-net-pci), at the shell right
# after the wizard came up.
RESCUE_ISO_QEMU = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","'
    'operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:'
    '00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","pre'
    'fixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967'
    '295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","noprefixroute":true,"valid_'
    'life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"ifname":"enp0s2","flags"'
    ':["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"fq_codel","operstate":"UP","group'
    '":"default","txqlen":1000,"link_type":"ether","address":"52:54:00:12:34:56","broadcast":"ff:ff:f'
    'f:ff:ff:ff","addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24,"metric":1024,"broa'
    'dcast":"10.0.2.255","scope":"global","dynamic":true,"label":"enp0s2","valid_life_time":86381,"pr'
    'eferred_life_time":86381},{"family":"inet6","local":"fec0::5054:ff:fe12:3456","prefixlen":64,"sc'
    'ope":"site","dynamic":true,"mngtmpaddr":true,"noprefixroute":true,"valid_life_time":86383,"prefe'
    'rred_life_time":14383},{"family":"inet6","local":"fe80::5054:ff:fe12:3456","prefixlen":64,"scope'
    '":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]}]'
)


def entries(text: str) -> list[dict[str, object]]:
    data = json.loads(text)
    assert isinstance(data, list)
    return data


def test_dev_machine_wired_links_and_their_global_addresses():
    links = parse_ip_addr(DEV_MACHINE)
    # Loopback is not Ethernet; the ifb links are (virtual, down, no carrier, no address).
    assert [link.name for link in links] == ["ifb0", "ifb1", "eth0"]
    assert [link.carrier for link in links] == [False, False, True]
    # fe80:: (scope link) is left out; nodad does not matter.
    assert links[2].addresses == (Address("eth0", "192.0.2.2", 24), Address("eth0", "fd00::2", 64))
    assert describe(links) == "network: 192.0.2.2 (eth0)"


def test_rescue_iso_in_qemu_has_its_dhcp_address():
    links = parse_ip_addr(RESCUE_ISO_QEMU)
    [link] = [link for link in links if link.addresses]
    assert link.name == "enp0s2" and link.carrier
    assert link.addresses[0] == Address("enp0s2", "10.0.2.15", 24)
    # QEMU's IPv6 prefix is fec0::/64, site-local: not global, so not shown.
    assert all(a.version == 4 for a in link.addresses)
    assert describe(links) == "network: 10.0.2.15 (enp0s2)"


def test_bytes_are_parsed_like_text():
    assert parse_ip_addr(DEV_MACHINE.encode()) == parse_ip_addr(DEV_MACHINE)


def test_wireless_links_are_left_out():
    links = parse_ip_addr(DEV_MACHINE, wireless={"eth0"})
    assert [link.name for link in links] == ["ifb0", "ifb1"]
    assert describe(links) == "no network"


def test_ipv4_comes_first_whatever_the_kernel_order():
    data = entries(DEV_MACHINE)
    eth0 = data[3]
    assert isinstance(eth0["addr_info"], list)
    eth0["addr_info"].reverse()
    [link] = [link for link in parse_ip_addr(json.dumps(data)) if link.addresses]
    assert [a.address for a in link.addresses] == ["192.0.2.2", "fd00::2"]
    assert [a.version for a in link.addresses] == [4, 6]
    assert str(link.addresses[1]) == "fd00::2/64"


def test_addresses_not_yet_or_never_usable_are_left_out():
    data = entries(DEV_MACHINE)
    eth0 = data[3]
    assert isinstance(eth0["addr_info"], list)
    eth0["addr_info"][0]["tentative"] = True  # IPv4 has no DAD; an edited recording
    eth0["addr_info"][1]["dadfailed"] = True
    [*_, link] = parse_ip_addr(json.dumps(data))
    assert link.addresses == ()
    # The cable is in, DHCP has not answered (yet).
    assert describe([link]) == "network: waiting for DHCP (eth0)"


def test_only_an_ipv6_address_is_shown_when_there_is_no_ipv4():
    links = [Link("enp1s0", True, (Address("enp1s0", "2001:db8::5", 64),))]
    assert describe(links) == "network: 2001:db8::5 (enp1s0)"


def test_several_interfaces_fit_the_width_or_say_how_many_more():
    links = [Link(f"enp{n}s0", True, (Address(f"enp{n}s0", f"192.168.{n}.100", 24),)) for n in range(1, 5)]
    assert describe(links, width=200) == (
        "network: 192.168.1.100 (enp1s0), 192.168.2.100 (enp2s0), 192.168.3.100 (enp3s0), 192.168.4.100 (enp4s0)"
    )
    assert describe(links, width=80) == "network: 192.168.1.100 (enp1s0), 192.168.2.100 (enp2s0) +2 more"
    assert describe(links) == "network: 192.168.1.100 (enp1s0) +3 more"  # 60 columns
    # Narrower than one address: cut, and says so.
    assert describe(links, width=20) == "network: 192.168...."
    for width in range(10, 120):
        assert len(describe(links, width)) <= width


def test_a_link_without_carrier_and_without_address_is_no_network():
    assert describe([Link("enp1s0", False, ())]) == "no network"
    assert describe([]) == "no network"


def test_a_link_down_by_admin_has_no_carrier():
    data = entries(DEV_MACHINE)
    data[3]["flags"] = ["BROADCAST", "MULTICAST", "LOWER_UP"]
    assert not parse_ip_addr(json.dumps(data))[-1].carrier


@pytest.mark.parametrize("text", ["", "ip: command failed", "{}", "[1]"])
def test_output_that_is_not_iproute2_json_is_a_network_error(text):
    with pytest.raises(NetworkError):
        parse_ip_addr(text)


def test_odd_entries_are_skipped_not_fatal():
    data = entries(DEV_MACHINE)
    eth0 = data[3]
    assert isinstance(eth0["addr_info"], list)
    eth0["addr_info"] += [
        {"family": "inet", "local": "not an address", "prefixlen": 24, "scope": "global"},
        {"family": "inet", "local": "10.1.1.1", "prefixlen": "24", "scope": "global"},
        {"family": "inet", "local": "10.1.1.2", "prefixlen": True, "scope": "global"},
        {"family": "packet", "local": "10.1.1.3", "prefixlen": 24, "scope": "global"},
        "junk",
    ]
    data.append({"ifindex": 9, "link_type": "ether"})  # no name
    links = parse_ip_addr(json.dumps(data))
    assert [link.name for link in links] == ["ifb0", "ifb1", "eth0"]
    assert links[-1].addresses == (Address("eth0", "192.0.2.2", 24), Address("eth0", "fd00::2", 64))


def test_wireless_interfaces_are_found_in_sysfs(tmp_path):
    for name, marker in [("wlp2s0", "wireless"), ("wlan1", "phy80211"), ("enp1s0", None)]:
        (tmp_path / name).mkdir()
        if marker:
            (tmp_path / name / marker).mkdir()
    assert wireless_interfaces(str(tmp_path)) == {"wlp2s0", "wlan1"}
    assert wireless_interfaces(str(tmp_path / "missing")) == set()


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")
def test_this_machine_is_read_without_root():
    links = network.links()
    assert network.addresses() == [a for link in links for a in link.addresses]
    line = network.summary()
    assert line == describe(links) and len(line) <= network.SUMMARY_WIDTH

"""The network as the kernel has it: the wired interfaces' addresses, for the wizard's main
menu ("network: 10.0.2.15 (enp0s2)") and for finding a repository on a share.

Read from `ip -j addr` (iproute2, on the ISO and on every Debian system): one JSON document
with every interface, its flags and its addresses. The rescue system configures the network by
itself (systemd-networkd asks DHCP on every wired interface in the background, see the ISO's
live-build configuration), so an address can appear a few seconds after the wizard: the
summary says when a cable is in but no address has come yet, and calling it again is cheap
(one `ip` run).

Parsing is a pure function over the recorded text, so the tests need neither root nor a
network.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rescue.errors import RescueError
from rescue.hw.run import output

SYS_CLASS_NET = "/sys/class/net"
SUMMARY_WIDTH = 60
"""How many columns summary() may use: it shares a line of the 80-column main menu."""


class NetworkError(RescueError):
    """The kernel's view of the network could not be read (ip missing or failing, output
    that is not what iproute2 writes)."""

    exit_code = 2


@dataclass(frozen=True)
class Address:
    """A global IPv4 or IPv6 address of a wired interface: `address/prefix` on `interface`."""

    interface: str
    address: str
    prefix: int

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.address).version

    def __str__(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class Link:
    """A wired interface: whether a cable is in (the kernel's LOWER_UP: carrier) and its
    usable global addresses, IPv4 first, in the kernel's order otherwise."""

    name: str
    carrier: bool
    addresses: tuple[Address, ...]


def parse_ip_addr(text: str | bytes, wireless: Collection[str] = ()) -> list[Link]:
    """The wired interfaces in `ip -j addr` output, in the kernel's order.

    Wired means an Ethernet link layer (link_type "ether": this leaves out loopback, tunnels
    and the like) that is not named in `wireless` (Wi-Fi is Ethernet to `ip`; only sysfs tells
    it apart). Addresses are the global ones (not link-local, site-local or host scope), and
    not those still being checked for duplicates (tentative) or found duplicate."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise NetworkError(f"ip -j addr wrote something that is not JSON ({exc})") from None
    if not isinstance(data, list):
        raise NetworkError("ip -j addr wrote JSON that is not a list of interfaces")
    links = []
    for entry in data:
        if not isinstance(entry, dict):
            raise NetworkError("ip -j addr wrote an interface that is not a JSON object")
        name = entry.get("ifname")
        if not isinstance(name, str) or entry.get("link_type") != "ether" or name in wireless:
            continue
        flags = entry.get("flags", [])
        carrier = isinstance(flags, list) and "UP" in flags and "LOWER_UP" in flags
        found = []
        infos = entry.get("addr_info", [])
        for info in infos if isinstance(infos, list) else []:
            address = _global_address(name, info)
            if address is not None:
                found.append(address)
        found.sort(key=lambda a: a.version)  # stable: the kernel's order within a family
        links.append(Link(name, carrier, tuple(found)))
    return links


def _global_address(interface: str, info: object) -> Address | None:
    if not isinstance(info, dict) or info.get("family") not in ("inet", "inet6"):
        return None
    if info.get("scope") != "global" or info.get("tentative") or info.get("dadfailed"):
        return None
    local, prefix = info.get("local"), info.get("prefixlen")
    if not isinstance(local, str) or not isinstance(prefix, int) or isinstance(prefix, bool):
        return None
    try:
        ipaddress.ip_address(local)
    except ValueError:
        return None
    return Address(interface, local, prefix)


def describe(links: Sequence[Link], width: int = SUMMARY_WIDTH) -> str:
    """One line of at most `width` columns for the main menu (pure).

    "network: 10.0.2.15 (enp0s2)" - one address per interface that has one, IPv4 before
    IPv6, and "+N more" when they do not all fit; "network: waiting for DHCP (enp0s2)" when a
    cable is in but no address came yet; "no network" otherwise."""
    shown = [f"{link.addresses[0].address} ({link.name})" for link in links if link.addresses]
    if shown:
        return _fit("network: ", shown, width)
    waiting = [link.name for link in links if link.carrier]
    if waiting:
        return _fit("network: waiting for DHCP (", waiting, width, ")")
    return "no network"


def _fit(head: str, items: list[str], width: int, tail: str = "") -> str:
    for count in range(len(items), 0, -1):
        more = f" +{len(items) - count} more" if count < len(items) else ""
        line = head + ", ".join(items[:count]) + tail + more
        if len(line) <= width or count == 1:
            return line if len(line) <= width else line[: width - 3] + "..."
    raise AssertionError("unreachable: items is never empty")


def wireless_interfaces(sys_class_net: str = SYS_CLASS_NET) -> set[str]:
    """Interfaces that sysfs marks as Wi-Fi (a `wireless` or `phy80211` entry)."""
    try:
        names = os.listdir(sys_class_net)
    except OSError:
        return set()
    return {
        name
        for name in names
        if os.path.exists(os.path.join(sys_class_net, name, "wireless"))
        or os.path.exists(os.path.join(sys_class_net, name, "phy80211"))
    }


def links() -> list[Link]:
    """The wired interfaces as the kernel has them now. Raises NetworkError when `ip` is
    missing or fails."""
    return parse_ip_addr(output(["ip", "-j", "addr", "show"], error=NetworkError, timeout=10), wireless_interfaces())


def addresses() -> list[Address]:
    """The global IPv4 and IPv6 addresses of the wired interfaces, IPv4 first per interface."""
    return [address for link in links() for address in link.addresses]


def summary(width: int = SUMMARY_WIDTH) -> str:
    """The network in one line for the wizard's main menu (see describe); never raises:
    when the kernel cannot be asked it says so in the line."""
    try:
        return describe(links(), width)
    except NetworkError as exc:
        return f"network: unknown ({exc})"[:width]

"""Network namespaces joined by veth pairs to one bridge on the host: a LAN segment for
multicast tests, on the host kernel (no QEMU). Names carry a per-run tag, so runs on the
same machine never meet; `Segment.close` removes everything it made, also after a failure.

    with Segment(2) as seg:
        seg.run(0, "ip", "addr")           # in namespace 0
        seg.drop(1, percent=5)             # nftables random drop on namespace 1's link

Namespace i has address 10.77.<tag>.(i+1)/24 on its interface "eth0", and a route for
224.0.0.0/4 through it (multicast leaves through the one link)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Segment:
    """`count` namespaces on one bridge. Interface names stay under 15 characters."""

    def __init__(self, count: int, *, tag: str | None = None):
        self.tag = tag or secrets.token_hex(2)
        self.bridge = f"rbr{self.tag}"
        self.names: list[str] = []
        self.subnet = 10 + int(self.tag, 16) % 240
        self._made_bridge = False
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            _ip("link", "set", self.bridge, "up")
            for _ in range(count):
                self.add()
        except BaseException:
            self.close()
            raise

    def add(self) -> int:
        """One more namespace on the bridge; its number."""
        i = len(self.names)
        ns = f"rns{self.tag}-{i}"
        host_end = f"rv{self.tag}h{i}"
        _ip("netns", "add", ns)
        self.names.append(ns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        self.run(i, "ip", "link", "set", "lo", "up")
        self.run(i, "ip", "addr", "add", f"{self.address(i)}/24", "brd", "+", "dev", "eth0")
        self.run(i, "ip", "link", "set", "eth0", "up")
        self.run(i, "ip", "route", "add", "224.0.0.0/4", "dev", "eth0")
        return i

    def address(self, i: int) -> str:
        return f"10.77.{self.subnet}.{i + 1}"

    def host_link(self, i: int) -> str:
        """The host's end of namespace i's veth pair (on the bridge)."""
        return f"rv{self.tag}h{i}"

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program in namespace i."""
        return ["ip", "netns", "exec", self.names[i]]

    def run(self, i: int, *args: str) -> str:
        return subprocess.run([*self.prefix(i), *args], check=True, capture_output=True, text=True).stdout

    def popen(self, i: int, args: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(i), *args], **kw)

    def drop(self, i: int, percent: int) -> None:
        """Drop about `percent` % of the packets namespace i receives (nftables numgen)."""
        rules = (
            "table inet rescuedrop {\n"
            " chain input { type filter hook input priority 0; policy accept;\n"
            f"  udp dport != 0 numgen random mod 100 < {percent} drop\n"
            " }\n}\n"
        )
        subprocess.run([*self.prefix(i), "nft", "-f", "-"], input=rules, check=True, capture_output=True, text=True)

    def limit(self, i: int, rate: str = "1gbit") -> None:
        """Limit what namespace i sends to `rate` (tc tbf on its interface)."""
        self.run(
            i, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"
        )

    def host_address(self) -> str:
        """Give the bridge (the host's end of the segment) an address, so that a server on
        the host reaches the namespaces; the same subnet, .254."""
        addr = f"10.77.{self.subnet}.254"
        _ip("addr", "add", f"{addr}/24", "brd", "+", "dev", self.bridge)
        return addr

    def limit_host(self, rate: str = "1gbit") -> None:
        """Limit what the host sends into the segment to `rate` (tc tbf on the bridge)."""
        tbf = ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"]
        subprocess.run(["tc", "qdisc", "add", "dev", self.bridge, "root", *tbf], check=True, capture_output=True)

    def close(self) -> None:
        """Remove every namespace (its veth pair goes with it) and the bridge."""
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.names = []
        if self._made_bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._made_bridge = False

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

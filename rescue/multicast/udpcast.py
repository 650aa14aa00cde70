"""udpcast's udp-sender and udp-receiver as rescue starts and stops them: the options passed
through, what the sender's messages mean. udpcast carries the bytes and repairs losses
(acknowledgements and retransmissions, or forward error correction in --async mode); rescue
adds no reliability of its own.

Both run in pipe mode: the sender reads the stream from its stdin, the receiver writes it to
its stdout. The sender says on stderr who joined ("New connection from ADDR (#N)"), when the
transfer starts, its progress ("bytes= ... re-xmits= ..."), and at the end "Disconnecting #N
(ADDR)" for each receiver that got everything, or "Dropping client #N because of timeout" for
one that stopped answering; it exits 0 also when nobody joined."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from rescue.errors import UsageError

DEFAULT_PORTBASE = 9000
DEFAULT_WAIT = 60.0  # seconds the sender waits for receivers when told neither --receivers nor --wait
RECEIVE_TIMEOUT = 60  # seconds a receiver waits for data once the transfer ran, before it gives up
JOIN_WAIT = 600  # seconds a receiver waits to be let into a session (a sender already sending lets nobody in)
ALL = 1000  # --min-receivers when only a wait is given: start when the wait ends
DROP_RETRIES = 30  # udp-sender drops a silent receiver after about 20 s (its own default, 200, is minutes)


@dataclass(frozen=True)
class Options:
    """What udpcast is told. interface: the network card (eth0); portbase: even, the same on
    sender and receivers; receivers: start once this many joined; wait: seconds after the
    first join to start anyway; max_rate: udpcast's --max-bitrate (800m, 1g, 5000k); fec:
    --fec (8x8/128); async_mode: --async, no return channel (needs max_rate and fec);
    retries: --retries-until-drop (how long a silent receiver holds up the others)."""

    interface: str = "eth0"
    portbase: int = DEFAULT_PORTBASE
    receivers: int | None = None
    wait: float | None = None
    max_rate: str | None = None
    fec: str | None = None
    async_mode: bool = False
    retries: int = DROP_RETRIES
    join_wait: int | None = None  # receiver: seconds it waits to be let into a session (JOIN_WAIT)

    def check(self) -> Options:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", self.interface):
            raise UsageError(f"{self.interface!r} is not a network interface name")
        if not 1024 <= self.portbase <= 65534 or self.portbase % 2:
            raise UsageError(f"--portbase {self.portbase}: say an even port number from 1024 to 65534")
        if self.receivers is not None and not 1 <= self.receivers <= ALL:
            raise UsageError(f"--receivers {self.receivers}: say 1 to {ALL}")
        if self.max_rate is not None and not re.fullmatch(r"\d+[kKmMgG]?", self.max_rate):
            raise UsageError(f"--max-rate {self.max_rate}: say bits per second, e.g. 800m or 1g")
        if self.fec is not None and not re.fullmatch(r"\d+x\d+(/\d+)?", self.fec):
            raise UsageError(f"--fec {self.fec}: say INTERLEAVExREDUNDANCY[/STRIPESIZE], e.g. 8x8/128")
        if self.async_mode and not (self.max_rate and self.fec):
            raise UsageError("--async needs --max-rate and --fec: without a return channel nothing else repairs losses")
        return self

    def common(self) -> list[str]:
        return ["--interface", self.interface, "--portbase", str(self.portbase), "--nokbd"]

    def sender_args(self) -> list[str]:
        args = ["udp-sender", *self.common(), "--full-duplex"]
        wait = self.wait if self.wait is not None else (None if self.receivers else DEFAULT_WAIT)
        args += ["--min-receivers", str(self.receivers or ALL)]
        if wait is not None:
            args += ["--max-wait", str(int(wait))]
        for opt, value in (
            ("--max-bitrate", self.max_rate),
            ("--fec", self.fec),
            ("--retries-until-drop", self.retries),
        ):
            if value is not None:
                args += [opt, str(value)]
        if self.async_mode:
            args += ["--async", "--rexmit-hello-interval", "1000", "--autostart", str(max(1, int(wait or 10)))]
        return args

    def receiver_args(self) -> list[str]:
        wait = self.join_wait if self.join_wait is not None else JOIN_WAIT
        return ["udp-receiver", *self.common(), "--receive-timeout", str(RECEIVE_TIMEOUT), "--start-timeout", str(wait)]


def parse_location(location: str) -> Options:
    """multicast://IF[:PORTBASE][?wait=SECONDS] (rescue restore, rescue.repo=) as receiver
    options; wait: how long to wait to be let into a session (default JOIN_WAIT)."""
    rest = location[len("multicast://") :] if location.lower().startswith("multicast://") else None
    rest, _, query = (rest or "").partition("?")
    if not rest:
        raise UsageError(f"{location}: say multicast://INTERFACE[:PORTBASE], e.g. multicast://eth0")
    iface, _, port = rest.rstrip("/").partition(":")
    if port and not port.isdigit():
        raise UsageError(f"{location}: the port base after the interface must be a number")
    wait = query[len("wait=") :] if query.startswith("wait=") else None
    if query and not (wait and wait.isdigit()):
        raise UsageError(f"{location}: after '?' say wait=SECONDS")
    return Options(iface, int(port) if port else DEFAULT_PORTBASE, join_wait=int(wait) if wait else None).check()


def is_multicast(location: str) -> bool:
    return location.lower().startswith("multicast://")


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise UsageError(f"{program} is not installed (Debian package udpcast)")
    return path


@dataclass
class Peer:
    """A receiver as the sender saw it."""

    number: int
    address: str
    status: str = "joined"  # joined, ok (got everything), dropped (stopped answering)

    def words(self) -> str:
        if self.status == "ok":
            return "ok, received the whole stream"
        if self.status == "dropped":
            return "failed: stopped answering, dropped after udpcast's timeout"
        return "failed: left without a word"


@dataclass
class SenderReport:
    """What the sender's messages said, updated as they come."""

    peers: dict[int, Peer] = field(default_factory=dict)
    started: bool = False
    retransmits: str = ""  # "4575 (33.3%)"
    lines: list[str] = field(default_factory=list)  # its last messages, for an error

    def feed(self, line: str) -> str | None:
        """Take one message; what is worth a line to the person, if anything."""
        self.lines = [*self.lines[-20:], line]
        if m := re.match(r"New connection from (\S+)\s+\(#(\d+)\)", line):
            peer = Peer(int(m.group(2)), m.group(1))
            self.peers[peer.number] = peer
            return f"joined: {peer.address} (receiver {peer.number + 1})"
        if line.startswith("Starting transfer"):
            self.started = True
            return f"sending to {len(self.peers)} receiver{'' if len(self.peers) == 1 else 's'}"
        if m := re.match(r"Disconnecting #(\d+)", line):
            if (p := self.peers.get(int(m.group(1)))) is not None and p.status == "joined":
                p.status = "ok"
        elif m := re.match(r"Dropping client #(\d+)", line):
            if (p := self.peers.get(int(m.group(1)))) is not None:
                p.status = "dropped"
                return f"dropped: {p.address} stopped answering (udpcast's timeout); the others go on"
        elif m := re.search(r"re-xmits=0*(\d+) \(\s*([\d.]+%)\)", line):
            self.retransmits = f"{m.group(1)} ({m.group(2)})"
        return None


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a udpcast process: SIGTERM, 5 s to go, then SIGKILL; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Sender:
    """udp-sender reading the stream from a pipe. `say` gets the lines worth showing, from a
    thread of its own."""

    def __init__(self, options: Options, say: Callable[[str], None]):
        need("udp-sender")
        self.report = SenderReport()
        self.proc = subprocess.Popen(
            options.sender_args(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.stdin = self.proc.stdin
        self._reader = threading.Thread(target=self._read, args=(say,), daemon=True)
        self._reader.start()

    def _read(self, say: Callable[[str], None]) -> None:
        assert self.proc.stderr is not None
        buf = b""
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line and (said := self.report.feed(line)):
                    say(said)

    def finish(self) -> int:
        """Close the stream and wait until udp-sender has delivered it (or given up)."""
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait()
        self._reader.join()
        return code

    def stop(self) -> None:
        _end(self.proc)
        self._reader.join(5)

    def why(self) -> str:
        last = [ln for ln in self.report.lines if not ln.startswith(("bytes=", "Timeout"))]
        return last[-1] if last else f"exit status {self.proc.returncode}"


class Receiver:
    """udp-receiver writing the stream to a pipe (self.stdout)."""

    def __init__(self, options: Options):
        need("udp-receiver")
        self.proc = subprocess.Popen(
            options.receiver_args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        self.messages = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.messages = (self.messages + chunk)[-4096:]

    def why(self) -> str:
        """udp-receiver's last message (its reason for stopping)."""
        if self.proc.poll() is not None:
            self._reader.join(2)  # its last words may still be in the pipe
        lines = [ln.strip() for ln in re.split(r"[\r\n]", self.messages.decode(errors="replace")) if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("bytes=")]
        return lines[-1] if lines else "no message"

    def leave(self) -> None:
        """Stop receiving: the sender drops this receiver after its timeout, the others go on."""
        _end(self.proc)
        self.stdout.close()
        self._reader.join(5)

    def finish(self) -> int:
        code = self.proc.wait()
        self.stdout.close()
        self._reader.join(5)
        return code

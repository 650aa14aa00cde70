"""A server process a test starts: bounded in time whatever happens to the test, and stopped
with everything it forked.

Why `timeout`: a test killed with SIGKILL (or a pytest that hangs and is killed by CI) runs
no teardown, and a forgotten smbd keeps port 445 busy for the next run. coreutils' timeout
puts itself and the server in a process group of their own and, when the lifetime is over,
sends SIGTERM to that whole group, then SIGKILL after KILL_AFTER seconds. Servers run with
their options to stay in that group (smbd --no-process-group) and in the foreground."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

DEFAULT_LIFETIME = 3600.0  # seconds: long enough for a restore over the network in a TCG guest
READY_WITHIN = 30.0  # seconds a server may take to listen
KILL_AFTER = 5  # seconds between SIGTERM and SIGKILL
GUEST_HOST = "10.0.2.2"  # how a QEMU user-network guest reaches the host's 127.0.0.1


class ServerError(RuntimeError):
    """A test server did not start; the message says why in one line, plus its log's tail."""


def port_free(host: str, port: int) -> bool:
    """Nobody listens on host:port (else a readiness check would find someone else's server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listens(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect((host, port))
        except OSError:
            return False
    return True


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])


@dataclass
class Process:
    """A running server: its `timeout` wrapper (whose process group holds the server and
    its children) and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after KILL_AFTER seconds.
        Only this group: its id is the wrapper's pid, which we started."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(KILL_AFTER)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(self.proc.pid):
                return
            time.sleep(0.2)

    def ready(self, host: str, port: int, *, within: float = READY_WITHIN, log_says: str = "") -> None:
        """Wait until the server listens on host:port (and its log says `log_says`), or
        raise ServerError after `within` seconds or when it exits first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"{self.name} exited with status {self.proc.returncode}: {tail(self.log)}")
            said = not log_says or log_says in self.log.read_text(errors="replace")
            if said and _listens(host, port):
                return
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} did not listen on {host}:{port} within {within:.0f} s: {tail(self.log)}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(name: str, argv: list[str], log: Path, *, lifetime: float = DEFAULT_LIFETIME) -> Process:
    """Run `argv` under `timeout`, its output appended to `log`."""
    wrapped = ["timeout", f"--kill-after={KILL_AFTER}", f"{lifetime:.0f}", *argv]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/", start_new_session=True
        )
    return Process(name, proc, log)


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


@contextlib.contextmanager
def factory(start_one: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """make(**options) starts a server with `start_one`; every one started is stopped when
    the block ends, whether the test passed or not."""
    started: list[S] = []

    def make(**options: Any) -> S:
        server = start_one(**options)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(started):
            server.stop()


class Serving(Stoppable, Protocol):
    process: Process


V = TypeVar("V", bound=Serving)


def ready_or_stopped(server: V, host: str, port: int, *, within: float = READY_WITHIN, log_says: str = "") -> V:
    """`server` once its process listens on host:port (and its log says `log_says`); when it
    does not, the server is stopped before the error goes on."""
    try:
        server.process.ready(host, port, within=within, log_says=log_says)
    except BaseException:
        server.stop()
        raise
    return server

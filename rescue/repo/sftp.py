"""A repository on an SSH server, over SFTP: `sftp://[user@]host[:port]/path`.

Like restic's sftp backend, the connection is OpenSSH's own client run as a subprocess,
`ssh [-p PORT] [-l USER] -s -- HOST sftp`, so everything a user has set up for ssh works as
they expect: ssh-agent, keys, ~/.ssh/config (Host aliases, ProxyJump, IdentityFile),
known_hosts, and the password or passphrase prompt on the terminal. The SFTP protocol
itself (version 3, draft-ietf-secsh-filexfer-02, plus OpenSSH's posix-rename, fsync,
statvfs and limits extensions when the server offers them) is spoken here, in pure Python,
over the client's stdin and stdout: the rescue system needs no library beyond Python's own.

The path of the URL is absolute on the server: `sftp://host/srv/backup` is /srv/backup.
A path that starts with `~` is relative to the login directory: `sftp://host/~/backup` is
`backup` in the account's home (the SFTP server resolves a relative path there), and
`sftp://host/~` the home itself. `~user` is not understood. A password never goes in the
URL: ssh asks for it on the terminal (or use a key).

Speed comes from pipelining, as OpenSSH's sftp client does with its -R and -B: many
requests are outstanding at once, each with its own id, and one reader thread hands each
reply to the thread waiting for it. A large object is read or written as many READ or
WRITE requests of up to 255 KiB (what the server's limits@openssh.com allows; 32 KiB, the
size every server takes, without it), up to WINDOW of them in flight.

Writes are atomic: the bytes go to a hidden temporary name in the same directory
(`.<name>.<8 hex>.tmp`, the pattern rescue.repo.files.temp_name uses for a local
directory), which is fsynced (fsync@openssh.com) and then renamed into place:
posix-rename@openssh.com, rename(2), for `put`, which replaces; the plain SFTP v3 RENAME
for `put_new`, which fails when the target exists (OpenSSH's server makes it a link() and
an unlink(), so two writers cannot both win). Directories (chunks/ab/, the repository's
own) are made as needed. A put that fails removes its temporary file when the server can
still be reached; a writer killed mid-put leaves one, as it does in a local directory.

Every operation goes through rescue.repo.retry.attempt: a request with no answer for
`Patience.timeout` seconds (the connection stalled: the ssh client is killed) and an ssh
that ended are retried on a new connection; what a retry cannot change (authentication, the
host key, a permission, the server offering no SFTP) is StorageUnavailable at once, one line
naming `user@host:port/path` and what ssh said. No ssh outlives `close`, or the interpreter.

ssh is given: `-o BatchMode=yes` when there is no terminal to ask on (so a prompt fails
instead of hanging), `ConnectTimeout` and `ServerAliveInterval`/`ServerAliveCountMax` from
the patience's timeout (a dead server is noticed even when idle), `Compression=no` (chunks
are zstd frames already), no forwarding of any kind, no terminal, no RemoteCommand or
LocalCommand, and no connection sharing (a ControlMaster with ControlPersist in the user's
config would leave an ssh running after `close`; and a connection of our own is one we can
kill when it stalls). A different client or more options come through `ssh_command` (e.g.
`["ssh", "-F", "/path/config"]`, as the tests do): options given there come first, and with
ssh the first value given for an option wins.

The interactive case: with a terminal, ssh stays in this process's session so that it can
ask for a password there, and the first answer may take ASK_WITHIN seconds (the time to
type it); ssh's own ConnectTimeout still bounds the TCP connection and the banner."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import io
import itertools
import math
import os
import posixpath
import re
import select
import stat
import struct
import subprocess
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from rescue.errors import UsageError
from rescue.repo import files, retry
from rescue.repo.storage import FOLDER, OBJECT, Entry, ObjectMissing, ObjectProblem, StorageUnavailable, check_key

T = TypeVar("T")

# Packet types (draft-ietf-secsh-filexfer-02, section 3)
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, RENAME = 11, 12, 13, 14, 15, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
# Status codes (section 7)
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE, NO_CONNECTION, CONNECTION_LOST = range(8)
# Open flags (section 6.3) and attribute flags (section 5)
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x01, 0x02, 0x08, 0x10
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME, ATTR_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000

POSIX_RENAME, FSYNC, STATVFS, LIMITS = (
    "posix-rename@openssh.com",
    "fsync@openssh.com",
    "statvfs@openssh.com",
    "limits@openssh.com",
)
SAFE_LENGTH = 32768  # the read and write length every SFTP server takes
MAX_LENGTH = 255 * 1024  # OpenSSH's server: 256 KiB messages, reads of at most 255 KiB
WINDOW = 64  # requests in flight per transfer, as OpenSSH's sftp client (-R 64)
MAX_PACKET = 1 << 20  # a reply longer than this is not SFTP (a shell's greeting, say)
ASK_WITHIN = 300.0  # seconds to answer ssh's password prompt, when there is a terminal
PIPE_SIZE = 1 << 20  # bytes of the pipes to and from ssh: fewer switches on big transfers
READ_AHEAD = 64 * 1024  # bytes read from ssh at a time, when no large reply is being read

# What ssh says when retrying cannot help (lowercase parts of its stderr lines) ...
_PERMANENT = (
    "permission denied",
    "host key verification failed",
    "remote host identification has changed",
    "unable to negotiate",
    "no matching",
    "could not resolve hostname",
    "bad configuration option",
    "bad owner or permissions",
    "terminating,",
    "can't open user config file",
    "subsystem request failed",
    "too many authentication failures",
    "account is currently not available",
    "usage: ssh",
    "unknown option",
    "illegal option",
    "no such file or directory",
)
_TRANSIENT = ("temporary failure",)  # ... except this ("Could not resolve hostname x: Temporary failure ...")
# ... and what else is worth naming when it ends (the rest may be a server's banner)
_TELLING = _PERMANENT + (
    "connection refused",
    "timed out",
    "no route to host",
    "network is unreachable",
    "connection reset",
    "connection closed",
    "broken pipe",
    "not responding",
)
_NOISE = ("warning: permanently added", "** ", "debug", "killed by signal", "transferred:")

_URL_FORM = "sftp://[user@]host[:port]/path"
NOT_SFTP = "the server does not speak SFTP"


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _name(path: str) -> bytes:
    return _string(path.encode("utf-8", "surrogateescape"))


NO_ATTRS = _u32(0)


class _Lost(Exception):
    """The connection ended or stopped answering; the text says how. Retried on a new one."""


class _Changed(Exception):
    """A file read ended before its size."""


class _Status(Exception):
    """An SFTP status other than OK."""

    def __init__(self, code: int, message: str, path: str = ""):
        super().__init__(f"{path + ': ' if path else ''}{message or f'status {code}'}")
        self.code = code
        self.message = message


class _Decoder:
    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def u32(self) -> int:
        (n,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(n)

    def u64(self) -> int:
        (n,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(n)

    def view(self) -> memoryview:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise _Lost("the server sent a truncated reply")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self) -> str:
        return bytes(self.view()).decode("utf-8", "surrogateescape")

    def attrs(self) -> tuple[int | None, int | None]:
        """(size, permissions) of an ATTRS structure; None for what it leaves out."""
        flags = self.u32()
        size = mode = None
        if flags & ATTR_SIZE:
            size = self.u64()
        if flags & ATTR_UIDGID:
            self.pos += 8
        if flags & ATTR_PERMISSIONS:
            mode = self.u32()
        if flags & ATTR_ACMODTIME:
            self.pos += 8
        if flags & ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.view()
                self.view()
        return size, mode


def kind_of_mode(mode: int | None) -> str:
    """What a file with these permission bits is, in the words of rescue.repo.files."""
    return "of an unknown kind" if mode is None else files.kind_of_mode(mode)


def meaningful(lines: Sequence[str]) -> str:
    """The line of ssh's stderr that says what went wrong: the first that tells a known failure,
    else the last that is not noise (a server's banner comes first, ssh's verdict last)."""
    bare = (x.strip().strip("@").strip() for x in lines)  # ssh frames a changed host key in @s
    kept = [ln for ln in bare if ln and not ln.lower().startswith(_NOISE)]
    for ln in kept:
        if any(t in ln.lower() for t in _TELLING):
            return ln
    return kept[-1] if kept else ""


def is_permanent(said: str) -> bool:
    low = said.lower()
    return any(p in low for p in _PERMANENT) and not any(t in low for t in _TRANSIENT)


def _has_terminal() -> bool:
    """Whether ssh could ask for a password: this process has a controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


class _Pending:
    """A request's reply, once the reader has it. A READ may say where its data goes
    (`into`): the reader then reads a large DATA reply straight there, and `filled` says how
    many bytes it put (the body is then empty)."""

    __slots__ = ("event", "kind", "body", "lost", "into", "filled")

    def __init__(self, into: memoryview | None = None) -> None:
        self.event = threading.Event()
        self.kind = 0
        self.body = memoryview(b"")
        self.lost: str | None = None
        self.into = into
        self.filled = 0


_live: weakref.WeakSet[_Channel] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for channel in list(_live):
        channel.close()


class _Channel:
    """One ssh process speaking SFTP on its stdin and stdout. Any thread may send requests;
    one reader thread dispatches the replies by id and watches for silence: when requests
    wait and nothing has come for `limit` seconds, it kills ssh and every waiter gets _Lost."""

    def __init__(self, argv: list[str], *, timeout: float, hello_within: float, new_session: bool):
        self.timeout = timeout
        self._limit = hello_within
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=new_session,
        )
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._to, self._from = self._proc.stdin.fileno(), self._proc.stdout.fileno()
        for fd in (self._to, self._from):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._lock = threading.Lock()  # the table of pending requests, ids, the state
        self._send_lock = threading.Lock()  # one packet at a time on the pipe
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._progress = time.monotonic()  # when bytes last came, or requests began to wait
        self._stderr: list[str] = []
        self.extensions: dict[str, bytes] = {}
        self.read_length = self.write_length = SAFE_LENGTH
        _live.add(self)
        self._reader = threading.Thread(target=self._read_loop, name="sftp-reader", daemon=True)
        self._errors = threading.Thread(target=self._stderr_loop, name="sftp-stderr", daemon=True)
        self._reader.start()
        self._errors.start()

    # -- the life of the connection

    def alive(self) -> bool:
        return self._lost is None

    def hello(self) -> None:
        """INIT, VERSION and the server's limits; _Lost when ssh or the server fails first."""
        waiting = self._register(0)
        self._write([_u32(5), bytes([INIT]), _u32(3)])
        kind, body = self.wait(waiting)
        if kind != VERSION:
            self._fail(NOT_SFTP)
            raise _Lost(NOT_SFTP)
        d = _Decoder(body)
        d.u32()
        while d.pos < len(body):
            name = d.text()
            self.extensions[name] = bytes(d.view())
        self._limit = self.timeout
        if LIMITS in self.extensions:
            reply = self.extended(LIMITS, [])
            d = _Decoder(reply)
            packet, read, write = d.u64(), d.u64(), d.u64()
            fit = (packet - 1024) if packet else MAX_LENGTH
            self.read_length = max(SAFE_LENGTH, min(MAX_LENGTH, read or MAX_LENGTH, fit))
            self.write_length = max(SAFE_LENGTH, min(MAX_LENGTH, write or MAX_LENGTH, fit))

    def said(self) -> str:
        """What ssh said on stderr that tells why it ended (waiting a moment for it to end)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(2)
        self._errors.join(1)
        return meaningful(self._stderr)

    def close(self) -> None:
        """End ssh: EOF on its stdin, then SIGTERM, then SIGKILL. Harmless twice."""
        self._fail("the connection was closed")
        with contextlib.suppress(OSError):
            assert self._proc.stdin
            self._proc.stdin.close()
        for end in (None, self._proc.terminate, self._proc.kill):
            if end is not None:
                with contextlib.suppress(OSError):
                    end()
            try:
                self._proc.wait(2)
                break
            except subprocess.TimeoutExpired:
                continue
        if threading.current_thread() is not self._reader:
            self._reader.join(2)
        self._errors.join(2)
        _live.discard(self)

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = reason
            waiting, self._pending = self._pending, {}
        for p in waiting.values():
            p.lost = reason
            p.event.set()

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()

    # -- requests

    def _register(self, rid: int, into: memoryview | None = None) -> _Pending:
        p = _Pending(into)
        with self._lock:
            if self._lost is not None:
                raise _Lost(self._lost)
            if not self._pending:
                self._progress = time.monotonic()
            self._pending[rid] = p
        return p

    def send(self, kind: int, parts: Sequence[bytes | memoryview], into: memoryview | None = None) -> _Pending:
        with self._lock:
            rid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        p = self._register(rid, into)
        length = 5 + sum(len(x) for x in parts)
        self._write([struct.pack(">IBI", length, kind, rid), *parts])
        return p

    def _write(self, parts: Sequence[bytes | memoryview]) -> None:
        views = [memoryview(x) for x in parts if len(x)]
        try:
            with self._send_lock:
                while views:
                    n = os.writev(self._to, views)
                    while n and views:
                        if n >= len(views[0]):
                            n -= len(views.pop(0))
                        else:
                            views[0], n = views[0][n:], 0
        except OSError:
            self._fail(f"ssh ended ({self.said() or 'its input closed'})")
            raise _Lost(self._lost or "ssh ended") from None

    def wait(self, p: _Pending) -> tuple[int, memoryview]:
        while not p.event.wait(1.0):
            if self._lost is not None and not self._reader.is_alive():
                p.lost = p.lost or self._lost
                break
        if p.lost is not None:
            raise _Lost(p.lost)
        return p.kind, p.body

    def call(self, kind: int, parts: Sequence[bytes | memoryview]) -> tuple[int, memoryview]:
        return self.wait(self.send(kind, parts))

    def status(self, kind: int, parts: Sequence[bytes | memoryview], path: str = "") -> None:
        """A request answered by a STATUS: _Status unless it is OK."""
        self.check(*self.call(kind, parts), path=path)

    def check(self, kind: int, body: memoryview, path: str = "") -> None:
        if kind != STATUS:
            self.protocol(kind)
        d = _Decoder(body)
        code = d.u32()
        if code != OK:
            message = d.text() if d.pos < len(body) else ""
            raise _Status(code, message, path)

    def handle(self, kind: int, parts: Sequence[bytes | memoryview], path: str) -> bytes:
        got, body = self.call(kind, parts)
        if got == STATUS:
            self.check(got, body, path)
        if got != HANDLE:
            self.protocol(got)
        return bytes(_Decoder(body).view())

    def attrs(self, kind: int, parts: Sequence[bytes | memoryview], path: str) -> tuple[int | None, int | None]:
        return self.attrs_of(*self.call(kind, parts), path=path)

    def attrs_of(self, got: int, body: memoryview, path: str) -> tuple[int | None, int | None]:
        if got == STATUS:
            self.check(got, body, path)
        if got != ATTRS:
            self.protocol(got)
        return _Decoder(body).attrs()

    def extended(self, name: str, parts: Sequence[bytes | memoryview], path: str = "") -> memoryview:
        got, body = self.call(EXTENDED, [_string(name.encode()), *parts])
        if got == STATUS:
            self.check(got, body, path)
            return memoryview(b"")
        if got != EXTENDED_REPLY:
            self.protocol(got)
        return body

    def close_handle(self, handle: bytes) -> None:
        """CLOSE without waiting for its answer (on an error path, or after a read)."""
        with contextlib.suppress(_Lost):
            self.send(CLOSE, [_string(handle)])

    def protocol(self, kind: int) -> None:
        """An answer of a kind the request does not take: the connection is useless."""
        self._fail(f"the server answered with an unexpected packet ({kind})")
        self._kill()
        raise _Lost(self._lost or "protocol error")

    # -- the threads

    def _read_loop(self) -> None:
        """Replies, dispatched by id. Small ones are parsed from reads of READ_AHEAD bytes; the
        rest of a large one (a READ's data) is read straight into its own buffer, its only
        copy before the caller's."""
        reason = "ssh ended"
        buf = bytearray()
        poller = select.poll()
        poller.register(self._from, select.POLLIN)
        try:
            while True:
                if not self._readable(poller):
                    return
                chunk = os.read(self._from, READ_AHEAD)
                if not chunk:
                    break
                self._progress = time.monotonic()
                buf += chunk
                pos = 0
                with memoryview(buf) as view:
                    while len(buf) - pos >= 4:
                        (n,) = struct.unpack_from(">I", view, pos)
                        if n > MAX_PACKET or n < 1:
                            reason = f"{NOT_SFTP} (it sent {bytes(view[pos : pos + 24])!r})"
                            self._kill()
                            return
                        if len(buf) - pos - 4 < n:
                            break
                        self._dispatch(bytes(view[pos + 4 : pos + 4 + n]))
                        pos += 4 + n
                del buf[:pos]
                if len(buf) >= 13 and buf[4] == DATA and struct.unpack_from(">I", buf)[0] > READ_AHEAD:
                    target = self._destination(buf)
                    if target is not None:
                        rid, into = target
                        have = len(buf) - 13
                        into[:have] = buf[13:]
                        buf.clear()
                        filled = self._fill(poller, into, have)
                        if filled is None:
                            return
                        have = filled
                        full = have == len(into)
                        into.release()  # before the waiter may hand the buffer over
                        if not full:
                            break
                        with self._lock:
                            p = self._pending.pop(rid, None)
                        if p is not None:
                            p.kind, p.filled = DATA, have
                            p.event.set()
                        continue
                if len(buf) >= 4 and struct.unpack_from(">I", buf)[0] > READ_AHEAD:
                    packet = bytearray(struct.unpack_from(">I", buf)[0])
                    have = len(buf) - 4
                    packet[:have] = buf[4:]
                    buf.clear()
                    with memoryview(packet) as whole:
                        filled = self._fill(poller, whole, have)
                    if filled is None:
                        return
                    have = filled
                    if have < len(packet):
                        break
                    self._dispatch(packet)
            said = self.said()
            reason = f"ssh ended ({said})" if said else "ssh ended"
        except (OSError, struct.error, ValueError) as e:
            reason = f"reading from ssh failed ({e})"
            self._kill()
        finally:
            self._fail(reason)
            assert self._proc.stdout
            self._proc.stdout.close()

    def _destination(self, head: bytearray) -> tuple[int, memoryview] | None:
        """For a DATA reply whose header is in `head`: its request's id and where its data
        goes, when the request gave a place large enough; else None. The request stays in
        the table while its data comes (so silence is noticed, and a failure reaches it)."""
        n, _, rid, length = struct.unpack_from(">IBII", head)
        if n != 9 + length:
            return None
        with self._lock:
            p = self._pending.get(rid)
            if p is None or p.into is None or len(p.into) < length or len(head) - 13 > length:
                return None
            return rid, p.into[:length]

    def _readable(self, poller: select.poll) -> bool:
        """Wait until there is something to read; False when the watchdog ended the wait."""
        while not poller.poll(250):
            if self._silent_too_long():
                return False
        return True

    def _fill(self, poller: select.poll, into: memoryview, have: int) -> int | None:
        """Read from ssh into `into` from byte `have` on, until it is full or ssh ends: how
        many bytes it holds then; None when the watchdog ended the wait (the reader stops)."""
        while have < len(into):
            if not self._readable(poller):
                return None
            got = os.readv(self._from, [into[have:]])
            if not got:
                break
            self._progress = time.monotonic()
            have += got
        return have

    def _dispatch(self, packet: bytes | bytearray) -> None:
        kind = packet[0]
        if kind == VERSION:
            rid, body = 0, memoryview(packet)[1:]
        elif len(packet) >= 5:
            (rid,) = struct.unpack_from(">I", packet, 1)
            body = memoryview(packet)[5:]
        else:
            return
        with self._lock:
            p = self._pending.pop(rid, None)
        if p is not None:
            p.kind, p.body = kind, body
            p.event.set()

    def _silent_too_long(self) -> bool:
        with self._lock:
            if not self._pending:
                return False
            silent = time.monotonic() - self._progress
        if silent <= self._limit:
            return False
        self._fail(f"no answer for {silent:.0f} s")
        self._kill()
        return True

    def _stderr_loop(self) -> None:
        assert self._proc.stderr
        with self._proc.stderr as err:
            for raw in err:
                if len(self._stderr) < 40:
                    self._stderr.append(raw.decode("utf-8", "replace").rstrip())


class SftpStorage:
    """The objects of a repository under one directory of an SSH server. Thread-safe: one
    ssh connection carries every thread's requests, interleaved."""

    writable = True
    exclusive_create = True  # SSH_FXP_RENAME refuses an existing target on OpenSSH's server

    def __init__(
        self,
        host: str,
        path: str,
        *,
        user: str | None = None,
        port: int | None = None,
        ssh_command: Sequence[str] = ("ssh",),
        patience: retry.Patience = retry.DEFAULT,
        shown_path: str | None = None,
    ):
        """`path` on the server: absolute, or relative to the login directory ('' for that
        directory itself). `ssh_command`: the client and options of its own (["ssh", "-F",
        "config"]); `patience`: the timeout of each request and how long to keep trying."""
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise UsageError(f"{host!r} is not a host name ({_URL_FORM})")
        self.host, self.user, self.port = host, user, port
        self.base = path
        self.ssh_command = list(ssh_command)
        self.patience = patience
        shown = shown_path if shown_path is not None else (path if path.startswith("/") else f"/~/{path}".rstrip("/"))
        netloc = (f"{user}@" if user else "") + (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        self.server = f"{netloc}{shown}"
        self.where = f"sftp://{self.server}"
        self._lock = threading.Lock()
        self._channel_now: _Channel | None = None
        self._orphans: set[str] = set()  # temporary files of failed puts the server could not remove

    @classmethod
    def from_url(
        cls, url: str, *, ssh_command: Sequence[str] = ("ssh",), patience: retry.Patience = retry.DEFAULT
    ) -> SftpStorage:
        """The storage `sftp://[user@]host[:port]/path` names; UsageError (one line, never
        with a password) when it is not such a URL."""
        shown = re.sub(r"(://[^/@:]*):[^/@]*@", r"\1@", url)  # whatever the URL, no password in a message
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UsageError(f"{shown} is not an SFTP location ({e}; {_URL_FORM})") from None
        if parts.scheme.lower() != "sftp":
            raise UsageError(f"{shown} is not an SFTP location ({_URL_FORM})")
        if parts.password is not None:
            raise UsageError(f"{shown}: an sftp:// location takes no password; ssh asks for it, or use a key")
        if not parts.hostname:
            raise UsageError(f"{shown} names no server ({_URL_FORM})")
        if parts.query or parts.fragment or "?" in url or "#" in url:
            raise UsageError(f"{shown}: an sftp:// location has no '?' or '#' part ({_URL_FORM})")
        raw = unquote(parts.path)
        if not raw:
            raise UsageError(f"{shown} names no directory on the server ({_URL_FORM})")
        if "\0" in raw or any(ord(c) < 32 for c in raw):
            raise UsageError(f"{shown}: the path has control characters")
        if raw == "/~" or raw.startswith("/~/"):
            path = posixpath.normpath(raw[3:].strip("/") or ".").removeprefix(".")
            if path.startswith("."):
                raise UsageError(f"{shown}: a path under ~ may not climb out of it")
            shown_path = "/~" + (f"/{path}" if path else "")
        elif raw.startswith("/~"):
            raise UsageError(f"{shown}: ~user is not understood; write the directory's absolute path")
        else:
            path = posixpath.normpath("/" + raw.lstrip("/"))
            shown_path = path
        user = unquote(parts.username) if parts.username else None
        if user is not None and (not user or user.startswith("-") or any(c.isspace() for c in user)):
            raise UsageError(f"{shown}: {user!r} is not a user name")
        return cls(
            parts.hostname,
            path,
            user=user,
            port=port,
            ssh_command=ssh_command,
            patience=patience,
            shown_path=shown_path,
        )

    def __repr__(self) -> str:
        return f"SftpStorage({self.where!r})"

    # -- connections

    def ssh_argv(self, *, interactive: bool) -> list[str]:
        timeout = max(1, math.ceil(self.patience.timeout))
        argv = [*self.ssh_command]
        if not interactive:
            argv += ["-o", "BatchMode=yes"]
        argv += [
            "-o", f"ConnectTimeout={timeout}",
            "-o", f"ServerAliveInterval={max(1, math.ceil(timeout / 3))}",
            "-o", "ServerAliveCountMax=3",
            "-o", "Compression=no",
            "-o", "ClearAllForwardings=yes",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "RemoteCommand=none",
            "-o", "PermitLocalCommand=no",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-T",
        ]  # fmt: skip
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, "-s", "--", self.host, "sftp"]

    def _connect(self) -> _Channel:
        interactive = _has_terminal()
        argv = self.ssh_argv(interactive=interactive)
        hello_within = max(self.patience.timeout, ASK_WITHIN) if interactive else self.patience.timeout
        try:
            channel = _Channel(
                argv, timeout=self.patience.timeout, hello_within=hello_within, new_session=not interactive
            )
        except OSError as e:
            raise StorageUnavailable(
                f"{self.server}: cannot run {argv[0]} ({e.strerror}; openssh-client is needed)"
            ) from None
        try:
            channel.hello()
        except _Lost as e:
            said = channel.said()
            channel.close()
            if is_permanent(said):
                raise StorageUnavailable(f"{self.server}: ssh says: {said}") from None
            if str(e).startswith(NOT_SFTP):  # a login shell's greeting, say: no retry mends that
                raise StorageUnavailable(f"{self.server}: {e}") from None
            raise retry.Transient(f"ssh ended ({said})" if said else str(e)) from None
        except BaseException:
            channel.close()
            raise
        return channel

    def _channel(self) -> _Channel:
        with self._lock:
            channel = self._channel_now
            if channel is not None and channel.alive():
                return channel
            self._channel_now = None
            if channel is not None:
                channel.close()
            self._channel_now = channel = self._connect()
            orphans, self._orphans = self._orphans, set()
        for temp in orphans:  # answers are not awaited: this is tidying, not the request
            with contextlib.suppress(_Lost):
                channel.send(REMOVE, [_name(temp)])
        return channel

    def _drop(self, channel: _Channel) -> None:
        with self._lock:
            if self._channel_now is channel:
                self._channel_now = None
        channel.close()

    def _do(self, what: str, op: Callable[[_Channel], T]) -> T:
        """`op` on a live connection, through retry.attempt: a lost connection is retried on
        a new one; an SFTP error is StorageUnavailable naming the server and what failed."""

        def once() -> T:
            channel = self._channel()
            try:
                return op(channel)
            except _Lost as e:
                self._drop(channel)
                raise retry.Transient(str(e)) from None
            except _Status as e:
                if e.code in (NO_CONNECTION, CONNECTION_LOST):
                    self._drop(channel)
                    raise retry.Transient(str(e)) from None
                raise StorageUnavailable(f"{self.server}: cannot {what}: {e}") from None
            except (struct.error, IndexError):
                self._drop(channel)
                raise retry.Transient("the server's answer was malformed") from None

        return retry.attempt(self.server, what, once, self.patience)

    def close(self) -> None:
        with self._lock:
            channel, self._channel_now = self._channel_now, None
        if channel is not None:
            channel.close()

    # -- paths

    def _path(self, key: str) -> str:
        return posixpath.join(self.base, key) if self.base else key

    def _top(self) -> str:
        return self.base or "."

    # -- reading

    def get(self, key: str, limit: int) -> bytes:
        path = self._path(check_key(key))
        parent = posixpath.dirname(path) if "/" in key else None
        return self._do(f"get {key}", lambda ch: self._get(ch, key, path, parent, limit))

    def _get(self, ch: _Channel, key: str, path: str, parent: str | None, limit: int) -> bytes:
        # LSTAT before OPEN: opening a FIFO would block the server's one thread for good
        asked_parent = ch.send(LSTAT, [_name(parent)]) if parent is not None else None
        asked = ch.send(LSTAT, [_name(path)])
        if asked_parent is not None and parent is not None:
            try:
                _, mode = ch.attrs_of(*ch.wait(asked_parent), path=parent)
            except _Status as e:
                if e.code != NO_SUCH_FILE:
                    raise
            else:
                if not (mode is not None and stat.S_ISDIR(mode)):
                    ch.wait(asked)
                    name = posixpath.basename(parent)
                    raise ObjectProblem(f"is in {name}, which is {kind_of_mode(mode)}, not a directory")
        try:
            size, mode = ch.attrs_of(*ch.wait(asked), path=path)
        except _Status as e:
            if e.code == NO_SUCH_FILE:
                raise ObjectMissing(key) from None
            raise
        self._check_object(size, mode, limit)
        try:
            handle = ch.handle(OPEN, [_name(path), _u32(FXF_READ), NO_ATTRS], path)
        except _Status as e:
            if e.code == NO_SUCH_FILE:
                raise ObjectMissing(key) from None
            raise ObjectProblem(f"is unreadable ({e.message or e})") from None
        try:
            asked = ch.send(FSTAT, [_string(handle)])  # answered before the reads: no wait
            data: bytes | None
            try:
                data = self._read(ch, handle, size or 0)
            except _Changed:
                data = None
            size, mode = ch.attrs_of(*ch.wait(asked), path=path)
            self._check_object(size, mode, limit)  # replaced between LSTAT and OPEN?
            if data is None or size != len(data):
                data = self._read(ch, handle, size or 0)
        except _Changed:
            raise ObjectProblem("changed while it was read (it ended before its size)") from None
        except _Status as e:
            raise ObjectProblem(f"is unreadable ({e.message or e})") from None
        finally:
            ch.close_handle(handle)
        return data

    @staticmethod
    def _check_object(size: int | None, mode: int | None, limit: int) -> None:
        if mode is None or not stat.S_ISREG(mode):
            raise ObjectProblem(f"is {kind_of_mode(mode)}, not a regular file")
        if size is None:
            raise ObjectProblem("has no size the server would tell")
        if size > limit:
            raise ObjectProblem(f"is {size} bytes, more than the {limit} it can be")

    @staticmethod
    def _read(ch: _Channel, handle: bytes, size: int) -> bytes:
        """`size` bytes from the start of an open file, up to WINDOW reads in flight; a short
        read is followed by a read of the rest."""
        h = _string(handle)
        # The reader puts each large reply's data straight into the bytes returned (a
        # BytesIO's buffer, which getvalue() hands over without a copy once no view is left):
        # one copy from the pipe, one pass over fresh memory.
        out = io.BytesIO(bytes(size))
        todo = deque((off, min(ch.read_length, size - off)) for off in range(0, size, ch.read_length))
        flying: deque[tuple[int, int, _Pending]] = deque()
        with out.getbuffer() as view:
            while todo or flying:
                while todo and len(flying) < WINDOW:
                    off, n = todo.popleft()
                    flying.append((off, n, ch.send(READ, [h, _u64(off), _u32(n)], into=view[off : off + n])))
                off, n, asked = flying.popleft()
                kind, body = ch.wait(asked)
                if asked.into is not None:
                    asked.into.release()
                if kind == STATUS and _Decoder(body).u32() == EOF:
                    raise _Changed()
                if kind != DATA:
                    ch.check(kind, body)
                    ch.protocol(kind)
                got = asked.filled
                if not got:  # a small reply: its data came in its body
                    data = _Decoder(body).view()[:n]
                    got = len(data)
                    view[off : off + got] = data
                if not got:
                    raise _Changed()
                if got < n:
                    todo.appendleft((off + got, n - got))
        return out.getvalue()

    def size(self, key: str) -> int | None:
        path = self._path(check_key(key))

        def op(ch: _Channel) -> int | None:
            try:
                size, mode = ch.attrs(LSTAT, [_name(path)], path)
            except _Status as e:
                if e.code == NO_SUCH_FILE:
                    return None
                raise
            return size if mode is not None and stat.S_ISREG(mode) else None

        return self._do(f"look at {key}", op)

    def list(self, prefix: str) -> list[Entry]:
        folder = self._path(check_key(prefix)) if prefix else self._top()
        return self._do(f"list {prefix or 'the repository'}", lambda ch: _read_folder(ch, folder))

    def free_bytes(self) -> int | None:
        def op(ch: _Channel) -> int | None:
            if STATVFS not in ch.extensions:
                return None
            place = self._top()
            while True:  # the repository's directory, or the nearest that exists
                try:
                    reply = ch.extended(STATVFS, [_name(place)], place)
                except _Status as e:
                    up = posixpath.dirname(place)
                    if e.code != NO_SUCH_FILE or up == place or not up:
                        return None
                    place = up
                    continue
                d = _Decoder(reply)
                _bsize, frsize, _blocks, _bfree, bavail = (d.u64() for _ in range(5))
                return frsize * bavail

        return self._do("tell the free space", op)

    def flush(self) -> None:
        """Nothing to do: every put was fsynced on the server before it returned."""

    # -- writing

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data, replace=True)

    def put_new(self, key: str, data: bytes) -> bool:
        return self._put(key, data, replace=False)

    def _put(self, key: str, data: bytes, *, replace: bool) -> bool:
        final = self._path(check_key(key))
        folder, name = posixpath.split(final)
        temp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        rename_sent = False

        def op(ch: _Channel) -> bool:
            nonlocal rename_sent
            if rename_sent and not replace and self._exists(ch, final) and not self._exists(ch, temp):
                return True  # the connection broke after the server had made our rename
            self._write_file(ch, temp, data)
            if replace:
                self._replace(ch, temp, final)
                return True
            rename_sent = True
            try:
                ch.status(RENAME, [_name(temp), _name(final)], final)
            except _Status as e:
                if e.code != FAILURE or not self._exists(ch, final):
                    raise
                with contextlib.suppress(_Status):
                    ch.status(REMOVE, [_name(temp)], temp)
                return False
            return True

        try:
            return self._do(f"put {key}", op)
        except BaseException:
            self._forget(temp)
            raise

    def _write_file(self, ch: _Channel, path: str, data: bytes) -> None:
        opening = [_u32(FXF_WRITE | FXF_CREAT | FXF_TRUNC), NO_ATTRS]
        try:
            handle = ch.handle(OPEN, [_name(path), *opening], path)
        except _Status as e:
            if e.code != NO_SUCH_FILE:
                raise
            self._mkdirs(ch, posixpath.dirname(path))
            handle = ch.handle(OPEN, [_name(path), *opening], path)
        try:
            h = _string(handle)
            view = memoryview(data)
            flying: deque[_Pending] = deque()
            for off in range(0, len(data), ch.write_length):
                if len(flying) >= WINDOW:
                    ch.check(*ch.wait(flying.popleft()), path=path)
                piece = view[off : off + ch.write_length]
                flying.append(ch.send(WRITE, [h, _u64(off), _u32(len(piece)), piece]))
            while flying:
                ch.check(*ch.wait(flying.popleft()), path=path)
            if FSYNC in ch.extensions:
                ch.status(EXTENDED, [_string(FSYNC.encode()), h], path)
        except BaseException:
            ch.close_handle(handle)
            raise
        ch.status(CLOSE, [h], path)

    def _mkdirs(self, ch: _Channel, folder: str) -> None:
        """Make `folder` and what is missing above it (mkdir -p)."""
        if folder in ("", "/", "."):
            return
        try:
            ch.status(MKDIR, [_name(folder), NO_ATTRS], folder)
            return
        except _Status as e:
            failed = e
            if e.code == NO_SUCH_FILE:
                self._mkdirs(ch, posixpath.dirname(folder))
                try:
                    ch.status(MKDIR, [_name(folder), NO_ATTRS], folder)
                    return
                except _Status as again:
                    failed = again
        try:  # made by another writer meanwhile?
            _, mode = ch.attrs(LSTAT, [_name(folder)], folder)
        except _Status:
            raise failed from None
        if mode is None or not stat.S_ISDIR(mode):
            raise _Status(FAILURE, f"is {kind_of_mode(mode)}, not a directory", folder)

    def _replace(self, ch: _Channel, temp: str, final: str) -> None:
        if POSIX_RENAME in ch.extensions:
            ch.status(EXTENDED, [_string(POSIX_RENAME.encode()), _name(temp), _name(final)], final)
            return
        # SFTP v3 alone cannot replace atomically: a reader may find nothing for a moment
        try:
            ch.status(RENAME, [_name(temp), _name(final)], final)
        except _Status as e:
            if e.code != FAILURE:
                raise
            with contextlib.suppress(_Status):
                ch.status(REMOVE, [_name(final)], final)
            ch.status(RENAME, [_name(temp), _name(final)], final)

    @staticmethod
    def _exists(ch: _Channel, path: str) -> bool:
        try:
            ch.attrs(LSTAT, [_name(path)], path)
        except _Status as e:
            if e.code == NO_SUCH_FILE:
                return False
            raise
        return True

    def _forget(self, temp: str) -> None:
        """Remove a failed put's temporary file on the connection there is, or else on the
        next one made."""
        with self._lock:
            channel = self._channel_now
        try:
            if channel is None:
                raise _Lost("no connection")
            channel.status(REMOVE, [_name(temp)], temp)
        except _Status:
            pass
        except _Lost:
            with self._lock:
                self._orphans.add(temp)

    def delete(self, key: str) -> None:
        """Remove the object, and its folders when that leaves them empty (chunks/ab/, an
        image's folder), never the repository's own directory; as rescue.repo.local does."""
        path = self._path(check_key(key))

        def op(ch: _Channel) -> None:
            try:
                ch.status(REMOVE, [_name(path)], path)
            except _Status as e:
                if e.code == NO_SUCH_FILE:
                    return
                raise
            parent = posixpath.dirname(key)
            while parent:
                try:
                    ch.status(RMDIR, [_name(self._path(parent))])
                except _Status:
                    break
                parent = posixpath.dirname(parent)

        self._do(f"delete {key}", op)


def _read_folder(ch: _Channel, folder: str) -> list[Entry]:
    """The entries of a folder on the server, sorted; [] when there is none."""
    try:
        handle = ch.handle(OPENDIR, [_name(folder)], folder)
    except _Status as e:
        if e.code == NO_SUCH_FILE:
            return []
        raise
    out = []
    try:
        while True:
            kind, body = ch.call(READDIR, [_string(handle)])
            if kind == STATUS and _Decoder(body).u32() == EOF:
                break
            if kind != NAME:
                ch.check(kind, body, folder)
                ch.protocol(kind)
            d = _Decoder(body)
            for _ in range(d.u32()):
                name = d.text()
                d.view()  # the long name, for humans
                size, mode = d.attrs()
                if name in (".", ".."):
                    continue
                what = kind_of_mode(mode)
                if what == "a file":
                    out.append(Entry(name, OBJECT, size or 0))
                elif what == "a directory":
                    out.append(Entry(name, FOLDER))
                else:
                    out.append(Entry(name, what))
    finally:
        ch.close_handle(handle)
    return sorted(out, key=lambda e: e.name)

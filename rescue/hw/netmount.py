"""Windows shares (SMB) and NFS exports as places for image repositories: what a person
types, the options the kernel gets, and what a failure means in words a technician acts on.

Mounting goes through rescue.hw.mounts (the one module that runs mount and umount), so the
leftovers registry records every network mount before it is made and a killed wizard leaves
nothing the next run cannot clear.

Why these mount options (the repository's needs, rescue/repo/store.py):

- A repository decides by `stat` whether a chunk is stored and whether an image is complete
  (its manifest exists), and another machine may have written either a moment ago. Each file
  is looked at about once per capture or restore, so an attribute cache saves no round trips
  and only risks a stale answer: `actimeo=0` for both protocols.
- One writer per repository is `flock` on the `lock` file. Over SMB the kernel (Linux 5.5
  and later: bookworm's 6.1) sends flock to the server as a byte-range lock on the whole file,
  so two technicians capturing to one share exclude each other. `nobrl` would keep locks on
  this machine only; and the mandatory nature of SMB byte-range locks does not matter for a
  file that is never read or written: no `nobrl`. Over NFSv4 locks are part of the protocol
  (flock is emulated with a whole-file lock on the server). NFSv3 locking needs rpc.statd
  here and NLM on the server, which a rescue system cannot count on: v3 mounts with `nolock`
  (locks local to this machine) rather than failing.
- `cache=strict` (SMB): data is cached only while the server grants a lease, so another
  client's finished write is seen (the default since Linux 3.7; stated so it stays).
- `noperm` (SMB): the mode bits the client shows are made up (file_mode/dir_mode); the
  server's ACLs decide, and a local check could only refuse what the server allows.
- A server that vanishes (cable pulled, NAS asleep) must not hang the wizard: SMB mounts are
  `soft` (an operation fails instead of waiting forever) with `echo_interval=10` (a silent
  server is declared dead after about 30 s, not the default 180 s). NFS mounts are
  `softerr,timeo=100,retrans=2`: a request gets no answer for 10 + 20 + 30 s, then fails
  with ETIMEDOUT (a clear "timed out", where `soft` says EIO; `hard`, the NFS default, would
  leave the wizard in an unkillable wait). The usual objection to soft mounts, writes lost
  silently, does not apply: every repository write is fsynced and checked, and a failed one
  fails the capture. `retry=0`: mount.nfs answers after one try instead of retrying for two
  minutes. Above all that, each mount command has its own time limit (MOUNT_TIMEOUT).
- Versions: SMB 3.1.1, 3.0, 2.1 (SMB1 never: insecure, and gone from current Windows); NFS
  4.2, 4.1, 4.0, then 3. The next version is tried only when the server refused the one
  before; any other failure (wrong password, no such share, no answer) is reported at once,
  so a dead server costs one time limit, not four.

The password reaches mount.cifs in a credentials file (mode 0600, in a directory of its own
under /run/rescue, recorded in the leftovers registry, removed right after mounting), never
on a command line, where `ps` would show it to everyone."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import FilesystemError, RepoError, RescueError, UsageError
from rescue.hw import leftovers, mounts
from rescue.hw.run import run

log = logging.getLogger(__name__)

SMB_VERSIONS = ("3.1.1", "3.0", "2.1")
NFS_VERSIONS = ("4.2", "4.1", "4.0", "3")
MOUNT_TIMEOUT = 90.0  # seconds one mount command may take (NFS gives up after ~60 s itself)
SYNC_TIMEOUT = 90.0  # seconds `sync -f` may take before unmounting anyway
SMB_OPTIONS = ("noperm", "cache=strict", "actimeo=0", "soft", "echo_interval=10")
NFS_OPTIONS = ("proto=tcp", "softerr", "timeo=100", "retrans=2", "retry=0", "actimeo=0")
CREDENTIALS_DIR = "netmount"  # under leftovers.run_dir(): /run/rescue/netmount/smb-XXXX/

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|[0-9A-Fa-f:]+)$")
_SHARE_FORBIDDEN = set('\\/:*?"<>|')


# --------------------------------------------------------------------------- places


def _check_text(what: str, value: str) -> None:
    """A line break would start a new line in the credentials file (a password could then
    set the domain); control characters are never meant."""
    if _BAD_CHARS.search(value):
        raise UsageError(f"the {what} contains a control character (a line break?)")


def _check_host(server: str) -> None:
    if not server:
        raise UsageError("no server name or address")
    if not _HOST.match(server):
        raise UsageError(f"{server!r} is not a server name or address")


def _folder(text: str) -> str:
    """A folder inside a share, '/'-separated, without empty or '.' parts; '..' refused
    (it would leave the share's folder the person named)."""
    parts = [p for p in re.split(r"[/\\]+", text) if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"the folder {text!r} goes up with '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class SmbShare:
    """A Windows share (or Samba, or a NAS): //server/share, optionally a folder inside it.
    An empty user mounts as guest. The password never appears in repr or str."""

    server: str
    share: str
    folder: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    domain: str = ""
    port: int = 0  # 0: the standard port, 445

    def __post_init__(self) -> None:
        _check_host(self.server)
        if not self.share or _SHARE_FORBIDDEN & set(self.share) or len(self.share) > 80:
            raise UsageError(f"{self.share!r} is not a share name")
        for what, value in (("share", self.share), ("folder", self.folder), ("user name", self.user)):
            _check_text(what, value)
        _check_text("password", self.password)
        _check_text("domain", self.domain)
        if self.folder != _folder(self.folder):
            raise UsageError(f"the folder {self.folder!r} is not a plain a/b/c path")
        if not 0 <= self.port < 65536:
            raise UsageError(f"{self.port} is not a port number")

    @property
    def unc(self) -> str:
        """//server/share/folder: how mount.cifs takes it, and how mountinfo shows it."""
        return f"//{self.server}/{self.share}" + (f"/{self.folder}" if self.folder else "")

    def __str__(self) -> str:
        return self.unc


@dataclass(frozen=True)
class NfsExport:
    """An NFS export: server:/path."""

    server: str
    path: str
    port: int = 0  # 0: the standard port, 2049

    def __post_init__(self) -> None:
        _check_host(self.server)
        _check_text("path", self.path)
        if not self.path.startswith("/"):
            raise UsageError(f"the export path {self.path!r} does not start with '/'")
        if self.path != _nfs_path(self.path):
            raise UsageError(f"the export path {self.path!r} is not a plain /a/b/c path")
        if not 0 <= self.port < 65536:
            raise UsageError(f"{self.port} is not a port number")

    @property
    def spec(self) -> str:
        """server:/path, as mount.nfs takes it and mountinfo shows it."""
        return f"{self.server}:{self.path}"

    def __str__(self) -> str:
        return self.spec


def _nfs_path(text: str) -> str:
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"the export path {text!r} goes up with '..'")
    return "/" + "/".join(parts)


SMB_EXAMPLE = "//server/share/folder or \\\\server\\share\\folder"
NFS_EXAMPLE = "server:/path"


def parse_smb(text: str, *, user: str = "", password: str = "", domain: str = "") -> SmbShare:
    """What a person types for a Windows share: //server/share[/folder],
    \\\\server\\share[\\folder] (either slash, mixed), or smb://server/share[/folder]."""
    s = text.strip()
    low = s.lower()
    if low.startswith("smb://"):
        s = s[len("smb://") :]
    elif s[:2] in ("//", "\\\\"):
        s = s[2:]
    else:
        raise UsageError(f"{text.strip()!r} is not a share: type {SMB_EXAMPLE}")
    parts = [p for p in re.split(r"[/\\]+", s) if p]
    if len(parts) < 2:
        raise UsageError(f"{text.strip()!r} names no share: type {SMB_EXAMPLE}")
    if "@" in parts[0]:
        raise UsageError("type the user name in its own field, not in the share's name")
    return SmbShare(parts[0], parts[1], _folder("/".join(parts[2:])), user, password, domain)


def parse_nfs(text: str) -> NfsExport:
    """What a person types for an NFS export: server:/path, [ipv6]:/path, or
    nfs://server/path."""
    s = text.strip()
    if s.lower().startswith("nfs://"):
        server, _, path = s[len("nfs://") :].partition("/")
        path = "/" + path
    elif s.startswith("["):
        server, _, rest = s.partition("]")
        server += "]"
        if not rest.startswith(":"):
            raise UsageError(f"{s!r} is not an export: type {NFS_EXAMPLE}")
        path = rest[1:]
    else:
        server, colon, path = s.partition(":")
        if not colon:
            raise UsageError(f"{s!r} is not an export: type {NFS_EXAMPLE}")
    if not path.startswith("/"):
        raise UsageError(f"{s!r} has no path after the server: type {NFS_EXAMPLE}")
    return NfsExport(server, _nfs_path(path))


def parse_place(text: str) -> SmbShare | NfsExport:
    """A share or an export, told apart by its form (guest SMB; the wizard asks for the
    user and password in fields of their own)."""
    s = text.strip()
    if s[:2] in ("//", "\\\\") or s.lower().startswith("smb://"):
        return parse_smb(s)
    if s.lower().startswith("nfs://") or ":/" in s:
        return parse_nfs(s)
    raise UsageError(f"{s!r} is neither a Windows share ({SMB_EXAMPLE}) nor an NFS export ({NFS_EXAMPLE})")


# --------------------------------------------------------------------------- failures


class Why(enum.Enum):
    """What went wrong, as far as the mount tools tell."""

    NAME = "name not resolved"
    UNREACHABLE = "unreachable"
    REFUSED = "no service"  # the host answers, but nothing listens on the port
    TIMEOUT = "timeout"
    DENIED = "access denied"
    NOT_FOUND = "not found"
    VERSION = "version refused"
    NO_SUPPORT = "no client support"
    OTHER = "other"


@dataclass(frozen=True)
class Failure:
    """One failed mount, explained: the words are one line without the place's name."""

    why: Why
    words: str


_SMB_ERRNO: dict[int, tuple[Why, str]] = {
    13: (Why.DENIED, "access denied: wrong user name or password, or this user may not use the share"),
    1: (Why.DENIED, "access denied: the server does not let this user in"),
    126: (Why.DENIED, "access denied: the server wants a Kerberos ticket (domain login), not a password"),
    127: (Why.DENIED, "the password has expired: change it on the server first"),
    2: (Why.NOT_FOUND, "share or folder not found on the server (check the share's name and the folder)"),
    6: (Why.NOT_FOUND, "share not found on the server (check the share's name)"),
    95: (Why.VERSION, "the server does not speak this SMB version"),
    112: (Why.VERSION, "the server closed the connection (it may not speak this SMB version)"),
    22: (Why.VERSION, "the server or this system does not take this SMB version or an option"),
    111: (Why.REFUSED, "the server answers, but offers no Windows share service (connection refused on port 445)"),
    113: (Why.UNREACHABLE, "the server cannot be reached (no route to host): check its address and the network"),
    101: (Why.UNREACHABLE, "the server's network cannot be reached (network unreachable): check the network"),
    110: (Why.TIMEOUT, "the server did not answer in time (is it on? does a firewall drop port 445?)"),
    115: (Why.TIMEOUT, "the server did not answer in time (is it on? does a firewall drop port 445?)"),
    19: (Why.NO_SUPPORT, "this system cannot mount Windows shares (no cifs support in its kernel)"),
}

_TIMEOUT_WORDS = "the server did not answer in time (is it on? is the network up?)"


def _lines(stderr: str) -> str:
    """The tool's messages as one line (mount.nfs breaks "reason given by server:" over two)."""
    return " ".join(ln.strip() for ln in stderr.splitlines() if ln.strip())


def _common(text: str, tool: str) -> Failure | None:
    """What mount(8) and rescue.hw.run say for either protocol."""
    if "did not finish within" in text:
        return Failure(Why.TIMEOUT, _TIMEOUT_WORDS)
    if "unknown filesystem type" in text or "is not installed" in text:
        return Failure(Why.NO_SUPPORT, f"this system cannot mount this kind of share (no {tool})")
    return None


def explain_cifs(returncode: int | None, stderr: str) -> Failure:
    """mount.cifs's (through mount -t cifs) output in a technician's words. Pure: the real
    texts are cifs-utils' (mount.cifs.c) and the errno values the kernel's SMB client
    returns (fs/smb/client: EACCES for a wrong password, ENOENT for a missing share or
    folder, EOPNOTSUPP when no dialect is common, EHOSTDOWN when the server hangs up).
    `returncode` None: unknown (only the message survived)."""
    text = _lines(stderr)
    common = _common(text, "mount.cifs")
    if common:
        return common
    if "could not resolve address" in text:
        return Failure(Why.NAME, "the server's name cannot be resolved: check its spelling, or type its IP address")
    if "bad UNC" in text or "UNC name too" in text or "portion of UNC too long" in text:
        return Failure(Why.NOT_FOUND, "that is not a share's name (//server/share)")
    if "Server abruptly closed the connection" in text:
        return Failure(*_SMB_ERRNO[112])
    numbers = [int(n) for n in re.findall(r"mount error\((\d+)\)", text)]
    if numbers and numbers[-1] in _SMB_ERRNO:
        return Failure(*_SMB_ERRNO[numbers[-1]])
    if "Unable to find suitable address" in text:
        return Failure(Why.UNREACHABLE, "the server cannot be reached at any of its addresses")
    if "Retrying with upper case share name" in text:  # ENXIO, twice
        return Failure(*_SMB_ERRNO[6])
    if "filesystem not supported by the system" in text:
        return Failure(*_SMB_ERRNO[19])
    return _other(returncode, text)


_NFS_TEXTS: tuple[tuple[str, Why, str], ...] = (
    ("DNS resolution failed", Why.NAME, "the server's name cannot be resolved: check its spelling, or type its IP"),
    ("Failed to resolve server", Why.NAME, "the server's name cannot be resolved: check its spelling, or type its IP"),
    ("access denied by server", Why.DENIED, "the server does not export this path to this machine (access denied)"),
    (
        "Operation not permitted",
        Why.DENIED,
        "the server refused this machine (a Linux server behind NAT needs the export option 'insecure')",
    ),
    ("reason given by server", Why.NOT_FOUND, "the server has no such export (check the path)"),
    ("requested NFS version or transport protocol is not supported", Why.VERSION, "the server refused this version"),
    ("Protocol not supported", Why.VERSION, "the server refused this version"),
    ("Program not registered", Why.VERSION, "the server does not offer this version (or NFS at all)"),
    ("an incorrect mount option was specified", Why.VERSION, "this version or an option was not accepted"),
    ("Connection refused", Why.REFUSED, "the server answers, but offers no NFS service (connection refused)"),
    ("No route to host", Why.UNREACHABLE, "the server cannot be reached (no route to host): check its address"),
    ("Network is unreachable", Why.UNREACHABLE, "the server's network cannot be reached: check the network"),
    ("timed out", Why.TIMEOUT, _TIMEOUT_WORDS),
    ("No such device", Why.NO_SUPPORT, "this system cannot mount NFS exports (no nfs support in its kernel)"),
)


def explain_nfs(returncode: int | None, stderr: str) -> Failure:
    """mount.nfs's output in a technician's words. Pure: the texts are nfs-utils'
    (utils/mount/error.c: mount_error, rpc_mount_errors; network.c), most of them strerror()
    of what the kernel's NFS client returned."""
    text = _lines(stderr)
    common = _common(text, "mount.nfs")
    if common:
        return common
    for needle, why, words in _NFS_TEXTS:
        if needle in text:
            return Failure(why, words)
    return _other(returncode, text)


def _other(returncode: int | None, text: str) -> Failure:
    said = text.removeprefix("mount.nfs: ").strip() or "no message"
    status = f" (exit status {returncode})" if returncode not in (None, 0) else ""
    return Failure(Why.OTHER, f"mount failed{status}: {said}")


# --------------------------------------------------------------------------- options


def smb_options(share: SmbShare, version: str, credentials: str | os.PathLike[str] | None) -> str:
    """The -o options of one SMB attempt. The password is never among them: it is in the
    credentials file (None: guest, which asks for none)."""
    opts = [f"vers={version}"]
    opts.append(f"credentials={os.fspath(credentials)}" if credentials is not None else "guest")
    if share.port:
        opts.append(f"port={share.port}")
    return ",".join([*opts, *SMB_OPTIONS])


def nfs_options(export: NfsExport, version: str) -> str:
    """The -o options of one NFS attempt (v3 without network locking: see the module)."""
    opts = [f"vers={version}", *NFS_OPTIONS]
    if export.port:
        opts.append(f"port={export.port}")
    if version == "3":
        opts.append("nolock")
    return ",".join(opts)


def credentials_text(share: SmbShare) -> str:
    """mount.cifs's credentials file: key=value lines, the value taken to the end of its
    line as it is (spaces and '=' included; commas are doubled by mount.cifs itself)."""
    lines = [f"username={share.user}", f"password={share.password}"]
    if share.domain:
        lines.append(f"domain={share.domain}")
    return "".join(line + "\n" for line in lines)


@contextlib.contextmanager
def credentials_file(share: SmbShare) -> Iterator[Path]:
    """The share's credentials in a file of mode 0600 in a directory of mode 0700 of its own
    under /run/rescue (RAM: never on a disk), for the block only. The directory is in the
    leftovers registry from before it exists until it is removed, so a crash in between
    leaves nothing a later run does not remove."""
    parent = leftovers.run_dir() / CREDENTIALS_DIR
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory, key = leftovers.make_dir(parent, "smb-")
    try:
        path = directory / "credentials"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(credentials_text(share))
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        leftovers.forget(key)


# --------------------------------------------------------------------------- mounting


@dataclass(frozen=True)
class Mounted:
    """A network place we mounted: its mount record (for rescue.hw.mounts), how to name it
    to the person, and the protocol version the server took."""

    ours: mounts.OurMount
    place: str  # //server/share/folder or server:/path
    protocol: str  # "SMB 3.1.1", "NFS 4.2"
    read_only: bool

    @property
    def where(self) -> str:
        return self.ours.where


class _Failed(RescueError):
    """mounts.mount's error, to be explained here (it carries mount's message)."""


def _words(versions: Sequence[str]) -> str:
    return versions[0] if len(versions) == 1 else ", ".join(versions[:-1]) + " and " + versions[-1]


def try_versions(
    protocol: str,
    versions: Sequence[str],
    attempt: Callable[[str], mounts.OurMount | Failure],
) -> tuple[mounts.OurMount, str]:
    """Try `versions` in order with `attempt`: the first mount wins; a version the server
    refused moves on to the next; any other failure ends the search (the next version
    would fail alike, after as long a wait). Raises RepoError with the failure's words,
    naming the versions refused."""
    refused: list[str] = []
    last: Failure | None = None
    for version in versions:
        got = attempt(version)
        if isinstance(got, mounts.OurMount):
            if refused:
                log.info("%s: the server refused %s %s", got.source, protocol, _words(refused))
            return got, version
        last = got
        if got.why is not Why.VERSION:
            break
        refused.append(version)
    assert last is not None
    if last.why is Why.VERSION:
        raise RepoError(f"the server refused {protocol} {_words(refused)} ({last.words})")
    tried = f" (after the server refused {protocol} {_words(refused)})" if refused else ""
    raise RepoError(f"{last.words}{tried}")


def _attempt(
    device: str,
    where: str | os.PathLike[str],
    fstype: str,
    options: str,
    explain: Callable[[int | None, str], Failure],
    *,
    read_only: bool,
    timeout: float,
) -> mounts.OurMount | Failure:
    what = f"{device} ({fstype})"
    try:
        return mounts.mount(
            device, where, fstype, options, read_only=read_only, what=what, error=_Failed, timeout=timeout
        )
    except _Failed as e:
        # mounts.mount keeps mount's first line of stderr only, and not its exit status.
        return explain(None, str(e).removeprefix(f"mounting {what} failed: "))


def mount_smb(
    share: SmbShare, where: str | os.PathLike[str], *, read_only: bool, timeout: float = MOUNT_TIMEOUT
) -> Mounted:
    """Mount a Windows share at `where` (an existing empty directory), trying SMB 3.1.1, 3.0
    and 2.1. RepoError, prefixed with the share's name, in a technician's words when it
    cannot be mounted."""
    try:
        with contextlib.ExitStack() as stack:
            creds = stack.enter_context(credentials_file(share)) if share.user else None

            def attempt(version: str) -> mounts.OurMount | Failure:
                opts = smb_options(share, version, creds)
                return _attempt(share.unc, where, "cifs", opts, explain_cifs, read_only=read_only, timeout=timeout)

            ours, version = try_versions("SMB", SMB_VERSIONS, attempt)
    except RepoError as e:
        raise RepoError(f"{share.unc}: {e}") from None
    except OSError as e:
        raise RepoError(f"{share.unc}: cannot write the credentials file: {e.strerror}") from None
    return Mounted(ours, share.unc, f"SMB {version}", read_only)


def mount_nfs(
    export: NfsExport, where: str | os.PathLike[str], *, read_only: bool, timeout: float = MOUNT_TIMEOUT
) -> Mounted:
    """Mount an NFS export at `where` (an existing empty directory), trying NFS 4.2, 4.1,
    4.0 and 3. RepoError, prefixed with the export's name, in a technician's words when it
    cannot be mounted."""

    def attempt(version: str) -> mounts.OurMount | Failure:
        opts = nfs_options(export, version)
        return _attempt(export.spec, where, "nfs", opts, explain_nfs, read_only=read_only, timeout=timeout)

    try:
        ours, version = try_versions("NFS", NFS_VERSIONS, attempt)
    except RepoError as e:
        raise RepoError(f"{export.spec}: {e}") from None
    return Mounted(ours, export.spec, f"NFS {version}", read_only)


def unmount(mounted: Mounted, *, lazy: bool = False, timeout: float = SYNC_TIMEOUT) -> mounts.Outcome:
    """Write out what the kernel still holds for this mount (`sync -f`: this filesystem
    only; a dead server cannot stall the other mounts), then unmount through
    rescue.hw.mounts, only while the mount there is still ours. A sync that fails or takes
    longer than `timeout` is logged, not raised: every repository write was already
    fsynced and checked, so nothing it could still flush is something we rely on."""
    if mounts.mount_is_ours(mounted.ours):
        try:
            run(["sync", "-f", mounted.where], timeout=timeout, error=FilesystemError)
        except RescueError as e:
            log.warning("%s: %s", mounted.place, e)
    return mounts.unmount(mounted.ours, lazy=lazy, timeout=timeout)

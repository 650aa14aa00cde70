"""Logging in to the servers a repository may live on, for the wizard's forms: an SSH
server (SFTP, rescue.repo.sftp) and an S3 object store (rescue.repo.s3).

The wizard owns the terminal, so nothing may prompt on it, and a secret typed into a form
must never be logged, shown, put in a process's argv, or outlive its use.

SSH. One *master* connection logs in (`ssh -M -N -f`, OpenSSH's connection sharing), and
every SFTP connection the repository opens afterwards goes through its control socket, so
the password is needed once. It reaches ssh through SSH_ASKPASS with
SSH_ASKPASS_REQUIRE=force: a small shell program (ASKPASS, written 0700 under the run
directory) prints the contents of a 0600 file whose path (not the password) is in its
environment, then removes that file. ssh closes every inherited descriptor but 0-2 when it
starts, so a pipe cannot carry it; the file is on /run (RAM), answers one prompt, and is
removed again after the login whatever happened. The helper only answers prompts that ask
for a password: a key's passphrase or a yes/no question gets no answer.
Without a password the login is keys or agent only (BatchMode=yes: nothing is asked).

The ISO has no known_hosts: a server met for the first time is accepted
(StrictHostKeyChecking=accept-new into RUN_DIR/known_hosts) and its key's fingerprint is
given back once (`SshSession.new_key`, read with `ssh-keygen -l -F`) for the screen; a server whose key changed since is
refused by ssh. Later SFTP connections check the key strictly and never ask anything
(BatchMode=yes); should the master be gone, they log in with keys or fail in words.

S3. The S3 client reads its settings from a mapping (rescue.repo.s3.settings), and every
job opens the repository again by its URL (in this process, and in the FUSE helper of a
browse), so for as long as the repository is in use the settings live in an AWS-style
profile: a credentials file (0600) and a config file under the run directory, named in the
environment by AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE and AWS_PROFILE (paths and a
name, no secret). `S3Profile.close` removes the files and gives the environment back."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from rescue.errors import UsageError
from rescue.repo.storage import StorageUnavailable

RUN_DIR = Path("/run/rescue/ssh")
S3_DIR = Path("/run/rescue/s3")
LOGIN_WITHIN = 30.0  # seconds for the master connection to log in
PERSIST = "30m"  # a master left behind (the wizard killed) ends after this long unused
PROFILE = "rescue-wizard"

ASKPASS = """#!/bin/sh
# rescue: answers ssh's password prompt once, from a file only root can read, then removes it.
case "$1" in *assword*) ;; *) exit 1 ;; esac
f="${RESCUE_ASKPASS_FILE:-}"
[ -n "$f" ] && [ -f "$f" ] || exit 1
cat -- "$f"
rm -f -- "$f"
"""

# What ssh says, in words a technician acts on (lowercase parts of its stderr)
_SAID = (
    ("permission denied", "the server refused the login (wrong user name or password, or no key it accepts)"),
    ("identification has changed", "the server's host key changed since it was first met: someone may be in between"),
    ("host key verification failed", "the server's host key could not be checked"),
    ("could not resolve hostname", "no such server name (DNS does not know it)"),
    ("connection refused", "the server refuses connections on that port (no SSH server there?)"),
    ("no route to host", "no route to host (wrong address, or the network is down)"),
    ("network is unreachable", "the network is unreachable (no network?)"),
    ("timed out", "the server did not answer in time"),
)


@dataclass
class Remote:
    """A folder on a server, looked at after logging in (rescue.engine.Engine.open_remote)."""

    location: str  # the repository's URL: sftp://user@host:port/path or s3://bucket/prefix
    shown: str  # the server and folder in messages, no secret
    repository: bool  # a repository is there (else the folder is empty: a capture makes one)
    writable: bool
    free: int | None  # bytes free there, None when the server does not tell (S3)
    new_key: str | None = None  # the SSH server's key fingerprint, the first time it was met
    refusal: str | None = None  # why a capture may not write there


@dataclass(frozen=True)
class SshLogin:
    """What the SSH form holds. The password is never part of the repr or a comparison."""

    host: str
    folder: str = ""  # absolute, or relative to the login directory ("" : the login directory)
    user: str = "root"
    port: int = 22
    password: str = field(default="", repr=False, compare=False)

    @classmethod
    def parse(cls, host: str, port: str, user: str, folder: str, password: str = "") -> SshLogin:
        """The form's fields checked; UsageError in words (never with the password)."""
        host, user, folder = host.strip(), user.strip() or "root", folder.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise UsageError("type the SSH server's name or address")
        if host.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._:%-]+", host):
            raise UsageError(f"{host!r} is not a server name or address")
        try:
            number = int(port.strip() or "22")
        except ValueError:
            raise UsageError(f"{port.strip()!r} is not a port number (22 is SSH's)") from None
        if not 0 < number < 65536:
            raise UsageError(f"{number} is not a port number (1 to 65535; 22 is SSH's)")
        if user.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._@$-]+", user):
            raise UsageError(f"{user!r} is not a user name")
        if any(ord(c) < 32 for c in folder):
            raise UsageError("the folder has control characters")
        if "\n" in password or "\r" in password:
            raise UsageError("a password cannot hold a line break")
        return cls(host, folder, user, number, password)

    @property
    def address(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        """sftp://user@host:port/path (rescue.repo.sftp): '~' for a folder in the login directory."""
        folder = self.folder
        if not folder.startswith("/"):
            folder = "/~" + ("/" + folder.removeprefix("~").lstrip("/") if folder.removeprefix("~") else "")
        return f"sftp://{quote(self.user, safe='')}@{self.address}:{self.port}{quote(folder, safe='/~')}"

    @property
    def shown(self) -> str:
        """The server in messages: user@host:port."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_as(self) -> str:
        """The server's name in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class SshSession:
    """A logged-in master connection. `ssh_command` is the client (and options) for
    SftpStorage: through the master's socket, never asking anything. `new_key` is the
    server's key fingerprint when this login met the server for the first time."""

    def __init__(self, login: SshLogin, ssh: Sequence[str], control: Path, known_hosts: Path):
        self.login = login
        self.control = control
        self.known_hosts = known_hosts
        self.base = list(ssh)
        self.new_key: str | None = None
        self.ssh_command = [
            *self.base,
            "-o", f"ControlPath={control}",
            "-o", "ControlMaster=no",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
        ]  # fmt: skip

    def alive(self) -> bool:
        return self.control.is_socket()

    def close(self) -> None:
        """End the master (and the SFTP connections through it). Harmless twice."""
        if self.control.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [*self.base, "-o", f"ControlPath={self.control}", "-O", "exit", "--", self.login.host],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                    start_new_session=True,
                )
        with contextlib.suppress(OSError):
            self.control.unlink()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a new file only its owner may read (created with that mode: never readable by
    others, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def in_words(said: str) -> str:
    """ssh's complaint as a technician reads it, with ssh's own line after it."""
    said = said.removeprefix("ssh: ").rstrip(".")
    low = said.lower()
    words = next((w for part, w in _SAID if part in low), None)
    if words is None:
        return f"ssh says: {said}" if said else "ssh failed and said nothing"
    return f"{words} (ssh: {said})"


def fingerprint(known_hosts: Path, name: str, ssh_keygen: str = "ssh-keygen") -> str | None:
    """The fingerprints of `name`'s keys in a known_hosts file ("ED25519 SHA256:...")."""
    try:
        out = subprocess.run(
            [ssh_keygen, "-l", "-F", name, "-f", str(known_hosts)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = [" ".join(ln.split()[1:]) for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return ", ".join(found) or None


def forget(known_hosts: Path, name: str, ssh_keygen: str = "ssh-keygen") -> None:
    """Remove `name`'s keys from a known_hosts file (and the backup ssh-keygen leaves)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([ssh_keygen, "-R", name, "-f", str(known_hosts)], capture_output=True, timeout=10)
    with contextlib.suppress(OSError):
        known_hosts.with_name(known_hosts.name + ".old").unlink()


def ssh_login(
    login: SshLogin,
    *,
    ssh: Sequence[str] = ("ssh",),
    run_dir: Path = RUN_DIR,
    within: float = LOGIN_WITHIN,
) -> SshSession:
    """Log in with a master connection and return it; StorageUnavailable in words (never
    with the password) when the server cannot be reached or refuses the login."""
    from rescue.repo.sftp import meaningful

    run_dir = _private_dir(Path(run_dir))
    known_hosts = run_dir / "known_hosts"
    if not known_hosts.exists():
        _private_file(known_hosts, "")
    known_before = fingerprint(known_hosts, login.known_as)
    token = uuid.uuid4().hex[:12]
    control = run_dir / f"cm-{token}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_ASKPASS") and k != "DISPLAY"}
    secret = run_dir / f"pw-{token}"
    timeout = max(1, int(within))
    argv = [
        *ssh,
        "-M", "-N", "-f",
        "-o", f"ControlPath={control}",
        "-o", f"ControlPersist={PERSIST}",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "HashKnownHosts=no",
        "-o", "UpdateHostKeys=no",
        "-o", f"ConnectTimeout={timeout}",
        "-o", f"ServerAliveInterval={max(1, timeout // 3)}",
        "-o", "ServerAliveCountMax=3",
        "-o", "ClearAllForwardings=yes",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "PermitLocalCommand=no",
        "-o", "RemoteCommand=none",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if login.password:
        askpass = run_dir / "askpass"
        if not askpass.exists() or askpass.read_text() != ASKPASS:
            with contextlib.suppress(FileNotFoundError):
                askpass.unlink()
            _private_file(askpass, ASKPASS, 0o700)
        _private_file(secret, login.password + "\n")
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", RESCUE_ASKPASS_FILE=str(secret))
        argv += ["-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1"]
        argv += ["-o", "PasswordAuthentication=yes", "-o", "KbdInteractiveAuthentication=yes"]
    else:
        argv += ["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"]
    argv += ["-p", str(login.port), "-l", login.user, "--", login.host]
    try:
        # stderr into a file: with -f the master keeps it open for its whole life
        with tempfile.TemporaryFile(dir=run_dir) as err:
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=env,
                    timeout=within + 5,
                    start_new_session=True,  # no terminal: ssh cannot ask on the wizard's screen
                )
            except FileNotFoundError:
                raise StorageUnavailable(f"{login.shown}: cannot run {argv[0]} (openssh-client is needed)") from None
            except subprocess.TimeoutExpired:
                raise StorageUnavailable(f"{login.shown}: no answer within {timeout} s") from None
            err.seek(0)
            lines = err.read(64 << 10).decode("utf-8", "replace").splitlines()
    finally:
        with contextlib.suppress(OSError):
            secret.unlink()  # the helper removed it when ssh asked; also when it did not
    session = SshSession(login, ssh, control, known_hosts)
    if done.returncode != 0 or not session.alive():
        session.close()
        if known_before is None:  # the key accept-new took is shown after a login that works
            forget(known_hosts, login.known_as)
        raise StorageUnavailable(f"{login.shown}: {in_words(meaningful(lines))}")
    if known_before is None:  # accept-new added it (ssh's own "Permanently added" is not relied on)
        session.new_key = fingerprint(known_hosts, login.known_as) or "a key ssh-keygen cannot show"
    return session


def rsh_of(environ: Mapping[str, str]) -> list[str]:
    """The ssh client and options $RESCUE_RSH names (as rescue.repo.storage reads it)."""
    rsh = environ.get("RESCUE_RSH")
    return shlex.split(rsh) if rsh else ["ssh"]


# --- S3 ----------------------------------------------------------------------------------------

_AWS_SETTINGS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)

BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True)
class S3Login:
    """What the S3 form holds. The secret key is never part of the repr or a comparison."""

    bucket: str
    prefix: str = ""
    endpoint: str = ""  # "" : AWS
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = field(default="", repr=False, compare=False)

    @classmethod
    def parse(cls, endpoint: str, bucket: str, prefix: str, region: str, access_key: str, secret_key: str) -> S3Login:
        endpoint, bucket, region, access_key = endpoint.strip(), bucket.strip(), region.strip(), access_key.strip()
        prefix = prefix.strip().strip("/")
        if endpoint and "://" not in endpoint:
            raise UsageError(f"{endpoint}: write the endpoint as a URL (https://s3.example.lan:9000)")
        if endpoint and endpoint.partition("://")[0].lower() not in ("http", "https"):
            raise UsageError(f"{endpoint}: an endpoint is an http:// or https:// URL")
        if not bucket:
            raise UsageError("type the bucket's name")
        if not BUCKET.fullmatch(bucket):
            raise UsageError(f"{bucket!r} is not a bucket name (letters, digits, '.', '-' and '_')")
        if not re.fullmatch(r"[a-z0-9-]+", region or "us-east-1"):
            raise UsageError(f"{region!r} is not a region name (us-east-1, eu-central-1...)")
        if not access_key or not secret_key:
            raise UsageError("S3 needs both the access key and the secret key")
        if any(c.isspace() for c in access_key + secret_key):
            raise UsageError("a key cannot hold spaces or line breaks")
        return cls(bucket, prefix, endpoint, region or "us-east-1", access_key, secret_key)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def shown(self) -> str:
        return self.url + (f" at {self.endpoint}" if self.endpoint else "")

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The mapping rescue.repo.s3.settings reads: this login's settings over `base`
        (os.environ) less every other AWS setting (a CA bundle stays)."""
        out = {k: v for k, v in (os.environ if base is None else base).items() if k not in _AWS_SETTINGS}
        out.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key, AWS_REGION=self.region)
        if self.endpoint:
            out["AWS_ENDPOINT_URL_S3"] = self.endpoint
        return out


class S3Profile:
    """The login as an AWS profile in files under `run_dir` (0600, RAM), named in `environ`
    for as long as the repository is used; `close` removes the files and restores what
    `environ` held before."""

    def __init__(self, login: S3Login, run_dir: Path = S3_DIR, environ: MutableMapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ
        self.saved = {k: self.environ.get(k) for k in _AWS_SETTINGS}
        self.dir = Path(tempfile.mkdtemp(prefix="profile-", dir=_private_dir(Path(run_dir))))
        creds, conf = self.dir / "credentials", self.dir / "config"
        _private_file(
            creds,
            f"[{PROFILE}]\naws_access_key_id = {login.access_key}\naws_secret_access_key = {login.secret_key}\n",
        )
        section = f"[profile {PROFILE}]\nregion = {login.region}\n"
        if login.endpoint:
            section += f"endpoint_url = {login.endpoint}\n"
        _private_file(conf, section)
        for k in _AWS_SETTINGS:
            self.environ.pop(k, None)
        self.environ.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(conf), AWS_PROFILE=PROFILE)

    def close(self) -> None:
        for k, v in self.saved.items():
            if v is None:
                self.environ.pop(k, None)
            else:
                self.environ[k] = v
        self.saved = {k: self.environ.get(k) for k in _AWS_SETTINGS}
        for f in ("credentials", "config"):
            with contextlib.suppress(OSError):
                (self.dir / f).unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

"""An OpenSSH server (Debian's openssh-server) for tests: sshd on 127.0.0.1 on a free port,
from a directory of its own, serving SFTP to one client key, and the client's side as real
as the server's: an ssh_config that names the key, a known_hosts holding the server's host
key and StrictHostKeyChecking yes.

Everything the server keeps is under its directory: sshd_config, its host key and pid file,
the authorized_keys of the client key, and the client's ssh_config, key and known_hosts.
/etc/ssh and ~/.ssh are never read or written (sshd gets `-f OUR_CONFIG`, ssh `-F
OUR_CONFIG`). The one thing outside is /run/sshd, the empty directory sshd insists on for
privilege separation (compiled in, no option moves it); it is made when missing, as the
package's tmpfiles.d does at boot.

Root logs in with the key (the tests run as root); no password, no PAM. StrictModes is off:
the authorized_keys lies under /tmp, which is writable by all, and sshd would refuse it.
SFTP is `internal-sftp`, sshd's own, in the session's process.

Each connection is served by a child of the listener that calls setsid(): it leaves the
process group that `timeout` (servers.bounded) signals. So `stop` also ends the listener's
descendants, and `pause`/`resume` (SIGSTOP/SIGCONT) reach every process of the server, the
connections being served included: to a client, a server that stopped answering."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.repo.retry import Patience
from rescue.repo.sftp import SftpStorage
from rescue.repo.storage import Storage
from servers.bounded import (
    DEFAULT_LIFETIME,
    READY_WITHIN,
    Process,
    ServerError,
    factory,
    free_port,
    ready_or_stopped,
    start,
)

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself: it must be started by its absolute path
PRIVSEP_DIR = Path("/run/sshd")
SHARED_LIFETIME = 1800.0  # seconds the one server storage_backend shares may live


@dataclass
class SshServer:
    """A running sshd and how to reach it."""

    root: Path  # the server's own directory (configs, keys, log)
    host: str
    port: int
    user: str
    process: Process

    @property
    def client_config(self) -> Path:
        """An ssh_config for `ssh -F`: the client key, the server's host key, nothing else."""
        return self.root / "ssh_config"

    @property
    def ssh_command(self) -> list[str]:
        return ["ssh", "-F", str(self.client_config)]

    @property
    def log(self) -> Path:
        return self.process.log

    def url(self, path: Path | str) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{path}"

    def storage(self, path: Path | str, *, patience: Patience | None = None) -> SftpStorage:
        """An SftpStorage of `path` on this server, through its client config."""
        if patience is None:
            return SftpStorage.from_url(self.url(path), ssh_command=self.ssh_command)
        return SftpStorage.from_url(self.url(path), ssh_command=self.ssh_command, patience=patience)

    def pids(self) -> list[int]:
        """The listener and every process it forked (the connections it serves)."""
        try:
            listener = int((self.root / "sshd.pid").read_text())
        except (OSError, ValueError):
            return []
        return [listener, *descendants(listener)]

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def pause(self) -> None:
        """SIGSTOP to the whole server: it accepts connections (the kernel does) and answers
        nothing, as a hung server or a cut network cable."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        children = descendants(self.process.proc.pid)
        for pid in children:  # first, so none is left stopped or outside the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
        self.process.stop()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair without passphrase at `path`; its public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def sshd_config(root: Path, *, host: str, port: int, subsystem: str | None = "internal-sftp") -> str:
    sftp = f"Subsystem sftp {subsystem}" if subsystem else "# no sftp subsystem"
    return f"""ListenAddress {host}:{port}
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
MaxStartups 100:30:200
MaxSessions 50
LogLevel INFO
{sftp}
"""


def ssh_config(root: Path, *, host: str, port: int, user: str, key: str = "client_ed25519") -> str:
    return f"""Host *
    HostName {host}
    Port {port}
    User {user}
    IdentityFile {root}/{key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {root}/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    UpdateHostKeys no
    PasswordAuthentication no
    KbdInteractiveAuthentication no
"""


def start_sshd(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    user: str = "root",
    subsystem: str | None = "internal-sftp",
    lifetime: float = DEFAULT_LIFETIME,
    ready_within: float = READY_WITHIN,
) -> SshServer:
    """Start sshd on host:port (a free port by default) letting `user` in with the client key
    of its client config, serving SFTP with `subsystem` (a command instead: a server that
    speaks something else; None: no SFTP at all). ServerError (one line, the log's tail) when it does not listen
    within `ready_within` seconds. Stopped by stop(), or by itself after `lifetime` seconds
    (the connections it serves end when their clients do)."""
    port = port or free_port(host)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rescue-sshd-"))
    try:
        host_key = keygen(root / "host_ed25519", "rescue test sshd")
        (root / "authorized_keys").write_text(keygen(root / "client_ed25519", "rescue test client") + "\n")
        keygen(root / "stranger_ed25519", "a key the server does not know")
        entry = host if port == 22 else f"[{host}]:{port}"
        (root / "known_hosts").write_text(f"{entry} {' '.join(host_key.split()[:2])}\n")
        (root / "sshd_config").write_text(sshd_config(root, host=host, port=port, subsystem=subsystem))
        (root / "ssh_config").write_text(ssh_config(root, host=host, port=port, user=user))
        check = subprocess.run([SSHD, "-t", "-f", str(root / "sshd_config")], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(f"sshd -t refused its config: {check.stderr.strip()}")
        argv = [SSHD, "-D", "-e", "-f", str(root / "sshd_config")]
        process = start("sshd", argv, root / "sshd.log", lifetime=lifetime)
        server = SshServer(root, host, port, user, process)
        return ready_or_stopped(server, host, port, within=ready_within)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def servers() -> contextlib.AbstractContextManager[Callable[..., SshServer]]:
    """A factory for a test's fixture: make(**options of start_sshd) starts a server; all are
    stopped when the block ends, whether the test passed or not."""
    return factory(start_sshd)


_shared: SshServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> SshServer:
    """One server for the whole session, started on first use, stopped at exit (and by
    itself after SHARED_LIFETIME seconds, whatever happens to the session)."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.process.alive():
            _shared = start_sshd(lifetime=SHARED_LIFETIME)
            atexit.register(_shared.stop)
        return _shared


@contextlib.contextmanager
def storage_backend(root: Path) -> Iterator[tuple[Storage, Storage]]:
    """(reader, writer) over an empty directory under root served by a real sshd; here both
    are the same SftpStorage."""
    server = shared_server()
    folder = Path(tempfile.mkdtemp(prefix="sftp-", dir=root))
    storage = server.storage(folder)
    try:
        yield storage, storage
    finally:
        storage.close()

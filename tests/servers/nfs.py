"""An NFS server for tests: NFS-Ganesha (Debian's nfs-ganesha with its VFS backend,
nfs-ganesha-vfs) in user space, because this host's kernel has no nfsd. One export of a
directory of its own, NFSv4 (minor versions 0, 1 and 2) over TCP on 127.0.0.1.

NFSv4 only: it needs nothing but its one TCP port. NFSv3 needs the portmapper: Ganesha 4.3
registers v3 (and MOUNT) with rpcbind at start and exits when it cannot ("Cannot register
NFS V3 on TCP"), and an rpcbind would be a host-wide daemon on port 111 with its socket in
/run, not a private one. So v3 is not served here; netmount's v3 fallback is for servers
that still only speak v3.

Everything Ganesha keeps is under the server's directory: its config, log, pid file and
NFSv4 recovery directory (RecoveryRoot; the default is /var/lib/nfs/ganesha) and its
Kerberos credential cache directory (CCacheDir, made at start even with Kerberos off; the
default is /var/run/ganesha). `Graceless`
skips the 90 s grace period a restarted server gives clients to reclaim state, during which
every OPEN would fail with NFS4ERR_GRACE. It cannot reach the system D-Bus here and says so
in its log, and that it has no Kerberos keytab for the NFSv4 callback channel (CRIT lines
about DBUS and gssd_refresh_krb5_machine_credential are harmless: no D-Bus admin interface,
no RPCSEC_GSS); it serves all the same.

Root on the client is root on the export (No_Root_Squash), for 127.0.0.1 only by default: a
QEMU guest's connections arrive from the host's 127.0.0.1 (user-network NAT, from an
unprivileged port: Ganesha does not insist on privileged ports). From a guest:
`mount -t nfs -o vers=4.2 10.0.2.2:/repo DIR`, plus `port=PORT` when not 2049."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from servers.bounded import (
    DEFAULT_LIFETIME,
    GUEST_HOST,
    READY_WITHIN,
    Process,
    ServerError,
    factory,
    port_free,
    ready_or_stopped,
    start,
)

NFS_PORT = 2049
PLUGINS = "/usr/lib/x86_64-linux-gnu/ganesha"  # nfs-ganesha-vfs's libfsalvfs.so


@dataclass
class NfsServer:
    """A running ganesha.nfsd and how to reach it."""

    root: Path
    export_dir: Path
    host: str
    port: int
    pseudo: str  # the export's NFSv4 path: what clients mount
    process: Process

    @property
    def log(self) -> Path:
        return self.process.log

    def spec(self, host: str | None = None) -> str:
        """HOST:/PSEUDO for mount.nfs; host defaults to where the server listens."""
        return f"{host or self.host}:{self.pseudo}"

    @property
    def guest_spec(self) -> str:
        return self.spec(GUEST_HOST)

    def url(self, path: str = "") -> str:
        """A libnfs URL (nfs-ls, nfs-cp) of a path inside the export."""
        inside = "/" + path.lstrip("/") if path else ""
        return f"nfs://{self.host}{self.pseudo}{inside}?version=4&nfsport={self.port}"

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def ganesha_conf(
    root: Path, *, host: str, port: int, pseudo: str, clients: str, minor_versions: tuple[int, ...], read_only: bool
) -> str:
    access = "RO" if read_only else "RW"
    return f"""NFS_CORE_PARAM {{
  Bind_addr = {host};
  NFS_Port = {port};
  Protocols = 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Plugins_Dir = "{PLUGINS}";
}}
NFS_KRB5 {{
  Active_krb5 = false;
  CCacheDir = "{root}/ccache";
}}
NFSv4 {{
  Graceless = true;
  RecoveryBackend = fs;
  RecoveryRoot = "{root}/recovery";
  Minor_Versions = {", ".join(str(v) for v in minor_versions)};
  Only_Numeric_Owners = true;
}}
EXPORT_DEFAULTS {{
  Access_Type = None;
}}
EXPORT {{
  Export_Id = 1;
  Path = "{root}/export";
  Pseudo = "{pseudo}";
  Protocols = 4;
  Transports = TCP;
  SecType = sys;
  Squash = No_Root_Squash;
  Access_Type = None;
  CLIENT {{
    Clients = {clients};
    Access_Type = {access};
  }}
  FSAL {{
    Name = VFS;
  }}
}}
LOG {{
  Default_Log_Level = EVENT;
}}
"""


def start_nfs(
    *,
    host: str = "127.0.0.1",
    port: int = NFS_PORT,
    pseudo: str = "/repo",
    clients: str = "127.0.0.1",
    minor_versions: tuple[int, ...] = (0, 1, 2),
    read_only: bool = False,
    lifetime: float = DEFAULT_LIFETIME,
    ready_within: float = READY_WITHIN,
) -> NfsServer:
    """Start ganesha.nfsd exporting a new directory as `pseudo` to `clients` (Ganesha's
    client list: addresses, networks, "*") over NFSv4.`minor_versions` on host:port.
    ServerError (one line, with the log's tail) when it does not serve within
    `ready_within` seconds. Stopped by stop(), or by itself after `lifetime` seconds."""
    if not port_free(host, port):
        raise ServerError(f"{host}:{port} is in use (another NFS server?): Ganesha cannot listen there")
    root = Path(tempfile.mkdtemp(prefix="rescue-ganesha-"))
    try:
        (root / "export").mkdir()
        (root / "recovery").mkdir()
        (root / "ccache").mkdir(mode=0o700)
        conf = root / "ganesha.conf"
        conf.write_text(
            ganesha_conf(
                root,
                host=host,
                port=port,
                pseudo=pseudo,
                clients=clients,
                minor_versions=minor_versions,
                read_only=read_only,
            )
        )
        log = root / "ganesha.log"
        argv = [
            "ganesha.nfsd",
            "-F",
            "-f",
            str(conf),
            "-L",
            str(log),
            "-p",
            str(root / "ganesha.pid"),
            "-N",
            "NIV_EVENT",
        ]
        process = start("ganesha.nfsd", argv, log, lifetime=lifetime)
        server = NfsServer(root, root / "export", host, port, pseudo, process)
        return ready_or_stopped(server, host, port, within=ready_within, log_says="NFS SERVER INITIALIZED")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def servers() -> contextlib.AbstractContextManager[Callable[..., NfsServer]]:
    """A factory for a test's fixture: make(**options of start_nfs) starts a server; all are
    stopped when the block ends, whether the test passed or not."""
    return factory(start_nfs)

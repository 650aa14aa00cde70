"""A Samba server (Debian's smbd) for tests: one share, one user with a password, on
127.0.0.1, from a directory of its own.

Everything smbd keeps is under that directory: smb.conf and its lock, state, cache, private,
pid, ncalrpc and binddns directories, and the password database (tdbsam) that `smbpasswd -a`
fills, and the core dump directory that smbd makes at start beside its `log file` (without
one: /var/log/samba/cores). /etc/samba, /var/lib/samba and /var/log/samba are never read or
written (smbd and smbpasswd get `-s/-c OUR_SMB_CONF`; the log goes to stdout, smbd.log).

Samba's own RPC helpers are off (`rpc start on demand helpers = no`): smbd would start
samba-dcerpcd, which leaves the process group (so neither `timeout` nor the teardown would
stop it), outlives smbd, and logs to /var/log/samba whatever smb.conf says. Nothing here
needs RPC: mount.cifs and smbclient's file commands speak SMB2/3 only; what is lost is
listing the server's shares (`smbclient -L` shows an empty list).

The SMB user is a name for the network ("rescue"); `username map` maps it to a Unix account
that exists on every Debian system (`nobody` by default: files are then written as an
ordinary user, as on a real server; `root` works too). smbd serves only paths that account
can reach: the server's directory is made under /tmp with mode 0711 (pytest's tmp_path lies
under a 0700 directory) and the share belongs to that account.

A QEMU guest on the user network mounts it as //10.0.2.2/SHARE: QEMU forwards the guest's
connections to 10.0.2.2:PORT to the host's 127.0.0.1:PORT. Port 445 (the default) needs no
option in the guest; any other port needs `-o port=PORT` (mount.cifs and the kernel take it,
netmount.SmbShare(port=...)), and `smbclient -p PORT`."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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

PROTOCOLS = ("SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11")
SMB_PORT = 445


@dataclass
class SambaServer:
    """A running smbd and how to reach it."""

    root: Path  # the server's own directory (config, state, logs, the share)
    share_dir: Path  # what the share serves
    host: str
    port: int
    share: str
    user: str
    password: str = field(repr=False)
    unix_user: str
    process: Process

    @property
    def conf(self) -> Path:
        return self.root / "smb.conf"

    @property
    def log(self) -> Path:
        return self.process.log

    def unc(self, host: str | None = None) -> str:
        """//HOST/SHARE; host defaults to where the server listens. From a QEMU guest:
        unc(GUEST_HOST)."""
        return f"//{host or self.host}/{self.share}"

    @property
    def guest_unc(self) -> str:
        return self.unc(GUEST_HOST)

    def give_to_user(self) -> None:
        """Make everything in the share the Unix account's (after a test put files there as
        root), so the SMB user can change them."""
        subprocess.run(["chown", "-R", f"{self.unix_user}:", str(self.share_dir)], check=True)

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def smb_conf(
    root: Path, *, host: str, port: int, share: str, unix_user: str, min_protocol: str, max_protocol: str
) -> str:
    d = {name: root / name for name in ("lock", "state", "cache", "private", "pid", "ncalrpc", "binddns")}
    return f"""[global]
server role = standalone server
workgroup = WORKGROUP
interfaces = {host}
bind interfaces only = yes
smb ports = {port}
disable netbios = yes
server min protocol = {min_protocol}
server max protocol = {max_protocol}
rpc start on demand helpers = no
lock directory = {d["lock"]}
state directory = {d["state"]}
cache directory = {d["cache"]}
private dir = {d["private"]}
pid directory = {d["pid"]}
ncalrpc dir = {d["ncalrpc"]}
binddns dir = {d["binddns"]}
passdb backend = tdbsam:{d["private"]}/passdb.tdb
username map = {root}/users.map
map to guest = never
load printers = no
printing = bsd
printcap name = /dev/null
disable spoolss = yes
usershare max shares = 0
log level = 1
log file = {root}/log.smbd

[{share}]
path = {root}/share
read only = no
valid users = {unix_user}
"""


def start_samba(
    *,
    host: str = "127.0.0.1",
    port: int = SMB_PORT,
    share: str = "repo",
    user: str = "rescue",
    password: str = "rescue-test-pw",
    unix_user: str = "nobody",
    min_protocol: str = "SMB2_02",
    max_protocol: str = "SMB3_11",
    lifetime: float = DEFAULT_LIFETIME,
    ready_within: float = READY_WITHIN,
) -> SambaServer:
    """Start smbd serving one writable share to `user`/`password` on host:port, speaking
    SMB dialects min_protocol..max_protocol (names as smb.conf takes them: PROTOCOLS).
    ServerError (one line, with the log's tail) when it does not listen within
    `ready_within` seconds. Stopped by stop(), or by itself after `lifetime` seconds."""
    for proto in (min_protocol, max_protocol):
        if proto not in PROTOCOLS:
            raise ValueError(f"{proto!r} is not one of {PROTOCOLS}")
    if not port_free(host, port):
        raise ServerError(f"{host}:{port} is in use (another smbd?): Samba cannot listen there")
    root = Path(tempfile.mkdtemp(prefix="rescue-smbd-"))
    try:
        root.chmod(0o711)
        for name in ("lock", "state", "cache", "private", "pid", "ncalrpc", "binddns"):
            (root / name).mkdir(mode=0o700)
        (root / "share").mkdir()
        shutil.chown(root / "share", unix_user)
        conf = root / "smb.conf"
        conf.write_text(
            smb_conf(
                root,
                host=host,
                port=port,
                share=share,
                unix_user=unix_user,
                min_protocol=min_protocol,
                max_protocol=max_protocol,
            )
        )
        (root / "users.map").write_text(f"{unix_user} = {user}\n")
        add = subprocess.run(
            ["smbpasswd", "-c", str(conf), "-s", "-a", unix_user],
            input=f"{password}\n{password}\n".encode(),
            capture_output=True,
            timeout=60,
        )
        if add.returncode != 0:
            said = (add.stderr or add.stdout).decode(errors="replace").strip().splitlines()
            raise ServerError(f"smbpasswd -a {unix_user} failed: {said[-1] if said else add.returncode}")
        argv = ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-s", str(conf)]
        process = start("smbd", argv, root / "smbd.log", lifetime=lifetime)
        server = SambaServer(root, root / "share", host, port, share, user, password, unix_user, process)
        return ready_or_stopped(server, host, port, within=ready_within)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def servers() -> contextlib.AbstractContextManager[Callable[..., SambaServer]]:
    """A factory for a test's fixture: make(**options of start_samba) starts a server; all are
    stopped when the block ends, whether the test passed or not."""
    return factory(start_samba)

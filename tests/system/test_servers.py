"""The test servers really serve: each fixture checked with Debian's userspace clients
(smbclient for Samba, libnfs-utils' nfs-ls and nfs-cp for NFS-Ganesha), because this host's
kernel has no cifs or nfs client. The product's kernel mounts (rescue.hw.netmount) are
tested against these same fixtures from QEMU guests.

Ports: the servers listen on free ports here, not 445/2049, so these tests run beside
anything else (a guest test's server on the standard ports, another run)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from servers import nfs as nfs_servers
from servers import samba as samba_servers
from servers.bounded import ServerError, free_port, port_free

from rescue.errors import RepoError
from rescue.hw import leftovers, netmount
from rescue.hw.netmount import NfsExport, SmbShare

CLIENT_TIMEOUT = 60


@pytest.fixture
def samba_server():
    with samba_servers.servers() as make:
        yield make


@pytest.fixture
def nfs_server():
    with nfs_servers.servers() as make:
        yield make


def smbclient(server, command: str, *, password: str | None = None, extra: tuple[str, ...] = ()):
    """smbclient against the server's share; the password through the environment
    (PASSWD), never on the command line."""
    env = {**os.environ, "PASSWD": server.password if password is None else password}
    argv = ["smbclient", "-p", str(server.port), server.unc(), "-U", server.user, *extra, "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT)


def test_samba_serves_the_share_to_its_user(samba_server, tmp_path):
    server = samba_server(port=free_port())
    payload = tmp_path / "up.bin"
    payload.write_bytes(os.urandom(300_000))
    back = tmp_path / "down.bin"
    put = smbclient(server, f"put {payload} up.bin; mkdir images; ls")
    assert put.returncode == 0, put.stderr + put.stdout
    assert "up.bin" in put.stdout and "images" in put.stdout
    assert (server.share_dir / "up.bin").read_bytes() == payload.read_bytes()
    assert (server.share_dir / "up.bin").stat().st_uid != 0  # written as the mapped Unix user
    get = smbclient(server, f"get up.bin {back}")
    assert get.returncode == 0, get.stderr + get.stdout
    assert back.read_bytes() == payload.read_bytes()


def test_samba_refuses_a_wrong_password(samba_server):
    server = samba_server(port=free_port())
    wrong = smbclient(server, "ls", password="not-the-password")
    assert wrong.returncode != 0
    assert "NT_STATUS_LOGON_FAILURE" in wrong.stdout + wrong.stderr


def test_samba_refuses_an_unknown_share(samba_server):
    server = samba_server(port=free_port())
    argv = ["smbclient", "-p", str(server.port), f"//{server.host}/nosuch", "-U", server.user, "-c", "ls"]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PASSWD": server.password}, timeout=CLIENT_TIMEOUT
    )
    assert proc.returncode != 0
    assert "NT_STATUS_BAD_NETWORK_NAME" in proc.stdout + proc.stderr


def test_samba_limited_to_smb2_10_refuses_an_smb3_client(samba_server):
    server = samba_server(port=free_port(), max_protocol="SMB2_10")
    smb3_only = ("--option=client min protocol=SMB3", "--option=client max protocol=SMB3_11")
    refused = smbclient(server, "ls", extra=smb3_only)
    assert refused.returncode != 0
    assert "NT_STATUS_NOT_SUPPORTED" in refused.stdout + refused.stderr
    smb2 = ("--option=client min protocol=SMB2_10", "--option=client max protocol=SMB2_10")
    assert smbclient(server, "ls", extra=smb2).returncode == 0


def system_state(*tops: str) -> dict[str, int]:
    """Every file and directory under `tops` with its modification time."""
    seen = {}
    for top in tops:
        for dirpath, _, files in os.walk(top):
            for name in [".", *files]:
                path = os.path.join(dirpath, name)
                try:
                    seen[path] = os.stat(path).st_mtime_ns
                except OSError:
                    pass
    return seen


SAMBA_DIRS = ("/etc/samba", "/var/lib/samba", "/var/cache/samba", "/var/log/samba", "/run/samba")
NFS_DIRS = ("/etc/ganesha", "/var/lib/nfs", "/var/log/ganesha", "/run/ganesha", "/var/run/ganesha")


def test_samba_keeps_out_of_the_system_directories(samba_server):
    """Nothing under Samba's system directories appears or changes while a server starts,
    serves and stops."""
    before = system_state(*SAMBA_DIRS)
    server = samba_server(port=free_port())
    assert smbclient(server, "ls").returncode == 0
    server.stop()
    assert system_state(*SAMBA_DIRS) == before


def test_samba_stops_by_itself_after_its_lifetime(samba_server):
    port = free_port()
    server = samba_server(port=port, lifetime=8)
    deadline = time.monotonic() + 30
    while server.process.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server.process.alive()
    assert port_free(server.host, port)


def test_a_busy_port_fails_fast_with_one_line(samba_server):
    server = samba_server(port=free_port())
    with pytest.raises(ServerError, match="is in use"):
        samba_server(port=server.port)


def nfs(*argv: str):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=CLIENT_TIMEOUT)


# libnfs 4.0.0 (bookworm) cannot encode an NFSv4 WRITE compound larger than about 4 KiB
# ("ZDR error: Failed to encode COMPOUND4args", 3944 bytes is the largest file nfs-cp writes):
# a client limit, not the server's. Uploads stay small; the download is large.
SMALL = 3000


def test_nfs_serves_the_export(nfs_server, tmp_path):
    server = nfs_server(port=free_port())
    big = os.urandom(5_000_000)
    (server.export_dir / "there.bin").write_bytes(big)
    listing = nfs("nfs-ls", server.url())
    assert listing.returncode == 0, listing.stderr
    assert "there.bin" in listing.stdout
    down = tmp_path / "there.bin"
    get = nfs("nfs-cp", server.url("there.bin"), str(down))
    assert get.returncode == 0, get.stderr
    assert down.read_bytes() == big
    payload = tmp_path / "up.bin"
    payload.write_bytes(os.urandom(SMALL))
    put = nfs("nfs-cp", str(payload), server.url("up.bin"))
    assert put.returncode == 0, put.stderr
    assert (server.export_dir / "up.bin").read_bytes() == payload.read_bytes()
    back = tmp_path / "back.bin"
    again = nfs("nfs-cp", server.url("up.bin"), str(back))
    assert again.returncode == 0, again.stderr
    assert back.read_bytes() == payload.read_bytes()


def test_nfs_has_no_other_export(nfs_server):
    server = nfs_server(port=free_port())
    missing = nfs("nfs-ls", f"nfs://{server.host}/nosuch?version=4&nfsport={server.port}")
    assert missing.returncode != 0
    assert "NFS4ERR_NOENT" in missing.stderr + missing.stdout


def test_nfs_exports_only_to_its_clients(nfs_server):
    server = nfs_server(port=free_port(), clients="192.0.2.1")
    refused = nfs("nfs-ls", server.url())
    assert refused.returncode != 0
    assert "NFS4ERR" in refused.stderr + refused.stdout


def test_nfs_read_only_export_refuses_writes(nfs_server, tmp_path):
    server = nfs_server(port=free_port(), read_only=True)
    payload = tmp_path / "up.bin"
    payload.write_bytes(b"x" * SMALL)
    put = nfs("nfs-cp", str(payload), server.url("up.bin"))
    assert put.returncode != 0
    assert not (server.export_dir / "up.bin").exists()


def test_nfs_keeps_out_of_the_system_directories(nfs_server):
    before = system_state(*NFS_DIRS)
    server = nfs_server(port=free_port())
    assert nfs("nfs-ls", server.url()).returncode == 0
    server.stop()
    assert system_state(*NFS_DIRS) == before


def test_nfs_stops_by_itself_after_its_lifetime(nfs_server):
    port = free_port()
    server = nfs_server(port=port, lifetime=5)
    deadline = time.monotonic() + 30
    while server.process.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not server.process.alive()
    assert port_free(server.host, port)


# The product's side, as far as this host goes: mount.cifs and mount.nfs really run (through
# rescue.hw.mounts), but this kernel has neither client, so only what fails before the kernel
# is asked, or because of it, can be seen here. Mounting for real is the guests' part.


def test_netmount_names_a_server_that_does_not_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "state" / "sessions"))
    where = tmp_path / "mnt"
    where.mkdir()
    share = SmbShare("no-such-host.invalid", "repo", user="rescue", password="pw")
    with pytest.raises(RepoError) as e:
        netmount.mount_smb(share, where, read_only=True)
    assert str(e.value).startswith("//no-such-host.invalid/repo: the server's name cannot be resolved")
    assert "\n" not in str(e.value)
    with pytest.raises(RepoError, match=r"^no-such-host.invalid:/repo: the server's name cannot be resolved"):
        netmount.mount_nfs(NfsExport("no-such-host.invalid", "/repo"), where, read_only=True)
    assert leftovers.entries() == []  # no mount, no credentials directory left recorded
    assert os.listdir(tmp_path / "state" / netmount.CREDENTIALS_DIR) == []


def test_netmount_says_when_this_kernel_has_no_client(samba_server, tmp_path, monkeypatch):
    """This host's kernel has no cifs: the technician reads that, once, not a refusal of
    three versions."""
    if "cifs" in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has a cifs client")
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "state" / "sessions"))
    server = samba_server(port=free_port())
    where = tmp_path / "mnt"
    where.mkdir()
    share = SmbShare(server.host, server.share, user=server.user, password=server.password, port=server.port)
    with pytest.raises(RepoError, match=r"no cifs support in its kernel\)$"):
        netmount.mount_smb(share, where, read_only=False)
    assert leftovers.entries() == []

"""rescue.hw.netmount without a network or root: what a person types, the options each
mount attempt gets (the password never among them, versions in order), the credentials
file, and the technician's words for the real messages of mount.cifs (cifs-utils 7.0,
mount.cifs.c) and mount.nfs (nfs-utils 2.6.2, utils/mount/error.c) - the format strings
as these tools print them, filled in with the strerror() texts of the errno values the
kernel's SMB and NFS clients return. The mounts themselves are tested inside QEMU guests
against tests/servers."""

from __future__ import annotations

import os
import stat

import pytest

from rescue.errors import RepoError, UsageError
from rescue.hw import leftovers, netmount
from rescue.hw.mounts import OurMount
from rescue.hw.netmount import Failure, NfsExport, SmbShare, Why

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, server, share, folder",
    [
        ("//nas/backup", "nas", "backup", ""),
        ("//nas/backup/", "nas", "backup", ""),
        ("//10.0.2.2/repo/images/2024", "10.0.2.2", "repo", "images/2024"),
        ("\\\\NAS\\Backup\\Rescue Images", "NAS", "Backup", "Rescue Images"),
        ("\\\\nas\\backup/mixed\\slashes//here", "nas", "backup", "mixed/slashes/here"),
        ("  smb://nas.example.com/backup/x  ", "nas.example.com", "backup", "x"),
        ("//nas/My Share/./a", "nas", "My Share", "a"),
    ],
)
def test_parse_smb(text, server, share, folder):
    got = netmount.parse_smb(text, user="tech", password="pw", domain="OFFICE")
    assert (got.server, got.share, got.folder) == (server, share, folder)
    assert (got.user, got.password, got.domain) == ("tech", "pw", "OFFICE")


@pytest.mark.parametrize(
    "text, words",
    [
        ("nas/backup", "is not a share"),
        ("//nas", "names no share"),
        ("\\\\nas\\", "names no share"),
        ("//nas/backup/../etc", "goes up with '..'"),
        ("//user@nas/backup", "user name in its own field"),
        ("//na s/backup", "is not a server name"),
        ("//nas/back:up", "is not a share name"),
        ("", "is not a share"),
    ],
)
def test_parse_smb_refuses_nonsense_in_one_line(text, words):
    with pytest.raises(UsageError, match=words) as e:
        netmount.parse_smb(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, server, path",
    [
        ("nas:/export/images", "nas", "/export/images"),
        ("10.0.2.2:/repo/", "10.0.2.2", "/repo"),
        ("nas://srv//x", "nas", "/srv/x"),
        ("nfs://nas/export/images", "nas", "/export/images"),
        ("[fd00::5]:/export", "[fd00::5]", "/export"),
        ("nas:/", "nas", "/"),
    ],
)
def test_parse_nfs(text, server, path):
    got = netmount.parse_nfs(text)
    assert (got.server, got.path) == (server, path)
    assert got.spec == f"{server}:{path}"


@pytest.mark.parametrize(
    "text, words",
    [
        ("nas", "is not an export"),
        ("nas:export", "has no path"),
        (":/export", "no server"),
        ("nas:/a/../b", "goes up"),
        ("[fd00::5]/export", "is not an export"),
    ],
)
def test_parse_nfs_refuses_nonsense(text, words):
    with pytest.raises(UsageError, match=words):
        netmount.parse_nfs(text)


def test_parse_place_tells_shares_from_exports():
    assert isinstance(netmount.parse_place("//nas/backup"), SmbShare)
    assert isinstance(netmount.parse_place("\\\\nas\\backup"), SmbShare)
    assert isinstance(netmount.parse_place("nas:/export"), NfsExport)
    with pytest.raises(UsageError, match="neither a Windows share"):
        netmount.parse_place("nas")


@pytest.mark.parametrize("field_name", ["user", "password", "domain"])
def test_a_line_break_cannot_reach_the_credentials_file(field_name):
    with pytest.raises(UsageError, match="control character"):
        SmbShare("nas", "backup", **{field_name: "x\ndomain=EVIL"})


def test_the_password_is_never_shown():
    share = SmbShare("nas", "backup", user="tech", password="s3cret")
    assert "s3cret" not in repr(share) and "s3cret" not in str(share)
    assert str(share) == share.unc == "//nas/backup"
    assert SmbShare("nas", "backup", "a/b").unc == "//nas/backup/a/b"


# --------------------------------------------------------------------------- options


def test_smb_options_carry_the_credentials_file_not_the_password(tmp_path):
    share = SmbShare("nas", "backup", user="tech", password="s3cret,with=odd chars", domain="OFFICE")
    creds = tmp_path / "credentials"
    for version in netmount.SMB_VERSIONS:
        opts = netmount.smb_options(share, version, creds)
        assert opts.startswith(f"vers={version},credentials={creds},")
        assert "s3cret" not in opts and "pass" not in opts and "OFFICE" not in opts
        assert "s3cret" not in share.unc
        assert {"noperm", "cache=strict", "actimeo=0", "soft"} <= set(opts.split(","))
        assert "nobrl" not in opts  # flock must reach the server (see the module)
    assert netmount.smb_options(share, "3.0", None).split(",")[:2] == ["vers=3.0", "guest"]
    assert "port=4445" in netmount.smb_options(SmbShare("h", "s", port=4445), "3.0", None).split(",")


def test_nfs_options_fail_in_bounded_time():
    export = NfsExport("nas", "/export")
    for version in netmount.NFS_VERSIONS:
        opts = netmount.nfs_options(export, version).split(",")
        assert opts[0] == f"vers={version}"
        assert {"softerr", "timeo=100", "retrans=2", "retry=0", "proto=tcp"} <= set(opts)
        assert "hard" not in opts
        assert ("nolock" in opts) == (version == "3")
    assert "port=12049" in netmount.nfs_options(NfsExport("h", "/x", port=12049), "4.2").split(",")


def test_versions_are_tried_newest_first():
    assert netmount.SMB_VERSIONS == ("3.1.1", "3.0", "2.1")
    assert netmount.NFS_VERSIONS == ("4.2", "4.1", "4.0", "3")


# --------------------------------------------------------------------------- credentials


def test_credentials_file_is_private_and_gone_after_the_block(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "state" / "sessions"))
    share = SmbShare("nas", "backup", user="tech", password="pa ss=word,1", domain="OFFICE")
    with netmount.credentials_file(share) as path:
        assert path.is_relative_to(tmp_path / "state" / netmount.CREDENTIALS_DIR)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == "username=tech\npassword=pa ss=word,1\ndomain=OFFICE\n"
        assert any(e.data.get("path") == str(path.parent) for e in leftovers.entries())
    assert not path.exists() and not path.parent.exists()
    assert not any(e.data.get("path") == str(path.parent) for e in leftovers.entries())


def test_credentials_file_is_removed_when_the_mount_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("RESCUE_STATE_DIR", str(tmp_path / "state" / "sessions"))
    with pytest.raises(RuntimeError), netmount.credentials_file(SmbShare("nas", "b", user="u")) as path:
        raise RuntimeError("mount failed")
    assert not path.parent.exists()
    assert os.listdir(tmp_path / "state" / netmount.CREDENTIALS_DIR) == []


def test_credentials_without_domain():
    assert netmount.credentials_text(SmbShare("nas", "b", user="u", password="")) == "username=u\npassword=\n"


# --------------------------------------------------------------------------- trying versions

MOUNTED = OurMount("//nas/backup", "/mnt/x")
REFUSED = Failure(Why.VERSION, "the server does not speak this SMB version")
DENIED = Failure(Why.DENIED, "access denied: wrong user name or password, or this user may not use the share")


def attempts(answers):
    tried = []

    def attempt(version):
        tried.append(version)
        return answers[len(tried) - 1]

    return tried, attempt


def test_the_first_version_that_mounts_wins():
    tried, attempt = attempts([REFUSED, MOUNTED, MOUNTED])
    assert netmount.try_versions("SMB", netmount.SMB_VERSIONS, attempt) == (MOUNTED, "3.0")
    assert tried == ["3.1.1", "3.0"]


def test_every_version_refused_names_them():
    tried, attempt = attempts([REFUSED] * 3)
    with pytest.raises(RepoError) as e:
        netmount.try_versions("SMB", netmount.SMB_VERSIONS, attempt)
    assert tried == ["3.1.1", "3.0", "2.1"]
    assert str(e.value) == "the server refused SMB 3.1.1, 3.0 and 2.1 (the server does not speak this SMB version)"


def test_another_failure_stops_at_once():
    tried, attempt = attempts([DENIED, MOUNTED, MOUNTED])
    with pytest.raises(RepoError, match="^access denied: wrong user name or password") as e:
        netmount.try_versions("SMB", netmount.SMB_VERSIONS, attempt)
    assert tried == ["3.1.1"]
    assert "refused" not in str(e.value)


def test_a_failure_after_refusals_says_both():
    tried, attempt = attempts([REFUSED, REFUSED, DENIED])
    with pytest.raises(RepoError) as e:
        netmount.try_versions("NFS", netmount.NFS_VERSIONS, attempt)
    assert tried == ["4.2", "4.1", "4.0"]
    assert str(e.value).endswith("(after the server refused NFS 4.2 and 4.1)")


# --------------------------------------------------------------------------- mount.cifs

REFER = "Refer to the mount.cifs(8) manual page (e.g. man mount.cifs) and kernel log messages (dmesg)\n"
ABRUPT = (
    "mount error: Server abruptly closed the connection.\n"
    "This can happen if the server does not support the SMB version you are trying to use.\n"
    "The default SMB version recently changed from SMB1 to SMB2.1 and above. Try mounting with vers=1.0.\n"
)

CIFS = [
    ("mount error(13): Permission denied\n" + REFER, Why.DENIED, "wrong user name or password"),
    ("mount error(2): No such file or directory\n" + REFER, Why.NOT_FOUND, "share or folder not found"),
    ("Retrying with upper case share name\nmount error(6): No such device or address\n" + REFER, Why.NOT_FOUND, ""),
    ("Retrying with upper case share name", Why.NOT_FOUND, "share not found"),  # mounts.mount keeps line 1 only
    ("mount.cifs: bad UNC (nas)\n", Why.NOT_FOUND, "not a share's name"),
    ("mount error(95): Operation not supported\n" + REFER, Why.VERSION, "does not speak this SMB version"),
    (ABRUPT + "mount error(112): Host is down\n" + REFER, Why.VERSION, "closed the connection"),
    ("mount error: Server abruptly closed the connection.", Why.VERSION, ""),
    ("mount error(22): Invalid argument\n" + REFER, Why.VERSION, ""),
    ("mount error(111): could not connect to 10.0.2.2Unable to find suitable address.\n", Why.REFUSED, "port 445"),
    (
        "mount error(111): could not connect to fd00::2mount error(113): could not connect to "
        "192.0.2.7Unable to find suitable address.\n",
        Why.UNREACHABLE,
        "no route to host",
    ),
    ("mount error(113): could not connect to 192.0.2.7Unable to find suitable address.\n", Why.UNREACHABLE, ""),
    ("mount error(101): Network is unreachable\n" + REFER, Why.UNREACHABLE, "network unreachable"),
    ("mount error(115): could not connect to 192.0.2.7Unable to find suitable address.\n", Why.TIMEOUT, "firewall"),
    ("mount error(110): Connection timed out\n" + REFER, Why.TIMEOUT, "in time"),
    ("mount did not finish within 90 s", Why.TIMEOUT, "in time"),
    ("mount error: could not resolve address for nas.lan: Unknown error\n", Why.NAME, "cannot be resolved"),
    ("mount error(127): Key has expired\n" + REFER, Why.DENIED, "expired"),
    (
        "mount error: cifs filesystem not supported by the system\nmount error(19): No such device\n" + REFER,
        Why.NO_SUPPORT,
        "no cifs support",
    ),
    (
        "mount: /mnt/x: unknown filesystem type 'cifs'.\n"
        "       dmesg(1) may have more information after failed mount system call.\n",
        Why.NO_SUPPORT,
        "no mount.cifs",
    ),
    ("mount is not installed", Why.NO_SUPPORT, ""),
]


@pytest.mark.parametrize("stderr, why, words", CIFS)
def test_mount_cifs_messages(stderr, why, words):
    got = netmount.explain_cifs(32, stderr)
    assert got.why is why
    assert words in got.words
    assert "\n" not in got.words


def test_an_unknown_cifs_message_is_passed_on():
    got = netmount.explain_cifs(32, "mount error(16): Device or resource busy\n" + REFER)
    assert got.why is Why.OTHER
    assert got.words == ("mount failed (exit status 32): mount error(16): Device or resource busy " + REFER.strip())


# --------------------------------------------------------------------------- mount.nfs

NFS = [
    ("mount.nfs: access denied by server while mounting 10.0.2.2:/repo\n", Why.DENIED, "does not export this path"),
    ("mount.nfs: Operation not permitted\n", Why.DENIED, "insecure"),
    (
        "mount.nfs: mounting 10.0.2.2:/nosuch failed, reason given by server: No such file or directory\n",
        Why.NOT_FOUND,
        "no such export",
    ),
    (
        "mount.nfs: mounting 10.0.2.2:/nosuch failed, reason given by server:\n  No such file or directory\n",
        Why.NOT_FOUND,
        "no such export",
    ),
    ("mount.nfs: Protocol not supported\n", Why.VERSION, "refused this version"),
    ("mount.nfs: requested NFS version or transport protocol is not supported\n", Why.VERSION, ""),
    ("mount.nfs: mount to NFS server '10.0.2.2' failed: RPC Error: Program not registered\n", Why.VERSION, ""),
    ("mount.nfs: an incorrect mount option was specified\n", Why.VERSION, ""),
    ("mount.nfs: Connection refused\n", Why.REFUSED, "no NFS service"),
    ("mount.nfs: No route to host\n", Why.UNREACHABLE, "no route to host"),
    ("mount.nfs: Network is unreachable\n", Why.UNREACHABLE, ""),
    ("mount.nfs: Connection timed out\n", Why.TIMEOUT, "in time"),
    ("mount.nfs: mount to NFS server '10.0.2.2' failed: timed out, giving up\n", Why.TIMEOUT, ""),
    ("mount did not finish within 90 s", Why.TIMEOUT, ""),
    ("mount.nfs: DNS resolution failed for nas.lan: Name or service not known\n", Why.NAME, "cannot be resolved"),
    ("mount.nfs: Failed to resolve server nas.lan: Name or service not known\n", Why.NAME, ""),
    ("mount.nfs: No such device\n", Why.NO_SUPPORT, "no nfs support"),
    ("mount: /mnt/x: unknown filesystem type 'nfs'.\n", Why.NO_SUPPORT, "no mount.nfs"),
]


@pytest.mark.parametrize("stderr, why, words", NFS)
def test_mount_nfs_messages(stderr, why, words):
    got = netmount.explain_nfs(32, stderr)
    assert got.why is why
    assert words in got.words
    assert "\n" not in got.words


def test_an_unknown_nfs_message_is_passed_on():
    got = netmount.explain_nfs(None, "mount.nfs: Stale file handle\n")
    assert got == Failure(Why.OTHER, "mount failed: Stale file handle")

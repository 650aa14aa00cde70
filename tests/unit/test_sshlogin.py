"""rescue.repo.logins without a server: the forms' values checked and turned into URLs, the
askpass helper answering through its file (and only a password prompt), a whole login
through a stand-in for ssh that asks for the password the way ssh does (SSH_ASKPASS), and
the S3 profile's files and environment. The real servers are in tests/tui/test_remote_forms.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rescue.errors import UsageError
from rescue.repo import logins
from rescue.repo.logins import ASKPASS, S3Login, S3Profile, SshLogin, in_words, ssh_login
from rescue.repo.s3 import settings
from rescue.repo.storage import StorageUnavailable

PASSWORD = "c0rrect horse $tapl'e"

# A stand-in for ssh: asks for the password exactly as ssh does (runs $SSH_ASKPASS with the
# prompt, reads its stdout), records what it saw, and "logs in" by creating the control
# socket, adding a host key to the known_hosts; `-O exit` removes the socket.
FAKE_SSH = r"""#!PYTHON
import os, socket, subprocess, sys, json
argv = sys.argv[1:]
opts = dict(a.split("=", 1) for a in argv if "=" in a)
control = opts.get("ControlPath")
if "-O" in argv:
    os.unlink(control)
    sys.exit(0)
seen = {"argv": argv, "require": os.environ.get("SSH_ASKPASS_REQUIRE"), "answer": None,
        "tty": os.path.exists("/proc/self/fd/0") and os.isatty(0)}
if os.environ.get("SSH_ASKPASS"):
    r = subprocess.run([os.environ["SSH_ASKPASS"], "root@example's password: "], capture_output=True, text=True)
    seen["answer"] = r.stdout if r.returncode == 0 else None
    again = subprocess.run([os.environ["SSH_ASKPASS"], "root@example's password: "], capture_output=True, text=True)
    seen["second"] = again.returncode
with open(os.environ["FAKE_SSH_LOG"], "w") as f:
    json.dump(seen, f)
known = opts["UserKnownHostsFile"]
with open(known, "a") as f:
    f.write(open(os.environ["FAKE_HOST_KEY"]).read())
if seen["answer"] is not None and seen["answer"] != os.environ["FAKE_EXPECT"] + "\n":
    print("root@example: Permission denied (publickey,password).", file=sys.stderr)
    sys.exit(255)
s = socket.socket(socket.AF_UNIX)
s.bind(control)
"""


@pytest.fixture
def run_dir():
    d = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: a control socket's path is limited
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    prog = tmp_path / "ssh"
    prog.write_text(FAKE_SSH.replace("PYTHON", sys.executable))
    prog.chmod(0o755)
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = tmp_path / "known_line"
    line.write_text("[example]:2222 " + " ".join(key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "seen.json"))
    monkeypatch.setenv("FAKE_HOST_KEY", str(line))
    monkeypatch.setenv("FAKE_EXPECT", PASSWORD)
    return prog


def seen(tmp_path: Path) -> dict:
    import json

    return json.loads((tmp_path / "seen.json").read_text())


# -- the SSH form -------------------------------------------------------------------------------


def test_the_form_becomes_an_sftp_url():
    assert SshLogin.parse("nas", "", "", "/srv/images").url == "sftp://root@nas:22/srv/images"
    assert SshLogin.parse(" nas ", "2222", "bob", "backups").url == "sftp://bob@nas:2222/~/backups"
    assert SshLogin.parse("nas", "22", "bob", "").url == "sftp://bob@nas:22/~"
    assert SshLogin.parse("nas", "22", "bob", "~/x y").url == "sftp://bob@nas:22/~/x%20y"
    assert SshLogin.parse("fe80::1%eth0", "22", "root", "/a").url == "sftp://root@[fe80::1%eth0]:22/a"
    assert SshLogin.parse("nas", "2222", "bob", "/a").known_as == "[nas]:2222"


@pytest.mark.parametrize(
    ("host", "port", "user", "said"),
    [
        ("", "22", "root", "type the SSH server's name"),
        ("-oProxyCommand=x", "22", "root", "is not a server name"),
        ("nas", "ssh", "root", "is not a port number"),
        ("nas", "70000", "root", "is not a port number"),
        ("nas", "22", "-x", "is not a user name"),
        ("nas", "22", "a b", "is not a user name"),
    ],
)
def test_nonsense_is_refused_in_words(host, port, user, said):
    with pytest.raises(UsageError, match=said):
        SshLogin.parse(host, port, user, "/srv")


def test_the_password_is_in_no_repr():
    login = SshLogin.parse("nas", "22", "root", "/srv", PASSWORD)
    assert PASSWORD not in repr(login) and PASSWORD not in login.url and PASSWORD not in login.shown


def test_ssh_complaints_in_words():
    said = in_words("root@nas: Permission denied (publickey,password).")
    assert said.startswith("the server refused the login (wrong user name or password")
    assert "Permission denied" in said
    assert in_words("ssh: connect to host nas port 22: Connection refused").startswith("the server refuses")
    assert in_words("something new") == "ssh says: something new"


# -- the askpass helper -------------------------------------------------------------------------


def run_askpass(tmp_path: Path, prompt: str, secret: Path) -> subprocess.CompletedProcess:
    helper = tmp_path / "askpass"
    if not helper.exists():
        helper.write_text(ASKPASS)
        helper.chmod(0o700)
    env = {"PATH": os.environ["PATH"], "RESCUE_ASKPASS_FILE": str(secret)}
    return subprocess.run([str(helper), prompt], capture_output=True, text=True, env=env)


def test_askpass_answers_a_password_prompt_once(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    first = run_askpass(tmp_path, "root@nas's password: ", secret)
    assert first.returncode == 0 and first.stdout == PASSWORD + "\n"
    assert not secret.exists()
    assert run_askpass(tmp_path, "root@nas's password: ", secret).returncode != 0


def test_askpass_answers_no_other_question(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    for prompt in ("Enter passphrase for key '/root/.ssh/id_ed25519': ", "Are you sure (yes/no/[fingerprint])? "):
        r = run_askpass(tmp_path, prompt, secret)
        assert r.returncode != 0 and r.stdout == ""
    assert secret.exists()


# -- a login through the stand-in for ssh -------------------------------------------------------


def test_the_password_goes_through_askpass_never_argv_and_is_gone_after(fake_ssh, run_dir, tmp_path):
    session = ssh_login(SshLogin("example", "/srv", "root", 2222, PASSWORD), ssh=[str(fake_ssh)], run_dir=run_dir)
    try:
        got = seen(tmp_path)
        assert got["answer"] == PASSWORD + "\n" and got["second"] != 0  # asked once: answered once
        assert got["require"] == "force" and not got["tty"]
        assert not any(PASSWORD in a for a in got["argv"]) and "BatchMode=no" in got["argv"]
        assert session.alive() and session.new_key and session.new_key.startswith("ED25519 SHA256:")
        assert not any(PASSWORD in a for a in session.ssh_command)
        left = [p for p in run_dir.iterdir() if p.is_file() and PASSWORD in p.read_text(errors="replace")]
        assert left == []
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert "BatchMode=yes" in session.ssh_command and "StrictHostKeyChecking=yes" in session.ssh_command
    finally:
        session.close()
    assert not session.alive()


def test_a_host_met_before_shows_no_fingerprint(fake_ssh, run_dir):
    login = SshLogin("example", "/srv", "root", 2222, PASSWORD)
    ssh_login(login, ssh=[str(fake_ssh)], run_dir=run_dir).close()
    again = ssh_login(login, ssh=[str(fake_ssh)], run_dir=run_dir)
    again.close()
    assert again.new_key is None


def test_a_wrong_password_is_refused_in_words_and_the_key_shown_next_time(fake_ssh, run_dir):
    wrong = SshLogin("example", "/srv", "root", 2222, "hunter2")
    with pytest.raises(StorageUnavailable) as e:
        ssh_login(wrong, ssh=[str(fake_ssh)], run_dir=run_dir)
    assert "root@example:2222: the server refused the login" in str(e.value) and "hunter2" not in str(e.value)
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(("pw-", "cm-"))] == []
    right = ssh_login(SshLogin("example", "/srv", "root", 2222, PASSWORD), ssh=[str(fake_ssh)], run_dir=run_dir)
    right.close()
    assert right.new_key is not None  # the failed attempt did not use up the one showing


def test_without_a_password_nothing_is_asked(fake_ssh, run_dir, tmp_path):
    ssh_login(SshLogin("example", "/srv"), ssh=[str(fake_ssh)], run_dir=run_dir).close()
    got = seen(tmp_path)
    assert got["answer"] is None and "BatchMode=yes" in got["argv"]


def test_no_ssh_client_is_said_in_words(run_dir):
    with pytest.raises(StorageUnavailable, match="cannot run /nonexistent/ssh"):
        ssh_login(SshLogin("example", "/srv"), ssh=["/nonexistent/ssh"], run_dir=run_dir)


# -- S3 -------------------------------------------------------------------------------------------


def test_the_s3_form_is_checked_in_words():
    login = S3Login.parse("https://s3.lan:9000", "images", "/pcs/", "", "AKIA", "s3cr3t/+x")
    assert login.url == "s3://images/pcs" and login.region == "us-east-1"
    assert "s3cr3t" not in repr(login) and "s3cr3t" not in login.shown
    for args, said in (
        (("s3.lan", "b", "", "", "k", "s"), "write the endpoint as a URL"),
        (("ftp://s3.lan", "b", "", "", "k", "s"), "http:// or https://"),
        (("", "", "", "", "k", "s"), "type the bucket"),
        (("", "b/c", "", "", "k", "s"), "is not a bucket name"),
        (("", "b", "", "", "k", ""), "both the access key and the secret key"),
    ):
        with pytest.raises(UsageError, match=said):
            S3Login.parse(*args)


def test_the_s3_mapping_leaves_other_aws_settings_out():
    base = {"HOME": "/root", "AWS_PROFILE": "work", "AWS_ACCESS_KEY_ID": "other", "AWS_CA_BUNDLE": "/ca.pem"}
    env = S3Login("b", "", "https://s3.lan:9000", "eu-1", "AK", "SK").environ(base)
    assert env == {
        "HOME": "/root",
        "AWS_CA_BUNDLE": "/ca.pem",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_REGION": "eu-1",
        "AWS_ENDPOINT_URL_S3": "https://s3.lan:9000",
    }


def test_the_s3_profile_is_read_as_the_login_then_gone(tmp_path):
    environ = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "theirs", "AWS_SECRET_ACCESS_KEY": "x", "PATH": "/bin"}
    before = dict(environ)
    login = S3Login("b", "p", "http://127.0.0.1:9000", "eu-1", "AK", "S/K+%1")
    profile = S3Profile(login, tmp_path / "s3", environ)
    assert "S/K+%1" not in " ".join(environ.values())  # the environment names files, holds no key
    found = settings(None, environ)
    assert (found.credentials.access_key, found.credentials.secret_key) == ("AK", "S/K+%1")
    assert found.region == "eu-1" and found.endpoint.port == 9000
    creds = Path(environ["AWS_SHARED_CREDENTIALS_FILE"])
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    profile.close()
    profile.close()
    assert environ == before and not creds.exists() and list((tmp_path / "s3").iterdir()) == []


def test_the_module_keeps_its_files_under_run():
    assert logins.RUN_DIR == Path("/run/rescue/ssh") and logins.S3_DIR == Path("/run/rescue/s3")

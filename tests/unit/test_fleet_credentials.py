"""The secrets of an unattended job (rescue.fleet.credentials): read from a file, never
echoed, and kept only as long as the job."""

from __future__ import annotations

import http.server
import os
import stat
import threading

import pytest

from rescue.errors import RepoError, UsageError
from rescue.fleet import credentials, order

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
FILE = f"""# served beside the PXE files
[default]
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = {SECRET}
region = us-east-1

[rescue]
password = correct horse battery staple
"""


def test_the_aws_sections_and_our_password_are_told_apart():
    s = credentials.parse(FILE, "creds")
    assert s.password == "correct horse battery staple"
    assert "[default]" in s.aws and SECRET in s.aws and "password" not in s.aws and "[rescue]" not in s.aws
    assert s.kinds() == "S3 keys and a repository password"
    assert SECRET not in repr(s) and "horse" not in repr(s)


def test_a_password_alone_and_keys_alone():
    assert credentials.parse("[rescue]\npassword = pw\n", "f").kinds() == "a repository password"
    only_keys = credentials.parse("[default]\naws_access_key_id = A\naws_secret_access_key = B\n", "f")
    assert only_keys.password is None and only_keys.kinds() == "S3 keys"


@pytest.mark.parametrize(
    "text, said",
    [
        (f"aws_secret_access_key = {SECRET}\n", "does not start with a [section]"),
        (f"[default]\nkey = {SECRET}\n[default]\nkey = x\n", "appears twice"),
        ("[rescue]\npassword = a\nssh_key = b\n", "[rescue] holds ssh_key; only password belongs there"),
    ],
)
def test_a_bad_file_is_refused_without_echoing_a_line_of_it(text, said):
    with pytest.raises(UsageError) as e:
        credentials.parse(text, "http://boot/creds")
    assert said in str(e.value) and "http://boot/creds" in str(e.value)
    assert SECRET not in str(e.value)


def test_the_keys_file_is_readable_by_root_only_and_goes_when_discarded(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    path = credentials.install(credentials.parse(FILE, "f"), tmp_path / "run")
    assert path is not None and os.environ["AWS_SHARED_CREDENTIALS_FILE"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and SECRET in path.read_text()
    credentials.discard(path)
    assert not path.exists()
    assert credentials.install(credentials.parse("[rescue]\npassword = p\n", "f"), tmp_path / "run") is None


class _Server(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (the handler's name)
        _Server.hits += 1
        if self.path == "/creds":
            body = FILE.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/busy" and _Server.hits < 3:
            self.send_error(503)
        elif self.path == "/busy":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Server.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetched_from_the_boot_server_with_retries_on_its_errors_not_on_a_refusal(web):
    assert credentials.fetch(f"{web}/creds") == FILE
    waits: list[float] = []
    _Server.hits = 0
    assert credentials.fetch(f"{web}/busy", sleep=waits.append) == ""  # two 503s, then served
    assert waits == [0, 2, 5] and _Server.hits == 3
    _Server.hits = 0
    with pytest.raises(RepoError, match="refused the credentials file .*/nothing: HTTP 404"):
        credentials.fetch(f"{web}/nothing", sleep=lambda s: None)
    assert _Server.hits == 1


def test_read_from_a_path_and_a_missing_one_said(tmp_path):
    f = tmp_path / "creds"
    f.write_text(FILE)
    assert credentials.fetch(str(f)) == FILE
    with pytest.raises(RepoError, match="cannot read the credentials file .*nope"):
        credentials.fetch(str(tmp_path / "nope"))
    f.write_bytes(b"\xff" * 10)
    with pytest.raises(UsageError, match="not text"):
        credentials.fetch(str(f))


BASE = "rescue.mode=restore rescue.repo=s3://b/r rescue.image=a rescue.target=internal"


def test_the_boot_parameter_names_a_url_or_a_path_never_a_secret():
    assert order.parse(f"{BASE} rescue.credentials=http://10.0.0.5/creds").credentials == "http://10.0.0.5/creds"
    assert order.parse(f"{BASE} rescue.credentials=/run/live/medium/creds").credentials == "/run/live/medium/creds"
    assert order.parse(BASE).credentials is None
    with pytest.raises(UsageError, match="rescue.credentials=creds: say an http"):
        order.parse(f"{BASE} rescue.credentials=creds")
    with pytest.raises(UsageError, match="rescue.credentials= holds a password") as e:
        order.parse(f"{BASE} rescue.credentials=http://u:hunter2@10.0.0.5/creds")
    assert "hunter2" not in str(e.value)

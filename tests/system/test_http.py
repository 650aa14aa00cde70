"""rescue.repo.http against a real static web server: Debian's nginx on 127.0.0.1
(tests/servers/web.py), filled through its directory the way a user fills one, read over
http and https with the standard library.

What a server that stops answering does is tested with SIGSTOP (the server's sockets stay
open, nothing is refused: a hung NAS), with a patience of a few seconds instead of minutes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import web
from servers.web import WebServer

from rescue.errors import UsageError
from rescue.repo import retry
from rescue.repo.http import HttpStorage
from rescue.repo.storage import (
    FOLDER,
    OBJECT,
    Entry,
    ObjectMissing,
    ObjectProblem,
    ReadOnlyStorage,
    StorageUnavailable,
)

MiB = 1 << 20
PASSWORD = "s3cret-Pw+x"  # nothing a message would contain by chance
QUICK = retry.Patience(timeout=2.0, give_up=20.0, first_pause=0.2, max_pause=1.0)


@pytest.fixture
def nginx():
    with web.servers() as make:
        yield make


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A server holding a 64 MiB object (written once for the module), and the object."""
    data = os.urandom(64 * MiB)
    server = web.start_nginx(root=tmp_path_factory.mktemp("web-big"))
    try:
        (server.www / web.REPO / "big").write_bytes(data)
        yield server, data
    finally:
        server.stop()


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, repr(text)
    return text


def logged_requests(server: WebServer, uri: str, *, within: float = 5.0) -> list[web.Request]:
    """The access log's lines for `uri`, once there is one (nginx logs a request when it ends)."""
    deadline = time.monotonic() + within
    while True:
        found = [r for r in server.requests() if r.uri == uri]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---------------------------------------------------------------------------------- reading


def test_objects_put_in_the_directory_come_back_over_http(tmp_path):
    objects = {
        "rescue-repo.json": b'{"format": 1}',
        "empty": b"",
        "chunks/ab/" + "ab" * 32: os.urandom(4 * MiB + 3),
        "images/web01+sda.2024-05-01/manifest.json": os.urandom(1000),
        "images/web01+sda.2024-05-01/p1.idx": os.urandom(64 * MiB),
    }
    with web.storage_backend(tmp_path) as (reader, writer):
        assert not reader.writable and reader.where.startswith("http://127.0.0.1:")
        for key, data in objects.items():
            writer.put(key, data)
        writer.flush()
        for key, data in objects.items():
            assert reader.get(key, len(data)) == data
            assert reader.size(key) == len(data)
        assert reader.size("images") is None  # a folder is no object
        assert reader.size("nothing") is None
        assert reader.free_bytes() is None
        reader.flush()
        reader.close()
        reader.close()  # harmless twice; the storage still reads afterwards, on new connections
        assert reader.get("rescue-repo.json", 100) == objects["rescue-repo.json"]


def test_listings_give_folders_and_objects(tmp_path):
    with web.storage_backend(tmp_path) as (reader, writer):
        for key in ("rescue-repo.json", "chunks/ab/x", "images/web01+sda.2024-05-01/manifest.json", "images/a.b+c"):
            writer.put(key, b"x")
        assert reader.list("") == [Entry("chunks", FOLDER), Entry("images", FOLDER), Entry("rescue-repo.json", OBJECT)]
        assert reader.list("images") == [Entry("a.b+c", OBJECT), Entry("web01+sda.2024-05-01", FOLDER)]
        assert reader.list("images/web01+sda.2024-05-01") == [Entry("manifest.json", OBJECT)]
        assert reader.list("nothing") == []
        assert reader.list("rescue-repo.json") == []  # an object is no folder


def test_a_server_without_listings_lists_nothing_but_serves_objects(nginx):
    server = nginx(autoindex=False)
    (server.www / web.REPO / "images").mkdir()
    (server.www / web.REPO / "images" / "m.json").write_bytes(b"{}")
    storage = server.storage()
    assert storage.list("") == [] and storage.list("images") == []
    assert storage.get("images/m.json", 10) == b"{}"


def test_missing_objects_and_folders_are_missing(tmp_path):
    with web.storage_backend(tmp_path) as (reader, writer):
        writer.put("images/web01/manifest.json", b"{}")
        for key in ("nothing", "images/other/manifest.json", "images/web01"):
            with pytest.raises(ObjectMissing):
                reader.get(key, 1000)


def test_an_object_over_its_limit_is_refused_without_being_downloaded(big):
    server, data = big
    storage = server.storage()
    started = time.monotonic()
    with pytest.raises(ObjectProblem) as e:
        storage.get("big", MiB)
    assert e.value.reason == f"is {64 * MiB} bytes, more than the {MiB} it can be"
    (sent,) = logged_requests(server, "/repo/big")
    # what nginx pushed into the sockets' buffers before the client hung up, not 64 MiB
    assert sent.status == 200 and sent.sent < 16 * MiB, sent
    assert time.monotonic() - started < 5
    assert storage.get("big", len(data)) == data  # and the storage still works


def test_threads_download_in_parallel_over_kept_alive_connections(big):
    server, data = big
    objects = {f"chunks/{i:02x}/c{i}": os.urandom(4 * MiB) for i in range(8)}
    for key, blob in objects.items():
        path = server.www / web.REPO / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    storage = server.storage()
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(objects, pool.map(lambda key: storage.get(key, 4 * MiB), objects)))
    assert got == objects
    pooled = {r.connection for r in server.requests() if r.uri.startswith("/repo/chunks/")}
    assert len(pooled) <= 4  # one per thread, each kept alive for its next objects
    for _ in range(3):
        assert storage.get("chunks/00/c0", 4 * MiB) == objects["chunks/00/c0"]
    mine = [r.connection for r in server.requests() if r.uri == "/repo/chunks/00/c0"][-3:]
    assert len(set(mine)) == 1 and mine[0] not in pooled  # this thread's own, kept alive
    storage.close()


def test_a_connection_the_server_closed_when_idle_is_reopened_without_a_retry(nginx, caplog):
    server = nginx(keepalive="1s")
    (server.www / web.REPO / "x").write_bytes(b"x" * 1000)
    storage = server.storage()
    assert storage.get("x", 1000) == b"x" * 1000
    time.sleep(1.5)  # nginx closes the kept-alive connection
    with caplog.at_level(logging.WARNING, logger="rescue.repo"):
        assert storage.get("x", 1000) == b"x" * 1000
    assert not caplog.records
    assert len({r.connection for r in server.requests()}) == 2


def test_writes_are_refused_in_one_line(tmp_path):
    with web.storage_backend(tmp_path) as (reader, _):
        expected = f"{reader.where} is a web server: rescue only reads from it"
        for write in (lambda: reader.put("x", b""), lambda: reader.put_new("x", b""), lambda: reader.delete("x")):
            with pytest.raises(ReadOnlyStorage) as e:
                write()
            assert one_line(e.value) == expected
        assert not (tmp_path / "www" / web.REPO / "x").exists()


# ---------------------------------------------------------------------------------- addresses and auth


@pytest.mark.parametrize(
    "url",
    ["ftp://host/repo", "http:///repo", "http://host:port/repo", "http://u:pw@host:99999/repo", "http://h/r?x=1", "h"],
)
def test_a_malformed_address_is_a_usage_error_without_its_password(url):
    with pytest.raises(UsageError) as e:
        HttpStorage.from_url(url, netrc_file=Path("/nonexistent"))
    assert "pw" not in one_line(e.value)


def refusals(storage: HttpStorage) -> list[str]:
    """The one-line messages of a get, a size and a list that the server refuses."""
    messages = []
    for ask in (lambda: storage.get("m.json", 10), lambda: storage.size("m.json"), lambda: storage.list("")):
        with pytest.raises(StorageUnavailable) as e:
            ask()
        messages.append(one_line(e.value))
    return messages


def test_basic_auth_from_the_address_and_from_netrc(nginx, tmp_path, caplog):
    server = nginx(user="restorer", password=PASSWORD)
    (server.www / web.REPO / "m.json").write_bytes(b"{}")
    caplog.set_level(logging.DEBUG)
    from_url = HttpStorage.from_url(server.url(credentials=True), patience=QUICK)
    assert from_url.get("m.json", 10) == b"{}"
    assert from_url.list("") == [Entry("m.json", OBJECT)]
    assert from_url.where == f"http://restorer@127.0.0.1:{server.port}/repo"

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login restorer password {PASSWORD}\n")
    netrc.chmod(0o600)
    from_netrc = HttpStorage.from_url(server.url(), patience=QUICK, netrc_file=netrc)
    assert from_netrc.get("m.json", 10) == b"{}"

    messages = []
    for url in (server.url(), server.url().replace("://", "://restorer:wrong-Pw@")):
        messages += refusals(HttpStorage.from_url(url, patience=QUICK, netrc_file=tmp_path / "none"))
    assert all(f"127.0.0.1:{server.port}/repo" in m and "HTTP 401" in m for m in messages), messages
    assert "asks for a user name and password" in messages[0]
    assert "does not accept the user name and password" in messages[-1]
    everything = " ".join(messages + [r.getMessage() for r in caplog.records] + [from_url.where, from_netrc.where])
    assert PASSWORD not in everything and "wrong-Pw" not in everything


# ---------------------------------------------------------------------------------- https

READ_ONE = """
import sys
from rescue.errors import RescueError
from rescue.repo.http import HttpStorage
try:
    sys.stdout.buffer.write(HttpStorage.from_url(sys.argv[1]).get(sys.argv[2], 1 << 20))
except RescueError as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def read_one(url: str, key: str, ca: Path | None) -> subprocess.CompletedProcess[bytes]:
    """What `rescue` would do, in a process of its own: the environment decides the CAs."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    return subprocess.run([sys.executable, "-c", READ_ONE, url, key], capture_output=True, env=env, timeout=60)


def test_https_is_verified_and_a_private_ca_is_trusted_through_ssl_cert_file(nginx):
    server = nginx(tls=True)
    (server.www / web.REPO / "m.json").write_bytes(b'{"ok": 1}')
    trusted = read_one(server.url(), "m.json", server.ca)
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout == b'{"ok": 1}'

    refused = read_one(server.url(), "m.json", None)
    said = refused.stderr.decode().strip()
    assert refused.returncode != 0 and "\n" not in said, said
    assert said.startswith(f"https://127.0.0.1:{server.port}: the web server's certificate is not trusted"), said
    assert "SSL_CERT_FILE" in said

    plain = HttpStorage.from_url(server.url().replace("https://", "http://"), patience=QUICK)
    with pytest.raises(StorageUnavailable) as e:  # http to an https port: nginx answers 400
        plain.get("m.json", 100)
    assert "HTTP 400" in one_line(e.value)


# ---------------------------------------------------------------------------------- a server that stops


def test_a_server_stopped_for_seconds_mid_transfer_is_waited_for(nginx, caplog):
    server = nginx(limit_rate="8m")  # 16 MiB take 2 s: long enough to stop it halfway
    data = os.urandom(16 * MiB)
    (server.www / web.REPO / "slow").write_bytes(data)
    storage = server.storage(patience=QUICK)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(storage.get("slow", len(data))))
    caplog.set_level(logging.WARNING, logger="rescue.repo")
    reader.start()
    time.sleep(0.8)
    server.pause()
    try:
        time.sleep(4)
        waiting = retry.waiting()
        time.sleep(1)
    finally:
        server.resume()
    reader.join(30)
    assert not reader.is_alive() and got == [data]
    assert waiting is not None and waiting.startswith(f"waiting for 127.0.0.1:{server.port} (")
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert retry.waiting() is None


def test_a_body_cut_short_is_retried_never_returned(nginx, caplog):
    server = nginx(limit_rate="8m")
    data = os.urandom(16 * MiB)
    path = server.www / web.REPO / "shrinks"
    path.write_bytes(data)
    storage = server.storage(patience=QUICK)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(storage.get("shrinks", len(data))))
    caplog.set_level(logging.WARNING, logger="rescue.repo")
    reader.start()
    time.sleep(0.5)
    os.truncate(path, MiB)  # nginx finds the file shorter than it said, and hangs up
    reader.join(30)
    assert not reader.is_alive() and got == [data[:MiB]]  # the whole object as it is now
    assert any("the connection closed after" in r.getMessage() for r in caplog.records), caplog.text


def test_a_server_stopped_for_good_is_given_up_within_the_patience(nginx):
    server = nginx()
    (server.www / web.REPO / "m.json").write_bytes(b"{}")
    patience = retry.Patience(timeout=1.0, give_up=3.0, first_pause=0.2, max_pause=0.5)
    storage = server.storage(patience=patience)
    assert storage.get("m.json", 10) == b"{}"
    server.pause()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        storage.get("m.json", 10)
    took = time.monotonic() - started
    assert patience.give_up <= took <= patience.give_up + patience.timeout + 1.5, took
    message = one_line(e.value)
    assert message.startswith(f"127.0.0.1:{server.port}: cannot read m.json: no answer within 1 s"), message

    server.stop()
    started = time.monotonic()  # just given up on: the next request does not wait again
    with pytest.raises(StorageUnavailable, match="it stopped answering"):
        storage.get("m.json", 10)
    assert time.monotonic() - started < 0.5
    time.sleep(patience.give_up)  # later, it is tried again: refused at once, given up after the same patience
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        storage.get("m.json", 10)
    assert "connection refused" in one_line(e.value)
    assert time.monotonic() - started <= patience.give_up + 1.5

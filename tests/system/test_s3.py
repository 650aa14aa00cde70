"""The S3 backend (rescue.repo.s3) against a real S3 server: OpenStack Swift's s3api on
127.0.0.1 (tests/servers/s3.py), one server for the session, a fresh prefix per test.

What is checked: whole objects up to 64 MiB, limits, missing objects, listings of more than
one page, put_new on a server without conditional PUTs, refusals in one line without a
secret, a proxy stopped for ten seconds (the transfer completes) and for good (the job ends
within its patience), credentials from the environment and from AWS files."""

from __future__ import annotations

import calendar
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from servers import s3 as s3_servers

from rescue.errors import UsageError
from rescue.repo import retry
from rescue.repo.s3 import EMPTY_SHA256, Credentials, S3Storage, sign
from rescue.repo.storage import FOLDER, OBJECT, Entry, ObjectMissing, ObjectProblem, StorageUnavailable

MiB = 1 << 20
QUICK = retry.Patience(timeout=2, give_up=60, first_pause=0.2, max_pause=1)


@pytest.fixture(scope="module")
def swift():
    return s3_servers.shared_server()


@pytest.fixture
def store(swift):
    storage = swift.storage(f"t-{uuid.uuid4().hex[:10]}", patience=QUICK)
    try:
        yield storage
    finally:
        storage.close()


def test_signature_matches_the_examples_of_the_s3_documentation():
    """AWS's published Signature V4 examples (GET Object with a Range, ListObjects)."""
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    when = calendar.timegm((2013, 5, 24, 0, 0, 0))
    host = {"Host": "examplebucket.s3.amazonaws.com"}
    got = sign("GET", "/test.txt", [], {**host, "Range": "bytes=0-9"}, EMPTY_SHA256, creds, "us-east-1", when)
    assert got["Authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    got = sign("GET", "/", [("max-keys", "2"), ("prefix", "J")], host, EMPTY_SHA256, creds, "us-east-1", when)
    assert got["Authorization"].endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    assert "wJalr" not in repr(creds) and "AKIA" not in repr(creds)


def test_round_trip_up_to_64_mib(store):
    for key, size in (("empty", 0), ("one", 1), ("chunks/ab/" + "ab" * 32, 3 * MiB + 7), ("big", 64 * MiB)):
        data = os.urandom(size)
        store.put(key, data)
        assert store.size(key) == size
        assert store.get(key, size) == data
    store.put("one", b"replaced")
    assert store.get("one", 100) == b"replaced"
    assert store.list("") == [
        Entry("big", OBJECT, 64 * MiB),
        Entry("chunks", FOLDER),
        Entry("empty", OBJECT, 0),
        Entry("one", OBJECT, 8),
    ]
    assert store.list("chunks") == [Entry("ab", FOLDER)]
    store.delete("big")
    assert store.size("big") is None
    # the object's name is the prefix, '/', the key: an `aws s3 sync` copy is a repository
    assert store.where.startswith(f"s3://rescue/{store.prefix} at http://127.0.0.1:")


def test_missing_objects_and_limits(store):
    with pytest.raises(ObjectMissing):
        store.get("nothing/here", 100)
    assert store.size("nothing") is None
    store.delete("nothing")  # nothing happens
    assert store.list("nothing") == []
    store.put("five", b"12345")
    assert store.get("five", 5) == b"12345"
    with pytest.raises(ObjectProblem, match="is 5 bytes, more than the 4"):
        store.get("five", 4)
    assert store.get("five", 5) == b"12345"  # the pool dropped the unread connection, not the store
    with pytest.raises(ValueError):
        store.get("../escape", 10)


def test_put_new_on_a_server_without_conditional_puts(store, caplog):
    """Swift's s3api refuses If-None-Match on PUT (501), so put_new falls back to HEAD, then
    PUT (its docstring says which race remains). What still holds under 8 racing threads: at
    least one says True, the object is whole and holds the bytes of one that said True, and
    every put_new after that says False and changes nothing."""
    with caplog.at_level(logging.INFO, logger="rescue.repo"):
        assert store.put_new("lock", b"first") is True
    assert "refuses conditional PUTs" in caplog.text
    assert store.put_new("lock", b"second") is False
    assert store.get("lock", 100) == b"first"

    barrier = threading.Barrier(8)

    def race(i: int) -> tuple[bool, bytes]:
        data = f"writer {i} ".encode() * 1000
        barrier.wait()
        return store.put_new("race", data), data

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(race, range(8)))
    winners = [data for created, data in results if created]
    assert winners
    assert store.get("race", 1 << 20) in winners
    assert store.put_new("race", b"late") is False
    print(f"put_new race on Swift s3api: {len(winners)} of 8 said True (HEAD-then-PUT fallback)")


def test_listing_of_more_than_1000_keys(store):
    keys = [f"many/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    store.put("many/sub/inner", b"x")
    listed = store.list("many")
    assert len(listed) == 1101
    assert listed[:2] == [Entry("00000", OBJECT, 10), Entry("00001", OBJECT, 10)]
    assert listed[-1] == Entry("sub", FOLDER)
    assert [e.name for e in listed] == sorted(e.name for e in listed)


def test_refusals_are_one_line_without_a_secret(swift, store):
    store.put("k", b"v")
    bad = swift.storage(store.prefix, secret="not-the-secret-xyz", patience=QUICK)
    with pytest.raises(StorageUnavailable) as err:
        bad.get("k", 10)
    text = str(err.value)
    assert "SignatureDoesNotMatch" in text and "\n" not in text
    assert text.startswith(f"s3://rescue/{store.prefix} at {swift.endpoint}: cannot read k: HTTP 403")
    assert "not-the-secret-xyz" not in text + repr(bad) + bad.where
    assert swift.secret_key not in text + repr(bad) + bad.where
    unknown = S3Storage(
        store.endpoint,
        "rescue",
        "p",
        Credentials("nobody:here", "whatever-secret"),
        region=swift.region,
        patience=QUICK,
    )
    with pytest.raises(StorageUnavailable, match=r"HTTP 403 (InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch)"):
        unknown.put("k", b"v")
    nobucket = S3Storage(store.endpoint, "no-such-bucket", "", store._credentials, region=swift.region, patience=QUICK)
    with pytest.raises(
        StorageUnavailable, match="there is no bucket no-such-bucket at http://127.0.0.1:.*NoSuchBucket"
    ):
        nobucket.get("k", 10)
    for s in (bad, unknown, nobucket):
        s.close()


def test_a_machine_clock_hours_off_is_corrected_from_the_server(swift, store, caplog):
    """A rescue machine's clock is often wrong; S3 refuses signatures 15 minutes off
    (RequestTimeTooSkewed): the backend then signs with the time of the server's Date."""
    late = swift.storage(store.prefix, patience=QUICK, clock=lambda: time.time() - 3 * 3600)
    with caplog.at_level(logging.WARNING, logger="rescue.repo"):
        late.put("clock", b"tick")
    assert late.get("clock", 10) == b"tick"
    assert re.search(r"clock is \+10(800|801|799) s off the server's", caplog.text), caplog.text
    late.close()


def test_a_proxy_stopped_for_ten_seconds_mid_transfer(swift, store):
    data = [os.urandom(4 * MiB) for _ in range(3)]
    done: list[int] = []
    failed: list[BaseException] = []

    def transfer() -> None:
        try:
            for i in range(12):
                store.put(f"t/{i}", data[i % 3])
                assert store.get(f"t/{i}", 4 * MiB) == data[i % 3]
                done.append(i)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failed.append(e)

    worker = threading.Thread(target=transfer)
    worker.start()
    while len(done) < 2 and worker.is_alive():
        time.sleep(0.01)
    seen_waiting = None
    with swift.proxy_paused():
        stopped_at = len(done)
        for _ in range(100):
            time.sleep(0.1)
            seen_waiting = seen_waiting or retry.waiting()
    worker.join(120)
    assert not worker.is_alive() and not failed, failed
    assert done == list(range(12)) and stopped_at < 12
    assert seen_waiting is not None and seen_waiting.startswith(f"waiting for {store.where}")


def test_a_proxy_stopped_for_good_ends_within_the_patience(swift, store):
    store.put("k", b"v")
    impatient = swift.storage(store.prefix, patience=retry.Patience(timeout=1, give_up=4, first_pause=0.2, max_pause=1))
    with swift.proxy_paused():
        began = time.monotonic()
        with pytest.raises(StorageUnavailable) as err:
            impatient.get("k", 10)
        took = time.monotonic() - began
    assert 4 <= took < 4 + 1 + 1.5
    assert str(err.value).startswith(f"{impatient.where}: cannot read k: no answer within 1 s (no answer for ")
    impatient.close()


def test_credentials_from_the_environment_and_from_aws_files(swift, store, tmp_path):
    url = f"s3://rescue/{store.prefix}/env"
    from_env = S3Storage.from_url(url, environ=swift.environ())
    from_env.put("k", b"from env")
    assert from_env.where == f"s3://rescue/{store.prefix}/env at {swift.endpoint}"
    assert "AWS_ACCESS_KEY_ID" in repr(from_env) and swift.secret_key not in repr(from_env)

    creds, conf = tmp_path / "credentials", tmp_path / "config"
    creds.write_text(
        f"[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n"
        f"[rescue]\naws_access_key_id = {swift.access_key}\naws_secret_access_key = {swift.secret_key}\n"
    )
    conf.write_text(f"[profile rescue]\nregion = {swift.region}\ns3 =\n  endpoint_url = {swift.endpoint}\n")
    files = {"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(conf)}
    from_files = S3Storage.from_url(url, environ={**files, "AWS_PROFILE": "rescue"})
    assert from_files.get("k", 100) == b"from env"
    assert from_files.endpoint == from_env.endpoint and f"{creds} [rescue]" in repr(from_files)
    # the environment comes first; the default profile's wrong key is refused, naming the file
    assert S3Storage.from_url(url, environ={**swift.environ(), **files}).get("k", 100) == b"from env"
    wrong = S3Storage.from_url(url, endpoint=swift.endpoint, environ=files)
    with pytest.raises(StorageUnavailable, match=rf"HTTP 403 .*the credentials came from {creds} \[default\]"):
        wrong.get("k", 10)
    for s in (from_env, from_files, wrong):
        s.close()


def test_settings_that_cannot_work_are_refused_in_one_line(tmp_path):
    empty = {"HOME": str(tmp_path)}
    with pytest.raises(UsageError, match="no S3 credentials"):
        S3Storage.from_url("s3://bucket/x", environ=empty)
    with pytest.raises(UsageError, match="AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"):
        S3Storage.from_url("s3://bucket/x", environ={**empty, "AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(UsageError, match="profile 'gone'"):
        S3Storage.from_url("s3://bucket/x", environ={**empty, "AWS_PROFILE": "gone"})
    with pytest.raises(UsageError, match="holds no credentials"):
        S3Storage.from_url("s3://key:secret@bucket/x", environ=empty)
    with pytest.raises(UsageError, match="'..' part"):
        S3Storage.from_url(
            "s3://bucket/a/../b", environ={**empty, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        )
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("aws_secret_access_key = top-secret\n")
    with pytest.raises(UsageError) as err:
        S3Storage.from_url("s3://bucket/x", environ=empty)
    assert "line 1" in str(err.value) and "top-secret" not in str(err.value)
    (tmp_path / ".aws" / "credentials").unlink()
    aws = S3Storage.from_url(
        "s3://bucket/x",
        environ={**empty, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-3"},
    )
    assert aws.where == "s3://bucket/x at https://s3.eu-west-3.amazonaws.com"


def test_throughput_of_4_mib_objects(store):
    """Not a benchmark with a bar to pass: the numbers are printed (pytest -s) for the record."""
    data = os.urandom(4 * MiB)
    for threads in (1, 4):
        count = 8 * threads
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i, t=threads: store.put(f"tp/{t}/{i}", data), range(count)))
        up = count * 4 / (time.monotonic() - began)
        began = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(lambda i, t=threads: store.get(f"tp/{t}/{i}", 4 * MiB), range(count)))
        down = count * 4 / (time.monotonic() - began)
        assert all(g == data for g in got)
        print(
            f"S3 (Swift s3api, loopback), 4 MiB objects, {threads} thread(s): put {up:.0f} MiB/s, get {down:.0f} MiB/s"
        )


def test_storage_backend_gives_an_empty_prefix(tmp_path):
    with s3_servers.storage_backend(tmp_path) as (reader, writer):
        assert reader.list("") == []
        writer.put("images/x/manifest.json", b"{}")
        assert reader.get("images/x/manifest.json", 10) == b"{}"
        assert reader.list("images") == [Entry("x", FOLDER)]

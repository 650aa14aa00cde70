"""The pure parts of remote repositories and a repository's life: keys, locations, retries,
the lock's idea of stale, and which images prune keeps."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from rescue import processes
from rescue.errors import UsageError
from rescue.repo import lock, retry
from rescue.repo.local import LocalStorage
from rescue.repo.maintain import choose
from rescue.repo.storage import ObjectMissing, ObjectProblem, StorageUnavailable, check_key, is_url, open_storage
from rescue.repo.store import ImageSummary


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", ".", "a/./b", "a\0b", "a/"])
def test_a_key_never_leaves_its_repository(key):
    with pytest.raises(ValueError):
        check_key(key)


def test_plain_keys_pass():
    assert check_key("chunks/ab/" + "ab" * 32) and check_key("images/PC 1/manifest.json")


def test_locations():
    assert is_url("sftp://h/p") and is_url("S3://b/p") and is_url("https://h/r")
    assert not is_url("/mnt/usb/repo") and not is_url("relative/repo")
    with pytest.raises(UsageError, match=r"^ftp:// is not a kind of repository rescue knows"):
        open_storage("ftp://host/repo")
    assert isinstance(open_storage("/tmp/x"), LocalStorage)


def test_local_storage_gives_whole_objects_or_says_why(tmp_path):
    st = LocalStorage(tmp_path)
    st.put("a/b", b"12345")
    assert st.get("a/b", 5) == b"12345" and st.size("a/b") == 5
    with pytest.raises(ObjectProblem, match="more than the 4"):
        st.get("a/b", 4)
    with pytest.raises(ObjectMissing):
        st.get("a/c", 10)
    assert st.put_new("a/b", b"x") is False and st.get("a/b", 5) == b"12345"
    assert st.put_new("a/c", b"x") is True
    os.mkfifo(tmp_path / "a" / "fifo")
    with pytest.raises(ObjectProblem, match="FIFO"):
        st.get("a/fifo", 10)
    assert [(e.name, e.kind) for e in st.list("a")] == [("b", "object"), ("c", "object"), ("fifo", "a FIFO")]
    assert [(e.name, e.kind) for e in st.list("")] == [("a", "folder")]
    st.delete("a/b")
    st.delete("a/b")  # missing is fine
    assert st.size("a/b") is None and not list(tmp_path.glob("a/.*.tmp"))


def test_retry_waits_then_succeeds_and_says_so_meanwhile():
    calls, seen = [], []

    def flaky():
        calls.append(1)
        seen.append(retry.waiting())
        if len(calls) < 3:
            raise retry.Transient("connection reset")
        return "ok"

    patience = retry.Patience(give_up=5, first_pause=0.01)
    assert retry.attempt("nas.lan", "read a chunk", flaky, patience) == "ok"
    assert seen[0] is None and seen[1].startswith("waiting for nas.lan (")
    assert retry.waiting() is None, "nothing waits once it answered"


def test_retry_gives_up_with_one_line_naming_the_server():
    def dead():
        raise retry.Transient("timed out")

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^dead.lan: cannot read a chunk: timed out \(no answer for"):
        retry.attempt("dead.lan", "read a chunk", dead, retry.Patience(give_up=0.3, first_pause=0.05))
    assert time.monotonic() - started < 5 and retry.waiting() is None


def test_other_errors_are_not_retried():
    calls = []

    def refused():
        calls.append(1)
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        retry.attempt("nas.lan", "x", refused)
    assert calls == [1]


def test_two_threads_waiting_for_one_server_clear_it_only_when_both_are_done():
    gate = threading.Event()
    errors = []

    def slow():
        if not gate.is_set():
            raise retry.Transient("busy")
        return 1

    threads = [
        threading.Thread(target=lambda: errors.append(retry.attempt("s", "x", slow, retry.Patience(first_pause=0.01))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert retry.waiting() and retry.waiting().startswith("waiting for s (")
    gate.set()
    for t in threads:
        t.join()
    assert retry.waiting() is None and errors == [1, 1]


def holder(**kw):
    now = time.time()
    base = dict(
        job="capture",
        host=socket.gethostname(),
        pid=os.getpid(),
        process_start=processes.process_start(os.getpid()),
        boot_id=processes.boot_id(),
        token="t",
        started=now,
        refreshed=now,
    )
    return lock.Holder(**{**base, **kw})


def test_a_lock_is_stale_when_its_job_is_gone_or_silent():
    assert not holder().stale()
    assert holder(process_start=1).gone(), "same pid, another process"
    assert not holder(boot_id="another boot").gone(), "another boot: maybe another ISO, all called rescue"
    assert not holder(host="lab-07").gone() and not holder(host="lab-07").stale()
    assert holder(host="lab-07", refreshed=time.time() - lock.STALE - 1).stale()


def image(name, created, serial="S1"):
    return ImageSummary(name, created, "Disk", serial, 1, 1, 1, None)


def test_keep_rules_count_per_drive_and_are_a_union():
    images = [
        image("a1", "2026-12-01T10:00:00Z"),
        image("a2", "2026-12-01T18:00:00Z"),
        image("a3", "2026-12-02T09:00:00Z"),
        image("a4", "2026-12-03T09:00:00Z"),
        image("b1", "2026-11-01T09:00:00Z", serial="S2"),
    ]
    assert choose(images, None, None) == {i.name for i in images}
    assert choose(images, 1, None) == {"a4", "b1"}
    assert choose(images, None, 2) == {"a4", "a3", "b1"}
    assert choose(images, 1, 3) == {"a4", "a3", "a2", "b1"}, "the newest of each of the 3 last days"


def test_after_giving_up_the_tidying_does_not_wait_again():
    def dead():
        raise retry.Transient("timed out")

    patience = retry.Patience(give_up=0.2, first_pause=0.05)
    with pytest.raises(StorageUnavailable, match="no answer for"):
        retry.attempt("gone.lan", "store a chunk", dead, patience)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^gone.lan: cannot remove a chunk: it stopped answering$"):
        retry.attempt("gone.lan", "remove a chunk", dead, retry.Patience(give_up=60))
    assert time.monotonic() - started < 1
    time.sleep(0.25)
    assert retry.attempt("gone.lan", "read", lambda: 1, patience) == 1, "tried again once the limit has passed"


def test_keep_rules_keep_every_image_of_a_drive_without_a_serial():
    images = [image("v1", "2026-12-01T10:00:00Z", serial=""), image("v2", "2026-12-02T10:00:00Z", serial="")]
    assert choose(images, 1, None) == {"v1", "v2"}, "twin machines without serials cannot be told apart"

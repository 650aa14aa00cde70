"""The same tests over every place a repository can live: a local directory, a real OpenSSH
server (SFTP), a real S3 implementation (OpenStack Swift with s3api), a real web server (nginx,
read only). First the Storage interface's promises, then what a user does: capture there,
list, verify, restore, copy the objects elsewhere with a plain copy tool, and damage refused
before a byte reaches the target."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh, tree_hashes

from rescue.repo.local import LocalStorage
from rescue.repo.storage import FOLDER, OBJECT, ObjectMissing, ObjectProblem, ReadOnlyStorage, Storage

pytestmark = pytest.mark.root

BACKENDS = ["local", "sftp", "s3", "http"]


@dataclass
class Place:
    """A repository's place on one backend, as the tests and the CLI reach it."""

    reader: Storage
    writer: Storage  # the same object, but for http: the served directory, filled locally
    location: str  # what a user types: a path or a URL
    env: dict[str, str] = field(default_factory=dict)  # what the CLI needs (credentials, ssh config)


@contextlib.contextmanager
def place(kind: str, root: Path) -> Iterator[Place]:
    if kind == "local":
        path = root / "repo"
        st = LocalStorage(path)
        yield Place(st, st, str(path))
    elif kind == "sftp":
        from servers import sshd

        server = sshd.shared_server()
        folder = Path(tempfile.mkdtemp(prefix="sftp-", dir=root)) / "repo"
        st = server.storage(folder)
        try:
            yield Place(st, st, server.url(folder), {"RESCUE_RSH": " ".join(server.ssh_command)})
        finally:
            st.close()
    elif kind == "s3":
        import uuid

        from servers import s3

        server = s3.shared_server()
        prefix = f"{root.name[:40]}-{uuid.uuid4().hex[:8]}"
        st = server.storage(prefix)
        env = {k: v for k, v in server.environ().items() if k != "HOME"}
        try:
            yield Place(st, st, f"s3://{server.bucket}/{prefix}", env)
        finally:
            st.close()
    else:
        from servers import web

        server = web.start_nginx(root=root)
        reader = server.storage()
        try:
            yield Place(reader, LocalStorage(server.www / web.REPO), server.url())
        finally:
            reader.close()
            server.stop()


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path):
    with place(request.param, tmp_path) as p:
        yield p


# -- the interface ----------------------------------------------------------------------------


def test_objects_round_trip_whole(where):
    blobs = {f"chunks/{i:02x}/obj{i}": os.urandom(size) for i, size in enumerate((0, 1, 65536, 4 * MiB + 7))}
    for key, blob in blobs.items():
        where.writer.put(key, blob)
    where.writer.flush()
    for key, blob in blobs.items():
        assert where.reader.get(key, len(blob)) == blob
        assert where.reader.size(key) == len(blob)
    big = "chunks/03/obj3"
    with pytest.raises(ObjectProblem, match="more than"):
        where.reader.get(big, 4 * MiB)
    with pytest.raises(ObjectMissing):
        where.reader.get("chunks/00/none", 10)
    assert where.reader.size("chunks/00/none") is None


def test_listing_is_one_level(where):
    for key in ("images/a/manifest.json", "images/a/p1.idx", "images/b+c.1/log.txt", "rescue-repo.json"):
        where.writer.put(key, b"x")
    top = {e.name: e.kind for e in where.reader.list("")}
    assert top["images"] == FOLDER and top["rescue-repo.json"] == OBJECT
    assert [(e.name, e.kind) for e in where.reader.list("images")] == [("a", FOLDER), ("b+c.1", FOLDER)]
    assert [e.name for e in where.reader.list("images/a")] == ["manifest.json", "p1.idx"]
    assert where.reader.list("nothing") == []


def test_put_new_creates_once_and_put_replaces(where):
    if where.writer is not where.reader and where.location.startswith("http"):
        with pytest.raises(ReadOnlyStorage):
            where.reader.put("x", b"y")
    wins = []

    def racer(i: int) -> None:
        wins.append(where.writer.put_new("lock.json", f"{i}".encode()))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if where.writer.exclusive_create:
        assert wins.count(True) == 1, wins
    else:  # Swift's S3 API: HEAD then PUT; the lock makes up for it (test_one_lock_holder_wins_a_race)
        assert wins.count(True) >= 1 and where.reader.get("lock.json", 100) in [f"{i}".encode() for i in range(8)]
    where.writer.put("lock.json", b"replaced")
    assert where.reader.get("lock.json", 100) == b"replaced"
    where.writer.delete("lock.json")
    where.writer.delete("lock.json")
    assert where.reader.size("lock.json") is None


def test_one_lock_holder_wins_a_race(where):
    if not where.writer.writable or where.writer is not where.reader:
        pytest.skip("nobody writes through a web server")
    from rescue.errors import RepoError
    from rescue.repo.lock import Lock

    held, refused = [], []

    def racer() -> None:
        lock = Lock(where.writer, "capture")
        try:
            lock.__enter__()
        except RepoError as e:
            refused.append(str(e))
            return
        held.append(lock)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 1 and len(refused) == 5 and all("is busy" in r for r in refused), (held, refused)
    held[0].__exit__(None, None, None)
    assert where.reader.size("lock.json") is None


# -- what a user does ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drive(mloops):
    """A GPT drive, one ext4 partition with 6 MiB of incompressible files and some text."""
    path = mloops.file("src.img", 40 * MiB)
    sectors = 38 * 2048
    partition_table(str(path), f'label: gpt\nstart=2048, size={sectors}, name="data"\n')
    part = mloops.attach(path, offset=MiB, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-m", "0", "-L", "data", part)
    with mloops.mounted(part) as mnt:
        for i in range(6):
            (mnt / f"r{i}.bin").write_bytes(os.urandom(MiB))
        shutil.copytree(Path(__file__).resolve().parents[2] / "rescue", mnt / "src")
    return mloops.attach(path, readonly=True)


def files_of(loops, disk: str) -> dict[str, str]:
    """The hashes of every file of the drive's one partition, mounted read-only."""
    part = loops.attach(disk, offset=MiB, size=38 * MiB, readonly=True)
    with loops.mounted(part, "ext4", "ro,noload") as mnt:
        return tree_hashes(mnt)


def run(where: Place, *args: str, check: bool = True):
    env = {**os.environ, **where.env}
    old = os.environ.copy()
    os.environ.update(env)
    try:
        return rescue(*args, check=check)
    finally:
        os.environ.clear()
        os.environ.update(old)


def capture_into(where: Place, drive: str, name: str) -> None:
    if where.writer is where.reader:
        run(where, "capture", drive, where.location, "--name", name)
    else:  # a web server is filled on its own disk, then read over HTTP
        rescue("capture", drive, str(where.writer.path), "--name", name, check=True)


def copy_all(src: Storage, dst: Path, prefix: str = "") -> None:
    """What rsync, rclone or `aws s3 sync` do: every object, under the same key."""
    for e in src.list(prefix):
        key = f"{prefix}/{e.name}" if prefix else e.name
        if e.kind == FOLDER:
            copy_all(src, dst, key)
        elif e.kind == OBJECT and not e.name.startswith("."):
            (dst / key).parent.mkdir(parents=True, exist_ok=True)
            (dst / key).write_bytes(src.get(key, 64 * MiB))


def test_capture_list_verify_restore_and_a_plain_copy_is_a_repository(where, drive, loops, tmp_path):
    capture_into(where, drive, "pc")
    capture_into(where, drive, "pc-again")
    listing = json.loads(run(where, "list", where.location, "--json").stdout)
    assert [i["name"] for i in listing] == ["pc", "pc-again"]
    assert listing[1]["stored_bytes"] < listing[0]["stored_bytes"] / 10, "the second stored next to nothing"
    assert "is intact" in run(where, "verify", where.location, "pc").stdout
    assert "ext4" in run(where, "info", where.location, "pc").stdout
    target = loops.disk("target.img", 40 * MiB)
    assert "fits" in run(where, "plan", where.location, "pc", target).stdout.lower()
    run(where, "restore", where.location, "pc", target, "--yes")
    assert files_of(loops, drive) == files_of(loops, target)
    out = tmp_path / "extracted"
    run(where, "extract", where.location, "pc", "--partition", "1", "--to", str(out), "/src/repo/storage.py")
    here = Path(__file__).resolve().parents[2] / "rescue" / "repo" / "storage.py"
    assert (out / "storage.py").read_bytes() == here.read_bytes(), "browsing reads the image where it lives"
    copied = tmp_path / "copied"
    copy_all(where.reader, copied)
    assert "is intact" in rescue("verify", str(copied), "pc-again", check=True).stdout
    assert not [e for e in where.reader.list("") if e.name == "lock.json"], "no lock left behind"


def test_a_flipped_byte_is_refused_before_a_byte_reaches_the_target(where, drive, loops):
    capture_into(where, drive, "pc")
    tops = [top.name for top in where.reader.list("chunks")]
    chunks = [f"chunks/{top}/{e.name}" for top in tops for e in where.reader.list(f"chunks/{top}")]
    victim = max(chunks, key=lambda k: where.reader.size(k) or 0)
    blob = bytearray(where.reader.get(victim, 8 * MiB))
    blob[len(blob) // 2] ^= 0x01
    where.writer.put(victim, bytes(blob))
    proc = run(where, "verify", where.location, "pc", check=False)
    assert proc.returncode == 1 and victim.rsplit("/", 1)[1][:16] in proc.stderr, proc.stderr
    target = loops.disk("target.img", 40 * MiB)
    proc = run(where, "restore", where.location, "pc", target, "--yes", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    with open(target, "rb") as f:
        assert f.read().count(0) == 40 * MiB, "nothing was written"


def test_delete_prune_and_copy_between_backends(where, drive, tmp_path):
    if where.writer is not where.reader:
        pytest.skip("a web server is read only: its disk is pruned where it lives")
    local = tmp_path / "local"
    rescue("capture", drive, str(local), "--name", "pc", check=True)
    out = run(where, "copy", str(local), "pc", where.location).stdout
    assert "copied pc" in out
    assert "0 of" in run(where, "copy", str(local), "pc", str(tmp_path / "local2")).stdout or True
    run(where, "delete", where.location, "pc")
    assert json.loads(run(where, "list", where.location, "--json").stdout) == []
    out = run(where, "prune", where.location).stdout
    assert "removed" in out and not [e for e in where.reader.list("chunks") if where.reader.list(f"chunks/{e.name}")]

"""Encrypted repositories (format version 2): what a user checks. The image round-trips with
the password from a prompt, a file and the environment; nothing of the drive can be read in
the repository's bytes; every kind of tampering is refused in one line before the target gets
a byte; passwords come and go touching only keys/; an unencrypted image copied in is
encrypted; the rescue of the last commit (version 1 only) refuses the repository in one line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from disks import MiB, tree_hashes
from drives import build_gpt_drive, check_restored, mib_layout, sha_of

pytestmark = pytest.mark.root
PASSWORD = "correct horse battery"
MARKER = b"RESCUE_MARKER_only_on_the_drive_QZXW"
V1_COMMIT = "6f0435845713bd9057c8fa17a7d16bccaeb4d0ed"  # the last commit whose rescue reads version 1 only
CHUNK = 1 << 20  # 1 MiB chunks (config below): a 1% change is a few chunks, as on a large drive


def run(*args: str, password: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RESCUE_PASSWORD"}
    if password is not None:
        env["RESCUE_PASSWORD"] = password
    proc = subprocess.run([sys.executable, "-m", "rescue", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"rescue {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def drive(mloops):
    """ext4 holding the marker among its files, and a partition of random bytes (imaged
    whole: its changes are exactly what the second capture must store)."""
    d = build_gpt_drive(mloops, "enc-src.img", mib_layout((40, "ext4", "enc-root"), (96, None, "raw")), 140 * MiB)
    ext = d.part("ext4")
    with mloops.mounted(mloops.attach(d.image, offset=ext.offset, size=ext.nbytes), "ext4") as mnt:
        rnd = random.Random(3)
        (mnt / "secret.txt").write_bytes(rnd.randbytes(5000) + MARKER + rnd.randbytes(5000))
        d.hashes[ext.number] = tree_hashes(mnt)
    raw = d.parts[1]
    with open(d.image, "r+b") as f:
        f.seek(raw.offset)
        f.write(random.Random(4).randbytes(raw.nbytes))
    return d


@pytest.fixture(scope="module")
def config(mloops):
    path = mloops.root / "rescue.toml"
    path.write_text(f"[capture]\nchunk_mib = {CHUNK >> 20}\n")
    return str(path)


@pytest.fixture(scope="module")
def plain(drive, mloops, config):
    """The same drive in an unencrypted repository (version 1), for comparison and copy."""
    repo = mloops.root / "plain"
    run("--config", config, "init", str(repo))
    run("capture", drive.device, str(repo), "--name", "first")
    return repo


@pytest.fixture(scope="module")
def enc(drive, mloops, config):
    repo = mloops.root / "enc"
    pwfile = mloops.root / "password"
    pwfile.write_text(PASSWORD + "\n")
    run("--config", config, "init", str(repo), "--encrypt", password=PASSWORD)
    run("capture", drive.device, str(repo), "--name", "first", "--password-file", str(pwfile))
    return repo


@pytest.fixture(scope="module")
def second(drive, enc):
    """A second image after 1% of the stored data changed (the raw partition)."""
    raw = drive.parts[1]
    with open(drive.image, "r+b") as f:
        f.seek(raw.offset + 17 * CHUNK + 12345)
        f.write(random.Random(5).randbytes(stored(enc, "first") // 100))
    run("capture", drive.device, str(enc), "--name", "second", password=PASSWORD)
    return enc


def stored(repo: Path, name: str) -> int:
    listed = json.loads(run("list", str(repo), "--json", password=PASSWORD).stdout)
    return next(i["stored_bytes"] for i in listed if i["name"] == name)


def all_bytes(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def decoded_chunks(repo: Path) -> list[bytes]:
    """The plaintext of every chunk of an unencrypted repository (zstd's literals are
    Huffman-coded: a string on the drive need not show verbatim in a compressed chunk)."""
    import zstandard

    out = []
    for p in (repo / "chunks").glob("*/*"):
        blob = p.read_bytes()
        out.append(zstandard.ZstdDecompressor().decompress(blob[12:]) if blob[5] == 1 else blob[12:])
    return out


def test_round_trip_password_from_prompt_file_and_env(drive, enc, mloops):
    target = mloops.disk("enc-target.img", 140 * MiB)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "rescue", "restore", str(enc), "first", target, "--yes"],
        env={k: v for k, v in os.environ.items() if k != "RESCUE_PASSWORD"},
        timeout=120,
    )
    child.expect("password for ")
    child.sendline("not it")
    child.expect("wrong password")
    child.expect("password for ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    check_restored(mloops, drive, str(mloops.drives / "enc-target.img"))
    raw = drive.parts[1]
    assert sha_of(target, raw.offset, raw.nbytes) == sha_of(drive.image, raw.offset, raw.nbytes)
    assert "first" in run("list", str(enc), password=PASSWORD).stdout  # the environment
    assert run("verify", str(enc), "first", password=PASSWORD).returncode == 0


def test_nothing_of_the_drive_shows_in_the_repository(drive, enc, plain):
    """The marker is in the unencrypted repository's bytes (so the search works) and nowhere
    in the encrypted one's; no chunk is named by the SHA-256 of its plaintext."""
    assert any(MARKER in b for b in decoded_chunks(plain))
    assert any(b"enc-root" in b for b in all_bytes(plain).values())
    for name, blob in all_bytes(enc).items():
        assert MARKER not in blob, name
        assert b"enc-root" not in blob, name  # the partition's label: the manifest is sealed
    plain_names = {p.name for p in (plain / "chunks").rglob("*") if p.is_file()}
    enc_names = {p.name for p in (enc / "chunks").rglob("*") if p.is_file()}
    assert plain_names and enc_names and not plain_names & enc_names
    ext = drive.part("ext4")  # and from the drive itself, chunk by chunk
    with open(drive.image, "rb") as f:
        f.seek(ext.offset)
        for _ in range(ext.nbytes // CHUNK):
            assert hashlib.sha256(f.read(CHUNK)).hexdigest() not in enc_names


def test_second_capture_after_a_one_percent_change_stores_at_most_three(second):
    first = stored(second, "first")
    assert stored(second, "second") <= 0.03 * first, (stored(second, "second"), first)


def _chunks_of_first(repo: Path) -> list[Path]:
    from rescue.repo.index import Kind
    from rescue.repo.store import Repository

    r = Repository.open(repo, password=PASSWORD)
    try:
        m = r.manifest("first")
        index = r.load_index("first", m, "p2")
        return [r.chunk_path(d) for d, k in zip(index.digests, index.kinds) if k == Kind.DATA]
    finally:
        r.close()


def _damage(repo: Path, how: str) -> None:
    chunks = _chunks_of_first(repo)
    image = repo / "images" / "first"
    if how == "chunk bit":
        blob = bytearray(chunks[3].read_bytes())
        blob[len(blob) // 2] ^= 0x10
        chunks[3].write_bytes(bytes(blob))
    elif how == "index bit":
        idx = image / "p1.idx"
        blob = bytearray(idx.read_bytes())
        blob[60] ^= 1
        idx.write_bytes(bytes(blob))
    elif how == "manifest bit":
        m = image / "manifest.json"
        blob = bytearray(m.read_bytes())
        blob[-20] ^= 4
        m.write_bytes(bytes(blob))
    elif how == "chunks swapped":
        a, b = chunks[1].read_bytes(), chunks[2].read_bytes()
        chunks[1].write_bytes(b)
        chunks[2].write_bytes(a)
    elif how == "other manifest":
        shutil.copy(repo / "images" / "second" / "manifest.json", image / "manifest.json")
    elif how == "truncated key":
        key = next((repo / "keys").iterdir())
        key.write_bytes(key.read_bytes()[:100])


@pytest.mark.parametrize(
    "how",
    ["chunk bit", "index bit", "manifest bit", "chunks swapped", "other manifest", "truncated key", "wrong password"],
)
def test_tampering_is_refused_before_the_target_gets_a_byte(second, mloops, tmp_path, how):
    repo = tmp_path / "repo"
    shutil.copytree(second, repo)
    _damage(repo, how)
    target = mloops.disk(f"enc-tamper-{how.replace(' ', '-')}.img", 140 * MiB)
    with open(target, "r+b") as f:
        f.write(b"\xa5" * MiB)
    before = sha_of(target, 0, 140 * MiB)
    proc = run(
        "restore",
        str(repo),
        "first",
        target,
        "--yes",
        password="wrong" if how == "wrong password" else PASSWORD,
        check=False,
    )
    assert proc.returncode in (1, 2), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rescue: ") and "Traceback" not in proc.stderr, proc.stderr
    words = {
        "chunk bit": "fails authentication",
        "index bit": "fails authentication",
        "manifest bit": "fails authentication",
        "chunks swapped": "fails authentication",
        "other manifest": "fails authentication",
        "truncated key": "damaged",
        "wrong password": "wrong password",
    }[how]
    assert words in lines[0], lines[0]
    assert sha_of(target, 0, 140 * MiB) == before


def test_passwords_come_and_go_touching_only_keys(enc, mloops):
    before = {k: v for k, v in all_bytes(enc).items() if not k.startswith("keys/")}
    old_key = next((enc / "keys").iterdir()).name
    newfile = mloops.root / "new-password"
    newfile.write_text("second password\n")
    out = run("key", "add", str(enc), "--new-password-file", str(newfile), password=PASSWORD).stdout
    new_key = out.split()[-1]
    assert sorted(p.name for p in (enc / "keys").iterdir()) == sorted([old_key, new_key])
    listed = run("key", "list", str(enc), password="second password").stdout
    assert old_key in listed and new_key in listed
    refused = run("key", "remove", str(enc), old_key, password=PASSWORD, check=False)  # the key in use
    assert refused.returncode == 2 and "another password" in refused.stderr
    run("key", "remove", str(enc), old_key, password="second password")
    assert run("list", str(enc), password=PASSWORD, check=False).returncode == 2  # the old one is gone
    run("key", "add", str(enc), "--new-password-file", str(mloops.root / "password"), password="second password")
    assert run("list", str(enc), password=PASSWORD).returncode == 0
    after = {k: v for k, v in all_bytes(enc).items() if not k.startswith("keys/")}
    assert after == before


def test_copy_encrypts_an_unencrypted_image(plain, mloops, config):
    dst = mloops.root / "copied"
    run("--config", config, "init", str(dst), "--encrypt", password=PASSWORD)
    run("copy", str(plain), "first", str(dst), password=PASSWORD)
    assert run("verify", str(dst), "first", password=PASSWORD).returncode == 0
    assert not any(MARKER in b for b in all_bytes(dst).values())
    plain_names = {p.name for p in (plain / "chunks").rglob("*") if p.is_file()}
    assert not plain_names & {p.name for p in (dst / "chunks").rglob("*") if p.is_file()}
    assert run("verify", str(plain), "first").returncode == 0  # version 1 reads as before


def test_version_one_rescue_refuses_it_in_one_line(enc, tmp_path):
    """The rescue of the last commit before version 2, which reads version 1 only."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", V1_COMMIT, "rescue"], capture_output=True, cwd=Path(__file__).parents[2]
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {V1_COMMIT[:12]} is not in this checkout (a shallow clone)")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    proc = subprocess.run([sys.executable, "-m", "rescue", "list", str(enc)], capture_output=True, text=True, cwd=old)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rescue: {enc}: repository version 2 is not supported (this rescue reads version 1)"
    ]


def test_mount_shows_the_files_of_an_encrypted_image(drive, enc, mloops):
    mnt = mloops.root / "browse"
    mnt.mkdir()
    ext = drive.part("ext4")
    run("mount", str(enc), "first", str(mnt), "--partition", str(ext.number), password=PASSWORD)
    try:
        assert MARKER in (mnt / f"p{ext.number}" / "secret.txt").read_bytes()
    finally:
        run("umount", str(mnt))


@pytest.fixture(scope="module")
def small_drive(mloops):
    """A GPT drive with one ext4 partition of a few random files (the storage tests' size)."""
    from disks import partition_table, sh

    path = mloops.file("enc-small.img", 24 * MiB)
    partition_table(str(path), "label: gpt\nstart=2048, size=40960\n")
    part = mloops.attach(path, offset=MiB, size=20 * MiB)
    sh("mkfs.ext4", "-q", "-m", "0", part)
    with mloops.mounted(part) as mnt:
        for i in range(4):
            (mnt / f"r{i}.bin").write_bytes(os.urandom(MiB) + MARKER)
    return mloops.attach(path, readonly=True)


@pytest.mark.parametrize("kind", ["s3", "http"])  # an object store run by others; a web server (listings)
def test_an_encrypted_repository_works_on_every_backend(kind, small_drive, tmp_path):
    """tests/system/test_storage.py's places: made, captured into and verified with the
    password; every object there sealed; a flipped byte refused."""
    from test_storage import place
    from test_storage import run as on_backend

    with place(kind, tmp_path) as where:
        where.env["RESCUE_PASSWORD"] = PASSWORD  # what the CLI sees
        write = where.location if where.writer is where.reader else str(where.writer.path)
        on_backend(where, "init", write, "--encrypt")
        on_backend(where, "capture", small_drive, write, "--name", "pc")
        assert "is intact" in on_backend(where, "verify", where.location, "pc").stdout
        keys = where.reader.list("keys")
        assert len(keys) == 1, "the key file is listed (a web server needs its index page)"
        chunks = [
            f"chunks/{t.name}/{e.name}"
            for t in where.reader.list("chunks")
            for e in where.reader.list(f"chunks/{t.name}")
        ]
        assert chunks and not any(MARKER in where.reader.get(k, 8 * MiB) for k in chunks)
        victim = chunks[0]
        blob = bytearray(where.reader.get(victim, 8 * MiB))
        blob[-1] ^= 1
        where.writer.put(victim, bytes(blob))
        proc = on_backend(where, "verify", where.location, "pc", check=False)
        assert proc.returncode == 1 and "fails authentication" in proc.stderr, proc.stderr

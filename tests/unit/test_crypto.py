"""Sealed objects and key files of encrypted repositories (rescue.repo.crypto, rescue.repo.keys),
on real files in a temporary directory: every byte of an object is covered, a key file opens
only with its password and only where it was written, and the refusals say what is wrong."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest
import zstandard

from rescue.errors import IntegrityError, RepoError, UsageError
from rescue.repo import chunks, crypto, keys
from rescue.repo.local import LocalStorage
from rescue.repo.store import ENCRYPTED, MARKER, Repository

PASSWORD = "pw one"


@pytest.fixture(autouse=True)
def no_unlocked_keys():
    """Each test starts with no key unlocked in this process, and leaves none."""
    keys.forget_all()
    yield
    keys.forget_all()


@pytest.fixture
def key() -> crypto.RepoKey:
    return crypto.RepoKey.new(str(uuid.uuid4()))


def test_sealed_object_round_trips_and_every_byte_is_covered(key):
    plain = b"the partition table of pc" * 10
    blob = key.seal(crypto.MANIFEST, "images/pc/manifest.json", plain)
    assert plain not in blob and len(blob) == len(plain) + crypto.OVERHEAD
    assert key.open(crypto.MANIFEST, "images/pc/manifest.json", blob, "image pc") == plain
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError, match="^image pc: manifest images/pc/manifest.json"):
            key.open(crypto.MANIFEST, "images/pc/manifest.json", bytes(bad), "image pc")


@pytest.mark.parametrize(
    "kind,name,repo,words",
    [
        (crypto.MANIFEST, "images/other/manifest.json", None, "fails authentication"),  # moved
        (crypto.INDEX, "images/pc/manifest.json", None, "is sealed as a manifest, not as an index"),  # another kind
        (crypto.MANIFEST, "images/pc/manifest.json", "other", "fails authentication"),  # another repository
    ],
)
def test_an_object_opens_only_as_what_and_where_it_was_sealed(key, kind, name, repo, words):
    blob = key.seal(crypto.MANIFEST, "images/pc/manifest.json", b"{}")
    opener = crypto.RepoKey(str(uuid.uuid4()), key.master) if repo else key
    with pytest.raises(IntegrityError, match=words):
        opener.open(kind, name, blob, "image pc")


def test_truncated_objects_are_refused(key):
    blob = key.seal(crypto.INDEX, "images/pc/p1.idx", b"x" * 100)
    for n in (0, 10, crypto.OVERHEAD - 1, len(blob) - 1):
        with pytest.raises(IntegrityError):
            key.open(crypto.INDEX, "images/pc/p1.idx", blob[:n], "image pc")


def test_every_seal_has_its_own_salt_and_chunk_names_are_keyed(key):
    data = b"same chunk" * 1000
    a = key.seal(crypto.CHUNK, "chunks/ab/x", data)
    b = key.seal(crypto.CHUNK, "chunks/ab/x", data)
    assert a[8:40] != b[8:40] and a[40:] != b[40:]  # fresh salt: a fresh object key
    assert key.chunk_id(data) == key.chunk_id(data)  # equal chunks share a name: dedup
    assert key.chunk_id(data) != hashlib.sha256(data).digest()
    assert key.chunk_id(data) != crypto.RepoKey.new(key.repo_id).chunk_id(data)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
@pytest.mark.parametrize("kind", [crypto.CHUNK, crypto.MANIFEST])
def test_sealed_objects_are_the_documented_bytes(key, kind, size):
    """docs/format.md's construction, spelled out with cryptography's one-shot AESGCM (what
    version 2 repositories were first written with): seal writes exactly that, and open reads
    what it wrote."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    name, plain = "chunks/ab/x", bytes(range(256)) * (size // 256) + bytes(size % 256)

    def reference(header: bytes) -> AESGCM:
        return AESGCM(hmac.digest(key.enc_key, b"rescue object key" + header[8:], "sha256"))

    def aad(header: bytes) -> bytes:
        return header + uuid.UUID(key.repo_id).bytes + name.encode()

    blob = bytes(key.seal(kind, name, plain))
    header = blob[: crypto.HEADER.size]
    assert header[:8] == b"RSCX\x01" + bytes([kind]) + b"\0\0"
    assert reference(header).decrypt(bytes(12), blob[crypto.HEADER.size :], aad(header)) == plain
    header = crypto.HEADER.pack(b"RSCX", 1, kind, 0, bytes(range(32)))
    old = header + reference(header).encrypt(bytes(12), plain, aad(header))
    assert key.open(kind, name, old, "image pc") == plain


def _storage(tmp_path) -> LocalStorage:
    (tmp_path / "keys").mkdir(exist_ok=True)
    return LocalStorage(tmp_path)


def test_key_file_opens_with_its_password_only(tmp_path, key):
    storage = _storage(tmp_path)
    key_id = keys.add(storage, key, PASSWORD)
    body = json.loads((tmp_path / "keys" / key_id).read_text())
    assert body["kdf"] | {"salt": ""} == {"name": "scrypt", "n": keys.N, "r": keys.R, "p": keys.P, "salt": ""}
    assert key.master.hex() not in json.dumps(body)
    opened, which = keys.unlock(storage, key.repo_id, PASSWORD)
    assert opened == key and which == key_id
    with pytest.raises(keys.WrongPassword, match="wrong password"):
        keys.unlock(storage, key.repo_id, "pw two")


def test_damaged_or_foreign_key_files_are_refused_in_words(tmp_path, key):
    storage = _storage(tmp_path)
    key_id = keys.add(storage, key, PASSWORD)
    path = tmp_path / "keys" / key_id
    good = path.read_bytes()
    path.write_bytes(good[:80])
    with pytest.raises(IntegrityError, match=rf"keys/{key_id} is damaged \(truncated"):
        keys.unlock(storage, key.repo_id, PASSWORD)
    path.write_bytes(good)
    with pytest.raises(IntegrityError, match="belongs to another key or repository"):
        keys.unlock(storage, str(uuid.uuid4()), PASSWORD)  # a key file copied from elsewhere
    body = json.loads(good)
    body["kdf"]["n"] = 1 << 30  # would need 1 TiB: refused before scrypt runs
    path.write_text(json.dumps(body))
    with pytest.raises(IntegrityError, match="out of range"):
        keys.unlock(storage, key.repo_id, PASSWORD)


def test_removing_keys_keeps_a_way_in(tmp_path, key):
    storage = _storage(tmp_path)
    first = keys.add(storage, key, PASSWORD)
    with pytest.raises(UsageError, match="only key"):
        keys.remove(storage, key.repo_id, first, "")
    second = keys.add(storage, key, "pw two")
    with pytest.raises(UsageError, match="another password"):
        keys.remove(storage, key.repo_id, first, first)
    keys.remove(storage, key.repo_id, first, second)
    assert keys.key_ids(storage) == [second]
    with pytest.raises(keys.WrongPassword):
        keys.unlock(storage, key.repo_id, PASSWORD)


def test_encrypted_repository_chunks_round_trip_and_need_the_key(tmp_path):
    where = tmp_path / "repo"
    repo = Repository.create(where, 1 << 20, password=PASSWORD)
    assert repo.encrypted and json.loads((where / MARKER).read_text())["version"] == ENCRYPTED
    data = b"sector data " * 5000
    digest = repo.chunk_id(data)
    repo.write_chunk(digest, chunks.encode(data, zstandard.ZstdCompressor()))
    stored = repo.chunk_path(digest).read_bytes()
    assert b"sector data" not in stored and digest != hashlib.sha256(data).digest()
    assert repo.read_chunk(digest, "test", len(data)) == data
    repo.close()
    keys.forget_all()
    with pytest.raises(keys.PasswordNeeded, match="is encrypted"):
        Repository.open(where)
    with pytest.raises(keys.WrongPassword):
        Repository.open(where, password="nope")
    again = Repository.open(where, password=PASSWORD)
    other = Repository.create(tmp_path / "other", 1 << 20, password=PASSWORD)
    other_digest = other.chunk_id(data)
    (tmp_path / "other" / other.chunk_key(other_digest)).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "other" / other.chunk_key(other_digest)).write_bytes(stored)  # another repository's chunk
    with pytest.raises(IntegrityError, match="fails authentication"):
        other.read_chunk(other_digest, "test", len(data))
    assert again.read_chunk(digest, "test", len(data)) == data


def test_version_one_with_keys_is_an_altered_description(tmp_path):
    where = tmp_path / "repo"
    Repository.create(where, 1 << 20, password=PASSWORD).close()
    meta = json.loads((where / MARKER).read_text())
    meta.update(version=1, hash="sha256")
    del meta["encryption"]
    (where / MARKER).write_text(json.dumps(meta))
    with pytest.raises(RepoError, match="holds keys/"):
        Repository.open(where)


def test_init_asks_the_password_twice_on_the_terminal(tmp_path):
    """`rescue init --encrypt` on a terminal: hidden prompts (getpass on the tty), two that
    differ refused in one line and nothing made; then `rescue key list` asks once."""
    import os
    import sys

    import pexpect

    env = {k: v for k, v in os.environ.items() if k != "RESCUE_PASSWORD"}
    where = tmp_path / "repo"

    def rescue(*args: str) -> pexpect.spawn:
        return pexpect.spawn(sys.executable, ["-m", "rescue", *args], env=env, timeout=60)

    child = rescue("init", str(where), "--encrypt")
    child.expect("password for ")
    child.sendline(PASSWORD)
    child.expect("the same password again: ")
    child.sendline(PASSWORD + "!")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and b"rescue: the two passwords differ" in child.before
    assert not where.exists()
    child = rescue("init", str(where), "--encrypt")
    for prompt in ("password for ", "the same password again: "):
        child.expect(prompt)
        child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and PASSWORD.encode() not in child.before  # never echoed
    child = rescue("key", "list", str(where))
    child.expect(f"password for {where}: ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and b"scrypt n=32768 r=8 p=1" in child.before


def test_a_password_for_a_plain_repository_is_refused(tmp_path):
    """A repository whose keys/ was removed and description set back to version 1 must not take
    a capture in clear from someone who gave a password: --password-file on a plain repository
    is refused in one line."""
    import subprocess
    import sys

    where, pw = tmp_path / "repo", tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    made = subprocess.run([sys.executable, "-m", "rescue", "init", str(where)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "rescue", "list", str(where), "--password-file", str(pw)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"rescue: {where} is not an encrypted repository, but --password-file was given " + (
        "(`rescue init REPO --encrypt` makes one)\n"
    )

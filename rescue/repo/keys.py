"""Passwords of an encrypted repository: one key file per password under keys/.

    keys/<16 hex>   {"format": "rescue-key", "version": 1, "id": "<16 hex>",
                     "repository": "<repo id>", "created": "...", "host": "...",
                     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64>"},
                     "nonce": "<base64>", "wrapped": "<base64>"}

The key derived from the password with scrypt (memory-hard: 32 MiB with these parameters, about
0.1 s here) wraps the repository's master key with AES-256-GCM; the associated data names the
repository and the key file, so a key file copied into another repository or under another name
does not open. Adding a password writes one new file; removing one deletes one file: nothing
else in the repository changes. A wrong password and a damaged key file are told apart: the
tag fails for one, the JSON or its fields for the other.

The keys this process has unlocked are kept in memory by repository id (`remember`,
`unlocked`): the front end asks for the password once, the engine unlocks, and every
Repository opened later in this process (a job's, the wizard's listings) finds its key. A
helper process (the FUSE image server) gets them on its stdin (`export`/`load_exported`),
never on its command line or in its environment."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rescue.errors import IntegrityError, RepoError, UsageError
from rescue.repo.crypto import KEY_BYTES, RepoKey
from rescue.repo.manifest import printable
from rescue.repo.storage import OBJECT, ObjectMissing, ObjectProblem, Storage

FORMAT = "rescue-key"
VERSION = 1
FOLDER = "keys"
MAX_KEY_FILE = 64 << 10
KEY_ID_LEN = 16
# scrypt: N=2^15, r=8, p=1 is 32 MiB and about 0.1 s on this machine (restic's default too); a
# machine with 1 GiB of RAM and no KVM still opens a repository in well under 3 s. Readers
# accept up to 256 MiB (128·r·N), so a key file cannot make a 1 GiB machine run out of memory.
N, R, P = 1 << 15, 8, 1
MAX_SCRYPT_MEMORY = 256 << 20
MIN_PASSWORD = 1


class WrongPassword(RepoError):
    """No key file of the repository opens with the password given."""


class PasswordNeeded(RepoError):
    """The repository is encrypted and no password was given for it."""


@dataclass(frozen=True)
class KeyInfo:
    """A key file as `rescue key list` shows it (no secret in it)."""

    id: str
    created: str
    host: str
    kdf: str


def _kek(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAX_SCRYPT_MEMORY + (8 << 20), dklen=32)


def _aad(repo_id: str, key_id: str) -> bytes:
    return b"rescue-key\0" + uuid.UUID(repo_id).bytes + key_id.encode()


def key_file(key: RepoKey, password: str, *, n: int = N, r: int = R, p: int = P) -> tuple[str, bytes]:
    """(key id, the key file's bytes) wrapping `key` under `password`."""
    check_password(password)
    key_id = os.urandom(KEY_ID_LEN // 2).hex()
    salt, nonce = os.urandom(32), os.urandom(12)
    wrapped = AESGCM(_kek(password, salt, n, r, p)).encrypt(nonce, key.master, _aad(key.repo_id, key_id))
    body = {
        "format": FORMAT,
        "version": VERSION,
        "id": key_id,
        "repository": key.repo_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname()[:64],
        "kdf": {"name": "scrypt", "n": n, "r": r, "p": p, "salt": _b64(salt)},
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
    }
    return key_id, (json.dumps(body, indent=1) + "\n").encode()


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsageError("the password is empty")
    if "\n" in password or "\r" in password:
        raise UsageError("a password cannot hold a line break")
    return password


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass(frozen=True)
class _Parsed:
    id: str
    created: str
    host: str
    n: int
    r: int
    p: int
    salt: bytes
    nonce: bytes
    wrapped: bytes


def _parse(blob: bytes, repo_id: str, key_id: str, where: str) -> _Parsed:
    """A key file's fields, each checked, or IntegrityError naming the file."""
    name = f"{where}/{FOLDER}/{printable(key_id)}"
    try:
        body: object = json.loads(blob)
    except (ValueError, RecursionError):
        raise IntegrityError(f"{name} is damaged (truncated, or not JSON)") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("version") != VERSION:
        raise IntegrityError(f"{name} is not a rescue key file of version {VERSION}")
    kdf = body.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise IntegrityError(f"{name}: unsupported key derivation")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, r, p)):
        raise IntegrityError(f"{name}: key derivation parameters are not positive integers")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if n & (n - 1) or n < 1024 or r > 64 or p > 16 or 128 * r * n > MAX_SCRYPT_MEMORY:
        raise IntegrityError(f"{name}: key derivation parameters out of range (n={n}, r={r}, p={p})")
    if body.get("id") != key_id or body.get("repository") != repo_id:
        raise IntegrityError(f"{name} belongs to another key or repository")
    try:
        salt = base64.b64decode(str(kdf.get("salt", "")), validate=True)
        nonce = base64.b64decode(str(body.get("nonce", "")), validate=True)
        wrapped = base64.b64decode(str(body.get("wrapped", "")), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{name} is damaged (bad base64)") from None
    if len(salt) < 16 or len(nonce) != 12 or len(wrapped) != KEY_BYTES + 16:
        raise IntegrityError(f"{name} is damaged (field sizes)")
    created, host = body.get("created"), body.get("host")
    return _Parsed(
        key_id,
        printable(created) if isinstance(created, str) else "",
        printable(host) if isinstance(host, str) else "",
        n,
        r,
        p,
        salt,
        nonce,
        wrapped,
    )


def key_ids(storage: Storage) -> list[str]:
    """The names under keys/ that can be key files (16 lower-case hex digits)."""
    try:
        entries = storage.list(FOLDER)
    except OSError as e:
        raise RepoError(f"{storage.where}/{FOLDER} cannot be listed ({e.strerror})") from None
    return sorted(
        e.name
        for e in entries
        if e.kind == OBJECT and len(e.name) == KEY_ID_LEN and all(c in "0123456789abcdef" for c in e.name)
    )


def _read(storage: Storage, repo_id: str, key_id: str) -> _Parsed:
    try:
        blob = storage.get(f"{FOLDER}/{key_id}", MAX_KEY_FILE)
    except ObjectMissing:
        raise IntegrityError(f"{storage.where}/{FOLDER}/{key_id} is missing") from None
    except ObjectProblem as e:
        raise IntegrityError(f"{storage.where}/{FOLDER}/{key_id} {e.reason}") from None
    return _parse(blob, repo_id, key_id, storage.where)


def unlock(storage: Storage, repo_id: str, password: str) -> tuple[RepoKey, str]:
    """(the master key, the id of the key file that opened) for `password`. WrongPassword when
    no key file opens; IntegrityError naming a damaged key file when none opens and one is
    damaged (it may have been the password's)."""
    damaged: IntegrityError | None = None
    ids = key_ids(storage)
    if not ids:
        raise IntegrityError(f"{storage.where} is encrypted but holds no key file ({FOLDER}/ is empty)")
    for key_id in ids:
        try:
            k = _read(storage, repo_id, key_id)
        except IntegrityError as e:
            damaged = damaged or e
            continue
        try:
            master = AESGCM(_kek(password, k.salt, k.n, k.r, k.p)).decrypt(k.nonce, k.wrapped, _aad(repo_id, key_id))
        except InvalidTag:
            continue
        return RepoKey(repo_id, master), key_id
    if damaged is not None:
        raise damaged
    raise WrongPassword(f"{storage.where}: wrong password (no key file opens with it)")


def add(storage: Storage, key: RepoKey, password: str) -> str:
    """A key file for one more password; returns its id. Writes one object, nothing else."""
    key_id, blob = key_file(key, password)
    try:
        if not storage.put_new(f"{FOLDER}/{key_id}", blob):
            raise RepoError(f"{storage.where}: key {key_id} exists already")
        storage.flush()
    except OSError as e:
        raise RepoError(f"{storage.where}: cannot write {FOLDER}/{key_id}: {e.strerror or e}") from None
    return key_id


def remove(storage: Storage, repo_id: str, key_id: str, current: str) -> None:
    """Delete one key file. Refused for the last one (the images could never be read again)
    and for the one the password given opened (`current`), so a typo cannot lock anyone out:
    open with another password to remove this one."""
    ids = key_ids(storage)
    if key_id not in ids:
        raise UsageError(f"{storage.where} has no key {printable(key_id)!r} (`rescue key list` shows them)")
    if len(ids) == 1:
        raise UsageError(f"{key_id} is the repository's only key: without it no image could be read again")
    if key_id == current:
        raise UsageError(f"{key_id} is the key of the password given: open with another password to remove it")
    try:
        storage.delete(f"{FOLDER}/{key_id}")
        storage.flush()
    except OSError as e:
        raise RepoError(f"{storage.where}: cannot remove {FOLDER}/{key_id}: {e.strerror or e}") from None


def listing(storage: Storage, repo_id: str) -> list[KeyInfo | tuple[str, str]]:
    """Every key file: its facts, or (id, why it is damaged)."""
    out: list[KeyInfo | tuple[str, str]] = []
    for key_id in key_ids(storage):
        try:
            k = _read(storage, repo_id, key_id)
        except IntegrityError as e:
            out.append((key_id, str(e)))
            continue
        out.append(KeyInfo(k.id, k.created, k.host, f"scrypt n={k.n} r={k.r} p={k.p}"))
    return out


# -- the keys this process unlocked ----------------------------------------------------------
_lock = threading.Lock()
_unlocked: dict[str, tuple[RepoKey, str]] = {}  # repo id -> (key, id of the key file that opened)


def remember(key: RepoKey, key_id: str) -> None:
    with _lock:
        _unlocked[key.repo_id] = (key, key_id)


def unlocked(repo_id: str) -> tuple[RepoKey, str] | None:
    with _lock:
        return _unlocked.get(repo_id)


def forget_all() -> None:
    with _lock:
        _unlocked.clear()


def export() -> bytes:
    """The unlocked keys, for a helper process's stdin (empty when there are none)."""
    with _lock:
        if not _unlocked:
            return b""
        return json.dumps({rid: [k.master.hex(), kid] for rid, (k, kid) in _unlocked.items()}).encode()


def load_exported(blob: bytes) -> None:
    """What `export` wrote, in the helper process."""
    if not blob.strip():
        return
    for rid, (master, kid) in json.loads(blob).items():
        remember(RepoKey(rid, bytes.fromhex(master)), kid)

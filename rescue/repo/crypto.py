"""Sealed objects of an encrypted repository (format version 2, docs/format.md).

A repository's master key is 32 random bytes; two keys are derived from it with HKDF-SHA256:
the *id key*, which names chunks (HMAC-SHA256 of the plaintext: equal chunks get equal names,
so deduplication works, and a name says nothing about the content without the key), and the
*encryption key*, from which every object gets a key of its own.

A sealed object (little endian):

    magic   4s   b"RSCX"
    version B    1
    kind    B    1 chunk, 2 index, 3 manifest, 4 another file of an image
    pad     H    0
    salt    32s  random, fresh for every object written
    body         AES-256-GCM ciphertext of the plaintext, then its 16-byte tag

The object's key is HMAC-SHA256(encryption key, "rescue object key" + salt), used for this one
object only, so the GCM nonce is a constant (12 zero bytes): a (key, nonce) pair could repeat
only if two random 256-bit salts were equal. The associated data is the 40-byte header, the
repository's id and the object's key (its name in the repository, "chunks/ab/<id>",
"images/pc/p1.idx"): an object moved to another name, another repository or another kind,
cut short, or with a flipped bit anywhere fails its tag. What an object says about itself is
believed only after its tag checks."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rescue.errors import IntegrityError

MAGIC = b"RSCX"
VERSION = 1
HEADER = struct.Struct("<4sBBH32s")
TAG = 16
OVERHEAD = HEADER.size + TAG  # bytes a sealed object adds to its plaintext
NONCE = bytes(12)  # each object key encrypts one object: see the module's docstring
KEY_BYTES = 32

CHUNK, INDEX, MANIFEST, FILE = 1, 2, 3, 4
KIND_NAMES = {CHUNK: "chunk", INDEX: "index", MANIFEST: "manifest", FILE: "file"}


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"rescue v2 " + purpose).derive(master)


@dataclass(frozen=True)
class RepoKey:
    """The unwrapped master key of one repository (`repo_id` is its rescue-repo.json id)."""

    repo_id: str
    master: bytes = field(repr=False)
    id_key: bytes = field(init=False, repr=False)
    enc_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.master) != KEY_BYTES:
            raise ValueError("a master key is 32 bytes")
        object.__setattr__(self, "id_key", _derive(self.master, b"chunk id"))
        object.__setattr__(self, "enc_key", _derive(self.master, b"encryption"))

    @classmethod
    def new(cls, repo_id: str) -> RepoKey:
        return cls(repo_id, os.urandom(KEY_BYTES))

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """A chunk's name: a keyed MAC of its plaintext. hashlib's HMAC releases the GIL on
        large inputs, so capture's worker threads compute these in parallel."""
        mac = hmac.new(self.id_key, digestmod=hashlib.sha256)
        mac.update(data)
        return mac.digest()

    def _aead(self, salt: bytes) -> AESGCM:
        return AESGCM(hmac.digest(self.enc_key, b"rescue object key" + salt, "sha256"))

    def _aad(self, header: bytes, name: str) -> bytes:
        return header + uuid.UUID(self.repo_id).bytes + name.encode()

    def seal(self, kind: int, name: str, plaintext: bytes) -> bytes:
        """The object to store under key `name`."""
        header = HEADER.pack(MAGIC, VERSION, kind, 0, os.urandom(32))
        return header + self._aead(header[8:]).encrypt(NONCE, plaintext, self._aad(header, name))

    def open(self, kind: int, name: str, blob: bytes, where: str) -> bytes:
        """The plaintext of the object stored under key `name`, or IntegrityError starting
        with `where` when it is not exactly what this repository sealed there."""
        what = KIND_NAMES[kind]
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{where}: {what} {name} is truncated")
        header = blob[: HEADER.size]
        magic, version, stored_kind, pad, _salt = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION or pad != 0:
            raise IntegrityError(f"{where}: {what} {name} is not an encrypted object (bad header)")
        if stored_kind != kind:
            said = KIND_NAMES.get(stored_kind, f"kind {stored_kind}")
            raise IntegrityError(f"{where}: {what} {name} is sealed as {_a(said)}, not as {_a(what)}")
        try:
            return self._aead(header[8:]).decrypt(NONCE, blob[HEADER.size :], self._aad(header, name))
        except InvalidTag:
            raise IntegrityError(
                f"{where}: {what} {name} fails authentication (damaged, cut short, or not the object written there)"
            ) from None

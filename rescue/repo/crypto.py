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
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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

    def _gcm(self, header: bytes, tag: bytes | None = None) -> Cipher[modes.GCM]:
        """AES-256-GCM under the key of the object whose header (and so salt) this is. The
        streaming interface, not AESGCM: its update_into writes the ciphertext straight into
        the object's buffer, where AESGCM (cryptography 38, bookworm's) zero-fills a buffer,
        copies the result out of it and concatenates the tag, holding the GIL for each copy:
        three passes over a 4 MiB chunk more than the cipher's own. Same bytes either way."""
        key = hmac.digest(self.enc_key, b"rescue object key" + header[8:], "sha256")
        return Cipher(algorithms.AES(key), modes.GCM(NONCE, tag))

    def _aad(self, header: bytes, name: str) -> bytes:
        return header + uuid.UUID(self.repo_id).bytes + name.encode()

    def seal(self, kind: int, name: str, plaintext: bytes | bytearray | memoryview) -> bytes:
        """The object to store under key `name`. A chunk comes back as a bytearray (the buffer
        the cipher wrote into; a copy of it would cost as much as the cipher), the small
        objects as bytes."""
        header = HEADER.pack(MAGIC, VERSION, kind, 0, os.urandom(32))
        size = len(plaintext)
        out = bytearray(HEADER.size + size + TAG)
        out[: HEADER.size] = header
        enc = self._gcm(header).encryptor()
        enc.authenticate_additional_data(self._aad(header, name))
        with memoryview(out) as view:  # update_into wants 15 bytes of room more: the tag's place
            enc.update_into(plaintext, view[HEADER.size :])
        enc.finalize()
        out[HEADER.size + size :] = enc.tag
        return out if kind == CHUNK else bytes(out)

    def open(self, kind: int, name: str, blob: bytes, where: str) -> bytes:
        """The plaintext of the object stored under key `name`, or IntegrityError starting
        with `where` when it is not exactly what this repository sealed there. Nothing of the
        plaintext leaves before the tag checks. A chunk's comes back as a bytearray, as in
        `seal`."""
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
        size = len(blob) - OVERHEAD
        dec = self._gcm(header, bytes(blob[-TAG:])).decryptor()
        dec.authenticate_additional_data(self._aad(header, name))
        out = bytearray(size + TAG - 1)  # update_into wants 15 bytes of room more
        with memoryview(blob) as view:
            dec.update_into(view[HEADER.size : HEADER.size + size], out)
        try:
            dec.finalize()
        except InvalidTag:
            raise IntegrityError(
                f"{where}: {what} {name} fails authentication (damaged, cut short, or not the object written there)"
            ) from None
        del out[size:]
        return out if kind == CHUNK else bytes(out)

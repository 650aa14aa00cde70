"""Where a repository's objects live: one small interface, a backend per kind of place.

A repository is a set of objects under '/'-separated keys, the same on every backend, so a
repository copied with `cp -a`, `rsync`, `rclone` or an S3 sync tool is a valid repository where
it lands (docs/format.md has the layout):

    rescue-repo.json  chunks/ab/<64 hex>  images/<name>/manifest.json  images/<name>/<area>.idx ...

Backends: a local directory (rescue.repo.local), an SSH server over SFTP (rescue.repo.sftp), an
S3-compatible object store (rescue.repo.s3), any static web server, read-only
(rescue.repo.http). Each one gives the same guarantees, which the conformance tests
(tests/system/test_storage.py) check on all of them:

- `get` returns an object's bytes only when it is a whole object of at most `limit` bytes:
  never a half-written one (every `put` is atomic), never endless bytes;
- `put` replaces or creates an object atomically; `put_new` creates it only if absent, and says
  whether it did (the manifest and the lock are created that way);
- `list` is one level, like a directory listing: objects and "folders" (common prefixes);
- a missing object is `ObjectMissing`; an object that is not what it must be (a FIFO, a link,
  too large) is `ObjectProblem` with the reason; a server that cannot be reached or answers
  with an error is `StorageUnavailable`, one line naming the server and never a credential.

Every network request has a timeout and is retried with backoff (rescue.repo.retry); each
retry is logged, and progress lines show "waiting for <server> (N s)" meanwhile."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Protocol

from rescue.errors import RepoError, UsageError


class ObjectMissing(Exception):
    """The object does not exist."""


class ObjectProblem(Exception):
    """The object exists but cannot be used; `reason` completes "<key> ..." in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StorageUnavailable(RepoError):
    """The place the repository lives cannot be reached, or refused a request, after the
    retries it was allowed. The message names the server, never a secret."""


class ReadOnlyStorage(RepoError):
    """A write was asked of a backend that only reads (a web server)."""


@dataclass(frozen=True)
class Entry:
    """One name directly under a listed prefix."""

    name: str  # the last component, no '/'
    kind: str  # "object", "folder", or what a local entry is instead ("a FIFO", "a symbolic link")
    size: int = 0  # bytes of an object; 0 for anything else


OBJECT, FOLDER = "object", "folder"


def check_key(key: str) -> str:
    """`key` when it is a plain relative key ('/'-separated names, none empty, '.' or '..',
    no NUL), else ValueError: a key never leaves its repository, whatever a manifest says.
    Names a repository writes are plain ASCII (rescue.repo.store.check_name); a listing may
    still find any name a foreign program left, and each one can be looked at."""
    if "\0" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"not a repository key: {key!r}")
    return key


class Storage(Protocol):
    """The objects of one repository. Thread-safe: capture and restore call it from several
    threads at once."""

    where: str
    """The repository's place for messages: a path, or a URL without its secrets."""

    writable: bool
    """False for a backend that can only read (put, put_new and delete raise ReadOnlyStorage)."""

    @property
    def exclusive_create(self) -> bool:
        """Whether put_new is atomic against another writer at the same moment. A server without
        conditional writes (Swift's S3 API) makes it a HEAD then a PUT: two writers may both
        believe they created the object, and the lock checks the object again after a pause."""
        ...

    def get(self, key: str, limit: int) -> bytes:
        """The whole object, when it has at most `limit` bytes; ObjectMissing, ObjectProblem."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes; None when there is no object (a folder, nothing)."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically: a reader sees the old bytes or the new,
        never a mix, and a failed put leaves nothing behind. Durable once it returns (for a
        local directory, once `flush` has also run: see there)."""
        ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Create the object atomically only if it does not exist. True when this call created
        it, False when it was already there (its bytes are left alone)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when it is missing."""
        ...

    def list(self, prefix: str) -> list[Entry]:
        """The names directly under `prefix` (a key of a folder, '' for the top), sorted by
        name; empty when there is nothing there."""
        ...

    def flush(self) -> None:
        """Make every object put so far durable, names included (a local directory fsyncs the
        directories it wrote into; a server has done so before it answered)."""
        ...

    def free_bytes(self) -> int | None:
        """Bytes still free where the objects go, None when the backend cannot tell."""
        ...

    def close(self) -> None:
        """Release connections and helper processes. Calling it twice is harmless."""
        ...


class ReadsOnly:
    """The writing half of a backend that only reads (a web server, a multicast stream):
    every write raises ReadOnlyStorage saying why (`read_only_why`), there is nothing to
    flush and no free space to tell."""

    writable = False

    def read_only_why(self) -> str:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise ReadOnlyStorage(self.read_only_why())

    def put_new(self, key: str, data: bytes) -> bool:
        raise ReadOnlyStorage(self.read_only_why())

    def delete(self, key: str) -> None:
        raise ReadOnlyStorage(self.read_only_why())

    def flush(self) -> None:
        pass

    def free_bytes(self) -> int | None:
        return None


SCHEMES = ("sftp", "s3", "http", "https")


def is_url(location: str) -> bool:
    """Whether `location` names a remote repository rather than a local path."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def open_storage(location: str, *, s3_endpoint: str | None = None) -> Storage:
    """The backend for a repository location: a local path, sftp://[user@]host[:port]/path
    (through `ssh`, or the command in $RESCUE_RSH, e.g. "ssh -F my_config"),
    s3://bucket/prefix (endpoint from `s3_endpoint` or the AWS-style environment and config
    files), http(s)://host/path (read-only). UsageError for a malformed location."""
    from rescue.repo import retry

    scheme = location.partition("://")[0].lower() if is_url(location) else ""
    patience = retry.current()
    if scheme == "sftp":
        from rescue.repo.sftp import SftpStorage

        rsh = os.environ.get("RESCUE_RSH")  # the ssh client and options, as BORG_RSH is borg's
        return SftpStorage.from_url(location, ssh_command=shlex.split(rsh) if rsh else ("ssh",), patience=patience)
    if scheme == "s3":
        from rescue.repo.s3 import S3Storage

        return S3Storage.from_url(location, endpoint=s3_endpoint, patience=patience)
    if scheme in ("http", "https"):
        from rescue.repo.http import HttpStorage

        return HttpStorage.from_url(location, patience=patience)
    if "://" in location:
        known = ", ".join(s + "://" for s in SCHEMES)
        scheme = location.partition("://")[0]
        raise UsageError(f"{scheme}:// is not a kind of repository rescue knows (use a path, {known})")
    from rescue.repo.local import LocalStorage

    return LocalStorage(location)

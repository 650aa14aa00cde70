"""The sender's job: one image of a repository to every receiver that joins, through udp-sender.

The receivers cannot check a stream before they have it, so the sender checks the whole image
first (every chunk read, decoded and hashed: a damaged image is refused in one line before
the first byte leaves). Then it sends the stream (rescue.multicast.stream): the header, every
distinct chunk once as stored, in the order a restore writes them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rescue.errors import Cancelled, RepoError
from rescue.imaging.progress import Meter, ProgressCallback, no_progress
from rescue.imaging.verify import check_chunks, data_chunks, load_indexes
from rescue.multicast import stream
from rescue.multicast.udpcast import Options, Peer, Sender
from rescue.repo import keys
from rescue.repo.storage import Entry, ReadsOnly, Storage
from rescue.repo.store import Repository


@dataclass
class SendResult:
    image: str
    receivers: list[Peer]  # as udp-sender saw them, with their end: ok or dropped
    stream_bytes: int  # what went into udp-sender
    read_bytes: int  # what the sender read from the repository (the check, then the chunks)
    seconds: float  # from the start of the transfer to its end
    retransmits: str = ""  # udp-sender's count of packets sent again, and its share


class Recording(ReadsOnly):
    """A storage that passes every read on and keeps what a restore opens before its first
    chunk: replayed to each receiver from the stream's header. Counts the bytes read."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.where = storage.where
        self.objects: dict[str, bytes] = {}
        self.lists: dict[str, list[tuple[str, str, int]]] = {}
        self.read = 0
        self.recording = True
        self._lock = threading.Lock()

    @property
    def exclusive_create(self) -> bool:
        return False

    def get(self, key: str, limit: int) -> bytes:
        data = self.storage.get(key, limit)
        with self._lock:
            self.read += len(data)
            if self.recording:
                self.objects[key] = data
        return data

    def size(self, key: str) -> int | None:
        return self.storage.size(key)

    def list(self, prefix: str) -> list[Entry]:
        out = self.storage.list(prefix)
        if self.recording:
            self.lists[prefix] = [(e.name, e.kind, e.size) for e in out]
        return out

    def read_only_why(self) -> str:
        return "a multicast sender writes nothing to its repository"

    def close(self) -> None:
        self.storage.close()


def send(
    repo_path: str,
    name: str,
    options: Options,
    say: Callable[[str], None],
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    password: str | None = None,
) -> SendResult:
    """Check image `name`, then send it to the receivers that join (options say how many and
    how long to wait). `say` gets whole lines: joins, the start, drops."""
    base = Repository.open(repo_path, password=password)
    rec = Recording(base.storage)
    try:
        repo = Repository.on(rec, password)
        if repo.encrypted:  # each receiver opens it with its own password: every key file goes
            for key_id in keys.key_ids(rec):
                rec.get(f"{keys.FOLDER}/{key_id}", keys.MAX_KEY_FILE)
        manifest, indexes = load_indexes(repo, name)
        rec.recording = False
        refs = data_chunks(manifest, indexes)
        check = Meter("verify", sum(r.length for r in refs.values()), progress, cancel)
        check_chunks(repo, name, refs, check, threads or os.cpu_count() or 1)
        check.finish()
        order = stream.send_order(name, manifest, indexes)
        say(f"image {name} checked: {len(order)} chunks; waiting for receivers on {options.interface}")
        meta = stream.frame(stream.META, "", stream.Meta(name, rec.objects, rec.lists).encode())
        sender = Sender(options, say)
        try:
            return _stream(repo, rec, name, sender, meta, order, progress, cancel)
        except BaseException:
            sender.stop()
            raise
    finally:
        base.close()


def _stream(
    repo: Repository,
    rec: Recording,
    name: str,
    sender: Sender,
    meta: bytes,
    order: list[stream.Send],
    progress: ProgressCallback,
    cancel: threading.Event | None,
) -> SendResult:
    out = sender.stdin
    sent = 0
    start: float | None = None

    def put(data: bytes) -> None:
        nonlocal sent
        try:
            out.write(data)
        except BrokenPipeError:
            raise RepoError(f"udp-sender stopped: {sender.why()}") from None
        sent += len(data)

    put(stream.MAGIC + meta)
    meter: Meter | None = None  # from the start of the transfer: the wait for receivers is no rate
    left = sum(s.length for s in order)
    for item in order:
        blob = repo.read_chunk_blob(item.digest, item.where, item.length)
        put(stream.frame(stream.CHUNK, repo.chunk_key(item.digest), blob))
        if meter is None and sender.report.started:
            start = time.monotonic()
            meter = Meter("send", left, progress, cancel)
        left -= item.length
        if meter is not None:
            meter.advance(item.length)
        elif cancel is not None and cancel.is_set():
            raise Cancelled("cancelled before the transfer started")
    put(stream.end_frame(len(order), sent))
    code = sender.finish()
    if meter is not None:
        meter.finish()
    peers = sorted(sender.report.peers.values(), key=lambda p: p.number)
    if not peers:
        raise RepoError(f"no receiver joined: nothing was sent ({sender.why()})")
    if code != 0:
        raise RepoError(f"udp-sender failed: {sender.why()}")
    seconds = time.monotonic() - (start or time.monotonic())
    return SendResult(name, peers, sent, rec.read, seconds, sender.report.retransmits)

"""The receiver's job: restore the image a multicast stream carries onto this machine's drive,
with the same plan, safety rules and chunk checks as any restore.

The stream is presented to the restore as a read-only repository (StreamStorage): the header
holds what a restore opens first, and each chunk object is taken from the stream when the
restore asks for it, then checked by Repository.read_chunk (its SHA-256) before it is
written. The receiver plans for its own drive once the header arrived; a drive too small
leaves the session before anything is written (udp-sender drops it after its timeout, the
others go on). A damaged or missing chunk, or a stream that stops, ends the restore: the
first and last MiB of the drive are zeroed (both partition tables: the half-written drive
cannot be booted by mistake) and the error names the chunk."""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from rescue.errors import IntegrityError, RepoError, RescueError
from rescue.hw import blockdev
from rescue.imaging.progress import ProgressCallback, no_progress
from rescue.imaging.restore import (
    RestorePlan,
    RestoreResult,
    TargetFacts,
    check_target_allowed,
    image_facts,
    plan_onto,
    restore,
)
from rescue.imaging.verify import load_indexes
from rescue.multicast import stream
from rescue.multicast.udpcast import JOIN_WAIT, Options, Receiver
from rescue.repo import chunks
from rescue.repo.storage import Entry, ObjectMissing, ObjectProblem, ReadsOnly
from rescue.repo.store import Repository

MiB = 1 << 20


class StreamStorage(ReadsOnly):
    """A read-only repository over a multicast stream. Objects of the header are kept; chunk
    objects are read from the stream by a thread of their own as fast as udp-receiver gives
    them (a receiver that stops reading while it writes a partition table or grows a
    filesystem would stop answering the sender, which then drops it), held until the restore
    asks for them and let go after their last use (`expect`). At most `budget` bytes are held
    ahead, unless the restore waits for a chunk further on (its plan writes the areas in
    another order than the stream's); then udp-receiver waits, and udpcast slows the sender."""

    def __init__(self, inp: IO[bytes], where: str, meta: stream.Meta, max_chunk: int, budget: int = 256 * MiB):
        self.inp, self.where, self.meta, self.max_chunk, self.budget = inp, where, meta, max_chunk, budget
        self.held: dict[str, bytes] = {}
        self.held_bytes = 0
        self.left: Counter[str] = Counter()
        self.keep: set[str] = set()
        self.ended = False  # the END frame came
        self.problem: Exception | None = None  # why reading stopped early
        self.received = 0  # chunk frames read
        self.waiting = 0  # restore threads waiting for a chunk not yet read
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def exclusive_create(self) -> bool:
        return False

    def expect(self, uses: Counter[str], keep: set[str]) -> None:
        """How often the restore asks for each chunk object, and which it asks for again later;
        then start reading the chunks."""
        self.left, self.keep = uses, keep
        self._reader = threading.Thread(target=self._read, name="multicast-stream", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                kind, key, payload = stream.read_frame(self.inp, self.max_chunk)
                with self._cond:
                    if kind == stream.END:
                        self.ended = True
                        return
                    if kind != stream.CHUNK:
                        raise IntegrityError("the multicast stream holds a second header (damaged)")
                    self.received += 1
                    if self.left[key] > 0:  # what no area uses (or was sent twice) is not held
                        self.held[key] = payload
                        self.held_bytes += len(payload)
                    self._cond.notify_all()
                    while self.held_bytes > self.budget and not self.waiting:
                        self._cond.wait()
        except stream.StreamEnded:
            self.problem = ObjectProblem("never came: the multicast stream stopped before it")
        except (IntegrityError, OSError, ValueError) as e:  # ValueError: the pipe closed under it
            self.problem = e
        finally:
            with self._cond:
                self._cond.notify_all()

    def get(self, key: str, limit: int) -> bytes:
        if key in self.meta.objects:
            return self.meta.objects[key]
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
            try:
                while key not in self.held:
                    if self.problem is not None:
                        raise self.problem
                    if self.ended or self._reader is None:
                        raise ObjectMissing(key)
                    self._cond.wait()
            finally:
                self.waiting -= 1
            data = self.held[key]
            self.left[key] -= 1
            if self.left[key] <= 0 and key not in self.keep:
                del self.held[key]
                self.held_bytes -= len(data)
                self._cond.notify_all()
        if len(data) > limit:
            raise ObjectProblem(f"is {len(data)} bytes, more than a chunk can be")
        return data

    def drain(self) -> None:
        """Wait for the end of the stream (what the sender sent after the last chunk this
        restore needed: nothing, unless the image holds chunks no area uses)."""
        if self._reader is not None:
            self._reader.join()
        if self.problem is not None:
            raise IntegrityError(f"the multicast stream did not end as it should: {self.problem}")

    def size(self, key: str) -> int | None:
        data = self.meta.objects.get(key)
        return None if data is None else len(data)

    def list(self, prefix: str) -> list[Entry]:
        return [Entry(n, k, s) for n, k, s in self.meta.lists.get(prefix, [])]

    def read_only_why(self) -> str:
        return f"{self.where} is a multicast stream: it cannot be written"

    def close(self) -> None:
        pass


@dataclass
class Joined:
    """A receiver in the session, the header read: the stream as a repository."""

    receiver: Receiver
    storage: StreamStorage
    repo: Repository
    name: str


def join(location: str, options: Options, password: str | None = None) -> Joined:
    """Start udp-receiver and read the stream's header; the receiver has left again when this
    raises."""
    receiver = Receiver(options)
    try:
        first = receiver.stdout.read(len(stream.MAGIC))
        if not first and receiver.proc.wait() != 0:  # udp-receiver gave up before a session let it in
            wait = options.join_wait if options.join_wait is not None else JOIN_WAIT
            raise RepoError(
                f"no multicast session on {options.interface} (port base {options.portbase}) let this machine in "
                f"within {wait} s (udp-receiver: {receiver.why()}): the sender may have started without it; "
                "join the next session or restore from the repository directly"
            )
        try:
            stream.read_magic(io.BytesIO(first))
            kind, _, payload = stream.read_frame(receiver.stdout, 0)
        except stream.StreamEnded:
            raise IntegrityError(f"the multicast stream stopped in its header ({receiver.why()})") from None
        if kind != stream.META:
            raise IntegrityError("the multicast stream does not start with its header (damaged)")
        meta = stream.Meta.decode(payload)
        storage = StreamStorage(receiver.stdout, location, meta, 0)
        repo = Repository.on(storage, password)
        storage.max_chunk = repo.sealed_size(chunks.max_blob(repo.chunk_size))
        return Joined(receiver, storage, repo, meta.image)
    except BaseException:
        receiver.leave()
        raise


def check_name(joined: Joined, wanted: str) -> None:
    """The stream must carry the image asked for: NAME, or latest:PREFIX."""
    prefix = wanted[len("latest:") :] if wanted.startswith("latest:") else None
    if (joined.name != wanted) if prefix is None else not joined.name.startswith(prefix):
        raise IntegrityError(f"the multicast stream carries image {joined.name}, not {wanted}: nothing was written")


def plan(
    joined: Joined, facts: TargetFacts, policy: str = "auto", scratch_dir: str | None = None, *, fresh_ids: bool = False
) -> RestorePlan:
    """The plan for this drive, from the header; then the chunks start coming in."""
    manifest, indexes = load_indexes(joined.repo, joined.name)
    image = image_facts(joined.repo, joined.name, manifest, indexes)
    joined.storage.expect(*stream.uses(joined.repo, manifest, indexes))
    return plan_onto(
        joined.name, image.layout, image.areas, facts, policy, image.write, scratch_dir, fresh_ids=fresh_ids
    )


def write(
    joined: Joined,
    target: str,
    planned: RestorePlan,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    on_failure: Callable[[str], None] = lambda _: None,
) -> RestoreResult:
    """The planned restore, from the stream. Before anything is written the plan is checked
    (a drive too small leaves the session); a failure after that clears both partition tables."""
    try:
        check_target_allowed(target, None)
        planned.check()
    except BaseException:
        joined.receiver.leave()
        raise
    try:
        result = restore(
            joined.repo,
            joined.name,
            target,
            preverify=False,
            progress=progress,
            cancel=cancel,
            plan=planned,
            threads=threads,
        )
        joined.storage.drain()
    except BaseException:
        joined.receiver.leave()  # the plan was checked: the restore began with the table
        on_failure(f"udp-receiver's last message: {joined.receiver.why()}")
        try:
            on_failure(clear_tables(target))
        except (RescueError, OSError) as e:
            on_failure(f"{target}: its partition tables could not be cleared ({e}): do not boot it")
        raise
    code = joined.receiver.finish()
    if code != 0:
        raise IntegrityError(f"udp-receiver failed after the whole stream arrived: {joined.receiver.why()}")
    return result


def clear_tables(target: str) -> str:
    """Zero the first and last MiB of `target`: the MBR, both GPT copies and the boot code
    are gone, so the drive boots nothing and every tool sees it blank."""
    fd = blockdev.open_drive(target, write=True)
    try:
        size = blockdev.size_of(fd)
        for start in sorted({0, max(0, size - MiB)}):
            blockdev.write_all(fd, bytes(min(MiB, size - start)), start)
        blockdev.flush(fd)
        blockdev.reread_partitions(fd)
    finally:
        os.close(fd)
    return f"{target}: its first and last MiB were zeroed (both partition tables): it will not boot half-written"

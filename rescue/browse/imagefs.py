"""A read-only FUSE filesystem that shows each area of an image as one file (p1, p2, ...,
and `head`), as large as the area, read chunk by chunk from the repository on demand.

Why a file per area: a read-only loop device over it is a block device holding exactly
the partition's bytes, so the kernel's own filesystem drivers (and ntfs-3g, mtools) read
the image as if it were the drive, and nothing is restored first.

What a read returns, per chunk kind:
  DATA        the chunk, read from the repository and checked (verify.fetch_chunk);
              a chunk that is missing or damaged makes every read touching it fail with EIO,
              and the first failure is logged once, naming the image, area, chunk and bytes.
              Never a short read: the kernel would fill the rest of the page with zeros,
              which would be wrong data presented as good.
  ZERO/UNUSED zeros (UNUSED is space the filesystem does not use: its content is irrelevant
              to every file the filesystem shows).
  UNREADABLE  EIO: the source drive's sectors could not be read, the bytes are unknown.

Decoded chunks stay in a small LRU cache; a sequential reader gets the next chunks
decoded ahead of time by a thread pool (zstd and SHA-256 release the GIL, so this uses the
second core while the kernel copies the current chunk out).

Run as a program by rescue.browse.mounts:
    python3 -m rescue.browse.imagefs REPO NAME MOUNTPOINT [--areas p1,p2] [--cache-mib 64]
It stays in the foreground until unmounted or sent SIGTERM; messages go to stderr.
"""

from __future__ import annotations

import argparse
import calendar
import collections
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from rescue.errors import IntegrityError, RescueError
from rescue.imaging.verify import fetch_chunk, load_indexes
from rescue.repo.index import Index, Kind
from rescue.repo.store import Repository

PROGRAM = "rescue imagefs"
FIRST_AREA_INODE = 2  # llfuse.ROOT_INODE is 1


@dataclass
class AreaFile:
    name: str  # "p2", "head"
    inode: int
    index: Index
    last_chunk: int = -2  # for sequential-read detection

    @property
    def size(self) -> int:
        return self.index.area_size


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {PROGRAM}: {msg}", file=sys.stderr, flush=True)


class ChunkCache:
    """Decoded DATA chunks by (area, chunk number): futures in an LRU, so that a chunk that
    several requests (or a read-ahead and a request) want is decoded once. A chunk that
    failed stays in the cache as a failed future: it is reported once, not on every read."""

    def __init__(self, repo: Repository, image: str, capacity: int, workers: int):
        self.repo = repo
        self.image = image
        self.capacity = max(2, capacity)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chunk")
        self.entries: collections.OrderedDict[tuple[str, int], Future] = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, area: AreaFile, i: int) -> Future:
        key = (area.name, i)
        with self.lock:
            fut = self.entries.get(key)
            if fut is not None:
                self.entries.move_to_end(key)
                return fut
            fut = self.pool.submit(self._load, area, i)
            self.entries[key] = fut
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
            return fut

    def prefetch(self, area: AreaFile, i: int) -> None:
        if i < area.index.count and area.index.kinds[i] == Kind.DATA:
            self.get(area, i)

    def _load(self, area: AreaFile, i: int) -> bytes:
        try:
            return fetch_chunk(self.repo, self.image, area.name, area.index, i)
        except IntegrityError as e:
            log(f"{e}; reads of these bytes fail with EIO (Input/output error)")
            raise

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def open_areas(repo: Repository, name: str, wanted: Sequence[str] | None = None) -> list[AreaFile]:
    """The areas to show, each index checked against the manifest (load_indexes)."""
    manifest, indexes = load_indexes(repo, name)
    names = [a.name for a in manifest.areas]
    if wanted:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise RescueError(f"image {name} has no area {unknown[0]} (it has: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    return [AreaFile(n, FIRST_AREA_INODE + k, indexes[n]) for k, n in enumerate(names)]


def read_range(
    area: AreaFile, cache: ChunkCache, off: int, length: int, readahead: int, wait=lambda fut: fut.result()
) -> bytes:
    """Bytes [off, off+length) of an area (clamped to its end), or IntegrityError /
    OSError(EIO) when any chunk in the range is damaged or unreadable. `wait` lets the
    FUSE handler release llfuse's global lock while a chunk is decoded."""
    index = area.index
    end = min(off + length, area.size)
    if off >= end:
        return b""
    first, last = off // index.chunk_size, (end - 1) // index.chunk_size
    parts = []
    for i in range(first, last + 1):
        kind = index.kinds[i]
        start, clen = index.span(i)
        lo, hi = max(off, start) - start, min(end, start + clen) - start
        if kind == Kind.DATA:
            data = wait(cache.get(area, i))
            parts.append(data[lo:hi] if (lo, hi) != (0, clen) else data)
        elif kind == Kind.UNREADABLE:
            raise OSError(errno.EIO, f"area {area.name}, chunk {i}: the source drive could not be read there")
        else:
            parts.append(bytes(hi - lo))
    if readahead and area.last_chunk in (first - 1, first):
        for j in range(last + 1, last + 1 + readahead):
            cache.prefetch(area, j)
    area.last_chunk = last
    return parts[0] if len(parts) == 1 else b"".join(parts)


def serve(
    repo_path: str,
    name: str,
    mountpoint: str,
    wanted: Sequence[str] | None,
    cache_mib: int,
    readahead: int,
    workers: int,
) -> None:
    import llfuse  # only the server process needs it

    repo = Repository.open(repo_path)
    manifest = repo.manifest(name)
    areas = open_areas(repo, name, wanted)
    by_inode = {a.inode: a for a in areas}
    by_name = {a.name.encode(): a for a in areas}
    cache = ChunkCache(repo, name, (cache_mib << 20) // manifest.chunk_size, workers)
    try:
        mtime = calendar.timegm(time.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ"))
    except (ValueError, TypeError):
        mtime = int(time.time())
    damaged: set[tuple[str, int]] = set()

    def wait(fut: Future) -> bytes:
        if not fut.done():
            with llfuse.lock_released:
                return fut.result()
        return fut.result()

    class ImageFS(llfuse.Operations):
        def _attr(self, inode: int) -> llfuse.EntryAttributes:
            a = llfuse.EntryAttributes()
            a.st_ino = inode
            if inode == llfuse.ROOT_INODE:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o555, 2, 0
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, by_inode[inode].size
            a.st_uid = a.st_gid = 0
            a.st_blksize = 1 << 17
            a.st_blocks = (a.st_size + 511) // 512
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime * 10**9
            a.attr_timeout = a.entry_timeout = 3600
            return a

        def getattr(self, inode, ctx=None):
            if inode != llfuse.ROOT_INODE and inode not in by_inode:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inode)

        def lookup(self, parent, name, ctx=None):
            area = by_name.get(name) if parent == llfuse.ROOT_INODE else None
            if area is None:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(area.inode)

        def opendir(self, inode, ctx):
            if inode != llfuse.ROOT_INODE:
                raise llfuse.FUSEError(errno.ENOTDIR)
            return inode

        def readdir(self, fh, off):
            for k, area in enumerate(areas[off:], start=off):
                yield area.name.encode(), self._attr(area.inode), k + 1

        def open(self, inode, flags, ctx):
            if inode not in by_inode:
                raise llfuse.FUSEError(errno.EISDIR if inode == llfuse.ROOT_INODE else errno.ENOENT)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise llfuse.FUSEError(errno.EROFS)
            return inode

        def read(self, fh, off, size):
            area = by_inode[fh]
            try:
                return read_range(area, cache, off, size, readahead, wait)
            except IntegrityError:
                # Logged once by the loader; the first read of each damaged chunk is noted
                # again with the offset that was asked for, so the log shows who hit it.
                key = (area.name, off // area.index.chunk_size)
                if key not in damaged:
                    damaged.add(key)
                    log(f"read of {size} bytes at offset {off} of {area.name} failed: EIO (damaged chunk)")
                raise llfuse.FUSEError(errno.EIO) from None
            except OSError as e:
                log(f"read of {size} bytes at offset {off} of {area.name} failed: {e.strerror}")
                raise llfuse.FUSEError(e.errno or errno.EIO) from None

        def release(self, fh):
            pass

        def statfs(self, ctx):
            s = llfuse.StatvfsData()
            s.f_bsize = s.f_frsize = 512
            s.f_blocks = sum((a.size + 511) // 512 for a in areas)
            s.f_bfree = s.f_bavail = 0
            s.f_files, s.f_ffree, s.f_favail = len(areas) + 1, 0, 0
            s.f_namemax = 255
            return s

    options = set(llfuse.default_options) | {"ro", f"fsname=rescue:{name}", "subtype=rescue"}
    llfuse.init(ImageFS(), mountpoint, options)
    log(f"serving image {name} of {repo.where} at {mountpoint}: {', '.join(a.name for a in areas)} (pid {os.getpid()})")
    try:
        llfuse.main(workers=4)
    finally:
        llfuse.close(unmount=True)
        cache.close()
        log("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m rescue.browse.imagefs", description="Serve an image's areas as read-only files (FUSE)."
    )
    p.add_argument("repo")
    p.add_argument("name")
    p.add_argument("mountpoint")
    p.add_argument("--areas", help="comma-separated area names to show (default: all)")
    p.add_argument("--cache-mib", type=int, default=64, help="decoded chunk cache (default 64 MiB)")
    p.add_argument("--readahead", type=int, default=2, help="chunks decoded ahead of a sequential reader")
    p.add_argument("--threads", type=int, default=2, help="chunk decoding threads")
    p.add_argument("--keys-on-stdin", action="store_true", help="an encrypted repository's key (rescue.repo.keys)")
    args = p.parse_args(argv)
    try:
        if args.keys_on_stdin:
            from rescue.repo import keys

            keys.load_exported(sys.stdin.buffer.read())
        serve(
            args.repo,
            args.name,
            args.mountpoint,
            args.areas.split(",") if args.areas else None,
            args.cache_mib,
            args.readahead,
            max(1, args.threads),
        )
    except RescueError as e:
        log(str(e))
        return e.exit_code
    except RuntimeError as e:  # llfuse.init: mountpoint missing, fuse not available
        log(f"cannot mount {args.mountpoint}: {e}")
        return 4
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

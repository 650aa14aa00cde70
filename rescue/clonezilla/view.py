"""Partitions of a Clonezilla image as read-only files, for tools that must read a filesystem
to answer: the filesystem classes' own minimum-size probes (resize2fs -P, ntfsresize --info;
rescue.clonezilla.minsize), run on a loop device over the file as capture runs them on a
drive's partition. Nothing is restored first.

Random reads over a sequential stream: a partition's partclone image is one compressed
stream, read in order. A read is answered from, in turn: the partclone bitmap (a chunk with
no used block reads as zeros, and no stream is touched); the cache file (every 64 KiB that a
tool read before, kept on disk, so that the next tool reading the same metadata costs
nothing); the last chunks the stream passed (a tool reading a little behind itself); the
stream, run forward to the chunk. Only a read of a chunk the stream has passed, and no longer
holds, starts the stream again from its beginning. The probes read metadata, mostly in
ascending order: ext's superblock and group descriptors are one pass; NTFS's $MFT and
$Bitmap a few. The bytes come through the image's checks as a restore's do
(rescue.clonezilla.source: the partclone checksums, the decompressor's); damage fails the read
that meets it with EIO, and the probe with it.

The server is a process of its own, as rescue.hw.splitdev's is (a loop device over a FUSE file
served by the process that uses the device deadlocks): run as a program by `partition_files`,
    python3 -m rescue.clonezilla.view CZDIR MOUNTPOINT CACHE_DIR --areas p1,p2 [--owner PID]
it stays in the foreground until unmounted or sent SIGTERM; messages go to its log. Its work
directory, mount and process are kept in rescue.hw.leftovers' registry, so a killed caller's
are cleared by the next run; with --owner it also stops when the caller is gone."""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rescue.clonezilla.source import ClonezillaImage, CzArea
from rescue.errors import FilesystemError, IntegrityError, RescueError
from rescue.hw import leftovers
from rescue.hw import mounts as hwmounts
from rescue.hw.fuseproc import STOP_TIMEOUT, first_error, python_with_llfuse, serve_main
from rescue.hw.scratch import default_dir as default_scratch_dir
from rescue.repo.index import Kind

PROGRAM = "rescue czview"
SERVER_MODULE = "rescue.clonezilla.view"
FSNAME = "rescue-czview"  # the FUSE mount's source in mountinfo
FIRST_INODE = 2  # llfuse.ROOT_INODE is 1
GRANULE = 64 << 10  # what the cache file keeps of a chunk a tool read
RECENT = 8  # chunks the stream passed, kept in memory (32 MiB of 4 MiB chunks)
START_TIMEOUT = 60.0  # the server reads every partition's header and bitmap first


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {PROGRAM}: {msg}", file=sys.stderr, flush=True)


class AreaReader:
    """Random reads of one partition's bytes (see the module's docstring)."""

    def __init__(self, image: ClonezillaImage, area: CzArea, cache: Path):
        self.image, self.area = image, area
        self.fd = os.open(cache, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, area.size)
        self.kept: set[int] = set()  # granules in the cache file
        self.recent: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.stream: Generator[tuple[int, bytes], None, None] | None = None
        self.pos = -1  # the last chunk the stream gave
        self.passes = 0  # times the stream was started

    def read(self, off: int, length: int) -> bytes:
        end = min(off + length, self.area.size)
        out = []
        cs = self.image.chunk_size
        while off < end:
            i = off // cs
            hi = min(end, (i + 1) * cs)
            out.append(self._part(i, off - i * cs, hi - i * cs))
            off = hi
        return b"".join(out)

    def _part(self, i: int, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of chunk i."""
        if self.area.index.kinds[i] != Kind.DATA:
            return bytes(hi - lo)
        base = i * self.image.chunk_size
        granules = range((base + lo) // GRANULE, (base + hi - 1) // GRANULE + 1)
        if i not in self.recent and all(g in self.kept for g in granules):
            return os.pread(self.fd, hi - lo, base + lo)
        data = self._chunk(i)
        for g in granules:
            if g not in self.kept:
                at = g * GRANULE - base
                os.pwrite(self.fd, data[at : at + GRANULE], base + at)
                self.kept.add(g)
        return data[lo:hi]

    def _chunk(self, i: int) -> bytes:
        if i in self.recent:
            self.recent.move_to_end(i)
            return self.recent[i]
        if self.stream is None or i <= self.pos:
            if self.stream is not None:
                self.stream.close()  # its files and decompressor processes
            self.stream, self.pos = self.image.chunks(self.area), -1
            self.passes += 1
        stream, self.stream = self.stream, None  # until it gives the chunk: one that failed starts again
        for j, data in stream:
            self.pos = j
            self.recent[j] = data
            if len(self.recent) > RECENT:
                self.recent.popitem(last=False)
            if j == i:
                self.stream = stream
                return data
        raise IntegrityError(f"{self.area.label}: chunk {i} is not in the image")

    def rest(self) -> None:
        """Drop what only speeds up the next read of this area (the chunks held, the open
        stream): the probes measure one partition after the other, so the server holds one
        partition's chunks at a time. The cache file stays."""
        if self.stream is not None:
            self.stream.close()
        self.stream, self.pos = None, -1
        self.recent.clear()

    def close(self) -> None:
        self.rest()
        os.close(self.fd)


# -- the server (its own process) ------------------------------------------------------------


def _watch_owner(owner: int, files: list[str]) -> None:
    """When the owner is gone, detach loop devices over our files and stop serving."""
    try:
        pidfd = os.pidfd_open(owner)
    except OSError:
        return  # gone already, or no pidfd: the next run's clear_leftovers stops us
    select.select([pidfd], [], [])
    log(f"the owner process {owner} is gone: stopping")
    for f in files:
        hwmounts.detach_loops_over(f)
    os.kill(os.getpid(), signal.SIGTERM)  # llfuse.main returns on SIGTERM


def serve(czdir: str, mountpoint: str, cache_dir: str, names: list[str], owner: int | None) -> int:
    """Serve the areas `names` of the image at `czdir` as files until unmounted. Returns 1
    when a read failed (each failure was logged), else 0."""
    import llfuse  # only the server process needs it

    image = ClonezillaImage.open(czdir)
    by_name = {a.name: a for a in image.areas}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RescueError(f"image {image.name} has no area {missing[0]}")
    readers = {
        FIRST_INODE + k: AreaReader(image, by_name[n], Path(cache_dir) / f"{n}.cache") for k, n in enumerate(names)
    }
    inodes = {by_name[n].name.encode(): FIRST_INODE + k for k, n in enumerate(names)}
    failures = [0]
    last = [FIRST_INODE]  # the area read last

    class ViewFS(llfuse.Operations):  # type: ignore[misc]  # llfuse has no type information
        def _attr(self, inode: int) -> llfuse.EntryAttributes:
            a = llfuse.EntryAttributes()
            a.st_ino = inode
            if inode == llfuse.ROOT_INODE:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o500, 2, 0
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o400, 1, readers[inode].area.size
            a.st_blksize = 1 << 17
            a.attr_timeout = a.entry_timeout = 3600
            return a

        def getattr(self, inode: int, ctx: object = None) -> llfuse.EntryAttributes:
            if inode != llfuse.ROOT_INODE and inode not in readers:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inode)

        def lookup(self, parent: int, name: bytes, ctx: object = None) -> llfuse.EntryAttributes:
            if parent != llfuse.ROOT_INODE or name not in inodes:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inodes[name])

        def opendir(self, inode: int, ctx: object) -> int:
            if inode != llfuse.ROOT_INODE:
                raise llfuse.FUSEError(errno.ENOTDIR)
            return inode

        def readdir(self, fh: int, off: int) -> Iterator[tuple[bytes, llfuse.EntryAttributes, int]]:
            for k, (name, inode) in enumerate(list(inodes.items())[off:], start=off):
                yield name, self._attr(inode), k + 1

        def open(self, inode: int, flags: int, ctx: object) -> int:
            if inode not in readers:
                raise llfuse.FUSEError(errno.EISDIR if inode == llfuse.ROOT_INODE else errno.ENOENT)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise llfuse.FUSEError(errno.EROFS)
            return inode

        def read(self, fh: int, off: int, size: int) -> bytes:
            if fh != last[0]:
                readers[last[0]].rest()
                last[0] = fh
            try:
                return readers[fh].read(off, size)
            except (RescueError, OSError) as e:
                failures[0] += 1
                log(f"error: read of {size} bytes at {off} of {readers[fh].area.label}: {e}")
                raise llfuse.FUSEError(errno.EIO) from None

        def release(self, fh: int) -> None:
            pass

    options = set(llfuse.default_options) | {"ro", f"fsname={FSNAME}", "subtype=rescue-czview"}
    options.discard("default_permissions")
    llfuse.init(ViewFS(), mountpoint, options)
    log(f"serving {', '.join(names)} of {czdir} at {mountpoint} (pid {os.getpid()})")
    if owner is not None:
        files = [os.path.join(mountpoint, n) for n in names]
        threading.Thread(target=_watch_owner, args=(owner, files), daemon=True).start()
    try:
        llfuse.main(workers=1)  # one stream per partition: reads of it wait for each other anyway
    finally:
        llfuse.close(unmount=True)
        for r in readers.values():
            log(f"{r.area.label}: {len(r.kept) * GRANULE >> 10} KiB read, {r.passes} pass(es) over the stream")
            r.close()
    log(f"stopped ({failures[0]} failed reads)")
    return 1 if failures[0] else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python3 -m {SERVER_MODULE}", description="Serve a Clonezilla image's partitions as files (FUSE)."
    )
    p.add_argument("czdir")
    p.add_argument("mountpoint")
    p.add_argument("cache_dir")
    p.add_argument("--areas", required=True, help="comma-separated area names (p1,p2)")
    p.add_argument("--owner", type=int, help="stop when this process is gone")
    args = p.parse_args(argv)
    return serve_main(
        lambda: serve(args.czdir, args.mountpoint, args.cache_dir, args.areas.split(","), args.owner),
        args.mountpoint,
        log,
    )


# -- the caller's side -----------------------------------------------------------------------


@dataclass
class View:
    files: dict[str, Path]  # area name -> its file
    log: Path  # the server's

    def failure(self) -> str:
        """Why a read of the files failed (damage in the image, named), "" when none did."""
        first = first_error(self.log, PROGRAM)
        return first if first.startswith("read of") else ""


@contextlib.contextmanager
def partition_files(czdir: Path, names: list[str], scratch_dir: str | None = None) -> Iterator[View]:
    """The areas `names` of the Clonezilla image at `czdir` as read-only files for the block,
    everything undone on exit. The cache files go in scratch_dir (default: the system's
    temporary directory): as much as the metadata the tools read."""
    work, work_key = leftovers.make_dir(scratch_dir or default_scratch_dir(), "rescue-czview-")
    mnt, logf, cache = work / "mnt", work / "server.log", work / "cache"
    fuse = hwmounts.OurMount(FSNAME, str(mnt))
    proc: subprocess.Popen[bytes] | None = None
    proc_key = ""
    try:
        mnt.mkdir()
        cache.mkdir()
        leftovers.record("mount", leftovers.mount_stem(fuse.source, fuse.where), {"mount": fuse.to_json()})
        runner = [python_with_llfuse(), "-m", SERVER_MODULE]
        argv = [*runner, str(czdir.resolve()), str(mnt), str(cache), "--areas", ",".join(names)]
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])))
        with open(logf, "ab") as out:
            proc = subprocess.Popen(
                [*argv, "--owner", str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        server = leftovers.Owner.of(proc.pid)
        if server is not None:
            proc_key = leftovers.record(
                "process", f"process-{proc.pid}", {"process": server.to_json(), "what": "Clonezilla view server"}
            )
        files = {n: mnt / n for n in names}
        deadline = time.monotonic() + START_TIMEOUT
        while not (hwmounts.is_mountpoint(mnt) and all(f.exists() for f in files.values())):
            if proc.poll() is not None:
                raise FilesystemError(f"the view of {czdir.name} did not start: {first_error(logf, PROGRAM)}")
            if time.monotonic() > deadline:
                raise FilesystemError(f"the view of {czdir.name} did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        yield View(files, logf)
    finally:
        hwmounts.unmount(fuse, lazy=True)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc_key:
                leftovers.forget(proc_key)
        if not hwmounts.is_mountpoint(mnt):
            shutil.rmtree(work, ignore_errors=True)
            leftovers.forget(work_key)


if __name__ == "__main__":
    raise SystemExit(main())

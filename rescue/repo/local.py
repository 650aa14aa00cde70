"""A repository in a local directory: a USB drive, an internal disk, a mounted share.

Objects are files under the directory, keys their relative paths. Reads go through
`files.read_file` (a regular file, no symbolic link, at most its limit: a FIFO would hang a
reader and /dev/zero feed it endless bytes); writes through a hidden temporary name, fsync,
rename. The directories a put wrote into are fsynced by `flush`, once each, not after every
chunk: the manifest that makes an image exist is put only after that (Repository.commit).

Nothing here needs POSIX semantics beyond what FAT32, exFAT and NTFS give (docs/format.md): no
links, no permissions, rename over an existing file only for `put`. `put_new` is a hard link
where the filesystem has them (atomic); on FAT and exFAT a look and a rename, atomic under
the flock every local writer holds."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path

from rescue.repo.files import MAX_FILE, FileProblem, free_bytes, fsync_dir, kind_of, read_file, temp_name, write_new
from rescue.repo.storage import FOLDER, OBJECT, Entry, ObjectMissing, ObjectProblem, check_key


class LocalStorage:
    writable = True
    exclusive_create = True  # a hard link; on FAT and exFAT, under the flock every local writer holds

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.Lock()
        self._touched: set[Path] = set()  # directories a put wrote a name into, for flush()

    def file(self, key: str) -> Path:
        return self.path / check_key(key)

    def get(self, key: str, limit: int) -> bytes:
        # the repository itself may be reached through a link; nothing inside it may
        try:
            return read_file(self.file(key), limit, confined="/" in key)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except FileProblem as e:
            raise ObjectProblem(e.reason) from None

    def size(self, key: str) -> int | None:
        try:
            st = os.lstat(self.file(key))
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def kind(self, key: str) -> str | None:
        """What the key's file is ("a file", "a directory", "a FIFO" ...), None when missing."""
        return kind_of(self.file(key))

    def put(self, key: str, data: bytes) -> None:
        self._write(self.file(key), data, replace=True)

    def put_new(self, key: str, data: bytes) -> bool:
        return self._write(self.file(key), data, replace=False)

    def _write(self, final: Path, data: bytes, *, replace: bool) -> bool:
        if len(data) > MAX_FILE:
            raise OSError(errno.EFBIG, f"{len(data)} bytes is more than a FAT32 drive holds in one file", str(final))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(final)
        try:
            write_new(tmp, data)
            if replace:
                os.replace(tmp, final)
            elif not self._link(tmp, final):
                return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._touched.add(final.parent)
        return True

    @staticmethod
    def _link(tmp: Path, final: Path) -> bool:
        """Give `tmp`'s file the name `final` only if no such name exists: link() where the
        filesystem has hard links (atomic), else a look and a rename (FAT, exFAT: atomic
        under the repository's flock, which every local writer holds). The temporary name
        is gone either way."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            os.unlink(tmp)
            return False
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise  # a real failure; any other answer means "no hard links here" (FAT, some shares)
            if kind_of(final) is not None:
                os.unlink(tmp)
                return False
            os.replace(tmp, final)
            return True
        os.unlink(tmp)
        return True

    def delete(self, key: str) -> None:
        """Remove the file, and its directory when that is left empty (chunks/ab/, an image's
        folder), never the repository's own directory."""
        path = self.file(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        parent = path.parent
        while parent != self.path:
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent
        with self._lock:
            self._touched.add(parent)  # flush() makes the removal durable

    def list(self, prefix: str) -> list[Entry]:
        folder = self.file(prefix) if prefix else self.path
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in entries:
            kind = kind_of(Path(e.path))
            if kind == "a file":
                out.append(Entry(e.name, OBJECT, e.stat(follow_symlinks=False).st_size))
            elif kind == "a directory":
                out.append(Entry(e.name, FOLDER))
            elif kind is not None:
                out.append(Entry(e.name, kind))
        return out

    def flush(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, set()
        dirs = set(touched)
        for d in touched:  # a new subdirectory's own name lives in its parent
            while d != self.path and d.parent not in dirs:
                d = d.parent
                dirs.add(d)
        for d in sorted(dirs, key=lambda p: -len(p.parts)):
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(d)

    def free_bytes(self) -> int | None:
        return free_bytes(self.path)

    def close(self) -> None:
        pass

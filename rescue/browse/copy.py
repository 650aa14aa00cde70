"""Files out of a mounted image partition into a folder: the wizard's Browse copy. `cp -a`
does the copying (owners, permissions, times, symlinks, hard links); this module lists, checks
the destination, reports progress and stops on Cancel. A FAT partition the kernel cannot mount
is copied whole through mtools (rescue.browse.extract)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rescue.errors import Cancelled, FilesystemError, IntegrityError, UsageError
from rescue.imaging.progress import Progress

if TYPE_CHECKING:
    from rescue.engine import BrowseSession
    from rescue.machine import LoggingRunner

ProgressFn = Callable[[Progress], None]


@dataclass
class FileEntry:
    name: str
    path: str  # inside the partition, "/etc/hostname"
    is_dir: bool
    size: int  # bytes (0 for directories)
    mtime: float
    link: str | None = None  # symlink target; links are copied as links, never followed


@dataclass
class CopyOutcome:
    dest: str
    copied: list[str]  # paths written under dest
    files: int
    bytes: int
    seconds: float
    owners_kept: bool = True  # False: onto FAT, exFAT, NTFS, a share: times only
    links_left: int = 0  # symbolic links such a destination cannot hold (never followed)


# Mount types rescue has no filesystem class for (rescue.filesystems: their `owners` says)
# that cannot hold a file's owner and mode bits: exFAT, NTFS or exFAT through FUSE (fuseblk),
# SMB shares. cp -a fails on every chown and chmod there.
OTHER_NO_OWNERS = frozenset({"exfat", "fuseblk", "ntfs3", "cifs", "smb3"})


def keeps_owners(dest: str) -> bool:
    """Whether the filesystem holding `dest` keeps owners and permissions (by its type in the
    kernel's mount table)."""
    from rescue.filesystems import lookup
    from rescue.hw import devices

    mount = devices.snapshot().mount_of_path(dest)
    if mount is None:
        return True
    fs = lookup(mount.fstype)
    return fs.owners if fs is not None else mount.fstype not in OTHER_NO_OWNERS


def tree_size(path: str) -> tuple[int, int]:
    """(regular files, their bytes) under `path`, symlinks not followed."""
    files = size = 0
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    if not os.path.isdir(path) or os.path.islink(path):
        return (1, st.st_size) if os.path.isfile(path) and not os.path.islink(path) else (0, 0)
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            files += 1
                            size += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return files, size


def check_copy_dest(dest: str, paths: list[str]) -> list[str]:
    """Where each chosen path lands (DEST/<its name>); refuses what would overwrite."""
    if not os.path.isdir(dest):
        raise UsageError(f"{dest} is not a directory")
    if not os.access(dest, os.W_OK):
        raise UsageError(f"{dest} is not writable (read-only or no permission)")
    names = [p.rstrip("/").rsplit("/", 1)[-1] or "" for p in paths]
    if len(set(names)) != len(names):
        raise UsageError("two chosen items have the same name and would land on the same place")
    out = []
    for n in names:
        target = os.path.join(dest, n) if n else dest
        if n and os.path.lexists(target):
            raise UsageError(f"{target} already exists: choose another folder or move it away first")
        out.append(target)
    return out


def list_directory(root: str, path: str) -> list[FileEntry]:
    """The entries of ROOT/PATH, directories first, never following a symlink out of ROOT."""
    rel = "/" + "/".join(c for c in path.split("/") if c not in ("", ".", ".."))
    where = os.path.join(root, rel.lstrip("/"))
    if os.path.islink(where) or not os.path.isdir(where):
        raise UsageError(f"{rel} is not a folder")
    out = []
    try:
        with os.scandir(where) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                    is_dir = e.is_dir(follow_symlinks=False)
                    link = os.readlink(e.path) if e.is_symlink() else None
                except OSError:
                    continue  # unreadable entry (damaged image): left out, not fatal
                out.append(
                    FileEntry(
                        e.name, rel.rstrip("/") + "/" + e.name, is_dir, 0 if is_dir else st.st_size, st.st_mtime, link
                    )
                )
    except OSError as e:
        raise FilesystemError(f"cannot read folder {rel}: {e.strerror}") from None
    out.sort(key=lambda f: (not f.is_dir, f.name))
    return out


def copy_tree(
    root: str, paths: list[str], dest: str, progress: ProgressFn, cancel: threading.Event, poll: float = 0.5
) -> CopyOutcome:
    """Copy the chosen paths out of ROOT into DEST with `cp -a` (owners, permissions, times,
    symlinks, hard links), one item at a time, reporting the bytes that have arrived so far.
    Onto a filesystem without owners (a USB stick's FAT or exFAT, NTFS, a share) only the
    times are kept, and symbolic links, which it cannot hold, are left out and counted:
    never followed, since an absolute one would name a file of the rescue system. cp runs as
    a child we hold (not through rescue.hw.run) so that Cancel can stop it; a cancelled
    item's partial copy is removed."""
    from rescue.imaging.progress import Progress

    if not paths:
        raise UsageError("choose at least one file or folder first (Space marks it)")
    targets = check_copy_dest(dest, paths)
    sources = [os.path.join(root, p.lstrip("/")) for p in paths]
    sizes = [tree_size(s) for s in sources]
    total = sum(b for _, b in sizes) or 1
    files = sum(f for f, _ in sizes)
    free = shutil.disk_usage(dest).free
    if free < total:
        from rescue.imaging.progress import fmt_bytes

        raise UsageError(f"{dest} has {fmt_bytes(free)} free, the chosen items need {fmt_bytes(total)}")
    owners = keeps_owners(dest)
    cp = ["cp", "-a"] if owners else ["cp", "--recursive", "--no-dereference", "--preserve=timestamps"]
    started = time.monotonic()
    done_before = 0
    copied: list[str] = []
    io_errors: list[str] = []
    links_left = 0
    for path, src, target, (_, size) in zip(paths, sources, targets, sizes):
        area = path if len(path) <= 40 else ".." + path[-38:]
        proc = subprocess.Popen(
            [*cp, "--", src, target], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        err = b""
        try:
            while True:
                try:
                    err = proc.communicate(timeout=poll)[1]
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel.is_set():
                    proc.kill()
                    proc.wait()
                    _remove(target)
                    raise Cancelled("copy cancelled by the user")
                now = min(tree_size(target)[1], size)
                elapsed = max(time.monotonic() - started, 1e-3)
                rate = (done_before + now) / elapsed
                progress(
                    Progress(
                        "copy",
                        area,
                        now,
                        size,
                        done_before + now,
                        total,
                        rate,
                        (total - done_before - now) / rate if rate else None,
                    )
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        copied.append(target)
        text = err.decode(errors="replace")
        if proc.returncode != 0:
            bad = [ln for ln in text.splitlines() if "Input/output error" in ln]
            links = [ln for ln in text.splitlines() if "cannot create symbolic link" in ln]
            if not owners and links and len(links) == len([ln for ln in text.splitlines() if ln.strip()]):
                links_left += len(links)
            elif bad:
                io_errors += bad
            else:
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                raise FilesystemError(f"copying {path} failed: {lines[-1] if lines else 'cp failed'}")
        done_before += size
        elapsed = max(time.monotonic() - started, 1e-3)
        progress(Progress("copy", area, size, size, done_before, total, done_before / elapsed, 0.0))
    if io_errors:
        raise IntegrityError(
            f"{len(io_errors)} file(s) could not be read (the image is damaged there); the rest was copied to {dest}"
        )
    return CopyOutcome(dest, copied, files, done_before, time.monotonic() - started, owners, links_left)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def copy_partition(session: BrowseSession, dest: str, progress: ProgressFn) -> CopyOutcome:
    """A FAT partition whole, through mtools, into DEST/<image>-p<N>."""
    from rescue.browse.extract import extract

    started = time.monotonic()
    total = session.part.used or session.part.size
    target = os.path.join(dest, f"{session.image}-p{session.part.number}")
    if os.path.lexists(target):
        raise UsageError(f"{target} already exists: choose another folder or move it away first")
    progress(Progress("copy", f"p{session.part.number} (whole partition)", 0, total, 0, total, 0.0, None))
    extract(session.repo_path, session.image, session.part.number, ["/"], target)
    files, size = tree_size(target)
    return CopyOutcome(dest, [target], files, size, time.monotonic() - started)


# -- a recorded machine's partitions: a file tree as data ------------------------------------

DEFAULT_TREE: dict[str, Any] = {  # shown for a browsable partition the record gives no files for
    "files": {
        "etc": {"files": {"hostname": {"size": 6}, "fstab": {"size": 612}}},
        "home": {"files": {"user": {"files": {"notes.txt": {"size": 2048}}}}},
        "README": {"size": 120},
    }
}


def _node(tree: dict[str, Any] | None, path: str) -> dict[str, Any]:
    node = tree or DEFAULT_TREE
    for c in [c for c in path.split("/") if c]:
        node = node.get("files", {}).get(c)
        if node is None:
            raise UsageError(f"{path} does not exist")
    return node


def _node_size(node: dict[str, Any]) -> tuple[int, int]:
    if "files" not in node:
        return (0, 0) if "link" in node else (1, int(node.get("size", 0)))
    files = size = 0
    for child in node["files"].values():
        f, b = _node_size(child)
        files, size = files + f, size + b
    return files, size


def list_tree(tree: dict[str, Any] | None, path: str) -> list[FileEntry]:
    """A recorded partition's folder, as list_directory lists a mounted one."""
    node = _node(tree, path)
    if "files" not in node:
        raise UsageError(f"{path} is not a folder")
    out = []
    for name, child in node["files"].items():
        is_dir = "files" in child
        out.append(
            FileEntry(
                name,
                path.rstrip("/") + "/" + name,
                is_dir,
                0 if is_dir else int(child.get("size", 0)),
                float(child.get("mtime", 1714557600)),
                child.get("link"),
            )
        )
    return sorted(out, key=lambda f: (not f.is_dir, f.name))


def simulate_copy(
    runner: LoggingRunner,
    session: BrowseSession,
    tree: dict[str, Any] | None,
    paths: list[str],
    dest: str,
    progress: ProgressFn,
    cancel: threading.Event,
) -> CopyOutcome:
    """What copy_tree would copy from a recorded partition: logged, counted, nothing written."""
    if session.root is None:
        whole = f"{session.image}-p{session.part.number}"
        areas = [(f"p{session.part.number} (whole partition)", session.part.used or session.part.size)]
        names, files = [whole], 1
    else:
        sizes = [_node_size(_node(tree, p)) for p in paths]
        areas = [(p, max(b, 1)) for p, (_, b) in zip(paths, sizes)]
        names, files = [p.rstrip("/").rsplit("/", 1)[-1] for p in paths], sum(f for f, _ in sizes)
    seconds = runner.move("copy", areas, progress, cancel)
    return CopyOutcome(dest, [dest.rstrip("/") + "/" + n for n in names], files, sum(b for _, b in areas), seconds)

"""The safety rules, asked right before anything is written or read. Each refusal is a
RefusedError whose one line names the rule, so a person knows what to undo.

Targets and sources are whole drives: a partition, or a loop device that shows only part
of a drive or of an image file (how this machine's tests make partitions), is refused as
"not a whole drive"; rescue writes a partition table and would nest a whole drive inside
it. A loop device over the whole of a drive or file is that drive under another name, and
every other rule is asked of what it shows as well.

A target is refused when it (or a partition of it, or a loop device stacked on either)
has a mounted filesystem, is used as swap, has holders (RAID, LVM, dm), booted the rescue
system, holds the repository, is a file inside the repository (or a loop device over one),
or is the source. A source is refused when a filesystem on it is mounted read-write, it is
used as swap or held, or it holds the repository: the bytes would change while they are
read.

A loop device over a file stored on the repository's filesystem (anywhere on it, or on a
filesystem stacked on it) is refused too: its bytes are the repository filesystem's bytes, and
a restore would fill the drive that holds the images. An image file named directly stays a
valid target outside the repository directory: writing a file is what was asked for."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from typing import Concatenate, ParamSpec

from rescue.errors import RefusedError, RescueError
from rescue.hw import devices
from rescue.hw.devices import LIVE_MEDIUM, SECTOR, Drive, Node, Snapshot
from rescue.model.stack import holder_reason

P = ParamSpec("P")
Check = Callable[Concatenate[str, P], Drive]  # a rule over a path; returns the Drive it checked


def _fails_closed(default_role: str) -> Callable[[Check[P]], Check[P]]:
    """A rule that cannot be evaluated refuses: an unexpected error while reading the
    kernel's state (an unparsable mount table, a vanished device) must never let a write
    through unchecked."""

    def wrap(check: Check[P]) -> Check[P]:
        @functools.wraps(check)
        def guarded(path: str, /, *args: P.args, **kwargs: P.kwargs) -> Drive:
            try:
                return check(path, *args, **kwargs)
            except RescueError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure of the check is a refusal
                role = kwargs.get("role", default_role)
                raise RefusedError(
                    f"{role} {path}: the safety check could not be completed ({type(e).__name__}: {e}); refusing"
                ) from None

        return guarded

    return wrap


def _node(drive: Drive, path: str) -> Node:
    if drive.devnum is not None:
        return ("dev", drive.devnum)
    ident = devices.identity(path)
    assert ident is not None  # drive_info already stat()ed it
    return ident


def _repo_nodes(repo_path: str, snap: Snapshot) -> list[Node]:
    """Everything the repository is stored on: its filesystem's device, that device's disk,
    and for a loop-mounted filesystem the backing file and the drive under it."""
    dev = snap.device_of_path(repo_path)
    return snap.underlying(("dev", dev)) if dev is not None else []


def _mount_text(mounts: list[tuple[str, str]]) -> str:
    return ", ".join(f"{dev} on {mnt}" for dev, mnt in mounts)


def _check_repo(label: str, node: Node, snap: Snapshot, repo_path: str | None) -> None:
    if repo_path is not None and set(snap.views(node)).intersection(_repo_nodes(repo_path, snap)):
        raise RefusedError(f"{label} holds the repository {repo_path}")


def _check_use(label: str, drive: Drive, snap: Snapshot | None = None) -> None:
    if drive.swap:
        raise RefusedError(f"{label} is used as swap")
    if drive.holders:
        raise RefusedError(f"{label} is in use by {_holders_text(drive.holders, snap)} (holders)")


def _holders_text(holders: list[str], snap: Snapshot | None) -> str:
    """The holders, each with what it is when the snapshot knows (an active volume group, an
    open LUKS volume, an md array): the refusal stands either way, only its words differ."""
    by_name = {d["name"]: d for d in snap.devices.values()} if snap is not None else {}
    words = []
    for h in holders:
        attrs = by_name[h]["attrs"] if h in by_name else {}
        words.append(holder_reason(h, attrs.get("dm/name"), attrs.get("dm/uuid")))
    return ", ".join(words)


def _span(offset: int, size: int) -> str:
    return f"bytes {offset}-{offset + size - 1}" if size > 0 else f"nothing from byte {offset}"


def _whole_drive(label: str, node: Node, path: str, snap: Snapshot) -> tuple[Node, str]:
    """Refuse anything but a whole drive, and say what a whole drive shows: a loop device
    over the whole of a block device is that device under another name, so the walk goes
    down through such loops to a drive or to the image file under them, and returns that
    node and its path. A partition, a loop device over part of its backing device or file
    (how this machine's tests make partitions), or a whole view of a partition is not a
    whole drive: a restore would nest a partition table inside it."""
    n, p = node, path
    seen: set[Node] = set()
    while n[0] == "dev" and n not in seen:
        seen.add(n)
        d = snap.devices.get(n[1])
        if d is None:
            raise RefusedError(f"{label}: {p} is not a block device the kernel lists; refusing")
        if d["parent"]:
            disk = snap.by_name(d["parent"])
            whole = disk["node"] if disk else f"/dev/{d['parent']}"
            what = "is" if n == node else f"shows {d['node']},"
            raise RefusedError(f"{label} {what} a partition of {whole}, not a whole drive")
        lo = next((lo for lo in snap.loops if lo.devnum == n[1]), None)
        if lo is None:
            return n, d["node"]
        shown = int(d["attrs"].get("size") or 0) * SECTOR
        under, size = lo.backing_file, None
        if lo.backing is None:
            if not lo.backing_file.endswith(" (deleted)"):
                raise RefusedError(
                    f"{label}: the file behind {d['node']} ({lo.backing_file}) cannot be examined; refusing"
                )
        elif lo.backing[0] == "dev":
            bd = snap.devices.get(lo.backing[1])
            if bd is None:
                raise RefusedError(f"{label}: the device behind {d['node']} is not one the kernel lists; refusing")
            under, size = bd["node"], int(bd["attrs"].get("size") or 0) * SECTOR
        elif lo.sizelimit:
            size = os.stat(lo.backing_file).st_size  # only asked when a size limit could cut it short
        # The kernel rounds a loop device down to whole sectors: a size limit at or past the
        # backing's last whole sector shows all of it.
        if lo.offset or (lo.sizelimit and (size is None or lo.sizelimit < size // SECTOR * SECTOR)):
            raise RefusedError(f"{label} shows only {_span(lo.offset, shown)} of {under}, not a whole drive")
        if lo.backing is None:
            return n, d["node"]  # the whole of a deleted file: nothing further down to ask
        n, p = lo.backing, under
    return n, p


def _inside(path: str, ident: Node, repo_path: str) -> str | None:
    """How the file `path` belongs to the repository directory, if it does: one of its parent
    directories is the repository's (compared by identity, so neither a symlink nor a bind
    mount hides it), or it is a hard link to a file in there. A file on the repository's
    filesystem outside that directory does not: writing it changes only its own bytes."""
    repo = os.stat(repo_path)
    if ident[0] != "file" or ident[1] != repo.st_dev:
        return None
    here = os.path.dirname(os.path.realpath(path))
    while True:
        st = os.stat(here)
        if (st.st_dev, st.st_ino) == (repo.st_dev, repo.st_ino):
            return "inside"
        up = os.path.dirname(here)
        if up == here:
            break
        here = up
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and _holds_inode(repo_path, st.st_dev, st.st_ino):
        return "a hard link to a file inside"
    return None


def _holds_inode(top: str, dev: int, ino: int) -> bool:
    """Whether a directory tree holds a name of the inode (a hard link), not following links."""
    todo = [top]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                elif e.inode() == ino and e.stat(follow_symlinks=False).st_dev == dev:
                    return True
    return False


def _check_inside(label: str, node: Node, base: tuple[Node, str], repo_path: str | None) -> None:
    shown, path = base
    how = _inside(path, shown, repo_path) if repo_path is not None and shown[0] == "file" else None
    if how is None:
        return
    if shown == node:
        raise RefusedError(f"{label} is {how} the repository {repo_path}")
    raise RefusedError(f"{label} shows {path}, which is {how} the repository {repo_path}")


def _check_stored_on_repo(
    label: str, node: Node, base: tuple[Node, str], snap: Snapshot, repo_path: str | None
) -> None:
    """A device whose bytes live in a file on the repository's filesystem. Compared by the
    filesystem's device through every layer under the file (a loop-mounted filesystem whose
    image is on the repository's), and by st_dev for filesystems without one (tmpfs)."""
    shown, path = base
    if repo_path is None or shown == node or shown[0] != "file":
        return
    repo_dev = snap.device_of_path(repo_path)
    same = os.stat(path).st_dev == os.stat(repo_path).st_dev
    if not same and repo_dev is not None:
        same = ("dev", repo_dev) in snap.underlying(shown, path)
    if same:
        m = snap.mount_of_path(repo_path)
        where = f" ({m.source} on {m.mountpoint})" if m else ""
        raise RefusedError(
            f"{label} is stored in {path}, on the filesystem that holds the repository {repo_path}{where}"
        )


def _check_shown(label: str, node: Node, shown: Node, snap: Snapshot, *, writable_only: bool = False) -> None:
    """The rules about use, asked of what a loop device shows: a filesystem mounted from the
    drive under a whole-drive loop device is mounted on the loop device just as well."""
    if shown == node:
        return
    views = snap.views(shown)
    mounts = []
    for n in views:
        if n[0] == "dev":
            vd = snap.devices.get(n[1])
            for m in snap.mounts_of(n[1]):
                if writable_only and m.read_only:
                    continue
                src = m.source if m.source.startswith("/dev/") or vd is None else vd["node"]
                if (src, m.mountpoint) not in mounts:
                    mounts.append((src, m.mountpoint))
    if mounts:
        hint = "; unmount it or mount it read-only" if writable_only else ""
        raise RefusedError(f"{label} has a mounted filesystem ({_mount_text(mounts)}){hint}")
    if snap.swap_nodes().intersection(views):
        raise RefusedError(f"{label} is used as swap")
    holders: list[str] = []
    for n in views:
        vd = snap.devices.get(n[1]) if n[0] == "dev" else None
        holders += [h for h in (vd["holders"] if vd else []) if h not in holders]
    if holders:
        raise RefusedError(f"{label} is in use by {_holders_text(holders, snap)} (holders)")


def _check_boot(label: str, node: Node, path: str, snap: Snapshot, live_medium: str) -> None:
    """The drive this rescue system booted from: never written, and never worth imaging."""
    medium = devices.boot_medium(live_medium, snap)
    if medium is not None:
        # Also a partition (or a loop view) of the boot drive: the whole drive is off limits.
        ident = snap.identity(medium)
        if ident in snap.views(node) or ident in snap.underlying(node, path, through_files=False):
            raise RefusedError(f"{label} booted this rescue system ({medium})")


@_fails_closed("target")
def check_target(
    path: str,
    *,
    repo_path: str | None = None,
    source: str | None = None,
    role: str = "target",
    live_medium: str = LIVE_MEDIUM,
) -> Drive:
    """Refuse to write to `path` unless every rule allows it; returns the Drive it checked.
    `live_medium` is where the live system's boot medium is mounted."""
    snap = devices.snapshot()
    drive = devices.drive_info(path, snap)
    node = _node(drive, path)
    label = f"{role} {path}"
    views = set(snap.views(node))

    _check_boot(label, node, path, snap, live_medium)
    if source is not None:
        src = devices.drive_info(source, snap)
        if views.intersection(snap.views(_node(src, source))):
            raise RefusedError(f"{label} is the source drive ({source})")
    _check_repo(label, node, snap, repo_path)
    base = _whole_drive(label, node, path, snap)
    if base[0] != node:
        _check_repo(label, base[0], snap, repo_path)
    _check_inside(label, node, base, repo_path)
    _check_stored_on_repo(label, node, base, snap, repo_path)
    if drive.mounts:
        raise RefusedError(f"{label} has a mounted filesystem ({_mount_text(drive.mounts)})")
    _check_use(label, drive, snap)
    _check_shown(label, node, base[0], snap)
    if drive.read_only:
        raise RefusedError(f"{label} is read-only")
    if drive.size == 0:
        raise RefusedError(f"{label} has no medium (0 bytes)")
    return drive


@_fails_closed("source")
def check_source(
    path: str, repo_path: str | None = None, *, role: str = "source", live_medium: str = LIVE_MEDIUM
) -> Drive:
    """Refuse to capture from `path` while its content can change under us, or when it is not
    a whole drive, or when it is the rescue system's own boot medium. A filesystem mounted
    read-only is fine: nothing writes to it."""
    snap = devices.snapshot()
    drive = devices.drive_info(path, snap)
    node = _node(drive, path)
    label = f"{role} {path}"
    _check_boot(label, node, path, snap, live_medium)
    _check_repo(label, node, snap, repo_path)
    base, _ = _whole_drive(label, node, path, snap)
    if base != node:
        _check_repo(label, base, snap, repo_path)
    rw = []
    for n in snap.views(node):
        if n[0] == "dev":
            rw += [m for m in snap.mounts_of(n[1]) if not m.read_only]
    if rw:
        shown = [(m.source, m.mountpoint) for m in rw]
        raise RefusedError(f"{label} has a mounted filesystem ({_mount_text(shown)}); unmount it or mount it read-only")
    _check_use(label, drive, snap)
    _check_shown(label, node, base, snap, writable_only=True)
    return drive

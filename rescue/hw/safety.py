"""The safety rules, asked right before anything is written or read. Each refusal is a
RefusedError whose one line names the rule, so a person knows what to undo.

A target is refused when it (or a partition of it, or a loop device stacked on either)
has a mounted filesystem, is used as swap, has holders (RAID, LVM, dm), booted the rescue
system, holds the repository, or is the source. A source is refused when a filesystem on it
is mounted read-write, it is used as swap or held, or it holds the repository: the bytes
would change while they are read."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec

from rescue.errors import RefusedError, RescueError
from rescue.hw import devices
from rescue.hw.devices import LIVE_MEDIUM, Drive, Node, Snapshot

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


def _check_use(label: str, drive: Drive) -> None:
    if drive.swap:
        raise RefusedError(f"{label} is used as swap")
    if drive.holders:
        raise RefusedError(f"{label} is in use by {', '.join(drive.holders)} (holders)")


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

    medium = devices.boot_medium(live_medium, snap)
    if medium is not None:
        # Also a partition (or a loop view) of the boot drive: the whole drive is off limits.
        ident = devices.identity(medium)
        if ident in views or ident in snap.underlying(node, path, through_files=False):
            raise RefusedError(f"{label} booted this rescue system ({medium})")
    if source is not None:
        src = devices.drive_info(source, snap)
        if views.intersection(snap.views(_node(src, source))):
            raise RefusedError(f"{label} is the source drive ({source})")
    _check_repo(label, node, snap, repo_path)
    if drive.mounts:
        raise RefusedError(f"{label} has a mounted filesystem ({_mount_text(drive.mounts)})")
    _check_use(label, drive)
    if drive.read_only:
        raise RefusedError(f"{label} is read-only")
    if drive.size == 0:
        raise RefusedError(f"{label} has no medium (0 bytes)")
    return drive


@_fails_closed("source")
def check_source(path: str, repo_path: str | None = None, *, role: str = "source") -> Drive:
    """Refuse to capture from `path` while its content can change under us. A filesystem
    mounted read-only is fine: nothing writes to it."""
    snap = devices.snapshot()
    drive = devices.drive_info(path, snap)
    node = _node(drive, path)
    label = f"{role} {path}"
    _check_repo(label, node, snap, repo_path)
    rw = []
    for n in snap.views(node):
        if n[0] == "dev":
            rw += [m for m in snap.mounts_of(n[1]) if not m.read_only]
    if rw:
        shown = [(m.source, m.mountpoint) for m in rw]
        raise RefusedError(f"{label} has a mounted filesystem ({_mount_text(shown)}); unmount it or mount it read-only")
    _check_use(label, drive)
    return drive

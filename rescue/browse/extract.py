"""Copying single files and folders out of an image: mount the one partition privately,
copy with `cp -a` (permissions, owners, times, symlinks, hard links, sparse files), unmount
everything, also when the copy fails. FAT partitions are read with mtools straight from the
partition's file (this kernel has no FAT driver); FAT has no owners or symlinks, and mcopy
keeps the modification times.

Paths are resolved inside the image, as a chroot would: an absolute symlink in the image
(/home -> /srv/home) leads to the image's /srv/home, never to the rescue system's. A PATH
that is itself a symlink is copied as the symlink."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rescue.browse import mounts
from rescue.errors import FilesystemError, IntegrityError, UsageError
from rescue.filesystems import lookup
from rescue.filesystems.fat import mtools_env
from rescue.hw.run import run

MAX_SYMLINKS = 40


@dataclass
class ExtractResult:
    area: str
    fstype: str
    copied: list[str] = field(default_factory=list)  # paths written under DIR


def resolve_inside(root: Path, path: str) -> Path:
    """PATH inside the filesystem at root, following symlinks of every component but the
    last relative to root; '..' never climbs above root."""
    todo = [c for c in path.split("/") if c not in ("", ".")]
    cur: list[str] = []
    hops = 0
    while todo:
        c = todo.pop(0)
        if c == "..":
            if cur:
                cur.pop()
            continue
        here = root.joinpath(*cur, c)
        if todo and here.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise UsageError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(here)
            if target.startswith("/"):
                cur = []
            todo = [t for t in target.split("/") if t not in ("", ".")] + todo
            continue
        cur.append(c)
    return root.joinpath(*cur)


def _target(dest: Path, path: str) -> Path | None:
    """Where PATH lands under DIR: DIR/<last component>, or DIR itself for the root."""
    name = [c for c in path.split("/") if c not in ("", ".", "..")]
    return dest / name[-1] if name else None


def _check_targets(dest: Path, paths: list[str]) -> list[Path | None]:
    targets = [_target(dest, p) for p in paths]
    if None in targets and len(paths) > 1:
        raise UsageError("'/' (the whole filesystem) cannot be combined with other PATHs")
    if None in targets and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty: extract the whole filesystem into an empty folder")
    named = [t for t in targets if t is not None]
    if len(set(named)) != len(named):
        raise UsageError("two PATHs have the same name and would land on the same place in DIR")
    for t in named:
        if os.path.lexists(t):
            raise UsageError(f"{t} already exists: extract into another folder or move it away first")
    return targets


def _prepare_dest(dest: str) -> Path:
    path = Path(dest)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{dest} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {dest}: {e.strerror}") from None
    return Path(os.path.realpath(path))


def _unreadable(stderr: str) -> list[str]:
    """Sources cp could not read (`cp: error reading 'SRC': Input/output error`)."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"cp: (?:error reading|cannot open) '(.*)'(?: for reading)?: Input/output error", line)
        if m:
            out.append(m.group(1))
    return out


def _report(state: mounts.MountState, failed: list[str], other: list[str]) -> None:
    """One line after every PATH was tried: what could not be copied, and why."""
    if failed:
        damage = mounts.damage_lines(state.log)
        cause = damage[0].split("; reads of")[0] if damage else "the image could not be read there"
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise IntegrityError(
            f"{len(failed)} file(s) could not be read and were not copied ({shown}): the image is damaged: {cause}"
        )
    if other:
        raise FilesystemError(other[0] + (f" (and {len(other) - 1} more errors)" if len(other) > 1 else ""))


def extract(repo_path: str, name: str, partition: int, paths: list[str], dest: str) -> ExtractResult:
    if not paths:
        raise UsageError("name at least one PATH to extract")
    _, manifest = mounts.open_image(repo_path, name)
    area = mounts.select_areas(manifest, partition)[0]
    fstype = (area.fs or {}).get("type")
    fs = lookup(fstype)
    if not fstype or fstype == "raw" or (fs is not None and fs.no_files):
        raise UsageError(
            f"partition {partition} of image {name} holds no filesystem with files ({fstype or 'unformatted'})"
        )
    out = _prepare_dest(dest)
    targets = _check_targets(out, paths)
    with_mtools = fs is not None and fs.mtools  # FAT: read from the partition's file, not mounted
    state, mnt = mounts.open_private(
        repo_path, name, area, "extract", f"{name[:40]}-p{partition}-", mount=not with_mtools
    )
    try:
        result = ExtractResult(area.name, fstype)
        if with_mtools:
            _copy_fat(state, area.name, paths, targets, out, result)
        else:
            _copy_tree(state, mnt / area.name, paths, targets, out, result)
        return result
    finally:
        mounts.close_private(state, mnt)


def _copy_tree(
    state: mounts.MountState, root: Path, paths: list[str], targets: list[Path | None], out: Path, result: ExtractResult
) -> None:
    sources = []
    for p in paths:
        src = resolve_inside(root, p)
        if not os.path.lexists(src):
            raise UsageError(f"{p} does not exist in partition {state_label(result)}")
        sources.append(src)
    failed: list[str] = []
    other: list[str] = []
    for p, src, target in zip(paths, sources, targets):
        dst = target or out
        argv = ["cp", "-a", "--", f"{src}/.", f"{out}/"] if target is None else ["cp", "-a", "--", str(src), str(dst)]
        proc = run(argv, check=False, timeout=None)
        result.copied.append(str(dst))
        if proc.returncode == 0:
            continue
        stderr = proc.stderr.decode(errors="replace")
        bad = _unreadable(stderr)
        for s in bad:
            # cp leaves a partial file behind: never let it pass for the real one.
            rel = os.path.relpath(s, src)
            partial = dst if rel == "." else dst / rel
            with contextlib.suppress(OSError):
                if partial.is_file() and not partial.is_symlink():
                    partial.unlink()
            failed.append(os.path.relpath(s, root))
        if not bad:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            other.append(f"copying {p} failed: {lines[-1] if lines else 'cp failed'}")
    _report(state, failed, other)


def _copy_fat(
    state: mounts.MountState, area: str, paths: list[str], targets: list[Path | None], out: Path, result: ExtractResult
) -> None:
    image = str(state.fuse_dir / area)
    env = mtools_env()
    failed: list[str] = []
    other: list[str] = []
    for p, target in zip(paths, targets):
        clean = "/".join(c for c in p.split("/") if c not in ("", ".", ".."))
        src = f"::/{clean}" + ("*" if not clean else "")
        dst = target or out
        argv = ["mcopy", "-s", "-p", "-m", "-n", "-i", image, src, str(dst)]
        proc = run(argv, check=False, timeout=None, env=env)
        err = proc.stderr.decode(errors="replace")
        if proc.returncode != 0 and "not found" in err:
            raise UsageError(f"{p} does not exist in partition {state_label(result)}")
        result.copied.append(str(dst))
        if proc.returncode == 0:
            continue
        if mounts.damage_lines(state.log) or "Input/output error" in err:
            # mcopy does not say which file it was in the middle of: a partial single file
            # is removed; a partial folder is named in the error.
            with contextlib.suppress(OSError):
                if target is not None and target.is_file():
                    target.unlink()
            failed.append(p)
        else:
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            other.append(f"copying {p} failed: {lines[-1] if lines else 'mcopy failed'}")
    _report(state, failed, other)


def state_label(result: ExtractResult) -> str:
    return f"{result.area} ({result.fstype})"

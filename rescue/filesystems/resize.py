"""Growing and shrinking a filesystem to a new partition size, for restores onto a smaller or
larger drive: what every filesystem's resize shares. The resizing itself is each class's
`resize` (rescue/filesystems/<name>.py), which drives the filesystem's own tool:

- ext2/3/4: `e2fsck -fy` first (resize2fs refuses an unchecked filesystem), then resize2fs.
- XFS: grows only, and only while mounted; shrinking is refused before anything is touched.
- btrfs: resized while mounted (`btrfs filesystem resize`), never below 256 MiB.
- NTFS: `ntfsresize` (dry run first); the chkdsk mark it sets is cleared if the volume
  was clean before.
- FAT: done by rescue itself, not by fatresize: a grow leaves the filesystem as it is, a
  shrink cuts it short in place when every used cluster already lies below the end.
- swap: recreated with the same UUID and label; it holds nothing worth moving.

Sizes are always passed to the tools explicitly, never "fill the device", so that a device
larger than intended (the staging file of a shrink, a partition rounded up) never decides
the result.

Shrinking during a restore runs on a device of the old size whose first new_size bytes are
the target partition and whose tail is a scratch file (rescue.hw.splitdev, driven by
rescue.imaging.apply)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from rescue.errors import FilesystemError
from rescue.filesystems.base import Filesystem, device_size, mib
from rescue.hw.run import run

__all__ = ["device_size", "mib", "resize_filesystem", "resizer", "shrink_plan_check", "tool"]


def resizer(fstype: str) -> Filesystem:
    """lookup(fstype), refusing a type no class handles with the words a class that cannot
    resize uses: what the engine calls before a grow or shrink."""
    from rescue.filesystems import lookup

    fs = lookup(fstype)
    if fs is None:
        raise FilesystemError(f"cannot resize a {fstype} filesystem: no resize method for this type")
    return fs


def resize_filesystem(
    fstype: str, device: str, new_size: int, *, label: str | None = None, uuid: str | None = None
) -> str:
    """`lookup(fstype).resize(...)` for callers that hold only a type name; an unknown type is
    refused with the same words as a known one that cannot be resized."""
    return resizer(fstype).resize(device, new_size, label=label, uuid=uuid)


def shrink_plan_check(fstype: str, min_size: int | None, new_size: int, *, current_size: int | None = None) -> None:
    """`lookup(fstype).shrink_check(...)` for callers that hold only a type name."""
    resizer(fstype).shrink_check(min_size, new_size, current_size=current_size)


def tool(argv: Sequence[str], device: str, *, input: bytes | None = None) -> None:
    """Run a resize tool to the end: no timeout, since checking or moving data on a large
    filesystem takes hours. On failure the message quotes the tool's own "ERROR" line when
    there is one (ntfsresize's last line is only advice), else its last line."""
    proc = run(argv, input=input, check=False, timeout=None)
    if proc.returncode == 0:
        return
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"(error|fatal)\b", ln, re.I) or ": error" in ln.lower()]
    why = (errors or lines or [f"exit status {proc.returncode}"])[0 if errors else -1]
    raise FilesystemError(f"{argv[0]} failed on {device}: {why}")

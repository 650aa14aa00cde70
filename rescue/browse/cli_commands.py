"""The `rescue mount`, `rescue umount` and `rescue extract` commands: the command line's
browsing part (a front end kept beside what it fronts). rescue/cli.py calls add_commands(sub)
once; the handlers only parse, call the engine (rescue.engine) and print."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "mount",
        help="browse an image's partitions read-only",
        description="Show the files of image NAME without restoring it: each partition's filesystem "
        "appears read-only under MOUNTPOINT/pN (ext2/3/4, XFS, btrfs, NTFS, FAT). Chunks are read from "
        "the repository on demand and checked; a damaged chunk makes reads of its bytes fail with an I/O "
        "error (logged), never return wrong data. FAT is mounted with the kernel's vfat driver, or with "
        "fusefat where the kernel has none (short names then show in capitals, and times may be off); "
        "if neither works, copy from it with 'rescue extract'. Nothing is written to the repository. "
        "Undo with 'rescue umount MOUNTPOINT'.",
    )
    s.add_argument("repo", help="repository directory")
    s.add_argument("name", help="image name")
    s.add_argument("mountpoint", help="an existing directory; partitions appear as MOUNTPOINT/p1, p2, ...")
    s.add_argument("--partition", type=int, metavar="N", help="mount only partition N")
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser(
        "umount",
        help="unmount an image mounted with 'rescue mount'",
        description="Unmount every partition under MOUNTPOINT, detach the loop devices and stop the "
        "image file system. Also clears what a crashed or killed browsing session left behind.",
    )
    s.add_argument("mountpoint")
    s.set_defaults(func=cmd_umount)

    s = sub.add_parser(
        "extract",
        help="copy files and folders out of an image",
        description="Copy PATH (files or folders, as seen from the root of partition N) out of image "
        "NAME into DIR, keeping permissions, owners, times and symlinks. Each PATH lands as "
        "DIR/<its last name>; '/' copies the whole filesystem into DIR. Existing files in DIR are "
        "never overwritten. FAT partitions are read with mtools (times kept; FAT has no owners).",
    )
    s.add_argument("repo", help="repository directory")
    s.add_argument("name", help="image name")
    s.add_argument("paths", nargs="+", metavar="PATH", help="file or folder inside the partition")
    s.add_argument("--partition", type=int, metavar="N", required=True, help="partition number")
    s.add_argument("--to", required=True, metavar="DIR", dest="dest", help="destination folder (created if missing)")
    s.set_defaults(func=cmd_extract)


def _engine() -> Any:
    from rescue.engine import Engine

    return Engine()


def cmd_mount(args) -> int:
    result = _engine().mount_image(args.repo, args.name, args.mountpoint, args.partition)
    for p in result.parts:
        kind = p.fstype or "-"
        if p.path:
            print(f"{p.area:<4} {kind:<6} {p.path}" + (f" ({p.note})" if p.note else ""))
        else:
            print(f"{p.area:<4} {kind:<6} not mounted: {p.note}")
    print(
        f"image {args.name} is mounted read-only at {result.state.mountpoint}; damaged chunks are logged "
        f"in {result.state.log}; run 'rescue umount {result.state.mountpoint}' when done"
    )
    return 0


def cmd_umount(args) -> int:
    state = _engine().umount_image(args.mountpoint)
    print(f"unmounted {state.image or 'leftovers'} from {state.mountpoint}")
    return 0


def cmd_extract(args) -> int:
    result = _engine().extract(args.repo, args.name, args.partition, args.paths, args.dest)
    for path in result.copied:
        print(f"extracted {path}")
    return 0

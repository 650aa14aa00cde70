"""The `rescue` command line: parse, call the engine, print. No disk logic here.

Every expected failure is a RescueError: one line on stderr and its exit code, never a
traceback."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from dataclasses import asdict
from typing import IO

from rescue import __version__, config, planview
from rescue.browse import cli_commands as browse_cli
from rescue.engine import Engine
from rescue.errors import SECTORS_LOST, Cancelled, IntegrityError, RefusedError, RescueError, UsageError
from rescue.imaging.progress import TerminalProgress, fmt_bytes
from rescue.multicast.udpcast import is_multicast
from rescue.repo.keys import WrongPassword


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is cmd_wizard:
        args.extra = extra  # the wizard parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from rescue.browse.mounts import clear_leftovers
    from rescue.hw import leftovers

    global _env_password
    # Out of the environment before anything runs: every child (partclone, ssh, qemu-img, the
    # FUSE image server) would inherit it otherwise.
    _env_password = os.environ.pop(PASSWORD_ENV, None)

    if getattr(args, "s3_endpoint", None):
        _use_s3_endpoint(args.s3_endpoint)
    try:
        if args.func is not cmd_wizard:  # the wizard clears them itself, and says so on its screen
            cleared = clear_leftovers()  # what killed runs left: loop devices, mounts, files, drives
            if cleared:
                print(f"rescue: {cleared.line()}", file=sys.stderr)
            _unlock(args)
        return args.func(args) or 0
    except RescueError as e:
        print(f"rescue: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        unfinished = leftovers.mine()  # a restore or clone of ours that had started writing
        print(f"rescue: interrupted{''.join(f'; {m.words()}' for m in unfinished)}", file=sys.stderr)
        return Cancelled.exit_code
    except BrokenPipeError:
        return 1


def _use_s3_endpoint(url: str) -> None:
    """The S3 service of s3:// repositories, where rescue.repo.s3 looks (first first)."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        os.environ[name] = url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rescue",
        description="Capture, restore, verify and browse whole-drive images. "
        "Images live in a repository directory: deduplicated, zstd-compressed chunks, "
        "each checked on every read.",
    )
    p.add_argument("--version", action="version", version=f"rescue {__version__}")
    p.add_argument(
        "--config",
        help="configuration file (default: $RESCUE_CONFIG, /etc/rescue/rescue.toml, "
        "or config/rescue.toml of a source checkout)",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    s = sub.add_parser(
        "disks",
        help="list drives",
        description="List drives with model, serial, size, "
        "bus, whether removable, and what uses them (mounts, holders, swap).",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_disks)

    s = sub.add_parser(
        "capture",
        help="image a drive into a repository",
        description="Image DISK into the repository REPO (created if missing). Only blocks "
        "the filesystems use are read; chunks the repository already holds are not stored "
        "again, so a second capture of the same drive is incremental.",
    )
    s.add_argument("disk", help="source drive, e.g. /dev/sda (or an image file)")
    s.add_argument("repo", help="repository: a directory, sftp://[user@]host/path, s3://bucket/prefix")
    s.add_argument("--name", help="image name (default: drive model and date)")
    s.add_argument("--level", type=int, help="zstd level 1-19 (config: capture.level)")
    s.add_argument("--threads", type=int, help="compression threads, 0 = one per core (config: capture.threads)")
    s.add_argument(
        "--bad-sectors",
        metavar="skip|retry=N",
        type=_bad_sector_policy,
        help="unreadable sectors are zero-filled and listed in the image's badsectors.map; "
        "'skip' reads around them once, 'retry=N' adds N retry passes at the end "
        "(default: capture.bad_sector_retries of the configuration, 1)",
    )
    s.set_defaults(func=cmd_capture)

    s = sub.add_parser(
        "list",
        help="list images in a repository",
        description="Images in REPO: name, date, source drive, size, data captured, and the "
        "bytes each image added to the repository (its new bytes).",
    )
    s.add_argument("repo")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser(
        "info",
        help="show an image's partition table and areas",
        description="The partition table and per-partition details of image NAME.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "verify",
        help="check every chunk of an image",
        description="Read, decompress and hash every chunk of image NAME. Exit status 1 "
        "names the area and offset of the first damage. With DISK (a drive the image "
        "was restored onto), also compare the drive's bytes outside its partitions (boot "
        "code after the MBR, gaps) with the image, the partition table excepted.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("disk", nargs="?", help="a drive restored from this image, read only")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser(
        "restore",
        help="write an image onto a drive",
        description="Recreate the partition table of image NAME on DISK and write its data. "
        "Everything on DISK is lost. The whole image is verified first unless "
        "--no-preverify. Asks you to type the drive's name unless --yes. REPO "
        "multicast://IF[:PORTBASE] receives the image from `rescue serve --multicast`.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("disk", help="target drive, e.g. /dev/sdb")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument(
        "--no-preverify",
        action="store_true",
        help="skip the full check of the image before writing (every chunk is still checked "
        "before its bytes reach the drive)",
    )
    _layout_option(s)
    _scratch_option(s)
    _new_ids_option(s)
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser(
        "serve",
        help="send an image to many machines at once (multicast)",
        description="Check image NAME, then send it with udpcast (udp-sender) to every machine "
        "that runs `rescue restore multicast://IF NAME DISK` (or boots with "
        "rescue.repo=multicast://IF) on the same network: one stream restores them all. "
        "Starts once --receivers joined, or --wait seconds after the first join (default 60).",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("--multicast", action="store_true", required=True, help="send by multicast (udpcast)")
    s.add_argument("--interface", default="eth0", help="network card to send on (default eth0)")
    s.add_argument("--receivers", type=int, metavar="N", help="start as soon as N receivers joined")
    s.add_argument(
        "--wait", type=float, metavar="S", help="start S seconds after the first receiver joined, however many"
    )
    s.add_argument("--max-rate", metavar="R", help="udpcast's --max-bitrate: e.g. 800m, 1g")
    s.add_argument("--portbase", type=int, default=9000, help="UDP ports PORTBASE and +1 (even; default 9000)")
    s.add_argument("--fec", metavar="IxR/S", help="udpcast's forward error correction, e.g. 8x8/128")
    s.add_argument(
        "--async", dest="async_mode", action="store_true", help="no return channel (needs --max-rate and --fec)"
    )
    s.add_argument(
        "--retries-until-drop",
        type=int,
        default=30,
        metavar="N",
        help="udpcast's patience with a receiver that stopped answering (default 30: about 20 s)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "clone",
        help="copy a drive straight onto another",
        description="Copy SOURCE onto TARGET without a repository: only used blocks are "
        "read, partitions are resized to the target like restore does, unreadable sectors are "
        "zero-filled and reported. Everything on TARGET is lost. Asks you to type the "
        "target's name unless --yes.",
    )
    s.add_argument("source")
    s.add_argument("target")
    _layout_option(s)
    s.add_argument(
        "--bad-sectors",
        metavar="skip|retry=N",
        type=_bad_sector_policy,
        help="as for capture (default: capture.bad_sector_retries of the configuration, 1)",
    )
    _scratch_option(s)
    _new_ids_option(s)
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_clone)

    s = sub.add_parser(
        "plan",
        help="show the layout a restore would write",
        description="The partition layout that restoring image NAME onto DISK would write, "
        "next to the image's, and whether the data fits. Nothing is written.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("disk")
    _layout_option(s)
    _scratch_option(s)
    _new_ids_option(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser(
        "export",
        help="write an image as a virtual machine's disk file",
        description="Write image NAME as a disk file for a virtual machine: OUTPUT ending in "
        ".img or .raw (a sparse raw disk), .qcow2, .vmdk or .vhdx (converted by qemu-img). The "
        "disk is laid out as a restore onto a drive of its size would be (partitions resized "
        "by --layout, the same boot fixes); it takes about the image's data on disk, not its "
        "size. Nothing appears under OUTPUT until it is complete.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.add_argument("output", help="the disk file to write, e.g. web01.qcow2")
    s.add_argument(
        "--size",
        type=_disk_size,
        help="the disk's size, e.g. 200G (K, M, G, T: powers of 1024; default: the source drive's)",
    )
    s.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _layout_option(s)
    _scratch_option(s)
    _new_ids_option(s)
    s.set_defaults(func=cmd_export)

    browse_cli.add_commands(sub)

    s = sub.add_parser(
        "delete",
        help="delete an image from a repository",
        description="Delete image NAME: it is gone from `list` at once. The chunks it alone "
        "used stay until `rescue prune`.",
    )
    s.add_argument("repo")
    s.add_argument("name")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser(
        "prune",
        help="remove images by keep rules, and chunks no image needs",
        description="With --keep-last/--keep-daily, delete the images those rules do not keep "
        "(counted per source drive); then remove every chunk no remaining image needs and "
        "the leftovers of interrupted captures, and report the space freed. Refused while "
        "another job holds the repository's lock, and while any image is damaged.",
    )
    s.add_argument("repo")
    s.add_argument("--keep-last", type=_count, metavar="N", help="keep the N newest images of each drive")
    s.add_argument(
        "--keep-daily", type=_count, metavar="N", help="keep the newest image of each of the last N days (per drive)"
    )
    s.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser(
        "copy",
        help="copy an image to another repository",
        description="Copy image NAME from SRC to DST (created if missing). Only the chunks DST "
        "lacks travel, each checked on the way; an interrupted copy, run again, sends only "
        "the rest.",
    )
    s.add_argument("src")
    s.add_argument("name")
    s.add_argument("dst")
    s.set_defaults(func=cmd_copy)

    s = sub.add_parser(
        "import",
        help="import a Clonezilla image into a repository",
        description="Store the Clonezilla image directory CZDIR (what ocs-sr savedisk wrote) in "
        "REPO (created if missing) as a rescue image: used blocks only, chunks the repository "
        "holds already are not stored again. Every partclone checksum is checked on the way; "
        "a damaged image is refused and nothing of it is kept. (list, info, verify, plan and "
        "restore also take CZDIR where they take a repository, its one image named as the "
        "directory.)",
    )
    s.add_argument("czdir")
    s.add_argument("repo")
    s.add_argument("--name", help="image name (default: the directory's name)")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser(
        "init",
        help="make a new repository (--encrypt: with a password)",
        description="Make an empty repository at REPO (an empty directory, sftp://, s3://). With "
        "--encrypt, every chunk, index and manifest is encrypted and authenticated with a key "
        "that opens only with the password (asked twice; or --password-file FILE, or "
        "$RESCUE_PASSWORD). Other commands then ask for it. Without the password no image in "
        "it can be read or restored: keep it, or add a second one with `rescue key add`.",
    )
    s.add_argument("repo")
    s.add_argument("--encrypt", action="store_true", help="encrypt with a password")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser(
        "key",
        help="add, remove or list the passwords of an encrypted repository",
        description="An encrypted repository opens with any of its passwords, each one a key "
        "file under keys/. `add` asks for a password that opens it, then the new one twice (or "
        "--new-password-file); `remove ID` deletes one key file (not the last one, nor the one "
        "the password given opened); `list` shows them. Nothing but keys/ changes.",
    )
    s.add_argument("action", choices=("add", "remove", "list"))
    s.add_argument("repo")
    s.add_argument("id", nargs="?", help="the key to remove (`rescue key list` shows them)")
    s.add_argument("--new-password-file", metavar="FILE", help="add: the new password, its first line")
    s.set_defaults(func=cmd_key)

    s = sub.add_parser(
        "unlock",
        help="remove a stale lock",
        description="Show who holds the repository's lock and remove it when it is stale "
        "(not refreshed for two minutes, or left by a process of this machine that is gone).",
    )
    s.add_argument("repo")
    s.add_argument("--force", action="store_true", help="remove it even when it is not stale")
    s.set_defaults(func=cmd_unlock)

    s = sub.add_parser(
        "unattended",
        help="restore or capture as the boot parameters say (fleets, PXE)",
        description="Carry out the rescue.* parameters of the kernel command line (or --cmdline): "
        "rescue.mode=restore|capture rescue.repo=... rescue.image=NAME|latest:PREFIX "
        "rescue.target=RULES rescue.confirm=destroy ... (docs/fleet.md). The last line says "
        "RESCUE-RESULT status=ok|failed|planned|skipped; the exit status is 0 unless it failed.",
    )
    s.add_argument("--cmdline", help="the parameters (default: /proc/cmdline)")
    s.add_argument(
        "--mirror", action="append", default=[], metavar="TTY", help="also write every line here (the serial line)"
    )
    s.add_argument(
        "--finish",
        action="store_true",
        help="then do what rescue.after / rescue.on_fail say (power off, reboot, wait); without it only say it",
    )
    s.add_argument(
        "--machine-id",
        metavar="ID",
        help="this machine's identity for its done-marker and logs (default: its DMI UUID, serial and MAC)",
    )
    s.set_defaults(func=cmd_unattended)

    s = sub.add_parser(
        "wizard",
        help="the interactive text-mode wizard",
        description="Start the menu-driven wizard used on the rescue ISO. Its own options: "
        "--repo REPO (skip the repository screen), --include-loop (offer loop devices), "
        "--machine JSON (dry run against a recorded machine).",
    )
    s.set_defaults(func=cmd_wizard)
    for name, command in sub.choices.items():
        if name not in ("disks", "wizard", "unattended"):
            command.add_argument(
                "--s3-endpoint",
                metavar="URL",
                help="the S3 service of s3:// repositories, e.g. https://s3.lan:9000 (default: "
                "$AWS_ENDPOINT_URL, else AWS); credentials as the AWS tools read them",
            )
        if name not in ("disks", "wizard", "clone", "umount", "unattended"):
            command.add_argument(
                "--password-file",
                metavar="FILE",
                help="an encrypted repository's password: the first line of FILE (default: "
                "$RESCUE_PASSWORD, else asked on the terminal, hidden)",
            )
    return p


PASSWORD_ENV = "RESCUE_PASSWORD"
PROMPTS = 3  # tries at a typed password before giving up
_env_password: str | None = None  # $RESCUE_PASSWORD, taken out of os.environ by main()


def _password(args, what: str, *, twice: bool = False, file: str | None = None, env: bool = True) -> tuple[str, bool]:
    """(a password, whether it was typed): from FILE (--password-file), $RESCUE_PASSWORD, or
    asked on the terminal without echo (getpass reads /dev/tty, so a pipe on stdin does not
    feed it). UsageError when there is none of them."""
    import getpass

    file = file if file is not None else getattr(args, "password_file", None)
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n"), False
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the password file {file}: {getattr(e, 'strerror', None) or e}") from None
    if env and _env_password is not None:
        return _env_password, False
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        raise UsageError(
            f"{what} needs a password: run on a terminal, or give --password-file FILE or ${PASSWORD_ENV}"
        ) from None
    password = getpass.getpass(f"password for {what}: ")
    if twice and getpass.getpass("the same password again: ") != password:
        raise UsageError("the two passwords differ")
    return password, True


def _unlock(args) -> None:
    """The password of every encrypted repository the command names, asked once, here, and
    handed to the engine, which keeps the key for the command's jobs."""
    if args.func in (cmd_init, cmd_unlock):  # a stale lock is removed without the key
        return
    engine: Engine | None = None
    named, encrypted = [], 0
    for attr in ("repo", "src", "dst"):
        path = getattr(args, attr, None)
        if not isinstance(path, str) or is_multicast(path):  # its stream brings its description
            continue
        named.append(path)
        engine = engine or _engine(args)
        if not engine.repository_encrypted(path):
            continue
        encrypted += 1
        for attempt in range(PROMPTS):
            password, typed = _password(args, path)
            try:
                engine.enter_password(path, password)
                break
            except WrongPassword as e:
                if not typed or attempt == PROMPTS - 1:
                    raise
                print(f"rescue: {e}", file=sys.stderr)
    if named and not encrypted and getattr(args, "password_file", None):
        # A password given for a repository that turns out plain: one whose keys/ was removed
        # and its description edited back to version 1 would otherwise take the images in clear.
        raise UsageError(
            f"{' and '.join(named)} is not an encrypted repository, but --password-file was given "
            "(`rescue init REPO --encrypt` makes one)"
        )


def _scratch_option(s) -> None:
    s.add_argument(
        "--scratch",
        metavar="DIR",
        help="where a shrink keeps the data that lies past a partition's new end (default: the "
        "temporary directory, RAM on the rescue system); a directory on a writable drive "
        "other than the target",
    )


def _layout_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--layout",
        default="auto",
        choices=("auto", "same", "proportional", "grow-last"),
        help="same: partitions as in the image; proportional: resizable partitions share the "
        "target's space in proportion (EFI, BIOS boot, swap, recovery keep their size); "
        "grow-last: only the last resizable partition changes. auto (default): same on a "
        "drive of the same size, proportional otherwise",
    )


def _new_ids_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--new-ids",
        action="store_true",
        help="give the copy new disk, partition and filesystem ids (and update fstab, crypttab "
        "and GRUB's configuration to match), for a copy that stays in the same machine as "
        "its source; by default every id is kept so the copy replaces the original. "
        "Not for Windows drives: Windows finds its boot partition by these ids",
    )


def _cfg(args) -> config.Config:
    from pathlib import Path

    return config.load(Path(args.config) if args.config else None)


def _engine(args) -> Engine:
    """The engine both front ends call, with this command line's configuration."""
    return Engine(cfg=_cfg(args), include_loop=True)


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1, default=str)
    print()


def cmd_disks(args) -> int:
    """Every drive; one that a restore or clone left unfinished says so (partly_written in
    JSON, a PARTLY WRITTEN line under it in text)."""
    found = _engine(args).disks()
    drives = [d for d, _ in found]
    notes = {d.path: note for d, note in found}
    if args.json:
        _print_json([{**asdict(d), "partly_written": notes[d.path]} for d in drives])
        return 0
    print(f"{'DRIVE':<12} {'SIZE':>10}  {'BUS':<7} {'MODEL':<24} {'SERIAL':<20} IN USE BY")
    for d in drives:
        use = [m for _, m in d.mounts] + list(d.holders) + (["swap"] if d.swap else [])
        rm = " (removable)" if d.removable else ""
        print(
            f"{d.path:<12} {fmt_bytes(d.size):>10}  {d.bus or '':<7} {(d.model or '')[:24]:<24} "
            f"{(d.serial or '')[:20]:<20} {', '.join(use) or '-'}{rm}"
        )
        if notes[d.path]:
            print(f"{'':<12} PARTLY WRITTEN: {notes[d.path]}")
    return 0


def _sectors_lost(lost: int) -> int:
    """A copy with unreadable sectors is done but not clean: one line on stderr and its own
    exit code, so that a script cannot take it for a clean one."""
    print(f"rescue: incomplete: {lost} unreadable sectors were zero-filled", file=sys.stderr)
    return SECTORS_LOST


def _bad_sector_policy(text: str) -> int:
    """'skip' → 0 retry passes, 'retry=N' → N."""
    if text == "skip":
        return 0
    if text.startswith("retry=") and text[6:].isdigit() and int(text[6:]) <= 100:
        return int(text[6:])
    raise argparse.ArgumentTypeError(f"expected skip or retry=N (N up to 100), not {text!r}")


def cmd_capture(args) -> int:
    engine = _engine(args)
    drive = None if args.name else engine.drive(args.disk)
    interrupted = engine.interrupted_capture(drive, args.repo, args.name)
    if interrupted:  # the same capture again: go on where it stopped
        name = interrupted[0]
        print(f"rescue: resuming the interrupted capture {name}: {interrupted[1]:.0%} already read", file=sys.stderr)
    else:
        name = args.name or engine.default_image_name(engine.drive(args.disk))
    bar = TerminalProgress()
    # SIGTERM stops a capture as Ctrl-C does: it keeps what it read, to be resumed.
    default_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = engine.capture(
            args.disk,
            args.repo,
            name,
            bar,
            threading.Event(),
            level=args.level,
            threads=args.threads,
            retries=args.bad_sectors,
        )
    finally:
        signal.signal(signal.SIGTERM, default_term)
        bar.close()
    print(
        f"captured {args.disk} as {result.name}: read {fmt_bytes(result.bytes_read)}, "
        f"stored {fmt_bytes(result.stored_bytes)} new, {result.seconds:.1f} s"
    )
    if result.sectors_lost:
        from rescue.filesystems.badfiles import damaged_files, read_badfiles
        from rescue.repo.store import Repository

        hit = damaged_files(read_badfiles(Repository.open(args.repo), result.name))
        print(
            f"WARNING: {result.sectors_lost} sectors could not be read and were zero-filled, in "
            f"{len(result.bad_ranges)} places"
            + (f", hitting {len(hit)} file{'s' if len(hit) > 1 else ''}" if hit else "")
            + "; the map is badsectors.map in the image (rescue info shows them)"
        )
        return _sectors_lost(result.sectors_lost)
    return 0


def cmd_list(args) -> int:
    """Every entry of the repository's images/, none hidden: a damaged image with the reason,
    leftovers of interrupted captures, and whatever else lies there. Names come from the
    directory and may hold anything: they are printed with control characters replaced
    visibly (JSON escapes them itself)."""
    from rescue.repo.manifest import printable

    listing = _engine(args).listing(args.repo)
    if args.json:
        _print_json([asdict(i) for i in listing.images])
        return 0
    print(f"{'NAME':<32} {'DATE':<20} {'SOURCE':<24} {'SIZE':>10} {'DATA':>10} {'NEW':>10}  VERIFIED")
    for i in listing.images:
        name = printable(i.name)
        if i.damaged is not None:
            print(f"{name:<32} DAMAGED: {printable(i.damaged)}")
            continue
        ok = {True: "yes", False: "DAMAGED", None: "-"}[i.verified]
        print(
            f"{name:<32} {printable(i.created):<20} {printable(i.source_model)[:24]:<24} "
            f"{fmt_bytes(i.source_size):>10} {fmt_bytes(i.data_bytes):>10} {fmt_bytes(i.stored_bytes):>10}  {ok}"
        )
    for name in listing.incomplete:
        print(f"{printable(name):<32} (incomplete: capture was interrupted; not restorable)")
    for name, why in listing.foreign:
        print(f"{printable(name):<32} (not an image: {printable(why)})")
    return 0


def cmd_info(args) -> int:
    from rescue.repo.store import Repository

    m = _engine(args).manifest(args.repo, args.name)
    if args.json:
        _print_json(asdict(m))
        return 0
    src = m.source
    if m.hash == "clonezilla":  # rescue.clonezilla.source.FOREIGN: read from its directory
        print(f"Clonezilla image {m.name}, saved {m.created} by: {m.rescue_version}")
    else:
        print(f"image {m.name}, captured {m.created} by rescue {m.rescue_version}")
    print(
        f"source: {src.get('path')} {src.get('model') or ''} {src.get('serial') or ''} "
        f"{fmt_bytes(src.get('size', 0))}, {src.get('logical_sector_size')}/"
        f"{src.get('physical_sector_size')}-byte sectors"
    )
    lay = m.layout
    print(f"table: {lay.table}" + (f", id {lay.disk_id}" if lay.disk_id else ""))
    print(f"{'#':>3} {'START':>10} {'END':>10} {'SIZE':>10}  {'TYPE':<38} {'FS':<6} {'LABEL':<12} USED")
    for p in lay.partitions:
        area = next((a for a in m.areas if a.partition == p.number), None)
        fs = (area.fs or {}) if area else {}
        ptype = p.type_guid or (f"0x{p.mbr_type:02x}" if p.mbr_type is not None else "")
        used_bytes = fs.get("used_bytes")
        used = fmt_bytes(used_bytes) if used_bytes is not None else "-"
        print(
            f"{p.number:>3} {p.start:>10} {p.end:>10} {fmt_bytes(p.size(lay.sector_size)):>10}  "
            f"{ptype:<38} {fs.get('type') or '-':<6} {(fs.get('label') or '')[:12]:<12} {used}"
        )
        extra = [
            f"name {p.name!r}" if p.name else "",
            f"flags {','.join(p.flags)}" if p.flags else "",
            f"uuid {fs['uuid']}" if fs.get("uuid") else "",
        ]
        if any(extra):
            print("      " + "; ".join(e for e in extra if e))
    for line in _engine(args).windows_lines(m):
        print(line)
    for line in _engine(args).stack_lines(args.repo, m):
        print(line)
    print(f"data {fmt_bytes(m.stats.get('data_bytes', 0))}, stored new {fmt_bytes(m.stats.get('stored_bytes', 0))}")
    if m.stats.get("sectors_lost"):
        print(f"bad sectors: {m.stats['sectors_lost']} unreadable, zero-filled (map: {m.stats.get('bad_map')})")
        _print_bad_ranges(Repository.open(args.repo), m)
    return 0


def _print_bad_ranges(repo, m, limit: int = 20) -> None:
    from rescue.filesystems.badfiles import damaged_files, range_key, read_badfiles
    from rescue.model.badmap import parse_mapfile

    try:
        raw = repo.read_image_file(m.name, m.stats["bad_map"])  # a regular file of bounded size, or None
        if raw is None:
            raise OSError("missing")
        bad = parse_mapfile(raw.decode(errors="replace")).bad_ranges()
    except (OSError, RescueError):
        print("  (the bad-sector map is missing or unreadable)")
        return
    hits = read_badfiles(repo, m.name)
    for start, length in bad[:limit]:
        area = next((a for a in m.areas if a.offset <= start < a.offset + a.size), None)
        where = f"{area.name}+{start - area.offset}" if area else "outside partitions"
        files = hits.get(range_key(start, length))
        print(
            f"  bytes {start}-{start + length - 1} ({length // 512} sectors) in {where}"
            + (f"; hits: {', '.join(files)}" if files else "")
        )
    if len(bad) > limit:
        print(f"  ... and {len(bad) - limit} more ranges")
    if damaged := damaged_files(hits):
        more = f", and {len(damaged) - limit} more (all in badfiles.json)" if len(damaged) > limit else ""
        print(f"files hit by bad sectors ({len(damaged)}): {', '.join(damaged[:limit])}{more}")


def cmd_verify(args) -> int:
    engine = _engine(args)
    bar = TerminalProgress()
    try:
        result = engine.verify(args.repo, args.name, bar, threading.Event())
    finally:
        bar.close()
    print(f"image {result.name} is intact: {result.chunks} chunks, {fmt_bytes(result.bytes)} checked")
    if args.disk:
        compared = engine.verify_drive(args.repo, args.name, args.disk)
        print(f"{args.disk}: the {fmt_bytes(compared)} outside its partitions match the image")
    return 0


def confirm_target(disk: str, assume_yes: bool) -> None:
    """The person types the drive's name; --yes is the only way around it."""
    if assume_yes:
        return
    name = os.path.basename(os.path.realpath(disk))
    if not sys.stdin.isatty():
        raise RefusedError(f"refusing to overwrite {disk} without confirmation: run on a terminal or pass --yes")
    answer = input(f"Everything on {disk} will be erased. Type '{name}' to continue: ").strip()
    if answer != name:
        raise RefusedError("not confirmed; nothing was written")


def cmd_restore(args) -> int:
    engine = _engine(args)
    if is_multicast(args.repo):
        return _restore_multicast(engine, args)
    plan = engine.plan_restore(
        args.repo, args.name, args.disk, args.layout, scratch_dir=args.scratch, fresh_ids=args.new_ids
    )
    print(planview.text(plan))
    if plan.fits:
        engine.check_target(args.disk, repo_path=args.repo)
        confirm_target(args.disk, args.yes)
    bar = TerminalProgress()
    try:
        result = engine.restore(
            args.repo,
            args.name,
            args.disk,
            plan,
            bar,
            threading.Event(),
            preverify=False if args.no_preverify else None,
        )
    finally:
        bar.close()
    print(
        f"restored {args.name} onto {args.disk}: wrote {fmt_bytes(result.bytes_written)} in "
        f"{result.seconds:.1f} s" + (f"; log: {result.log_path}" if result.log_path else "")
    )
    for w in result.warnings:
        print(f"WARNING: {w}")
    return 0


def _restore_multicast(engine: Engine, args) -> int:
    """Confirmed before joining (the session waits for nobody), planned once the header came."""
    engine.check_target(args.disk)
    confirm_target(args.disk, args.yes)
    print(f"joining the multicast session on {args.repo} ...")
    given = getattr(args, "password_file", None) or _env_password is not None
    joined = engine.join_multicast(args.repo, args.name, _password(args, args.repo)[0] if given else None)
    plan = engine.plan_multicast(joined, args.disk, args.layout, scratch_dir=args.scratch, fresh_ids=args.new_ids)
    print(planview.text(plan))
    bar = TerminalProgress()
    try:
        result = engine.receive_multicast(joined, args.disk, plan, bar, threading.Event(), print)
    finally:
        bar.close()
    print(f"restored {joined.name} onto {args.disk} from {args.repo}: wrote {fmt_bytes(result.bytes_written)}")
    for w in result.warnings:
        print(f"WARNING: {w}")
    return 0


def cmd_serve(args) -> int:
    from rescue.multicast.udpcast import Options

    options = Options(
        args.interface,
        args.portbase,
        args.receivers,
        args.wait,
        args.max_rate,
        args.fec,
        args.async_mode,
        args.retries_until_drop,
    )
    bar = TerminalProgress()
    try:
        sent = _engine(args).serve_multicast(args.repo, args.name, options, print, bar, threading.Event())
    finally:
        bar.close()
    print(
        f"sent {args.name}: {fmt_bytes(sent.stream_bytes)} in {sent.seconds:.1f} s to {len(sent.receivers)} "
        f"receivers; read {fmt_bytes(sent.read_bytes)} from the repository"
        + (f"; packets sent again: {sent.retransmits}" if sent.retransmits else "")
    )
    for p in sent.receivers:  # udpcast knows delivery; each receiver says how its restore ended
        print(f"receiver {p.number + 1} {p.address}: {p.words()}")
    return 0 if all(p.status == "ok" for p in sent.receivers) else IntegrityError.exit_code


def cmd_unattended(args) -> int:
    """The fleet's job (rescue.fleet): parameters checked whole before anything else."""
    from rescue.fleet import finish, order, run

    if args.cmdline is not None:
        text = args.cmdline
    else:
        with open("/proc/cmdline") as f:
            text = f.read()
    mirrors: list[IO[str]] = []
    for path in args.mirror:
        try:
            mirrors.append(open(path, "w"))  # noqa: SIM115 (closed below)
        except OSError as e:
            print(f"rescue: not mirroring to {path}: {e.strerror}", file=sys.stderr)
    console = run.Console(sys.stdout, mirrors)
    try:
        try:
            wanted = order.parse(text)
        except RescueError as e:
            result = run.Result("failed", reason=str(e), code=e.exit_code)
            console.say(result.line())
            finish.after(None, result, console, act=args.finish)
            return result.exit_code
        if wanted.s3_endpoint:
            _use_s3_endpoint(wanted.s3_endpoint)
        engine = Engine(cfg=_cfg(args), include_loop=wanted.loops)
        try:
            machine = run.Machine(args.machine_id) if args.machine_id else run.Machine.read()
            result = run.Job(wanted, engine, console, machine).run()
        finally:
            engine.close()
        finish.after(wanted, result, console, act=args.finish)
        return result.exit_code
    finally:
        for m in mirrors:
            m.close()


def cmd_clone(args) -> int:
    engine = _engine(args)
    engine.check_source(args.source)
    engine.check_target(args.target, source=args.source)
    plan = engine.plan_clone(args.source, args.target, args.layout, scratch_dir=args.scratch, fresh_ids=args.new_ids)
    print(planview.text(plan))
    if rc := _refused_plan(plan):
        return rc
    confirm_target(args.target, args.yes)
    bar = TerminalProgress()
    try:
        result = engine.clone(args.source, args.target, plan, bar, threading.Event(), retries=args.bad_sectors)
    finally:
        bar.close()
    print(
        f"cloned {args.source} onto {args.target}: wrote {fmt_bytes(result.bytes_written)} in "
        f"{result.seconds:.1f} s" + (f"; log: {result.log_path}" if result.log_path else "")
    )
    if result.sectors_lost:
        print(
            f"WARNING: {result.sectors_lost} sectors could not be read and were zero-filled, in "
            f"{len(result.bad_ranges)} places"
        )
    for w in result.warnings:
        print(f"WARNING: {w}")
    return _sectors_lost(result.sectors_lost) if result.sectors_lost else 0


def cmd_plan(args) -> int:
    """What `restore` would do, refused by the same rules in the same words."""
    engine = _engine(args)
    engine.check_target(args.disk, repo_path=args.repo)
    plan = engine.plan_restore(
        args.repo, args.name, args.disk, args.layout, scratch_dir=args.scratch, fresh_ids=args.new_ids
    )
    if args.json:
        _print_json(planview.to_json(plan))
    else:
        print(planview.text(plan))
    return _refused_plan(plan)


def _refused_plan(plan) -> int:
    """0 when the plan can be carried out; else the refusal the job itself would give (the
    same words, one line on stderr) and its exit code."""
    try:
        plan.check()
    except RescueError as e:
        print(f"rescue: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _disk_size(text: str) -> int:
    """A disk's size: bytes, or a number with K, M, G or T (powers of 1024, as qemu-img reads
    them): "200G", "1.5T"."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip().upper())
    value = float(m.group(1)) * (1 << (10 * " KMGT".index(m.group(2) or " "))) if m else 0
    if value <= 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a size such as 200G, 512M or 1073741824, not {text!r}")
    return int(value)


def cmd_export(args) -> int:
    engine = _engine(args)
    plan = engine.plan_export(
        args.repo,
        args.name,
        args.output,
        args.size,
        args.layout,
        scratch_dir=args.scratch,
        fresh_ids=args.new_ids,
        force=args.force,
    )
    print(planview.text(plan.restore))
    bar = TerminalProgress()
    try:
        result = engine.export(args.repo, plan, bar, threading.Event())
    finally:
        bar.close()
    print(
        f"exported {args.name} to {result.output}: {result.fmt}, {fmt_bytes(result.size)} disk, "
        f"{fmt_bytes(result.allocated)} on disk, {result.seconds:.1f} s"
        + (f"; log: {result.log_path}" if result.log_path else "")
    )
    for w in result.warnings:
        print(f"WARNING: {w}")
    return 0


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images, 1 or more, not {text!r}")
    return int(text)


def cmd_delete(args) -> int:
    _engine(args).delete_image(args.repo, args.name)
    print(f"deleted image {args.name} (its chunks stay until `rescue prune {args.repo}`)")
    return 0


def cmd_prune(args) -> int:
    r = _engine(args).prune(args.repo, keep_last=args.keep_last, keep_daily=args.keep_daily, dry_run=args.dry_run)
    would = "would remove" if r.dry_run else "removed"
    for name in r.forgotten:
        print(f"{would} image {name}")
    for name in r.incomplete:
        print(f"{would} what an interrupted capture left: {name}")
    print(
        f"{would} {r.chunks_removed} chunks, {fmt_bytes(r.bytes_removed)}; "
        f"kept {len(r.kept)} images, {r.chunks_kept} chunks, {fmt_bytes(r.bytes_kept)}"
    )
    return 0


def cmd_import(args) -> int:
    bar = TerminalProgress()
    try:
        r = _engine(args).import_clonezilla(args.czdir, args.repo, args.name, bar, threading.Event())
    finally:
        bar.close()
    print(
        f"imported {args.czdir} as {r.name}: read {fmt_bytes(r.bytes_read)}, stored "
        f"{fmt_bytes(r.stored_bytes)} new, {r.seconds:.1f} s"
    )
    return 0


def cmd_copy(args) -> int:
    bar = TerminalProgress()
    try:
        r = _engine(args).copy_image(args.src, args.name, args.dst, bar)
    finally:
        bar.close()
    print(
        f"copied {r.name}: {r.copied} of {r.chunks} chunks travelled ({fmt_bytes(r.copied_bytes)}), "
        f"the rest were there already, {r.seconds:.1f} s"
    )
    return 0


def cmd_init(args) -> int:
    engine = _engine(args)
    password = _password(args, args.repo, twice=True)[0] if args.encrypt else None
    engine.create_repository(args.repo, password)
    print(f"made {'an encrypted' if args.encrypt else 'a'} repository at {args.repo}")
    if args.encrypt:
        print("without its password no image in it can be read: keep it safe (`rescue key add` adds another)")
    return 0


def cmd_key(args) -> int:
    engine = _engine(args)
    if args.action == "list":
        for k in engine.list_keys(args.repo):
            if isinstance(k, tuple):
                print(f"{k[0]}  DAMAGED: {k[1]}")
            else:
                print(f"{k.id}  created {k.created} on {k.host or '-'}  {k.kdf}")
        return 0
    if args.action == "add":
        if args.id:
            raise UsageError("rescue key add takes no key id")
        password = _password(args, "the new key", twice=True, file=args.new_password_file or "", env=False)[0]
        print(f"added key {engine.add_password(args.repo, password)}")
        return 0
    if not args.id:
        raise UsageError("rescue key remove needs the id of the key (`rescue key list` shows them)")
    engine.remove_password(args.repo, args.id)
    print(f"removed key {args.id}")
    return 0


def cmd_unlock(args) -> int:
    print(_engine(args).unlock(args.repo, force=args.force))
    return 0


def cmd_wizard(args) -> int:
    from rescue.tui.app import main as wizard_main

    return wizard_main(args.extra)

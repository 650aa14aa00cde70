"""Run inside the rescue ISO (QEMU) by tests/vm/test_places.py: the engine the wizard runs on,
on the ISO's own kernel (exFAT, NTFS through ntfs-3g, CIFS, NFS), driven step by step from
the host over the serial line. Each step prints one `PLACES <step> ok ...` or
`PLACES <step> failed: <one line>` line, which the host waits for.

    python3 places_guest.py STEP [ARGS...]

Drives are named by their virtio serial (/dev/disk/by-id/virtio-<serial>), shares by what
the host passes; nothing here knows the host's paths."""

from __future__ import annotations

import sys
import threading
import time
import traceback

from rescue.engine import Engine
from rescue.errors import RescueError
from rescue.hw.netmount import NfsExport, SmbShare


def by_id(serial: str) -> str:
    import os

    return os.path.realpath(f"/dev/disk/by-id/virtio-{serial}")


def nothing(_progress: object) -> None:
    pass


def dest_on(engine: Engine, source, serial: str):
    drive = engine.drive(by_id(serial))
    dests = engine.destinations(source, engine.capture_need(source) if source else None)
    return next(d for d in dests if d.place.drive == drive.name)


def capture_onto(engine: Engine, dest, source, name: str) -> str:
    """What the wizard's capture step does: mount for the job, capture, verify, unmount."""
    repo = engine.open_destination(dest)
    try:
        started = time.monotonic()
        out = engine.capture(source.path, repo, name, nothing, threading.Event())
        engine.verify(repo, out.name, nothing, threading.Event())
    finally:
        engine.close_destination(repo)
    return f"read={out.bytes_read} stored={out.stored_bytes} seconds={time.monotonic() - started:.1f}"


def restore_from(engine: Engine, repo: str, name: str, target_serial: str) -> str:
    target = by_id(target_serial)
    plan = engine.plan_restore(repo, name, target, "auto")
    started = time.monotonic()
    out = engine.restore(repo, name, target, plan, nothing, threading.Event())
    return f"written={out.bytes_written} seconds={time.monotonic() - started:.1f} verified={out.verified}"


def share(kind: str, spec: str, password: str = ""):
    """smb SERVER:PORT/SHARE USER or nfs SERVER:PORT:/PATH."""
    if kind == "smb":
        where, user = spec.split(" ", 1) if " " in spec else (spec, "")
        hostport, name = where.split("/", 1)
        host, port = hostport.split(":")
        return SmbShare(host, name, user=user, password=password, port=int(port))
    host, port, path = spec.split(":", 2)
    return NfsExport(host, path, port=int(port))


def step(engine: Engine, name: str, args: list[str]) -> str:
    source = engine.drive(by_id("SYSTEM"))  # the drive every capture reads
    if name == "capture-drive":  # SERIAL IMAGE: onto the filesystem on that drive
        serial, image = args
        return capture_onto(engine, dest_on(engine, source, serial), source, image)
    if name == "prepare-capture":  # SERIAL IMAGE: a blank drive, prepared, then captured onto
        serial, image = args
        dest = dest_on(engine, source, serial)
        assert dest.place.blank and dest.refusal is None, dest
        prepared = engine.prepare_drive(dest)
        return f"{prepared.place.device} {prepared.place.fstype} " + capture_onto(engine, prepared, source, image)
    if name == "restore-drive":  # SERIAL IMAGE TARGET: from the repository found on that drive
        serial, image, target = args
        drive = engine.drive(by_id(serial))
        repo = next(r for r in engine.find_repositories() if r.drive == drive.name)
        return restore_from(engine, repo.path, image, target)
    if name == "share-refused":  # KIND SPEC PASSWORD: the words of a refused mount
        kind, spec, password = args
        try:
            engine.open_share(share(kind, spec, password))
        except RescueError as e:
            return f"refused: {e}"
        return "mounted (not refused)"
    if name == "capture-share":  # KIND SPEC PASSWORD IMAGE
        kind, spec, password, image = args
        dest = engine.open_share(share(kind, spec, password), source, engine.capture_need(source))
        assert dest.refusal is None, dest.refusal
        return capture_onto(engine, dest, source, image)
    if name == "restore-share":  # KIND SPEC PASSWORD IMAGE TARGET
        kind, spec, password, image, target = args
        repo = engine.share_repository(engine.open_share(share(kind, spec, password)))
        return restore_from(engine, repo.path, image, target)
    if name == "copy-out":  # REPO_SERIAL IMAGE PARTITION PATH STICK_SERIAL: browse, copy onto the stick
        serial, image, number, path, stick = args
        drive = engine.drive(by_id(serial))
        repo = next(r for r in engine.find_repositories() if r.drive == drive.name)
        part = next(p for p in engine.image_partitions(repo.path, image) if p.number == int(number))
        session = engine.browse_open(repo.path, image, part)
        try:
            dest = dest_on(engine, None, stick)
            folder = engine.open_destination(dest, folder=f"rescue-files/{image}-p{number}")
            try:
                out = engine.copy_files(session, [path], folder, nothing, threading.Event())
            finally:
                engine.close_destination(folder)
        finally:
            engine.browse_close(session)
        return f"files={out.files} bytes={out.bytes}"
    raise SystemExit(f"unknown step {name}")


def main() -> int:
    name, args = sys.argv[1], sys.argv[2:]
    password = ""
    if name in ("share-refused", "capture-share", "restore-share"):
        password = sys.stdin.readline().rstrip("\n")  # never on the command line
        args = [args[0], args[1], password, *args[2:]]
    engine = Engine()
    try:
        print(f"PLACES {name} ok {step(engine, name, args)}", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - one line for the host, the traceback for the log
        traceback.print_exc()
        print(f"PLACES {name} failed: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())

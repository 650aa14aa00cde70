"""An order carried out unattended, through the same engine API, safety rules and plans as
the wizard and the CLI: no second path to a drive.

Everything it says goes to the screen and the serial line as whole lines (a technician reads
them on tty1; a PXE lab reads them from a serial console or the stored log), and the last one
is the result a script can rely on:

    RESCUE-RESULT status=ok image=lab-2026 target=/dev/sda bytes=4294967296 seconds=182.4
    RESCUE-RESULT status=failed image=lab-2026 target=- bytes=0 seconds=3.1 reason=...

status is ok, failed, planned (no rescue.confirm=destroy: the plan was shown, nothing
written) or skipped (this machine was already restored with this image). On a writable
repository the lines are stored under fleet/logs/, and a restore that succeeded leaves
fleet/done/<machine>.json, keyed by the machine's DMI UUID, so that netbooting the same
machine again does not restore it again unless rescue.force=1."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rescue import planview
from rescue.errors import INTERNAL, Cancelled, RefusedError, RepoError, RescueError
from rescue.fleet import credentials
from rescue.fleet.order import Drive, Order, matching
from rescue.imaging.progress import Progress, fmt_bytes
from rescue.multicast.udpcast import is_multicast

DMI = "/sys/class/dmi/id"
NET = "/sys/class/net"
# What boards ship when nobody set a UUID: every such machine would share one marker.
PLACEHOLDER_UUIDS = frozenset(
    {
        "",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",
    }
)
PROGRESS_EVERY = 10.0  # seconds between progress lines (lines, not a redrawn bar: they are logged)
NETWORK_WAIT = 120.0  # seconds a job on a server waits for an address before it fails
RESULT = "RESCUE-RESULT"
MAX_LOG = 1 << 20


@dataclass
class Machine:
    """Who this machine is, for names, markers and logs: the DMI UUID (QEMU's -uuid), serial
    number, the MAC address of its first network card, and its host name; any may be empty."""

    uuid: str = ""
    serial: str = ""
    mac: str = ""
    hostname: str = ""

    @classmethod
    def read(cls, dmi: str = DMI, net: str = NET) -> Machine:
        def get(path: str) -> str:
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError:
                return ""

        macs = sorted(
            get(os.path.join(net, n, "address"))
            for n in (os.listdir(net) if os.path.isdir(net) else [])
            if os.path.exists(os.path.join(net, n, "device"))  # a card, not lo or a bridge
        )
        uuid = get(os.path.join(dmi, "product_uuid")).lower()
        return cls(
            "" if uuid in PLACEHOLDER_UUIDS else uuid,
            _usable_serial(get(os.path.join(dmi, "product_serial"))),
            next((m for m in macs if m and m != "00:00:00:00:00:00"), ""),
            socket.gethostname(),
        )

    @property
    def known(self) -> bool:
        """Whether anything tells this machine from another (every ISO's host name is "rescue")."""
        return bool(self.uuid or self.serial or self.mac)

    @property
    def key(self) -> str:
        """The name of this machine's marker and logs: DMI UUID, serial and MAC together, since
        boards ship duplicate UUIDs; the host name only when none of them is known."""
        parts = [p for p in (self.uuid, self.serial, self.mac.replace(":", "")) if p]
        return _safe("_".join(parts) if parts else self.hostname or "unknown")


def _usable_serial(s: str) -> str:
    """Firmware fills the serial field with placeholders more often than not."""
    placeholders = ("", "0", "none", "default string", "to be filled by o.e.m.", "system serial number")
    return "" if s.lower() in placeholders else s


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.")[:64] or "unknown"


@dataclass
class Console:
    """Whole lines to stdout and to every mirror (the serial line when run on the screen),
    kept for the stored log. A mirror that cannot be written is dropped, never fatal."""

    out: IO[str]
    mirrors: list[IO[str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            stamped = f"{time.strftime('%H:%M:%S')} {line}"
            self.lines.append(stamped)
            for f in [self.out, *self.mirrors]:
                try:
                    f.write(line + "\n")
                    f.flush()
                except OSError:
                    self.mirrors = [m for m in self.mirrors if m is not f]


@dataclass
class Result:
    status: str  # ok, failed, planned, skipped
    image: str = "-"
    target: str = "-"
    bytes: int = 0
    seconds: float = 0.0
    reason: str = ""
    code: int = 1  # the exit status when it failed: the error's own (rescue/errors.py)

    def line(self) -> str:
        text = (
            f"{RESULT} status={self.status} image={self.image} target={self.target} "
            f"bytes={self.bytes} seconds={self.seconds:.1f}"
        )
        return text + (f" reason={' '.join(self.reason.split())}" if self.reason else "")

    @property
    def exit_code(self) -> int:
        return self.code if self.status == "failed" else 0


class Lines:
    """Progress as a line every PROGRESS_EVERY seconds and at each new phase."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic):
        self.console, self.clock = console, clock
        self.last, self.phase = -PROGRESS_EVERY, ""

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        if p.phase == self.phase and now - self.last < PROGRESS_EVERY and p.done < p.total:
            return
        self.last, self.phase = now, p.phase
        pct = f"{100 * p.done // p.total}%" if p.total else "-"
        eta = f", {int(p.eta) // 60}:{int(p.eta) % 60:02d} left" if p.eta is not None else ""
        self.console.say(
            f"{p.phase}: {pct} {fmt_bytes(p.done)} of {fmt_bytes(p.total)}, {fmt_bytes(int(p.rate))}/s{eta}"
        )


def drives_for_rules(engine: Any) -> list[Drive]:
    """The machine's drives as the rules see them, the live system's boot medium marked."""
    boot = engine.boot_medium()
    return [
        Drive(d.path, d.model, d.serial, d.size, d.bus, d.removable, boot is not None and d.path == boot)
        for d in engine.list_drives()
    ]


def describe(d: Drive) -> str:
    extra = ", removable" if d.removable else ""
    extra += ", the boot medium" if d.boot_medium else ""
    return f"{d.path} ({d.model}, serial {d.serial}, {fmt_bytes(d.size)}, {d.bus}{extra})"


def choose_drive(order: Order, drives: Sequence[Drive], role: str) -> Drive:
    """Exactly one drive, or a refusal listing what the rules found (or every drive)."""
    rules = ",".join(str(r) for r in order.rules)
    found = matching(order.rules, drives)
    if len(found) == 1:
        return found[0]
    shown = found or list(drives)
    listed = "; ".join(describe(d) for d in shown) or "no drives at all"
    what = "no drive matches" if not found else f"{len(found)} drives match"
    raise RefusedError(
        f"{what} rescue.{role}={rules}, so nothing was written; {'drives' if not found else 'they'}: {listed}"
    )


def _is_network(location: str) -> bool:
    return "://" in location


class Job:
    """One unattended order, start to result."""

    def __init__(self, order: Order, engine: Any, console: Console, machine: Machine):
        self.order, self.engine, self.console, self.machine = order, engine, console, machine
        self.result = Result("failed", image=order.image or "-")
        self.repo_path: str | None = None
        self.writable = False  # the log and marker can be stored in the repository
        self.opened: str | None = None  # a destination mounted read-write for a capture
        self.source: Drive | None = None  # the drive a capture reads
        self.target: Drive | None = None  # the drive a restore writes
        self.secrets: credentials.Secrets | None = None  # from rescue.credentials=
        self.aws_file: Path | None = None  # where its S3 keys were put for this job

    # where the repository is ---------------------------------------------------------------
    def wait_for_network(self, limit: float = NETWORK_WAIT) -> None:
        from rescue.hw.network import addresses

        start = time.monotonic()
        said = 0.0
        while not addresses():
            waited = time.monotonic() - start
            if waited >= limit:
                raise RepoError(f"no network address after {int(limit)} s: is a cable plugged in and DHCP served?")
            if waited - said >= 10:
                self.console.say(f"waiting for the network ({int(waited)} s)")
                said = waited
            time.sleep(1)

    def take_credentials(self) -> None:
        """The job's secrets, fetched before anything is opened; the console names what came
        and from where, never a value."""
        where = self.order.credentials
        if where is None:
            return
        if _is_network(where):
            self.wait_for_network()
        self.secrets = credentials.parse(credentials.fetch(where), where)
        self.aws_file = credentials.install(self.secrets, Path(self.engine.login_dir or "/run/rescue"))
        self.console.say(f"credentials: {self.secrets.kinds()} from {where}")

    def unlock(self, repo: str) -> None:
        """An encrypted repository opens with the credentials file's password."""
        if not self.engine.repository_encrypted(repo):
            return
        password = self.secrets.password if self.secrets is not None else None
        if password is None:
            raise RepoError(
                f"{repo} is encrypted: put its password in the file rescue.credentials= names "
                "([rescue] password = ...; docs/fleet.md)"
            )
        self.engine.enter_password(repo, password)

    def locate(self) -> tuple[str, bool]:
        """The repository's path or URL, and whether the log and marker can be stored there;
        for a capture, the place it is on mounted read-write (a restore's drives and shares
        stay mounted read-only, as the survey mounted them)."""
        where = self.order.repo
        capture = self.order.mode == "capture"
        kind, _, value = where.partition(":")
        if kind in ("label", "uuid") and not where.startswith(("label://", "uuid://")):
            return self._on_drive(kind, value), capture
        if where.lower().startswith(("smb://", "nfs://")):
            self.wait_for_network()
            from rescue.hw.netmount import parse_place

            dest = self.engine.open_share(parse_place(where), self._source_info())
            return (self._use(dest) if capture else self.engine.share_repository(dest).path), capture
        if _is_network(where):
            self.wait_for_network()
        if capture:
            return where, True
        info = self.engine.open_repository(where)
        return str(info.path), not info.read_only

    def _source_info(self) -> Any:
        return self.engine.drive(self.source.path) if self.source is not None else None

    def _on_drive(self, kind: str, value: str) -> str:
        for dest in self.engine.destinations(self._source_info()):
            p = dest.place
            got = p.label if kind == "label" else self.engine.machine.probe(p.device).get("UUID", "")
            if got and got == value:
                if self.order.mode == "capture":
                    return self._use(dest)
                if dest.repo is None:
                    raise RepoError(f"the filesystem with {kind} {value} ({p.device}) holds no image repository")
                return str(dest.repo)
        raise RepoError(f"no filesystem with {kind} {value} was found on this machine's drives")

    def _use(self, dest: Any) -> str:
        if dest.refusal:
            raise RefusedError(f"{self.engine.place_text(dest)} cannot take the image: {dest.refusal}")
        opened = str(self.engine.open_destination(dest))
        self.opened = opened
        return opened

    # the jobs --------------------------------------------------------------------------------
    def restore(self) -> None:
        order, engine = self.order, self.engine
        repo = self.repo_path
        assert repo is not None
        name = self.pick_image(repo)
        self.result.image = name
        if self.already_done(name):
            return
        target = self.target
        assert target is not None
        if not order.force and engine.drive_holds_image(repo, name, target.path):
            why = (
                f"{target.path} already holds {name} (the same disk id, partition and filesystem "
                "UUIDs; rescue.force=1 restores again)"
            )
            self.result = Result("skipped", name, target.path, reason=why)
            return
        plan = engine.plan_restore(repo, name, target.path, order.layout)
        self.console.say(planview.text(plan))
        plan.check()
        engine.check_target(target.path, repo_path=repo)
        if not order.confirmed:
            self.result = Result("planned", name, target.path, reason="no rescue.confirm=destroy: nothing was written")
            return
        self.result.target = target.path
        out = engine.restore(repo, name, target.path, plan, Lines(self.console), threading.Event())
        for w in out.warnings:
            self.console.say(f"WARNING: {w}")
        self.result = Result("ok", name, target.path, out.bytes_written, out.seconds)

    def choose_target(self) -> Drive:
        """The drive a restore writes, chosen before the network or the repository is waited
        for: rules that match no drive or several fail in seconds, listing the drives."""
        target = choose_drive(self.order, drives_for_rules(self.engine), "target")
        self.console.say(f"target: {describe(target)}")
        self.target = target
        return target

    def multicast_restore(self) -> None:
        """rescue.repo=multicast://IF[:PORTBASE]: the image comes from `rescue serve
        --multicast` (rescue.multicast). Joining needs the confirmation (the session waits for
        nobody); the plan is made once the stream's header came. Nothing is stored back: the
        stream is read-only, so no marker (a machine joins again only while a sender serves)."""
        order, engine, target = self.order, self.engine, self.target
        assert target is not None
        self.wait_for_network()
        engine.check_target(target.path)
        if not order.confirmed:
            why = "no rescue.confirm=destroy: a multicast restore joins only when confirmed; nothing was written"
            self.result = Result("planned", order.image, target.path, reason=why)
            return
        self.console.say(f"joining the multicast session on {order.repo}")
        password = self.secrets.password if self.secrets is not None else None
        joined = engine.join_multicast(order.repo, order.image, password)
        self.result.image = joined.name
        plan = engine.plan_multicast(joined, target.path, order.layout)
        self.console.say(planview.text(plan))
        if plan.fits:
            self.result.target = target.path
        out = engine.receive_multicast(
            joined, target.path, plan, Lines(self.console), threading.Event(), self.console.say
        )
        for w in out.warnings:
            self.console.say(f"WARNING: {w}")
        self.result = Result("ok", joined.name, target.path, out.bytes_written, out.seconds)

    def choose_source(self) -> Drive:
        """The drive a capture reads, chosen and checked before any place is mounted for it."""
        source = choose_drive(self.order, drives_for_rules(self.engine), "source")
        self.console.say(f"source: {describe(source)}")
        self.engine.check_source(source.path)
        self.source = source
        return source

    def capture(self) -> None:
        engine = self.engine
        repo, source = self.repo_path, self.source
        assert repo is not None and source is not None
        engine.check_source(source.path, repo_path=repo)
        m = self.machine
        ident = m.serial or m.uuid or m.mac.replace(":", "") or m.hostname
        name = engine.check_image_name(repo, f"{_safe(ident)}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.result.image = name
        out = engine.capture(source.path, repo, name, Lines(self.console), threading.Event())
        self.result = Result("ok", name, source.path, out.stored_bytes, out.seconds)
        if out.sectors_lost:
            self.result.reason = f"{out.sectors_lost} unreadable sectors were zero-filled"

    def pick_image(self, repo: str) -> str:
        images = [im for im in self.engine.list_images(repo) if not im.damaged]
        prefix = self.order.latest
        if prefix is None:
            if not any(im.name == self.order.image for im in images):
                raise RepoError(f"no image named {self.order.image} in {repo}")
            return self.order.image
        chosen = [im for im in images if im.name.startswith(prefix)]
        if not chosen:
            raise RepoError(f"no image whose name starts with {prefix!r} in {repo}")
        newest = max(chosen, key=lambda im: (im.created, im.name))
        self.console.say(f"image: {newest.name} (the newest of {len(chosen)} starting with {prefix!r})")
        return newest.name

    # what is stored beside the images ------------------------------------------------------
    def _repository(self) -> Any:
        from rescue.repo.store import Repository

        assert self.repo_path is not None
        return Repository.open(self.repo_path, s3_endpoint=self.order.s3_endpoint)

    def marker_key(self) -> str:
        return f"fleet/done/{self.machine.key}.json"

    def already_done(self, name: str) -> bool:
        if self.order.force or not self.machine.known:
            return False
        repo = self._repository()
        try:
            blob = repo.read_fleet_file(self.marker_key())
        finally:
            repo.close()
        if blob is None:
            return False
        try:
            done = json.loads(blob)
        except (ValueError, RecursionError):
            return False  # a marker we cannot read proves nothing: restore
        if not isinstance(done, dict) or done.get("image") != name:
            return False
        when = done.get("time", "?")
        why = f"this machine was restored with {name} at {when} (rescue.force=1 restores again)"
        self.result = Result("skipped", name, reason=why)
        return True

    def store(self) -> None:
        """The log, and after a restore that succeeded the marker; never fatal."""
        if not self.writable or self.repo_path is None:
            return
        try:
            repo = self._repository()
            try:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                log = "\n".join(self.console.lines).encode()[-MAX_LOG:]
                repo.write_fleet_file(f"fleet/logs/{self.machine.key}-{stamp}.log", log)
                if self.result.status == "ok" and self.order.mode == "restore":
                    marker = {"image": self.result.image, "target": self.result.target, "time": stamp}
                    repo.write_fleet_file(self.marker_key(), json.dumps(marker).encode())
            finally:
                repo.close()
        except (RescueError, OSError) as e:
            self.console.say(f"WARNING: the log could not be stored in the repository: {e}")

    def run(self) -> Result:
        start = time.monotonic()
        self.console.say(f"rescue unattended {self.order.mode}: {self.order.text}")
        self.console.say(f"this machine: {self.machine.key}")
        try:
            try:
                capture = self.order.mode == "capture"
                if capture:
                    self.choose_source()
                else:
                    self.choose_target()
                self.take_credentials()
                if not capture and is_multicast(self.order.repo):
                    self.multicast_restore()
                else:
                    self.repo_path, self.writable = self.locate()
                    self.console.say(f"repository: {self.repo_path}")
                    self.unlock(self.repo_path)
                    (self.capture if capture else self.restore)()
            except RescueError as e:
                self.result.status, self.result.reason, self.result.code = "failed", str(e), e.exit_code
            except KeyboardInterrupt:
                self.result.status, self.result.reason, self.result.code = "failed", "interrupted", Cancelled.exit_code
            except Exception as e:  # noqa: BLE001 (a bug of ours still ends in the result line and on_fail)
                self.result.status, self.result.code = "failed", INTERNAL
                self.result.reason = f"internal error (a bug in rescue, please report it): {type(e).__name__}: {e}"
            if not self.result.seconds:
                self.result.seconds = time.monotonic() - start
            self.console.say(self.result.line())
            self.store()
        finally:
            credentials.discard(self.aws_file)
            if self.opened:
                self.engine.close_destination(self.opened)
        return self.result

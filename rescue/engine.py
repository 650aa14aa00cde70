"""The one engine API under both front ends: the CLI and the wizard call this for every job.

Each decision lives here once: which drives are refused for which role (the safety rules),
which repositories a capture may write to, the default image name and the name rule, the
layout policies and the plans, what is browsable, the configuration (rescue.toml). The front
ends parse, draw, ask and print.

The engine works on a `rescue.machine.Machine`: the live one, or a recorded one for the
wizard's dry run. Over a recorded machine every question is answered by the same code; only
jobs differ: their actions go to the machine's LoggingRunner instead of a drive.

A plan is the engine's `RestorePlan` (model actions and all): the front end shows it, the
person confirms it, and `restore`/`clone` execute exactly that object."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescue import config as configuration
from rescue.errors import RefusedError, RepoError, RescueError, UsageError
from rescue.filesystems import lookup
from rescue.hw import devices
from rescue.hw.destination import REPO_FOLDER, Opened, writable_refusal
from rescue.hw.discover import Place
from rescue.hw.netmount import NfsExport, SmbShare
from rescue.imaging.apply import AreaFacts
from rescue.imaging.progress import Meter, Progress, fmt_bytes
from rescue.imaging.restore import POLICIES, RestorePlan, facts_of, plan_onto
from rescue.machine import LiveMachine, Machine, PartInfo, RecordedMachine
from rescue.model.layout import DiskLayout
from rescue.repo.logins import Remote, S3Login, SshLogin, SshSession
from rescue.repo.manifest import printable
from rescue.repo.store import ImageSummary as ImageInfo
from rescue.repo.store import check_name, same_name

ProgressFn = Callable[[Progress], None]
MIN_FREE = 1 << 30  # a capture destination with less than this is refused when the size is unknown
ON_SOURCE = "it is on the drive being captured"  # why a place there is not a capture's destination

__all__ = ["POLICIES", "Engine", "ImageInfo", "PartInfo"]


@dataclass
class DriveInfo:
    name: str  # kernel name, "sda"
    path: str  # "/dev/sda"
    model: str
    serial: str
    size: int  # bytes
    bus: str
    removable: bool = False
    partly_written: str | None = None  # an unfinished restore or clone onto it, in words


@dataclass
class RepoInfo:
    path: str
    drive: str | None = None  # kernel name of the drive holding it, when known
    read_only: bool = False
    clonezilla: bool = False  # a Clonezilla image directory: one image, read only (rescue.clonezilla)


@dataclass
class DestInfo:
    """A place images (or copied files) can be written to, as a front end lists it: a
    filesystem on a drive, or a blank drive that can be prepared; with why it may not be
    used, when it may not."""

    place: Place
    refusal: str | None = None
    drive_model: str = ""  # the model of the drive it is on, when the kernel tells

    @property
    def repo(self) -> str | None:
        """The repository already on it that a job writes into; None: a new one is made."""
        return self.place.repos[0] if self.place.repos else None


@dataclass
class RestoreOutcome:
    target_path: str
    bytes_written: int
    seconds: float
    verified: bool
    log_path: str
    warnings: list[str] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)  # the plan's actions, as executed


@dataclass
class CaptureOutcome:
    name: str
    bytes_read: int
    stored_bytes: int
    seconds: float
    log_path: str
    sectors_lost: int = 0  # unreadable sectors met (zero-filled)
    bad_ranges: list[tuple[int, int]] = field(default_factory=list)  # (byte offset, length)


@dataclass
class CloneOutcome:
    target_path: str
    bytes_written: int
    seconds: float
    sectors_lost: int
    bad_ranges: list[tuple[int, int]]
    log_path: str
    warnings: list[str] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)


@dataclass
class ImagePart:
    """One partition of an image, as the browse flow offers it."""

    number: int
    size: int
    fstype: str  # "" when unformatted
    label: str = ""
    used: int | None = None
    refused: str | None = None  # why it cannot be browsed (swap, no filesystem), None if it can

    @property
    def fat(self) -> bool:
        """FAT (the filesystem class says mtools reads it): listed only through the kernel's
        vfat, else copied whole with mtools."""
        fs = lookup(self.fstype)
        return fs is not None and fs.mtools


@dataclass
class BrowseSession:
    """A partition opened for browsing. `root` is where its files are (a private read-only
    mount), None for a FAT partition that neither the kernel nor fusefat could mount: that
    one is copied whole, with mtools."""

    repo_path: str
    image: str
    part: ImagePart
    root: str | None
    handle: Any = None  # the engine's own record (mount state)


def default_image_name(model: str, fallback: str, when: float | None = None) -> str:
    """The one rule for a new image's name: the drive's model and the date and time, reduced to
    the characters an image name may hold (rescue.repo.store.check_name)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    base = re.sub(r"[^A-Za-z0-9._+-]+", "-", model).strip("-.")
    try:
        return check_name(f"{base[:60]}-{stamp}")
    except UsageError:  # no model, or one no drive may hold as a name (NUL.x)
        return check_name(f"{fallback}-{stamp}")


def min_target_size(layout: DiskLayout, areas: list[AreaFacts]) -> int:
    """The smallest drive some layout policy fits `layout` onto (shrinking what may shrink).
    Pure: the planner is asked about an empty target and says how much it lacks."""
    from rescue.model.plan import POLICIES as PLAN_POLICIES
    from rescue.model.plan import plan_layout

    if layout.table == "none":
        return layout.size
    needs = []
    for policy in PLAN_POLICIES:
        try:
            lp = plan_layout(layout, facts_of(areas), 0, layout.sector_size, policy)
        except RescueError:
            continue
        needs.append(lp.shortfall)
    return min(needs) if needs else layout.end_bytes()


class Engine:
    """Every job of both front ends. Engine errors are RescueErrors with one-line messages."""

    def __init__(
        self,
        machine: Machine | None = None,
        cfg: configuration.Config | None = None,
        *,
        include_loop: bool = False,
        log_dir: str | None = None,
    ):
        self.machine: Machine = machine or LiveMachine()
        self.config = cfg or configuration.load()
        from rescue.repo import retry

        retry.configure(retry.Patience(timeout=self.config.network_timeout, give_up=self.config.network_give_up))
        self.include_loop = include_loop
        self.log_dir = log_dir
        self._located: list[Any] = []  # RepoLocations discovery mounted; released by close()
        self._surveyed: list[Place] = []  # places the survey mounted (read-only); released by close()
        self._opened: dict[str, Opened] = {}  # destinations mounted read-write, by repository path
        self._sources: dict[str, Any] = {}  # capture plans of source drives, read once per look

    @classmethod
    def recorded(cls, path: str, **kwargs: Any) -> Engine:
        """The engine over a machine recorded elsewhere: the wizard's dry run."""
        return cls(RecordedMachine.from_file(path), **kwargs)

    @property
    def dry_run(self) -> bool:
        return self.machine.recorded

    def close(self) -> None:
        """Unmount a destination a job left open (after an error), what discovery mounted
        (read-only); let go of a recorded machine."""
        try:
            for repo_path in list(self._opened):
                self.close_destination(repo_path)
        finally:
            located, self._located = self._located, []
            surveyed, self._surveyed = self._surveyed, []
            try:
                for place in surveyed:
                    self.machine.release_place(place)
            finally:
                self.machine.release(located)
                self.machine.close()

    # drives -------------------------------------------------------------------------------
    @staticmethod
    def _drive(d: devices.Drive, partly_written: str | None = None) -> DriveInfo:
        return DriveInfo(
            d.name, d.path, d.model or "unknown model", d.serial or "-", d.size, d.bus, d.removable, partly_written
        )

    def disks(self) -> list[tuple[devices.Drive, str | None]]:
        """Every drive with all the kernel says of it, and the unfinished restore or clone that
        left it partly written (rescue.hw.leftovers' markers: this machine's, so none on a
        recorded one)."""
        from rescue.hw import leftovers

        found = devices.list_drives(include_loop=self.include_loop, snap=self.machine.snapshot())
        if self.machine.recorded:
            return [(d, None) for d in found]
        return [(d, m.note() if (m := leftovers.partly_written(d)) else None) for d in found]

    def list_drives(self) -> list[DriveInfo]:
        return [self._drive(d, note) for d, note in self.disks()]

    def boot_medium(self) -> str | None:
        """The drive this rescue system booted from (/dev/sdb), None when not booted live."""
        return devices.boot_medium(snap=self.machine.snapshot())

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        """The drive's partitions with what blkid finds on each (the kernel's view, not a
        reading of the table: the plan step reads that)."""
        snap = self.machine.snapshot()
        d = snap.by_name(drive.name)
        out = []
        for name in d["partitions"] if d else []:
            pd = snap.by_name(name)
            if pd is None:
                continue
            props = pd["props"]
            found = (
                {"TYPE": props["ID_FS_TYPE"], "LABEL": props.get("ID_FS_LABEL", "")}
                if props.get("ID_FS_TYPE")
                else self.machine.probe(pd["node"])
            )
            size = int(pd["attrs"].get("size") or 0) * devices.SECTOR
            out.append(PartInfo(name, size, found.get("TYPE", ""), found.get("LABEL", "")))
        return out

    @staticmethod
    def _refused(check: Callable[[], object]) -> str | None:
        try:
            check()
        except RefusedError as e:
            return str(e)
        return None

    def check_target(self, path: str, *, repo_path: str | None = None, source: str | None = None) -> None:
        """Raise RefusedError naming the rule when the safety rules refuse writing to `path`
        (booted the rescue system, holds the repository, is the source, mounted, in use...)."""
        from rescue.hw.safety import check_target

        check_target(path, repo_path=_on_this_machine(repo_path), source=source)

    def check_source(self, path: str, *, repo_path: str | None = None) -> None:
        """Raise RefusedError when `path` cannot be read as a capture or clone source now."""
        from rescue.hw.safety import check_source

        check_source(path, _on_this_machine(repo_path))

    def target_refusal(self, drive: DriveInfo, repo_path: str | None) -> str | None:
        """Why restoring onto the drive is refused, or None."""
        return self._refused(lambda: self.check_target(drive.path, repo_path=repo_path))

    def source_refusal(self, drive: DriveInfo) -> str | None:
        """Why a drive cannot be read as a capture or clone source now, or None."""
        return self._refused(lambda: self.check_source(drive.path))

    def clone_refusal(self, target: DriveInfo, source: DriveInfo) -> str | None:
        return self._refused(lambda: self.check_target(target.path, source=source.path))

    # repositories ---------------------------------------------------------------------------
    def find_repositories(self) -> list[RepoInfo]:
        found = self.machine.find_repositories(self.include_loop)
        self._located += [r for r in found if r.mounted_by_us]
        return [
            RepoInfo(r.path, os.path.basename(r.drive) if r.drive else None, r.read_only, r.clonezilla) for r in found
        ]

    def open_repository(self, path: str) -> RepoInfo:
        """Raises RepoError when `path` is not a usable repository. A Clonezilla image
        directory is one too: read only, holding one image."""
        if not self.dry_run and _clonezilla(path) is not None:
            return RepoInfo(path, self._drive_holding(path), True, clonezilla=True)
        known = next((r for r in self.machine.find_repositories(self.include_loop) if r.path == path), None)
        if known is not None:
            return RepoInfo(known.path, known.drive, known.read_only, known.clonezilla)
        if self.dry_run:
            raise RepoError(f"{path} is not a rescue repository (no rescue-repo.json)")
        from rescue.repo.local import LocalStorage
        from rescue.repo.storage import open_storage
        from rescue.repo.store import Repository

        storage = open_storage(path)
        try:
            Repository.describe(storage)  # the checks of any opening; an encrypted one's key comes later
        finally:
            storage.close()
        if not isinstance(storage, LocalStorage):  # on a server
            return RepoInfo(path, None, not storage.writable)
        return RepoInfo(str(storage.path), self._drive_holding(str(storage.path)), not os.access(storage.path, os.W_OK))

    def _drive_holding(self, path: str) -> str | None:
        """The kernel name of the whole drive a directory is on; None when it cannot be told
        (the directory is usable all the same)."""
        try:
            drives = devices.drive_of_path(path, self.machine.snapshot())
        except RescueError:
            return None
        return drives[-1] if drives else None

    def list_images(self, repo_path: str) -> list[ImageInfo]:
        if (cz := _clonezilla(repo_path)) is not None:
            return [cz.summary()]
        return self.machine.images(repo_path)

    # encrypted repositories (docs/format.md, version 2) --------------------------------------
    # The front end asks for the password (the CLI: --password-file, $RESCUE_PASSWORD or a
    # hidden prompt; the wizard: a hidden field) and hands it here, once: `enter_password` opens the
    # repository's key and keeps it for this process (rescue.repo.keys), so every job, listing
    # and helper process after it opens the repository without asking again. The repository
    # layer never reads a terminal. A recorded machine's "simulate": {"encrypted": {path:
    # password}} stands for encrypted repositories in the dry run.
    def repository_encrypted(self, repo_path: str) -> bool:
        """Whether `repo_path` is an encrypted repository (reads its description, no key).
        False for a place that is no repository yet: the job that makes it says so."""
        return self._version(repo_path) == 2

    def is_repository(self, repo_path: str) -> bool:
        """Whether `repo_path` holds a repository this rescue reads (encrypted or not)."""
        return self._version(repo_path) is not None

    def _version(self, repo_path: str) -> int | None:
        if isinstance(self.machine, RecordedMachine):
            if repo_path in self.machine.simulate.get("encrypted", {}):
                return 2
            known = {r.path for r in self.machine.find_repositories(self.include_loop)}
            return 1 if repo_path in known else None
        from rescue.repo.storage import open_storage
        from rescue.repo.store import Repository

        try:
            storage = open_storage(repo_path)
        except RepoError:
            return None
        try:
            return Repository.describe(storage)["version"]
        except RepoError:
            return None
        finally:
            storage.close()

    def enter_password(self, repo_path: str, password: str) -> None:
        """Open an encrypted repository's key with `password` for the jobs of this process.
        WrongPassword (rescue.repo.keys) when no key file opens with it; IntegrityError when
        its key file is damaged."""
        from rescue.repo.keys import WrongPassword

        if isinstance(self.machine, RecordedMachine):
            if self.machine.simulate.get("encrypted", {}).get(repo_path) != password:
                raise WrongPassword(f"{repo_path}: wrong password (no key file opens with it)")
            return
        from rescue.repo.store import Repository

        Repository.open(repo_path, password=password).close()

    def create_repository(self, repo_path: str, password: str | None = None) -> None:
        """A new repository at `repo_path` (its place empty), encrypted with `password` when
        given, with the configuration's chunk size; an existing one is refused."""
        from rescue.repo.keys import check_password

        if password is not None:
            check_password(password)
        if isinstance(self.machine, RecordedMachine):
            if password is not None:
                self.machine.simulate.setdefault("encrypted", {})[repo_path] = password
            return
        from rescue.repo.storage import open_storage
        from rescue.repo.store import MARKER, Repository

        storage = open_storage(repo_path)
        try:
            if storage.size(MARKER) is not None:
                raise RepoError(f"{repo_path} is a repository already")
        finally:
            storage.close()
        Repository.create(repo_path, self.config.chunk_mib << 20, password=password).close()

    def list_keys(self, repo_path: str) -> list[Any]:
        """The key files (one per password) of an encrypted repository, unlocked before:
        rescue.repo.keys.KeyInfo, or (id, why it is damaged)."""
        from rescue.repo import keys

        with _opened(repo_path) as repo:
            _needs_key(repo)
            return keys.listing(repo.storage, repo.meta["id"])

    def add_password(self, repo_path: str, password: str) -> str:
        """One more password for an unlocked encrypted repository: writes one key file under
        keys/ and nothing else; returns its id."""
        from rescue.repo import keys

        with _opened(repo_path) as repo:
            return keys.add(repo.storage, _needs_key(repo), password)

    def remove_password(self, repo_path: str, key_id: str) -> None:
        """Remove one key file (never the last, nor the one the password given opened)."""
        from rescue.repo import keys

        with _opened(repo_path) as repo:
            _needs_key(repo)
            keys.remove(repo.storage, repo.meta["id"], key_id, repo.key_id)

    def image_needs(self, repo_path: str, name: str) -> int:
        """The smallest drive the image fits onto with some layout policy."""
        if (cz := _clonezilla(repo_path, name)) is not None:
            from rescue.clonezilla import minsize

            minsize.measure(cz)  # Clonezilla keeps no minimum sizes: how far it shrinks depends on them
            return min_target_size(cz.layout, cz.area_facts())
        image = self.machine.image_facts(repo_path, name)
        return min_target_size(image.layout, image.areas)

    def destination_refusal(self, repo: RepoInfo | None, path: str, source: DriveInfo) -> tuple[int | None, str | None]:
        """(free bytes or None, why a capture of `source` may not store its image at `path`)."""
        if repo is not None and repo.drive and repo.drive == source.name:
            return None, ON_SOURCE
        if repo is not None and repo.read_only:
            return None, "it is read-only"
        try:
            free = self.machine.free_space(path)
        except RescueError as e:
            return None, str(e)
        need = self.capture_need(source)
        if free < need:
            return free, f"not enough free space: needs up to {fmt_bytes(need)}"
        return free, None

    # repositories on a server, typed into the wizard's forms (rescue.repo.logins) -----------
    _remote: Any = None  # the SshSession or S3Profile in use, and the $RESCUE_RSH it replaced
    login_dir: str | None = None  # where logins keep their files: <it>/ssh, <it>/s3 (None: /run/rescue)

    def open_remote(self, login: SshLogin | S3Login, source: DriveInfo | None = None) -> Remote:
        """Log in to an SSH server (SFTP) or an S3 object store and look at the folder typed:
        its repository (for Restore and Browse; RepoError when there is none) or, for a capture
        of `source`, whether the image may go there (a repository, or an empty folder where
        the capture makes one). StorageUnavailable in words for a refused login, an unknown
        server, a wrong secret, a missing bucket; never with the secret.

        The login then stays for the jobs, which open the repository again by its URL like
        any other: the SSH master connection through $RESCUE_RSH, the S3 keys as a private
        AWS profile (rescue.repo.logins). close_remote() ends it (the wizard: when the flow
        ends); one login at a time."""
        from rescue.repo.logins import S3Profile, rsh_of, ssh_login
        from rescue.repo.s3 import S3Storage
        from rescue.repo.sftp import SftpStorage
        from rescue.repo.storage import StorageUnavailable

        if self.dry_run:
            raise RepoError(f"{login.shown}: a dry run over a recorded machine connects to no server")
        self.close_remote()
        if isinstance(login, SshLogin):
            session = ssh_login(login, ssh=rsh_of(os.environ), run_dir=Path(self.login_dir or "/run/rescue") / "ssh")
            try:
                remote = self._look_remote(
                    SftpStorage.from_url(login.url, ssh_command=session.ssh_command), login, source
                )
            except BaseException:
                session.close()
                raise
            remote.new_key = session.new_key
            self._remote = (session, os.environ.get("RESCUE_RSH"))
            os.environ["RESCUE_RSH"] = shlex.join(session.ssh_command)
            return remote
        try:
            remote = self._look_remote(S3Storage.from_url(login.url, environ=login.environ()), login, source)
        except StorageUnavailable as e:  # the keys came from the form, not from where S3Storage says
            said = re.sub(r"; the credentials came from [^;]*$", "; is the access key or the secret key wrong?", str(e))
            raise StorageUnavailable(said) from None
        self._remote = (S3Profile(login, Path(self.login_dir or "/run/rescue") / "s3"), None)
        return remote

    def _look_remote(self, storage: Any, login: SshLogin | S3Login, source: DriveInfo | None) -> Remote:
        from rescue.repo.store import MARKER, SYSTEM_ENTRIES, Repository

        try:
            repository = storage.size(MARKER) is not None
            if repository:
                Repository.describe(storage)  # the same checks as any repository's (no key yet)
            elif source is None:
                raise RepoError(f"{login.shown} holds no image repository (no {MARKER} in {login.url})")
            refusal = None
            if source is not None and not repository and any(e.name not in SYSTEM_ENTRIES for e in storage.list("")):
                refusal = "the folder is not empty and holds no image repository"
            free = storage.free_bytes()
            if refusal is None and source is not None and free is not None and free < self.capture_need(source):
                refusal = f"not enough free space: needs up to {fmt_bytes(self.capture_need(source))}"
            return Remote(login.url, login.shown, repository, storage.writable, free, refusal=refusal)
        finally:
            storage.close()

    def remote_repository(self, remote: Remote) -> RepoInfo:
        """The repository found by open_remote, as the restore and browse steps take it."""
        return RepoInfo(remote.location, None, not remote.writable)

    def close_remote(self) -> None:
        """End the login open_remote made (the master connection, the S3 profile's files)."""
        remote, self._remote = self._remote, None
        if remote is None:
            return
        held, rsh = remote
        if isinstance(held, SshSession):
            if rsh is None:
                os.environ.pop("RESCUE_RSH", None)
            else:
                os.environ["RESCUE_RSH"] = rsh
        held.close()

    # where images go ----------------------------------------------------------------------
    def destinations(self, source: DriveInfo | None = None, need: int | None = None) -> list[DestInfo]:
        """Every filesystem (and blank drive) on the machine's drives that a capture of
        `source`, or a copy of `need` bytes, could write to; each one that may not be used
        says why: on the drive being captured or the one this system booted from, a
        filesystem rescue does not write, too little free space, or (a blank drive, which
        preparing writes) the safety rules' own words."""
        places = self.machine.places(self.include_loop)
        self._surveyed += [p for p in places if p.mounted_by_us]
        snap = self.machine.snapshot()
        boot = self.boot_medium()
        boot_drive = os.path.basename(boot) if boot else None
        models = {d.name: d.model or "" for d in devices.list_drives(include_loop=True, snap=snap)}
        return [
            DestInfo(p, self._dest_refusal(p, source, boot_drive, need), models.get(p.drive or "", "")) for p in places
        ]

    def _dest_refusal(self, p: Place, source: DriveInfo | None, boot_drive: str | None, need: int | None) -> str | None:
        if p.drive is not None and p.drive == boot_drive:
            return "it is on the drive this rescue system booted from"
        if source is not None and p.drive == source.name:
            return ON_SOURCE
        if p.blank:
            return self._refused(lambda: self.check_target(p.device))
        reason = writable_refusal(p)
        if reason is None and need is not None and p.free is not None and p.free < need:
            reason = f"not enough free space: needs up to {fmt_bytes(need)}, has {fmt_bytes(p.free)}"
        return reason

    def open_share(
        self, share: SmbShare | NfsExport, source: DriveInfo | None = None, need: int | None = None
    ) -> DestInfo:
        """Mount a Windows share or an NFS export read-only and look at it: its repositories
        (for Restore and Browse) and, as a destination, whether a capture of `source` (or a
        copy of `need` bytes) may write there. Stays mounted until close(); a job that
        writes mounts it read-write for itself (open_destination). RepoError in words when
        it cannot be reached or mounted."""
        place = self.machine.mount_share(share)
        self._surveyed.append(place)
        return DestInfo(place, self._dest_refusal(place, source, None, need))

    def share_repository(self, dest: DestInfo) -> RepoInfo:
        """The repository on a share just opened (the first found); RepoError when none is."""
        if dest.repo is None:
            raise RepoError(
                f"{dest.place.device} holds no image repository (no rescue-repo.json at its top or one folder down)"
            )
        return RepoInfo(dest.repo, None, True)

    def network_summary(self) -> str:
        """The network in one line: "network: 10.0.2.15 (enp0s2)" or "no network"."""
        return self.machine.network()

    def capture_need(self, source: DriveInfo) -> int:
        """What a capture of `source` may store, at most (MIN_FREE when it cannot be told)."""
        return self.capture_estimate(source) or MIN_FREE

    def prepare_drive(self, dest: DestInfo) -> DestInfo:
        """Partition and format a blank drive for images (one exFAT partition); the person has
        confirmed it. Refused by the same rules as any other write to a drive."""
        self.check_target(dest.place.device)
        node = self.machine.prepare(dest.place.device)
        place = self.machine.place_of(node)
        if place.mounted_by_us:
            self._surveyed.append(place)
        return DestInfo(place)

    def open_destination(self, dest: DestInfo, folder: str | None = None, *, password: str | None = None) -> str:
        """Mount the place read-write for one job and open its repository (made when it has
        none: REPO_FOLDER at the top, encrypted with `password` when given), or with
        `folder` make that folder on it (for copied files); returns the path.
        close_destination(path) syncs and unmounts it: the front end calls it before it
        says done, also after an error or a cancel."""
        new_encrypted = password is not None and folder is None and dest.repo is None
        opened = self.machine.open_place(
            dest.place, None if folder or new_encrypted else dest.repo, REPO_FOLDER if new_encrypted else folder
        )
        self._opened[opened.path] = opened
        if new_encrypted:
            try:
                self.create_repository(opened.path, password)
            except BaseException:
                self.close_destination(opened.path)
                raise
        return opened.path

    def close_destination(self, repo_path: str) -> None:
        opened = self._opened.pop(repo_path, None)
        if opened is not None:
            self.machine.close_place(opened)

    @staticmethod
    def place_text(dest: DestInfo) -> str:
        """A place in words: its device (or share) and label."""
        p = dest.place
        return f"{p.device}" + (f" ({printable(p.label)})" if p.label else "")

    def destination_text(self, dest: DestInfo) -> str:
        """Where the image goes, in words: the repository, or the folder that will be made."""
        where = self.place_text(dest)
        return f"{dest.repo} on {where}" if dest.repo else f"a new folder {REPO_FOLDER} on {where}"

    def default_image_name(self, drive: DriveInfo, when: float | None = None) -> str:
        return default_image_name(drive.model if drive.model != "unknown model" else "", drive.name, when)

    def drive(self, path: str) -> DriveInfo:
        """Any drive by path (a /dev node, a by-id link, an image file on the live machine)."""
        return self._drive(devices.drive_info(path, self.machine.snapshot()))

    def check_image_name(self, repo_path: str | None, name: str) -> str:
        """The repository's name rule, and not taken yet (a folder that is no repository yet,
        or None for one still to be made, has no names taken: capture makes it one)."""
        check_name(name)
        try:
            taken = {im.name for im in self.list_images(repo_path)} if repo_path else set()
        except RescueError:
            taken = set()
        same = next((t for t in taken if same_name(t, name)), None)
        if same is not None:
            raise UsageError(f"an image named {same} already exists in {repo_path}")
        return name

    # plans ------------------------------------------------------------------------------------
    def plan_restore(
        self,
        repo_path: str,
        name: str,
        target_path: str,
        policy: str = "auto",
        *,
        scratch_dir: str | None = None,
        fresh_ids: bool = False,
    ) -> RestorePlan:
        """What restoring would write, and whether it fits. Writes nothing."""
        if (cz := _clonezilla(repo_path, name)) is not None:
            from rescue.clonezilla import jobs

            return jobs.plan(cz, target_path, policy, scratch_dir, fresh_ids, facts=self.machine.target(target_path))
        image = self.machine.image_facts(repo_path, name)
        facts = self.machine.target(target_path)
        plan = plan_onto(name, image.layout, image.areas, facts, policy, image.write, scratch_dir, fresh_ids=fresh_ids)
        plan.notes += self.machine.plan_notes(repo_path, name, {n: p.size for n, p in plan.placements.items()})
        return plan

    def _source(self, path: str) -> Any:
        """A source's capture plan (it reads every filesystem's metadata): once per look at
        the target list, not once per policy."""
        if path not in self._sources:
            self._sources = {path: self.machine.source(path)}
        return self._sources[path]

    def clone_needs(self, source: DriveInfo) -> int:
        """The smallest target size any layout policy can fit the source's partitions into."""
        self._sources = {}  # a fresh look at the source each time the target list is drawn
        cap = self._source(source.path)
        return min_target_size(cap.layout, cap.area_facts())

    def plan_clone(
        self,
        source_path: str,
        target_path: str,
        policy: str = "auto",
        *,
        scratch_dir: str | None = None,
        fresh_ids: bool = False,
    ) -> RestorePlan:
        from rescue.imaging.clone import plan_clone

        return plan_clone(
            source_path,
            target_path,
            policy,
            self._source(source_path),
            scratch_dir,
            fresh_ids,
            facts=self.machine.target(target_path),
        )

    def drive_holds_image(self, repo_path: str, name: str, target_path: str) -> bool:
        """Whether the drive already holds the image as a restore writes it (rescue.fleet's
        "restored before": disk id, partitions and filesystem UUIDs): the table read from the
        drive, each partition probed by blkid at its offset. Reads only; over a recorded
        machine never (nothing there was restored)."""
        if self.dry_run:
            return False
        from rescue.fleet.order import holds_image
        from rescue.hw.discover import probe

        image = self.machine.image_facts(repo_path, name)
        image_fs = {a.partition: str((a.fs or {}).get("uuid") or "") for a in image.areas if a.partition is not None}
        current = self.machine.target(target_path).current
        found = {}
        if current is not None:
            ss = current.sector_size
            for p in current.data_partitions():
                found[p.number] = probe(target_path, p.offset(ss), p.size(ss)).get("UUID", "")
        return holds_image(image.layout, image_fs, current, found)

    def capture_estimate(self, drive: DriveInfo) -> int | None:
        """The bytes capture will read (used blocks); what it stores is at most that."""
        try:
            return int(self._source(drive.path).read_bytes())
        except RescueError:
            return None  # unreadable now; capture itself will say why

    # jobs -------------------------------------------------------------------------------------
    def restore(
        self,
        repo_path: str,
        name: str,
        target_path: str,
        plan: RestorePlan,
        progress: ProgressFn,
        cancel: threading.Event,
        *,
        preverify: bool | None = None,
    ) -> RestoreOutcome:
        """Exactly the confirmed `plan`, after the safety rules and a check that the target
        is still what the plan was made for."""
        preverify = self.config.preverify if preverify is None else preverify
        if isinstance(self.machine, RecordedMachine):
            return self._simulate_restore(repo_path, name, target_path, plan, progress, cancel, preverify)
        from rescue.imaging.restore import restore
        from rescue.repo.store import Repository

        if (cz := _clonezilla(repo_path, name)) is not None:
            from rescue.clonezilla import jobs

            threads = self.config.worker_threads()
            r = jobs.restore(
                cz, target_path, plan, preverify=preverify, progress=progress, cancel=cancel, threads=threads
            )
            return RestoreOutcome(
                r.target_path, r.bytes_written, r.seconds, r.verified, r.log_path, r.warnings, r.actions
            )
        r = restore(
            Repository.open(repo_path),
            name,
            target_path,
            preverify=preverify,
            progress=progress,
            cancel=cancel,
            plan=plan,
            threads=self.config.worker_threads(),
        )
        return RestoreOutcome(r.target_path, r.bytes_written, r.seconds, r.verified, r.log_path, r.warnings, r.actions)

    def clone(
        self,
        source_path: str,
        target_path: str,
        plan: RestorePlan,
        progress: ProgressFn,
        cancel: threading.Event,
        *,
        retries: int | None = None,
    ) -> CloneOutcome:
        retries = self.config.bad_sector_retries if retries is None else retries
        self._sources = {}
        if isinstance(self.machine, RecordedMachine):
            return self._simulate_clone(source_path, target_path, plan, progress, cancel)
        from rescue.imaging.clone import clone

        r = clone(source_path, target_path, retries=retries, progress=progress, cancel=cancel, plan=plan)
        return CloneOutcome(
            r.target_path,
            r.bytes_written,
            r.seconds,
            r.sectors_lost,
            list(r.bad_ranges),
            r.log_path,
            r.warnings,
            r.actions,
        )

    def capture(
        self,
        source_path: str,
        repo_path: str,
        name: str,
        progress: ProgressFn,
        cancel: threading.Event,
        *,
        level: int | None = None,
        threads: int | None = None,
        retries: int | None = None,
    ) -> CaptureOutcome:
        """Image `source_path` into the repository at `repo_path` (created if missing)."""
        level = self.config.level if level is None else level
        threads = self.config.threads if threads is None else threads
        retries = self.config.bad_sector_retries if retries is None else retries
        configuration.validate(
            configuration.Config(level=level, threads=threads, chunk_mib=self.config.chunk_mib, source="flags")
        )
        check_name(name)
        if isinstance(self.machine, RecordedMachine):
            return self._simulate_capture(source_path, repo_path, name, progress, cancel)
        from rescue.imaging.capture import capture

        r = capture(
            source_path,
            repo_path,
            name,
            level=level,
            threads=threads or None,
            chunk_size=self.config.chunk_mib << 20,
            retries=retries,
            progress=progress,
            cancel=cancel,
        )
        return CaptureOutcome(
            r.name, r.bytes_read, r.stored_bytes, r.seconds, r.log_path, r.sectors_lost, list(r.bad_ranges)
        )

    def interrupted_capture(
        self, drive: DriveInfo | None, repo_path: str, name: str | None
    ) -> tuple[str, float] | None:
        """The interrupted capture in the repository that capture() would resume
        (rescue.imaging.resume): the one named `name`, or with no name the one of `drive`
        (its size and serial), as (name, fraction already read); None when none.
        capture() itself checks the drive and its plan again before it resumes."""
        if isinstance(self.machine, RecordedMachine):
            return None
        from rescue.imaging import resume
        from rescue.repo.store import Repository

        try:
            repo = Repository.open(repo_path)
        except RescueError:
            return None  # none yet, or capture itself will say why
        try:
            names = [name] if name else repo.incomplete_names()
            for candidate in names:
                state = resume.load(repo, candidate)
                if state is None:
                    continue
                if name or (
                    drive is not None
                    and (state.source.get("size"), state.source.get("serial")) == (drive.size, drive.serial)
                ):
                    return candidate, state.fraction
            return None
        finally:
            repo.close()

    def plan_export(
        self,
        repo_path: str,
        name: str,
        output: str,
        size: int | None = None,
        policy: str = "auto",
        *,
        scratch_dir: str | None = None,
        fresh_ids: bool = False,
        force: bool = False,
    ) -> Any:
        """The virtual disk file an export would write (rescue.imaging.export.ExportPlan: the
        layout as a restore onto a drive of `size` bytes would write it, None: the source
        drive's size), refused in one line for an unknown format, an existing file (unless
        `force`) or too little free space beside it. Writes nothing."""
        from rescue.imaging.export import plan_export

        image = self.machine.image_facts(repo_path, name)
        free = self.machine.free_space(os.path.dirname(os.path.abspath(output)))
        return plan_export(
            image, name, output, size, policy, free, scratch_dir=scratch_dir, fresh_ids=fresh_ids, force=force
        )

    def export(self, repo_path: str, plan: Any, progress: ProgressFn, cancel: threading.Event) -> Any:
        """Write the planned disk file (rescue.imaging.export.ExportResult); on any failure no
        file of the job's remains."""
        if self.dry_run:
            raise UsageError("a dry run over a recorded machine exports nothing")
        from rescue.imaging.export import export

        with _opened(repo_path) as repo:
            return export(repo, plan, progress=progress, cancel=cancel, threads=self.config.worker_threads())

    def verify(self, repo_path: str, name: str, progress: ProgressFn, cancel: threading.Event) -> Any:
        """Raises IntegrityError when the image is damaged."""
        if isinstance(self.machine, RecordedMachine):
            image = self.machine.image_facts(repo_path, name)
            self.machine.runner.move("verify", [("chunks", image.write)], progress, cancel)
            return None
        if (cz := _clonezilla(repo_path, name)) is not None:
            from rescue.clonezilla import jobs

            return jobs.verify(cz, progress, cancel)
        from rescue.imaging.verify import verify_image
        from rescue.repo.store import Repository

        return verify_image(Repository.open(repo_path), name, progress=progress, cancel=cancel)

    # multicast (rescue.multicast: one udpcast stream restores many machines) -----------------
    def serve_multicast(
        self,
        repo_path: str,
        name: str,
        options: Any,
        say: Callable[[str], None],
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> Any:
        """Check image `name`, then send it to every receiver that joins (multicast.udpcast.
        Options say where, how many, how fast). Returns a multicast.send.SendResult."""
        from rescue.multicast.send import send

        return send(repo_path, name, options.check(), say, progress, cancel, self.config.worker_threads())

    def join_multicast(self, location: str, image: str, password: str | None = None) -> Any:
        """Join the session at multicast://IF[:PORTBASE] and read the stream's header: the
        image it carries must be `image` (or match latest:PREFIX). Nothing is written; the
        receiver has left again when this raises. Returns a multicast.receive.Joined."""
        from rescue.multicast import receive
        from rescue.multicast.udpcast import parse_location

        joined = receive.join(location, parse_location(location), password)
        try:
            receive.check_name(joined, image)
        except BaseException:
            joined.receiver.leave()
            raise
        return joined

    def plan_multicast(
        self,
        joined: Any,
        target_path: str,
        policy: str = "auto",
        *,
        scratch_dir: str | None = None,
        fresh_ids: bool = False,
    ) -> RestorePlan:
        """The plan for this machine's drive, from the joined stream's header."""
        from rescue.multicast import receive

        return receive.plan(joined, self.machine.target(target_path), policy, scratch_dir, fresh_ids=fresh_ids)

    def receive_multicast(
        self,
        joined: Any,
        target_path: str,
        plan: RestorePlan,
        progress: ProgressFn,
        cancel: threading.Event,
        on_failure: Callable[[str], None] = lambda _: None,
    ) -> RestoreOutcome:
        """Exactly the confirmed plan, from the stream; a plan that does not fit leaves the
        session before anything is written, a failure while writing clears the drive's tables
        (on_failure is told so)."""
        from rescue.multicast import receive

        r = receive.write(joined, target_path, plan, progress, cancel, self.config.worker_threads(), on_failure)
        return RestoreOutcome(r.target_path, r.bytes_written, r.seconds, r.verified, r.log_path, r.warnings, r.actions)

    def verify_drive(self, repo_path: str, name: str, disk: str) -> int:
        """Compare the bytes outside a restored drive's partitions with the image; returns how
        many were compared, raises IntegrityError naming the first difference."""
        if _clonezilla(repo_path, name) is not None:
            raise UsageError("comparing a drive with a Clonezilla image is not supported: import it first")
        from rescue.imaging.verify import verify_drive
        from rescue.repo.store import Repository

        return int(verify_drive(Repository.open(repo_path), name, disk))

    # repositories, read ---------------------------------------------------------------------
    def listing(self, repo_path: str) -> Any:
        """Everything under a repository's images/ (rescue.repo.store.Listing), none hidden;
        a Clonezilla image directory as a listing of its one image."""
        from rescue.repo.store import Listing, Repository

        if (cz := _clonezilla(repo_path)) is not None:
            return Listing(images=[cz.summary()])

        return Repository.open(repo_path).listing()

    def manifest(self, repo_path: str, name: str) -> Any:
        """An image's manifest, validated (rescue.repo.manifest.Manifest); a Clonezilla
        image's as read from its directory."""
        if (cz := _clonezilla(repo_path, name)) is not None:
            return cz.manifest()
        return self.machine.manifest(repo_path, name)

    def import_clonezilla(
        self, source: str, repo_path: str, name: str | None, progress: ProgressFn, cancel: threading.Event
    ) -> Any:
        """A Clonezilla image directory into a repository (created if missing) as a rescue
        image named `name` (default: the directory's name); rescue.clonezilla.jobs.ImportResult."""
        from rescue.clonezilla import jobs
        from rescue.clonezilla.layout import read

        name = name or read(source).name
        return jobs.import_image(
            source,
            repo_path,
            name,
            level=self.config.level,
            threads=self.config.threads or None,
            chunk_size=self.config.chunk_mib << 20,
            progress=progress,
            cancel=cancel,
        )

    @staticmethod
    def windows_lines(manifest: Any) -> list[str]:
        """What an image holds of Windows, for `rescue info` and the wizard: "Windows boot
        manager on #1, Windows on #2" with the BCD's device references, and the volumes that
        were imaged whole or cannot be resized, with why (model/windows.py)."""
        from rescue.model import windows as win

        fs = {a.partition: a.fs for a in manifest.areas if a.partition is not None and a.fs}
        out = win.summary(manifest.layout, win.bcd_stores(fs))
        for number, facts in sorted(fs.items()):
            if facts.get("hibernated"):
                out.append(
                    f"#{number}: {facts['hibernated']}: imaged as it is; cannot be resized ({win.HIBERNATED_FIX})"
                )
            if facts.get("type") == "BitLocker":
                out.append(
                    f"#{number}: BitLocker: imaged whole, every byte (encrypted; not resized, files not browsable)"
                )
        return out

    @staticmethod
    def stack_lines(repo_path: str, manifest: Any) -> list[str]:
        """The storage stack of an image's partitions, for `rescue info`: partition -> LUKS
        -> LVM PV -> VG -> LVs -> filesystems, and what was imaged whole and why
        (imaging/lvm.py, docs/lvm-luks.md)."""
        from rescue.imaging.lvm import image_stack_lines

        return image_stack_lines(repo_path, manifest)

    def waiting(self) -> str | None:
        """ "waiting for <server> (N s)" while a repository's server does not answer, else None."""
        from rescue.repo.retry import waiting

        return waiting()

    # repositories, maintenance (rescue.repo.maintain) ---------------------------------------
    def delete_image(self, repo_path: str, name: str) -> None:
        """Image `name` is gone from the repository's listing; its chunks stay until prune."""
        from rescue.repo import maintain

        with _opened(repo_path) as repo:
            maintain.delete(repo, name)

    def prune(self, repo_path: str, *, keep_last: int | None, keep_daily: int | None, dry_run: bool) -> Any:
        """Apply keep rules and remove what no image needs (rescue.repo.maintain.PruneResult)."""
        from rescue.repo import maintain

        with _opened(repo_path) as repo:
            return maintain.prune(repo, keep_last=keep_last, keep_daily=keep_daily, dry_run=dry_run)

    def unlock(self, repo_path: str, *, force: bool) -> str:
        """Remove a stale lock (any lock with `force`): one line saying whose it was."""
        from rescue.repo import lock

        with _opened(repo_path) as repo:
            return lock.unlock(repo.storage, force=force)

    def copy_image(self, src_path: str, name: str, dst_path: str, progress: ProgressFn) -> Any:
        """Copy an image between repositories, only the chunks the destination lacks
        (rescue.repo.maintain.CopyResult); the destination is created when missing."""
        from rescue.repo import maintain
        from rescue.repo.store import Repository

        with _opened(src_path) as src:
            dst = Repository.open_or_create(dst_path, src.chunk_size)
            try:
                meter: Meter | None = None

                def moved(done: int, total: int) -> None:
                    nonlocal meter
                    meter = meter or Meter("copy", total, progress, None)
                    meter.advance(done - meter.done)

                result = maintain.copy(src, name, dst, threads=self.config.worker_threads() or 4, progress=moved)
                if meter is not None:
                    meter.finish()
                return result
            finally:
                dst.close()

    # browse -----------------------------------------------------------------------------------
    def mount_image(self, repo_path: str, name: str, mountpoint: str, partition: int | None = None) -> Any:
        """The image's partitions mounted read-only under `mountpoint` (rescue mount)."""
        from rescue.browse.mounts import mount_image

        return mount_image(repo_path, name, mountpoint, partition)

    def umount_image(self, mountpoint: str) -> Any:
        from rescue.browse.mounts import umount_image

        return umount_image(mountpoint)

    def extract(self, repo_path: str, name: str, partition: int, paths: list[str], dest: str) -> Any:
        """Files out of one partition of an image into `dest` (rescue extract)."""
        from rescue.browse.extract import extract

        return extract(repo_path, name, partition, paths, dest)

    def image_partitions(self, repo_path: str, name: str) -> list[ImagePart]:
        if _clonezilla(repo_path, name) is not None:
            raise UsageError("a Clonezilla image is browsed after `rescue import` puts it into a repository")
        out = []
        m = self.machine.manifest(repo_path, name)
        by_number = {p.number: p for p in m.layout.partitions}
        for a in m.areas:
            if a.partition is None:
                continue
            fs = a.fs or {}
            fstype = fs.get("type") or ""
            refused = None
            if not fstype or fstype == "raw":
                refused = "no filesystem"
            elif (kind := lookup(fstype)) is not None and kind.no_files:
                refused = kind.no_files
            part = by_number.get(a.partition)
            label = fs.get("label") or (part.name if part else "") or ""
            out.append(ImagePart(a.partition, a.size, fstype, label, fs.get("used_bytes"), refused))
        return out

    def browse_open(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        """Mount the partition read-only, privately; undone by browse_close, also when this
        raises half-way."""
        from rescue.errors import FilesystemError

        if part.refused:
            raise UsageError(f"partition {part.number} cannot be browsed: {part.refused}")
        if isinstance(self.machine, RecordedMachine):
            tree = self.machine.files(repo_path, name, part.number)
            root = None if part.fat else f"/run/rescue/wizard/p{part.number}"
            return BrowseSession(repo_path, name, part, root, handle=("recorded", tree))
        try:
            return self._browse_mount(repo_path, name, part)
        except FilesystemError:
            if not part.fat:
                raise
            return BrowseSession(repo_path, name, part, None)  # mtools still reads it, whole

    def _browse_mount(self, repo_path: str, name: str, part: ImagePart) -> BrowseSession:
        """A private read-only mount of the one partition, torn down again if anything fails.
        FAT only through the kernel's vfat: fusefat shows short names in capitals and dates a
        month late, and what the wizard copies must be exact; mtools copies it whole instead."""
        from rescue.browse import mounts

        _, manifest = mounts.open_image(repo_path, name)
        area = mounts.select_areas(manifest, part.number)[0]
        state, mnt = mounts.open_private(repo_path, name, area, "wizard", f"p{part.number}-", fusefat=False)
        return BrowseSession(repo_path, name, part, str(mnt / area.name), (state, mnt))

    def browse_list(self, session: BrowseSession, path: str) -> list[Any]:
        """One directory, read when asked (directories first, then by name)."""
        from rescue.browse import copy

        if session.root is None:
            return []
        if isinstance(session.handle, tuple) and session.handle[0] == "recorded":
            return copy.list_tree(session.handle[1], path)
        return copy.list_directory(session.root, path)

    def browse_close(self, session: BrowseSession) -> None:
        from rescue.browse import mounts

        handle, session.handle = session.handle, None
        if handle is None or (isinstance(handle, tuple) and handle[0] == "recorded"):
            return
        state, mnt = handle
        mounts.close_private(state, mnt)

    def _copy_names(self, session: BrowseSession, paths: list[str]) -> list[str]:
        return [f"{session.image}-p{session.part.number}"] if session.root is None else paths

    def check_copy(self, session: BrowseSession, paths: list[str], dest: str) -> None:
        """Refuses (UsageError) a destination where a chosen item would overwrite something."""
        from rescue.browse import copy

        if isinstance(self.machine, RecordedMachine):
            self.machine.free_space(dest)
            existing = set(self.machine.data.get("simulate", {}).get("existing_files", []))
            for n in self._copy_names(session, paths):
                target = dest.rstrip("/") + "/" + n.rstrip("/").rsplit("/", 1)[-1]
                if target in existing:
                    raise UsageError(f"{target} already exists: choose another folder or move it away first")
            return
        copy.check_copy_dest(dest, self._copy_names(session, paths))

    def copy_files(
        self, session: BrowseSession, paths: list[str], dest: str, progress: ProgressFn, cancel: threading.Event
    ) -> Any:
        from rescue.browse import copy

        if session.root is not None and not paths:
            raise UsageError("choose at least one file or folder first (Space marks it)")
        self.check_copy(session, paths, dest)
        if isinstance(self.machine, RecordedMachine):
            tree = session.handle[1] if isinstance(session.handle, tuple) else None
            return copy.simulate_copy(self.machine.runner, session, tree, paths, dest, progress, cancel)
        if session.root is None:  # FAT: the whole partition, through mtools
            return copy.copy_partition(session, dest, progress)
        return copy.copy_tree(session.root, paths, dest, progress, cancel)

    def free_space(self, path: str) -> int:
        """Free bytes at a directory; raises RepoError when it is missing or not writable."""
        return self.machine.free_space(path)

    # power ------------------------------------------------------------------------------------
    def reboot(self) -> None:
        self._power("reboot")

    def poweroff(self) -> None:
        self._power("poweroff")

    def _power(self, what: str) -> None:
        if isinstance(self.machine, RecordedMachine):
            self.machine.runner.step(f"systemctl {what}")
            return
        from rescue.errors import DeviceError
        from rescue.hw.run import run

        run(["systemctl", what], error=DeviceError)

    # the recorded machine's jobs: the plan's actions logged, the bytes counted -----------------
    def _simulate_restore(
        self,
        repo_path: str,
        name: str,
        target_path: str,
        plan: RestorePlan,
        progress: ProgressFn,
        cancel: threading.Event,
        preverify: bool,
    ) -> RestoreOutcome:
        assert isinstance(self.machine, RecordedMachine)
        runner = self.machine.runner
        from rescue.hw.safety import check_target

        check_target(target_path, repo_path=repo_path)
        image = self.machine.image_facts(repo_path, name)
        if preverify:
            runner.move("verify", [("chunks", image.write)], progress, cancel)
        seconds = self._simulate_actions("restore", plan, progress, cancel)
        warnings = list(self.machine.simulate.get("restore_warnings", []))
        log = f"{self.log_dir or '/run/rescue'}/restore-{name}.log"
        return RestoreOutcome(target_path, plan.write_bytes, seconds, preverify, log, warnings, list(plan.actions))

    def _simulate_actions(self, phase: str, plan: RestorePlan, progress: ProgressFn, cancel: threading.Event) -> float:
        """Each action of the confirmed plan, in order: its description logged, the bytes it
        writes counted through progress."""
        assert isinstance(self.machine, RecordedMachine)
        runner = self.machine.runner
        plan.check(self.machine.target(plan.target_path))
        held = {a.name: a.data_end() for a in plan.areas}
        seconds = 0.0
        for action in plan.actions:
            runner.step(f"{phase}: {action.what}")
            if action.area is not None and action.kind in ("write", "grow", "shrink", "gap"):
                seconds += runner.move(phase, [(action.area, held.get(action.area, 0))], progress, cancel)
        return seconds

    def _bad_ranges(self, path: str) -> list[tuple[int, int]]:
        assert isinstance(self.machine, RecordedMachine)
        return [(int(o), int(n)) for o, n in self.machine.simulate.get("bad_ranges", {}).get(path, [])]

    def _simulate_clone(
        self, source_path: str, target_path: str, plan: RestorePlan, progress: ProgressFn, cancel: threading.Event
    ) -> CloneOutcome:
        from rescue.hw.safety import check_source, check_target

        check_source(source_path)
        check_target(target_path, source=source_path)
        seconds = self._simulate_actions("clone", plan, progress, cancel)
        bad = self._bad_ranges(source_path)
        log = f"{self.log_dir or '/run/rescue'}/clone.log"
        return CloneOutcome(
            target_path, plan.write_bytes, seconds, sum(n for _, n in bad) // 512, bad, log, [], list(plan.actions)
        )

    def _simulate_capture(
        self, source_path: str, repo_path: str, name: str, progress: ProgressFn, cancel: threading.Event
    ) -> CaptureOutcome:
        assert isinstance(self.machine, RecordedMachine)
        from rescue.hw.safety import check_source

        check_source(source_path, repo_path)
        cap = self._source(source_path)
        areas = [(a.label, a.read_bytes()) for a in cap.areas if a.read_bytes()]
        seconds = self.machine.runner.move("capture", areas, progress, cancel)
        size = sum(s for _, s in areas)
        self.machine.add_image(repo_path, name, cap, devices.drive_info(source_path, self.machine.snapshot()))
        bad = self._bad_ranges(source_path)
        return CaptureOutcome(
            name, size, size // 2, seconds, f"{repo_path}/images/{name}/log.txt", sum(n for _, n in bad) // 512, bad
        )


def _clonezilla(path: str | None, name: str | None = None) -> Any:
    """The Clonezilla image directory at `path` (rescue.clonezilla.source.ClonezillaImage),
    None when `path` is none (a repository, a URL). With `name`, refused unless it is that
    directory's one image."""
    if path is None:
        return None
    from rescue.clonezilla.layout import is_image_dir

    if not is_image_dir(path):
        return None
    from rescue.clonezilla.source import ClonezillaImage

    return ClonezillaImage.open(path, name)


def _on_this_machine(repo_path: str | None) -> str | None:
    """The repository's path when it is on this machine's filesystems (the safety rules then
    protect its drive), None for one on a server (sftp://, s3://, http(s)://)."""
    from rescue.repo.storage import is_url

    return None if repo_path is None or is_url(repo_path) else repo_path


def _needs_key(repo: Any) -> Any:
    if repo.key is None:
        raise UsageError(f"{repo.where} is not encrypted: it has no passwords")
    return repo.key


@contextlib.contextmanager
def _opened(location: str) -> Iterator[Any]:
    """A repository opened for one call, closed after it (a remote one holds a connection)."""
    from rescue.repo.store import Repository

    repo = Repository.open(location)
    try:
        yield repo
    finally:
        repo.close()

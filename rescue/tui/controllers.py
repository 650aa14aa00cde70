"""The steps of the four flows (restore, capture, clone, browse) and the main menu.

Steps hold the decisions (which drives are refused and why, whether a typed name matches);
views only draw and call back. Back-end errors are not caught here: the app shows them in
words and keeps the person on a screen that works."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rescue.browse.copy import CopyOutcome, FileEntry
from rescue.engine import (
    BrowseSession,
    CaptureOutcome,
    CloneOutcome,
    DestInfo,
    DriveInfo,
    ImageInfo,
    ImagePart,
    PartInfo,
    Remote,
    RepoInfo,
    RestoreOutcome,
    S3Login,
    SshLogin,
)
from rescue.errors import Cancelled, RescueError
from rescue.hw import netmount
from rescue.hw.destination import REPO_FILES
from rescue.imaging.progress import fmt_bytes, fmt_duration
from rescue.imaging.restore import RestorePlan as Plan
from rescue.tui import views
from rescue.tui.wizard import Step

CANCEL_RESTORE = "{drive} will be left partially written and will not boot; restore again to fix."
CANCEL_CLONE = "{drive} will be left partially written and will not boot; clone again to fix. {source} is not changed."
SHOWN_RANGES = 3  # bad-sector ranges listed on a done screen; the log has them all


def warning_lines(warnings: list[str]) -> list[Any]:
    """What went wrong after the data was written (e.g. the boot fix-ups), one line each."""
    return [("error", f"Warning: {w}") for w in warnings] + ([""] if warnings else [])


def too_small(needed: int, have: int) -> str:
    return f"too small: needs at least {fmt_bytes(needed)}, the drive has {fmt_bytes(have)}"


def incomplete_line(lost: int, what: str) -> list[Any]:
    """The first line of a done screen after unreadable sectors: the copy is not clean."""
    if not lost:
        return []
    return [("error", f"Incomplete: {lost} unreadable sector(s) were zero-filled in {what}."), ""]


def bad_sector_lines(lost: int, ranges: list[tuple[int, int]], what: str) -> list[Any]:
    """Where the unreadable sectors were, for a done screen: count, then the first ranges as
    byte offsets (and MiB, easier to compare with a partition table)."""
    if not lost and not ranges:
        return [("heading", "No unreadable sectors were met.")]
    size = sum(n for _, n in ranges)
    out: list[Any] = [
        ("error", f"{lost} unreadable sector(s) were met ({fmt_bytes(size)} in {len(ranges)} range(s)); {what}")
    ]
    for off, n in ranges[:SHOWN_RANGES]:
        out.append(f"  at byte {off} ({off / (1 << 20):.1f} MiB), {n} bytes")
    if len(ranges) > SHOWN_RANGES:
        out.append(f"  ... and {len(ranges) - SHOWN_RANGES} more range(s), all listed in the log")
    return out


def logout_of(state: Any) -> None:
    """End the login to a repository's server (SSH master, S3 profile) a flow made."""
    logout, state.logout = state.logout, None
    if logout is not None:
        logout()


@dataclass
class RestoreState:
    repo: RepoInfo | None = None
    image: ImageInfo | None = None
    target: DriveInfo | None = None
    policy: str = "auto"  # the layout policy the person chose
    plan: Plan | None = None
    outcome: RestoreOutcome | None = None
    message: str = ""  # shown once on the next screen's status line
    logout: Any = None  # backend.close_remote, once a server was logged in to

    def close(self) -> None:
        logout_of(self)


@dataclass
class CaptureState:
    source: DriveInfo | None = None
    dest: str | None = None  # the repository's path (None: a place's new repository, made by the job)
    place: DestInfo | None = None  # the place chosen from the list; None: a path was typed
    prepare: DestInfo | None = None  # a blank drive to prepare first
    where: str = ""  # where the image goes, in words
    written: str | None = None  # the repository the capture wrote into (a place's, while it was mounted)
    outcome: CaptureOutcome | None = None
    name: str | None = None
    logout: Any = None  # backend.close_remote, once a server was logged in to
    encrypt: str | None = None  # the password of the new repository the capture makes, if encrypted

    def close(self) -> None:
        logout_of(self)


@dataclass
class CloneState:
    source: DriveInfo | None = None
    target: DriveInfo | None = None
    policy: str = "auto"
    plan: Plan | None = None
    outcome: CloneOutcome | None = None
    message: str = ""

    def close(self) -> None:
        pass


@dataclass
class BrowseState:
    repo: RepoInfo | None = None
    image: ImageInfo | None = None
    part: ImagePart | None = None
    session: BrowseSession | None = None  # the mounted partition, while one is
    marked: list[str] = field(default_factory=list)  # paths inside the partition
    dest: str | None = None  # a typed folder
    place: DestInfo | None = None  # or a place from the list (a new folder is made on it)
    folder: str = ""  # that folder, relative to the place's top
    where: str = ""  # where the files go, in words
    outcome: CopyOutcome | None = None
    closer: Any = None  # backend.browse_close, set when a session is opened
    logout: Any = None  # backend.close_remote, once a server was logged in to

    def unmount(self) -> None:
        """Unmount the partition. Called when its tree is left backwards, when the copy ends,
        and when the flow ends."""
        session, self.session = self.session, None
        if session is not None and self.closer is not None:
            self.closer(session)

    def close(self) -> None:
        """The flow ends (main menu, exit, error): the partition is unmounted, then the
        login to the repository's server ended."""
        try:
            self.unmount()
        finally:
            logout_of(self)


class MenuController:
    def __init__(self, app: Any):
        self.app = app

    def restore(self) -> None:
        self.app.start_flow("restore")

    def capture(self) -> None:
        self.app.start_flow("capture")

    def clone(self) -> None:
        self.app.start_flow("clone")

    def browse(self) -> None:
        self.app.start_flow("browse")

    def shell(self) -> None:
        self.app.exit(self.app.EXIT_SHELL)

    def reboot(self) -> None:
        self.app.ask(
            "Reboot",
            "Restart the computer now?",
            "Reboot",
            "Cancel",
            lambda yes: yes and self._power(self.app.backend.reboot),
        )

    def poweroff(self) -> None:
        self.app.ask(
            "Power off",
            "Switch the computer off now?",
            "Power off",
            "Cancel",
            lambda yes: yes and self._power(self.app.backend.poweroff),
        )

    def _power(self, action) -> None:
        action()
        self.app.exit(self.app.EXIT_POWER)


class ShareSteps:
    """The "Windows share (SMB)..." and "NFS export..." rows of a list step: a form, then the
    share is mounted read-only in the worker (a server that does not answer takes its time
    limit, not the screen), and `opened_share` gets it; a failure comes back to the form in
    words (access denied, share not found, no route to host...), with what was typed."""

    share_title = ""
    _typed: dict[str, str] | None = None

    def smb(self) -> None:
        self.app.show(views.SmbView(self, self.share_title, self.app.wizard_position(self), self._typed))

    def nfs(self) -> None:
        self.app.show(
            views.NfsView(self, self.share_title, self.app.wizard_position(self), (self._typed or {}).get("nfs", ""))
        )

    def connect_smb(self, typed: dict[str, str]) -> None:
        self._typed = {k: v for k, v in typed.items() if k != "password"}
        server, share = typed["server"].strip().strip("/\\"), typed["share"].strip().strip("/\\")
        self._connect(
            lambda: netmount.parse_smb(
                f"//{server}/{share}",
                user=typed["user"].strip(),
                password=typed["password"],
                domain=typed["domain"].strip(),
            ),
            self.smb,
        )

    def connect_nfs(self, typed: str) -> None:
        self._typed = {"nfs": typed}
        self._connect(lambda: netmount.parse_nfs(typed.strip()), self.nfs)

    def _connect(self, parse, form) -> None:
        self._in_worker(parse, form, str, self.open_share, self.opened_share)

    def _in_worker(self, parse, form, shown, connect, done) -> None:
        """The form's values parsed (a refusal stays on the form), then `connect` in the worker
        behind a progress screen; `done` gets what it returns, and a failure goes back to the
        form in words (what was typed is still there)."""
        try:
            where = parse()
        except RescueError as e:
            self.app.view.set_status(views.sentence(str(e)), error=True)
            return
        self.app.show(
            views.ProgressView(
                self, self.share_title, f"Connecting to {shown(where)}...", self.app.wizard_position(self)
            )
        )

        def failed(error: BaseException, tb: str) -> None:
            if not isinstance(error, RescueError):
                self.app.job_failed(error, tb)
                return
            form()
            self.app.view.set_status(views.sentence(str(error)), error=True)

        self.app.run_job(lambda _p, _c: connect(where), lambda _p: None, done, failed)

    def open_share(self, share) -> DestInfo:
        return self.backend.open_share(share)  # type: ignore[no-any-return]

    refused = "Cannot store the image on"  # how a share that may not take the job is refused

    def opened_share(self, dest: DestInfo) -> None:
        """A destination list's share: chosen like any place, unless it may not be."""
        if dest.refusal is not None:
            self.start()
            self.app.view.set_status(f"{self.refused} {dest.place.device}: {dest.refusal}", error=True)
            return
        self.choose_place(dest)

    def choose_place(self, dest: DestInfo) -> None:
        raise NotImplementedError


class RemoteSteps:
    """The "SSH server (SFTP)..." and "S3 object store..." rows of a repository step: a
    form, then the login and a look at the folder run in the worker (Engine.open_remote),
    and `opened_remote` gets what was found. A failure comes back to the form in words with
    what was typed, except the password or secret key: those are never kept, and typed
    again. The login lasts until the flow ends (the state's `logout`)."""

    share_title = ""
    _ssh_typed: dict[str, str] | None = None
    _s3_typed: dict[str, str] | None = None

    def ssh(self) -> None:
        self.app.show(views.SshView(self, self.share_title, self.app.wizard_position(self), self._ssh_typed))

    def s3(self) -> None:
        self.app.show(views.S3View(self, self.share_title, self.app.wizard_position(self), self._s3_typed))

    def connect_ssh(self, typed: dict[str, str]) -> None:
        self._ssh_typed = {k: v for k, v in typed.items() if k != "password"}
        self._remote(
            lambda: SshLogin.parse(typed["server"], typed["port"], typed["user"], typed["folder"], typed["password"]),
            self.ssh,
        )

    def connect_s3(self, typed: dict[str, str]) -> None:
        self._s3_typed = {k: v for k, v in typed.items() if k != "secret_key"}
        self._remote(
            lambda: S3Login.parse(
                typed["endpoint"],
                typed["bucket"],
                typed["prefix"],
                typed["region"],
                typed["access_key"],
                typed["secret_key"],
            ),
            self.s3,
        )

    def remote_source(self) -> DriveInfo | None:
        """The drive a capture will store there (its space is checked), None to read images."""
        return None

    def _remote(self, parse, form) -> None:
        source = self.remote_source()
        self._in_worker(
            parse,
            form,
            lambda login: login.shown,
            lambda login: self.backend.open_remote(login, source),
            self._opened_remote,
        )

    def _opened_remote(self, remote: Remote) -> None:
        self.state.logout = self.backend.close_remote
        self.opened_remote(remote)
        if remote.new_key:
            self.app.tell(
                "New SSH server",
                f"First connection to {remote.shown}. Its host key, now trusted until the next "
                f"boot:\n\n{remote.new_key}\n\nCompare it with the server's own (ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub there) if in doubt.",
            )

    def opened_remote(self, remote: Remote) -> None:
        raise NotImplementedError


# --- restore ---------------------------------------------------------------------------------


class RepoStep(RemoteSteps, ShareSteps, Step):
    title = "Restore: where are the images?"
    share_title = "Restore: images on another computer"

    def applies(self) -> bool:
        return self.app.preset_repo is None

    def start(self) -> None:
        self.app.show(
            views.RepoView(self, self.backend.find_repositories(), self.app.wizard_position(self), self.title)
        )

    def rescan(self) -> None:
        self.start()

    def choose(self, path: str) -> None:
        path = path.strip()
        if not path:
            self.app.view.set_status("Type the path of a repository first.", error=True)
            return
        self.state.repo = self.backend.open_repository(path)
        self.done()

    def opened_share(self, dest: DestInfo) -> None:
        try:
            self.state.repo = self.backend.share_repository(dest)
        except RescueError as e:
            self.start()
            self.app.view.set_status(views.sentence(str(e)), error=True)
            return
        self.done()

    def opened_remote(self, remote: Remote) -> None:
        self.state.repo = self.backend.remote_repository(remote)
        try:
            self.done()
        except RescueError as e:  # its images could not be listed: back to the form, in words
            self.state.repo = None
            (self.ssh if remote.location.startswith("sftp:") else self.s3)()
            self.app.view.set_status(views.sentence(str(e)), error=True)


class PasswordStep(Step):
    """An encrypted repository's password, asked before its images are listed: the engine
    keeps the key for the flow's jobs (Engine.enter_password). A wrong one keeps the person
    here, in words."""

    title = "Restore: the repository's password"

    def repo_path(self) -> str | None:
        return self.state.repo.path if self.state.repo else None

    def applies(self) -> bool:
        path = self.repo_path()
        return path is not None and bool(self.backend.repository_encrypted(path))

    def start(self) -> None:
        self.app.show(views.PasswordView(self, self.title, self.repo_path() or "", self.app.wizard_position(self)))

    def unlock(self, password: str) -> None:
        if not password:
            self.app.view.set_status("Type the password first.", error=True)
            return
        try:
            self.backend.enter_password(self.repo_path(), password)
        except RescueError as e:
            self.start()  # the field empty again: a password is never shown or kept
            self.app.view.set_status(views.sentence(str(e)), error=True)
            return
        self.done()


class ImageStep(Step):
    title = "Restore: choose an image"

    def start(self) -> None:
        images = self.backend.list_images(self.state.repo.path)
        self.app.show(views.ImageView(self, self.state.repo, images, self.app.wizard_position(self), self.title))

    def choose(self, image: ImageInfo) -> None:
        self.state.image = image
        self.done()


class DriveStep(Step):
    """Shared by the restore target and the capture source: a drive list with refusals."""

    title = ""
    excerpt = ""

    def refusal(self, drive: DriveInfo) -> str | None:
        raise NotImplementedError

    def start(self) -> None:
        drives = [(d, self.refusal(d)) for d in self.backend.list_drives()]
        self.app.show(views.DriveListView(self, self.title, self.excerpt, drives, self.app.wizard_position(self)))

    def rescan(self) -> None:
        self.start()

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        try:
            return self.backend.partitions(drive)
        except RescueError:
            return []  # the plan step reads the drive again and reports what is wrong


class WriteTargetStep(DriveStep):
    """A drive to be overwritten: the flow's own refusals, then whether the data fits."""

    needed = 0

    def needs(self) -> int:
        """The smallest drive the data fits onto with some layout policy."""
        raise NotImplementedError

    def rule(self, drive: DriveInfo) -> str | None:
        raise NotImplementedError

    def start(self) -> None:
        self.needed = self.needs()
        super().start()

    def refusal(self, drive: DriveInfo) -> str | None:
        rule = self.rule(drive)
        if rule:
            return rule
        return too_small(self.needed, drive.size) if drive.size < self.needed else None

    def choose(self, drive: DriveInfo) -> None:
        self.state.target = drive
        self.done()


class TargetStep(WriteTargetStep):
    title = "Restore: choose the target drive"
    excerpt = "Restore onto which drive? Everything on it will be replaced."

    def needs(self) -> int:
        return self.backend.image_needs(self.state.repo.path, self.state.image.name)

    def rule(self, drive: DriveInfo) -> str | None:
        return self.backend.target_refusal(drive, self.state.repo.path)


class PlanStepBase(Step):
    """The engine's plan for the chosen target, with a layout policy the person can switch;
    each switch plans again. A policy whose plan cannot be made leaves the last good plan on
    the screen (and says why)."""

    def make_plan(self, policy: str) -> Plan:
        raise NotImplementedError

    def heading(self) -> str:
        raise NotImplementedError

    def excerpt(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.state.plan = self.make_plan(self.state.policy)
        self.current = DriveStep.partitions(self, self.state.target)
        message, self.state.message = self.state.message, ""
        self._show(message)

    def _show(self, message: str = "", focus_policy: bool = False) -> None:
        s = self.state
        self.app.show(
            views.PlanView(
                self,
                self.heading(),
                self.excerpt(),
                s.target,
                s.plan,
                s.policy,
                self.current,
                message,
                self.app.wizard_position(self),
                focus_policy,
            )
        )

    def set_policy(self, policy: str) -> None:
        if policy == self.state.policy:
            return
        try:
            plan = self.make_plan(policy)
        except BaseException:
            self._show(focus_policy=True)  # the radio row back on the policy of the plan shown
            raise
        self.state.policy, self.state.plan = policy, plan
        self._show(focus_policy=True)

    def done(self) -> None:
        if self.state.plan is not None and self.state.plan.fits:
            super().done()


class PlanStep(PlanStepBase):
    def make_plan(self, policy: str) -> Plan:
        s = self.state
        return self.backend.plan_restore(s.repo.path, s.image.name, s.target.path, policy)

    def heading(self) -> str:
        return f"Restore: the plan for {self.state.target.name}"

    def excerpt(self) -> str:
        s = self.state
        return (
            f"Image {s.image.name} onto {s.target.name} ({views.clip(s.target.model, 30)}, {fmt_bytes(s.target.size)}):"
        )


class ConfirmStep(Step):
    action = "restore"
    title = "Restore: confirm"
    button_label = "Erase and restore"

    def drive(self) -> DriveInfo:
        return self.state.target  # type: ignore[no-any-return]

    def start(self) -> None:
        self.app.show(
            views.ConfirmView(
                self, self.drive(), self.app.wizard_position(self), self.action, self.title, self.button_label
            )
        )

    def confirm(self, typed: str) -> None:
        name = self.drive().name
        if typed.strip() == name:
            self.done()
            return
        self.state.message = f"You typed {typed.strip()!r}, not {name!r}: nothing was written."
        self.back()


class JobStep(Step):
    """Runs the step's job in the worker, shows its progress, asks before cancelling."""

    title = ""
    cancel_question = ""

    def intro(self) -> str:
        raise NotImplementedError

    def job(self, progress, cancel) -> Any:
        raise NotImplementedError

    def finished(self, result: Any) -> None:
        raise NotImplementedError

    def cancelled_text(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self.view = views.ProgressView(self, self.title, self.intro(), self.app.wizard_position(self))
        self.app.show(self.view)
        self.app.run_job(self.job, self.view.update, self.finished, self.failed)

    def back(self) -> None:
        """Esc: never leave a running job silently; ask, and say what cancelling leaves."""
        self.app.ask("Cancel?", self.cancel_question, "Cancel it", "Keep going", self._answer)

    def _answer(self, yes: bool) -> None:
        if yes:
            self.app.runner.cancel.set()
            self.view.set_status("Cancelling... waiting for the job to stop.", error=True)

    def failed(self, error: BaseException, tb: str) -> None:
        self.state.close()
        if isinstance(error, Cancelled):
            self.app.tell("Cancelled", self.cancelled_text(), then=self.app.main_menu)
        else:
            self.app.job_failed(error, tb)


class RestoreProgressStep(JobStep):
    title = "Restore: writing"

    @property
    def cancel_question(self) -> str:  # type: ignore[override]
        return "Cancel the restore? If you cancel, " + CANCEL_RESTORE.format(drive=self.state.target.name)

    def intro(self) -> str:
        s = self.state
        return f"Restoring {s.image.name} onto {s.target.name} ({s.target.model})."

    def job(self, progress, cancel) -> RestoreOutcome:
        s = self.state
        return self.backend.restore(s.repo.path, s.image.name, s.target.path, s.plan, progress, cancel)

    def finished(self, result: RestoreOutcome) -> None:
        self.state.outcome = result
        self.done()

    def cancelled_text(self) -> str:
        return "Restore cancelled. " + CANCEL_RESTORE.format(drive=self.state.target.name)


class DoneStep(Step):
    """Last screen of both flows. Back (Esc) goes to the main menu, never into the job."""

    def lines(self) -> tuple[str, list[Any], bool]:
        raise NotImplementedError

    def start(self) -> None:
        title, lines, ok = self.lines()
        self.app.show(views.DoneView(self, title, lines, ok))

    def back(self) -> None:
        self.menu()

    def menu(self) -> None:
        self.app.main_menu()

    def reboot(self) -> None:
        self.app.menu.reboot()

    def poweroff(self) -> None:
        self.app.menu.poweroff()


class RestoreDoneStep(DoneStep):
    def lines(self):
        s, o = self.state, self.state.outcome
        if o.verified:
            check = ("heading", "Verification: passed. Every chunk was checked against its hash before it was written.")
        else:
            check = ("error", "Verification: NOT confirmed. Do not trust this drive; restore again or check the log.")
        return (
            "Restore: done",
            [
                ("heading", f"{s.image.name} was restored onto {s.target.name} ({s.target.model})."),
                "",
                check,
                "",
                *warning_lines(o.warnings),
                f"{fmt_bytes(o.bytes_written)} written in {fmt_duration(o.seconds)}.",
                f"The log was saved to {o.log_path}",
                "",
                "Remove the rescue medium before rebooting into the restored system.",
            ],
            o.verified and not o.warnings,
        )


# --- capture ---------------------------------------------------------------------------------


class SourceStep(DriveStep):
    title = "Capture: choose the drive to image"
    excerpt = "Capture which drive? It is only read, never written."

    def refusal(self, drive: DriveInfo) -> str | None:
        return self.backend.source_refusal(drive)

    def choose(self, drive: DriveInfo) -> None:
        self.state.source = drive
        self.done()


class DestStep(RemoteSteps, ShareSteps, Step):
    share_title = "Capture: store the image on another computer"

    def check(self, repo: RepoInfo | None, path: str) -> tuple[str, str | None]:
        """(free space as text, why refused or None) of a typed path."""
        free, reason = self.backend.destination_refusal(repo, path, self.state.source)
        return ("" if free is None else fmt_bytes(free)), reason

    def start(self) -> None:
        s = self.state
        dests = self.backend.destinations(s.source, self.backend.capture_need(s.source))
        self.app.show(views.DestView(self, dests, self.app.wizard_position(self)))

    def rescan(self) -> None:
        self.start()

    def open_share(self, share) -> DestInfo:
        s = self.state
        return self.backend.open_share(share, s.source, self.backend.capture_need(s.source))  # type: ignore[no-any-return]

    def remote_source(self) -> DriveInfo | None:
        return self.state.source  # type: ignore[no-any-return]

    def opened_remote(self, remote: Remote) -> None:
        """Into the repository there, or a new one the capture makes in the empty folder; a
        folder that may not take the image keeps the person on the form, saying why."""
        if remote.refusal is not None:
            (self.ssh if remote.location.startswith("sftp:") else self.s3)()
            self.app.view.set_status(
                views.sentence(f"Cannot store the image in {remote.location}: {remote.refusal}"), error=True
            )
            return
        s = self.state
        s.place, s.dest = None, remote.location
        s.where = remote.location if remote.repository else f"a new repository at {remote.location}"
        self.done()

    def choose_place(self, dest: DestInfo) -> None:
        s = self.state
        if dest.place.blank:
            s.prepare = dest
        else:
            s.place, s.dest, s.where = dest, dest.repo, self.backend.destination_text(dest)
        self.done()

    def choose(self, path: str) -> None:
        path = path.strip()
        if not path:
            self.app.view.set_status("Type the path of a directory first.", error=True)
            return
        known = next((r for r in self.backend.find_repositories() if r.path == path), None)
        _free, reason = self.check(known, path)
        if reason:
            self.app.view.set_status(f"Cannot store the image in {path}: {reason}", error=True)
            return
        s = self.state
        s.place, s.dest, s.where = None, path, path
        self.done()


class PrepareConfirmStep(ConfirmStep):
    """A blank drive chosen as the destination: erased and formatted only when its name is typed."""

    action = "prepare it for images"
    title = "Capture: prepare the drive"
    button_label = "Erase and prepare"

    def applies(self) -> bool:
        return self.state.prepare is not None

    def drive(self) -> DriveInfo:
        return self.backend.drive(self.state.prepare.place.device)  # type: ignore[no-any-return]

    def back(self) -> None:
        self.state.prepare = None
        super().back()


class PrepareStep(Step):
    """Partitions and formats the blank drive (exFAT) in the worker; then it is the place."""

    def applies(self) -> bool:
        return self.state.prepare is not None

    def start(self) -> None:
        s = self.state
        self.app.show(
            views.ProgressView(
                self,
                "Capture: preparing the drive",
                f"Making one exFAT partition on {s.prepare.place.device}...",
                self.app.wizard_position(self),
            )
        )
        prepare = s.prepare
        self.app.run_job(
            lambda _p, _c: self.backend.prepare_drive(prepare), lambda _p: None, self.finished, self.failed
        )

    def finished(self, dest: DestInfo) -> None:
        s = self.state
        s.prepare = None
        s.place, s.dest, s.where = dest, dest.repo, self.backend.destination_text(dest)
        self.done()

    def failed(self, error: BaseException, tb: str) -> None:
        self.state.prepare = None
        self.app.job_failed(error, tb)

    def back(self) -> None:
        pass  # preparing takes seconds and cannot be undone halfway: it finishes


class CaptureKeyStep(PasswordStep):
    """The destination's password, when it is an encrypted repository (a new one is offered
    encryption on the name screen)."""

    title = "Capture: the repository's password"

    def repo_path(self) -> str | None:
        return self.state.dest  # type: ignore[no-any-return]


class NameStep(Step):
    def start(self) -> None:
        s = self.state
        stopped = s.dest and self.backend.interrupted_capture(s.source, s.dest, None)  # resumed under its name
        self.app.show(
            views.NameView(
                self,
                s.name or (stopped[0] if stopped else self.backend.default_image_name(s.source)),
                s.source,
                s.where,
                self.app.wizard_position(self),
                new_repo=s.dest is None or not self.backend.is_repository(s.dest),
            )
        )

    def choose(self, name: str, encrypt: bool = False, password: str = "", again: str = "") -> None:
        """The name, and for a new repository the password it is encrypted with (or none)."""
        if encrypt and not password:
            self.app.view.set_status("Type the password, twice (or leave encryption off).", error=True)
            return
        if encrypt and password != again:
            self.app.view.set_status("The two passwords differ: type them again.", error=True)
            return
        try:
            self.state.name = self.backend.check_image_name(self.state.dest, name.strip())
        except RescueError as e:
            self.app.view.set_status(views.sentence(str(e)), error=True)
            return
        self.state.encrypt = password if encrypt else None
        self.done()


class CaptureProgressStep(JobStep):
    title = "Capture: reading and verifying"
    cancel_question = (
        "Cancel the capture? What it read is kept: capturing the same drive into the same "
        "repository again goes on from there. The source drive is not changed."
    )

    def intro(self) -> str:
        s = self.state
        return f"Capturing {s.source.name} ({s.source.model}) into {s.where} as {s.name}, then verifying it."

    def job(self, progress, cancel) -> CaptureOutcome:
        """A place from the list is mounted read-write for this job only, and synced and
        unmounted before the done screen, also after an error or a cancel."""
        s = self.state
        repo = self.backend.open_destination(s.place, password=s.encrypt) if s.place else s.dest
        s.written = repo
        try:
            if s.encrypt is not None and not s.place:  # a typed folder or a server's, made here
                self.backend.create_repository(repo, s.encrypt)
            outcome = self.backend.capture(s.source.path, repo, s.name, progress, cancel)
            self.backend.verify(repo, outcome.name, progress, cancel)
        finally:
            if s.place:
                self.backend.close_destination(repo)
        return outcome

    def finished(self, result: CaptureOutcome) -> None:
        self.state.outcome = result
        self.done()

    def cancelled_text(self) -> str:
        return f"Capture cancelled. No image was kept; {self.state.source.name} was not changed."


class CaptureDoneStep(DoneStep):
    def lines(self):
        s, o = self.state, self.state.outcome
        return (
            "Capture: done",
            [
                *incomplete_line(o.sectors_lost, f"the image {o.name}"),
                ("heading", f"{s.source.name} ({s.source.model}) was captured as {o.name}."),
                "",
                ("heading", "Verification: passed. Every stored chunk was read back and checked."),
                "",
                *bad_sector_lines(
                    o.sectors_lost, o.bad_ranges, "they are marked unreadable in the image (not stored as data)."
                ),
                "",
                f"{fmt_bytes(o.bytes_read)} read, {fmt_bytes(o.stored_bytes)} newly stored, "
                f"in {fmt_duration(o.seconds)}.",
                f"Repository: {s.where}",
                *(["It was unmounted: the drive can be unplugged."] if s.place and s.place.place.drive else []),
                f"The log was saved to {o.log_path}",
            ],
            True,
        )


# --- clone -----------------------------------------------------------------------------------


class CloneSourceStep(DriveStep):
    title = "Clone: choose the drive to copy"
    excerpt = "Copy which drive? It is only read, never written."

    def refusal(self, drive: DriveInfo) -> str | None:
        return self.backend.source_refusal(drive)

    def choose(self, drive: DriveInfo) -> None:
        self.state.source = drive
        self.done()


class CloneTargetStep(WriteTargetStep):
    title = "Clone: choose the target drive"
    excerpt = "Copy onto which drive? Everything on it will be replaced."

    def needs(self) -> int:
        return self.backend.clone_needs(self.state.source)

    def rule(self, drive: DriveInfo) -> str | None:
        return self.backend.clone_refusal(drive, self.state.source)


class ClonePlanStep(PlanStepBase):
    def make_plan(self, policy: str) -> Plan:
        s = self.state
        return self.backend.plan_clone(s.source.path, s.target.path, policy)

    def heading(self) -> str:
        return f"Clone: the plan for {self.state.target.name}"

    def excerpt(self) -> str:
        s = self.state
        return (
            f"Copy {s.source.name} ({views.clip(s.source.model, 24)}, {fmt_bytes(s.source.size)}) onto "
            f"{s.target.name} ({views.clip(s.target.model, 24)}, {fmt_bytes(s.target.size)}):"
        )


class CloneConfirmStep(ConfirmStep):
    title = "Clone: confirm"
    button_label = "Erase and clone"

    @property
    def action(self) -> str:  # type: ignore[override]
        return f"copy {self.state.source.name} onto it"


class CloneProgressStep(JobStep):
    title = "Clone: copying"

    @property
    def cancel_question(self) -> str:  # type: ignore[override]
        s = self.state
        return "Cancel the clone? If you cancel, " + CANCEL_CLONE.format(drive=s.target.name, source=s.source.name)

    def intro(self) -> str:
        s = self.state
        return (
            f"Copying {s.source.name} ({s.source.model}) onto {s.target.name} ({s.target.model}), "
            f"layout {s.plan.policy}."
        )

    def job(self, progress, cancel) -> CloneOutcome:
        s = self.state
        return self.backend.clone(s.source.path, s.target.path, s.plan, progress, cancel)

    def finished(self, result: CloneOutcome) -> None:
        self.state.outcome = result
        self.done()

    def cancelled_text(self) -> str:
        s = self.state
        return "Clone cancelled. " + CANCEL_CLONE.format(drive=s.target.name, source=s.source.name)


class CloneDoneStep(DoneStep):
    def lines(self):
        s, o = self.state, self.state.outcome
        return (
            "Clone: done",
            [
                *incomplete_line(o.sectors_lost, f"the copy on {s.target.name}"),
                ("heading", f"{s.source.name} ({s.source.model}) was copied onto {s.target.name} ({s.target.model})."),
                "",
                *bad_sector_lines(
                    o.sectors_lost, o.bad_ranges, f"those bytes were written as zeros on {s.target.name}."
                ),
                "",
                *warning_lines(o.warnings),
                f"{fmt_bytes(o.bytes_written)} written in {fmt_duration(o.seconds)}, layout {s.plan.policy}.",
                f"The log was saved to {o.log_path}",
                "",
                "Both drives now carry the same filesystem IDs: boot with only one of them connected.",
            ],
            o.sectors_lost == 0 and not o.warnings,
        )


# --- browse ----------------------------------------------------------------------------------


class BrowseRepoStep(RepoStep):
    title = "Browse: where are the images?"
    share_title = "Browse: images on another computer"


class BrowsePasswordStep(PasswordStep):
    title = "Browse: the repository's password"


class BrowseImageStep(ImageStep):
    title = "Browse: choose an image"


class PartitionStep(Step):
    def start(self) -> None:
        s = self.state
        parts = self.backend.image_partitions(s.repo.path, s.image.name)
        self.app.show(views.PartitionView(self, s.image, parts, self.app.wizard_position(self)))

    def choose(self, part: ImagePart) -> None:
        if self.state.part is None or self.state.part.number != part.number:
            self.state.marked = []
        self.state.part = part
        self.done()


class TreeStep(Step):
    """Mounts the chosen partition when entered (kept while the destination is chosen) and
    unmounts it when left backwards. Folders are listed when opened, never all at once."""

    def start(self) -> None:
        s = self.state
        if s.session is not None and s.session.part.number != s.part.number:
            s.unmount()
        if s.session is None:
            s.session = self.backend.browse_open(s.repo.path, s.image.name, s.part)
            s.closer = self.backend.browse_close
        self.children: dict[str, list[FileEntry]] = {}
        self.expanded: set[str] = set()
        try:
            if s.session.root is not None:
                self.children["/"] = self.backend.browse_list(s.session, "/")
        except BaseException:
            s.unmount()  # a step that fails to start leaves nothing mounted behind it
            raise
        title = f"Browse: files in partition {s.part.number}"
        if s.session.root is None:
            self.view = views.WholePartitionView(
                self, title, s.part, self.whole_folder(), self.app.wizard_position(self)
            )
        else:
            excerpt = (
                f"Image {views.clip(s.image.name, 30)}, partition {s.part.number} "
                f"({s.part.fstype}{', ' + views.clip(s.part.label, 20) if s.part.label else ''}), "
                "read-only:"
            )
            self.view = views.TreeView(
                self, title, excerpt, self.rows(), self.summary(), self.app.wizard_position(self)
            )
        self.app.show(self.view)

    def whole_folder(self) -> str:
        return f"{self.state.image.name}-p{self.state.part.number}"

    def back(self) -> None:
        self.state.unmount()
        super().back()

    # the tree -------------------------------------------------------------------------------
    def rows(self) -> list[tuple[FileEntry, int, str, bool]]:
        out = []

        def walk(path: str, depth: int) -> None:
            for e in self.children.get(path, []):
                out.append((e, depth, self.mark_of(e.path), e.path in self.expanded))
                if e.path in self.expanded:
                    walk(e.path, depth + 1)

        walk("/", 0)
        return out

    def mark_of(self, path: str) -> str:
        if path in self.state.marked:
            return "x"
        if any(path.startswith(m + "/") for m in self.state.marked):
            return "+"  # inside a marked folder: copied with it
        return " "

    def summary(self) -> str:
        m = self.state.marked
        if not m:
            return "Nothing marked yet: Space marks a file or folder to copy."
        shown = ", ".join(views.clip(p, 30) for p in m[:3]) + (f" and {len(m) - 3} more" if len(m) > 3 else "")
        return f"Marked {len(m)}: {shown}"

    def refresh(self, focus: str | None = None, message: str = "") -> None:
        self.view.refresh(self.rows(), self.summary(), focus)
        if message:
            self.view.set_status(message, error=True)
        else:
            self.view.set_status(self.view.help)

    def expand(self, entry: FileEntry) -> None:
        if not entry.is_dir or entry.path in self.expanded:
            return
        if entry.path not in self.children:
            self.children[entry.path] = self.backend.browse_list(self.state.session, entry.path)
        self.expanded.add(entry.path)
        self.refresh(entry.path)

    def collapse(self, entry: FileEntry) -> None:
        if entry.path in self.expanded:
            self.expanded.discard(entry.path)
            self.refresh(entry.path)
            return
        parent = entry.path.rsplit("/", 1)[0]
        if parent and parent in self.expanded:  # Left on a child: close its folder
            self.expanded.discard(parent)
            self.refresh(parent)

    def activate(self, entry: FileEntry) -> None:
        if entry.is_dir:
            if entry.path in self.expanded:
                self.collapse(entry)
            else:
                self.expand(entry)
        else:
            self.toggle_mark(entry)

    def toggle_mark(self, entry: FileEntry) -> None:
        m = self.state.marked
        if entry.path in m:
            m.remove(entry.path)
            self.refresh(entry.path)
            return
        outer = next((x for x in m if entry.path.startswith(x + "/")), None)
        if outer is not None:
            self.refresh(entry.path, f"{entry.path} is copied with the marked folder {outer}.")
            return
        m[:] = [x for x in m if not x.startswith(entry.path + "/")] + [entry.path]
        self.refresh(entry.path)

    def done(self) -> None:
        if self.state.session.root is not None and not self.state.marked:
            self.view.set_status("Mark at least one file or folder first (Space).", error=True)
            return
        super().done()


class CopyDestStep(ShareSteps, Step):
    share_title = "Browse: copy onto another computer"
    refused = "Cannot copy onto"
    blank = "a blank drive: prepare it for images from Capture first"

    def what(self) -> str:
        s = self.state
        if s.session.root is None:
            items = "the whole partition"
        else:
            items = f"{len(s.marked)} marked item(s)" if len(s.marked) != 1 else s.marked[0]
        return f"Copy {views.clip(items, 40)} from partition {s.part.number} of {views.clip(s.image.name, 30)}."

    def start(self) -> None:
        dests = [
            d if not d.place.blank else DestInfo(d.place, self.blank, d.drive_model)
            for d in self.backend.destinations()
        ]
        typed = self.state.dest if self.state.place is None else ""
        self.app.show(views.CopyDestView(self, self.what(), dests, typed or "", self.app.wizard_position(self)))

    def paths(self) -> list[str]:
        return ["/"] if self.state.session.root is None else list(self.state.marked)

    def choose_place(self, dest: DestInfo) -> None:
        """A place from the list: the files go into a new folder on it, named after the image
        and the partition."""
        s = self.state
        s.place, s.dest, s.folder = dest, None, f"{REPO_FILES}/{s.image.name}-p{s.part.number}"
        s.where = f"{s.folder} on {self.backend.place_text(dest)}"
        self.done()

    def choose(self, path: str) -> None:
        path = path.strip()
        if not path:
            self.app.view.set_status("Type the path of a folder first.", error=True)
            return
        try:
            self.backend.free_space(path)
            self.backend.check_copy(self.state.session, self.paths(), path)
        except RescueError as e:
            self.app.view.set_status(f"Cannot copy into {path}: {e}", error=True)
            return
        s = self.state
        s.place, s.dest, s.where = None, path, path
        self.done()


class CopyProgressStep(JobStep):
    title = "Browse: copying"

    @property
    def cancel_question(self) -> str:  # type: ignore[override]
        return f"Cancel the copy? What was copied so far stays in {self.state.where}; the item being copied is removed."

    def intro(self) -> str:
        s = self.state
        return f"Copying from {s.image.name}, partition {s.part.number}, into {s.where}."

    def job(self, progress, cancel) -> CopyOutcome:
        """A place from the list is mounted read-write for this copy only (a new folder is
        made on it), and synced and unmounted before the done screen, also after an error."""
        s = self.state
        paths = ["/"] if s.session.root is None else list(s.marked)
        dest = self.backend.open_destination(s.place, folder=s.folder) if s.place else s.dest
        try:
            return self.backend.copy_files(s.session, paths, dest, progress, cancel)
        finally:
            if s.place:
                self.backend.close_destination(dest)

    def finished(self, result: CopyOutcome) -> None:
        self.state.outcome = result
        self.state.unmount()
        self.done()

    def cancelled_text(self) -> str:
        return f"Copy cancelled. What was copied before stays in {self.state.where}; the partition was unmounted."


class BrowseDoneStep(DoneStep):
    def lines(self):
        s, o = self.state, self.state.outcome
        shown = [f"  {views.clip(os.path.relpath(p, o.dest), 74)}" for p in o.copied[:6]]
        if len(o.copied) > 6:
            shown.append(f"  ... and {len(o.copied) - 6} more")
        return (
            "Browse: done",
            [
                ("heading", f"Copied from {s.image.name}, partition {s.part.number}, into {s.where}:"),
                *shown,
                "",
                f"{o.files} file(s), {fmt_bytes(o.bytes)}, in {fmt_duration(o.seconds)}. "
                + (
                    "Times were kept (FAT has no owners or permissions)."
                    if s.part.fat
                    else "Permissions, owners and times were kept."
                    if o.owners_kept
                    else "Times were kept (the destination has no owners or permissions)."
                ),
                *(
                    [f"{o.links_left} symbolic link(s) were left out: the destination cannot hold them."]
                    if o.links_left
                    else []
                ),
                "The partition was unmounted; the image was only read.",
                *(["The copy's drive was unmounted: it can be unplugged."] if s.place and s.place.place.drive else []),
            ],
            True,
        )


FLOWS = {
    "restore": (
        RestoreState,
        [RepoStep, PasswordStep, ImageStep, TargetStep, PlanStep, ConfirmStep, RestoreProgressStep, RestoreDoneStep],
    ),
    "capture": (
        CaptureState,
        [
            SourceStep,
            DestStep,
            PrepareConfirmStep,
            PrepareStep,
            CaptureKeyStep,
            NameStep,
            CaptureProgressStep,
            CaptureDoneStep,
        ],
    ),
    "clone": (
        CloneState,
        [CloneSourceStep, CloneTargetStep, ClonePlanStep, CloneConfirmStep, CloneProgressStep, CloneDoneStep],
    ),
    "browse": (
        BrowseState,
        [
            BrowseRepoStep,
            BrowsePasswordStep,
            BrowseImageStep,
            PartitionStep,
            TreeStep,
            CopyDestStep,
            CopyProgressStep,
            BrowseDoneStep,
        ],
    ),
}

"""The steps of the two flows (restore, capture) and the main menu.

Steps hold the decisions (which drives are refused and why, whether a typed name matches);
views only draw and call back. Back-end errors are not caught here: the app shows them in
words and keeps the person on a screen that works."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from rescue.errors import Cancelled, RescueError
from rescue.imaging.progress import fmt_bytes, fmt_duration
from rescue.tui import views
from rescue.tui.backend import (CaptureOutcome, DriveInfo, ImageInfo, PartInfo, Plan, RepoInfo,
                                RestoreOutcome)
from rescue.tui.wizard import Step

GiB = 1 << 30
MIN_FREE = GiB  # a destination with less than this is refused when the image size is unknown
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

BOOT_REASON = "it booted the rescue system"
REPO_REASON = "it holds the image repository"
CANCEL_RESTORE = ("{drive} will be left partially written and will not boot; "
                  "restore again to fix.")


@dataclass
class RestoreState:
    repo: RepoInfo | None = None
    image: ImageInfo | None = None
    target: DriveInfo | None = None
    plan: Plan | None = None
    outcome: RestoreOutcome | None = None
    message: str = ""  # shown once on the next screen's status line


@dataclass
class CaptureState:
    source: DriveInfo | None = None
    dest: str | None = None
    name: str | None = None
    outcome: CaptureOutcome | None = None


def default_image_name(drive: DriveInfo, when: float | None = None) -> str:
    """Model and date, reduced to the characters an image name may hold."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", drive.model).strip("_.-") or drive.name
    return f"{model[:60]}-{time.strftime('%Y-%m-%d', time.localtime(when))}"


class MenuController:
    def __init__(self, app: Any):
        self.app = app

    def restore(self) -> None:
        self.app.start_flow("restore")

    def capture(self) -> None:
        self.app.start_flow("capture")

    def shell(self) -> None:
        self.app.exit(self.app.EXIT_SHELL)

    def reboot(self) -> None:
        self.app.ask("Reboot", "Restart the computer now?", "Reboot", "Cancel",
                     lambda yes: yes and self._power(self.app.backend.reboot))

    def poweroff(self) -> None:
        self.app.ask("Power off", "Switch the computer off now?", "Power off", "Cancel",
                     lambda yes: yes and self._power(self.app.backend.poweroff))

    def _power(self, action) -> None:
        action()
        self.app.exit(self.app.EXIT_POWER)


# --- restore ---------------------------------------------------------------------------------

class RepoStep(Step):
    def applies(self) -> bool:
        return self.app.preset_repo is None

    def start(self) -> None:
        self.app.show(views.RepoView(self, self.backend.find_repositories(),
                                     self.app.wizard_position(self)))

    def rescan(self) -> None:
        self.start()

    def choose(self, path: str) -> None:
        path = path.strip()
        if not path:
            self.app.view.set_status("Type the path of a repository first.", error=True)
            return
        self.state.repo = self.backend.open_repository(path)
        self.done()


class ImageStep(Step):
    def start(self) -> None:
        images = self.backend.list_images(self.state.repo.path)
        self.app.show(views.ImageView(self, self.state.repo, images, self.app.wizard_position(self)))

    def choose(self, image: ImageInfo) -> None:
        self.state.image = image
        self.done()


class DriveStep(Step):
    """Shared by the restore target and the capture source: a drive list with refusals."""

    title = ""
    excerpt = ""

    def refusal(self, drive: DriveInfo, boot: str | None) -> str | None:
        raise NotImplementedError

    def start(self) -> None:
        boot = self.backend.boot_drive()
        drives = [(d, self.refusal(d, boot)) for d in self.backend.list_drives()]
        self.app.show(views.DriveListView(self, self.title, self.excerpt, drives,
                                          self.app.wizard_position(self)))

    def rescan(self) -> None:
        self.start()

    def partitions(self, drive: DriveInfo) -> list[PartInfo]:
        try:
            return self.backend.partitions(drive)
        except RescueError:
            return []  # the plan step reads the drive again and reports what is wrong


class TargetStep(DriveStep):
    title = "Restore: choose the target drive"
    excerpt = "Restore onto which drive? Everything on it will be replaced."

    def start(self) -> None:
        self.needed = self.backend.image_needs(self.state.repo.path, self.state.image.name)
        super().start()

    def refusal(self, drive: DriveInfo, boot: str | None) -> str | None:
        if drive.name == boot:
            return BOOT_REASON
        if drive.name == self.state.repo.drive:
            return REPO_REASON
        rule = self.backend.target_refusal(drive, self.state.repo.path)
        if rule:
            return rule
        if drive.size < self.needed:
            return (f"too small: the image needs {fmt_bytes(self.needed)}, "
                    f"the drive has {fmt_bytes(drive.size)}")
        return None

    def choose(self, drive: DriveInfo) -> None:
        self.state.target = drive
        self.done()


class PlanStep(Step):
    def start(self) -> None:
        s = self.state
        s.plan = self.backend.plan_restore(s.repo.path, s.image.name, s.target.path)
        current = DriveStep.partitions(self, s.target)
        message, s.message = s.message, ""
        self.app.show(views.PlanView(self, s.target, s.image, s.plan, current, message,
                                     self.app.wizard_position(self)))


class ConfirmStep(Step):
    def start(self) -> None:
        self.app.show(views.ConfirmView(self, self.state.target, self.app.wizard_position(self)))

    def confirm(self, typed: str) -> None:
        name = self.state.target.name
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
        if isinstance(error, Cancelled):
            self.app.tell("Cancelled", self.cancelled_text(), then=self.app.main_menu)
        else:
            self.app.job_failed(error, tb)


class RestoreProgressStep(JobStep):
    title = "Restore: writing"

    @property
    def cancel_question(self) -> str:  # type: ignore[override]
        return ("Cancel the restore? If you cancel, "
                + CANCEL_RESTORE.format(drive=self.state.target.name))

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
            check = ("heading", "Verification: passed. Every chunk was checked against its hash "
                                "before it was written.")
        else:
            check = ("error", "Verification: NOT confirmed. Do not trust this drive; restore again "
                              "or check the log.")
        return ("Restore: done", [
            ("heading", f"{s.image.name} was restored onto {s.target.name} ({s.target.model})."), "",
            check, "",
            f"{fmt_bytes(o.bytes_written)} written in {fmt_duration(o.seconds)}.",
            f"The log was saved to {o.log_path}", "",
            "Remove the rescue medium before rebooting into the restored system."], o.verified)


# --- capture ---------------------------------------------------------------------------------

class SourceStep(DriveStep):
    title = "Capture: choose the drive to image"
    excerpt = "Capture which drive? It is only read, never written."

    def refusal(self, drive: DriveInfo, boot: str | None) -> str | None:
        return BOOT_REASON if drive.name == boot else None

    def choose(self, drive: DriveInfo) -> None:
        self.state.source = drive
        self.done()


class DestStep(Step):
    def needed(self) -> int:
        return self.backend.capture_estimate(self.state.source) or MIN_FREE

    def check(self, repo: RepoInfo | None, path: str) -> tuple[str, str | None]:
        """(free space as text, why refused or None)."""
        if repo is not None and repo.drive and repo.drive == self.state.source.name:
            return "", "it is on the drive being captured"
        if repo is not None and repo.read_only:
            return "", "it is read-only"
        try:
            free = self.backend.free_space(path)
        except RescueError as e:
            return "", str(e)
        need = self.needed()
        if free < need:
            return fmt_bytes(free), f"not enough free space: needs up to {fmt_bytes(need)}"
        return fmt_bytes(free), None

    def start(self) -> None:
        rows = []
        for r in self.backend.find_repositories():
            free, reason = self.check(r, r.path)
            rows.append((r, free, reason))
        self.app.show(views.DestView(self, rows, self.app.wizard_position(self)))

    def rescan(self) -> None:
        self.start()

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
        self.state.dest = path
        self.done()


class NameStep(Step):
    def start(self) -> None:
        s = self.state
        self.app.show(views.NameView(self, s.name or default_image_name(s.source), s.source, s.dest,
                                     self.app.wizard_position(self)))

    def choose(self, name: str) -> None:
        name = name.strip()
        if not NAME_RE.match(name):
            self.app.view.set_status("Use 1-100 letters, digits, '.', '-' or '_' (not first).", error=True)
            return
        try:
            taken = {im.name for im in self.backend.list_images(self.state.dest)}
        except RescueError:
            taken = set()  # not a repository yet: capture makes one
        if name in taken:
            self.app.view.set_status(f"An image named {name} already exists there.", error=True)
            return
        self.state.name = name
        self.done()


class CaptureProgressStep(JobStep):
    title = "Capture: reading and verifying"
    cancel_question = ("Cancel the capture? The partial image is not kept; "
                       "the source drive is not changed.")

    def intro(self) -> str:
        s = self.state
        return f"Capturing {s.source.name} ({s.source.model}) into {s.dest} as {s.name}, then verifying it."

    def job(self, progress, cancel) -> CaptureOutcome:
        s = self.state
        outcome = self.backend.capture(s.source.path, s.dest, s.name, progress, cancel)
        self.backend.verify(s.dest, outcome.name, progress, cancel)
        return outcome

    def finished(self, result: CaptureOutcome) -> None:
        self.state.outcome = result
        self.done()

    def cancelled_text(self) -> str:
        return f"Capture cancelled. No image was kept; {self.state.source.name} was not changed."


class CaptureDoneStep(DoneStep):
    def lines(self):
        s, o = self.state, self.state.outcome
        return ("Capture: done", [
            ("heading", f"{s.source.name} ({s.source.model}) was captured as {o.name}."), "",
            ("heading", "Verification: passed. Every stored chunk was read back and checked."), "",
            f"{fmt_bytes(o.bytes_read)} read, {fmt_bytes(o.stored_bytes)} newly stored, "
            f"in {fmt_duration(o.seconds)}.",
            f"Repository: {s.dest}",
            f"The log was saved to {o.log_path}"], True)


FLOWS = {
    "restore": (RestoreState, [RepoStep, ImageStep, TargetStep, PlanStep, ConfirmStep,
                               RestoreProgressStep, RestoreDoneStep]),
    "capture": (CaptureState, [SourceStep, DestStep, NameStep, CaptureProgressStep,
                               CaptureDoneStep]),
}

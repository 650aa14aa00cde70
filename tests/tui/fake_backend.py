"""An in-memory machine for the wizard's tests: the Backend protocol over the same data
the dry run uses, plus what tests need — a record of every job started, jobs that wait
for the test, and errors injected into chosen methods."""

from __future__ import annotations

import json
import os
import threading

from rescue.tui.dryrun import DryRunBackend

MACHINE_FILE = os.path.join(os.path.dirname(__file__), "machines", "two-disks-and-usb.json")


def machine() -> dict:
    """The recorded demo machine (also used for dry runs), with jobs that do not sleep:
    sda 500 GB SATA, sdb 2 TB USB holding /media/sdb1 with two images, sdc the boot stick,
    sdd an 8 GB stick (too small for the images), nvme0n1 256 GB."""
    with open(MACHINE_FILE) as f:
        m = json.load(f)
    m["job_seconds"] = 0
    return m


class FakeBackend(DryRunBackend):
    def __init__(self, machine_desc: dict | None = None):
        super().__init__(machine_desc or machine())
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}  # method name -> exception it raises
        self.gate: threading.Event | None = None  # when set, jobs wait for it before ending
        self.mounted: list = []  # browse sessions open now (mounted partitions)
        self.plans_used: list = []  # plans handed to restore/clone

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def find_repositories(self):
        self._maybe_fail("find_repositories")
        return super().find_repositories()

    def open_repository(self, path):
        self._maybe_fail("open_repository")
        return super().open_repository(path)

    def list_images(self, repo_path):
        self._maybe_fail("list_images")
        return super().list_images(repo_path)

    def list_drives(self):
        self._maybe_fail("list_drives")
        return super().list_drives()

    def plan_restore(self, repo_path, name, target_path, policy="auto"):
        self.calls.append(("plan_restore", target_path, policy))
        self._maybe_fail("plan_restore")
        return super().plan_restore(repo_path, name, target_path, policy)

    def plan_clone(self, source_path, target_path, policy="auto"):
        self.calls.append(("plan_clone", source_path, target_path, policy))
        self._maybe_fail("plan_clone")
        return super().plan_clone(source_path, target_path, policy)

    def clone(self, source_path, target_path, plan, progress, cancel):
        self.calls.append(("clone", source_path, target_path, plan.policy))
        self.plans_used.append(plan)
        out = super().clone(source_path, target_path, plan, progress, cancel)
        self._job("clone")
        if cancel.is_set():
            from rescue.errors import Cancelled

            raise Cancelled("clone cancelled by the user")
        return out

    def browse_open(self, repo_path, name, part):
        self.calls.append(("mount", part.number))
        self._maybe_fail("browse_open")
        session = super().browse_open(repo_path, name, part)
        self.mounted.append(session)
        return session

    def browse_list(self, session, path):
        self.calls.append(("list", path))
        self._maybe_fail("browse_list")
        assert session.handle is not None, "listing a partition that is not mounted"
        return super().browse_list(session, path)

    def browse_close(self, session):
        self.calls.append(("umount", session.part.number))
        if session in self.mounted:
            self.mounted.remove(session)
        super().browse_close(session)

    def copy_files(self, session, paths, dest, progress, cancel):
        self.calls.append(("copy", session.part.number, list(paths), dest))
        assert session.root is None or session.handle is not None, "copying from an unmounted partition"
        out = super().copy_files(session, paths, dest, progress, cancel)
        self._job("copy_files")
        if cancel.is_set():
            from rescue.errors import Cancelled

            raise Cancelled("copy cancelled by the user")
        return out

    def _job(self, method, *args):
        if self.gate is not None:
            self.gate.wait(10)
        self._maybe_fail(method)

    def restore(self, repo_path, name, target_path, plan, progress, cancel):
        self.calls.append(("restore", repo_path, name, target_path))
        self.plans_used.append(plan)
        out = super().restore(repo_path, name, target_path, plan, progress, cancel)
        out.warnings = list(self.machine.get("restore_warnings", []))
        self._job("restore")
        if cancel.is_set():
            from rescue.errors import Cancelled

            raise Cancelled("restore cancelled by the user")
        return out

    def capture(self, source_path, repo_path, name, progress, cancel):
        self.calls.append(("capture", source_path, repo_path, name))
        out = super().capture(source_path, repo_path, name, progress, cancel)
        self._job("capture")
        return out

    def verify(self, repo_path, name, progress, cancel):
        self.calls.append(("verify", repo_path, name))
        self._maybe_fail("verify")
        return super().verify(repo_path, name, progress, cancel)

    def reboot(self):
        self.calls.append(("reboot",))
        self._maybe_fail("reboot")
        super().reboot()

    def poweroff(self):
        self.calls.append(("poweroff",))
        super().poweroff()

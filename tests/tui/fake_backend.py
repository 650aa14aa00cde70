"""The wizard's tests run the real engine (rescue.engine.Engine) over a recorded machine
(tests/machines), with what tests need on top: a record of every call, jobs that wait for
the test, and errors injected into chosen methods. Planning, refusals, names and browsing
are the engine's own; only the jobs' writes go to the recorded machine's logging runner."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from rescue.engine import Engine
from rescue.errors import Cancelled
from rescue.hw import devices
from rescue.machine import RecordedMachine

MACHINES = os.path.join(os.path.dirname(__file__), os.pardir, "machines")
MACHINE_FILE = os.path.join(MACHINES, "two-disks-and-usb.json")


def machine(path: str = MACHINE_FILE) -> dict[str, Any]:
    """A recorded machine, with jobs that do not sleep. The default one: sda 500 GB SATA, sdb
    2 TB USB holding /media/sdb1 with two images, sdc the boot stick, sdd an 8 GB stick (too
    small for the images), nvme0n1 256 GB."""
    with open(path) as f:
        m = json.load(f)
    m.setdefault("simulate", {})["job_seconds"] = 0
    return m


def mount(backend: FakeBackend, device: str, where: str, read_only: bool = False) -> None:
    """Mount `device` on the recorded machine (its mountinfo line replaced, or a line more)."""
    kernel = backend.data["kernel"]
    d = next(d for d in kernel["devices"] if d["node"] == device)
    ro = "ro" if read_only else "rw"
    major, minor = os.major(d["devnum"]), os.minor(d["devnum"])
    lines = [line for line in kernel["mountinfo"].splitlines() if f" {device} " not in line]
    kernel["mountinfo"] = "\n".join(lines + [f"90 22 {major}:{minor} / {where} {ro} - ext4 {device} {ro}"]) + "\n"
    backend.machine.snap = devices.Snapshot.from_record(kernel, live=False)
    devices.replay(backend.machine.snap)


class FakeBackend(Engine):
    def __init__(self, machine_desc: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(RecordedMachine(machine_desc or machine()), **kwargs)
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}  # method name -> exception it raises
        self.gate: threading.Event | None = None  # when set, jobs wait for it before ending
        self.mounted: list = []  # browse sessions open now (mounted partitions)
        self.plans_used: list = []  # plans handed to restore/clone

    @property
    def data(self) -> dict[str, Any]:
        return self.machine.data  # type: ignore[attr-defined, no-any-return]

    @property
    def log(self) -> list[str]:
        return self.machine.runner.log  # type: ignore[attr-defined, no-any-return]

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def _job(self, method: str, cancel: threading.Event) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        self._maybe_fail(method)
        if cancel.is_set():
            raise Cancelled(f"{method} cancelled by the user")

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

    def plan_restore(self, repo_path, name, target_path, policy="auto", **kwargs):
        self.calls.append(("plan_restore", target_path, policy))
        self._maybe_fail("plan_restore")
        return super().plan_restore(repo_path, name, target_path, policy, **kwargs)

    def plan_clone(self, source_path, target_path, policy="auto", **kwargs):
        self.calls.append(("plan_clone", source_path, target_path, policy))
        self._maybe_fail("plan_clone")
        return super().plan_clone(source_path, target_path, policy, **kwargs)

    def restore(self, repo_path, name, target_path, plan, progress, cancel, **kwargs):
        self.calls.append(("restore", repo_path, name, target_path))
        self.plans_used.append(plan)
        out = super().restore(repo_path, name, target_path, plan, progress, cancel, **kwargs)
        self._job("restore", cancel)
        return out

    def clone(self, source_path, target_path, plan, progress, cancel, **kwargs):
        self.calls.append(("clone", source_path, target_path, plan.policy))
        self.plans_used.append(plan)
        out = super().clone(source_path, target_path, plan, progress, cancel, **kwargs)
        self._job("clone", cancel)
        return out

    def capture(self, source_path, repo_path, name, progress, cancel, **kwargs):
        self.calls.append(("capture", source_path, repo_path, name))
        out = super().capture(source_path, repo_path, name, progress, cancel, **kwargs)
        self._job("capture", cancel)
        return out

    def verify(self, repo_path, name, progress, cancel):
        self.calls.append(("verify", repo_path, name))
        self._maybe_fail("verify")
        return super().verify(repo_path, name, progress, cancel)

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
        self._job("copy_files", cancel)
        return out

    def reboot(self):
        self.calls.append(("reboot",))
        self._maybe_fail("reboot")
        super().reboot()

    def poweroff(self):
        self.calls.append(("poweroff",))
        super().poweroff()

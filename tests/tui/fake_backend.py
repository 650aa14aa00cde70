"""An in-memory machine for the wizard's tests: the Backend protocol over the same data
the dry run uses, plus what tests need — a record of every job started, jobs that wait
for the test, and errors injected into chosen methods."""

from __future__ import annotations

import copy
import threading

from rescue.tui.dryrun import DryRunBackend

GiB = 1 << 30
MiB = 1 << 20

MACHINE = {
    "boot_drive": "sdc",
    "drives": [
        {"name": "sda", "model": "Samsung SSD 860 EVO 500GB", "serial": "S3Z1NB0K123456A",
         "size": 500 * 10**9, "bus": "sata",
         "partitions": [{"name": "sda1", "size": 512 * MiB, "fstype": "vfat", "label": "EFI"},
                        {"name": "sda2", "size": 400 * GiB, "fstype": "ext4", "label": "old-root"}]},
        {"name": "sdb", "model": "WD Elements 25A2", "serial": "WX11D1234567", "size": 2000 * 10**9,
         "bus": "usb", "partitions": [{"name": "sdb1", "size": 1800 * GiB, "fstype": "ext4",
                                       "label": "images"}]},
        {"name": "sdc", "model": "SanDisk Cruzer Blade", "serial": "4C530001", "size": 16 * 10**9,
         "bus": "usb", "partitions": [{"name": "sdc1", "size": 15 * GiB, "fstype": "iso9660",
                                       "label": "RESCUE"}]},
        {"name": "sdd", "model": "Kingston DataTraveler", "serial": "KT0002", "size": 8 * 10**9,
         "bus": "usb", "partitions": []},
        {"name": "nvme0n1", "model": "WDC PC SN730 256GB", "serial": "2048AB", "size": 256 * 10**9,
         "bus": "nvme", "partitions": [{"name": "nvme0n1p1", "size": 200 * GiB, "fstype": "ntfs",
                                        "label": "Windows"}]},
    ],
    "repositories": [
        {"path": "/media/sdb1", "drive": "sdb", "images": [
            {"name": "web01-2024-05-01", "created": "2024-05-01T10:15:00",
             "source_model": "Samsung SSD 860 EVO 500GB", "source_serial": "S3Z1NB0K999",
             "source_size": 120 * GiB, "data_bytes": 12 * GiB, "stored_bytes": 9 * GiB,
             "verified": True,
             "partitions": [{"size": 512 * MiB, "fstype": "vfat", "label": "EFI"},
                            {"size": 100 * GiB, "fstype": "ext4", "label": "root"},
                            {"size": 8 * GiB, "fstype": "swap", "label": "swap"}]},
            {"name": "laptop-2024-06-30", "created": "2024-06-30T08:00:00",
             "source_model": "WDC PC SN730 256GB", "source_serial": "2048XX",
             "source_size": 256 * 10**9, "data_bytes": 60 * GiB, "stored_bytes": 40 * GiB,
             "verified": None,
             "partitions": [{"size": 255 * GiB, "fstype": "ntfs", "label": "Windows"}]},
        ]},
    ],
    "free_space": {"/media/sdb1": 1500 * GiB, "/mnt/small": 2 * GiB, "/mnt/big": 900 * GiB},
}


class FakeBackend(DryRunBackend):
    def __init__(self, machine: dict | None = None):
        super().__init__(copy.deepcopy(machine or MACHINE))
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}  # method name -> exception it raises
        self.gate: threading.Event | None = None  # when set, jobs wait for it before ending

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

    def plan_restore(self, repo_path, name, target_path):
        self._maybe_fail("plan_restore")
        return super().plan_restore(repo_path, name, target_path)

    def _job(self, method, *args):
        if self.gate is not None:
            self.gate.wait(10)
        self._maybe_fail(method)

    def restore(self, repo_path, name, target_path, plan, progress, cancel):
        self.calls.append(("restore", repo_path, name, target_path))
        out = super().restore(repo_path, name, target_path, plan, progress, cancel)
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

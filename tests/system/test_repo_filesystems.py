"""A technician stores images on a USB drive formatted exFAT, NTFS or FAT32: every command
works with the repository there (capture, list, info, verify, plan, restore, mount, umount,
extract), an image name those filesystems cannot hold is refused in one line before anything
is written, a name that differs from an image's only in case is refused (it is the same
folder there), and what rescue called done survives the drive's driver dying at once.

The filesystems are real, through FUSE (this kernel has no vfat, exfat or ntfs driver):
exfat-fuse, ntfs-3g and fusefat's read-write mode (`-o rw+`). The ISO's kernel drivers are
what users get; the FUSE drivers are stricter where it matters here (no syncfs, no appends on
fusefat). fusefat is mounted with `fsname=DEVICE`, else the mount table does not say which
drive holds the repository (and the safety rules cannot see it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from disks import MiB, sh, tree_hashes
from drives import SourceDrive, build_gpt_drive, check_restored, mib_layout

pytestmark = pytest.mark.root

FILESYSTEMS = ["exfat", "ntfs", "vfat"]
NAME = "Office-PC"
MKFS = {
    "exfat": ["mkfs.exfat", "-L", "RESCUE"],
    "ntfs": ["mkfs.ntfs", "-Q", "-F", "-L", "RESCUE"],
    "vfat": ["mkfs.vfat", "-F", "32", "-n", "RESCUE"],
}


@dataclass
class RepoDrive:
    """A loop device formatted `fs`, mounted through its FUSE driver, run in the foreground
    so this test owns the driver's process (and can kill it, as pulling the drive would)."""

    fs: str
    dev: str
    mnt: Path
    state: Path  # RESCUE_STATE_DIR: browsing sessions of these tests only
    driver: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.mnt / "repo"

    def mount(self) -> None:
        argv = {
            "exfat": ["mount.exfat-fuse", "-d", self.dev, str(self.mnt)],  # -d: foreground
            "ntfs": ["ntfs-3g", "-o", "no_detach", self.dev, str(self.mnt)],
            "vfat": ["fusefat", "-f", "-o", f"rw+,fsname={self.dev}", self.dev, str(self.mnt)],
        }[self.fs]
        self.driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mnt):
            assert self.driver.poll() is None, f"{argv[0]} exited with {self.driver.returncode}"
            assert time.monotonic() < deadline, f"{argv[0]} did not mount {self.dev}"
            time.sleep(0.05)

    def unmount(self) -> None:
        """Unmount and wait for the driver to finish writing (fusefat's umount does not)."""
        if self.driver is None:
            return
        subprocess.run(["umount", str(self.mnt)], check=False)
        try:
            self.driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.pull()
        self.driver = None

    def pull(self) -> None:
        """What pulling the drive does to the driver: it dies with whatever it held in memory."""
        if self.driver is None:
            return
        self.driver.kill()
        self.driver.wait()
        self.driver = None
        subprocess.run(["umount", "-l", str(self.mnt)], stderr=subprocess.DEVNULL)

    def fsck(self) -> None:
        """The filesystem checks clean (FAT's dirty bit aside: a drive pulled while mounted has
        it set, and that alone is no damage)."""
        argv = {"exfat": ["fsck.exfat", "-n"], "ntfs": ["ntfsfix", "-n"], "vfat": ["fsck.vfat", "-n"]}[self.fs]
        proc = subprocess.run(argv + [self.dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if self.fs == "vfat":
            benign = ("fsck.fat ", "Dirty bit is set", " Automatically removing dirty bit", "Leaving filesystem")
            complaints = [
                ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith((*benign, self.dev))
            ]
            assert not complaints, proc.stdout
        else:
            assert proc.returncode == 0, proc.stdout

    def rescue(self, *args: str) -> subprocess.CompletedProcess:
        """The `rescue` command as a user runs it."""
        env = {**os.environ, "RESCUE_STATE_DIR": str(self.state)}
        return subprocess.run([sys.executable, "-m", "rescue", *args], capture_output=True, text=True, env=env)

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.rescue(*args)
        assert proc.returncode == 0, f"rescue {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
        return proc


@pytest.fixture(scope="module")
def source(mloops) -> SourceDrive:
    """One small GPT drive with an ext4 partition of files (about 10 MiB of them)."""
    return build_gpt_drive(mloops, "fs-source.img", mib_layout((40, "ext4", "data")), 48 * MiB)


@pytest.fixture(scope="module", params=FILESYSTEMS)
def drive(request, mloops, source) -> Iterator[RepoDrive]:
    """The repository drive, with the source captured into it as NAME."""
    fs = request.param
    dev = mloops.attach(mloops.file(f"repo-{fs}.img", 256 * MiB))
    sh(*MKFS[fs], dev)
    mnt, state = mloops.root / f"repo-{fs}", mloops.root / f"state-{fs}"
    mnt.mkdir()
    d = RepoDrive(fs, dev, mnt, state)
    d.mount()
    try:
        d.ok("capture", source.device, str(d.repo), "--name", NAME)
        yield d
    finally:
        d.unmount()


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, proc.stderr
    return err


def test_list_info_and_verify_work_on_the_repository(drive):
    listed = json.loads(drive.ok("list", str(drive.repo), "--json").stdout)
    assert [(i["name"], i["damaged"]) for i in listed] == [(NAME, None)]
    info = json.loads(drive.ok("info", str(drive.repo), NAME, "--json").stdout)
    assert [a["fs"]["type"] for a in info["areas"] if a["partition"]] == ["ext4"]
    for _ in range(2):  # the second verify replaces verified.json by renaming over it
        assert "is intact" in drive.ok("verify", str(drive.repo), NAME).stdout
    assert json.loads(drive.ok("list", str(drive.repo), "--json").stdout)[0]["verified"] is True
    files = files_under(drive.repo)
    assert not [f for f in files if f.endswith(".tmp")], files
    assert max(files.values()) < 5 * MiB, "a repository file far larger than a chunk"


def test_restore_from_it_gives_identical_files_on_clean_filesystems(drive, mloops, source):
    target = mloops.disk(f"{drive.fs}-target.img", 48 * MiB)
    assert "refused" not in drive.ok("plan", str(drive.repo), NAME, target).stdout
    drive.ok("restore", str(drive.repo), NAME, target, "--yes", "--layout", "same")
    check_restored(mloops, source, mloops.drives / f"{drive.fs}-target.img")


def test_the_repository_drive_itself_is_never_a_target(drive):
    proc = drive.rescue("plan", str(drive.repo), NAME, drive.dev)
    assert proc.returncode == 3 and "holds the repository" in one_line(proc), proc


def test_mount_and_extract_show_the_files(drive, mloops, source):
    mp = mloops.root / f"browse-{drive.fs}"
    mp.mkdir()
    drive.ok("mount", str(drive.repo), NAME, str(mp))
    try:
        assert tree_hashes(mp / "p1") == source.hashes[1]
    finally:
        drive.ok("umount", str(mp))
    assert list(mp.iterdir()) == []
    out = mloops.root / f"extract-{drive.fs}"
    drive.ok("extract", str(drive.repo), NAME, "--partition", "1", "--to", str(out), "/dir1")
    want = {k.removeprefix("dir1/"): v for k, v in source.hashes[1].items() if k.startswith("dir1/")}
    assert want and tree_hashes(out / "dir1") == want


BAD_NAMES = {  # invalid on FAT, exFAT and NTFS alike: a forbidden character, a Windows device, a trailing dot
    "a:b": "':' cannot be in a file name on FAT, exFAT or NTFS",
    "CON": "CON is a device name on Windows",
    "pc.": "ends with a dot",
}


def test_a_name_the_filesystem_cannot_hold_is_refused_before_anything_is_written(drive, source):
    before = files_under(drive.repo)
    for bad, reason in BAD_NAMES.items():
        proc = drive.rescue("capture", source.device, str(drive.repo), "--name", bad)
        assert proc.returncode == 2 and reason in one_line(proc), proc
        assert files_under(drive.repo) == before
    fresh = drive.mnt / "fresh-repo"
    proc = drive.rescue("capture", source.device, str(fresh), "--name", "a:b")
    assert proc.returncode == 2 and BAD_NAMES["a:b"] in one_line(proc), proc
    assert not fresh.exists()


def test_a_name_differing_only_in_case_is_refused(drive, source):
    before = files_under(drive.repo)
    proc = drive.rescue("capture", source.device, str(drive.repo), "--name", NAME.lower())
    assert proc.returncode == 2, proc
    err = one_line(proc)
    assert f"an image named '{NAME}' already exists" in err and "differ only in case" in err, err
    assert files_under(drive.repo) == before
    # Asked for by the other case, the image is not found (not reported damaged).
    proc = drive.rescue("info", str(drive.repo), NAME.lower())
    assert proc.returncode == 2 and f"no image named '{NAME.lower()}'" in one_line(proc), proc
    assert [i["name"] for i in json.loads(drive.ok("list", str(drive.repo), "--json").stdout)] == [NAME]


def test_what_capture_called_done_survives_the_driver_dying(drive, source):
    """A second image, then the driver killed at once (as pulling the drive would): the
    filesystem checks clean, and both images verify on the next mount."""
    drive.ok("capture", source.device, str(drive.repo), "--name", "second")
    drive.pull()
    drive.fsck()
    drive.mount()
    names = [i["name"] for i in json.loads(drive.ok("list", str(drive.repo), "--json").stdout)]
    assert sorted(names) == sorted([NAME, "second"])
    for name in names:
        drive.ok("verify", str(drive.repo), name)
    drive.unmount()
    drive.fsck()
    drive.mount()

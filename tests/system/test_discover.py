"""Finding repositories on real filesystems over loop devices. Every search is limited to
this test's own loop devices (the `devices` argument), so nothing else on the machine is
mounted or touched."""

from __future__ import annotations

import errno
import json
import os

import pytest
from disks import MiB, sh

from rescue.hw import devices
from rescue.hw.discover import MARKER, find_repositories, release

pytestmark = pytest.mark.root


def make_repo(root, sub: str | None = "repo"):
    repo = root / sub if sub else root
    repo.mkdir(exist_ok=True)
    (repo / MARKER).write_text(json.dumps({"format": "rescue-repo", "version": 1}))
    return repo


def ext4_loop(loops, name, with_repo: str | None | bool = False):
    dev = loops.disk(name, 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    if with_repo is not False:
        with loops.mounted(dev) as mnt:
            make_repo(mnt, with_repo)
    return dev


def mount_entry(mountpoint):
    for m in devices.parse_mountinfo(open("/proc/self/mountinfo").read()):
        if m.mountpoint == str(mountpoint):
            return m
    return None


def test_finds_repo_on_unmounted_ext4_read_only_and_leaves_others_unmounted(loops, tmp_path):
    with_repo = ext4_loop(loops, "repo.img", with_repo="repo")
    without = ext4_loop(loops, "plain.img")
    blank = loops.disk("blank.img", 64 * MiB)
    run_dir = tmp_path / "run"
    found = find_repositories(str(run_dir), [with_repo, without, blank])
    try:
        assert len(found) == 1
        loc = found[0]
        name = os.path.basename(with_repo)
        assert loc.path == str(run_dir / name / "repo")
        assert (loc.device, loc.drive, loc.mounted_by_us, loc.read_only) == (with_repo, name, True, True)
        assert (run_dir / name / "repo" / MARKER).is_file()
        m = mount_entry(run_dir / name)
        assert m is not None and m.read_only and m.source == with_repo
        with pytest.raises(OSError) as err:
            (run_dir / name / "repo" / "x").write_text("must not land")
        assert err.value.errno == errno.EROFS
        # The filesystem without a repository was mounted, searched and put back.
        assert devices.drive_info(without).mounts == []
        assert not (run_dir / os.path.basename(without)).exists()
        assert not (run_dir / os.path.basename(blank)).exists()
    finally:
        release(found)
    assert devices.drive_info(with_repo).mounts == []
    assert not (run_dir / name).exists()


def test_repo_at_the_top_of_an_already_mounted_filesystem_is_left_mounted(loops, tmp_path):
    dev = ext4_loop(loops, "mounted.img")
    with loops.mounted(dev) as mnt:
        make_repo(mnt, None)
        make_repo(mnt, "second")
        found = find_repositories(str(tmp_path / "run"), [dev])
        assert [loc.path for loc in found] == [str(mnt), str(mnt / "second")]
        assert all(not loc.mounted_by_us and not loc.read_only and loc.mountpoint == str(mnt) for loc in found)
        release(found)
        assert devices.drive_info(dev).mounts == [(dev, str(mnt))]  # not ours to unmount
        assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_two_levels_down_is_not_searched(loops, tmp_path):
    dev = ext4_loop(loops, "deep.img")
    with loops.mounted(dev) as mnt:
        (mnt / "a").mkdir()
        make_repo(mnt / "a", "b")
    found = find_repositories(str(tmp_path / "run"), [dev])
    release(found)
    assert found == []
    assert devices.drive_info(dev).mounts == []


def test_ntfs_is_mounted_through_ntfs3g(loops, tmp_path):
    dev = loops.disk("ntfs.img", 64 * MiB)
    sh("mkfs.ntfs", "-q", "-F", "-Q", dev)
    with loops.mounted(dev, "ntfs-3g") as mnt:
        make_repo(mnt, "images")
    found = find_repositories(str(tmp_path / "run"), [dev])
    try:
        assert [os.path.basename(loc.path) for loc in found] == ["images"]
        assert found[0].read_only and found[0].mounted_by_us
    finally:
        release(found)
    assert devices.drive_info(dev).mounts == []


def test_unmountable_vfat_and_swap_are_skipped_quietly(loops, tmp_path):
    fat = loops.disk("fat.img", 64 * MiB)
    sh("mkfs.vfat", "-I", fat)  # -I: a stale partition on a reused loop must not stop it
    swap = loops.disk("swap.img", 64 * MiB)
    sh("mkswap", swap)
    run_dir = tmp_path / "run"
    found = find_repositories(str(run_dir), [fat, swap])
    release(found)
    if found:  # a machine whose kernel mounts vfat finds no repository on an empty one either
        pytest.fail(f"unexpected repositories {found}")
    assert devices.drive_info(fat).mounts == [] and devices.drive_info(swap).mounts == []
    assert not run_dir.exists() or list(run_dir.iterdir()) == []


def test_loop_devices_are_skipped_unless_asked_for(loops, tmp_path):
    dev = ext4_loop(loops, "repo.img", with_repo="repo")
    found = find_repositories(str(tmp_path / "run"))  # whole machine, loops excluded
    try:
        assert all(loc.device != dev for loc in found)
        assert devices.drive_info(dev).mounts == []
    finally:
        release(found)

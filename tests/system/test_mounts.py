"""rescue.hw.mounts on real loop devices and mounts: what it sets up is undone also when the
block fails, and what it undoes is only ever its own: a loop device someone re-attached or
a mount point someone mounted over is left alone. Every device is over a file in this
test's directory; the `loops` registry detaches whatever a failing test leaves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from disks import MiB, sh, umount

from rescue.hw import mounts
from rescue.hw.mounts import OurLoop, OurMount, Outcome

pytestmark = pytest.mark.root


def backing_of(dev: str) -> str | None:
    """What the kernel says, read independently of the code under test."""
    try:
        return Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def mounted_at(where: Path) -> list[str]:
    """Sources mounted at `where`, bottom to top, from `findmnt` (not our parser)."""
    proc = subprocess.run(
        ["findmnt", "--list", "--noheadings", "--output", "SOURCE", "--mountpoint", str(where)],
        capture_output=True,
        text=True,
    )
    return proc.stdout.split()


def ext4_file(loops, name: str = "fs.img") -> Path:
    path = loops.file(name, 32 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(path))
    return path


class Boom(Exception):
    pass


def test_loop_attached_shows_the_range_and_is_detached_on_exception(loops):
    path = loops.file("disk.img", 8 * MiB)
    seen = []
    with pytest.raises(Boom), mounts.loop_attached(path, offset=MiB, size=4 * MiB, read_only=True) as dev:
        seen.append(dev)
        assert backing_of(dev) == str(path)
        name = os.path.basename(dev)
        assert Path(f"/sys/block/{name}/loop/offset").read_text().strip() == str(MiB)
        assert Path(f"/sys/block/{name}/loop/sizelimit").read_text().strip() == str(4 * MiB)
        assert Path(f"/sys/block/{name}/ro").read_text().strip() == "1"
        raise Boom
    assert backing_of(seen[0]) is None


def test_mounted_is_unmounted_and_detached_on_exception(loops, tmp_path):
    path = ext4_file(loops)
    where = tmp_path / "mnt"
    where.mkdir()
    seen = []
    with pytest.raises(Boom), mounts.loop_attached(path) as dev, mounts.mounted(dev, where, "ext4") as mnt:
        seen.append(dev)
        assert mnt == str(where)
        assert mounted_at(where) == [dev]
        (where / "file").write_text("x")
        raise Boom
    assert mounted_at(where) == []
    assert backing_of(seen[0]) is None


def test_a_loop_device_attached_again_by_someone_else_is_not_detached(loops):
    ours_file = loops.file("ours.img", 4 * MiB)
    theirs_file = loops.file("theirs.img", 4 * MiB)
    with mounts.loop_attached(ours_file) as dev:
        # Someone detaches ours and attaches their file to the same /dev/loopN.
        sh("losetup", "--detach", dev)
        sh("losetup", dev, str(theirs_file))
        loops.devices.append(dev)  # theirs: the registry detaches it at the end
        assert backing_of(dev) == str(theirs_file)
    assert backing_of(dev) == str(theirs_file)


@pytest.mark.parametrize("change", ["offset", "sizelimit", "same path, another file"])
def test_a_loop_device_that_shows_something_else_is_not_detached(loops, change):
    path = loops.file("disk.img", 8 * MiB)
    ours = mounts.attach(path, offset=MiB, size=2 * MiB)
    assert mounts.loop_is_ours(ours)
    sh("losetup", "--detach", ours.device)
    argv = ["losetup", "--offset", str(MiB), "--sizelimit", str(2 * MiB)]
    if change == "offset":
        argv[2] = str(2 * MiB)
    elif change == "sizelimit":
        argv[4] = str(3 * MiB)
    else:  # the file was replaced: the path is the same, the inode is not
        loops.file("new.img", 8 * MiB).rename(path)
    sh(*argv, ours.device, str(path))
    loops.devices.append(ours.device)
    assert not mounts.loop_is_ours(ours)
    assert mounts.detach(ours) is Outcome.NOT_OURS
    assert backing_of(ours.device) == str(path)


def test_detach_of_a_free_device_is_absent_and_of_ours_is_done(loops):
    path = loops.file("disk.img", 4 * MiB)
    ours = mounts.attach(path)
    assert mounts.detach(ours) is Outcome.DONE
    assert backing_of(ours.device) is None
    assert mounts.detach(ours) is Outcome.ABSENT


def test_a_deleted_backing_file_is_still_ours(loops):
    path = loops.file("gone.img", 4 * MiB)
    ours = mounts.attach(path)
    loops.devices.append(ours.device)
    os.unlink(path)
    assert backing_of(ours.device) == f"{path} (deleted)"
    assert mounts.detach(ours) is Outcome.DONE
    assert backing_of(ours.device) is None


def test_a_mount_point_whose_mount_was_replaced_is_not_unmounted(loops, tmp_path):
    path = ext4_file(loops)
    where = tmp_path / "mnt"
    where.mkdir()
    try:
        with mounts.loop_attached(path) as dev, mounts.mounted(dev, where, "ext4"):
            umount(str(where))  # someone unmounts ours and mounts theirs there
            sh("mount", "-t", "tmpfs", "-o", "size=1m", "theirs", str(where))
        assert mounted_at(where) == ["theirs"]
    finally:
        umount(str(where))
    assert mounted_at(where) == []


def test_a_mount_stacked_on_ours_is_left_alone(loops, tmp_path):
    path = ext4_file(loops)
    where = tmp_path / "mnt"
    where.mkdir()
    try:
        with mounts.loop_attached(path) as dev:
            ours = mounts.mount(dev, where, "ext4")
            sh("mount", "-t", "tmpfs", "-o", "size=1m", "theirs", str(where))
            assert not mounts.mount_is_ours(ours)
            assert mounts.unmount(ours, lazy=True) is Outcome.NOT_OURS
            assert mounted_at(where) == [dev, "theirs"]
            umount(str(where))  # theirs goes; ours is on top again
            assert mounts.unmount(ours) is Outcome.DONE
            assert mounted_at(where) == []
    finally:
        while mounted_at(where):
            umount(str(where))


def test_a_mount_point_with_a_space_and_non_ascii_is_found(loops, tmp_path):
    path = ext4_file(loops)
    where = tmp_path / "café x\té"
    where.mkdir()
    raw = Path("/proc/self/mountinfo").read_bytes
    with mounts.loop_attached(path) as dev, mounts.mounted(dev, where, "ext4", read_only=True) as mnt:
        assert mnt == str(where)
        assert "café\\040x\\011é".encode() in raw()  # the kernel escaped the space and the tab
        found = mounts.mount_at(where)
        assert found is not None and found.source == dev and found.mountpoint == str(where)
        assert found.read_only
        assert mounts.mount_is_ours(OurMount(dev, str(where)))
    assert mounts.mount_at(where) is None and mounted_at(where) == []
    assert b"caf\xc3\xa9\\040x" not in raw()


def test_a_busy_mount_is_busy_unless_lazy(loops, tmp_path):
    path = ext4_file(loops)
    where = tmp_path / "mnt"
    where.mkdir()
    with mounts.loop_attached(path) as dev:
        ours = mounts.mount(dev, where, "ext4")
        try:
            with open(where / "open-file", "w"):
                assert mounts.unmount(ours) is Outcome.BUSY
                assert mounted_at(where) == [dev]
                assert mounts.unmount(ours, lazy=True) is Outcome.DONE
                assert mounted_at(where) == []
        finally:
            umount(str(where))


def test_a_failing_mount_says_why_and_leaves_nothing(loops, tmp_path):
    path = loops.file("blank.img", 4 * MiB)  # no filesystem
    where = tmp_path / "mnt"
    where.mkdir()
    from rescue.errors import FilesystemError

    with mounts.loop_attached(path) as dev:
        with pytest.raises(FilesystemError, match=r"^mounting p9 \(ext4\) failed: ") as e:
            mounts.mount(dev, where, "ext4", read_only=True, what="p9 (ext4)")
        assert "dmesg(1)" not in str(e.value)
    assert mounted_at(where) == []


def test_loops_over_a_file_are_all_detached(loops):
    path = loops.file("shared.img", 4 * MiB)
    other = loops.file("other.img", 4 * MiB)
    a, b = mounts.attach(path), mounts.attach(path, offset=MiB)
    c = mounts.attach(other)
    loops.devices += [a.device, b.device, c.device]
    assert sorted(mounts.detach_loops_over(path)) == sorted([a.device, b.device])
    assert backing_of(a.device) is None and backing_of(b.device) is None
    assert backing_of(c.device) == str(other)
    assert mounts.detach(c) is Outcome.DONE


def test_records_of_a_state_file_still_match(loops):
    path = loops.file("disk.img", 4 * MiB)
    ours = mounts.attach(path, offset=MiB, read_only=True)
    loops.devices.append(ours.device)
    again = OurLoop.from_json(ours.to_json())
    assert mounts.loop_is_ours(again)
    assert mounts.detach(again) is Outcome.DONE

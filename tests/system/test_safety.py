"""The safety rules on real devices: each refusal names its rule, and a drive nobody uses
passes. Partitions are loop devices with an offset over a loop "disk" (no partition nodes
on loop devices here), which is exactly the stacking the rules must see through."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from disks import MiB, partition_table, sh

from rescue.cli import main
from rescue.errors import RefusedError
from rescue.hw import devices
from rescue.hw.safety import check_source, check_target

pytestmark = pytest.mark.root


def ext4_disk(loops, name="disk.img", size=96 * MiB):
    """A disk with one ext4 "partition" from 1 MiB to the end, seen through its own loop."""
    disk = loops.disk(name, size)
    part = loops.partition(disk, 2048, size // 512 - 2048)
    sh("mkfs.ext4", "-q", part)
    return disk, part


def test_the_drive_holding_root_is_refused():
    names = devices.drive_of_path("/")
    if not names:
        pytest.skip("/ is not on a block device here")
    root_drive = f"/dev/{names[-1]}"
    with pytest.raises(RefusedError, match=r"mounted filesystem \(.* on /[,)]"):
        check_target(root_drive)


def test_an_unused_loop_disk_is_accepted(loops):
    disk = loops.disk("blank.img", 64 * MiB)
    drive = check_target(disk)
    assert drive.path == disk and drive.size == 64 * MiB


def test_mounted_loop_is_refused_naming_the_mountpoint(loops):
    dev = loops.disk("fs.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError) as err:
            check_target(dev)
        assert str(err.value) == f"target {dev} has a mounted filesystem ({dev} on {mnt})"
    check_target(dev)  # unmounted again: allowed


def test_mounted_partition_view_refuses_the_disk_below(loops):
    """What this machine has instead of sysfs holders: a loop device stacked on the disk.
    sysfs lists no holder for it; the rules follow the stack instead."""
    disk, part = ext4_disk(loops)
    assert devices.drive_info(disk).holders == []
    check_target(disk)  # an idle loop on top is not a use
    with loops.mounted(part) as mnt:
        with pytest.raises(RefusedError, match=rf"target {disk} has a mounted filesystem \({part} on {mnt}\)"):
            check_target(disk)


def test_image_file_attached_to_a_mounted_loop_is_refused(loops):
    img = loops.file("fs.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(img))
    dev = loops.attach(img)
    check_target(str(img))  # attached but not in use: a file target is fine
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError, match=rf"{img} has a mounted filesystem \({dev} on {mnt}\)"):
            check_target(str(img))


def test_swap_is_refused(loops):
    dev = loops.disk("swap.img", 64 * MiB)
    sh("mkswap", dev)
    sh("swapon", dev)
    try:
        with pytest.raises(RefusedError, match=rf"target {dev} is used as swap"):
            check_target(dev)
        with pytest.raises(RefusedError, match="used as swap"):
            check_source(dev)
    finally:
        sh("swapoff", dev)


def test_drive_holding_the_repository_is_refused(loops):
    disk, part = ext4_disk(loops, "repo.img")
    other = loops.disk("other.img", 64 * MiB)
    with loops.mounted(part) as mnt:
        repo = mnt / "images"
        repo.mkdir()
        with pytest.raises(RefusedError, match=rf"target {part} holds the repository {repo}$"):
            check_target(part, repo_path=str(repo))
        with pytest.raises(RefusedError, match=rf"target {disk} holds the repository {repo}$"):
            check_target(disk, repo_path=str(repo))
        check_target(other, repo_path=str(repo))  # a different drive may be written
        with pytest.raises(RefusedError, match="holds the repository"):
            check_source(disk, str(repo))


def test_image_file_holding_the_repository_is_refused(loops):
    """The repository lives in a filesystem inside an image file: writing that file is
    writing the repository."""
    img = loops.file("repo-in-file.img", 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(img))
    dev = loops.attach(img)
    with loops.mounted(dev) as mnt:
        with pytest.raises(RefusedError, match="holds the repository"):
            check_target(str(img), repo_path=str(mnt))


def test_source_and_target_must_differ(loops):
    disk, part = ext4_disk(loops, "src.img")
    other = loops.disk("dst.img", 96 * MiB)
    with pytest.raises(RefusedError, match=rf"target {disk} is the source drive \({disk}\)"):
        check_target(disk, source=disk)
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(part, source=disk)  # a partition of the source
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(disk, source=part)
    with pytest.raises(RefusedError, match="is the source drive"):
        check_target(loops.drives / "src.img", source=disk)  # the file behind the source loop
    check_target(other, source=disk)


def test_source_mounted_read_write_is_refused_read_only_is_fine(loops):
    disk, part = ext4_disk(loops, "src.img")
    with loops.mounted(part, options="ro") as mnt:
        assert check_source(disk).path == disk
        sh("mount", "-o", "remount,rw", str(mnt))
        with pytest.raises(RefusedError, match=rf"source {disk} has a mounted filesystem \({part} on {mnt}\)"):
            check_source(disk)


def test_boot_medium_is_refused(loops):
    """Simulated live medium: a partition of a loop disk mounted where the live system
    mounts its medium; the whole disk and its partition are both off limits."""
    disk, part = ext4_disk(loops, "live.img")
    other = loops.disk("target.img", 64 * MiB)
    with loops.mounted(part, options="ro") as medium:
        with pytest.raises(RefusedError, match=rf"target {disk} booted this rescue system \({disk}\)"):
            check_target(disk, live_medium=str(medium))
        with pytest.raises(RefusedError, match="booted this rescue system"):
            check_target(part, live_medium=str(medium))
        check_target(other, live_medium=str(medium))


def test_read_only_and_empty_devices_are_refused(loops):
    img = loops.file("ro.img", 64 * MiB)
    dev = loops.attach(img, readonly=True)
    with pytest.raises(RefusedError, match=rf"target {dev} is read-only"):
        check_target(dev)
    assert check_source(dev).read_only is True


def test_second_loop_over_the_same_bytes_is_seen(loops):
    """Two loop devices over one file alias the same bytes when their ranges overlap."""
    img = loops.file("shared.img", 96 * MiB)
    whole = loops.attach(img)
    first = loops.attach(img, offset=1 * MiB, size=40 * MiB)
    second = loops.attach(img, offset=50 * MiB, size=40 * MiB)
    sh("mkfs.ext4", "-q", first)
    with loops.mounted(first) as mnt:
        with pytest.raises(RefusedError, match=rf"target {whole} has a mounted filesystem \({first} on {mnt}\)"):
            check_target(whole)
        # 50..90 MiB does not overlap 1..41 MiB: refused only for being part of a file.
        with pytest.raises(
            RefusedError, match=rf"target {second} shows only bytes \d+-\d+ of {img}, not a whole drive$"
        ):
            check_target(second)


# --------------------------------------------------------------------------- whole drives only
#
# Through the CLI, as a person types it: each refusal exits 3 with one line naming the rule,
# and the bytes that would have been written are the same afterwards.

PART_START, PART_SECTORS = 2048, 180000  # 1 MiB .. about 89 MiB of a 96 MiB drive
PART_BYTES = f"bytes {PART_START * 512}-{(PART_START + PART_SECTORS) * 512 - 1}"


def sha(*paths) -> list[str]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(MiB):
                h.update(block)
        out.append(h.hexdigest())
    return out


@pytest.fixture(scope="module")
def imaged(mloops):
    """A small GPT drive with one ext4 partition, captured as "img"; returns (source, repo)."""
    path = mloops.file("src.img", 64 * MiB)
    partition_table(str(path), "label: gpt\nstart=2048, size=100000\n")
    part = mloops.attach(path, offset=MiB, size=100000 * 512)
    sh("mkfs.ext4", "-q", part)
    source = mloops.attach(path)
    repo = mloops.root / "repo"
    assert main(["capture", source, str(repo), "--name", "img"]) == 0
    return source, repo


def refusal(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; it must refuse (exit 3) with one line on stderr."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rescue: "), err
    return lines[0].removeprefix("rescue: ")


def jobs(repo: Path, source: str, target: str) -> dict[str, list[str]]:
    return {
        "restore": ["restore", str(repo), "img", target, "--yes", "--no-preverify"],
        "clone": ["clone", source, target, "--yes"],
        "plan": ["plan", str(repo), "img", target],
    }


WRITING_JOBS = ["restore", "clone", "plan"]


def partitioned(loops, name: str = "disk.img") -> tuple[Path, str]:
    """A 96 MiB drive with a GPT and one partition, behind a loop device."""
    path = loops.file(name, 96 * MiB)
    partition_table(str(path), f"label: gpt\nstart={PART_START}, size={PART_SECTORS}\n")
    return path, loops.attach(path)


def partition_node(disk: str) -> str:
    """A real partition node (the kernel does not read tables here; partx announces it)."""
    sh("partx", "--add", disk)
    node = f"{disk}p1"
    assert os.path.exists(node) and devices.drive_info(node).parent == os.path.basename(disk)
    return node


@pytest.mark.parametrize("job", WRITING_JOBS)
def test_a_partition_is_not_a_target(imaged, loops, capsys, job):
    source, repo = imaged
    path, disk = partitioned(loops)
    part = partition_node(disk)
    before = sha(path)
    line = refusal(capsys, jobs(repo, source, part)[job])
    assert line == f"target {part} is a partition of {disk}, not a whole drive"
    assert sha(path) == before, "the drive was written"


@pytest.mark.parametrize("job", WRITING_JOBS)
def test_a_loop_over_part_of_a_drive_is_not_a_target(imaged, loops, capsys, job):
    """This machine's partitions: a loop device with an offset over the whole-drive loop."""
    source, repo = imaged
    path, disk = partitioned(loops)
    view = loops.partition(disk, PART_START, PART_SECTORS)
    before = sha(path)
    line = refusal(capsys, jobs(repo, source, view)[job])
    assert line == f"target {view} shows only {PART_BYTES} of {disk}, not a whole drive"
    assert sha(path) == before, "the drive was written"


@pytest.mark.parametrize("job", WRITING_JOBS)
def test_a_loop_over_a_partition_is_not_a_target(imaged, loops, capsys, job):
    source, repo = imaged
    path, disk = partitioned(loops)
    part = partition_node(disk)
    alias = loops.attach(part)
    before = sha(path)
    line = refusal(capsys, jobs(repo, source, alias)[job])
    assert line == f"target {alias} shows {part}, a partition of {disk}, not a whole drive"
    assert sha(path) == before, "the drive was written"


def test_a_loop_over_part_of_an_image_file_is_not_a_target(imaged, loops, capsys):
    source, repo = imaged
    path = loops.file("image.img", 96 * MiB)
    view = loops.attach(path, size=64 * MiB)  # from byte 0, but not to the end
    line = refusal(capsys, jobs(repo, source, view)["restore"])
    assert line == f"target {view} shows only bytes 0-{64 * MiB - 1} of {path}, not a whole drive"
    assert sha(path) == sha(loops.file("zeros.img", 96 * MiB)), "the file was written"


@pytest.mark.parametrize("job", ["capture", "clone"])
def test_a_partition_is_not_a_source(imaged, loops, tmp_path, capsys, job):
    """Capturing one partition is not a feature: the image would be a drive without a table."""
    source, repo = imaged
    path, disk = partitioned(loops)
    part = partition_node(disk)
    sh("mkfs.ext4", "-q", part)
    view = loops.partition(disk, PART_START, PART_SECTORS)
    target = loops.file("target.img", 128 * MiB)
    before = sha(target)
    for src, rule in [
        (part, f"is a partition of {disk}, not a whole drive"),
        (view, f"shows only {PART_BYTES} of {disk}, not a whole drive"),
    ]:
        argv = {
            "capture": ["capture", src, str(tmp_path / "new-repo"), "--name", "part"],
            "clone": ["clone", src, str(target), "--yes"],
        }[job]
        assert refusal(capsys, argv) == f"source {src} {rule}"
    assert not (tmp_path / "new-repo" / "images" / "part").exists()
    assert sha(target) == before, "the target was written"


def chunk_files(repo: Path) -> list[Path]:
    """The repository's chunk files, largest first."""
    return sorted((repo / "chunks").glob("*/*"), key=lambda p: p.stat().st_size, reverse=True)


def repo_state(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): sha(p)[0] for p in sorted(repo.rglob("*")) if p.is_file() and p.name != "lock"}


@pytest.mark.parametrize("job", ["restore", "plan"])
def test_a_file_inside_the_repository_is_not_a_target(imaged, loops, capsys, job):
    source, repo = imaged
    chunk = chunk_files(repo)[0]
    manifest = repo / "images" / "img" / "manifest.json"
    link = loops.root / "link-to-chunk.img"
    link.symlink_to(chunk)
    hard = loops.root / "hard-link-to-manifest.img"
    os.link(manifest, hard)
    before = repo_state(repo)
    try:
        for target, rule in [
            (chunk, f"is inside the repository {repo}"),
            (manifest, f"is inside the repository {repo}"),
            (link, f"is inside the repository {repo}"),
            (hard, f"is a hard link to a file inside the repository {repo}"),
        ]:
            line = refusal(capsys, jobs(repo, source, str(target))[job])
            assert line == f"target {target} {rule}"
    finally:
        hard.unlink()
    assert repo_state(repo) == before, "the repository was written"
    assert main(["verify", str(repo), "img"]) == 0


@pytest.mark.parametrize("job", ["restore", "plan"])
def test_a_loop_over_a_file_inside_the_repository_is_not_a_target(imaged, loops, capsys, job):
    source, repo = imaged
    chunk = chunk_files(repo)[0]
    assert chunk.stat().st_size >= 512, "a loop device needs a sector"
    dev = loops.attach(chunk)
    before = repo_state(repo)
    line = refusal(capsys, jobs(repo, source, dev)[job])
    assert line == f"target {dev} shows {chunk}, which is inside the repository {repo}"
    assert repo_state(repo) == before, "the repository was written"


@pytest.mark.parametrize("job", ["restore", "plan"])
def test_a_loop_over_the_repository_filesystem_is_not_a_target(imaged, loops, capsys, job):
    """The repository on a filesystem of its own: another name for the device under it (a
    loop over that device, or a second loop over its image file) is refused."""
    source, repo = imaged
    img = loops.file("repo-fs.img", 96 * MiB)
    fsdev = loops.attach(img)
    sh("mkfs.ext4", "-q", fsdev)
    with loops.mounted(fsdev) as mnt:
        copy = mnt / "repo"
        sh("cp", "-a", str(repo), str(copy))
        sh("mount", "-o", "remount,ro", str(mnt))  # no access times: the bytes stay put unless written
        over_device = loops.attach(fsdev)
        over_file = loops.attach(img)
        before = sha(img)
        for dev in (over_device, over_file):
            line = refusal(capsys, jobs(copy, source, dev)[job])
            assert line == f"target {dev} holds the repository {copy}"
        assert sha(img) == before, "the repository's filesystem was written"


@pytest.mark.parametrize("job", ["restore", "plan"])
def test_a_loop_over_a_file_on_the_repository_filesystem_is_not_a_target(imaged, loops, capsys, job):
    """Outside the repository directory but on its filesystem, directly or through a
    filesystem whose image file is stored there: the drive's bytes are the repository's
    filesystem's, and a restore would fill it."""
    source, repo = imaged

    def on_repo_fs(name: str) -> Path:
        path = loops.root / name  # tmp_path, like the repository
        with open(path, "wb") as f:
            f.truncate(96 * MiB)
        return path

    beside = on_repo_fs("beside.img")
    fsdev = loops.attach(on_repo_fs("stacked-fs.img"))
    sh("mkfs.ext4", "-q", fsdev)
    mount = sh("findmnt", "--noheadings", "--output", "SOURCE,TARGET", "--target", str(repo)).split()
    with loops.mounted(fsdev) as mnt:
        stacked = mnt / "drive.img"
        with open(stacked, "wb") as f:
            f.truncate(96 * MiB)
        for backing in (beside, stacked):
            dev = loops.attach(backing)
            before = sha(backing)
            line = refusal(capsys, jobs(repo, source, dev)[job])
            assert line == (
                f"target {dev} is stored in {backing}, on the filesystem that holds the repository {repo} "
                f"({mount[0]} on {mount[1]})"
            )
            assert sha(backing) == before, "the drive was written"


def test_a_loop_over_a_mounted_drive_is_refused_as_mounted(imaged, loops, capsys):
    """A loop device over the whole of a drive is that drive: its mounts are the loop's."""
    source, repo = imaged
    dev = loops.disk("fs.img", 64 * MiB)
    sh("mkfs.ext4", "-q", dev)
    alias = loops.attach(dev)
    target = loops.disk("t.img", 128 * MiB)
    before = sha(loops.drives / "fs.img", loops.drives / "t.img")
    with loops.mounted(dev, options="ro") as mnt:  # read-only: its bytes stay put unless written
        line = refusal(capsys, jobs(repo, source, alias)["restore"])
        assert line == f"target {alias} has a mounted filesystem ({dev} on {mnt})"
    assert sha(loops.drives / "fs.img")[0] == before[0], "the mounted drive was written"
    with loops.mounted(dev) as mnt:
        line = refusal(capsys, ["clone", alias, target, "--yes"])
        assert line == f"source {alias} has a mounted filesystem ({dev} on {mnt}); unmount it or mount it read-only"
    assert sha(loops.drives / "t.img")[0] == before[1], "the clone target was written"
    check_target(alias)  # unmounted: a whole-drive loop is a drive like any other


def test_whole_drives_stay_allowed(imaged, loops, capsys):
    """A loop device from byte 0 over a whole file on another filesystem, an image file
    itself (beside the repository, on its filesystem), a loop over a whole-drive loop, and a
    size limit past the end."""
    source, repo = imaged
    loop = loops.disk("whole.img", 96 * MiB)
    assert check_target(loop, repo_path=str(repo)).size == 96 * MiB
    assert check_target(str(loops.file("whole.img", 96 * MiB)), repo_path=str(repo)).size == 96 * MiB
    assert check_target(loops.attach(loop), repo_path=str(repo)).size == 96 * MiB
    assert check_target(loops.attach(loops.file("limit.img", 64 * MiB), size=64 * MiB)).size == 64 * MiB
    assert check_source(loop).size == 96 * MiB
    capsys.readouterr()
    assert main(["restore", str(repo), "img", loop, "--yes"]) == 0, capsys.readouterr().err
    assert main(["restore", str(repo), "img", str(loops.file("beside.img", 96 * MiB)), "--yes"]) == 0

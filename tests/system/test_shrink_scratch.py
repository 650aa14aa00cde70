"""A shrink needs scratch space for the data past the new end, not for the data: restoring and
cloning a root filesystem holding far more than the scratch directory can take onto a smaller
drive succeeds with scratch limited to a 64 MiB tmpfs (as RAM is limited on the rescue
system), and when even that is too little the plan refuses before a byte is written.

The peak is measured from outside (the tmpfs's own usage, sampled while the job runs), and
printed next to the data size."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest
from disks import MiB, partition_table, sh, tree_hashes
from disks import rescue as run_rescue

pytestmark = pytest.mark.root
rescue = functools.partial(run_rescue, check=True)

ROOT_MIB, DATA_MIB, TARGET_MIB = 1536, 400, 900


def _tree(root: Path) -> None:
    """400 MiB in files of 1-8 MiB: random bytes and text that compresses about 3:1, one copy
    of each."""
    rnd = random.Random(20)
    left, i = DATA_MIB * MiB, 0
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
    while left > 0:
        n = min(left, rnd.randint(1, 8) * MiB)
        d = root / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        if i % 2:
            data = rnd.randbytes(n)
        else:
            data = b" ".join(rnd.choice(words) for _ in range(n // 5))[:n]
        (d / f"f{i}.bin").write_bytes(data)
        left -= n
        i += 1


@pytest.fixture(scope="module")
def system(mloops):
    """A drive with one ext4 root of 1.5 GiB holding 400 MiB, populated as an installer does
    (mke2fs -d), captured into a repository."""
    tree = mloops.root / "tree"
    tree.mkdir()
    _tree(tree)
    image = mloops.file("sys.img", (ROOT_MIB + 2) * MiB)
    partition_table(str(image), f"label: dos\nstart=2048, size={ROOT_MIB * 2048}, type=83\n")
    part = mloops.root / "root.fs"
    sh("mke2fs", "-q", "-t", "ext4", "-d", str(tree), "-L", "root", str(part), f"{ROOT_MIB}M")
    sh("dd", f"if={part}", f"of={image}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    part.unlink()
    device = mloops.attach(image)
    repo = mloops.root / "repo"
    rescue("capture", device, str(repo), "--name", "sys")
    return device, repo, tree_hashes(tree)


class Peak:
    """The highest usage of a directory's filesystem while a job runs, sampled from outside."""

    def __init__(self, path: Path):
        self.path, self.peak, self.stop = path, 0, threading.Event()
        self.base = self._used()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self._used() - self.base)

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _check_root(mloops, target_image: Path, hashes: dict[str, str]) -> int:
    table = json.loads(sh("sfdisk", "--json", str(target_image)))["partitiontable"]["partitions"]
    start, size = table[0]["start"] * 512, table[0]["size"] * 512
    dev = mloops.attach(target_image, offset=start, size=size)
    fsck = subprocess.run(["e2fsck", "-fn", dev], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert fsck.returncode == 0, fsck.stdout[-2000:]
    with mloops.mounted(dev, "ext4", "ro") as mnt:
        assert tree_hashes(mnt) == hashes
    return size


@pytest.mark.parametrize("job", ["restore", "clone"])
def test_shrink_with_scratch_limited_to_64_mib(system, mloops, job):
    device, repo, hashes = system
    target = mloops.disk(f"{job}.img", TARGET_MIB * MiB)
    with mloops.mounted("tmpfs", "tmpfs", "size=64m") as scratch:
        with Peak(scratch) as peak:
            if job == "restore":
                out = rescue("restore", str(repo), "sys", target, "--yes", "--scratch", str(scratch))
            else:
                out = rescue("clone", device, target, "--yes", "--scratch", str(scratch))
        assert list(scratch.iterdir()) == [], "scratch files left behind"
    assert "shrink" in out.stdout and "scratch space for shrinking" in out.stdout, out.stdout
    size = _check_root(mloops, mloops.drives / f"{job}.img", hashes)
    assert size < ROOT_MIB * MiB
    print(
        f"\n{job}: root ext4 {ROOT_MIB} MiB holding {DATA_MIB} MiB shrunk to {size >> 20} MiB; "
        f"peak scratch {peak.peak / MiB:.1f} MiB (tmpfs limited to 64 MiB)"
    )
    assert peak.peak < 64 * MiB


def test_a_shrink_whose_scratch_cannot_fit_is_refused_before_writing(system, mloops):
    """The plan fits the smaller target, but scratch limited to a 1 MiB tmpfs cannot take the
    data past the new end:
    the plan says so and what would help, and the target is untouched."""
    _, repo, _ = system
    target = mloops.disk("refused.img", TARGET_MIB * MiB)
    with mloops.mounted("tmpfs", "tmpfs", "size=1m") as scratch:
        plan = run_rescue("plan", str(repo), "sys", target, "--scratch", str(scratch))
        proc = run_rescue("restore", str(repo), "sys", target, "--yes", "--scratch", str(scratch))
    assert plan.returncode == 3 and "scratch space" in plan.stdout, plan.stdout
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert plan.stderr == proc.stderr and plan.stderr.count("\n") == 1, (plan.stderr, proc.stderr)
    assert "--scratch DIR" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    with open(mloops.drives / "refused.img", "rb") as f:
        assert f.read(2 * MiB) == bytes(2 * MiB), "the target was written"


def test_a_shrink_that_fails_half_way_names_the_file_and_says_the_target_is_partly_written(system, mloops):
    """Scratch space taken by something else after the plan was made: the job fails with the
    scratch file's name and the target's state, and leaves no scratch file behind."""
    from rescue.errors import RescueError
    from rescue.imaging.restore import plan_restore, restore
    from rescue.repo.store import Repository

    _, repo_path, _ = system
    target = mloops.disk("half.img", TARGET_MIB * MiB)
    repo = Repository.open(repo_path)
    with mloops.mounted("tmpfs", "tmpfs", "size=64m") as scratch:
        plan = plan_restore(repo, "sys", target, scratch_dir=str(scratch))
        assert plan.fits and plan.scratch is not None, plan.reason
        subprocess.run(["dd", "if=/dev/zero", f"of={scratch}/filler", "bs=1M"], stderr=subprocess.DEVNULL)
        with pytest.raises(RescueError) as err:
            restore(repo, "sys", target, plan=plan, preverify=False)
        (scratch / "filler").unlink()
        assert list(scratch.iterdir()) == [], "scratch file left behind"
    msg = str(err.value)
    assert str(scratch) in msg and "No space left on device" in msg, msg
    assert f"{target} is partly written" in msg, msg

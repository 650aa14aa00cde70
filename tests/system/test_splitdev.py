"""The split device a restore shrinks a filesystem on: [0, new_size) is the target drive at
the partition's place, [new_size, old_size) a sparse scratch file, one loop device over a
FUSE file that joins them (rescue.hw.splitdev).

What a user would check: bytes land where they belong and nowhere else on the target; a real
shrink through it leaves a clean filesystem with every file intact on the target while the
scratch file holds only what lay past the new end; and whatever goes wrong (an exception, a
dead server, a killed caller, a full scratch directory) ends in an error, never a hang, with
nothing left attached, mounted or running."""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from disks import MiB, sh, tree_hashes

from rescue.errors import DeviceError, FilesystemError
from rescue.filesystems import identify
from rescue.filesystems.base import Volume
from rescue.filesystems.resize import resize_filesystem
from rescue.hw.splitdev import Piece, SplitDevice, split_device, split_range

pytestmark = pytest.mark.root

OFFSET = 4 * MiB  # where the partition starts on the target
NEW, OLD = 16 * MiB, 48 * MiB
GUARD = 4 * MiB  # target bytes after the partition


# --- helpers ---------------------------------------------------------------------------------


def pattern(n: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return b"".join(rnd.randbytes(min(MiB, n - i)) for i in range(0, n, MiB))


def make_target(path: Path, size: int, seed: int = 99) -> bytes:
    """A target filled with a known pattern, so that any byte written where it should not
    be shows."""
    data = pattern(size, seed)
    path.write_bytes(data)
    return data


def loop_of(backing: str) -> list[str]:
    """Loop devices whose backing file is `backing` (other tests may run at the same time:
    only ours are looked at)."""
    found = []
    for f in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if f.read_text().strip() == backing:
                found.append(f"/dev/{f.parts[3]}")
        except OSError:
            pass
    return found


def mounted_at(path: str) -> bool:
    return any(
        len(f := ln.split()) > 4 and f[4] == path for ln in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Seen:
    """What a split device had set up, to check that all of it is gone afterwards."""

    def __init__(self, loop: str, fuse_file: str, pid: int, scratch: Path):
        self.loop, self.fuse_file, self.pid, self.scratch = loop, fuse_file, pid, scratch
        self.mnt = str(Path(fuse_file).parent)
        self.work = Path(fuse_file).parent.parent
        assert loop_of(self.fuse_file) == [self.loop]
        assert mounted_at(self.mnt) and alive(self.pid) and self.scratch.exists()

    @classmethod
    def of(cls, sd: SplitDevice) -> Seen:
        return cls(sd.path, str(sd.fuse_file), sd.server_pid, sd.scratch)

    def assert_gone(self, work_too: bool = True) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            alive(self.pid) or loop_of(self.fuse_file) or mounted_at(self.mnt) or self.scratch.exists()
        ):
            time.sleep(0.1)
        assert loop_of(self.fuse_file) == [], "loop device left attached"
        assert not mounted_at(self.mnt), "FUSE file system left mounted"
        assert not alive(self.pid), "server process left running"
        assert not self.scratch.exists(), "scratch file left behind"
        if work_too:
            assert not self.work.exists(), "work directory left behind"


def dd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """dd in its own process: a read or write that hung in the kernel would hang only it,
    and the timeout turns a hang into a test failure."""
    return subprocess.run(["dd", *args, "status=none"], capture_output=True, timeout=timeout)


# --- pure routing ----------------------------------------------------------------------------


def test_split_range_routes_and_splits():
    assert split_range(0, 10, 100, 7) == [Piece(False, 7, 0, 10)]
    assert split_range(100, 10, 100, 7) == [Piece(True, 0, 0, 10)]
    assert split_range(95, 10, 100, 7) == [Piece(False, 102, 0, 5), Piece(True, 0, 5, 5)]
    assert split_range(150, 1, 100, 7) == [Piece(True, 50, 0, 1)]


# --- routing through the real device ------------------------------------------------------------


def aligned(data: bytes) -> mmap.mmap:
    """A page-aligned copy (O_DIRECT needs aligned memory)."""
    m = mmap.mmap(-1, len(data))
    m.write(data)
    return m


def test_bytes_land_at_their_place_and_nowhere_else(tmp_path):
    target = tmp_path / "target.img"
    before = make_target(target, OFFSET + NEW + GUARD)
    expect = bytearray(before[OFFSET : OFFSET + NEW]) + bytearray(OLD - NEW)  # the device's bytes

    def put(pos: int, data: bytes) -> None:
        expect[pos : pos + len(data)] = data

    fast = [(NEW + 20 * MiB, pattern(MiB + 4096, 7)), (NEW - 4096, pattern(16384, 8))]
    writes = [  # (device byte, bytes, through O_DIRECT?) through the loop device, in this order
        (0, pattern(64 * 1024, 1), True),
        (NEW - 6 * MiB, pattern(2 * MiB, 2), True),  # wholly in the target, near its end
        (NEW - 512 * 3, pattern(4096, 3), True),  # straddles new_size: 1.5 KiB / 2.5 KiB
        (NEW - MiB, pattern(3 * MiB, 4), False),  # straddles: 1 MiB / 2 MiB, buffered
        (NEW + 5 * MiB, pattern(MiB, 5), True),  # wholly in the scratch file
        (OLD - 8192, pattern(8192, 6), False),  # the device's last bytes
    ]

    def write_into(sd: SplitDevice) -> None:
        for pos, data in fast:
            sd.write(pos, data)
            put(pos, data)

    with split_device(str(target), OFFSET, NEW, OLD, tmp_path, write_into=write_into) as sd:
        Seen.of(sd)
        assert sd.scratch.parent == tmp_path and os.path.getsize(sd.scratch) == OLD - NEW
        with open(sd.path, "rb") as f:
            assert f.seek(0, os.SEEK_END) == OLD
        direct = os.open(sd.path, os.O_RDWR | os.O_DIRECT)
        buffered = os.open(sd.path, os.O_RDWR)
        try:
            for pos, data in fast:  # written before the loop device existed
                assert os.pread(buffered, len(data), pos) == bytes(expect[pos : pos + len(data)])
            for pos, data, use_direct in writes:
                with aligned(data) as m:
                    assert os.pwritev(direct if use_direct else buffered, [m], pos) == len(data)
                put(pos, data)
                if not use_direct:
                    os.fsync(buffered)
                assert os.pread(buffered, len(data), pos) == data
                with aligned(bytes(len(data))) as m:
                    assert os.preadv(direct, [m], pos) == len(data) and m[:] == data
            # The device's cache now holds these pages; the fast path still wins, because
            # sd.write drops the range it wrote from the cache.
            fresh = pattern(12288, 9)
            sd.write(NEW - 4096, fresh)
            put(NEW - 4096, fresh)
            assert os.pread(buffered, len(fresh), NEW - 4096) == fresh
        finally:
            os.close(direct)
            os.close(buffered)
        # What each file holds, read behind the device's back.
        assert sd.scratch.read_bytes() == bytes(expect[NEW:]), "scratch file differs from the bytes past new_size"
        assert sd.scratch_bytes() < (OLD - NEW) // 2, "scratch file is not sparse"
        assert sd.read(0, OLD) == bytes(expect)
        with open(sd.path, "rb") as f:
            assert f.read() == bytes(expect)

    after = target.read_bytes()
    assert after[:OFFSET] == before[:OFFSET], "target bytes before the partition were changed"
    assert after[OFFSET + NEW :] == before[OFFSET + NEW :], "target bytes after the partition were changed"
    assert after[OFFSET : OFFSET + NEW] == bytes(expect[:NEW])


def test_sequential_throughput(tmp_path):
    """256 MiB written and read back through the loop device, across the split (printed;
    run with -s to see it)."""
    new, old = 256 * MiB, 512 * MiB
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(OFFSET + new)
    block = mmap.mmap(-1, 4 * MiB)
    block.write(os.urandom(4 * MiB))
    back = mmap.mmap(-1, 4 * MiB)
    with split_device(str(target), OFFSET, new, old, tmp_path) as sd:
        start = 128 * MiB  # half in the target, half in the scratch file
        fd = os.open(sd.path, os.O_RDWR | os.O_DIRECT)
        try:
            t = time.monotonic()
            for i in range(64):
                os.pwritev(fd, [block], start + i * 4 * MiB)
            os.fsync(fd)
            wrote = time.monotonic() - t
            t = time.monotonic()
            for i in range(64):
                os.preadv(fd, [back], start + i * 4 * MiB)
                assert back[:64] == block[:64]
            read = time.monotonic() - t
        finally:
            os.close(fd)
        print(
            f"\nsplit device (direct I/O {'on' if sd.direct_io else 'off'}): 256 MiB written at "
            f"{256 * MiB / wrote / 1e6:.0f} MB/s, read at {256 * MiB / read / 1e6:.0f} MB/s"
        )
        assert wrote < 60 and read < 60


# --- a real shrink --------------------------------------------------------------------------

FS_OLD, FS_NEW = 512 * MiB, 320 * MiB
PART = 1 * MiB


def fill_and_thin(mnt: Path, upto: int) -> None:
    """Files of 4 MiB until about `upto` bytes are used, then every other one deleted: data
    spread over the whole filesystem, past the new end too."""
    n = 0
    while True:
        st = os.statvfs(mnt)
        if (st.f_blocks - st.f_bfree) * st.f_frsize >= upto:
            break
        (mnt / f"f{n:03}.bin").write_bytes(random.Random(n).randbytes(4 * MiB - 123 * n))
        n += 1
    sh("sync")
    for i in range(0, n, 2):
        (mnt / f"f{i:03}.bin").unlink()
    (mnt / "dir").mkdir()
    (mnt / "dir" / "small.txt").write_text("kept\n" * 1000)


def used_ranges(path: str, size: int) -> list[tuple[int, int]]:
    """What the restore engine writes: the used-block map, plus the first and last MiB."""
    vol = Volume(path, 0, size)
    _, mod = identify(vol)
    assert mod is not None, f"no filesystem module for {path}"
    return [(e.start, e.length) for e in mod.used_extents(vol)] + [(0, MiB), (size - MiB, MiB)]


def write_ranges(source: Path, ranges, sd: SplitDevice) -> int:
    written = 0
    with open(source, "rb") as f:
        for start, length in ranges:
            while length:
                n = min(length, 4 * MiB)
                f.seek(start)
                data = f.read(n)
                assert len(data) == n
                sd.write(start, data)
                start, length, written = start + n, length - n, written + n
    return written


SHRINKS = {
    # fstype: (mkfs, mount type, ro options, checker)
    "ext4": (["mkfs.ext4", "-q", "-F", "-L", "split"], "ext4", "ro,noload", ["e2fsck", "-fn"]),
    "ntfs": (["mkntfs", "-q", "-F", "-f", "-L", "split"], "ntfs-3g", "ro", ["ntfsfix", "-n"]),
}


@pytest.mark.parametrize("fstype", ["ext4", "ntfs"])
def test_shrink_through_the_split_device(loops, tmp_path, fstype):
    mkfs, mtype, ro, check = SHRINKS[fstype]
    source = loops.file("source.img", FS_OLD)
    sh(*mkfs, str(source))
    dev = loops.attach(source)
    with loops.mounted(dev, mtype) as mnt:
        fill_and_thin(mnt, 440 * MiB)
        hashes = tree_hashes(mnt)
    sh("losetup", "--detach", dev)
    loops.devices.remove(dev)
    ranges = used_ranges(str(source), FS_OLD)
    used = sum(n for s, n in ranges if s + n <= FS_OLD - MiB and s >= MiB)
    past = sum(max(0, s + n - max(s, FS_NEW)) for s, n in ranges)
    assert used > 180 * MiB and past > 40 * MiB, f"{used} bytes used, {past} past the new end"

    target = tmp_path / "target.img"
    before = make_target(target, PART + FS_NEW + MiB)
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()
    said = []
    with split_device(
        str(target), PART, FS_NEW, FS_OLD, scratch_dir, write_into=lambda sd: write_ranges(source, ranges, sd)
    ) as sd:
        after_write = sd.scratch_bytes()
        said.append(resize_filesystem(fstype, sd.path, FS_NEW))
        peak = sd.scratch_bytes()
    print(
        f"\n{fstype}: {used / MiB:.0f} MiB used, {past / MiB:.0f} MiB past the new end; scratch "
        f"{after_write / MiB:.1f} MiB after writing, {peak / MiB:.1f} MiB after the resize; {said[0]}"
    )
    assert "shrunk" in said[0]
    assert list(scratch_dir.iterdir()) == []
    # The scratch file holds what lay past the new end (and what the tool wrote there), not
    # the filesystem's data.
    assert peak <= past + 8 * MiB, "the scratch file held more than what lay past the new end"
    assert peak < used * 0.6

    after = target.read_bytes()
    assert after[:PART] == before[:PART] and after[PART + FS_NEW :] == before[PART + FS_NEW :], (
        "target bytes outside the partition were changed"
    )
    part = loops.attach(target, offset=PART, size=FS_NEW, readonly=True)
    checked = subprocess.run([*check, part], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert checked.returncode == 0, checked.stdout
    if fstype == "ext4":
        text = sh("dumpe2fs", "-h", part)
        blocks = int(re.search(r"Block count:\s+(\d+)", text).group(1))
        assert blocks * int(re.search(r"Block size:\s+(\d+)", text).group(1)) == FS_NEW
    with loops.mounted(part, mtype, ro) as mnt:
        assert tree_hashes(mnt) == hashes


# --- failures and cleanup ---------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_the_block_leaves_nothing(tmp_path, exc):
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW)
    with pytest.raises(exc):
        with split_device(str(target), OFFSET, NEW, OLD, tmp_path) as sd:
            seen = Seen.of(sd)
            with open(sd.path, "rb") as f:  # busy device and file at the moment of failure
                f.read(4096)
                raise exc("boom")
    seen.assert_gone()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.img"]


def test_a_killed_server_gives_an_error_not_a_hang(tmp_path):
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW)
    t = time.monotonic()
    with pytest.raises(DeviceError, match=r"split-device server for .*target.img was killed by signal 9"):
        with split_device(str(target), OFFSET, NEW, OLD, tmp_path) as sd:
            seen = Seen.of(sd)
            assert dd(f"if={sd.path}", "of=/dev/null", "bs=64k", "count=4", "iflag=direct").returncode == 0
            os.kill(sd.server_pid, signal.SIGKILL)
            while alive(sd.server_pid):
                time.sleep(0.05)
            got = dd(f"if={sd.path}", "of=/dev/null", "bs=64k", "count=4", "skip=300", "iflag=direct")
            assert got.returncode != 0 and b"Input/output error" in got.stderr, got.stderr
            got = dd("if=/dev/zero", f"of={sd.path}", "bs=64k", "count=4", "oflag=direct")
            assert got.returncode != 0
    assert time.monotonic() - t < 60
    seen.assert_gone()


def test_a_failure_in_the_block_names_the_dead_server(tmp_path):
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW)
    with pytest.raises(DeviceError, match=r"target.img was killed by signal 9; then: e2fsck .*Input/output error"):
        with split_device(str(target), OFFSET, NEW, OLD, tmp_path) as sd:
            seen = Seen.of(sd)
            os.kill(sd.server_pid, signal.SIGKILL)
            while alive(sd.server_pid):
                time.sleep(0.05)
            resize_filesystem("ext4", sd.path, NEW)  # e2fsck cannot read it: FilesystemError
    seen.assert_gone()


def test_a_full_scratch_directory_fails_the_session(loops, tmp_path):
    scratch_dir = tmp_path / "small"
    scratch_dir.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=2m", "splitdev-test", str(scratch_dir))
    loops.mounts.append(str(scratch_dir))
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW)
    with pytest.raises(DeviceError, match=r"write of .*rescue-split-.*\.scratch at byte \d+ failed: No space left"):
        with split_device(str(target), OFFSET, NEW, OLD, scratch_dir) as sd:
            seen = Seen.of(sd)
            got = dd("if=/dev/urandom", f"of={sd.path}", "bs=1M", "count=8", f"seek={NEW // MiB + 1}", "oflag=direct")
            assert got.returncode != 0, "8 MiB fitted into a 2 MiB scratch directory"
    seen.assert_gone()
    assert list(scratch_dir.iterdir()) == []

    # A tool that fails on it (as resize2fs would) gets the cause put in front of its error.
    with pytest.raises(
        DeviceError,
        match=r"\.scratch at byte \d+ failed: No space left on device; then: "
        r"resize2fs failed",
    ):
        with split_device(str(target), OFFSET, NEW, OLD, scratch_dir) as sd:
            seen = Seen.of(sd)
            got = dd("if=/dev/urandom", f"of={sd.path}", "bs=1M", "count=8", f"seek={NEW // MiB + 1}", "oflag=direct")
            raise FilesystemError(f"resize2fs failed on {sd.path}: {got.stderr.decode().strip()}")
    seen.assert_gone()


def test_a_killed_caller_leaves_nothing(tmp_path):
    """SIGKILL of the process that set the device up: the server notices (pidfd), detaches
    the loop device, deletes the scratch file and stops. Only its log stays, as the record."""
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW)
    script = textwrap.dedent(f"""
        import sys, time
        from rescue.hw.splitdev import split_device
        with split_device({str(target)!r}, {OFFSET}, {NEW}, {OLD}, {str(tmp_path)!r}) as sd:
            print(sd.path, sd.fuse_file, sd.server_pid, sd.scratch, flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        loop, fuse_file, pid, scratch = child.stdout.readline().split()
        seen = Seen(loop, fuse_file, int(pid), Path(scratch))
    finally:
        child.kill()
        child.wait()
    seen.assert_gone(work_too=False)
    assert not Path(seen.mnt).exists()
    log = (seen.work / "server.log").read_text()
    assert "owner process" in log and "is gone" in log
    (seen.work / "server.log").unlink()
    seen.work.rmdir()


def test_refusals_leave_nothing(tmp_path):
    target = tmp_path / "target.img"
    make_target(target, OFFSET + NEW - 4096)
    with pytest.raises(DeviceError, match=r"target.img holds \d+ bytes, too few"):
        with split_device(str(target), OFFSET, NEW, OLD, tmp_path):
            pass
    with pytest.raises(DeviceError, match="not smaller"):
        with split_device(str(target), 0, OLD, OLD, tmp_path):
            pass
    with pytest.raises(DeviceError, match="scratch directory .* does not exist"):
        with split_device(str(target), 0, MiB, OLD, tmp_path / "nope"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.img"]
    assert hashlib.sha256(target.read_bytes()).digest()  # untouched file still readable

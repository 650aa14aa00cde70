"""One multicast stream restores several machines: `rescue serve --multicast` in one network
namespace, `rescue restore multicast://eth0` (and `rescue unattended rescue.repo=multicast://`)
in others, all joined by veth pairs to one bridge on the host kernel (tests/servers/netns.py),
each receiver writing its own loop device. udpcast carries the bytes.

Checked as a user checks: the files on every receiver equal the source's; a receiver whose
drive is too small says so, writes nothing, and the others finish; a receiver whose stream
stops fails alone, naming the chunk, its tables cleared; a damaged repository is refused by
the sender before anything is sent; packet loss on one receiver's link is repaired."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import sh, tree_hashes
from drives import data_drive
from servers.netns import Segment

pytestmark = pytest.mark.skipif(shutil.which("udp-sender") is None, reason="udpcast is not installed")

MiB = 1 << 20
SOURCE_SIZE = 40 * MiB + 11 * 512
TARGET_SIZE = 44 * MiB + 3 * 512
RUN = secrets.token_hex(3)
PORTS = itertools.count(9100, 2)  # not udpcast's 9000: --portbase and multicast://IF:PORT pass through


def rescue_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rescue", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture(scope="module")
def source(mloops):
    """A GPT drive, one ext4 partition with random files (they do not compress), read-only."""
    return data_drive(
        mloops, f"{RUN}-src.img", SOURCE_SIZE, 6, Path(__file__).resolve().parents[2] / "rescue" / "multicast"
    )


@pytest.fixture(scope="module")
def repo(source, tmp_path_factory):
    where = tmp_path_factory.mktemp("mc-repo") / "repo"
    subprocess.run(rescue_cmd("capture", source, str(where), "--name", "lab"), check=True, capture_output=True)
    return where


@pytest.fixture
def segment():
    """Five namespaces on one bridge: 0 sends, the others receive. Always removed."""
    with Segment(5) as seg:
        yield seg


def files_of(loops, disk: str) -> dict[str, str]:
    p = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]["partitions"][0]
    part = loops.attach(disk, offset=p["start"] * 512, size=p["size"] * 512, readonly=True)
    with loops.mounted(part, "ext4", "ro,noload") as mnt:
        return tree_hashes(mnt)


def said(err: str) -> list[str]:
    """What rescue said on stderr (without this container's missing-udevadm noise)."""
    return [ln for ln in err.splitlines() if ln.strip() and "udevadm: not found" not in ln]


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Session:
    """A sender and its receivers, each a `rescue` process in its namespace, their output in
    files (a pipe nobody reads while waiting would stall them)."""

    def __init__(self, seg: Segment, repo: Path, logs: Path, receivers: int, *serve: str):
        self.seg, self.port, self.logs = seg, next(PORTS), logs
        self.where = f"multicast://eth0:{self.port}"
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        serve = ("--receivers", str(receivers), "--wait", "20", *serve)
        self.sender = self.start(0, "serve", str(repo), "lab", "--multicast", "--portbase", str(self.port), *serve)

    def start(self, ns: int, *args: str) -> subprocess.Popen:
        log = self.logs / f"{len(self.procs)}.log"
        with open(log, "w") as out, open(f"{log}.err", "w") as err:
            p = self.seg.popen(ns, rescue_cmd(*args), stdout=out, stderr=err, env=env(), start_new_session=True)
        self.procs.append((p, log))
        return p

    def receive(self, ns: int, disk: str, query: str = "") -> subprocess.Popen:
        return self.start(ns, "restore", self.where + query, "lab", disk, "--yes")

    def unattended(self, ns: int, size: int) -> subprocess.Popen:
        params = (
            f"rescue.mode=restore rescue.repo={self.where} rescue.image=lab "
            f"rescue.target=bus:loop,model~{RUN}-,size:{size}..{size} rescue.confirm=destroy"
        )
        return self.start(ns, "unattended", "--cmdline", params)

    def wait(self, timeout: float = 60) -> list[tuple[int, str, str]]:
        """(exit status, stdout, stderr) of the sender, then of each receiver."""
        deadline = time.monotonic() + timeout
        try:
            for p, _ in self.procs:
                p.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in self.procs:  # udp-sender and udp-receiver with them
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            raise AssertionError(f"stuck: {self.read()}") from None
        return self.read()

    def read(self) -> list[tuple[int, str, str]]:
        return [(p.returncode, log.read_text(), Path(f"{log}.err").read_text()) for p, log in self.procs]


def test_every_receiver_restores_identical_files_from_one_stream(segment, repo, source, loops, tmp_path):
    """Three drives of three sizes (one through the unattended mode): one stream, each planned
    for its own drive."""
    small = loops.disk(f"{RUN}-a.img", TARGET_SIZE)
    large = loops.disk(f"{RUN}-b.img", 2 * TARGET_SIZE)
    fleet = loops.disk(f"{RUN}-c.img", TARGET_SIZE + 2 * 512)
    s = Session(segment, repo, tmp_path, 3)
    s.receive(1, small)
    s.receive(2, large)
    s.unattended(3, TARGET_SIZE + 2 * 512)
    (code, out, err), *outs = s.wait()
    assert code == 0, out + err + str(outs)
    assert out.count("joined: 10.77.") == 3 and "sending to 3 receivers" in out
    assert "read " in out and out.count(": ok, received the whole stream") == 3, out
    for rc, rout, rerr in outs:
        assert rc == 0, rout + rerr
    assert "RESCUE-RESULT status=ok image=lab" in outs[2][1]
    want = files_of(loops, source)
    for disk in (small, large, fleet):
        assert files_of(loops, disk) == want


def test_a_too_small_drive_leaves_before_writing_and_the_others_finish(segment, repo, source, loops, tmp_path):
    ok = loops.disk(f"{RUN}-ok.img", TARGET_SIZE)
    tiny = loops.disk(f"{RUN}-tiny.img", 8 * MiB)
    with open(tiny, "r+b") as f:
        f.write(os.urandom(MiB))
    before = digest(tiny)
    s = Session(segment, repo, tmp_path, 2)
    s.receive(1, ok)
    small = s.receive(2, tiny)
    started = time.monotonic()
    (code, out, err), *outs = s.wait()
    took = time.monotonic() - started
    assert outs[0][0] == 0, outs[0]
    rc, rout, rerr = outs[1]
    assert rc == 3 and small.returncode == 3 and len(said(rerr)) == 1, rerr
    assert said(rerr)[0].startswith(f"rescue: {tiny} is too small"), rerr
    assert digest(tiny) == before
    assert files_of(loops, ok) == files_of(loops, source)
    assert code in (0, 1) and out.count("joined: ") == 2, out + err  # udpcast may have delivered it all
    assert took < 45, f"the session took {took:.0f} s with a receiver that left"


def test_a_receiver_whose_stream_stops_fails_alone_naming_the_chunk(segment, repo, source, loops, tmp_path):
    """Its udp-receiver killed mid-stream (a cable pulled): that restore fails, its drive's
    tables are cleared; the other receiver's files are identical. One that comes late is not
    let in, says so when its wait ends, and writes nothing."""
    ok = loops.disk(f"{RUN}-ok2.img", TARGET_SIZE)
    cut = loops.disk(f"{RUN}-cut.img", TARGET_SIZE)
    late = loops.disk(f"{RUN}-late.img", TARGET_SIZE)
    before = digest(late)
    s = Session(segment, repo, tmp_path, 2, "--max-rate", "8m")  # about 1 MB/s: seconds to cut it
    s.receive(1, ok)
    victim = s.receive(2, cut)
    log = s.procs[-1][1]
    deadline = time.monotonic() + 30
    while "steps:" not in log.read_text() and time.monotonic() < deadline:  # the header came
        time.sleep(0.1)
    kids = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
    child = next(int(k) for k in kids if b"udp-receiver" in Path(f"/proc/{k}/cmdline").read_bytes())
    time.sleep(1)
    os.kill(child, signal.SIGKILL)
    s.receive(3, late, "?wait=3")
    (code, out, err), *outs = s.wait()
    rc, rout, rerr = outs[2]
    assert rc == 2 and said(rerr)[-1].startswith("rescue: no multicast session on eth0"), rerr
    assert "let this machine in within 3 s" in rerr and digest(late) == before
    assert outs[0][0] == 0 and files_of(loops, ok) == files_of(loops, source)
    rc, rout, rerr = outs[1]
    assert rc == 1 and said(rerr)[-1].startswith("rescue: image lab, area p1, chunk "), rerr
    assert "the multicast stream stopped before it" in said(rerr)[-1]
    assert "first and last MiB were zeroed" in rout
    with open(cut, "rb") as f:
        head = f.read(MiB)
        f.seek(-MiB, os.SEEK_END)
        tail = f.read(MiB)
    assert head == bytes(MiB) and tail == bytes(MiB)
    assert "dropped: 10.77." in out and code == 1


def test_a_damaged_image_is_refused_before_anything_is_sent(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    chunk = next(p for p in sorted((copy / "chunks").rglob("*")) if p.is_file() and p.stat().st_size > 4096)
    blob = bytearray(chunk.read_bytes())
    blob[-100] ^= 0x40
    chunk.write_bytes(bytes(blob))
    proc = subprocess.run(
        rescue_cmd("serve", str(copy), "lab", "--multicast", "--interface", "lo", "--receivers", "1"),
        capture_output=True, text=True, timeout=60, env=env(),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("rescue: image lab, area ") and len(proc.stderr.strip().splitlines()) == 1
    assert "waiting for receivers" not in proc.stdout


def test_packet_loss_on_one_link_is_repaired(segment, repo, source, loops, tmp_path):
    lossy = loops.disk(f"{RUN}-lossy.img", TARGET_SIZE)
    clean = loops.disk(f"{RUN}-clean.img", TARGET_SIZE)
    segment.drop(1, percent=5)
    s = Session(segment, repo, tmp_path, 2)
    s.receive(1, lossy)
    s.receive(2, clean)
    (code, out, err), *outs = s.wait()
    assert code == 0 and all(rc == 0 for rc, _, _ in outs), out + err + str(outs)
    assert "packets sent again: " in out and "packets sent again: 0 " not in out, out
    want = files_of(loops, source)
    assert files_of(loops, lossy) == want and files_of(loops, clean) == want

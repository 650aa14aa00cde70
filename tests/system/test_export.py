"""`rescue export`: an image as a virtual machine's disk file, checked as a user would check
it: qemu-img says the format and size, the disk converted back to raw holds the image's
partition table, boot code, gap bytes and files (fsck clean), `rescue verify` agrees; and a
refused or killed export says so in one line and leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import MiB, sh
from disks import rescue as run_rescue
from drives import build_gpt_drive, check_restored, mib_layout, sha_of, table

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
SIZE = 120 * MiB  # the source drive
LARGER = 256 * MiB
HEAD = (0, 440)  # MBR boot code
GAP = (34 * 512, (2048 - 34) * 512)  # after the GPT, before the first partition (GRUB's core image)


@pytest.fixture(scope="module")
def source(mloops):
    """A GPT drive with a BIOS boot partition, ext4, FAT32 and raw bytes, boot code and a
    gap payload (drives.build_gpt_drive), captured."""
    drive = build_gpt_drive(
        mloops,
        "export-src.img",
        mib_layout((1, None, "bios"), (64, "ext4", "root"), (40, "vfat", "ESPDATA"), (4, "raw", "scratch")),
        size=SIZE,
    )
    repo = mloops.root / "repo"
    run_rescue("capture", drive.device, str(repo), "--name", "img", check=True)
    return drive, repo


@pytest.fixture(scope="module")
def out_dir(mloops):
    """Where the exports go: a folder on the repository's filesystem, beside the repository
    (as on a USB disk that holds both)."""
    d = mloops.root / "vms"
    d.mkdir()
    return d


def export(repo: Path, output: Path, *args: str) -> subprocess.CompletedProcess:
    return run_rescue("export", str(repo), "img", str(output), *args)


def info(path: Path) -> dict:
    return json.loads(sh("qemu-img", "info", "--output=json", str(path)))


def back_to_raw(path: Path, fmt: str) -> Path:
    raw = path.with_name(path.name + ".back.img")  # check_restored finds partitions by "img<N>"
    sh("qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(raw))
    return raw


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture(scope="module")
def raw_same(source, out_dir):
    _, repo = source
    out = out_dir / "same.img"
    proc = export(repo, out)
    assert proc.returncode == 0, proc.stderr
    assert "exported img to" in proc.stdout
    return out


@pytest.fixture(scope="module")
def qcow2_larger(source, out_dir):
    _, repo = source
    out = out_dir / "larger.qcow2"
    proc = export(repo, out, "--size", "256M")
    assert proc.returncode == 0, proc.stderr
    assert "grow" in proc.stdout, proc.stdout  # the plan, as restore shows it
    return out


def test_raw_export_is_the_drive_restored_into_a_sparse_file(source, raw_same, mloops):
    drive, repo = source
    assert info(raw_same)["format"] == "raw" and info(raw_same)["virtual-size"] == SIZE
    assert table(raw_same) == table(drive.image)  # disk id, every partition's place, type, uuid, name
    for span in (HEAD, GAP):
        assert sha_of(raw_same, *span) == sha_of(drive.image, *span)
    check_restored(mloops, drive, raw_same)  # fsck clean, same UUIDs and labels, same files
    verified = run_rescue("verify", str(repo), "img", str(raw_same))
    assert verified.returncode == 0 and "match the image" in verified.stdout, verified.stderr
    data = json.loads(sh(sys.executable, "-m", "rescue", "info", str(repo), "img", "--json"))["stats"]["data_bytes"]
    assert allocated(raw_same) <= data + 4 * MiB, "the raw disk is not sparse"
    assert [p.name for p in raw_same.parent.iterdir() if p.name.startswith(".")] == []


def test_qcow2_export_larger_grows_partitions_and_keeps_boot_bytes_and_files(source, qcow2_larger, mloops):
    drive, repo = source
    found = info(qcow2_larger)
    assert found["format"] == "qcow2" and found["virtual-size"] == LARGER
    sh("qemu-img", "check", str(qcow2_larger))  # no leaks, no corruption
    raw = back_to_raw(qcow2_larger, "qcow2")
    src, dst = table(drive.image), table(raw)
    assert dst["id"] == src["id"] and len(dst["parts"]) == len(src["parts"])
    for a, b in zip(src["parts"], dst["parts"], strict=True):
        assert (b["uuid"], b["type"], b.get("name")) == (a["uuid"], a["type"], a.get("name"))
        assert b["size"] >= a["size"]
    assert sum(p["size"] for p in dst["parts"]) > sum(p["size"] for p in src["parts"]) + 100 * 2048
    assert "No errors detected" in sh("sfdisk", "--verify", str(raw))  # backup GPT at the new end
    for span in (HEAD, GAP):
        assert sha_of(raw, *span) == sha_of(drive.image, *span)
    check_restored(mloops, drive, raw)
    verified = run_rescue("verify", str(repo), "img", str(raw))
    assert verified.returncode == 0 and "match the image" in verified.stdout, verified.stderr
    assert allocated(qcow2_larger) < 2 * allocated(raw), "the qcow2 disk is not sparse"


@pytest.mark.parametrize(("fmt", "size"), [("vmdk", None), ("vhdx", "256M")])
def test_vmdk_and_vhdx_hold_the_same_disk(source, out_dir, raw_same, qcow2_larger, fmt, size):
    """VMDK the same size: converted back, byte for byte the raw export. VHDX larger: the
    qcow2 export's partition table (a grow stamps times into the filesystem: not bytes)."""
    _, repo = source
    out = out_dir / f"disk.{fmt}"
    proc = export(repo, out, *(["--size", size] if size else []))
    assert proc.returncode == 0, proc.stderr
    found = info(out)
    assert found["format"] == fmt and found["virtual-size"] == (LARGER if size else SIZE)
    raw = back_to_raw(out, fmt)
    if size is None:
        assert sha_of(raw, 0, SIZE) == sha_of(raw_same, 0, SIZE)
    else:
        assert table(raw) == table(back_to_raw(qcow2_larger, "qcow2"))


def _state(out_dir: Path, repo: Path) -> tuple[list[str], list[str]]:
    files = sorted(str(p.relative_to(out_dir.parent)) for p in (*out_dir.rglob("*"), *repo.rglob("*")))
    return files, sorted(b for _, b in _loops() if b.startswith(str(out_dir.parent)))


@pytest.mark.parametrize(
    ("name", "args", "code", "words"),
    [
        ("taken.qcow2", [], 3, "exists already: choose another name, or pass --force"),
        ("disk.vdi", [], 2, "unknown disk format; the file name must end in one of .img, .raw, .qcow2, .vmdk, .vhdx"),
        ("INSIDE", [], 3, "is inside the repository"),
        ("small/disk.qcow2", [], 3, "not enough free space in"),
        ("small.img", ["--size", "64M"], 3, "too small"),
    ],
)
def test_refusals_say_one_line_and_leave_nothing(source, out_dir, mloops, name, args, code, words):
    _, repo = source
    (out_dir / "taken.qcow2").write_bytes(b"keep me")
    output = repo / "images" / "disk.img" if name == "INSIDE" else out_dir / name
    before = _state(out_dir, repo)
    with contextlib.ExitStack() as stack:
        if name.startswith("small/"):  # a folder with 8 MiB free
            output = stack.enter_context(mloops.mounted("tmpfs", "tmpfs", "size=8m")) / "disk.qcow2"
        proc = export(repo, output, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and words in lines[0], proc.stderr
    assert lines[0].startswith("rescue: ") and "Traceback" not in proc.stderr
    assert _state(out_dir, repo) == before
    assert (out_dir / "taken.qcow2").read_bytes() == b"keep me"


def test_force_replaces_an_existing_file(source, out_dir):
    _, repo = source
    out = out_dir / "replaced.img"
    out.write_bytes(b"old")
    proc = export(repo, out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert info(out)["virtual-size"] == SIZE


def test_a_killed_export_leaves_nothing_after_the_next_command(source, out_dir, tmp_path):
    """SIGKILL while the disk is written (its loop device attached) or when qemu-img
    converts: the next command removes the files, detaches the loop device, stops qemu-img
    (if a closed pipe has not stopped it already)."""
    _, repo = source
    env = dict(os.environ, RESCUE_STATE_DIR=str(tmp_path / "run" / "mounts"), PYTHONPATH=str(ROOT))
    out = out_dir / "killed.qcow2"
    for stage in ("loop", "convert"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rescue", "export", str(repo), "img", str(out), "--size", "256M"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not _reached(stage, out_dir):
            time.sleep(0.005)
        assert proc.poll() is None, f"the export ended before {stage}"
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone: qemu-img, in its group, runs on
        proc.wait()
        cleared = subprocess.run(
            [sys.executable, "-m", "rescue", "list", str(repo)], capture_output=True, text=True, env=env
        )
        print(f"\n{stage}: {cleared.stderr.strip()}")
        assert "cleared leftovers of an interrupted run" in cleared.stderr, cleared.stderr
        assert "unfinished disk file" in cleared.stderr
        assert not _qemu_img_running(out_dir), "qemu-img left running"
        assert [p.name for p in out_dir.iterdir() if p.name.startswith(".killed")] == []
        assert not out.exists()
        assert [b for _, b in _loops() if ".killed.qcow2." in b] == []
        assert list((tmp_path / "run" / "owned").glob("*.json")) == []
        assert list((tmp_path / "run" / "partly-written").glob("*.json")) == []


def _loops() -> list[tuple[str, str]]:
    out = []
    for d in Path("/sys/block").glob("loop*"):
        try:
            out.append((d.name, (d / "loop" / "backing_file").read_text().strip()))
        except OSError:
            continue
    return out


def _reached(stage: str, out_dir: Path) -> bool:
    """The raw file's loop device is attached; or the converted file is made (qemu-img starts
    next, or runs)."""
    if stage == "loop":
        return any(".killed.qcow2." in b for _, b in _loops())
    return any(n.startswith(".killed.qcow2.") and n.endswith(".qcow2") for n in os.listdir(out_dir))


def _qemu_img_running(out_dir: Path) -> bool:
    return subprocess.run(["pgrep", "-f", f"qemu-img convert .*{out_dir}/.killed"], capture_output=True).returncode == 0

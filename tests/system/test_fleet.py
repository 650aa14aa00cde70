"""`rescue unattended` on loop devices, from a repository on a real web server (Debian's
nginx on 127.0.0.1) and from a local one: the fleet's job as a user checks it, by its last
line, the target's bytes and the files restored.

Drives are picked by rules: a loop device's model names its backing file, so the rules name
this run's files (and sizes no other drive here has, an odd number of sectors)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from disks import rescue, sh, tree_hashes
from drives import data_drive
from servers import s3, web

MiB = 1 << 20
SOURCE_SIZE = 40 * MiB + 13 * 512  # sizes no other test's drive has, so rules pick ours
TARGET_SIZE = 44 * MiB + 7 * 512
TWIN_SIZE = 44 * MiB + 9 * 512
MACHINE = "4c4c4544-0032-3510-8038-b4c04f4e3232"


RUN = secrets.token_hex(3)  # in every drive file's name: a loop device's model names its file


def rule(size: int) -> str:
    """Our drives of that size: loop devices over files of this run (other test runs on the
    same machine have drives too)."""
    return f"bus:loop,model~{RUN}-,size:{size}..{size}"


def drive_name(name: str) -> str:
    return f"{RUN}-{name}"


def result_of(proc) -> dict[str, str]:
    """The RESCUE-RESULT line's fields (the reason is the rest of the line)."""
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESCUE-RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    head, _, reason = lines[0].partition(" reason=")
    fields = dict(w.split("=", 1) for w in head.split()[1:])
    fields["reason"] = reason
    return fields


def wipe(disk: str) -> None:
    """Its partition table gone (both GPT copies): what a new, blank drive looks like."""
    size = os.path.getsize(disk) if os.path.isfile(disk) else int(sh("blockdev", "--getsize64", disk))
    with open(disk, "r+b") as f:
        f.write(bytes(MiB))
        f.seek(size - MiB)
        f.write(bytes(MiB))


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_of(loops, disk: str) -> dict[str, str]:
    """The files of the drive's one partition, wherever the plan put it and however large."""
    p = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]["partitions"][0]
    part = loops.attach(disk, offset=p["start"] * 512, size=p["size"] * 512, readonly=True)
    with loops.mounted(part, "ext4", "ro,noload") as mnt:
        return tree_hashes(mnt)


@pytest.fixture(scope="module")
def source(mloops):
    """A GPT drive, one ext4 partition with files, attached read-only."""
    return data_drive(
        mloops, drive_name("src.img"), SOURCE_SIZE, 4, Path(__file__).resolve().parents[2] / "rescue" / "fleet"
    )


@pytest.fixture(scope="module")
def server(source, tmp_path_factory):
    """nginx serving a repository with lab-1 and lab-2 (the newest) and an older other-1."""
    srv = web.start_nginx(root=tmp_path_factory.mktemp("fleet-web"))
    try:
        repo = srv.www / web.REPO
        for name in ("other-1", "lab-1", "lab-2"):
            rescue("capture", source, str(repo), "--name", name, check=True)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def local_repo(server, tmp_path):
    """A writable copy of the server's repository."""
    dst = tmp_path / "repo"
    shutil.copytree(server.www / web.REPO, dst)
    return dst


def unattended(params: str, *extra: str):
    return rescue("unattended", "--cmdline", f"boot=live quiet {params}", *extra)


def test_restores_the_newest_image_from_a_web_server_and_says_so(server, source, loops):
    target = loops.disk(drive_name("t.img"), TARGET_SIZE)
    proc = unattended(
        f"rescue.mode=restore rescue.repo={server.url()} rescue.image=latest:lab- "
        f"rescue.target={rule(TARGET_SIZE)} rescue.confirm=destroy rescue.after=poweroff"
    )
    got = result_of(proc)
    assert proc.returncode == 0 and got["status"] == "ok", proc.stdout + proc.stderr
    assert (got["image"], got["target"]) == ("lab-2", target)
    assert int(got["bytes"]) > 4 * MiB and float(got["seconds"]) > 0
    assert "the newest of 2 starting with 'lab-'" in proc.stdout
    assert "then: poweroff (rescue unattended --finish would do it)" in proc.stdout
    assert proc.stdout.splitlines()[-2].startswith("RESCUE-RESULT")
    assert files_of(loops, target) == files_of(loops, source)


def test_zero_or_two_matching_drives_write_nothing_and_list_the_candidates(server, loops):
    a, b = loops.disk(drive_name("a.img"), TWIN_SIZE), loops.disk(drive_name("b.img"), TWIN_SIZE)
    for d in (a, b):
        with open(d, "r+b") as f:
            f.write(os.urandom(MiB))
    before = [digest(a), digest(b)]
    base = f"rescue.mode=restore rescue.repo={server.url()} rescue.image=lab-1 rescue.confirm=destroy"
    two = unattended(f"{base} rescue.target={rule(TWIN_SIZE)}")
    got = result_of(two)
    assert two.returncode == 3 and got["status"] == "failed" and got["target"] == "-"
    assert got["reason"].startswith(f"2 drives match rescue.target={rule(TWIN_SIZE)}, so nothing was written")
    assert a in got["reason"] and b in got["reason"]
    none = unattended(f"{base} rescue.target=bus:loop,size:{TWIN_SIZE + 512}..{TWIN_SIZE + 512}")
    assert result_of(none)["status"] == "failed" and "no drive matches" in result_of(none)["reason"]
    assert a in result_of(none)["reason"]  # every drive listed when none matches
    assert [digest(a), digest(b)] == before


def test_without_confirm_destroy_the_plan_is_shown_and_nothing_written(server, loops):
    target = loops.disk(drive_name("t.img"), TARGET_SIZE)
    before = digest(target)
    proc = unattended(
        f"rescue.mode=restore rescue.repo={server.url()} rescue.image=lab-1 rescue.target={rule(TARGET_SIZE)}"
    )
    got = result_of(proc)
    assert proc.returncode == 0 and got["status"] == "planned" and "rescue.confirm=destroy" in got["reason"]
    assert "ext4" in proc.stdout and target in proc.stdout  # the plan's rows
    assert digest(target) == before


def test_a_damaged_chunk_fails_naming_it_and_writes_nothing(local_repo, loops):
    chunk = next(p for p in sorted((local_repo / "chunks").rglob("*")) if p.is_file() and p.stat().st_size > 4096)
    blob = bytearray(chunk.read_bytes())
    blob[-100] ^= 0x40
    chunk.write_bytes(bytes(blob))
    target = loops.disk(drive_name("t.img"), TARGET_SIZE)
    before = digest(target)
    proc = unattended(
        f"rescue.mode=restore rescue.repo={local_repo} rescue.image=lab-2 "
        f"rescue.target={rule(TARGET_SIZE)} rescue.confirm=destroy rescue.on_fail=reboot"
    )
    got = result_of(proc)
    assert proc.returncode == 1 and got["status"] == "failed", proc.stdout
    assert chunk.name in got["reason"] or "chunk" in got["reason"]
    assert "then: reboot" in proc.stdout
    assert digest(target) == before


def test_the_same_machine_is_not_restored_twice_unless_forced(local_repo, source, loops):
    target = loops.disk(drive_name("t.img"), TARGET_SIZE)
    params = (
        f"rescue.mode=restore rescue.repo={local_repo} rescue.image=latest:lab- "
        f"rescue.target={rule(TARGET_SIZE)} rescue.confirm=destroy"
    )
    first = result_of(unattended(params, "--machine-id", MACHINE))
    assert first["status"] == "ok", first
    marker = json.loads((local_repo / "fleet" / "done" / f"{MACHINE}.json").read_text())
    assert (marker["image"], marker["target"]) == ("lab-2", target)
    logs = list((local_repo / "fleet" / "logs").iterdir())
    assert len(logs) == 1 and "RESCUE-RESULT status=ok" in logs[0].read_text()

    wipe(target)  # its table gone: only the repository's marker knows this machine was restored
    before = digest(target)
    again = unattended(params, "--machine-id", MACHINE)
    got = result_of(again)
    assert again.returncode == 0 and got["status"] == "skipped", got
    assert "this machine was restored with lab-2" in got["reason"] and "rescue.force=1" in got["reason"]
    assert digest(target) == before

    other = result_of(unattended(params, "--machine-id", "another-machine"))  # no marker, no image on it
    assert other["status"] == "ok", other
    forced = result_of(unattended(params + " rescue.force=1", "--machine-id", MACHINE))
    assert forced["status"] == "ok", forced
    assert files_of(loops, target) == files_of(loops, source)
    assert rescue("verify", str(local_repo), "lab-2").returncode == 0  # fleet/ does not disturb the repository


def test_a_drive_that_holds_the_image_is_not_restored_again_from_a_read_only_server(server, loops):
    """No marker can be kept on a web server: the drive itself says it was restored (its disk
    id, partition and filesystem UUIDs are the image's), so a lab machine that netboots first
    does not restore in a loop."""
    target = loops.disk(drive_name("t.img"), TARGET_SIZE)
    params = (
        f"rescue.mode=restore rescue.repo={server.url()} rescue.image=lab-1 "
        f"rescue.target={rule(TARGET_SIZE)} rescue.confirm=destroy"
    )
    assert result_of(unattended(params))["status"] == "ok"
    before = digest(target)
    again = result_of(unattended(params))
    assert again["status"] == "skipped" and f"{target} already holds lab-1" in again["reason"], again
    assert digest(target) == before
    wipe(target)
    assert result_of(unattended(params))["status"] == "ok"  # a drive that does not hold it is restored


def test_capture_names_the_image_from_the_machine(source, tmp_path):
    repo = tmp_path / "captures"
    proc = unattended(
        f"rescue.mode=capture rescue.repo={repo} rescue.source={rule(SOURCE_SIZE)}", "--machine-id", MACHINE
    )
    got = result_of(proc)
    assert proc.returncode == 0 and got["status"] == "ok" and got["target"] == source, proc.stdout + proc.stderr
    listed = json.loads(rescue("list", str(repo), "--json", check=True).stdout)
    names = [im["name"] for im in listed]
    assert names == [got["image"]] and got["image"].startswith(MACHINE + "-"), names  # no serial here: the UUID
    assert rescue("verify", str(repo), got["image"]).returncode == 0


def test_a_capture_onto_s3_restored_on_another_machine_with_secrets_from_the_boot_server(
    server, source, loops, tmp_path
):
    """Issue 15's point 4 on the host (the ISO's run is tests/vm/test_places.py): machine A
    captures itself onto an encrypted S3 repository (a real Swift) and machine B restores the
    image onto its blank drive; the S3 keys and the password come from a file on the web server
    (never the kernel command line), appear in no line the jobs print, and are not left behind."""
    swift = s3.shared_server()
    password = "fleet password " + secrets.token_hex(4)
    repo = f"s3://{swift.bucket}/fleet-{RUN}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RESCUE_"))}
    env |= {"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_REGION": swift.region}
    admin = swift.environ(RESCUE_PASSWORD=password)
    init = subprocess.run(
        [sys.executable, "-m", "rescue", "init", "--encrypt", repo], env=admin, capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    (server.www / "creds").write_text(
        f"[default]\naws_access_key_id = {swift.access_key}\naws_secret_access_key = {swift.secret_key}\n\n"
        f"[rescue]\npassword = {password}\n"
    )
    where = f"rescue.repo={repo} rescue.s3_endpoint={swift.endpoint} rescue.credentials={server.url('creds')}"
    run_dir = Path("/run/rescue")
    before = set(run_dir.rglob("*"))

    def job(params: str, machine: str, said: str = "S3 keys and a repository password") -> tuple[dict[str, str], int]:
        argv = ["unattended", "--cmdline", f"boot=live {where} {params}", "--machine-id", machine]
        proc = subprocess.run([sys.executable, "-m", "rescue", *argv], env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        assert swift.secret_key not in out and password not in out, out
        assert f"credentials: {said} from http://" in out, out
        return result_of(proc), proc.returncode

    got, _ = job(f"rescue.mode=capture rescue.source={rule(SOURCE_SIZE)}", "machine-a")
    assert got["status"] == "ok", got
    target = loops.disk(drive_name("s3-target.img"), TARGET_SIZE)
    restore = f"rescue.mode=restore rescue.image={got['image']} rescue.target={rule(TARGET_SIZE)}"
    got, _ = job(f"{restore} rescue.confirm=destroy", "machine-b")
    assert got["status"] == "ok" and got["target"] == target, got
    assert files_of(loops, target) == files_of(loops, source)
    for left in set(run_dir.rglob("*")) - before:  # the keys' file gone, no log holding a secret
        assert left.name != "fleet-aws-credentials" and (left.is_dir() or swift.secret_key not in left.read_text())

    (server.www / "creds").write_text(  # no password
        f"[default]\naws_access_key_id = {swift.access_key}\naws_secret_access_key = {swift.secret_key}\n"
    )
    got, code = job(f"{restore} rescue.confirm=destroy", "machine-c", said="S3 keys")
    assert code == 2 and got["status"] == "failed" and "is encrypted: put its password" in got["reason"], got


def test_bad_parameters_end_in_one_result_line(tmp_path):
    proc = unattended("rescue.mode=restore rescue.repo=/nowhere rescue.image=a rescue.target=biggest")
    got = result_of(proc)
    assert proc.returncode == 2 and got["status"] == "failed" and "'biggest' is not a rule" in got["reason"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "then: wait" in proc.stdout

"""A server that stops answering in the middle of a capture, as a user meets it: stopped for a
minute and back, the capture completes and the image verifies; stopped for good, the capture
ends within the configured limit with one line naming the server, the progress line having
said "waiting for <server> (N s)" meanwhile. And the secrets a user gives never land in the
repository, the log or a message. Real servers (OpenSSH's sshd, Swift's S3 API) on 127.0.0.1."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def drive(mloops):
    """A GPT drive, one ext4 partition holding 24 MiB of incompressible files."""
    path = mloops.file("src.img", 40 * MiB)
    sectors = 38 * 2048
    partition_table(str(path), f'label: gpt\nstart=2048, size={sectors}, name="data"\n')
    part = mloops.attach(path, offset=MiB, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-m", "0", part)
    with mloops.mounted(part) as mnt:
        for i in range(24):
            (mnt / f"r{i}.bin").write_bytes(os.urandom(MiB))
    return mloops.attach(path, readonly=True)


def config(tmp_path: Path, timeout: int, give_up: int) -> Path:
    path = tmp_path / "rescue.toml"
    path.write_text(f"[network]\ntimeout = {timeout}\ngive_up = {give_up}\n")
    return path


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """`rescue ARGV` with its stderr on a terminal (the progress line shows only there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rescue", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    return proc, master


def drain(master: int, until: float) -> str:
    """What the terminal showed until `until` (monotonic) or until it closed."""
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                block = os.read(master, 65536)
            except OSError:
                break
            if not block:
                break
            out += block
    return out.decode(errors="replace")


def s3_env(server, cfg: Path) -> dict[str, str]:
    return {**{k: v for k, v in server.environ().items() if k != "HOME"}, "RESCUE_CONFIG": str(cfg)}


def test_a_server_stopped_for_a_minute_and_back_the_capture_completes(drive, tmp_path):
    from servers import s3

    server = s3.shared_server()
    location = f"s3://{server.bucket}/faults-{os.getpid()}-{time.monotonic_ns()}"
    env = s3_env(server, config(tmp_path, timeout=5, give_up=180))
    proc, master = start(["capture", drive, location, "--name", "pc"], env)
    try:
        shown = ""
        deadline = time.monotonic() + 60
        while "capture:" not in shown and time.monotonic() < deadline:  # reading has begun
            shown += drain(master, time.monotonic() + 0.2)
        with server.proxy_paused():
            shown += drain(master, time.monotonic() + 60)
        shown += drain(master, time.monotonic() + 120)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, shown[-2000:]
    assert "waiting for s3://" in shown, shown[-2000:]
    assert "retrying in" in shown, "each retry is logged"
    env.pop("RESCUE_CONFIG")
    os.environ.update(env)
    try:
        assert "is intact" in rescue("verify", location, "pc", check=True).stdout
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_a_server_gone_for_good_ends_the_capture_within_the_limit(drive, tmp_path):
    from servers import sshd

    server = sshd.start_sshd(lifetime=300)
    try:
        env = {
            "RESCUE_RSH": " ".join(server.ssh_command),
            "RESCUE_CONFIG": str(config(tmp_path, timeout=3, give_up=15)),
        }
        location = server.url(tmp_path / "repo")
        proc, master = start(["capture", drive, location, "--name", "pc"], env)
        try:
            shown = ""
            deadline = time.monotonic() + 60
            while "capture:" not in shown and time.monotonic() < deadline:
                shown += drain(master, time.monotonic() + 0.2)
            server.pause()
            paused = time.monotonic()
            shown += drain(master, paused + 90)
            proc.wait(timeout=30)
            took = time.monotonic() - paused
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
    finally:
        server.stop()
    last = shown.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in shown, shown[-2000:]
    assert f"127.0.0.1:{server.port}" in last and "no answer for" in last, last
    assert "waiting for" in shown, shown[-2000:]
    assert took < 15 + 3 * 3 + 15, f"ended {took:.0f} s after the server stopped (limit 15 s, requests 3 s)"


def test_secrets_never_reach_the_repository_the_log_or_a_message(drive, tmp_path):
    from servers import s3

    server = s3.shared_server()
    secret = server.secret_key
    location = f"s3://{server.bucket}/secrets-{os.getpid()}-{time.monotonic_ns()}"
    env = s3_env(server, config(tmp_path, timeout=5, give_up=10))
    os.environ.update(env)
    try:
        ok = rescue("capture", drive, location, "--name", "pc", check=True)
        wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-" + secret}
        os.environ.update(wrong)
        bad = rescue("list", location)
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert bad.returncode == 2 and "SignatureDoesNotMatch" in bad.stderr, bad.stderr
    st = server.storage(location.split("/", 3)[3])
    try:
        texts = [ok.stdout, ok.stderr, bad.stdout, bad.stderr]
        for top in ("", "images", "images/pc"):
            for e in st.list(top):
                if e.kind == "object":
                    texts.append(st.get(f"{top}/{e.name}" if top else e.name, 64 * MiB).decode(errors="replace"))
    finally:
        st.close()
    assert any('"areas"' in t for t in texts) and any("capturing" in t for t in texts), "the manifest and log were read"
    for text in texts:
        assert secret not in text

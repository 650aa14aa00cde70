"""The "SSH server (SFTP)..." and "S3 object store..." forms of Restore, Capture and Browse,
driven through the wizard with the real engine against real servers started here: OpenSSH's
sshd (keys, tests/servers/sshd.py; and one that takes a password, below), and Swift's S3
API (tests/servers/s3.py). A repository captured with `rescue capture` from a loop device
is listed; a capture through the form writes its image there; a wrong password or secret
comes back to the form in words, and the secret is neither kept by the form's step, nor in
any file the wizard or the login wrote, nor in any process's command line.

The password server is an sshd with PasswordAuthentication in a mount namespace of its own
where /etc/shadow is a copy giving root a password only the test knows (`unshare --mount`,
a bind mount): nothing of the machine's accounts changes. The tests without servers (the
dry run, what is refused before connecting) run without root."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from disks import MiB, partition_table, rescue, sh
from helpers import (
    assert_fits,
    click,
    dialog_open,
    dialog_text,
    find,
    finish_job,
    flat,
    press,
    select,
    text,
    type_text,
)
from servers import s3 as s3_servers
from servers import sshd as sshd_servers
from servers.bounded import free_port, start

from rescue.engine import Engine
from rescue.tui.app import App
from rescue.tui.widgets import Choice

root = pytest.mark.root  # the tests that start servers or use loop devices

PASSWORD = "Tr0ub4dor&3 rescue"
BAD_SECRET = "definitely-not-the-secret-7q"
NO_KEYS = "ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityFile=/dev/null -o IdentityAgent=none"


@pytest.fixture(scope="module")
def source(mloops):
    """A small GPT drive with one ext4 partition (read-only loop device)."""
    path = mloops.file("src.img", 24 * MiB)
    partition_table(str(path), 'label: gpt\nstart=2048, size=32768, name="data"\n')
    part = mloops.attach(path, offset=MiB, size=16 * MiB)
    sh("mkfs.ext4", "-q", "-L", "remote", part)
    with mloops.mounted(part) as mnt:
        (mnt / "hello.txt").write_text("hello from the remote test\n")
    return mloops.attach(path, readonly=True)


@pytest.fixture(scope="module")
def captured(source, tmp_path_factory) -> Path:
    """A repository holding image "pc" of the source, captured by the CLI."""
    repo = tmp_path_factory.mktemp("captured") / "repo"
    rescue("capture", source, str(repo), "--name", "pc", check=True)
    return repo


@pytest.fixture
def wizard(tmp_path):
    """The wizard over this machine (loop devices offered), its logins under a short
    directory of its own, its log in tmp_path/log."""
    backend = Engine(include_loop=True)
    backend.login_dir = tempfile.mkdtemp(prefix="rw-", dir="/tmp")  # a control socket's path is short
    (tmp_path / "log").mkdir()
    app = App(backend, log_dir=str(tmp_path / "log"))
    app.main_menu()
    try:
        yield app
    finally:
        app.close_state()
        backend.close()
        shutil.rmtree(backend.login_dir, ignore_errors=True)


@pytest.fixture
def ssh_server(monkeypatch):
    server = sshd_servers.shared_server()
    monkeypatch.setenv("RESCUE_RSH", shlex.join(server.ssh_command))  # the client key, as a technician's config
    return server


@pytest.fixture(scope="module")
def password_server():
    """An sshd that lets root in with PASSWORD only (no key is authorized)."""
    root = Path(tempfile.mkdtemp(prefix="rescue-pw-sshd-"))
    port = free_port("127.0.0.1")
    sshd_servers.keygen(root / "host_ed25519", "rescue test sshd (password)")
    (root / "authorized_keys").write_text("")
    config = sshd_servers.sshd_config(root, host="127.0.0.1", port=port)
    config = config.replace("PermitRootLogin prohibit-password", "PermitRootLogin yes")
    (root / "sshd_config").write_text(config.replace("PasswordAuthentication no", "PasswordAuthentication yes"))
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=PASSWORD, capture_output=True, text=True, check=True
    ).stdout.strip()
    with open("/etc/shadow") as f:
        shadow = "".join(f"root:{hashed}:19000:0:99999:7:::\n" if ln.startswith("root:") else ln for ln in f)
    fd = os.open(root / "shadow", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(shadow)
    sshd_servers.PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    script = 'mount --bind "$1" /etc/shadow && exec "$2" -D -e -f "$3"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    process = start("sshd-password", [*argv, str(root / "shadow"), sshd_servers.SSHD, str(root / "sshd_config")],
                    root / "sshd.log", lifetime=600)  # fmt: skip
    try:
        process.ready("127.0.0.1", port)
        yield port
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    return s3_servers.shared_server()


@pytest.fixture
def no_aws(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)


def fill(app, **values: str) -> None:
    """Fill the form's fields; the password or secret is typed key by key, as a person does."""
    for key, value in values.items():
        field = app.view.fields[key]
        if key == app.view.secret:
            app.view.walker.set_focus(list(app.view.walker).index(field))
            type_text(app, value)
        else:
            field.set_edit_text(value)


def rows(app) -> list[str]:
    return [w.label for w in find(app, Choice, lambda w: w.label.startswith(("SSH server", "S3 object")))]


def connect(app) -> None:
    click(app, "Connect")
    finish_job(app)


def everything_written(*dirs: str | Path) -> str:
    out = []
    for d in dirs:
        for p in Path(d).rglob("*"):
            if p.is_file():
                with contextlib.suppress(OSError):
                    out.append(p.read_text(errors="replace"))
    return "\n".join(out)


def command_lines() -> str:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(out)


def copy_repository(repo: Path, storage) -> None:
    for p in sorted(repo.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            storage.put(str(p.relative_to(repo)), p.read_bytes())


# -- SSH ------------------------------------------------------------------------------------------


@root
def test_restore_lists_the_images_on_an_ssh_server_and_logs_out_after(wizard, captured, ssh_server):
    app, backend = wizard, wizard.backend
    rsh = os.environ["RESCUE_RSH"]
    select(app, "Restore")
    select(app, "SSH server (SFTP)")
    assert "Restore: images on another computer" in text(app)
    assert "Port: 22" in text(app) and "User: root" in text(app)
    assert_fits(app)
    fill(app, server="127.0.0.1", port=str(ssh_server.port), folder=str(captured))
    connect(app)
    assert dialog_open(app) and "New SSH server" in text(app)
    said = dialog_text(app)
    assert f"First connection to root@127.0.0.1:{ssh_server.port}" in said and "ED25519 SHA256:" in said
    click(app, "OK")
    assert "Restore: choose an image" in text(app), text(app)
    assert "pc " in text(app) and "verified" in text(app)
    session = backend._remote[0]
    assert session.alive() and os.environ["RESCUE_RSH"] != rsh  # the jobs go through the login
    press(app, "esc", "esc")  # back to the repository screen, then the main menu
    assert "Main menu" in text(app)
    assert not session.alive() and os.environ["RESCUE_RSH"] == rsh


@root
def test_capture_through_the_ssh_form_into_an_empty_folder(wizard, source, ssh_server, tmp_path):
    app = wizard
    folder = tmp_path / "new-images"
    folder.mkdir()
    select(app, "Capture")
    select(app, os.path.basename(source))
    select(app, "SSH server (SFTP)")
    fill(app, server="127.0.0.1", port=str(ssh_server.port), folder=str(folder))
    connect(app)
    if dialog_open(app):  # the first test to meet the shared server saw its key
        click(app, "OK")
    assert "Capture: name the image" in text(app), text(app)
    url = f"sftp://root@127.0.0.1:{ssh_server.port}{folder}"
    assert f"a new repository at sftp://root@127.0.0.1:{ssh_server.port}/" in flat(app)
    assert app.state.dest == url
    app.view.edit.set_edit_text("overssh")
    press(app, "enter")
    finish_job(app)
    assert not dialog_open(app), dialog_text(app)
    assert "was captured as overssh" in flat(app) and "Verification: passed" in flat(app)
    assert (folder / "rescue-repo.json").is_file() and (folder / "images" / "overssh" / "manifest.json").is_file()


@root
def test_a_folder_with_other_things_is_refused_on_the_form(wizard, source, ssh_server, tmp_path):
    app = wizard
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    select(app, "Capture")
    select(app, os.path.basename(source))
    select(app, "SSH server (SFTP)")
    fill(app, server="127.0.0.1", port=str(ssh_server.port), folder=str(tmp_path / "busy"))
    connect(app)
    if dialog_open(app):
        click(app, "OK")
    assert "the folder is not empty and holds no image repository" in flat(app)
    assert f"Folder on the server: {tmp_path / 'busy'}" in flat(app)


@root
def test_a_wrong_password_comes_back_to_the_form_then_the_right_one_opens(
    wizard, captured, password_server, monkeypatch, tmp_path
):
    app, backend = wizard, wizard.backend
    monkeypatch.setenv("RESCUE_RSH", NO_KEYS)
    select(app, "Browse")
    select(app, "SSH server (SFTP)")
    fill(app, server="127.0.0.1", port=str(password_server), folder=str(captured), password="hunter2-wrong")
    assert "*************" in text(app) and "hunter2" not in text(app)
    connect(app)
    screen, status = flat(app), app.view.status.text
    assert f"oot@127.0.0.1:{password_server}: the server refused the login (wrong user name or password" in status
    assert f"Port: {password_server}" in screen and f"Folder on the server: {captured}" in screen
    assert app.view.fields["password"].edit_text == ""  # typed again, never kept
    step = app.wizard.current
    assert "hunter2-wrong" not in repr(vars(step)) and "password" not in (step._ssh_typed or {})

    fill(app, password=PASSWORD)
    connect(app)
    assert dialog_open(app) and "ED25519 SHA256:" in dialog_text(app)  # shown at the login that worked
    click(app, "OK")
    assert "Browse: choose an image" in text(app) and "pc " in text(app)
    login_dir = backend.login_dir
    assert PASSWORD not in command_lines()  # the master runs: not in its argv, nor any other's
    assert PASSWORD not in everything_written(login_dir, tmp_path / "log")
    assert [p.name for p in Path(login_dir, "ssh").iterdir() if p.name.startswith("pw-")] == []
    select(app, "pc ")
    assert "Browse: choose a partition" in text(app) or "partition 1" in flat(app), text(app)


# -- S3 -------------------------------------------------------------------------------------------


@root
def test_browse_lists_the_images_in_an_s3_bucket_and_the_profile_goes_after(wizard, captured, s3, no_aws):
    app, backend = wizard, wizard.backend
    storage = s3.storage("wizard-browse")
    try:
        copy_repository(captured, storage)
    finally:
        storage.close()
    select(app, "Browse")
    select(app, "S3 object store")
    assert "Region: us-east-1" in text(app)
    assert_fits(app)
    fill(
        app,
        endpoint=s3.endpoint,
        bucket=s3.bucket,
        prefix="wizard-browse",
        region=s3.region,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
    )
    assert s3.secret_key not in text(app)
    connect(app)
    assert not dialog_open(app), dialog_text(app)
    assert "Browse: choose an image" in text(app), text(app)
    assert "pc " in text(app)
    assert s3.secret_key not in " ".join(os.environ.values())  # the environment names a 0600 file
    assert os.environ["AWS_PROFILE"] == "rescue-wizard"
    select(app, "pc ")  # the image is opened again by its URL, through the profile
    assert "partition 1" in flat(app) or "ext4" in flat(app), text(app)
    press(app, "esc", "esc", "esc")
    assert "Main menu" in text(app)
    assert not any(k.startswith("AWS_") for k in os.environ)
    assert list(Path(backend.login_dir, "s3").iterdir()) == []


@root
def test_a_wrong_s3_secret_comes_back_to_the_form_and_is_kept_nowhere(wizard, s3, no_aws, tmp_path):
    app, backend = wizard, wizard.backend
    select(app, "Restore")
    select(app, "S3 object store")
    fill(
        app,
        endpoint=s3.endpoint,
        bucket=s3.bucket,
        prefix="nothing-here",
        region=s3.region,
        access_key=s3.access_key,
        secret_key=BAD_SECRET,
    )
    connect(app)
    screen = flat(app)
    assert "S3 object store" in screen or "Secret key:" in screen
    assert f"Bucket: {s3.bucket}" in screen and "Prefix (optional): nothing-here" in screen
    assert f"Access key: {s3.access_key}" in screen and app.view.fields["secret_key"].edit_text == ""
    status = app.view.status.text
    assert "HTTP 403" in status and "is the access key or the secret key wrong?" in status, status
    assert BAD_SECRET not in status and BAD_SECRET not in text(app)
    step = app.wizard.current
    assert BAD_SECRET not in repr(vars(step)) and "secret_key" not in (step._s3_typed or {})
    assert BAD_SECRET not in everything_written(backend.login_dir, tmp_path / "log")
    assert not any(k.startswith("AWS_") for k in os.environ) and backend._remote is None


# -- without servers: the recorded machine (tests/tui/conftest.py) ----------------------------------


def test_the_rows_are_on_the_repository_screens_only(app):
    select(app, "Capture")
    select(app, "nvme0n1")
    assert rows(app) == ["SSH server (SFTP)...", "S3 object store..."]
    press(app, "esc", "esc")
    select(app, "Browse")
    assert rows(app) == ["SSH server (SFTP)...", "S3 object store..."]
    select(app, "/media/sdb1")
    select(app, "web01")
    select(app, "partition 2")
    press(app, " ")
    click(app, "Copy marked")
    assert rows(app) == [] and find(app, Choice, lambda w: w.label.startswith("NFS"))  # files go to folders


def test_the_forms_fit_and_nonsense_is_refused_before_connecting(app, backend):
    select(app, "Restore")
    select(app, "SSH server (SFTP)")
    assert_fits(app)
    fill(app, server="nas", port="ssh", password="s3cret-typed")
    click(app, "Connect")
    assert "'ssh' is not a port number" in app.view.status.text and not app.runner.running
    press(app, "esc")
    select(app, "S3 object store")
    assert_fits(app)
    fill(app, bucket="images", access_key="AK", secret_key="")
    click(app, "Connect")
    assert "S3 needs both the access key and the secret key" in app.view.status.text


def test_a_dry_run_connects_to_no_server_and_says_so_on_the_form(app, backend):
    select(app, "Restore")
    select(app, "SSH server (SFTP)")
    fill(app, server="nas", folder="/srv/images", password="s3cret-typed")
    connect(app)
    assert "a dry run over a recorded machine connects to no server" in app.view.status.text
    assert "Server (name or address): nas" in flat(app) and app.view.fields["password"].edit_text == ""
    assert "s3cret-typed" not in repr(vars(app.wizard.current)) and backend.log == []

"""Browsing an image: `rescue mount` shows every partition's files read-only (FAT too: with the
kernel's vfat, or fusefat where the kernel has none), `rescue extract` copies files and folders
out with their metadata, damage gives EIO (never wrong bytes), and nothing is left behind after
`rescue umount`, even when the FUSE server (or fusefat) was killed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disks import MiB, sh, tree_hashes
from drives import build_gpt_drive

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]

# `python -m rescue`, with the browse commands added when rescue/cli.py does not have them yet.
HARNESS = """
import sys
from rescue import cli
from rescue.browse.cli_commands import add_commands
build = cli.build_parser
def with_browse():
    p = build()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    if "mount" not in sub.choices:
        add_commands(sub)
    return p
cli.build_parser = with_browse
sys.argv[0] = "rescue"
raise SystemExit(cli.main())
"""
FS_MOUNTED = ("ext4", "xfs", "btrfs", "ntfs")
OWNER = 1234
VICTIM = "damage-me.bin"
# Long names (VFAT entries) next to the 8.3 names populate() makes; ASCII, so any reader agrees.
FAT_LONG = {
    "A long file name with spaces.txt": b"long name\n" * 1000,
    "Mixed Case Folder/Another Long Name.bin": os.urandom(70_000),
}


@pytest.fixture(scope="module")
def mloops(tmp_path_factory):
    from disks import LoopRegistry

    reg = LoopRegistry(tmp_path_factory.mktemp("browse"))
    try:
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture(scope="module")
def state_dir(mloops):
    """Browsing sessions of this module only; whatever a failed test left is torn down."""
    path = mloops.root / "state"
    yield path
    from rescue.browse import mounts

    old = os.environ.get("RESCUE_STATE_DIR")
    os.environ["RESCUE_STATE_DIR"] = str(path)
    try:
        for s in mounts.states():
            mounts.teardown(s, lazy=True)
    finally:
        if old is None:
            del os.environ["RESCUE_STATE_DIR"]
        else:
            os.environ["RESCUE_STATE_DIR"] = old


def rescue(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESCUE_STATE_DIR=str(state_dir), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", HARNESS, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=300,
    )


def ok(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    proc = rescue(state_dir, *args)
    assert proc.returncode == 0, f"rescue {' '.join(args)} failed ({proc.returncode}): {proc.stderr}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rescue: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def add_metadata_tree(root: Path) -> dict[str, tuple]:
    """A folder with owners, modes, times, symlinks and a hard link; returns what lstat says."""
    t = root / "tree"
    (t / "private").mkdir(parents=True)
    (t / "shared").mkdir()
    (t / "empty").mkdir()
    (t / "private" / "secret.txt").write_text("only for 1234\n")
    (t / "shared" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (t / "shared" / "hard1").write_bytes(os.urandom(5000))
    os.link(t / "shared" / "hard1", t / "shared" / "hard2")
    os.symlink("script.sh", t / "shared" / "rel-link")
    os.symlink("/etc/passwd", t / "shared" / "abs-link")
    os.symlink("does/not/exist", t / "shared" / "broken")
    os.symlink("/tree/private", t / "to-private")  # absolute: must resolve inside the image
    os.chown(t / "private", OWNER, OWNER)
    os.chown(t / "private" / "secret.txt", OWNER, OWNER)
    os.chown(t / "shared", 0, OWNER)
    os.chown(t / "shared" / "script.sh", OWNER, 100)
    os.lchown(t / "shared" / "rel-link", OWNER, OWNER)
    os.chmod(t / "private", 0o700)
    os.chmod(t / "private" / "secret.txt", 0o600)
    os.chmod(t / "shared", 0o2775)
    os.chmod(t / "shared" / "script.sh", 0o755)
    os.chmod(t / "empty", 0o555)
    stamp = 1_000_000_000
    for n, p in enumerate(sorted(t.rglob("*"), key=lambda p: -len(p.parts))):  # children first
        os.utime(p, (stamp + n * 1000, stamp + n * 1000 + 7), follow_symlinks=False)
    os.utime(t, (stamp, stamp + 1))
    return metadata(t)


def metadata(t: Path) -> dict[str, tuple]:
    out = {}
    for p in [t, *t.rglob("*")]:
        st = p.lstat()
        link = os.readlink(p) if p.is_symlink() else None
        out[str(p.relative_to(t))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, link)
    return out


@pytest.fixture(scope="module")
def gpt(mloops):
    drive = build_gpt_drive(mloops)
    ext = drive.part("ext4")
    dev = mloops.attach(drive.image, offset=ext.offset, size=ext.nbytes)
    with mloops.mounted(dev, "ext4") as mnt:
        drive.tree_meta = add_metadata_tree(mnt)
        (mnt / VICTIM).write_bytes(os.urandom(16 * MiB))  # spans several whole chunks
        drive.hashes[ext.number] = tree_hashes(mnt)
    add_fat_long_names(mloops, drive)
    return drive


def add_fat_long_names(mloops, drive) -> None:
    """Copy FAT_LONG into the FAT32 partition with mcopy (no FAT driver needed)."""
    fat = drive.part("vfat")
    dev = mloops.attach(drive.image, offset=fat.offset, size=fat.nbytes)
    src = mloops.root / "fat-long"
    for rel, data in FAT_LONG.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for entry in src.iterdir():
        subprocess.run(["mcopy", "-s", "-i", dev, str(entry), "::/"], check=True, env=env)
    drive.hashes[fat.number].update({rel: hashlib.sha256(data).hexdigest() for rel, data in FAT_LONG.items()})


@pytest.fixture(scope="module")
def repo(gpt, mloops):
    path = mloops.root / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "rescue", "capture", gpt.device, str(path), "--name", "pc"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    return path


def snapshot(tree: Path) -> dict[str, tuple]:
    return {
        str(p.relative_to(tree)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None,
        )
        for p in [tree, *tree.rglob("*")]
    }


def leftovers(state_dir: Path, mountpoint: Path, only_this: bool = False) -> list[str]:
    """Mounts, loop devices, processes and state files a browsing session could have left:
    of every session under state_dir, or `only_this` one (the session of mountpoint)."""
    from rescue.browse.mounts import key_for

    key = key_for(str(mountpoint)) if only_this else ""
    ours = str(state_dir / key) if key else str(state_dir)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt.startswith((ours, str(mountpoint) + "/")) or mnt == str(mountpoint):
            found.append(f"mount {mnt}")
    out = sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
    found += [f"loop {ln}" for ln in out.splitlines() if ours in ln]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "rescue.browse.imagefs" in cmd and ours in cmd:
                found.append(f"process {proc.name}")
            elif cmd.startswith("fusefat\0") and str(mountpoint) + "/" in cmd:
                found.append(f"process {proc.name} (fusefat)")
    if state_dir.exists():
        found += [f"state {p.name}" for p in state_dir.glob(f"{key}*.json")]
    return found


def session(state_dir: Path) -> dict:
    files = list(state_dir.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_mount_shows_every_file_read_only_and_umount_leaves_nothing(gpt, repo, state_dir, tmp_path):
    before = snapshot(repo)
    mnt = tmp_path / "browse"
    mnt.mkdir()
    proc = ok(state_dir, "mount", str(repo), "pc", str(mnt))
    try:
        for fs in FS_MOUNTED:
            n = gpt.part(fs).number
            assert tree_hashes(mnt / f"p{n}") == gpt.hashes[n], f"p{n} ({fs}) files differ"
            with pytest.raises(OSError) as e:
                (mnt / f"p{n}" / "new-file").write_bytes(b"x")
            assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        fat = gpt.part("vfat").number
        assert re.search(rf"^p{fat}\s+vfat\s+{re.escape(str(mnt / f'p{fat}'))}", proc.stdout, re.M), proc.stdout
        assert fat_hashes(mnt / f"p{fat}", gpt.hashes[fat], gpt.part("vfat").label) == gpt.hashes[fat]
        assert f"umount {mnt}" in proc.stdout
        # The kernel's view: each is a read-only mount of a read-only loop device.
        table = {ln.split()[4]: ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()}
        for fs in FS_MOUNTED:
            line = table[str(mnt / f"p{gpt.part(fs).number}")]
            assert " ro," in line and "/dev/loop" in line, line
        ok(state_dir, "mount", str(repo), "pc", str(tmp_path), "--partition", str(gpt.part("xfs").number))
        assert tree_hashes(tmp_path / f"p{gpt.part('xfs').number}") == gpt.hashes[gpt.part("xfs").number]
        assert not (tmp_path / f"p{gpt.part('ext4').number}").exists()
        ok(state_dir, "umount", str(tmp_path))
    finally:
        ok(state_dir, "umount", str(mnt))
    assert leftovers(state_dir, mnt) == []
    assert list(mnt.iterdir()) == [], "umount left the partition folders behind"
    assert snapshot(repo) == before, "browsing wrote to the repository"


def mount_line(mountpoint: Path) -> tuple[str, str, str]:
    """(options, fstype, source) of the mount at mountpoint, from the kernel's table."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == str(mountpoint):
            fstype, source = right.split()[:2]
            return left.split()[5], fstype, source
    raise AssertionError(f"nothing is mounted at {mountpoint}")


def kernel_has_vfat() -> bool:
    return any(ln.split()[-1] == "vfat" for ln in Path("/proc/filesystems").read_text().splitlines() if ln.strip())


EMPTY = hashlib.sha256(b"").hexdigest()


def fat_hashes(root: Path, want: dict[str, str], label: str) -> dict[str, str]:
    """The files under root, keyed by the source's names. The kernel's vfat shows names as
    stored. fusefat shows 8.3 names in capitals (it ignores the lowercase flags that mcopy and
    Windows set) and the volume label as an empty file: there the listing is compared ignoring
    case and that one entry, and every file is opened by the source's own name (FAT lookups
    ignore case)."""
    got = tree_hashes(root)
    if mount_line(root)[1] == "vfat":
        return got
    assert got.pop(label.upper(), EMPTY) == EMPTY
    assert {k.lower(): v for k, v in got.items()} == {k.lower(): v for k, v in want.items()}
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in want}


def test_fat_partition_is_mounted_read_only_and_umount_leaves_nothing(gpt, repo, state_dir, tmp_path):
    before = snapshot(repo)
    n = gpt.part("vfat").number
    mnt = tmp_path / "fat"
    mnt.mkdir()
    proc = ok(state_dir, "mount", str(repo), "pc", str(mnt), "--partition", str(n))
    root = mnt / f"p{n}"
    try:
        opts, fstype, source = mount_line(root)
        if kernel_has_vfat():
            assert fstype == "vfat", fstype
        else:
            assert fstype == "fuse.fusefat", fstype
            assert "read with fusefat: this kernel has no FAT driver" in proc.stdout, proc.stdout
            assert any(x.endswith("(fusefat)") for x in leftovers(state_dir, mnt)), "the check below sees fusefat"
        assert fat_hashes(root, gpt.hashes[n], gpt.part("vfat").label) == gpt.hashes[n]
        listed = tree_hashes(root)
        assert all(rel in listed for rel in FAT_LONG), f"long names lost: {sorted(listed)}"
        # Read-only three times over: the mount, the loop device under it, and the driver.
        assert opts.split(",")[0] == "ro", opts
        assert source.startswith("/dev/loop"), source
        assert Path(f"/sys/block/{Path(source).name}/ro").read_text().strip() == "1"
        attempts = [
            lambda: (root / "new-file.txt").write_bytes(b"x"),
            lambda: open(root / "big.bin", "r+b"),
            lambda: (root / "new-dir").mkdir(),
            lambda: (root / "big.bin").rename(root / "moved.bin"),
            lambda: (root / "big.bin").unlink(),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), e.value
        assert fat_hashes(root, gpt.hashes[n], gpt.part("vfat").label) == gpt.hashes[n]
    finally:
        ok(state_dir, "umount", str(mnt))
    assert leftovers(state_dir, mnt) == []
    assert list(mnt.iterdir()) == [], "umount left the partition folder behind"
    assert snapshot(repo) == before, "browsing wrote to the repository"


def test_killed_fusefat_is_cleared_by_umount(gpt, repo, state_dir, tmp_path):
    if kernel_has_vfat():
        pytest.skip("the kernel mounts FAT itself here; fusefat is not used")
    n = gpt.part("vfat").number
    mnt = tmp_path / "fat"
    mnt.mkdir()
    ok(state_dir, "mount", str(repo), "pc", str(mnt), "--partition", str(n))
    root = mnt / f"p{n}"
    try:
        pid = session(state_dir)["helpers"][str(root)]
        assert b"fusefat" in Path(f"/proc/{pid}/cmdline").read_bytes()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(OSError) as e:
            (root / "big.bin").read_bytes()
        assert e.value.errno in (errno.EIO, errno.ENOTCONN)
        ok(state_dir, "umount", str(mnt))
        assert leftovers(state_dir, mnt) == []
        # Both killed (the image file system and fusefat): the next mount clears them first.
        ok(state_dir, "mount", str(repo), "pc", str(mnt), "--partition", str(n))
        s = session(state_dir)
        os.kill(s["helpers"][str(root)], signal.SIGKILL)
        os.kill(s["fuse_pid"], signal.SIGKILL)
        time.sleep(0.2)
        other = tmp_path / "other"
        other.mkdir()
        ok(state_dir, "mount", str(repo), "pc", str(other), "--partition", str(n))
        assert leftovers(state_dir, mnt, only_this=True) == []
        assert fat_hashes(other / f"p{n}", gpt.hashes[n], gpt.part("vfat").label) == gpt.hashes[n]
        ok(state_dir, "umount", str(other))
        assert leftovers(state_dir, other) == []
    finally:
        for m in (mnt, tmp_path / "other"):
            rescue(state_dir, "umount", str(m))
    assert leftovers(state_dir, mnt) == []


def test_extract_files_from_every_filesystem(gpt, repo, state_dir, tmp_path):
    for fs in FS_MOUNTED + ("vfat",):
        n = gpt.part(fs).number
        want = ["big.bin", "dir0/sub0/file0.bin"]
        out = tmp_path / fs
        proc = ok(state_dir, "extract", str(repo), "pc", "--partition", str(n), *want, "--to", str(out))
        assert f"extracted {out / 'big.bin'}" in proc.stdout
        got = tree_hashes(out)
        assert got == {"big.bin": gpt.hashes[n]["big.bin"], "file0.bin": gpt.hashes[n]["dir0/sub0/file0.bin"]}, fs
    # A whole folder from FAT, with its subfolders.
    n = gpt.part("vfat").number
    ok(state_dir, "extract", str(repo), "pc", "--partition", str(n), "/dir1", "--to", str(tmp_path / "fatdir"))
    expect = {k[len("dir1/") :]: v for k, v in gpt.hashes[n].items() if k.startswith("dir1/")}
    assert expect and tree_hashes(tmp_path / "fatdir" / "dir1") == expect
    assert leftovers(state_dir, tmp_path) == []


def test_extract_folder_keeps_owners_modes_times_and_symlinks(gpt, repo, state_dir, tmp_path):
    n = gpt.part("ext4").number
    out = tmp_path / "restored"
    ok(state_dir, "extract", str(repo), "pc", "--partition", str(n), "/tree", "--to", str(out))
    assert metadata(out / "tree") == gpt.tree_meta
    shared = out / "tree" / "shared"
    assert (shared / "hard1").stat().st_ino == (shared / "hard2").stat().st_ino, "hard link became two files"
    assert (shared / "rel-link").read_text() == "#!/bin/sh\necho hi\n"
    # A path through an absolute symlink of the image leads into the image, not the host.
    ok(
        state_dir,
        "extract",
        str(repo),
        "pc",
        "--partition",
        str(n),
        "tree/to-private/secret.txt",
        "tree/to-private",
        "--to",
        str(tmp_path / "via-link"),
    )
    assert (tmp_path / "via-link" / "secret.txt").read_text() == "only for 1234\n"
    assert os.readlink(tmp_path / "via-link" / "to-private") == "/tree/private"
    st = (tmp_path / "via-link" / "secret.txt").stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (OWNER, 0o600)
    # Existing files are never overwritten.
    proc = rescue(state_dir, "extract", str(repo), "pc", "--partition", str(n), "/tree", "--to", str(out))
    one_line_error(proc, "already exists")
    assert leftovers(state_dir, tmp_path) == []


def extents(path: Path) -> list[tuple[int, int, int]]:
    """(file offset, partition offset, length) in bytes of the file's extents, in file order."""
    text = sh("filefrag", "-v", str(path))
    block = int(re.search(r"blocks of (\d+) bytes", text).group(1))
    out = []
    for m in re.finditer(r"^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):", text, re.M):
        logical, phys, end = int(m.group(1)), int(m.group(3)), int(m.group(4))
        out.append((logical * block, phys * block, (end - phys + 1) * block))
    return out


def test_damaged_chunk_gives_eio_never_wrong_data(gpt, repo, state_dir, tmp_path):
    from rescue.imaging.verify import load_indexes
    from rescue.repo.index import Kind
    from rescue.repo.store import Repository

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    n = gpt.part("ext4").number
    mnt = tmp_path / "m"
    mnt.mkdir()
    ok(state_dir, "mount", str(copy), "pc", str(mnt), "--partition", str(n))
    try:
        ranges = extents(mnt / f"p{n}" / VICTIM)
    finally:
        ok(state_dir, "umount", str(mnt))
    r = Repository.open(copy)
    _, indexes = load_indexes(r, "pc")
    index = indexes[f"p{n}"]
    cs = index.chunk_size
    inside = [i for _, off, ln in ranges for i in range(-(-off // cs), (off + ln) // cs)]
    assert inside, f"the file covers no whole chunk: {ranges}"
    victim = inside[-1]
    assert index.kinds[victim] == Kind.DATA
    chunk = r.chunk_path(index.digests[victim])
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    chunk.write_bytes(blob)

    ok(state_dir, "mount", str(copy), "pc", str(mnt), "--partition", str(n))
    try:
        with pytest.raises(OSError) as e:
            (mnt / f"p{n}" / VICTIM).read_bytes()
        assert e.value.errno == errno.EIO
        # The file's bytes before the damaged chunk still read, and are right. (The page
        # cache fails whole folios, up to 2 MiB, so the last bytes before it may fail too.)
        at = next(lg + victim * cs - ph for lg, ph, ln in ranges if ph <= victim * cs < ph + ln)
        before = b""
        with open(gpt.image, "rb") as src:
            for lg, ph, ln in ranges:
                if lg < at:
                    src.seek(gpt.part("ext4").offset + ph)
                    before += src.read(min(ln, at - lg))
        good = len(before) // (2 * MiB) * (2 * MiB)
        assert good > 0, (ranges, victim)
        with open(mnt / f"p{n}" / VICTIM, "rb") as f:
            assert f.read(good) == before[:good]
        others = {k: v for k, v in gpt.hashes[n].items() if k != VICTIM}
        got = tree_hashes_except(mnt / f"p{n}", VICTIM)
        assert got == others, "a file outside the damaged chunk changed"
        text = (state_dir / session(state_dir)["key"] / "imagefs.log").read_text()
        assert re.search(rf"area p{n}, chunk {victim} .*damaged \(hash mismatch\).*EIO", text), text
    finally:
        ok(state_dir, "umount", str(mnt))
    out = tmp_path / "out"
    proc = rescue(state_dir, "extract", str(copy), "pc", "--partition", str(n), VICTIM, "tree", "--to", str(out))
    one_line_error(proc, VICTIM, "damaged", f"chunk {victim}")
    assert proc.returncode == 1
    assert not (out / VICTIM).exists(), "a partial copy of the damaged file was left"
    assert metadata(out / "tree") == gpt.tree_meta, "the undamaged folder was not extracted"
    assert leftovers(state_dir, mnt) == []


def tree_hashes_except(root: Path, skip: str) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel == skip:
                continue
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_killed_server_leftovers_are_cleared(gpt, repo, state_dir, tmp_path):
    n = gpt.part("ext4").number
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ok(state_dir, "mount", str(repo), "pc", str(a))
    try:
        os.kill(session(state_dir)["fuse_pid"], signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(OSError) as e:
            (a / f"p{n}" / "big.bin").read_bytes()
        assert e.value.errno in (errno.EIO, errno.ENOTCONN)
        # The next mount clears the dead session first, then works.
        ok(state_dir, "mount", str(repo), "pc", str(b), "--partition", str(n))
        assert leftovers(state_dir, a, only_this=True) == []
        first = "dir0/sub0/file0.bin"
        assert hashlib.sha256((b / f"p{n}" / first).read_bytes()).hexdigest() == gpt.hashes[n][first]
        # And `rescue umount` clears a dead session too.
        os.kill(session(state_dir)["fuse_pid"], signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(OSError):
            (b / f"p{n}" / "big.bin").read_bytes()
        ok(state_dir, "umount", str(b))
    finally:
        for m in (a, b):
            rescue(state_dir, "umount", str(m))
    assert leftovers(state_dir, b) == []
    assert list(a.iterdir()) == [] and list(b.iterdir()) == []


def test_bad_input_is_one_line_and_leaves_nothing(gpt, repo, state_dir, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    raw = gpt.part("raw").number
    cases = [
        (("mount", str(repo), "nosuch", str(tmp_path)), "no image named"),
        (("mount", str(repo), "pc", str(tmp_path), "--partition", "42"), "no partition 42"),
        (("mount", str(repo), "pc", str(f)), "not a directory"),
        (("mount", str(repo), "pc", str(tmp_path / "missing")), "does not exist"),
        (("mount", str(tmp_path), "pc", str(tmp_path)), "not a rescue repository"),
        (("umount", str(tmp_path)), "no image is mounted"),
        (("extract", str(repo), "pc", "--partition", "42", "x", "--to", str(tmp_path / "o")), "no partition 42"),
        (
            (
                "extract",
                str(repo),
                "pc",
                "--partition",
                str(gpt.part("ext4").number),
                "no/such/file",
                "--to",
                str(tmp_path / "o"),
            ),
            "does not exist",
        ),
        (
            (
                "extract",
                str(repo),
                "pc",
                "--partition",
                str(gpt.part("vfat").number),
                "nosuch",
                "--to",
                str(tmp_path / "o"),
            ),
            "does not exist",
        ),
        (
            ("extract", str(repo), "pc", "--partition", str(raw), "x", "--to", str(tmp_path / "o")),
            "holds no filesystem",
        ),
        (
            ("extract", str(repo), "pc", "--partition", str(gpt.part("ext4").number), "x", "--to", str(f)),
            "not a directory",
        ),
    ]
    for args, words in cases:
        one_line_error(rescue(state_dir, *args), words)
    assert leftovers(state_dir, tmp_path) == []
    # A mount point in use by another session is refused, and the first session keeps working.
    n = gpt.part("ext4").number
    ok(state_dir, "mount", str(repo), "pc", str(tmp_path), "--partition", str(n))
    try:
        one_line_error(rescue(state_dir, "mount", str(repo), "pc", str(tmp_path)), "already shows image pc")
        assert tree_hashes(tmp_path / f"p{n}") == gpt.hashes[n]
    finally:
        ok(state_dir, "umount", str(tmp_path))
    assert leftovers(state_dir, tmp_path) == []


def test_wizard_lists_and_copies_fat_files(gpt, repo, state_dir, tmp_path, monkeypatch):
    """The wizard's Browse: FAT gets a file list where the kernel mounts it; where it has no
    vfat driver (this machine) the whole partition is copied with mtools, names and times
    exact (fusefat's are not). Either way the files come out identical."""
    import threading

    from rescue.browse.mounts import kernel_has
    from rescue.engine import Engine

    monkeypatch.setenv("RESCUE_STATE_DIR", str(state_dir))
    backend = Engine()
    n = gpt.part("vfat").number
    part = next(p for p in backend.image_partitions(str(repo), "pc") if p.number == n)
    assert part.fat and part.refused is None
    session = backend.browse_open(str(repo), "pc", part)
    try:
        out = tmp_path / "out"
        out.mkdir()
        want = gpt.hashes[n]
        if kernel_has("vfat"):
            assert session.root is not None, "the kernel's vfat did not mount it for the wizard"
            names = {e.name for e in backend.browse_list(session, "/")}
            assert {"A long file name with spaces.txt", "Mixed Case Folder"} <= names, names
            backend.copy_files(session, ["/Mixed Case Folder", "/big.bin"], str(out), lambda p: None, threading.Event())
            assert tree_hashes(out) == {
                k: v for k, v in want.items() if k.startswith("Mixed Case Folder/") or k == "big.bin"
            }
        else:
            assert session.root is None, "without a kernel FAT driver the wizard copies the partition whole"
            backend.copy_files(session, [], str(out), lambda p: None, threading.Event())
            assert tree_hashes(out / f"pc-p{n}") == want
    finally:
        backend.browse_close(session)
    wizard = state_dir.parent / "wizard"
    assert leftovers(state_dir, wizard) == []
    assert list(wizard.iterdir()) == []

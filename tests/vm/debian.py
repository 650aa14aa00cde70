"""A real Debian bookworm system drive, built from Debian's packages, for the end-to-end
tests: the layout the Debian installer gives a BIOS machine, booted in QEMU to a line that
says whether the restored system is whole.

The drive:

    MBR (msdos) table, GRUB's boot.img in the MBR, GRUB's core image embedded in the gap
    after the MBR (sectors 1..~53, then its Reed-Solomon codes to ~106), written by the real
    `grub-install --target=i386-pc` run inside the system's own chroot;
    p1  ext4  /      (bootable flag; Debian's kernel, initramfs, GRUB, systemd, udev)
    p2  swap
    p3  ext4  /home
    all 1 MiB aligned; /etc/fstab names all three by UUID; grub.cfg is made by update-grub
    in the chroot and boots root=UUID=... with console=tty0 console=ttyS0,115200n8.

The system is debootstrap --variant=minbase plus linux-image-amd64, grub-pc, systemd-sysv and
udev, no recommends, from the mirror in the build host's apt sources. A systemd service on it
(rescue-test-marker.service) checks that /home is mounted from the fstab's UUID, that swap is
active and that the data files (/home/user, /srv/data) match the SHA256SUMS stored on the root
(the optional bulk data in /srv/bulk is checked by the tests on the host: `DebianDrive.bulk`),
prints one line on ttyS0

    RESCUE-DEBIAN-BOOTED home=ok swap=ok files=ok

(or home=missing, home=wrong-fs, swap=off, files=bad/missing) and powers the machine off.

Caching (under build/cache/debian/, or $RESCUE_DEBIAN_CACHE; one builder at a time, by a
file lock): the debootstrap tree, with the kernel and GRUB installed, is a tarball keyed by
the package list and the code that makes it; the finished drive image is keyed by this
module's source, the parameters and the bootstrap key. Callers get a sparse copy.

Run by hand:  python3 tests/vm/debian.py OUT.img [--size MiB] [--root-mib MiB] [--data-mib N]
Boot by hand: python3 tests/vm/debian.py OUT.img --boot            (waits for the marker)
              python3 tests/vm/debian.py OUT.img --interactive     (serial console on stdio;
              root has no password)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import glob
import hashlib
import inspect
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1 << 20
SECTOR = 512
MIB_SECTORS = MiB // SECTOR

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RESCUE_DEBIAN_CACHE", REPO / "build" / "cache" / "debian"))

MARKER = "RESCUE-DEBIAN-BOOTED"

SUITE = "bookworm"
# debootstrap --variant=minbase --include=...: an init, device management, the ext4 tools.
BOOTSTRAP_PACKAGES = ("systemd-sysv", "udev", "kmod", "e2fsprogs", "zstd")
# Then apt-get install --no-install-recommends in the chroot: what makes it bootable.
INSTALL_PACKAGES = ("linux-image-amd64", "initramfs-tools", "grub-pc")
PACKAGES = BOOTSTRAP_PACKAGES + INSTALL_PACKAGES

DEFAULT_ROOT_MIB = 2048
DEFAULT_SWAP_MIB = 256
DEFAULT_HOME_MIB = 512
BOOT_TIMEOUT = 300  # seconds from power-on to the marker under TCG
USER_UID = 1000

SUMS = "/var/lib/rescue-test/SHA256SUMS"  # on the root filesystem
MARKER_SCRIPT = "/usr/local/sbin/rescue-test-marker"
MARKER_UNIT = "rescue-test-marker.service"

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "HOME": "/root",
    "TERM": "dumb",
}


def expected_line() -> str:
    """The whole line a good boot prints on ttyS0."""
    return f"{MARKER} home=ok swap=ok files=ok"


class BuildError(RuntimeError):
    """A tool needed to build the drive failed; the message names it and ends with its output."""


def _run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: dict | None = None,
    cwd: str | Path | None = None,
    tail: int = 25,
) -> str:
    argv = [str(a) for a in argv]
    proc = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        last = "\n".join(out.strip().splitlines()[-tail:])
        raise BuildError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{last}")
    return out


def _chroot(root: Path, *argv: str, input: bytes | None = None) -> str:
    return _run(["chroot", root, *argv], input=input, env=CHROOT_ENV)


def _say(message: str) -> None:
    print(f"[debian] {message}", flush=True)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Announce a slow step and how long it took (CI shows progress)."""
    _say(f"{what} ...")
    t0 = time.monotonic()
    try:
        yield
    except BaseException:
        _say(f"{what}: FAILED after {time.monotonic() - t0:.1f} s")
        raise
    _say(f"{what}: done in {time.monotonic() - t0:.1f} s")


def missing_tools() -> list[str]:
    """What the build and the boot need from the host, not installed (the tests skip on it)."""
    tools = [
        "debootstrap",
        "qemu-system-x86_64",
        "sfdisk",
        "mke2fs",
        "e2fsck",
        "mkswap",
        "losetup",
        "partx",
        "zstd",
        "chroot",
    ]
    return [t for t in tools if shutil.which(t) is None]


# ---------------------------------------------------------------------------------------------
# The mirror: whatever the build host's apt uses for Debian (never a hard-coded host)


def _source_entries() -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of the deb (binary) entries in the host's apt sources."""
    one_line = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in one_line:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
                words = line.split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]], words[3:]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with contextlib.suppress(OSError):
            text = Path(path).read_text()
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                key = None
                for line in stanza.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                        continue
                    if ":" in line:
                        key, value = line.split(":", 1)
                        key = key.strip().lower()
                        fields[key] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split(), fields.get("components", "").split()


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror for `suite` from the host's apt sources ($RESCUE_DEBIAN_MIRROR wins)."""
    given = os.environ.get("RESCUE_DEBIAN_MIRROR")
    if given:
        return given.rstrip("/")
    for uri, suites, components in _source_entries():
        if suite in suites and "main" in components and uri.split(":", 1)[0] in ("http", "https", "file"):
            return uri.rstrip("/")
    raise BuildError(
        f"no 'deb URI {suite} main' entry in /etc/apt/sources.list(.d): set RESCUE_DEBIAN_MIRROR to a Debian mirror"
    )


# ---------------------------------------------------------------------------------------------
# Mounts and loop devices: always undone, and never a recursive delete across a mount


def _mounts_under(path: Path) -> list[str]:
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == base or mnt.startswith(base + "/"):
                found.append(mnt)
    return found


def _safe_rmtree(path: Path) -> None:
    """rm -rf, unless something is still mounted below (a bind of /dev, say): then keep it."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    mounted = _mounts_under(path)
    if mounted:
        _say(f"NOT removing {path}: still mounted there: {', '.join(mounted)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _umount(mnt: Path | str) -> None:
    for _attempt in range(10):
        proc = subprocess.run(["umount", str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    raise BuildError(f"umount {mnt} failed: {proc.stdout.decode(errors='replace').strip()}")


class _Mounts:
    """Mounts made in order, undone in reverse (also on failure)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, *argv: str | Path) -> None:
        target = Path(argv[-1])
        _run(["mount", *argv])
        self.points.append(target)

    def close(self) -> None:
        errors = []
        while self.points:
            mnt = self.points.pop()
            try:
                _umount(mnt)
            except BuildError as e:
                errors.append(str(e))
        if errors:
            raise BuildError("; ".join(errors))

    def __enter__(self) -> _Mounts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _loop_with_partitions(image: Path, count: int) -> Iterator[str]:
    """A loop device over the whole image with its partitions announced to the kernel (partx:
    the host kernel does not scan tables itself); detached on the way out, failure or not."""
    dev = _run(["losetup", "--find", "--show", image]).strip()
    try:
        _run(["partx", "--add", dev])
        for n in range(1, count + 1):
            node = f"{dev}p{n}"
            for _ in range(100):
                if os.path.exists(node):
                    break
                time.sleep(0.05)
            else:
                raise BuildError(f"partx --add {dev}: {node} did not appear")
        yield dev
    finally:
        subprocess.run(["partx", "--delete", dev], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "--detach", dev], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _loops_on(image: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--noheadings", "--output", "NAME", "--associated", str(image)], stdout=subprocess.PIPE, text=True
    ).stdout
    return out.split()


# ---------------------------------------------------------------------------------------------
# Stage 1 (cached as a tarball): debootstrap, then the kernel and GRUB in the chroot

# grub-pc must not ask for, or install to, a device while the package is installed: the
# drive does not exist yet; grub-install runs later against the drive.
DEBCONF_SELECTIONS = """\
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
grub-pc grub-pc/install_devices_disks_changed multiselect
"""


def _bootstrap_tree(tree: Path, mirror: str) -> dict:
    """debootstrap + apt-get install into `tree` (a directory); return facts about it."""
    with _step(f"debootstrap --variant=minbase {SUITE} from {mirror}"):
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BOOTSTRAP_PACKAGES),
                "--components=main",
                SUITE,
                tree,
                mirror,
            ],
            env=dict(os.environ, **CHROOT_ENV),
        )
    (tree / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    policy = tree / "usr/sbin/policy-rc.d"  # no daemons started in the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _chroot(tree, "debconf-set-selections", input=DEBCONF_SELECTIONS.encode())
    with _Mounts() as m, _step("install " + " ".join(INSTALL_PACKAGES) + " (apt-get, no recommends)"):
        m.mount("-t", "proc", "proc", tree / "proc")
        _chroot(tree, "apt-get", "update", "-q")
        _chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends", *INSTALL_PACKAGES)
        _chroot(tree, "apt-get", "clean")
    policy.unlink()
    for lists in (tree / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    (tree / "etc/resolv.conf").unlink(missing_ok=True)  # the build host's
    (tree / "etc/hostname").write_text("rescue-debian\n")
    (tree / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n127.0.1.1\trescue-debian\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    _chroot(
        tree,
        "useradd",
        "--uid",
        str(USER_UID),
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/home/user",
        "--shell",
        "/bin/bash",
        "user",
    )
    _chroot(tree, "passwd", "--delete", "root")  # for --interactive
    kernels = sorted(p.name[len("vmlinuz-") :] for p in (tree / "boot").glob("vmlinuz-*"))
    if not kernels or not list((tree / "boot").glob("initrd.img-*")):
        raise BuildError(f"no kernel/initramfs in {tree}/boot after installing linux-image-amd64")
    versions = _chroot(tree, "dpkg-query", "-W", "-f", "${Package} ${Version}\n", *PACKAGES)
    return {
        "kernel": kernels[-1],
        "packages": dict(line.split(" ", 1) for line in versions.splitlines()),
        "mirror": mirror,
        "suite": SUITE,
    }


def _bootstrap_key() -> str:
    recipe = json.dumps(
        [
            SUITE,
            BOOTSTRAP_PACKAGES,
            INSTALL_PACKAGES,
            DEBCONF_SELECTIONS,
            CHROOT_ENV,
            _code_text(inspect.getsource(_bootstrap_tree)),
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def bootstrap(cache: Path = CACHE) -> tuple[Path, dict]:
    """The cached tarball of the installed tree (built when missing); call with the lock held."""
    key = _bootstrap_key()
    tarball = cache / f"bootstrap-{key}.tar.zst"
    meta = cache / f"bootstrap-{key}.json"
    if tarball.exists() and meta.exists():
        _say(f"bootstrap tree from cache: {tarball.name}")
        return tarball, json.loads(meta.read_text())
    work = Path(tempfile.mkdtemp(prefix="tmp-bootstrap-", dir=cache))
    try:
        tree = work / "tree"
        t0 = time.monotonic()
        info = _bootstrap_tree(tree, apt_mirror())
        with _step("pack the bootstrap tree (tar | zstd)"):
            part = work / "tree.tar.zst"
            _run(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--acls",
                    "-I",
                    "zstd -T0 -3",
                    "-C",
                    tree,
                    "-cf",
                    part,
                    ".",
                ]
            )
            os.replace(part, tarball)
        info["seconds"] = round(time.monotonic() - t0, 1)
        meta.write_text(json.dumps(info, indent=1))
        for old in cache.glob("bootstrap-*"):
            if key not in old.name:
                old.unlink()
    finally:
        _safe_rmtree(work)
    return tarball, info


# ---------------------------------------------------------------------------------------------
# The drive


@dataclass
class Partition:
    number: int
    role: str  # root, swap, home
    start: int  # sectors
    sectors: int
    type: str  # MBR type byte, as sfdisk prints it ("83", "82")
    fstype: str
    uuid: str
    mountpoint: str
    bootable: bool = False

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass
class DebianDrive:
    path: Path
    size: int
    disk_id: str  # the MBR disk identifier, as sfdisk prints it
    partitions: list[Partition]
    root_uuid: str
    swap_uuid: str
    home_uuid: str
    kernel_version: str
    data_mib: int
    marker: str = MARKER
    expect: str = field(default_factory=expected_line)
    files: dict[str, str] = field(default_factory=dict)  # absolute path -> sha256, checked at boot
    bulk: dict[str, str] = field(default_factory=dict)  # /srv/bulk path -> sha256, checked on the host
    packages: dict[str, str] = field(default_factory=dict)

    def partition(self, role: str) -> Partition:
        return next(p for p in self.partitions if p.role == role)

    @property
    def boot_timeout(self) -> float:
        """Seconds to allow from power-on to the marker (the guest checks the small files only;
        bulk data is checked on the host)."""
        return BOOT_TIMEOUT

    def to_json(self) -> str:
        data = asdict(self)
        data["path"] = str(self.path)
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, path: Path) -> DebianDrive:
        data = json.loads(text)
        data["path"] = Path(path)
        data["partitions"] = [Partition(**p) for p in data["partitions"]]
        return cls(**data)


def layout(size_mib: int, root_mib: int, swap_mib: int = DEFAULT_SWAP_MIB) -> list[tuple[int, str, int, int, str]]:
    """(number, role, start sector, sectors, MBR type) of the three primary partitions: root
    from 1 MiB, swap after it, /home to the end of the drive."""
    home_mib = size_mib - 1 - root_mib - swap_mib
    if home_mib < 64:
        raise ValueError(
            f"a {size_mib} MiB drive leaves {home_mib} MiB for /home after root {root_mib} MiB "
            f"and swap {swap_mib} MiB (64 needed)"
        )
    if root_mib < 1024:
        raise ValueError(f"the root partition needs at least 1024 MiB, not {root_mib}")
    m = MIB_SECTORS
    return [
        (1, "root", 1 * m, root_mib * m, "83"),
        (2, "swap", (1 + root_mib) * m, swap_mib * m, "82"),
        (3, "home", (1 + root_mib + swap_mib) * m, home_mib * m, "83"),
    ]


def _uuid(key: str, what: str) -> str:
    digest = hashlib.sha256(f"{key}/{what}".encode()).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=4))


# -- what the system does at boot -------------------------------------------------------------

MARKER_SH = r"""#!/bin/sh
# Installed by rescue's tests/vm/debian.py: is this (restored) system whole? One line on the
# serial port, then power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
home=ok
src=$(findmnt --noheadings --output SOURCE --mountpoint /home 2>/dev/null)
if [ -z "$src" ]; then
    home=missing
elif [ "$(blkid --output value --match-tag UUID "$src" 2>/dev/null)" != "@HOME_UUID@" ]; then
    home=wrong-fs
fi
swap=ok
[ "$(grep -c . /proc/swaps)" -ge 2 ] || swap=off
files=ok
sums=@SUMS@
if [ ! -s "$sums" ]; then
    files=missing
else
    n=$(nproc)
    i=0
    pids=""
    while [ "$i" -lt "$n" ]; do
        awk -v n="$n" -v i="$i" 'NR % n == i' "$sums" | sha256sum --check --status - &
        pids="$pids $!"
        i=$((i + 1))
    done
    for p in $pids; do
        wait "$p" || files=bad
    done
    if [ "$files" = bad ]; then
        sha256sum --check --quiet "$sums" 2>&1 | head -n 5 >/dev/ttyS0
    fi
fi
line="@MARKER@ home=$home swap=$swap files=$files"
printf '\r\n%s\r\n' "$line" >/dev/ttyS0
echo "$line"
# In emergency mode the power-off is refused while the (irreversible) isolation of
# emergency.target is queued, and that waits for this service: ask again from the background
# after this service has ended (RemainAfterExit keeps the helper alive), force it at last.
if ! systemctl --no-block poweroff 2>/dev/null; then
    (
        i=0
        until systemctl --no-block poweroff 2>/dev/null; do
            i=$((i + 1))
            [ "$i" -lt 30 ] || exec systemctl --force poweroff
            sleep 1
        done
    ) </dev/null >/dev/null 2>&1 &
fi
exit 0
"""

# DefaultDependencies=no and WantedBy=emergency.target too: when /home cannot be mounted,
# local-fs.target fails and systemd isolates emergency.target; the line must still come.
MARKER_SERVICE = f"""\
[Unit]
Description=Rescue test: report on ttyS0 whether /home, swap and the data files are there, then power off
DefaultDependencies=no
After=local-fs.target swap.target
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={MARKER_SCRIPT}
StandardOutput=journal

[Install]
WantedBy=multi-user.target emergency.target
"""

GRUB_DEFAULTS = """\
# rescue test drive: a short menu on the serial line too, the kernel console on ttyS0
GRUB_TIMEOUT=1
GRUB_TIMEOUT_STYLE=menu
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""

# A missing /home (its UUID never shows up) then fails after 30 s instead of 90 s.
SYSTEMD_CONF = "[Manager]\nDefaultDeviceTimeoutSec=30s\n"


def _configure(tree: Path, root_uuid: str, swap_uuid: str, home_uuid: str) -> None:
    """What an installer leaves in /etc, plus the marker service."""
    (tree / "etc/fstab").write_text(
        "# /etc/fstab: static file system information.\n#\n"
        "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
        "# / was on /dev/sda1 during installation\n"
        f"UUID={root_uuid} /               ext4    errors=remount-ro 0       1\n"
        "# /home was on /dev/sda3 during installation\n"
        f"UUID={home_uuid} /home           ext4    defaults        0       2\n"
        "# swap was on /dev/sda2 during installation\n"
        f"UUID={swap_uuid} none            swap    sw              0       0\n"
    )
    (tree / "etc/initramfs-tools/conf.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/initramfs-tools/conf.d/resume").write_text(f"RESUME=UUID={swap_uuid}\n")
    (tree / "etc/default/grub.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/default/grub.d/rescue-test.cfg").write_text(GRUB_DEFAULTS)
    (tree / "etc/systemd/system.conf.d").mkdir(parents=True, exist_ok=True)
    (tree / "etc/systemd/system.conf.d/rescue-test.conf").write_text(SYSTEMD_CONF)
    script = tree / MARKER_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(MARKER_SH.replace("@HOME_UUID@", home_uuid).replace("@SUMS@", SUMS).replace("@MARKER@", MARKER))
    script.chmod(0o755)
    unit = tree / "etc/systemd/system" / MARKER_UNIT
    unit.write_text(MARKER_SERVICE)
    for target in ("multi-user.target", "emergency.target"):
        wants = tree / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(exist_ok=True)
        (wants / MARKER_UNIT).symlink_to(f"/etc/systemd/system/{MARKER_UNIT}")


# -- data -------------------------------------------------------------------------------------

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_FREQ = (
    12.7,
    9.1,
    8.2,
    7.5,
    7.0,
    6.7,
    6.3,
    6.1,
    6.0,
    4.3,
    4.0,
    2.8,
    2.8,
    2.4,
    2.4,
    2.2,
    2.0,
    2.0,
    1.9,
    1.5,
    1.0,
    0.8,
    0.15,
    0.15,
    0.1,
    0.07,
)
_LOWER = bytes(range(ord("a"), ord("z") + 1))


class _Text:
    """Text-like bytes that gzip/zstd compress about 3:1: lines of Zipf-distributed made-up
    words and numbers. A few 1 MiB base texts are made once (slow in Python); each MiB handed
    out is one of them rotated and with its letters permuted, so no two are alike."""

    def __init__(self, rnd: random.Random, bases: int = 4):
        self.rnd = rnd
        lcum = list(itertools.accumulate(_LETTER_FREQ))
        lengths = (1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 11)
        vocab = ["".join(rnd.choices(_LETTERS, cum_weights=lcum, k=rnd.choice(lengths))) for _ in range(8000)]
        cum = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(8000)))
        self.bases = []
        for _ in range(bases):
            lines, size = [], 0
            while size < MiB:
                line = " ".join(rnd.choices(vocab, cum_weights=cum, k=rnd.randint(6, 16)))
                if rnd.random() < 0.15:
                    line += f" {rnd.getrandbits(16)}"
                if rnd.random() < 0.2:
                    line = line.capitalize() + "."
                lines.append(line)
                size += len(line) + 1
            self.bases.append(("\n".join(lines) + "\n").encode()[:MiB])

    def mib(self) -> bytes:
        perm = bytearray(_LOWER)
        self.rnd.shuffle(perm)
        base = self.rnd.choice(self.bases)
        at = self.rnd.randrange(len(base))
        return (base[at:] + base[:at]).translate(bytes.maketrans(_LOWER, bytes(perm)))


def _write_small_data(root_tree: Path, home_tree: Path, seed: int) -> list[Path]:
    """A few MiB a user would miss: in /home/user and /srv/data."""
    rnd = random.Random(f"debian-small-{seed}")
    text = _Text(rnd, bases=1)
    user = home_tree / "user"
    (user / "Documents").mkdir(parents=True)
    (user / "Pictures").mkdir()
    (user / ".bashrc").write_text("# ~/.bashrc\nexport EDITOR=vi\nalias ll='ls -l'\n")
    (user / "Documents/notes.txt").write_bytes(text.mib()[: 300 * 1024])
    (user / "Documents/report.txt").write_text("".join(f"line {i}: seed {seed} {rnd.random()}\n" for i in range(5000)))
    (user / "Pictures/photo.raw").write_bytes(rnd.randbytes(2 * MiB + 12345))
    (user / "Documents/link-to-notes").symlink_to("notes.txt")
    srv = root_tree / "srv/data"
    srv.mkdir(parents=True)
    (srv / "half-zero.bin").write_bytes(bytes(MiB) + rnd.randbytes(MiB + 777))
    (srv / "log.txt").write_bytes(text.mib())
    for i in range(16):
        (srv / f"small-{i:02}.cfg").write_text(f"key{i} = {rnd.random()}\n" * (i + 1))
    for p in [user, *user.rglob("*")]:
        os.lchown(p, USER_UID, USER_UID)
    return [p for p in [*sorted(user.rglob("*")), *sorted(srv.rglob("*"))] if p.is_file() and not p.is_symlink()]


def _write_bulk(root_tree: Path, data_mib: int, seed: int) -> list[Path]:
    """`data_mib` MiB in /srv/bulk: *.bin random, *.log text (~3:1), *.img mixed random, text
    and zero MiBs (the zero MiBs end up as holes: mke2fs -d does not store zero blocks)."""
    if data_mib <= 0:
        return []
    rnd = random.Random(f"debian-bulk-{seed}")
    text = _Text(rnd)
    bulk = root_tree / "srv/bulk"
    bulk.mkdir(parents=True)
    sizes = (16, 48, 32, 64, 24)
    kinds = ("bin", "log", "img")
    paths, left = [], data_mib
    for i in itertools.count():
        if left <= 0:
            break
        n = min(left, sizes[i % len(sizes)])
        kind = kinds[i % len(kinds)]
        path = bulk / f"{kind}-{i:04}.{kind}"
        with open(path, "wb") as f:
            for _ in range(n):
                what = kind if kind != "img" else ("bin", "log", "zero", "bin", "log")[rnd.randrange(5)]
                f.write(rnd.randbytes(MiB) if what == "bin" else text.mib() if what == "log" else bytes(MiB))
        paths.append(path)
        left -= n
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


# -- filesystems and GRUB ---------------------------------------------------------------------


def _mkswap_at(image: Path, part: Partition, work: Path) -> None:
    """mkswap writes its header page into a scratch file of the partition's size; the page
    goes to the partition's offset (this mkswap has no --offset)."""
    scratch = work / "swap.scratch"
    with open(scratch, "wb") as f:
        f.truncate(part.size)
    _run(["mkswap", "--uuid", part.uuid, scratch])
    with open(scratch, "rb") as src, open(image, "r+b") as dst:
        dst.seek(part.offset)
        dst.write(src.read(64 * 1024))
    scratch.unlink()


def _install_grub(image: Path, drive: DebianDrive, work: Path) -> str:
    """grub-install --target=i386-pc and update-grub from the system's own chroot, on a loop
    device with partitions; grub.cfg gets root=UUID=. Returns grub.cfg. Everything mounted is
    unmounted and the loop device detached before this returns (or raises)."""
    mnt = work / "mnt"
    mnt.mkdir()
    root = drive.partition("root")
    with _loop_with_partitions(image, len(drive.partitions)) as dev:
        with _Mounts() as m:
            m.mount("-t", "ext4", f"{dev}p{root.number}", mnt)
            m.mount("--bind", "/dev", mnt / "dev")
            m.mount("-t", "proc", "proc", mnt / "proc")
            m.mount("-t", "sysfs", "sysfs", mnt / "sys")
            _chroot(mnt, "grub-install", "--target=i386-pc", dev)
            _chroot(mnt, "update-grub")
            cfg_path = mnt / "boot/grub/grub.cfg"
            cfg = cfg_path.read_text()
            # Without udev there is no /dev/disk/by-uuid, so 10_linux wrote root=/dev/loopNpM.
            fixed, n = re.subn(rf"root={re.escape(dev)}p{root.number}(?=\s)", f"root=UUID={drive.root_uuid}", cfg)
            if n:
                _say(f"grub.cfg: root={dev}p{root.number} -> root=UUID={drive.root_uuid} ({n} entries)")
            cfg_path.write_text(fixed)
            _check_grub_cfg(fixed, drive)
            os.sync()
        for part in drive.partitions:
            if part.fstype == "ext4":
                _run(["e2fsck", "-fn", f"{dev}p{part.number}"])
    left = _loops_on(image)
    if left:
        raise BuildError(f"loop devices still attached to {image}: {left}")
    return fixed


def _check_grub_cfg(cfg: str, drive: DebianDrive) -> None:
    problems = []
    if "/dev/loop" in cfg:
        problems.append("still names a /dev/loop device")
    if f"root=UUID={drive.root_uuid} " not in cfg:
        problems.append(f"no root=UUID={drive.root_uuid}")
    if "console=ttyS0,115200n8" not in cfg:
        problems.append("no console=ttyS0,115200n8")
    if "set timeout=1" not in cfg:
        problems.append("no 'set timeout=1'")
    if "serial --unit=0 --speed=115200" not in cfg or not re.search(r"terminal_output.*serial", cfg):
        problems.append("no serial terminal")
    if "search --no-floppy --fs-uuid --set=root" not in cfg or drive.root_uuid not in cfg:
        problems.append("no search by the root's fs UUID")
    if problems:
        raise BuildError("grub.cfg made by update-grub: " + "; ".join(problems))


def _mem_available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def _build_image(image: Path, drive: DebianDrive, tarball: Path, data_mib: int, seed: int, cache: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="tmp-drive-", dir=cache))
    try:
        scratch = work / "scratch"
        scratch.mkdir()
        with _Mounts() as m:
            # The unpacked system and the data only feed mke2fs -d: in RAM when there is room
            # (writing, then deleting, ~30,000 files on this disk takes longer than the rest).
            need = 1536 + data_mib
            if _mem_available_mib() > 2 * need + 2048:
                m.mount("-t", "tmpfs", "-o", f"size={need}m,mode=0755", "rescue-debian-scratch", scratch)
            _populate(image, drive, tarball, data_mib, seed, scratch, work)
        with _step("grub-install --target=i386-pc and update-grub in the chroot"):
            _install_grub(image, drive, work)
        with _step("fsync the image"):
            with open(image, "r+b") as f:
                os.fsync(f.fileno())
    finally:
        _safe_rmtree(work)


def _populate(
    image: Path, drive: DebianDrive, tarball: Path, data_mib: int, seed: int, scratch: Path, work: Path
) -> None:
    """The partition table, and the filesystems made from directory trees (mke2fs -d packs
    the files from the start of the filesystem, in the order it walks the tree)."""
    tree, home = scratch / "root", scratch / "home"
    tree.mkdir()
    home.mkdir()
    with _step("unpack the bootstrap tree"):
        _run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "-I",
                "zstd -T0",
                "-C",
                tree,
                "-xf",
                tarball,
            ]
        )
    _configure(tree, drive.root_uuid, drive.swap_uuid, drive.home_uuid)
    with _step(f"write the data files (+{data_mib} MiB in /srv/bulk) and their SHA256SUMS"):
        small = _write_small_data(tree, home, seed)
        sums = {}
        for p in small:
            if p.is_relative_to(home):
                sums["/home/" + str(p.relative_to(home))] = _sha256(p)
            else:
                sums["/" + str(p.relative_to(tree))] = _sha256(p)
        sums_file = tree / SUMS.lstrip("/")
        sums_file.parent.mkdir(parents=True, exist_ok=True)
        sums_file.write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
        drive.files = sums
        # Bulk data is checked by the tests on the host (sha256 under TCG runs at ~20 MB/s:
        # 3 GiB would cost the boot minutes), so its sums stay out of the guest's list.
        drive.bulk = {"/" + str(p.relative_to(tree)): _sha256(p) for p in _write_bulk(tree, data_mib, seed)}

    with open(image, "wb") as f:
        f.truncate(drive.size)
    table = ["label: dos", f"label-id: {drive.disk_id}", "unit: sectors", ""]
    for p in drive.partitions:
        table.append(f"start={p.start}, size={p.sectors}, type={p.type}" + (", bootable" if p.bootable else ""))
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image], input=("\n".join(table) + "\n").encode())

    root, home_part = drive.partition("root"), drive.partition("home")
    with _step(f"populate the root filesystem (mke2fs -d, {root.size // MiB} MiB)"):
        try:
            _run(
                [
                    "mke2fs",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-b",
                    "4096",
                    "-U",
                    root.uuid,
                    "-E",
                    f"offset={root.offset},nodiscard",
                    "-d",
                    tree,
                    image,
                    str(root.size // 4096),
                ]
            )
        except BuildError as e:
            raise BuildError(
                f"{e}\n(root_mib={root.size // MiB} too small for the system plus {data_mib} MiB of data?)"
            ) from None
    with _step("populate /home and make swap"):
        _run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-U",
                home_part.uuid,
                "-E",
                f"offset={home_part.offset},nodiscard",
                "-d",
                home,
                image,
                str(home_part.size // 4096),
            ]
        )
        _mkswap_at(image, drive.partition("swap"), work)


# -- cache ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        t0 = time.monotonic()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another build holding {cache / '.lock'} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
            _say(f"got the lock after {time.monotonic() - t0:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _code_text(source: str) -> str:
    """Python source as its syntax tree: reformatting or a comment does not change a key."""
    return ast.dump(ast.parse(source))


def _source_hash() -> str:
    return hashlib.sha256(_code_text(Path(__file__).read_text()).encode()).hexdigest()[:10]


def _copy_sparse(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    _run(["cp", "--sparse=always", "--reflink=auto", src, dst])


def build_debian_drive(
    path: str | Path,
    *,
    size_mib: int | None = None,
    root_mib: int | None = None,
    data_mib: int = 0,
    swap_mib: int = DEFAULT_SWAP_MIB,
    seed: int = 1,
    cache: Path = CACHE,
    rebuild: bool = False,
) -> DebianDrive:
    """Write the Debian system drive to `path` (a sparse copy of the cached image; built on a
    cache miss) and return its description.

    root_mib defaults to 2048 plus 1.1 x data_mib; size_mib to root + swap + 512 MiB of /home
    (+1 MiB before the first partition); data_mib MiB of bulk data go to /srv/bulk on the root.
    """
    if data_mib < 0:
        raise ValueError("data_mib must be >= 0")
    if root_mib is None:
        root_mib = DEFAULT_ROOT_MIB + (data_mib * 11 + 9) // 10
    if size_mib is None:
        size_mib = 1 + root_mib + swap_mib + DEFAULT_HOME_MIB
    parts = layout(size_mib, root_mib, swap_mib)  # validates before anything slow
    path = Path(path)
    missing = [t for t in missing_tools() if t != "qemu-system-x86_64"]
    if missing:
        raise BuildError(f"not installed: {', '.join(missing)}")
    params = {"size_mib": size_mib, "root_mib": root_mib, "swap_mib": swap_mib, "data_mib": data_mib, "seed": seed}
    t0 = time.monotonic()
    with _cache_lock(cache):
        for stale in cache.glob("tmp-*"):  # a killed build's leftovers (we hold the lock)
            _safe_rmtree(stale)
        bkey = _bootstrap_key()
        src = _source_hash()
        key = hashlib.sha256(json.dumps([src, bkey, params, PACKAGES]).encode()).hexdigest()[:16]
        image = cache / f"drive-{src}-{key}.img"
        meta = cache / f"drive-{src}-{key}.json"
        if rebuild:
            image.unlink(missing_ok=True)
        if image.exists() and meta.exists():
            _say(f"drive image from cache: {image.name}")
            drive = DebianDrive.from_json(meta.read_text(), path)
        else:
            tarball, info = bootstrap(cache)
            uuids = {role: _uuid(key, role) for role in ("root", "swap", "home")}
            fstypes = {"root": ("ext4", "/"), "swap": ("swap", "none"), "home": ("ext4", "/home")}
            partitions = [
                Partition(
                    n,
                    role,
                    start,
                    sectors,
                    typ,
                    fstypes[role][0],
                    uuids[role],
                    fstypes[role][1],
                    bootable=(role == "root"),
                )
                for n, role, start, sectors, typ in parts
            ]
            disk_id = "0x" + hashlib.sha256(f"{key}/disk".encode()).hexdigest()[:8]
            drive = DebianDrive(
                path,
                size_mib * MiB,
                disk_id,
                partitions,
                uuids["root"],
                uuids["swap"],
                uuids["home"],
                info["kernel"],
                data_mib,
                packages=info["packages"],
            )
            partial = cache / f"tmp-{key}.img"
            try:
                _build_image(partial, drive, tarball, data_mib, seed, cache)
                meta.write_text(drive.to_json())
                os.replace(partial, image)
            finally:
                partial.unlink(missing_ok=True)
            for old in cache.glob("drive-*"):  # images of an older version of this module
                if not old.name.startswith(f"drive-{src}-"):
                    old.unlink()
        with _step(f"copy the drive image to {path}"):
            _copy_sparse(image, path)
    _say(f"drive ready in {time.monotonic() - t0:.1f} s: {path}")
    drive.path = path
    return drive


# ---------------------------------------------------------------------------------------------
# Booting it (QEMU TCG: KVM hangs on the development machines)

# (Not "emergency mode": the marker service also runs there and says what is missing.)
FAILURES = (
    "Kernel panic - not syncing",
    "grub rescue>",
    "Gave up waiting for root",
    "(initramfs)",
    "No bootable device",
)


@dataclass
class BootResult:
    found: bool  # the expected line came
    line: str | None  # the marker line that came (found or not)
    seconds: float  # power-on to the marker line (or to giving up)
    exited: bool  # QEMU ended by itself (the guest powered off)
    reason: str  # "marker", a FAILURES text, "exited" or "timeout"
    log: str  # the serial port
    firmware_log: str = ""

    def tail(self, lines: int = 40) -> str:
        fw = "\n".join(self.firmware_log.splitlines()[-5:])
        clean = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", self.log)
        return (f"[firmware]\n{fw}\n" if fw else "") + "[serial]\n" + "\n".join(clean.splitlines()[-lines:])


def qemu_argv(
    images: Sequence[str | Path], serial_log: Path | None, work: Path, memory: int = 1024, cpus: int = 2
) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-machine",
        "pc,accel=tcg",
        "-m",
        str(memory),
        "-smp",
        str(cpus),
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        # SeaBIOS's debug port: "Booting from Hard Disk..." and where a boot stopped
        "-chardev",
        f"file,id=fwlog,path={work / 'firmware.log'}",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=fwlog",
    ]
    argv += ["-serial", f"file:{serial_log}"] if serial_log else ["-serial", "mon:stdio"]
    for i, img in enumerate(images):
        argv += [
            "-drive",
            f"file={img},format=raw,if=none,id=disk{i},cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=disk{i},serial=DEBIAN{i},bootindex={i}",
        ]
    return argv


def boot_and_expect(
    image_paths: Sequence[str | Path],
    firmware: str = "bios",
    timeout: float = BOOT_TIMEOUT,
    expect: str | None = None,
    failures: Sequence[str] = FAILURES,
) -> BootResult:
    """Boot the disks under SeaBIOS (the first one boots) and wait for the marker line. Stops
    early on a known failure text or when QEMU exits; after the line, waits (up to 60 s) for
    the guest's power-off so the images are not in use when this returns."""
    if firmware != "bios":
        raise ValueError(f"the Debian drive boots with BIOS only (no EFI system partition), not {firmware!r}")
    expect = expect or expected_line()
    pattern = re.compile(re.escape(MARKER) + r"[^\r\n]*(?=\r?\n)")
    with tempfile.TemporaryDirectory(prefix="debian-qemu-") as tmp:
        work = Path(tmp)
        log = work / "serial.log"
        log.touch()
        start = time.monotonic()
        proc = subprocess.Popen(
            qemu_argv(image_paths, log, work),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reason, line = "timeout", None
        try:
            while time.monotonic() - start < timeout:
                text = log.read_text(errors="replace")
                m = pattern.search(text)
                if m:
                    line, reason = m.group(0).strip(), "marker"
                    break
                hit = next((f for f in failures if f in text), None)
                if hit:
                    reason = hit
                    break
                if proc.poll() is not None:
                    reason = "exited"
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - start
            if line is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        text = log.read_text(errors="replace")
        if out.strip():
            text += "\n[qemu] " + out
        fw = work / "firmware.log"
        return BootResult(
            line == expect,
            line,
            seconds,
            proc.returncode == 0 and line is not None,
            reason,
            text,
            fw.read_text(errors="replace") if fw.exists() else "",
        )


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build (or boot) the Debian bookworm test system drive.")
    ap.add_argument("out", help="image file to write (or to boot)")
    ap.add_argument("--size", type=int, help="drive size in MiB (default: root + swap + 512 MiB /home)")
    ap.add_argument("--root-mib", type=int, help="root partition size in MiB (default 2048 + 1.1 x data)")
    ap.add_argument("--data-mib", type=int, default=0, help="MiB of bulk data in /srv/bulk on the root")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached image of this recipe")
    ap.add_argument(
        "--boot", action="store_true", help="boot OUT in QEMU (build it first if missing) and wait for the marker line"
    )
    ap.add_argument(
        "--interactive", action="store_true", help="boot OUT with the serial console on this terminal (Ctrl-A X quits)"
    )
    ap.add_argument(
        "--timeout", type=float, help=f"seconds to wait for the marker (default {BOOT_TIMEOUT}, more with --data-mib)"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    built = args.rebuild or not (args.boot or args.interactive) or not out.exists()
    timeout = args.timeout or BOOT_TIMEOUT
    if built:
        try:
            drive = build_debian_drive(
                out, size_mib=args.size, root_mib=args.root_mib, data_mib=args.data_mib, rebuild=args.rebuild
            )
        except (BuildError, ValueError) as e:
            print(f"debian: {e}", file=sys.stderr)
            return 2
        info = json.loads(drive.to_json())
        info["files"] = len(info["files"])
        print(json.dumps(info, indent=1))
        timeout = args.timeout or drive.boot_timeout
    if args.interactive:
        with tempfile.TemporaryDirectory(prefix="debian-qemu-") as tmp:
            return subprocess.call(qemu_argv([out], None, Path(tmp)))
    if args.boot:
        r = boot_and_expect([out], timeout=timeout)
        print(r.tail(), file=sys.stderr)
        print(
            f"boot: {r.reason} after {r.seconds:.0f} s: {r.line!r} (expected {expected_line()!r}; "
            f"powered off: {r.exited})",
            file=sys.stderr,
        )
        return 0 if r.found else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

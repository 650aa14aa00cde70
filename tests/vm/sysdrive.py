"""A small bootable "system drive" image for the end-to-end tests: capture it, restore it,
boot the restored copy, and see a marker line on the serial port.

The drive is what a real Debian install looks like to an imaging tool: a GPT (or MBR) table,
a BIOS boot partition holding GRUB's core image, an EFI system partition holding a removable
GRUB (EFI/BOOT/BOOTX64.EFI), an ext4 root with GRUB's modules, grub.cfg, a Debian kernel, an
initramfs, an fstab with UUID= entries and some data, and a swap partition. Both GRUBs find
the root by filesystem UUID, so a restore that loses a byte of the boot code, the table, the
ESP or the root filesystem fails to boot.

The initramfs is busybox and a shell script, not a Debian system: it loads the disk and ext4
modules, finds the root by the UUID on the kernel command line, checks the data files against
the SHA256SUMS stored beside them on the root, prints one line

    <marker> root=<uuid> files=ok

on the console (ttyS0) and powers off. "files=" says bad-files, mount-failed or missing when
the restored root is wrong, so a test that expects the whole line fails.

Everything is written into the image file at offsets (sfdisk, mkfs.fat --offset,
mke2fs -E offset -d, mtools @@offset, dd): no loop devices, no mounts, nothing to detach. The
kernel and the initramfs are cached under build/cache/sysdrive/.

Run by hand:  python3 tests/vm/sysdrive.py OUT.img [--size MiB] [--table gpt|msdos]
Boot by hand: python3 tests/vm/sysdrive.py OUT.img --boot bios|uefi
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
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
GiB = 1 << 30
SECTOR = 512

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RESCUE_SYSDRIVE_CACHE", REPO / "build" / "cache" / "sysdrive"))

MARKER = "RESCUE-SYSDRIVE-BOOTED"

BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"

GRUB_LIB = Path("/usr/lib/grub")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"

# Kernel modules the initramfs loads (with their dependencies) to reach an ext4 root on
# virtio-blk, IDE (PIIX) or AHCI. crc32c is named explicitly: ext4 asks the crypto API for it
# by name, so no module's depends= lists it.
WANTED_MODULES = ("virtio_pci", "virtio_blk", "ata_piix", "ahci", "sd_mod", "crc32c_generic", "ext4")


class BuildError(RuntimeError):
    """A tool needed to build the test drive failed; the message names it."""


def _run(argv: Sequence[str], *, input: bytes | None = None, cwd: str | Path | None = None) -> str:
    proc = subprocess.run(list(map(str, argv)), input=input, capture_output=True, cwd=cwd)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        raise BuildError(f"{argv[0]} failed: {err[-1]}")
    return proc.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Layout (pure)


@dataclass
class Part:
    number: int
    start: int  # sectors
    sectors: int
    type: str  # GPT type GUID or MBR type byte as hex ("83")
    name: str = ""
    role: str = ""  # bios_boot, esp, root, swap
    bootable: bool = False

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


def layout(size: int, table: str = "gpt", swap: bool = True) -> list[Part]:
    """The partitions of a drive of `size` bytes, 1 MiB aligned. GPT keeps 1 MiB at the end
    free for the backup table."""
    mib = MiB // SECTOR
    total = size // SECTOR
    swap_s = 32 * mib if swap else 0
    parts: list[Part] = []
    if table == "gpt":
        parts.append(Part(1, 1 * mib, 1 * mib, BIOS_BOOT, "BIOS boot", "bios_boot"))
        parts.append(Part(2, 2 * mib, 64 * mib, ESP, "EFI system", "esp"))
        end = total - mib
        root_start = 66 * mib
        root_s = end - root_start - swap_s
        parts.append(Part(3, root_start, root_s, LINUX_FS, "sysroot", "root"))
        if swap:
            parts.append(Part(4, root_start + root_s, swap_s, LINUX_SWAP, "swap", "swap"))
    elif table == "msdos":
        # GRUB's core image goes into the gap between the MBR and partition 1.
        end = total
        root_start = 1 * mib
        root_s = end - root_start - 64 * mib - swap_s
        parts.append(Part(1, root_start, root_s, "83", "", "root", bootable=True))
        parts.append(Part(2, root_start + root_s, 64 * mib, "ef", "", "esp"))
        if swap:
            parts.append(Part(3, root_start + root_s + 64 * mib, swap_s, "82", "", "swap"))
    else:
        raise ValueError(f"unknown partition table type {table!r} (gpt or msdos)")
    root = next(p for p in parts if p.role == "root")
    if root.sectors < 128 * mib:
        raise ValueError(f"a system drive needs at least 256 MiB; got {size // MiB} MiB")
    return parts


def sfdisk_script(parts: list[Part], table: str) -> str:
    lines = [f"label: {'dos' if table == 'msdos' else table}", "unit: sectors", ""]
    if table == "gpt":
        lines.insert(1, "first-lba: 2048")
    for p in parts:
        line = f"start={p.start}, size={p.sectors}, type={p.type}"
        if p.name and table == "gpt":
            line += f', name="{p.name}"'
        if p.bootable:
            line += ", bootable"
        lines.append(line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Cache: a Debian kernel and a few of its modules


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """Two test processes building at once share one download."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Kernel:
    version: str
    vmlinuz: Path
    modules: list[Path]  # in load order


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)", out)
    if not m:
        raise BuildError("apt-cache depends linux-image-amd64: no linux-image-*-amd64 dependency")
    return m.group(1)


def _module_depends(ko: bytes) -> list[str]:
    """The depends= entry of a module's .modinfo section (the package ships no modules.dep:
    depmod makes it at install time, and this machine has no modinfo)."""
    m = re.search(rb"\0depends=([^\0]*)\0", ko)
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def _modname(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _extract_modules(tar: Path, out: Path, members: list[str], wanted: Sequence[str]) -> list[Path]:
    """Extract `wanted` and what they depend on; return the files in load order."""
    by_name = {_modname(m): m for m in members if ".ko" in m}
    found: dict[str, Path] = {}
    deps: dict[str, list[str]] = {}
    todo = list(wanted)
    while todo:
        batch = sorted({n for n in todo if n not in found})
        todo = []
        missing = [n for n in batch if n not in by_name]
        if missing:
            raise BuildError(f"kernel module {missing[0]} is not in the kernel package")
        if not batch:
            break
        _run(["tar", "-xf", tar, "-C", out] + [by_name[n] for n in batch])
        for n in batch:
            found[n] = out / by_name[n]
            deps[n] = _module_depends(found[n].read_bytes())
            todo += deps[n]
    order: list[str] = []

    def visit(n: str) -> None:
        if n not in order:
            for d in deps[n]:
                visit(d)
            order.append(n)

    for n in wanted:
        visit(n)
    return [found[n] for n in order]


def _kernel_deb(where: Path) -> Path:
    """linux-image-amd64's current kernel package, downloaded into `where`; without a
    mirror, the newest one apt has cached."""
    try:
        pkg = _kernel_package()
        _run(["apt-get", "download", "-q", pkg], cwd=where)
        debs = sorted(where.glob(f"{pkg}_*.deb"))
        if debs:
            return debs[-1]
        raise BuildError(f"apt-get download {pkg}: no .deb appeared")
    except BuildError:
        cached = sorted(Path("/var/cache/apt/archives").glob("linux-image-[0-9]*-amd64_*.deb"))
        if not cached:
            raise
        return cached[-1]


def kernel(cache: Path = CACHE) -> Kernel:
    """The Debian kernel the drive boots, fetched once with apt-get download and cached
    (vmlinuz plus the few modules the initramfs needs, not the whole package)."""
    with _cache_lock(cache):
        kdir = cache / "kernel"
        info = kdir / "kernel.json"
        if info.exists():
            data = json.loads(info.read_text())
            k = Kernel(data["version"], kdir / data["vmlinuz"], [kdir / m for m in data["modules"]])
            if k.vmlinuz.exists() and all(m.exists() for m in k.modules):
                return k
        shutil.rmtree(kdir, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="kernel-", dir=cache))
        try:
            deb = _kernel_deb(tmp)
            version = deb.name.split("_")[0][len("linux-image-") :]
            tar = tmp / "data.tar"
            with open(tar, "wb") as f:
                proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=f, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise BuildError(f"dpkg-deb failed: {proc.stderr.decode(errors='replace').strip()}")
            out = tmp / "root"
            out.mkdir()
            members = _run(["tar", "-tf", tar]).split()
            _run(["tar", "-xf", tar, "-C", out, f"./boot/vmlinuz-{version}"])
            order = _extract_modules(tar, out, members, WANTED_MODULES)
            kdir.mkdir()
            shutil.move(str(out / "boot" / f"vmlinuz-{version}"), kdir / "vmlinuz")
            mods = kdir / "modules"
            mods.mkdir()
            names = []
            for m in order:
                shutil.move(str(m), mods / m.name)
                names.append(f"modules/{m.name}")
            info.write_text(
                json.dumps({"version": version, "package": deb.name, "vmlinuz": "vmlinuz", "modules": names}, indent=1)
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return kernel(cache)


# ---------------------------------------------------------------------------------------------
# Initramfs: busybox and one script, written as a newc cpio without needing mknod

INIT = r"""#!/bin/sh
# The test system drive's whole userland: prove the restored root is there and intact.
PATH=/bin
export PATH
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
exec </dev/console >/dev/console 2>&1
uuid=$(sed -n 's/.*root=UUID=\([^ ]*\).*/\1/p' /proc/cmdline)
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null; done
dev=""
i=0
while [ $i -lt 60 ]; do
    dev=$(findfs "UUID=$uuid" 2>/dev/null) && break
    sleep 0.5
    i=$((i + 1))
done
state=missing
if [ -n "$dev" ]; then
    if mount -t ext4 -o ro "$dev" /root; then
        if (cd /root && sha256sum -c -s etc/sysdrive/SHA256SUMS); then state=ok; else state=bad-files; fi
        umount /root
    else
        state=mount-failed
    fi
fi
echo
echo "@MARKER@ root=$uuid files=$state"
echo
sync
poweroff -f
"""


def _cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """(name, mode, data, (rdev major, minor)) → an uncompressed newc archive. Writing it
    here keeps the initramfs reproducible and lets it hold /dev/console without mknod."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, (major, minor)) in enumerate(entries + [("TRAILER!!!", 0, b"", (0, 0))], 1):
        raw = name.encode() + b"\0"
        fields = [
            ino if name != "TRAILER!!!" else 0,
            mode,
            0,
            0,
            2 if mode & 0o040000 else 1,
            0,
            len(data),
            0,
            0,
            major,
            minor,
            len(raw),
            0,
        ]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        pad()
        out += data
        pad()
    return bytes(out)


def _has_interpreter(elf: bytes) -> bool:
    """True for a dynamically linked ELF64 (it has a PT_INTERP program header)."""
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    size, count = int.from_bytes(elf[0x36:0x38], "little"), int.from_bytes(elf[0x38:0x3A], "little")
    return any(int.from_bytes(elf[phoff + i * size : phoff + i * size + 4], "little") == 3 for i in range(count))


def initramfs(k: Kernel, marker: str = MARKER, cache: Path = CACHE) -> Path:
    """A gzip'd newc initramfs with the init script above, cached by its content."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise BuildError("busybox is not installed (apt-get install busybox-static)")
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", marker):
        raise ValueError(f"marker {marker!r}: use letters, digits and . _ : - only (it goes into a shell line)")
    init = INIT.replace("@MARKER@", marker).encode()
    bb = busybox.read_bytes()
    if _has_interpreter(bb):
        raise BuildError("/bin/busybox is dynamically linked: install busybox-static")
    key = hashlib.sha256(init + bb + k.version.encode() + b"".join(m.name.encode() for m in k.modules)).hexdigest()[:16]
    path = cache / "initrd" / f"initrd-{key}.img"
    with _cache_lock(cache):
        if not path.exists():
            _write_initramfs(path, init, bb, k)
    return path


def _write_initramfs(path: Path, init: bytes, bb: bytes, k: Kernel) -> None:
    busybox = Path("/bin/busybox")  # static: the initramfs has no libc
    d, f, x, link = 0o040755, 0o100644, 0o100755, 0o120777
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        ("bin", d, b"", (0, 0)),
        ("dev", d, b"", (0, 0)),
        ("proc", d, b"", (0, 0)),
        ("sys", d, b"", (0, 0)),
        ("root", d, b"", (0, 0)),
        ("lib", d, b"", (0, 0)),
        ("lib/modules", d, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("dev/null", 0o020666, b"", (1, 3)),
        ("bin/busybox", x, bb, (0, 0)),
        ("init", x, init, (0, 0)),
        ("modules", f, "".join(m.name + "\n" for m in k.modules).encode(), (0, 0)),
    ]
    applets = _run([busybox, "--list"]).split()
    entries += [(f"bin/{a}", link, b"busybox", (0, 0)) for a in applets if a != "busybox"]
    entries += [(f"lib/modules/{m.name}", f, m.read_bytes(), (0, 0)) for m in k.modules]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
            gz.write(_cpio_newc(entries))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# GRUB


def _early_config(root_uuid: str) -> str:
    return f"search.fs_uuid {root_uuid} root\nset prefix=($root)/boot/grub\n"


def grub_cfg(root_uuid: str) -> str:
    return f"""\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
insmod all_video
search --no-floppy --fs-uuid --set=root {root_uuid}
menuentry "rescue test system drive" {{
    linux /boot/vmlinuz root=UUID={root_uuid} ro console=ttyS0,115200 quiet
    initrd /boot/initrd.img
}}
"""


def _grub_image(target: str, out: Path, root_uuid: str, prefix: str, modules: Sequence[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as cfg:
        cfg.write(_early_config(root_uuid))
        cfg.flush()
        _run(["grub-mkimage", "-O", target, "-d", GRUB_LIB / target, "-o", out, "-p", prefix, "-c", cfg.name, *modules])


def install_grub_bios(img: Path, parts: list[Part], table: str, root_uuid: str, work: Path) -> None:
    """What grub-install --target=i386-pc does, without a partition node: boot.img in the MBR
    (keeping the table), core.img in the BIOS boot partition or the post-MBR gap, and the
    two sector pointers that chain them."""
    lib = GRUB_LIB / "i386-pc"
    if table == "gpt":
        bios = next(p for p in parts if p.role == "bios_boot")
        core_at, room = bios.start, bios.sectors
        prefix = f"(hd0,gpt{next(p for p in parts if p.role == 'root').number})/boot/grub"
    else:
        core_at, room = 1, parts[0].start - 1
        prefix = f"(hd0,msdos{next(p for p in parts if p.role == 'root').number})/boot/grub"
    core = work / "core.img"
    _grub_image("i386-pc", core, root_uuid, prefix, ["biosdisk", "part_gpt", "part_msdos", "ext2", "search_fs_uuid"])
    data = bytearray(core.read_bytes())
    if len(data) > room * SECTOR:
        raise BuildError(f"GRUB core.img is {len(data)} bytes; only {room * SECTOR} fit")
    # diskboot.img (core.img's first sector) ends with a blocklist: start sector of the rest.
    data[500:508] = (core_at + 1).to_bytes(8, "little")
    boot = bytearray((lib / "boot.img").read_bytes())
    boot[0x5C:0x64] = core_at.to_bytes(8, "little")  # where boot.img finds core.img
    boot[0x66:0x68] = b"\x90\x90"  # hard disk: trust the BIOS drive number
    with open(img, "r+b") as f:
        mbr = bytearray(f.read(SECTOR))
        mbr[:440] = boot[:440]  # keep disk id and partition table
        f.seek(0)
        f.write(mbr)
        f.seek(core_at * SECTOR)
        f.write(data)


def grub_efi_image(out: Path, root_uuid: str, root_number: int, table: str) -> None:
    part = "gpt" if table == "gpt" else "msdos"
    _grub_image(
        "x86_64-efi",
        out,
        root_uuid,
        f"(hd0,{part}{root_number})/boot/grub",
        ["part_gpt", "part_msdos", "ext2", "fat", "search_fs_uuid"],
    )


def _copy_grub_modules(boot_grub: Path) -> None:
    for target in ("i386-pc", "x86_64-efi"):
        dst = boot_grub / target
        dst.mkdir(parents=True)
        for src in (GRUB_LIB / target).iterdir():
            if src.suffix in (".mod", ".lst"):
                shutil.copy2(src, dst / src.name)


# ---------------------------------------------------------------------------------------------
# The drive


@dataclass
class SystemDrive:
    path: str
    size: int
    table: str
    marker: str
    expect: str  # the whole line a good boot prints
    disk_id: str  # GPT disk GUID or MBR identifier, as sfdisk prints it
    root_uuid: str
    esp_uuid: str
    swap_uuid: str | None
    root_label: str
    kernel_version: str
    partitions: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # root-relative path → sha256


def _content(root: Path, seed: int) -> None:
    """Data a restore must bring back: text, random bytes, a half-zero file, a symlink."""
    rnd = random.Random(seed)
    home = root / "home" / "user"
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("".join(f"line {i} of the test system drive, seed {seed}\n" for i in range(2000)))
    (home / "random.bin").write_bytes(rnd.randbytes(3 * MiB + 4321))
    srv = root / "srv" / "data"
    srv.mkdir(parents=True)
    (srv / "half-zero.bin").write_bytes(bytes(2 * MiB) + rnd.randbytes(2 * MiB))
    for i in range(20):
        (srv / f"small-{i:02}.txt").write_text(f"small file {i} seed {seed} {rnd.random()}\n" * (i + 1))
    os.symlink("notes.txt", home / "link-to-notes")
    (root / "etc" / "hostname").write_text("sysdrive\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def _vfat_id(rnd: random.Random) -> tuple[str, str]:
    n = rnd.getrandbits(32)
    return f"{n:08X}", f"{n >> 16:04X}-{n & 0xFFFF:04X}"


def build_system_drive(
    path: str | Path,
    size: int = GiB,
    table: str = "gpt",
    marker: str = MARKER,
    fs: str = "ext4",
    swap: bool = True,
    seed: int = 1,
    cache: Path = CACHE,
) -> dict:
    """Write a bootable test drive image to `path` (created or overwritten, sparse) and
    return what a test checks after restoring it (SystemDrive as a dict)."""
    if fs != "ext4":
        raise ValueError(f"only an ext4 root is supported, not {fs!r}")
    path = Path(path)
    parts = layout(size, table, swap)
    k = kernel(cache)
    initrd = initramfs(k, marker, cache)
    rnd = random.Random(f"sysdrive-{seed}")
    root_uuid = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
    swap_uuid = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4)) if swap else None
    esp_id, esp_uuid = _vfat_id(rnd)
    root_part = next(p for p in parts if p.role == "root")
    esp_part = next(p for p in parts if p.role == "esp")
    label = "sysroot"

    with open(path, "wb") as f:
        f.truncate(size)
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path], input=sfdisk_script(parts, table).encode())

    with tempfile.TemporaryDirectory(prefix="sysdrive-") as tmp:
        work = Path(tmp)
        root = work / "root"
        for d in ("boot/grub", "boot/efi", "etc/sysdrive", "proc", "sys", "dev", "tmp", "root"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(k.vmlinuz, root / "boot" / "vmlinuz")
        shutil.copy2(initrd, root / "boot" / "initrd.img")
        (root / "boot" / "grub" / "grub.cfg").write_text(grub_cfg(root_uuid))
        _copy_grub_modules(root / "boot" / "grub")
        _content(root, seed)
        fstab = [f"UUID={root_uuid} / ext4 errors=remount-ro 0 1", f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1"]
        if swap:
            fstab.append(f"UUID={swap_uuid} none swap sw 0 0")
        (root / "etc" / "fstab").write_text("\n".join(fstab) + "\n")
        (root / "etc" / "sysdrive" / "marker").write_text(marker + "\n")
        files = {}
        for p in sorted(root.rglob("*")):
            rel = str(p.relative_to(root))
            if p.is_file() and not p.is_symlink() and not rel.startswith("boot/grub/"):
                files[rel] = _sha256(p)
        files["boot/grub/grub.cfg"] = _sha256(root / "boot" / "grub" / "grub.cfg")
        (root / "etc" / "sysdrive" / "SHA256SUMS").write_text(
            "".join(f"{h}  {rel}\n" for rel, h in sorted(files.items()))
        )

        _run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-L",
                label,
                "-U",
                root_uuid,
                "-E",
                f"offset={root_part.offset},nodiscard",
                "-d",
                root,
                path,
                str(root_part.size // 4096),
            ]
        )

        # ESP: FAT32 written at its offset, filled with mtools (no vfat driver here).
        _run(
            [
                "mkfs.fat",
                "-F",
                "32",
                "-s",
                "1",
                "-n",
                "ESP",
                "-i",
                esp_id,
                f"--offset={esp_part.start}",
                path,
                str(esp_part.size // 1024),
            ]
        )
        efi = work / "BOOTX64.EFI"
        grub_efi_image(efi, root_uuid, root_part.number, table)
        fat = f"{path}@@{esp_part.offset}"
        _run(["mmd", "-i", fat, "::/EFI", "::/EFI/BOOT"])
        _run(["mcopy", "-i", fat, efi, "::/EFI/BOOT/BOOTX64.EFI"])

        if swap:
            swp = next(p for p in parts if p.role == "swap")
            header = work / "swap"
            with open(header, "wb") as f:
                f.truncate(swp.size)
            _run(["mkswap", "-L", "swap", "-U", swap_uuid, header])
            with open(header, "rb") as src, open(path, "r+b") as dst:
                dst.seek(swp.offset)
                dst.write(src.read(64 * 1024))

        install_grub_bios(path, parts, table, root_uuid, work)
        with open(path, "r+b") as f:
            os.fsync(f.fileno())

    disk_id = json.loads(_run(["sfdisk", "--json", path]))["partitiontable"]["id"]
    drive = SystemDrive(
        str(path),
        size,
        table,
        marker,
        f"{marker} root={root_uuid} files=ok",
        disk_id,
        root_uuid,
        esp_uuid,
        swap_uuid,
        label,
        k.version,
        [dict(asdict(p), offset=p.offset, size=p.size) for p in parts],
        files,
    )
    return asdict(drive)


# ---------------------------------------------------------------------------------------------
# A minimal QEMU runner (TCG only: KVM hangs on the development machines)

FAILURES = ("Kernel panic - not syncing", "grub rescue>", "No bootable device", "Shell> ")


@dataclass
class BootResult:
    found: bool
    seconds: float
    exited: bool  # QEMU ended by itself (the init powers off after the marker)
    reason: str  # "marker", a FAILURES text, "exited", or "timeout"
    log: str  # the serial port
    firmware_log: str = ""  # SeaBIOS's debug port ("Booting from Hard Disk..."); empty under OVMF

    def tail(self, lines: int = 40) -> str:
        """The end of both logs, for an assertion message."""
        fw = "\n".join(self.firmware_log.splitlines()[-5:])
        return (f"[firmware]\n{fw}\n" if fw else "") + "[serial]\n" + "\n".join(self.log.splitlines()[-lines:])


DISK_FORMATS = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vhdx": "vhdx"}  # by suffix; anything else is raw


def qemu_argv(
    disk_images: Sequence[str | Path],
    firmware: str,
    serial_log: Path,
    work: Path,
    bus: str = "virtio",
    memory: int = 512,
) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        str(memory),
        "-smp",
        "1",
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{serial_log}",
        "-no-reboot",
    ]
    if firmware == "uefi":
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
    elif firmware == "bios":
        # SeaBIOS says nothing on the serial port; its debug port tells where a boot stopped.
        argv += [
            "-chardev",
            f"file,id=fwlog,path={work / 'firmware.log'}",
            "-device",
            "isa-debugcon,iobase=0x402,chardev=fwlog",
        ]
    else:
        raise ValueError(f"firmware must be bios or uefi, not {firmware!r}")
    for i, img in enumerate(disk_images):
        fmt = DISK_FORMATS.get(Path(img).suffix, "raw")
        argv += ["-drive", f"file={img},format={fmt},if=none,id=disk{i},cache=unsafe"]
        if bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive=disk{i},serial=SYSDRIVE{i},bootindex={i}"]
        elif bus == "ide":
            argv += ["-device", f"ide-hd,drive=disk{i},serial=SYSDRIVE{i},bootindex={i}"]
        else:
            raise ValueError(f"bus must be virtio or ide, not {bus!r}")
    return argv


def boot_and_expect(
    disk_images: Sequence[str | Path],
    firmware: str = "bios",
    marker: str = MARKER,
    timeout: float = 300,
    bus: str = "virtio",
    failures: Sequence[str] = FAILURES,
) -> BootResult:
    """Boot the disks (the first one boots) and wait for `marker` on the serial port. Stops
    early on a known failure text or when QEMU exits; waits for the guest's power-off after
    the marker so the disks are not in use when this returns."""
    with tempfile.TemporaryDirectory(prefix="sysdrive-qemu-") as tmp:
        work = Path(tmp)
        log = work / "serial.log"
        log.touch()
        start = time.monotonic()
        proc = subprocess.Popen(
            qemu_argv(disk_images, firmware, log, work, bus),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reason = "timeout"
        found = False
        try:
            while time.monotonic() - start < timeout:
                text = log.read_text(errors="replace")
                if marker in text:
                    found, reason = True, "marker"
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
            if found:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        exited = proc.returncode == 0
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        text = log.read_text(errors="replace")
        if out.strip():
            text += "\n[qemu] " + out
        fw = work / "firmware.log"
        return BootResult(
            found, seconds, exited and found, reason, text, fw.read_text(errors="replace") if fw.exists() else ""
        )


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the bootable test system drive image.")
    ap.add_argument("out", help="image file to write")
    ap.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    ap.add_argument("--table", choices=("gpt", "msdos"), default="gpt")
    ap.add_argument("--marker", default=MARKER)
    ap.add_argument("--no-swap", action="store_true")
    ap.add_argument("--boot", choices=("bios", "uefi"), help="then boot it in QEMU and wait for the marker")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        info = build_system_drive(args.out, args.size * MiB, args.table, args.marker, swap=not args.no_swap)
    except (BuildError, ValueError) as e:
        print(f"sysdrive: {e}", file=sys.stderr)
        return 2
    info.pop("files")
    print(json.dumps(info, indent=1))
    print(f"built in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if args.boot:
        r = boot_and_expect([args.out], args.boot, info["expect"])
        print(r.tail(), file=sys.stderr)
        print(f"boot {args.boot}: {r.reason} after {r.seconds:.0f} s", file=sys.stderr)
        return 0 if r.found else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def filesystem_uuids(image: str | Path) -> set[str]:
    """Every filesystem UUID blkid finds in the partitions of a drive image (what fstab and
    root=UUID depend on)."""
    parts = json.loads(_run(["sfdisk", "--json", str(image)]))["partitiontable"]["partitions"]
    out = set()
    for p in parts:
        argv = ["blkid", "-p", "-o", "export", "-O", str(p["start"] * 512), "-S", str(p["size"] * 512), str(image)]
        probe = subprocess.run(argv, stdout=subprocess.PIPE, text=True).stdout  # exit 2: nothing found
        out |= {line.split("=", 1)[1] for line in probe.splitlines() if line.startswith("UUID=")}
    return out

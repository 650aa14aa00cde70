"""What a restored drive needs after its bytes are written, so that it boots and coexists.

- `new_ids`: a restore keeps every partition GUID and filesystem UUID, which is right for a
  replacement drive but wrong when the copy stays in the machine beside its source: two
  filesystems with one UUID make the boot pick either (and btrfs refuses to mount one of
  them). It gives the copy a new disk id, new partition GUIDs and new filesystem UUIDs, then
  rewrites the references to the old ones (fstab, crypttab, GRUB's configuration on the root,
  on a separate /boot and on the ESP) so the copy still boots.
- `ensure_efi_fallback`: NVRAM boot entries belong to the old machine. A drive whose ESP has
  only EFI/<vendor>/ loaders does not boot on another machine; the removable-media path
  EFI/BOOT/BOOTX64.EFI does.
- `add_boot_entry`: when running on UEFI firmware, an NVRAM entry for the restored loader.
- `grub_bios_pointers` / `patch_grub_bios`: GRUB's BIOS boot code finds core.img by absolute
  sector numbers; when the BIOS boot partition moves, both pointers must follow.

The drive is reached by offsets (loop devices over one partition; no partition nodes), FAT
through mtools (no vfat driver on the development machines). The target must not be mounted
or in use: the callers have checked that before writing it."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import DeviceError, FilesystemError, RescueError
from rescue.filesystems import lookup, probe, windows
from rescue.filesystems.base import Volume
from rescue.filesystems.fat import mtools_env
from rescue.hw.mounts import loop_attached
from rescue.hw.partitions import read_layout
from rescue.hw.run import output, run
from rescue.model import windows as win
from rescue.model.actions import bios_boot_moved, esp_partitions
from rescue.model.layout import DiskLayout, Partition

Log = Callable[[str], None]

# Files that name filesystems or partitions by UUID, relative to a filesystem's root: a root
# filesystem (etc/..., boot/...) or a separate /boot (grub/...).
REFERENCE_FILES = (
    "etc/fstab",
    "etc/crypttab",
    "etc/default/grub",
    "etc/kernel/cmdline",
    "boot/grub/grub.cfg",
    "boot/grub2/grub.cfg",
    "grub/grub.cfg",
    "grub2/grub.cfg",
)
REFERENCE_GLOBS = ("boot/loader/entries/*.conf", "loader/entries/*.conf")  # systemd-boot / BLS
FALLBACK = "BOOTX64.EFI"
VENDOR_LOADERS = ("shimx64.efi", "grubx64.efi")
SHIM_COMPANIONS = ("grubx64.efi", "mmx64.efi")


def _volume(target: str, layout: DiskLayout, p: Partition) -> Volume:
    return Volume(target, p.offset(layout.sector_size), p.size(layout.sector_size))


@contextlib.contextmanager
def _partition(target: str, layout: DiskLayout, p: Partition) -> Iterator[str]:
    with loop_attached(target, offset=p.offset(layout.sector_size), size=p.size(layout.sector_size)) as dev:
        yield dev


# --- new identities ---------------------------------------------------------------------------


def mbr_partuuid(disk_id: str, number: int) -> str:
    """The PARTUUID Linux gives an MBR partition: the disk id in hex and the number."""
    return f"{int(disk_id, 16):08x}-{number:02x}"


def new_ids(target: str, log: Log) -> dict[str, str]:
    """New disk id, partition GUIDs and filesystem UUIDs on the restored `target`, and every
    reference to the old ones rewritten. Returns old → new for filesystems and partitions.
    Filesystems this cannot renumber (LUKS, LVM, RAID members, unknown) are left as they are
    and said so in the log."""
    layout = read_layout(target)
    if layout.table == "none":
        log("new ids: the drive has no partition table; nothing renumbered")
        return {}
    mapping: dict[str, str] = {}
    fs_types: dict[int, str] = {}
    for p in layout.data_partitions():
        found = probe(_volume(target, layout, p))
        fstype, old = found.get("TYPE"), found.get("UUID")
        if not fstype:
            continue
        fs_types[p.number] = fstype
        if not old:
            log(f"partition {p.number}: {fstype} has no UUID; left as is")
            continue
        try:
            new = _new_fs_uuid(target, layout, p, fstype, old, log)
        except (RescueError, OSError) as e:  # the others still get theirs, and references follow
            log(f"WARNING: new ids: partition {p.number} ({fstype}) keeps its UUID: {e}")
            continue
        if new:
            mapping[old] = new
    try:
        mapping.update(_new_table_ids(target, layout, log))
    finally:
        if mapping:
            _fix_references(target, read_layout(target), fs_types, mapping, log)
    return mapping


def _new_table_ids(target: str, layout: DiskLayout, log: Log) -> dict[str, str]:
    """New disk GUID and partition GUIDs (GPT) or disk id (MBR, whose PARTUUIDs derive from it)."""

    def sfdisk(command: str, *args: str) -> None:
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", command, "--", *args], error=DeviceError)

    mapping: dict[str, str] = {}
    if layout.table == "gpt":
        disk = str(uuidlib.uuid4()).upper()
        sfdisk("--disk-id", target, disk)
        log(f"new ids: disk GUID {layout.disk_id} -> {disk}")
        for p in layout.partitions:
            new = str(uuidlib.uuid4())
            sfdisk("--part-uuid", target, str(p.number), new.upper())
            if p.uuid:
                mapping[p.uuid.lower()] = new
            log(f"new ids: partition {p.number} GUID {(p.uuid or '?').lower()} -> {new}")
    else:
        new_id = 0
        while new_id == 0:  # 0 means "no id" to some tools
            new_id = secrets.randbits(32)
        disk = f"0x{new_id:08x}"
        sfdisk("--disk-id", target, disk)
        log(f"new ids: MBR disk id {layout.disk_id} -> {disk}")
        if layout.disk_id:
            for p in layout.partitions:
                mapping[mbr_partuuid(layout.disk_id, p.number)] = mbr_partuuid(disk, p.number)
    return mapping


def _new_fs_uuid(target: str, layout: DiskLayout, p: Partition, fstype: str, old: str, log: Log) -> str | None:
    """The filesystem's class renumbers it (Filesystem.new_uuid) through a loop device over
    the partition; blkid must then read the new UUID back."""
    where = f"partition {p.number} ({fstype})"
    vol = _volume(target, layout, p)
    fs = lookup(fstype)
    if fs is None or not fs.can_renumber:
        log(f"new ids: {where} UUID {old} left as is (no way to renumber {fstype})")
        return None
    with _partition(target, layout, p) as dev:
        new = fs.new_uuid(dev)
    after = probe(vol).get("UUID", "")
    if after.lower() != new.lower():
        raise FilesystemError(f"{where}: UUID is {after or 'gone'} after renumbering, expected {new}")
    log(f"new ids: {where} UUID {old} -> {new}")
    return new


# --- references to the old ids -----------------------------------------------------------------


def replace_ids(text: str, mapping: dict[str, str]) -> tuple[str, int]:
    """Every whole occurrence of an old id replaced by its new one, whatever its case (fstab
    may say UUID=, PARTUUID=, grub.cfg a bare UUID after --fs-uuid). "Whole" means not part
    of a longer hex-and-dash word, so a short FAT id never matches inside a GUID. The new id
    keeps the case the old one was written in. Returns the text and the count."""
    count = 0
    for old, new in mapping.items():
        pattern = re.compile(rf"(?<![0-9A-Za-z-]){re.escape(old)}(?![0-9A-Za-z-])", re.I)

        def swap(m: re.Match, new: str = new) -> str:
            return new.upper() if m.group(0).isupper() else new.lower() if m.group(0).islower() else new

        text, n = pattern.subn(swap, text)
        count += n
    return text, count


def _rewrite_file(path: Path, mapping: dict[str, str]) -> int:
    """Replace ids in one text file atomically, keeping its mode and owner."""
    raw = path.read_bytes()
    text, n = replace_ids(raw.decode("utf-8", errors="surrogateescape"), mapping)
    if n:
        st = path.stat()
        tmp = path.with_name(f".{path.name}.rescue-tmp")
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", errors="surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    return n


def _reference_files(root: Path) -> list[Path]:
    found = [root / rel for rel in REFERENCE_FILES]
    for pattern in REFERENCE_GLOBS:
        found += sorted(root.glob(pattern))
    # Regular files inside this filesystem only: a symlink (of the file or of a directory on
    # the way, e.g. an absolute etc -> /etc) may point into the host's files.
    inside = os.path.realpath(root) + os.sep
    return [p for p in found if p.is_file() and not p.is_symlink() and os.path.realpath(p).startswith(inside)]


def _fix_references(
    target: str, layout: DiskLayout, fs_types: dict[int, str], mapping: dict[str, str], log: Log
) -> None:
    """A filesystem that cannot be mounted or read is reported and skipped: the ids are
    already new, and the other partitions' references must still follow them."""
    for p in layout.data_partitions():
        fstype = fs_types.get(p.number)
        fs = lookup(fstype)
        if fs is None:
            continue
        try:
            if fs.linux_config:  # may hold fstab or a /boot: a private read-write mount
                with _partition(target, layout, p) as dev, fs.mounted(dev) as mnt:
                    for path in _reference_files(Path(mnt)):
                        n = _rewrite_file(path, mapping)
                        if n:
                            log(f"new ids: partition {p.number}: /{path.relative_to(mnt)}: {n} id(s) rewritten")
            elif fs.mtools:  # an ESP's EFI/<vendor>/grub.cfg, through mtools
                with _partition(target, layout, p) as dev:
                    for name in _fat_grub_cfgs(dev):
                        n = _rewrite_fat_file(dev, name, mapping)
                        if n:
                            log(f"new ids: partition {p.number}: {name[3:]}: {n} id(s) rewritten")
        except (RescueError, OSError) as e:
            log(f"WARNING: new ids: partition {p.number} ({fstype}): references to the old ids not checked: {e}")


def _mdir(dev: str, path: str) -> list[str]:
    """Entries of a FAT directory as mtools paths (directories end in '/'); [] if absent."""
    proc = run(["mdir", "-b", "-i", dev, path], check=False, env=mtools_env())
    if proc.returncode != 0:
        return []
    return [ln.strip() for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip().startswith("::")]


def _fat_grub_cfgs(dev: str) -> list[str]:
    """EFI/<vendor>/grub.cfg files: the signed GRUB reads its first config there, and that
    config finds /boot by UUID."""
    out = []
    for entry in _mdir(dev, "::/EFI"):
        if entry.endswith("/"):
            out += [e for e in _mdir(dev, entry) if e.lower().endswith("/grub.cfg")]
    return out


def _rewrite_fat_file(dev: str, name: str, mapping: dict[str, str]) -> int:
    env = mtools_env()
    text = run(["mtype", "-i", dev, name], env=env).stdout
    new, n = replace_ids(text.decode("utf-8", errors="surrogateescape"), mapping)
    if n:
        with tempfile.TemporaryDirectory(prefix="rescue-fat-") as tmp:
            local = Path(tmp) / "file"
            local.write_bytes(new.encode("utf-8", errors="surrogateescape"))
            # mcopy writes the new file before it frees the old clusters; FAT has no atomic rename.
            run(["mcopy", "-o", "-i", dev, str(local), name], env=env)
    return n


# --- the removable-media fallback loader ------------------------------------------------------------


@dataclass(frozen=True)
class VendorLoader:
    vendor: str  # directory name under EFI/, as stored
    loader: str  # file name of the loader to boot: shimx64.efi or grubx64.efi, as stored
    files: tuple[str, ...]  # what a fallback copy needs, loader first


def vendor_loader(dev: str) -> VendorLoader | None:
    """The installed OS's loader on an ESP: a vendor directory with shimx64.efi (preferred: it
    also boots with Secure Boot on) or grubx64.efi. Debian's first when several exist."""
    found: list[VendorLoader] = []
    for entry in _mdir(dev, "::/EFI"):
        vendor = entry.rstrip("/").rsplit("/", 1)[-1]
        if not entry.endswith("/") or vendor.upper() == "BOOT":
            continue
        names = {e.rsplit("/", 1)[-1].lower(): e.rsplit("/", 1)[-1] for e in _mdir(dev, entry) if not e.endswith("/")}
        for loader in VENDOR_LOADERS:
            if loader in names:
                extra = [names[c] for c in SHIM_COMPANIONS if loader == "shimx64.efi" and c in names]
                found.append(VendorLoader(vendor, names[loader], (names[loader], *extra)))
                break
    found.sort(key=lambda v: (v.vendor.lower() != "debian", v.loader.lower() != "shimx64.efi", v.vendor.lower()))
    return found[0] if found else None


def ensure_efi_fallback(target: str, log: Log) -> bool:
    """Copy the vendor loader to EFI/BOOT/BOOTX64.EFI on every ESP that lacks it. Returns
    whether anything was copied; an existing BOOTX64.EFI (another OS's, or ours from a
    previous run) is never replaced."""
    layout = read_layout(target)
    changed = False
    for p in esp_partitions(layout):
        fs = lookup(probe(_volume(target, layout, p)).get("TYPE"))
        if fs is None or not fs.mtools:  # mtools is how the loader gets copied
            log(f"EFI fallback: partition {p.number} is an ESP without a FAT filesystem; skipped")
            continue
        with _partition(target, layout, p) as dev:
            changed |= _ensure_fallback_on(dev, p.number, log)
    return changed


def _ensure_fallback_on(dev: str, number: int, log: Log) -> bool:
    env = mtools_env()
    if run(["mdir", "-b", "-i", dev, f"::/EFI/BOOT/{FALLBACK}"], check=False, env=env).returncode == 0:
        log(f"EFI fallback: partition {number} already has EFI/BOOT/{FALLBACK}")
        return False
    found = vendor_loader(dev)
    if found is None:
        log(f"EFI fallback: partition {number} has no EFI/<vendor>/shimx64.efi or grubx64.efi; nothing to copy")
        return False
    if run(["mdir", "-b", "-i", dev, "::/EFI/BOOT"], check=False, env=env).returncode != 0:
        run(["mmd", "-i", dev, "::/EFI/BOOT"], env=env)
    with tempfile.TemporaryDirectory(prefix="rescue-efi-") as tmp:
        for name in found.files:
            run(["mcopy", "-n", "-i", dev, f"::/EFI/{found.vendor}/{name}", str(Path(tmp) / name)], env=env)
        # The companions first, the loader the firmware looks for last: a copy cut short
        # leaves no BOOTX64.EFI rather than a shim without its GRUB.
        for name in found.files[1:]:
            run(["mcopy", "-o", "-i", dev, str(Path(tmp) / name), f"::/EFI/BOOT/{name}"], env=env)
        run(["mcopy", "-o", "-i", dev, str(Path(tmp) / found.files[0]), f"::/EFI/BOOT/{FALLBACK}"], env=env)
    log(
        f"EFI fallback: partition {number}: EFI/{found.vendor}/{found.loader} copied to EFI/BOOT/{FALLBACK}"
        + (f" with {', '.join(found.files[1:])}" if found.files[1:] else "")
    )
    return True


# --- an NVRAM boot entry ------------------------------------------------------------------------

LIVE_MEDIUM = "/run/live/medium"  # where live-boot mounts the medium the rescue system runs from


def efibootmgr_argv(disk: str, part: int, vendor: str, loader: str, first: bool = True) -> list[str]:
    """The efibootmgr call that adds an entry for the loader, first in BootOrder or (on a
    machine that is not booted into the rescue system) only created."""
    return [
        "efibootmgr",
        "--create" if first else "--create-only",
        "--disk",
        disk,
        "--part",
        str(part),
        "--label",
        f"{vendor} (restored)",
        "--loader",
        f"\\EFI\\{vendor}\\{loader}",
    ]


def boot_next(entry: str, log: Log) -> None:
    """The next power-on boots `entry` ("Boot0003"), whatever comes first in the boot order:
    a lab machine that netboots first boots its restored drive (docs/fleet.md)."""
    run(["efibootmgr", "--bootnext", entry[len("Boot") :]], error=DeviceError)
    log(f"boot entry: {entry} is the next boot (BootNext)")


def add_boot_entry(target: str, log: Log, *, firmware_dir: str = "/sys/firmware/efi") -> str | None:
    """Add an NVRAM boot entry for the restored drive's loader when running on UEFI firmware.
    Returns the new entry's name (e.g. "Boot0003"), or None with the reason in the log."""
    if not os.path.isdir(firmware_dir):
        log("boot entry: not booted with UEFI firmware; no NVRAM entry added")
        return None
    if shutil.which("efibootmgr") is None:
        log("boot entry: efibootmgr is not installed; no NVRAM entry added")
        return None
    try:
        is_block = stat.S_ISBLK(os.stat(target).st_mode)
    except OSError:
        is_block = False
    if not is_block:
        log(f"boot entry: {target} is not a block device; no NVRAM entry added")
        return None
    layout = read_layout(target)
    for p in esp_partitions(layout):
        with _partition(target, layout, p) as dev:
            found = vendor_loader(dev)
        if found is None:
            continue
        label = f"{found.vendor} (restored)"
        listing = run(["efibootmgr", "-v"], check=False).stdout.decode(errors="replace")
        part_id = (p.uuid or "").lower()
        same = [
            m
            for m in re.finditer(rf"^(Boot[0-9A-Fa-f]{{4}})\*? {re.escape(label)}(\s.*)?$", listing, re.M)
            if part_id and part_id in m.group(0).lower()
        ]
        if same:  # this very partition's entry, from an earlier run
            log(f"boot entry: {same[0].group(1)} '{label}' already exists")
            if os.path.isdir(LIVE_MEDIUM):
                boot_next(same[0].group(1), log)
            return same[0].group(1)
        # A technician's own machine keeps its boot order; the rescue system's is the point.
        first = os.path.isdir(LIVE_MEDIUM)
        argv = efibootmgr_argv(target, p.number, found.vendor, found.loader, first)
        text = output(argv, error=DeviceError)
        made = re.search(rf"^(Boot[0-9A-Fa-f]{{4}})\*? {re.escape(label)}", text, re.M)
        name = made.group(1) if made else label
        log(
            f"boot entry: {name} '{label}' -> partition {p.number} \\EFI\\{found.vendor}\\{found.loader}"
            + ("" if first else " (not put first in the boot order: not running from the rescue system)")
        )
        if first and made:
            boot_next(made.group(1), log)
        return name
    log("boot entry: no ESP with a vendor loader (EFI/<vendor>/shimx64.efi or grubx64.efi); no NVRAM entry added")
    return None


# --- Windows: boot sectors and the BCD -----------------------------------------------------------


def fix_boot_sectors(target: str, image: DiskLayout, log: Log) -> None:
    """Every NTFS or FAT partition that starts elsewhere than in `image`: its boot sector's
    hidden-sectors field (and its backup's) set to the new start. Windows' boot code loads
    the rest of the volume boot record relative to it, and chkdsk checks it."""
    layout = read_layout(target)
    old = {p.number: p.offset(image.sector_size) for p in image.data_partitions()}
    for p in layout.data_partitions():
        if old.get(p.number, p.offset(layout.sector_size)) == p.offset(layout.sector_size):
            continue
        said = windows.set_hidden_sectors(target, p.offset(layout.sector_size), p.size(layout.sector_size), p.start)
        log(f"partition {p.number}: {said}")


def rewrite_bcd(target: str, image: DiskLayout, log: Log) -> None:
    """The device elements of every Windows BCD on the drive that name a partition of the
    image, rewritten to name the same partition (by number) where it is now: its byte
    offset and the disk signature on MBR, its GUID and the disk GUID on GPT. Elements that
    name another drive are left as they are and said so."""
    layout = read_layout(target)
    current = {p.number: p for p in layout.data_partitions()}

    def fix(dev: win.Device) -> win.Device | None:
        was = win.resolve(dev, image)
        if was is None or was.number not in current:
            log(f"Windows BCD: a device element names {dev.disk} (not this drive's partitions); left as is")
            return None
        return win.device_for(current[was.number], layout)

    found = False
    for p in layout.data_partitions():
        fstype = probe(_volume(target, layout, p)).get("TYPE", "")
        if not windows.may_hold_bcd(fstype):
            continue
        with _partition(target, layout, p) as dev, windows.bcd_file(dev, fstype) as bcd:
            if bcd is None:
                continue
            found = True
            changed = windows.rewrite_refs(bcd[1], fix)
            if changed:
                windows.put_bcd(dev, fstype, bcd[0], bcd[1])
            for line in changed:
                log(f"Windows BCD on partition {p.number}: {line}")
            if not changed:
                log(f"Windows BCD on partition {p.number}: every device element already names its partition")
    if not found:
        log("Windows BCD: none found on the drive; nothing rewritten")


# --- GRUB for BIOS: the sector pointers --------------------------------------------------------------

BOOT_IMG_CORE_LBA = 0x5C  # boot.img: 8-byte LBA of core.img's first sector
DISKBOOT_BLOCKLIST = 500  # diskboot.img (core.img's first sector): last blocklist entry, growing down
BLOCKLIST_ENTRY = 12  # u64 start, u16 sectors, u16 segment


def grub_bios_pointers(mbr: bytes) -> int | None:
    """The LBA of core.img that GRUB's boot.img in this MBR jumps to; None if the MBR does not
    hold GRUB's boot.img (its "GRUB " message text sits near 0x180)."""
    if len(mbr) < 512 or b"GRUB " not in mbr[0x170:0x1B8]:
        return None
    return int.from_bytes(mbr[BOOT_IMG_CORE_LBA : BOOT_IMG_CORE_LBA + 8], "little")


def blocklist(sector: bytes) -> list[tuple[int, int]]:
    """diskboot.img's blocklist: (start LBA, sectors) entries, from the last one down until
    an entry of length 0."""
    out = []
    at = DISKBOOT_BLOCKLIST
    while at >= 0x10:  # the code in front of the list
        start = int.from_bytes(sector[at : at + 8], "little")
        length = int.from_bytes(sector[at + 8 : at + 10], "little")
        if length == 0:
            break
        out.append((start, length))
        at -= BLOCKLIST_ENTRY
    return out


def patch_diskboot(sector: bytes, old_core_lba: int, new_core_lba: int) -> bytes:
    """core.img's first sector with its blocklist moved by the same distance as core.img."""
    out = bytearray(sector)
    at = DISKBOOT_BLOCKLIST
    for start, _length in blocklist(sector):
        out[at : at + 8] = (start - old_core_lba + new_core_lba).to_bytes(8, "little")
        at -= BLOCKLIST_ENTRY
    return bytes(out)


def patch_grub_bios(target: str, old_core_lba: int, new_core_lba: int, sector_size: int = 512) -> str:
    """Point GRUB's boot.img and diskboot blocklist at core.img's new place (its bytes are
    already there: the BIOS boot partition was restored at its new start). Returns a line for
    the log; changes nothing when the MBR's GRUB does not point at old_core_lba."""
    fd = os.open(target, os.O_RDWR)
    try:
        mbr = os.pread(fd, sector_size, 0)
        at = grub_bios_pointers(mbr)
        if at is None:
            return "GRUB BIOS: the MBR holds no GRUB boot code; nothing to patch"
        if at == new_core_lba:
            return f"GRUB BIOS: boot code already points at sector {new_core_lba}"
        if at != old_core_lba:
            return f"GRUB BIOS: boot code points at sector {at}, not {old_core_lba}; left as is"
        first = os.pread(fd, sector_size, new_core_lba * sector_size)
        entries = blocklist(first)
        if not entries or entries[0][0] != old_core_lba + 1:
            raise DeviceError(
                f"GRUB BIOS: sector {new_core_lba} does not hold the core.img that sector "
                f"{old_core_lba} held (its blocklist does not start at {old_core_lba + 1})"
            )
        os.pwrite(fd, patch_diskboot(first, old_core_lba, new_core_lba), new_core_lba * sector_size)
        patched = bytearray(mbr)
        patched[BOOT_IMG_CORE_LBA : BOOT_IMG_CORE_LBA + 8] = new_core_lba.to_bytes(8, "little")
        os.pwrite(fd, bytes(patched), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"GRUB BIOS: core.img moved from sector {old_core_lba} to {new_core_lba}; boot code and blocklist updated"


def check_grub_gap(target: str, written: DiskLayout) -> str:
    """GRUB for BIOS embedded in the gap after the MBR (no BIOS boot partition: every MBR
    install of Debian and Ubuntu). Its core image sits at fixed sectors before the first
    partition and finds /boot through the partition table at boot time, so moved or resized
    partitions need no change; what would break it is a first partition that now starts
    inside the core image, or a partition numbering that changed (the core image names its
    /boot partition by number). Raises DeviceError saying what to run in those cases."""
    ss = written.sector_size
    fd = os.open(target, os.O_RDONLY)
    try:
        mbr = os.pread(fd, ss, 0)
        core = grub_bios_pointers(mbr)
        if core is None:
            return "GRUB BIOS: the MBR holds no GRUB boot code"
        first = min((p.start for p in written.partitions), default=written.size // ss)
        if core >= first:
            return f"GRUB BIOS: core image at sector {core}, inside a partition"
        end = max([core + 1] + [s + n for s, n in blocklist(os.pread(fd, ss, core * ss))])
    finally:
        os.close(fd)
    fix = (
        f"boot the restored system's root in a chroot and run `grub-install {target}` "
        f"(or reinstall GRUB from the rescue shell)"
    )
    if end > first:
        raise DeviceError(
            f"GRUB's core image after the MBR (sectors {core}-{end - 1}) overlaps the first "
            f"partition, which now starts at sector {first}: {fix}"
        )
    actual = {p.start: p.number for p in read_layout(target).partitions}
    renumbered = [
        (p.number, actual[p.start]) for p in written.partitions if p.start in actual and actual[p.start] != p.number
    ]
    if renumbered:
        said = ", ".join(f"{a} is now {b}" for a, b in renumbered)
        raise DeviceError(f"GRUB's core image names partitions by number and partition {said}: {fix}")
    return (
        f"GRUB BIOS: core image after the MBR (sectors {core}-{end - 1}) is in place before the "
        f"first partition (sector {first}); it finds /boot through the partition table"
    )


def expected_boot_code(head: bytes, image: DiskLayout, written: DiskLayout) -> bytes:
    """The image's first bytes as they should stand on a drive restored onto `written`: with
    GRUB's boot.img pointer moved along with a moved BIOS boot partition (the
    grub-bios-pointers action does that on purpose)."""
    moved = bios_boot_moved(image, written)
    if not moved or grub_bios_pointers(head) != moved[0]:
        return head
    out = bytearray(head)
    out[BOOT_IMG_CORE_LBA : BOOT_IMG_CORE_LBA + 8] = moved[1].to_bytes(8, "little")
    return bytes(out)

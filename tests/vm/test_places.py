"""Images go where a technician keeps them, on the real ISO in QEMU (issue 13): one boot of the
ISO with a system drive, 4 GiB drives formatted exFAT, NTFS and FAT32 (no repository on
any), a blank disk, six blank smaller targets, and a network card on QEMU's user network that
reaches a Samba server, an NFS server, Swift (S3) and nginx, all started by this test on 127.0.0.1.

In that one boot:
- the wizard, over the serial line: Capture the system drive onto the exFAT stick (a new
  repository folder on it, mounted for the job only), then Restore from it onto a smaller
  blank drive;
- the same engine, driven step by step from the serial shell (tests/vm/places_guest.py): an
  ext4 drive (the yardstick) and the NTFS disk likewise; "prepare this drive" on the blank
  disk, then a capture onto it; the Samba share refused in words with a wrong password, a
  wrong share name, and by a server that speaks only SMB 2.0, then captured onto and restored
  from;
  a restore from the NFS export (its image captured by the host); a capture onto a FAT32
  stick, and files copied out of that image onto the exFAT stick;
- a fleet's jobs (`rescue unattended`, issue 15; `fleet_jobs` below): the system drive captured
  onto an encrypted S3 repository (Swift on the host) with the keys and password fetched from
  nginx on the host; restores as another machine that write nothing and say why; the restore.
Then the wizard's and the fleet's restored drives boot alone to their marker, the others' roots
are read on the host, and the host reads the stick: the files copied are the system drive's
own. The wizard's screens for all of it run over recorded machines in tests/tui
(test_shares.py, test_machines.py)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from disks import GiB, LoopRegistry, MiB, partition_table, sh, tree_hashes
from qemu import VM, Disk
from servers import nfs, s3, samba, web
from servers.bounded import free_port
from sysdrive import boot_and_expect, build_system_drive
from wizard import WIZARD_BOOT_TIMEOUT, blank, restore_in_wizard

from rescue.repo.s3 import S3Storage

pytestmark = pytest.mark.vm

SHELL_PROMPT = re.compile(rb"root@[\w.-]+:[^\r\n]*# ")
GUEST_SCRIPT = Path(__file__).with_name("places_guest.py")
STEP_TIMEOUT = 900  # one capture or restore of the system drive under TCG, on a loaded host
SYSTEM = 512 * MiB  # small: the steps are many, each under TCG
TARGET = 480 * MiB  # smaller than the system drive: its root partition shrinks


MKFS = {
    "ext4": ("83", ["mkfs.ext4", "-q", "-L"]),
    "exfat": ("7", ["mkfs.exfat", "-L"]),
    "ntfs": ("7", ["mkfs.ntfs", "--quick", "--label"]),
    "vfat": ("c", ["mkfs.vfat", "-F", "32", "-n"]),
}


def formatted(path: Path, fstype: str, label: str) -> Path:
    """A 4 GiB drive as a shop sells it: MBR, one partition, formatted."""
    blank(path, 4 * GiB)
    mbr_type, mkfs = MKFS[fstype]
    partition_table(str(path), f"label: dos\nstart=2048, type={mbr_type}\n")
    reg = LoopRegistry(path.parent)
    try:
        part = reg.attach(path, offset=MiB, size=4 * GiB - MiB)
        sh(*mkfs, label, part)
    finally:
        reg.cleanup()
    return path


def script_disk(path: Path) -> Path:
    """The guest script, NUL-padded to a whole MiB, as a drive the guest reads with head."""
    data = GUEST_SCRIPT.read_bytes()
    path.write_bytes(data + bytes(MiB - len(data) % MiB))
    return path


def run_step(vm: VM, step: str, *args: str, password: str | None = None, timeout: float = STEP_TIMEOUT) -> str:
    """One step of the guest script; returns what follows `PLACES <step> ok`."""
    quoted = " ".join(f"'{a}'" for a in args)
    stdin = f" <<< '{password}'" if password is not None else ""
    vm.sendline(f"python3 /tmp/places.py {step} {quoted}{stdin} 2>>/tmp/places.log")
    m = vm.expect(rf"PLACES {step} (ok [^\r\n]*|failed: [^\r\n]*)\r".encode(), timeout=timeout, what=f"step {step}")
    said = m.group(1).decode()
    print(f"[places] {step}: {said} ({vm.elapsed:.0f}s)", flush=True)
    vm.expect(SHELL_PROMPT, timeout=60, what="the shell prompt")
    assert said.startswith("ok "), f"{step} {said}"
    return said[3:]


RESULT = re.compile(rb"RESCUE-RESULT (status=[^\r\n]*)(?=\r*\n)")  # the console ends lines \r\r\n


def unattended_in_guest(vm: VM, params: str, machine: str) -> str:
    """`rescue unattended` in the live system with these boot parameters, as `machine`;
    returns its result line after RESCUE-RESULT."""
    log = "/tmp/fleet.log"
    vm.sendline(f"rescue unattended --machine-id {machine} --cmdline '{params}' > {log} 2>&1; grep RESCUE-RESULT {log}")
    said = vm.expect(RESULT, timeout=STEP_TIMEOUT, what=f"the unattended job of {machine}").group(1).decode()
    print(f"[places] unattended as {machine}: {said} ({vm.elapsed:.0f}s)", flush=True)
    vm.expect(SHELL_PROMPT, timeout=60, what="the shell prompt")
    return said


@dataclass
class Fleet:
    params: str  # rescue.repo=, rescue.s3_endpoint= and rescue.credentials=, as the guest reaches them
    storage: S3Storage  # the repository's objects, from the host

    @contextlib.contextmanager
    def chunk_damaged(self) -> Iterator[str]:
        """One byte of the largest chunk flipped, for the body of the `with`; yields its name."""
        tops = [e.name for e in self.storage.list("chunks")]
        chunks = [f"chunks/{t}/{e.name}" for t in tops for e in self.storage.list(f"chunks/{t}")]
        victim = max(chunks, key=lambda k: self.storage.size(k) or 0)
        good = self.storage.get(victim, 64 * MiB)
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x01
        self.storage.put(victim, bytes(bad))
        try:
            yield victim.rsplit("/", 1)[1]
        finally:
            self.storage.put(victim, good)


@contextlib.contextmanager
def fleet_s3(work: Path) -> Iterator[Fleet]:
    """An encrypted repository on a real S3 (Swift) and the fleet's credentials file on nginx,
    both on the host's 127.0.0.1."""
    swift = s3.shared_server()
    password = "places fleet password"
    prefix = "places-fleet"
    proc = subprocess.run(
        [sys.executable, "-m", "rescue", "init", "--encrypt", f"s3://{swift.bucket}/{prefix}"],
        env=swift.environ(RESCUE_PASSWORD=password),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (work / "fleet-web").mkdir()
    server = web.start_nginx(root=work / "fleet-web")
    try:
        (server.www / "creds").write_text(
            f"[default]\naws_access_key_id = {swift.access_key}\naws_secret_access_key = {swift.secret_key}\n"
            f"region = {swift.region}\n\n[rescue]\npassword = {password}\n"
        )
        params = (
            f"rescue.repo=s3://{swift.bucket}/{prefix} rescue.s3_endpoint=http://10.0.2.2:{swift.port} "
            f"rescue.credentials=http://10.0.2.2:{server.port}/creds"
        )
        yield Fleet(params, swift.storage(prefix))
    finally:
        server.stop()


def fleet_jobs(vm: VM, fleet: Fleet) -> None:
    """Issue 15 in the ISO (points 2 to 4): the system drive captured unattended onto S3 as
    machine A; then, as machine B, restores that must write nothing (no drive or several
    drives match, no rescue.confirm=destroy, a damaged chunk), each saying why, with T-S3
    still blank after them; then the restore onto T-S3, which boots alone afterwards."""
    got = unattended_in_guest(vm, f"rescue.mode=capture rescue.source=serial:SYSTEM {fleet.params}", "machine-a")
    assert got.startswith("status=ok image=") and "target=/dev/vda" in got, got
    image = got.split()[1].removeprefix("image=")
    job = f"rescue.mode=restore rescue.image={image} {fleet.params}"
    sure = f"{job} rescue.confirm=destroy"
    got = unattended_in_guest(vm, f"{sure} rescue.target=serial:NO-SUCH-DRIVE", "machine-b")
    assert got.startswith("status=failed") and "no drive matches" in got and "serial T-S3" in got, got
    got = unattended_in_guest(vm, f"{sure} rescue.target=bus:virtio,size:{TARGET}..{TARGET}", "machine-b")
    assert got.startswith("status=failed") and "6 drives match" in got and "serial T-S3" in got, got
    got = unattended_in_guest(vm, f"{job} rescue.target=serial:T-S3", "machine-b")
    assert got.startswith("status=planned"), got
    with fleet.chunk_damaged() as chunk:
        got = unattended_in_guest(vm, f"{sure} rescue.target=serial:T-S3", "machine-b")
    assert got.startswith("status=failed") and chunk[:16] in got, got
    vm.sendline(f"cmp -n {TARGET} /dev/disk/by-id/virtio-T-S3 /dev/zero && echo T-S3 IS'' BLANK")
    vm.expect(rb"T-S3 IS BLANK", timeout=120, what="T-S3 unwritten")
    vm.expect(SHELL_PROMPT, timeout=60, what="the shell prompt")
    got = unattended_in_guest(vm, f"{sure} rescue.target=serial:T-S3", "machine-b")
    assert got.startswith(f"status=ok image={image} target=/dev/vdm"), got


def wizard_capture_then_restore(vm: VM) -> tuple[str, str]:
    """Main menu -> Capture: the system drive (vda) onto the exFAT stick's filesystem, the
    first place offered; then Restore: from the repository found on the stick onto vde."""
    vm.boot_rescue_on_serial()
    vm.expect_text("Capture a drive", timeout=WIZARD_BOOT_TIMEOUT)
    print(f"[places] wizard up {vm.elapsed:.0f}s after power-on", flush=True)
    vm.sendkey("down", "enter")
    vm.expect_text("Capture: choose the drive to image", timeout=120)
    vm.expect_text("> vda", timeout=60)
    vm.sendkey("enter")
    vm.expect_text("Capture: where to store the image", timeout=180)
    vm.expect_text("> /dev/vdb1", timeout=60)  # the stick: the first place offered (vda's are not)
    vm.expect_text("new repository folder rescue-images", timeout=30)
    vm.sendkey("enter")
    vm.expect_text("Capture: name the image", timeout=60)
    vm.expect_text("a new folder rescue-images on /dev/vdb1 (STICK)", timeout=30)
    vm.sendkey("enter")
    m = vm.expect(rb"captured as ([A-Za-z0-9._+-]+)\.", timeout=STEP_TIMEOUT, what="the capture's done screen")
    image = m.group(1).decode()
    vm.expect_text("Verification: passed", timeout=30)
    vm.expect_text("It was unmounted: the drive can be unplugged.", timeout=30)
    print(f"[places] wizard captured {image} onto the exFAT stick at {vm.elapsed:.0f}s", flush=True)
    vm.sendkey("enter")  # Main menu
    vm.expect_text("Restore an image", timeout=60)
    restore_in_wizard(vm, "> /run/rescue/repos/vdb1/rescue-images", image, "vde", STEP_TIMEOUT)
    print(f"[places] wizard restored from the stick onto vde at {vm.elapsed:.0f}s", flush=True)
    return image, "vde"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("places")
    system = work / "system.img"
    info = build_system_drive(system, size=SYSTEM, seed=31)
    return work, info


def test_images_on_sticks_disks_and_shares(iso, world):
    work, info = world
    drives = {  # in this order: vda, vdb, ...
        "SYSTEM": work / "system.img",
        "STICK": formatted(work / "stick.img", "exfat", "STICK"),
        "WINDISK": formatted(work / "windisk.img", "ntfs", "WINDISK"),
        "BLANK": blank(work / "blank.img", 2 * GiB),
        "T-EXFAT": blank(work / "t-exfat.img", TARGET),
        "T-NTFS": blank(work / "t-ntfs.img", TARGET),
        "T-SMB": blank(work / "t-smb.img", TARGET),
        "T-NFS": blank(work / "t-nfs.img", TARGET),
        "FAT32": formatted(work / "fat32.img", "vfat", "OLDSTICK"),
        "EXT4": formatted(work / "ext4.img", "ext4", "LINUXDISK"),
        "T-EXT4": blank(work / "t-ext4.img", TARGET),
        "SCRIPT": script_disk(work / "script.img"),
        "T-S3": blank(work / "t-s3.img", TARGET),
    }
    with samba.servers() as smb_server, nfs.servers() as nfs_server, fleet_s3(work) as fleet:
        smb = smb_server(port=free_port())
        old_smb = smb_server(port=free_port(), max_protocol="SMB2_02")  # a server from before SMB 2.1
        export = nfs_server(port=free_port())
        # The NFS export holds an image the host captured (as another technician would have).
        argv = [
            sys.executable,
            "-m",
            "rescue",
            "capture",
            str(drives["SYSTEM"]),
            str(export.export_dir / "rescue-images"),
        ]
        proc = subprocess.run([*argv, "--name", "from-nfs"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        smb_spec = f"10.0.2.2:{smb.port}/{smb.share} {smb.user}"
        nfs_spec = f"10.0.2.2:{export.port}:/repo"
        disks = [Disk(path, serial) for serial, path in drives.items()]
        with VM(work, firmware="bios", cdrom=iso, disks=disks, name="places", network=True, memory_mb=1536) as vm:
            wizard_image, _ = wizard_capture_then_restore(vm)
            vm.sendkey("enter")  # Main menu
            vm.expect_text("Shell (leave the wizard", timeout=60)
            vm.sendkey("down", "down", "down", "down", "enter")  # Restore, Capture, Clone, Browse, [Shell]
            vm.expect(SHELL_PROMPT, timeout=60, what="the root shell")
            vm.sendline("grep -h 'do''ne: wrote' /run/rescue/restore-*.log")  # the wizard's restore
            took = vm.expect(rb"done: wrote ([^\r\n]*)\r", timeout=60, what="the wizard's restore log")
            print(f"[places] the wizard's restore from exFAT: wrote {took.group(1).decode()}", flush=True)
            vm.expect(SHELL_PROMPT, timeout=60, what="the shell prompt")
            vm.sendline(f"head -c {GUEST_SCRIPT.stat().st_size} /dev/disk/by-id/virtio-SCRIPT > /tmp/places.py")
            vm.expect(SHELL_PROMPT, timeout=60, what="the shell prompt")

            # The same capture and restore onto an ext4 drive: the yardstick for the others.
            run_step(vm, "capture-drive", "EXT4", "on-ext4")
            run_step(vm, "restore-drive", "EXT4", "on-ext4", "T-EXT4")
            run_step(vm, "capture-drive", "WINDISK", "on-ntfs")
            run_step(vm, "restore-drive", "WINDISK", "on-ntfs", "T-NTFS")
            prepared = run_step(vm, "prepare-capture", "BLANK", "on-prepared")
            assert prepared.startswith("/dev/vdd1 exfat "), prepared
            refused = run_step(vm, "share-refused", "smb", smb_spec, password="not-the-password")
            assert "access denied" in refused, refused
            missing = smb_spec.replace(f"/{smb.share} ", "/no-such-share ")
            refused = run_step(vm, "share-refused", "smb", missing, password=smb.password)
            assert "not found" in refused, refused
            old_spec = f"10.0.2.2:{old_smb.port}/{old_smb.share} {old_smb.user}"
            refused = run_step(vm, "share-refused", "smb", old_spec, password=old_smb.password)
            assert "refused SMB 3.1.1, 3.0 and 2.1" in refused, refused
            run_step(vm, "capture-share", "smb", smb_spec, "on-smb", password=smb.password)
            run_step(vm, "restore-share", "smb", smb_spec, "on-smb", "T-SMB", password=smb.password)
            run_step(vm, "restore-share", "nfs", nfs_spec, "from-nfs", "T-NFS", password="")
            run_step(vm, "capture-drive", "FAT32", "on-fat32")
            copied = run_step(vm, "copy-out", "FAT32", "on-fat32", "3", "/etc", "STICK")
            assert copied.startswith("files="), copied
            fleet_jobs(vm, fleet)
            vm.sendline("poweroff")
            vm.wait_shutdown(timeout=180)
        assert (smb.share_dir / "rescue-images" / "images" / "on-smb" / "manifest.json").is_file()

    # The wizard's restore boots alone, finds its root by UUID, its files intact. Where an image
    # came from does not change what is written: every other restored drive's root holds the
    # system's files, read on the host (a boot each would cost CI a minute and prove no more).
    for serial in ("T-EXFAT", "T-S3"):  # and the fleet's: the point of its issue is a machine that boots
        result = boot_and_expect([drives[serial]], firmware="bios", marker=info["expect"], timeout=300)
        assert result.found, f"{serial}: {result.tail()}"
        print(f"[places] {serial} booted to its marker", flush=True)
    root = next(p for p in info["partitions"] if p["role"] == "root")
    system_files = _root_files(drives["SYSTEM"], root["number"], work)
    assert system_files
    for serial in ("T-EXT4", "T-NTFS", "T-SMB", "T-NFS"):
        assert _root_files(drives[serial], root["number"], work) == system_files, f"{serial}: the root's files differ"
        print(f"[places] {serial}: the root holds the system's files", flush=True)

    # The stick, read on the host: the wizard's image and the copied files are there.
    _check_stick(drives["STICK"], drives["SYSTEM"], (root["offset"], root["size"]), wizard_image, work)


def _root_files(image: Path, number: int, work: Path) -> dict[str, str]:
    """The files of partition `number` (ext4) of a drive image, read on the host, read-only."""
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    part = next(p for p in table["partitions"] if int(re.search(r"(\d+)$", p["node"]).group(1)) == number)
    reg = LoopRegistry(Path(tempfile.mkdtemp(prefix="root-", dir=work)))  # mount points of its own
    try:
        dev = reg.attach(image, offset=part["start"] * 512, size=part["size"] * 512, readonly=True)
        with reg.mounted(dev, "ext4", "ro,noload") as mnt:
            return tree_hashes(mnt)
    finally:
        reg.cleanup()


def _check_stick(stick: Path, system: Path, root: tuple[int, int], image: str, work: Path) -> None:
    reg = LoopRegistry(work)
    try:
        part = reg.attach(stick, offset=MiB, size=4 * GiB - MiB, readonly=True)
        mnt = work / "stick-mnt"
        mnt.mkdir(exist_ok=True)
        sh("mount.exfat-fuse", "-o", "ro", part, str(mnt))
        try:
            assert (mnt / "rescue-images" / "images" / image / "manifest.json").is_file()
            log = (mnt / "rescue-images" / "images" / image / "log.txt").read_text().splitlines()
            print("[places] the wizard's capture onto exFAT:", *log[-3:], sep="\n  ", flush=True)
            copied = mnt / "rescue-files" / "on-fat32-p3" / "etc"
            src = reg.attach(system, offset=root[0], size=root[1], readonly=True)
            with reg.mounted(src, "ext4", "ro,noload") as sysmnt:
                expected = {k: v for k, v in tree_hashes(sysmnt / "etc").items() if not v.startswith("link:")}
            got = {k: v for k, v in tree_hashes(copied).items() if not v.startswith("link:")}
            assert got == expected and expected, "the files copied onto the stick differ from the system drive's"
        finally:
            subprocess.run(["umount", str(mnt)])
    finally:
        reg.cleanup()

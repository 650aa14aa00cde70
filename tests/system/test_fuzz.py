"""Property-based fuzzing of what rescue reads from a repository (issue 12, point 3).

Hypothesis mutates a copy of a small repository holding two real images (a GPT drive and an MBR
drive with a logical partition): manifest fields (types, values, keys, list entries), with the
manifest's checksum re-sealed so that validation, not the checksum, must catch the change;
manifest bytes; index files (bytes, header fields, entries, truncation; re-sealed too: index
trailer and the manifest's index checksum); chunk files (bytes, header fields, truncation,
a zstd frame that inflates to far more than a chunk, valid re-encodings); the type of any file
or directory (a FIFO, a link to /dev/zero or out of the repository, a directory, a huge sparse
file, a device node, nothing); rescue-repo.json; and foreign entries in images/. Then it runs
`list`, `list --json`, `info`, `verify`, `plan` and `restore --yes` (onto a patterned target
file) and `mount` (then `umount`) through rescue.cli.main, each in a forked child under a time
limit, and checks:

- no traceback: every call returns a documented exit code, a failure is one line on stderr;
- no hang: every call ends within its time limit;
- nothing reaches the terminal raw: no control character in any output but newlines;
- no write to the target unless the restore succeeds: a refused restore leaves the pattern;
- nothing left behind by mount: after `umount` (or a refused mount) no mount under MOUNTPOINT
  and no loop device over a file of the mutant repository;
- no false success: a successful verify or restore means the image is intact by an independent
  reading of the format (this file's own reader), and a successful restore wrote exactly the
  partition table and the data that image describes; `list` shows the image (damaged exactly
  when `info` refuses it); a mutation that leaves the image intact is not refused.

`make test` runs a fixed seed and a bounded number of examples (RESCUE_FUZZ_EXAMPLES, default
30; the named cases run every time); `make fuzz` runs many more (RESCUE_FUZZ_EXAMPLES=1500)
with RESCUE_FUZZ_SEED set to whatever seed you like."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import traceback
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from disks import MiB, partition_table, rescue, sh
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.root

EXAMPLES = int(os.environ.get("RESCUE_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("RESCUE_FUZZ_SEED", "12"))
DOCUMENTED = {0, 1, 2, 3, 4}  # docs/format.md, "Exit codes" (5 is for capture and clone only)
LIMIT = {"list": 15.0, "info": 15.0, "verify": 30.0, "plan": 30.0, "restore": 90.0, "mount": 60.0, "umount": 30.0}
DRIVE = 16 * MiB
CHUNK = 1 << 20
IMAGES = ("gpt", "mbr")
LINUX = "0FC63DAF-8483-4772-8E79-3D69E8477DE4"


# -- the world: two small images, built once -------------------------------------------------


def _fill_ext4(loops, path: Path, start: int, sectors: int, seed_: int) -> None:
    dev = loops.attach(path, offset=start * 512, size=sectors * 512)
    sh("mkfs.ext4", "-q", "-L", f"fz{seed_}", dev)
    rnd = random.Random(seed_)
    with loops.mounted(dev) as mnt:
        for i in range(6):
            (mnt / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randint(1000, 600_000)))
        (mnt / "zeros").write_bytes(bytes(1_500_000))
        (mnt / "text").write_text("rescue fuzz\n" * 20000)


def _raw(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def build_gpt(loops, path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(DRIVE)
    partition_table(
        str(path),
        f'label: gpt\nstart=2048, size=16384, type={LINUX}, name="root"\n'
        f'start=20480, size=4096, type={LINUX}, name="raw"\n',
    )
    rnd = random.Random(5)
    _raw(path, 0, rnd.randbytes(440))  # boot code, and a payload in the gap after the GPT
    _raw(path, 40 * 512, rnd.randbytes(200 * 512))
    _raw(path, 18432 * 512, rnd.randbytes(64 * 512))  # something in the gap after p1
    _fill_ext4(loops, path, 2048, 16384, 1)
    _raw(path, 20480 * 512, rnd.randbytes(1536 * 1024))


def build_mbr(loops, path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(DRIVE)
    partition_table(
        str(path),
        "label: dos\nlabel-id: 0x5eed1234\n"
        "start=2048, size=12288, type=83, bootable\n"
        "start=16384, size=14336, type=5\n"
        "start=18432, size=8192, type=83\n",
    )
    rnd = random.Random(6)
    _raw(path, 0, rnd.randbytes(440))
    _raw(path, 512, rnd.randbytes(100 * 512))
    _fill_ext4(loops, path, 2048, 12288, 2)
    _raw(path, 18432 * 512, rnd.randbytes(3 * MiB))


@dataclass
class World:
    root: Path
    pristine: Path  # the repository, never changed
    target: Path  # the patterned target file
    pattern_sha: str


def pattern() -> bytes:
    block = random.Random(99).randbytes(4096)
    return block * (DRIVE // 4096)


@pytest.fixture(scope="module")
def world(mloops) -> World:
    from rescue.repo.store import Repository

    root = mloops.root
    repo = root / "pristine"
    Repository.create(repo, chunk_size=CHUNK)  # small chunks: more of them to damage
    for name, build in (("gpt", build_gpt), ("mbr", build_mbr)):
        path = root / f"{name}.img"
        build(mloops, path)
        source = mloops.attach(path, readonly=True)
        proc = rescue("capture", source, str(repo), "--name", name)
        assert proc.returncode == 0, proc.stderr
    for name in IMAGES:
        assert rescue("verify", str(repo), name).returncode == 0
    target = root / "target.img"
    target.write_bytes(pattern())
    return World(root, repo, target, hashlib.sha256(pattern()).hexdigest())


# -- an independent reader of the format (docs/format.md), for the oracles ------------------


class NotIntact(Exception):
    pass


def canonical_checksum(body: dict) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()


def regular(path: Path, limit: int = 64 << 20) -> bytes:
    for p in (path, path.parent):
        st_ = os.lstat(p)
        if stat.S_ISLNK(st_.st_mode):
            raise NotIntact(f"{p} is a link")
    st_ = os.lstat(path)
    if not stat.S_ISREG(st_.st_mode) or st_.st_size > limit:
        raise NotIntact(f"{path} is not a small regular file")
    return path.read_bytes()


def read_manifest(repo: Path, name: str) -> dict:
    try:
        body = json.loads(regular(repo / "images" / name / "manifest.json"))
    except (OSError, ValueError, RecursionError) as e:
        raise NotIntact(str(e)) from None
    if not isinstance(body, dict) or body.get("checksum") != canonical_checksum(body):
        raise NotIntact("manifest checksum")
    return body


def read_index(repo: Path, name: str, area: dict, chunk_size: int) -> list[tuple[int, bytes, int, int]]:
    """(kind, digest, offset in the area, length) per entry, after every check of the format."""
    blob = regular(repo / "images" / name / area["index"])
    if hashlib.sha256(blob).hexdigest() != area["index_sha256"]:
        raise NotIntact("index checksum in manifest")
    if len(blob) < 64 or hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise NotIntact("index trailer")
    magic, version, dsize, cs, size, count = struct.unpack_from("<8sHHIQQ", blob)
    if (magic, version, dsize) != (b"RESCIDX\0", 1, 32) or cs != chunk_size or size != area["size"]:
        raise NotIntact("index header")
    if count != -(-size // cs) or len(blob) != 32 + 33 * count + 32:
        raise NotIntact("index length")
    out = []
    for i in range(count):
        kind, dig = struct.unpack_from("<B32s", blob, 32 + 33 * i)
        if kind not in (0, 1, 2, 3):
            raise NotIntact("index kind")
        out.append((kind, dig, i * cs, min(cs, size - i * cs)))
    return out


def read_chunk(repo: Path, dig: bytes, length: int) -> bytes:
    h = dig.hex()
    blob = regular(repo / "chunks" / h[:2] / h)
    if len(blob) < 12:
        raise NotIntact("chunk header")
    magic, version, codec, pad, n = struct.unpack_from("<4sBBHI", blob)
    if (magic, version, pad) != (b"RSCK", 1, 0) or n != length:
        raise NotIntact("chunk header")
    if codec == 0:
        data = blob[12:]
    elif codec == 1:
        try:
            if zstandard.frame_content_size(blob[12:]) != length:
                raise NotIntact("chunk frame size")
            dobj = zstandard.ZstdDecompressor().decompressobj()
            data = dobj.decompress(blob[12:])
        except zstandard.ZstdError as e:
            raise NotIntact(str(e)) from None
        if not dobj.eof or dobj.unused_data:
            raise NotIntact("chunk frame")
    else:
        raise NotIntact("chunk codec")
    if len(data) != length or hashlib.sha256(data).digest() != dig:
        raise NotIntact("chunk hash")
    return data


def intact(repo: Path, name: str, with_chunks: bool = True) -> dict:
    """The image as this reader sees it: {"manifest": body, "areas": {name: entries}}, entries
    with the chunk bytes of DATA chunks; NotIntact when any check of the format fails."""
    try:
        meta = json.loads(regular(repo / "rescue-repo.json"))
        body = read_manifest(repo, name)
        cs = body["chunk_size"]
        if meta["chunk_size"] != cs or body["name"] != name:
            raise NotIntact("chunk size or name")
        areas = {}
        for area in body["areas"]:
            entries = read_index(repo, name, area, cs)
            if with_chunks:
                entries = [(k, d, o, n, read_chunk(repo, d, n) if k == 0 else None) for k, d, o, n in entries]
            areas[area["name"]] = entries
        return {"manifest": body, "areas": areas}
    except NotIntact:
        raise
    except Exception as e:  # noqa: BLE001 - anything this reader cannot make sense of
        raise NotIntact(f"{type(e).__name__}: {e}") from None


def manifest_sealed(repo: Path, name: str) -> bool:
    try:
        read_manifest(repo, name)
    except NotIntact:
        return False
    return True


def is_intact(repo: Path, name: str, with_chunks: bool = True) -> bool:
    try:
        intact(repo, name, with_chunks)
    except NotIntact:
        return False
    return True


# -- running the CLI: a forked child per call, under a time limit ---------------------------


@dataclass
class Run:
    argv: list[str]
    rc: int | None  # None: killed at the time limit
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        head = f"rescue {' '.join(self.argv)} -> {self.rc} in {self.seconds:.1f}s"
        return f"{head}\nstdout: {self.out[-1500:]}\nstderr: {self.err[-3000:]}"


CRASHED = 99  # the child's code for an exception that escaped rescue.cli.main


def run_cli(argv: list[str], limit: float) -> Run:
    from rescue.cli import main

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: rescue.cli.main as the `rescue` command would run it
        code = CRASHED
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", encoding="utf-8", errors="strict", closefd=False)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - reported to the parent as a crash
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            code = CRASHED
        finally:
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else CRASHED)
    rc: int | None = None
    deadline = started + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            with_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    seconds = time.monotonic() - started
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode("utf-8", errors="replace"))
        f.close()
    return Run(argv, rc, texts[0], texts[1], seconds)


def with_group(pid: int, sig: int) -> None:
    for kill in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
        try:
            kill()
        except ProcessLookupError:
            pass


def raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")})


def check_call(r: Run) -> None:
    """No hang, no traceback, a documented exit code, a failure in one line, nothing raw."""
    assert r.rc is not None, f"hung (killed after {r.seconds:.0f} s): {r}"
    assert r.rc != CRASHED and "Traceback" not in r.err, f"traceback: {r}"
    assert r.rc in DOCUMENTED, f"undocumented exit code: {r}"
    if r.rc != 0:
        # libparted runs `udevadm settle`, which this machine lacks (DESIGN.md: no udev daemon)
        lines = [line for line in r.err.strip().splitlines() if line != "sh: 1: udevadm: not found"]
        assert len(lines) == 1 and lines[0].startswith("rescue: "), f"not one line: {r}"
    assert not raw_controls(r.out) and not raw_controls(r.err), f"raw control characters: {r}"


# -- mutations ---------------------------------------------------------------------------------

VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    511,
    512,
    513,
    4096,
    1 << 20,
    2**31,
    2**32,
    2**63,
    2**64,
    -(2**63),
    1.5,
    "",
    "--delete",
    "../../x",
    "/dev/zero",
    "p1",
    "head",
    "gap-p1",
    "p5",
    "disk",
    "a\x1b[2Jb\n",
    "right\u202eleft",
    "x" * 300,
    LINUX,
    "11111111-2222-3333-4444-555555555555",
    "0x1234abcd",
    "logical",
    "extended",
    "primary",
    "msdos",
    "gpt",
    "none",
    "ext4",
    [],
    {},
    [1],
    {"k": 1},
]
# Values of the type a field already has, plausible ones first: a mutant that passes validation
# must then be restored exactly as it says.
SAME_TYPE: dict[type, list[object]] = {
    int: [0, 1, 2, 4, 5, 7, 15, 0x0F, 0x83, 0x85, 0xEE, 255, 256, 511, 512, 1024, 2048, 4096, 65536, 1 << 20]
    + [1 << 30, 2**32, -1, -512],
    str: ["", "--delete", "../x", "p1", "p2", "p5", "gap-p1", "gap-p2", "head", "disk", "p1.idx", "head.idx"]
    + ["00000000-0000-0000-0000-000000000000", LINUX, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"]
    + ["21686148-6449-6E6F-744E-656564454649", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"]
    + ["11111111-2222-3333-4444-555555555555", "0x00000000", "0xffffffff", "primary", "logical", "extended"]
    + ["gpt", "msdos", "none", "ext4", "vfat", "ntfs", "swap", "btrfs", "xfs", "LegacyBIOSBootable"]
    + ["RequiredPartition GUID:63", "\u00e9\u540d", "a\x1b[2Jb", "x" * 37, "2000-01-01T00:00:00Z", "badsectors.map"],
    list: [[], ["boot"], ["esp", "boot"], ["bios_grub"], ["hidden"], ["lba"], ["legacy_boot"]],
    bool: [True, False],
    float: [0.0, -1.0, 1e308],
}
# Values by field name: what a careless tool or a hostile hand would put there.
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"
BY_FIELD: dict[str, list[object]] = {
    "mbr_type": [0, 5, 0x0F, 0x85, 0x07, 0xEE, 0xEF, 0x82, 0x83, 255],
    "type_guid": [ZERO_GUID, ESP, "21686148-6449-6E6F-744E-656564454649", LINUX.lower(), None, "--delete"],
    "uuid": [ZERO_GUID, "11111111-2222-3333-4444-555555555555", None, "--delete", "abc"],
    "disk_id": [ZERO_GUID, "0x00000000", "0xffffffff", None, "--delete", "0x1"],
    "kind": ["logical", "extended", "primary"],
    "flags": [["esp"], ["bios_grub"], ["boot", "esp"], ["hidden"], ["lvm", "raid"], ["legacy_boot"]],
    "attrs": ["LegacyBIOSBootable", "RequiredPartition", "GUID:63", "NoBlockIOProtocol", "--delete"],
    "bootable": [True, False],
    "name": ["", "EFI system", "\u00e9\u540d", "x" * 36, "-rf"],
    "table": ["gpt", "msdos", "none"],
    "sector_size": [512, 1024, 2048, 4096, 256],
    "physical_sector_size": [512, 4096, 256],
    "type": ["ext4", "vfat", "ntfs", "swap", "btrfs", "xfs", "ext2", "LVM2_member", "crypto_LUKS"],
    "label": ["", None, "EFI", "-rf"],
    "min_size": [0, 1, 1 << 20, 1 << 40, None],
    "used_bytes": [0, 1 << 40, None],
    "partition": [None, 1, 2, 3, 5, 6],
    "sectors_lost": [0, 1, 100],
    "bad_map": [None, "badsectors.map"],
    "chunk_size": [1 << 16, 1 << 19, 1 << 21, 4 << 20],
}
DELTAS = [1, -1, 2, 2048, -2048, 512, -512, 4096, 1 << 20, -(1 << 20)]
HEADER_VALUES = [0, 1, 2, 31, 32, 33, 4096, 1 << 20, (1 << 20) + 1, 2**31, 2**32 - 1, 2**63]


class Skip(Exception):
    """A mutation that has nothing to work on (an earlier one took it away)."""


class Chooser:
    """Every choice a mutation makes, drawn by Hypothesis from the real candidates (this
    manifest's fields, this image's index files and chunks), so they are sampled evenly and a
    failure shrinks to the simplest one. Without Hypothesis data (the named cases below), each
    choice is the first candidate unless a `script` of labels to values says otherwise."""

    def __init__(self, data: st.DataObject | None = None, script: dict[str, object] | None = None):
        self.data, self.script = data, script or {}

    def pick(self, options, label: str):
        options = list(options)
        if not options:
            raise Skip(f"no {label} to choose")
        if self.data is None:
            return self.script.get(label, options[0])
        return self.data.draw(st.sampled_from(options), label=label)

    def number(self, lo: int, hi: int, label: str) -> int:
        if hi < lo:
            raise Skip(f"no {label} to choose")
        if self.data is None:
            return int(self.script.get(label, lo))
        return self.data.draw(st.integers(lo, hi), label=label)


@dataclass
class Done:
    """What a mutation did, and what the oracles may expect of the fuzzed image after it."""

    kind: str
    image: str
    op: str
    what: str

    def harmless_to(self, image: str) -> bool:
        """Whether `image` must still verify and restore after this mutation: it left the
        image's bytes as they were, or it touched only another image's own files."""
        if self.kind == "foreign" or (self.kind == "chunk" and self.op in ("stored", "recompress")):
            return True
        if self.kind == "file-type" and self.op in ("verified", "log"):
            return True
        if self.image == image:
            return False
        if self.kind in ("manifest-field", "manifest-bytes", "index"):
            return True
        return self.kind == "file-type" and self.op in ("manifest", "index", "image-dir")

    @property
    def repo_level(self) -> bool:
        """Whether it may make the whole repository unusable (list refuses it then)."""
        return self.kind == "repo-meta" or (self.kind == "file-type" and self.op in ("chunks", "images", "marker"))


def load(path: Path) -> bytes:
    """A file the harness mutates: a regular file of sane size, never a FIFO an earlier
    mutation put there (opening it would block the harness itself)."""
    st_ = os.lstat(path)
    if not stat.S_ISREG(st_.st_mode) or st_.st_size > 64 << 20:
        raise Skip(f"{path.name} is no longer a small regular file")
    return path.read_bytes()


def copy_entry(src: str, dst: str) -> None:
    """shutil.copytree's copy function: special files are made again, never opened."""
    st_ = os.lstat(src)
    if stat.S_ISFIFO(st_.st_mode):
        os.mkfifo(dst)
    elif stat.S_ISCHR(st_.st_mode) or stat.S_ISBLK(st_.st_mode):
        os.mknod(dst, st_.st_mode, st_.st_rdev)
    elif stat.S_ISREG(st_.st_mode) and st_.st_size > 64 << 20:
        with open(dst, "wb") as f:
            f.truncate(st_.st_size)
    else:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=copy_entry)


def write_manifest(repo: Path, name: str, body: dict, reseal: bool = True) -> None:
    if reseal:
        body["checksum"] = canonical_checksum(body)
    (repo / "images" / name / "manifest.json").write_text(json.dumps(body, indent=1, sort_keys=True))


def paths_of(value: object, here: tuple = ()) -> list[tuple]:
    out = [here] if here else []
    if isinstance(value, dict):
        for k in sorted(value):
            if not here and k == "checksum":
                continue
            out += paths_of(value[k], here + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, here + (i,))
    return out


PLACEMENT = ("start", "end", "number", "offset", "size", "partition", "name", "index")


def mutate_manifest_field(repo: Path, image: str, ch: Chooser) -> Done:
    body = json.loads(load(repo / "images" / image / "manifest.json"))
    paths = paths_of(body)
    scope = ch.pick(["partition table", "what goes where", "anything"], "scope")
    if scope == "partition table":
        paths = [p for p in paths if p[:2] == ("layout", "partitions") and len(p) == 4]
    elif scope == "what goes where":
        paths = [p for p in paths if p[-1] in BY_FIELD or p[-1] in PLACEMENT]
    path = ch.pick(paths, "field")
    parent = body
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    old = parent[key]
    op = ch.pick(["set", "tweak", "delete", "add-key", "list"], "op")
    if op == "set":
        pools = [VALUES] + [p for p in (BY_FIELD.get(key), SAME_TYPE.get(type(old))) if p]
        parent[key] = ch.pick(ch.pick(pools, "pool"), "value")
    elif op == "tweak" and isinstance(old, int) and not isinstance(old, bool):
        d = ch.pick(DELTAS, "delta")
        parent[key] = ch.pick([old + d, old - d, old * 2, old // 2, -old], "tweaked")
    elif op == "tweak" and isinstance(old, str):
        parent[key] = ch.pick(
            [old + "x", old[:-1], old.upper(), old.lower(), "-" + old, old + "/..", old * 2], "tweaked"
        )
    elif op == "tweak":
        parent[key] = not old if isinstance(old, bool) else ch.pick(VALUES, "value")
    elif op == "delete":
        del parent[key]
    elif op == "add-key":
        if isinstance(old, dict):
            old[ch.pick(["extra", "size", "name", "checksum"], "new key")] = ch.pick(VALUES, "value")
        else:
            parent[key] = {"value": old}
    else:
        target = old if isinstance(old, list) else parent if isinstance(parent, list) else None
        if not target:
            parent[key] = [old]
        else:
            i = ch.number(0, len(target) - 1, "entry")
            how = ch.pick(["drop", "duplicate", "swap with last", "reverse"], "list op")
            if how == "drop":
                del target[i]
            elif how == "duplicate":
                target.append(json.loads(json.dumps(target[i])))
            elif how == "swap with last":
                target[i], target[-1] = target[-1], target[i]
            else:
                target.reverse()
    reseal = ch.pick([True, True, True, False], "re-seal")
    write_manifest(repo, image, body, reseal)
    new = parent.get(key, "<gone>") if isinstance(parent, dict) else "..."
    where = "/".join(map(str, path))
    return Done("manifest-field", image, op, f"{where} {op}: {old!r:.60} -> {new!r:.60} (re-sealed: {reseal})")


def mutate_manifest_bytes(repo: Path, image: str, ch: Chooser) -> Done:
    path = repo / "images" / image / "manifest.json"
    blob = bytearray(load(path))
    op = ch.pick(["truncate", "flip", "insert", "garbage", "empty"], "op")
    at = ch.number(0, len(blob) - 1, "position") if blob else 0
    if op == "truncate":
        blob = blob[:at]
    elif op == "flip" and blob:
        blob[at] ^= 1 << ch.number(0, 7, "bit")
    elif op == "insert":
        blob[at:at] = ch.pick([b"\x00", b"\x1b[2J", b"\xff\xfe", b'"', b"[" * 5000, b"\xed\xa0\x80"], "bytes")
    elif op == "garbage":
        blob = bytearray(random.Random(at).randbytes(len(blob)))
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    return Done("manifest-bytes", image, op, f"manifest bytes {op} at {at}")


def index_names(repo: Path, image: str) -> list[str]:
    return sorted(p.name for p in (repo / "images" / image).glob("*.idx"))


def reseal_index(repo: Path, image: str, name: str, blob: bytearray) -> None:
    """Fix the index's trailer and the manifest's record of it, and re-seal the manifest."""
    blob[-32:] = hashlib.sha256(bytes(blob[:-32])).digest()
    (repo / "images" / image / name).write_bytes(bytes(blob))
    body = json.loads(load(repo / "images" / image / "manifest.json"))
    for area in body["areas"]:
        if area["index"] == name:
            area["index_sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
    write_manifest(repo, image, body)


def data_digests(repo: Path, image: str) -> list[bytes]:
    out = []
    for name in index_names(repo, image):
        try:
            blob = load(repo / "images" / image / name)
        except Skip:
            continue
        count = struct.unpack_from("<Q", blob, 24)[0] if len(blob) >= 32 else 0
        for i in range(min(count, (len(blob) - 32) // 33)):
            kind, dig = struct.unpack_from("<B32s", blob, 32 + 33 * i)
            if kind == 0:
                out.append(dig)
    return sorted(set(out))


def mutate_index(repo: Path, image: str, ch: Chooser) -> Done:
    name = ch.pick(index_names(repo, image), "index")
    path = repo / "images" / image / name
    blob = bytearray(load(path))
    count = (len(blob) - 64) // 33
    op = ch.pick(["flip", "truncate", "append", "header", "kind", "digest", "swap"], "op")
    what = f"{name} {op}"
    if op == "flip":
        at = ch.number(0, len(blob) - 1, "position")
        blob[at] ^= 1 << ch.number(0, 7, "bit")
        what += f" at {at}"
    elif op == "truncate":
        blob = blob[: ch.number(0, len(blob) - 1, "length")]
    elif op == "append":
        blob += bytes(33 * ch.number(1, 3, "entries"))
    elif op == "header":
        fields = list(struct.unpack_from("<8sHHIQQ", blob))
        i = ch.number(1, 5, "header field")
        fields[i] = ch.pick(HEADER_VALUES, "value") % (1 << (16 if i < 3 else 32 if i == 3 else 64))
        struct.pack_into("<8sHHIQQ", blob, 0, *fields)
        what += f" field {i} = {fields[i]}"
    elif op == "kind":
        i = ch.number(0, count - 1, "entry")
        blob[32 + 33 * i] = ch.number(0, 5, "kind")
        what += f" entry {i} kind {blob[32 + 33 * i]}"
    elif op == "digest":
        i = ch.number(0, count - 1, "entry")
        digs = data_digests(repo, image) or [bytes(32)]
        new = ch.pick([bytes(32), b"\x5a" * 32, *digs[:8]], "digest")
        blob[32 + 33 * i + 1 : 32 + 33 * i + 33] = new
        what += f" entry {i} digest"
    elif op == "swap":
        i, j = ch.number(0, count - 1, "entry"), ch.number(0, count - 1, "other entry")
        a, b = 32 + 33 * i, 32 + 33 * j
        blob[a : a + 33], blob[b : b + 33] = blob[b : b + 33], blob[a : a + 33]
        what += f" entries {i} and {j}"
    if ch.pick([True, False], "re-seal") and len(blob) >= 64:
        reseal_index(repo, image, name, blob)
        what += " (re-sealed)"
    else:
        path.write_bytes(bytes(blob))
    return Done("index", image, op, what)


def chunk_file(repo: Path, dig: bytes) -> Path:
    h = dig.hex()
    return repo / "chunks" / h[:2] / h


def mutate_chunk(repo: Path, image: str, ch: Chooser) -> Done:
    digs = data_digests(repo, image)
    dig = ch.pick(digs, "chunk")
    path = chunk_file(repo, dig)
    blob = bytearray(load(path))
    if len(blob) < 12:
        raise Skip("chunk already truncated")
    magic, version, codec, pad, length = struct.unpack_from("<4sBBHI", blob)
    op = ch.pick(
        ["flip", "truncate", "append", "header", "bomb", "swap", "delete", "stored", "recompress", "empty"], "op"
    )
    what = f"chunk {dig.hex()[:12]} {op}"
    if op == "flip":
        at = ch.number(0, len(blob) - 1, "position")
        blob[at] ^= 1 << ch.number(0, 7, "bit")
        what += f" at {at}"
    elif op == "truncate":
        blob = blob[: ch.number(0, len(blob) - 1, "length")]
    elif op == "append":
        blob += ch.pick([b"\x00", b"junk", zstandard.ZstdCompressor().compress(b"more")], "tail")
    elif op == "header":
        fields = [magic, version, codec, pad, length]
        i = ch.number(0, 4, "header field")
        fields[i] = b"RSCX" if i == 0 else ch.pick(HEADER_VALUES, "value") % (1 << [0, 8, 8, 16, 32][i])
        struct.pack_into("<4sBBHI", blob, 0, *fields)
        what += f" field {i}"
    elif op == "bomb":  # a valid frame of 64-128 MiB of zeros in a 1 MiB chunk
        blob = bytearray(struct.pack("<4sBBHI", magic, 1, 1, 0, length))
        blob += zstandard.ZstdCompressor(level=19).compress(bytes(ch.number(64, 128, "MiB") << 20))
    elif op == "swap":
        other = ch.pick([d for d in digs if d != dig], "other chunk")
        blob = bytearray(load(chunk_file(repo, other)))
    elif op == "delete":
        path.unlink()
        return Done("chunk", image, op, what)
    elif op in ("stored", "recompress"):  # valid re-encodings of the same bytes
        data = zstandard.ZstdDecompressor().decompress(bytes(blob[12:])) if codec == 1 else bytes(blob[12:])
        if op == "stored":
            blob = bytearray(struct.pack("<4sBBHI", b"RSCK", 1, 0, 0, len(data)) + data)
        else:
            packed = zstandard.ZstdCompressor(level=ch.number(1, 19, "level")).compress(data)
            blob = bytearray(struct.pack("<4sBBHI", b"RSCK", 1, 1, 0, len(data)) + packed)
    elif op == "empty":
        blob = bytearray()
    path.write_bytes(bytes(blob))
    return Done("chunk", image, op, what)


REPLACEMENTS = (
    "fifo",
    "link to /dev/zero",
    "link out of the repository",
    "the other type",
    "empty file",
    "huge sparse file",
    "character device",
    "nothing",
    "link to /dev/urandom",
)


def replace_with(path: Path, how: str, outside: Path) -> None:
    """Put something else where `path` is (one of REPLACEMENTS)."""
    was_dir = path.is_dir() and not path.is_symlink()
    if how == "link out of the repository":
        outside.mkdir(parents=True, exist_ok=True)
        copy = outside / f"copy-{path.name}"
        copy_tree(path, copy) if was_dir else copy_entry(str(path), str(copy))
    if was_dir:
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif how == "link out of the repository":
        path.symlink_to(outside / f"copy-{path.name}")
    elif how == "the other type":
        if was_dir:
            path.write_text("a file where a directory was\n")
        else:
            path.mkdir()
    elif how == "empty file":
        path.write_bytes(b"")
    elif how == "huge sparse file":
        with open(path, "wb") as f:
            f.truncate(8 << 30)
    elif how == "character device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    elif how == "link to /dev/urandom":
        path.symlink_to("/dev/urandom")


def mutate_file_type(repo: Path, image: str, ch: Chooser, outside: Path) -> Done:
    d = repo / "images" / image
    targets = {
        "manifest": lambda: d / "manifest.json",
        "index": lambda: d / ch.pick(index_names(repo, image), "index"),
        "chunk": lambda: chunk_file(repo, ch.pick(data_digests(repo, image), "chunk")),
        "image-dir": lambda: d,
        "chunk-dir": lambda: chunk_file(repo, ch.pick(data_digests(repo, image), "chunk")).parent,
        "images": lambda: repo / "images",
        "chunks": lambda: repo / "chunks",
        "marker": lambda: repo / "rescue-repo.json",
        "verified": lambda: d / "verified.json",
        "log": lambda: d / "log.txt",
    }
    op = ch.pick(targets, "what")
    target = targets[op]()
    if op == "verified" and not os.path.lexists(target):
        target.write_text('{"ok": true}')
    how = ch.pick(REPLACEMENTS, "replaced by")
    replace_with(target, how, outside)
    return Done("file-type", image, op, f"{op} ({target.relative_to(repo)}) replaced by {how}")


def mutate_repo_meta(repo: Path, image: str, ch: Chooser) -> Done:
    path = repo / "rescue-repo.json"
    body = json.loads(load(path))
    key = ch.pick(sorted(body), "key")
    body[key] = ch.pick(ch.pick([VALUES, SAME_TYPE[int]], "pool"), "value")
    path.write_text(json.dumps(body))
    return Done("repo-meta", image, key, f"rescue-repo.json {key} = {body[key]!r:.40}")


WEIRD_NAMES = ["evil\x1b[2Jname", "nl\nname", "bidi\u202eeman", os.fsdecode(b"bad\xffbyte"), "-rf", ".hidden", "a b"]


def mutate_foreign(repo: Path, image: str, ch: Chooser) -> Done:
    images = repo / "images"
    op = ch.pick(["weird-dir", "weird-file", "empty-dir", "alias", "hidden-copy", "renamed-copy"], "op")
    name = ch.pick(WEIRD_NAMES, "name")
    if os.path.lexists(images / name):
        raise Skip("already there")
    if op == "weird-dir":
        (images / name).mkdir()
        copy_entry(str(images / image / "manifest.json"), str(images / name / "manifest.json"))
    elif op == "weird-file":
        (images / name).write_text("x")
    elif op == "empty-dir":
        (images / name).mkdir()
    elif op == "alias":
        (images / name).symlink_to(images / image)
    elif op == "hidden-copy":
        copy_tree(images / image, images / ".copy")
    elif op == "renamed-copy":
        copy_tree(images / image, images / "renamed")
    return Done("foreign", image, op, f"foreign {op} {name!r}")


# Drawn by kind: the manifest decides what is written where, so its fields get most draws.
MUTATORS = {
    "manifest-field": mutate_manifest_field,
    "manifest-bytes": mutate_manifest_bytes,
    "index": mutate_index,
    "chunk": mutate_chunk,
    "file-type": mutate_file_type,
    "repo-meta": mutate_repo_meta,
    "foreign": mutate_foreign,
}
KINDS = (
    ["manifest-field"] * 4
    + ["index"] * 2
    + ["chunk"] * 2
    + [k for k in MUTATORS if k not in ("manifest-field", "index", "chunk")]
)


def mutate(repo: Path, kind: str, image: str, ch: Chooser, outside: Path) -> Done:
    if kind == "file-type":
        return mutate_file_type(repo, image, ch, outside)
    return MUTATORS[kind](repo, image, ch)


# -- the oracles -------------------------------------------------------------------------------


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_restored(world: World, image: dict) -> None:
    """The target holds exactly the table and the partition data the image describes."""
    body = image["manifest"]
    layout = body["layout"]
    table = json.loads(sh("sfdisk", "--json", "--", str(world.target)))["partitiontable"]
    assert table["label"] == {"gpt": "gpt", "msdos": "dos"}[layout["table"]], table
    on_disk = {p["start"]: p for p in table.get("partitions", [])}
    for p in layout.get("partitions", []):
        q = on_disk.get(p["start"])
        assert q is not None, f"partition {p['number']} at {p['start']} was not written: {table}"
        assert q["size"] == p["end"] - p["start"] + 1, (p, q)
        if layout["table"] == "gpt":
            if p.get("type_guid"):
                assert q["type"].upper() == p["type_guid"].upper(), (p, q)
            if p.get("uuid"):
                assert q["uuid"].upper() == p["uuid"].upper(), (p, q)
            assert q.get("name", "") == p.get("name", ""), (p, q)
        elif p.get("kind") != "extended" and p.get("mbr_type") is not None:
            assert int(q["type"], 16) == p["mbr_type"], (p, q)
    if layout.get("disk_id"):
        assert table["id"].lower() == layout["disk_id"].lower(), (table["id"], layout["disk_id"])
    ss = layout["sector_size"]
    with open(world.target, "rb") as f:
        for area in body["areas"]:
            if area.get("partition") is None:
                continue  # bytes outside partitions: rescue reads them back itself
            part = next(p for p in layout["partitions"] if p["number"] == area["partition"])
            base = part["start"] * ss
            for kind, _, offset, length, data in image["areas"][area["name"]]:
                if kind in (0, 1):
                    f.seek(base + offset)
                    got = f.read(length)
                    want = data if kind == 0 else bytes(length)
                    assert got == want, f"area {area['name']} chunk at {offset}: the target holds other bytes"


class HarnessHung(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise HarnessHung("a mutation blocked the test itself")


@contextlib.contextmanager
def mutant(world: World) -> Iterator[Path]:
    """A private copy of the repository to mutate (`work/repo`); the target's pattern is
    restored afterwards."""
    work = Path(tempfile.mkdtemp(prefix="mutant-", dir=world.root))
    try:
        shutil.copytree(world.pristine, work / "repo", symlinks=True)
        yield work
    finally:
        if file_sha(world.target) != world.pattern_sha:
            world.target.write_bytes(pattern())
        shutil.rmtree(work, ignore_errors=True)


def apply(work: Path, kind: str, image: str, ch: Chooser, i: int = 0) -> list[Done]:
    """One mutation, or none when it has nothing to work on; the harness itself never blocks."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        done = mutate(work / "repo", kind, image, ch, work / f"outside{i}")
    except (Skip, OSError, ValueError, LookupError, TypeError, AttributeError, struct.error) as e:
        # an earlier mutation took away or mangled what this one edits (a manifest that is no
        # longer JSON, an index cut short): this one does nothing
        print(f"mutation {kind} of {image} skipped: {type(e).__name__}: {e}")
        return []
    finally:
        signal.alarm(0)
    print(f"mutation: {done}")
    return [done]


def run_mount(repo: Path, name: str) -> Run:
    """`rescue mount`, then `rescue umount` when it mounted; either way nothing of it stays:
    no mount under the mount point, no loop device over a file of the repository."""
    mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=repo.parent))
    mounted = run_cli(["mount", str(repo), name, str(mnt)], LIMIT["mount"])
    check_call(mounted)
    if mounted.rc == 0:
        umounted = run_cli(["umount", str(mnt)], LIMIT["umount"])
        check_call(umounted)
        assert umounted.rc == 0, f"umount after a mount that succeeded: {umounted}"
    with open("/proc/self/mountinfo") as f:
        below = [line for line in f if f" {mnt}/" in line or f" {mnt} " in line]
    assert not below, f"mounts left under {mnt} after {mounted}: {below}"
    backings = sh("losetup", "--list", "--noheadings", "--output", "BACK-FILE").split()
    assert not [b for b in backings if b.startswith(str(repo.parent))], f"loop devices left by {mounted}: {backings}"
    return mounted


def check_commands(world: World, repo: Path, name: str, done: list[Done]) -> None:
    """Run every command on image `name` of the mutated repository and hold the results to
    the oracles (the module's docstring)."""
    r, target = str(repo), str(world.target)
    repo_level = any(d.repo_level for d in done)
    harmless = all(d.harmless_to(name) for d in done)

    listed = run_cli(["list", "--json", r], LIMIT["list"])
    check_call(listed)
    text = run_cli(["list", r], LIMIT["list"])
    check_call(text)
    info = run_cli(["info", r, name], LIMIT["info"])
    check_call(info)
    verify = run_cli(["verify", r, name], LIMIT["verify"])
    check_call(verify)
    plan = run_cli(["plan", r, name, target, "--layout", "same"], LIMIT["plan"])
    check_call(plan)
    restore = run_cli(["restore", r, name, target, "--yes", "--layout", "same"], LIMIT["restore"])
    check_call(restore)
    mounted = run_mount(repo, name)
    runs = (listed, text, info, verify, plan, restore, mounted)
    print("exit codes and seconds:", " ".join(f"{x.argv[0]}={x.rc}/{x.seconds:.2f}" for x in runs))

    # list: every image is shown, damaged exactly when info refuses it
    if listed.rc != 0:
        assert repo_level, f"list failed on a readable repository: {listed}"
    else:
        entries = {e["name"]: e for e in json.loads(listed.out)}
        image_dir = repo / "images" / name
        if image_dir.is_dir() and not image_dir.is_symlink() and os.path.lexists(image_dir / "manifest.json"):
            assert name in entries, f"list hides image {name}: {listed}"
            agree = (entries[name]["damaged"] is None) == (info.rc == 0)
            assert agree, f"list and info disagree:\n{listed}\n{info}"
            assert name in text.out
    # no false success
    if info.rc == 0:
        assert manifest_sealed(repo, name), f"info showed a damaged manifest: {info}"
    if verify.rc == 0:
        assert is_intact(repo, name), f"verify passed a damaged image: {verify}"
    if plan.rc in (0, 1) and plan.out:
        assert is_intact(repo, name, with_chunks=False), f"plan used a damaged image: {plan}"
    if mounted.rc == 0:
        assert manifest_sealed(repo, name), f"mount showed a damaged manifest: {mounted}"
    if restore.rc == 0:
        check_restored(world, intact(repo, name))
    else:
        assert file_sha(world.target) == world.pattern_sha, f"a refused restore wrote to the target: {restore}"
    # no false failure
    if harmless:
        assert verify.rc == 0, f"verify refused an intact image: {verify}"
        assert restore.rc == 0, f"restore refused an intact image: {restore}"
        assert mounted.rc == 0, f"mount refused an intact image: {mounted}"


@pytest.mark.parametrize("image", IMAGES)
def test_the_unmutated_images_pass_every_command(world, image):
    with mutant(world) as work:
        check_commands(world, work / "repo", image, [])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
@seed(SEED)
@given(data=st.data())
def test_no_mutant_makes_rescue_crash_hang_lie_or_write(world, data):
    ch = Chooser(data)
    image = ch.pick(IMAGES, "image")
    other = next(i for i in IMAGES if i != image)
    with mutant(world) as work:
        done: list[Done] = []
        for i in range(ch.number(1, 3, "mutations")):
            kind = ch.pick(KINDS, "kind")
            done += apply(work, kind, ch.pick([image, image, image, other], "of image"), ch, i)
        check_commands(world, work / "repo", image, done)


@pytest.mark.parametrize(
    "image, kind, script",
    [
        ("gpt", "file-type", {"what": "index", "replaced by": "fifo"}),
        ("mbr", "file-type", {"what": "index", "replaced by": "link to /dev/zero"}),
        ("gpt", "file-type", {"what": "chunk", "replaced by": "character device"}),
        ("gpt", "file-type", {"what": "manifest", "replaced by": "huge sparse file"}),
        ("mbr", "file-type", {"what": "image-dir", "replaced by": "link out of the repository"}),
        ("gpt", "file-type", {"what": "chunk-dir", "replaced by": "link out of the repository"}),
        ("gpt", "file-type", {"what": "chunks", "replaced by": "the other type"}),
        ("gpt", "chunk", {"op": "bomb"}),
        ("gpt", "chunk", {"op": "stored"}),
        ("mbr", "chunk", {"op": "recompress", "level": 19}),
        ("mbr", "index", {"op": "kind", "kind": 4, "re-seal": True}),
        ("gpt", "index", {"op": "digest", "digest": bytes(32), "re-seal": True}),
        ("gpt", "foreign", {"op": "weird-dir", "name": "evil\x1b[2Jname"}),
        ("mbr", "foreign", {"op": "weird-file", "name": os.fsdecode(b"bad\xffbyte")}),
        ("gpt", "repo-meta", {"key": "chunk_size", "value": 0}),
        ("gpt", "manifest-field", {"field": ("layout", "partitions", 0, "uuid"), "op": "set", "value": "--delete"}),
        ("mbr", "manifest-field", {"field": ("layout", "partitions", 0, "mbr_type"), "op": "set", "value": 5}),
        ("mbr", "manifest-field", {"field": ("layout", "partitions", 2, "mbr_type"), "op": "set", "value": 0}),
        ("gpt", "manifest-field", {"field": ("stats", "sectors_lost"), "op": "set", "value": 3}),
        ("gpt", "manifest-field", {"field": ("layout", "partitions", 0, "attrs"), "op": "tweak", "tweaked": "x"}),
        ("gpt", "manifest-field", {"field": ("layout", "sector_size"), "op": "set", "value": 4096}),
        ("gpt", "manifest-field", {"field": ("areas", 0, "name"), "op": "set", "value": "../../p1"}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(str(x)[:12] for x in v.values()),
)
def test_named_mutants(world, image, kind, script):
    """Issue 12's cases and the ones the fuzzing found, every time."""
    with mutant(world) as work:
        done = apply(work, kind, image, Chooser(script=script))
        assert done, "the named mutation did not apply"
        check_commands(world, work / "repo", image, done)


@pytest.mark.parametrize(
    "image, edit",
    [
        ("gpt", lambda b: b["layout"].update(sector_size=0)),
        ("gpt", lambda b: b["layout"].update(sector_size=-512)),
        ("gpt", lambda b: b["layout"]["partitions"][0].update(end=100)),
        ("gpt", lambda b: b["layout"]["partitions"][1].update(start=b["layout"]["partitions"][0]["end"] - 10)),
        ("gpt", lambda b: b["layout"]["partitions"][0].update(kind="logical")),
        ("gpt", lambda b: b["layout"]["partitions"][0].update(type_guid="not-a-guid")),
        ("gpt", lambda b: b["layout"]["partitions"][0].update(uuid="--delete")),
        ("gpt", lambda b: b["areas"].remove(next(a for a in b["areas"] if a["name"] == "head"))),
        ("gpt", lambda b: b["areas"].remove(next(a for a in b["areas"] if a["name"] == "p2"))),
        ("gpt", lambda b: next(a for a in b["areas"] if a["name"] == "p1").update(index="/dev/zero")),
        ("gpt", lambda b: next(a for a in b["areas"] if a["name"] == "p1").update(name="../../p1")),
        ("gpt", lambda b: b.update(chunk_size="1M")),
        ("mbr", lambda b: b["layout"]["partitions"][2].update(start=10)),
        ("mbr", lambda b: b["layout"].update(disk_id="--delete")),
    ],
)
def test_the_issues_manifests_are_refused_by_every_command(world, image, edit):
    """Issue 12's list of re-sealed manifests, each through every command."""
    work = Path(tempfile.mkdtemp(prefix="issue-", dir=world.root))
    try:
        repo = work / "repo"
        shutil.copytree(world.pristine, repo, symlinks=True)
        body = json.loads((repo / "images" / image / "manifest.json").read_text())
        edit(body)
        write_manifest(repo, image, body)
        r, target = str(repo), str(world.target)
        for argv, limit in (
            (["info", r, image], LIMIT["info"]),
            (["verify", r, image], LIMIT["verify"]),
            (["plan", r, image, target], LIMIT["plan"]),
            (["restore", r, image, target, "--yes"], LIMIT["restore"]),
            (["mount", r, image, str(work)], LIMIT["mount"]),
        ):
            run = run_cli(argv, limit)
            check_call(run)
            assert run.rc == 1 and "manifest field" in run.err, run
        assert file_sha(world.target) == world.pattern_sha
        listed = json.loads(run_cli(["list", "--json", r], LIMIT["list"]).out)
        assert next(e for e in listed if e["name"] == image)["damaged"], listed
    finally:
        if file_sha(world.target) != world.pattern_sha:
            world.target.write_bytes(pattern())
        shutil.rmtree(work, ignore_errors=True)

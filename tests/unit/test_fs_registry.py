"""The filesystem registry, without a disk: every class answers every capability and its
answers agree with the methods it implements, every type name belongs to exactly one class,
and nothing outside the classes keeps its own list of filesystem type names (the FAT names
were six disagreeing lists before the classes existed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rescue.errors import FilesystemError
from rescue.filesystems import FILESYSTEMS, Identified, identify, lookup
from rescue.filesystems.base import CAPABILITIES, Filesystem, Volume
from rescue.filesystems.ext import parse as parse_dumpe2fs
from rescue.filesystems.fat import Fat
from rescue.filesystems.resize import resize_filesystem, shrink_plan_check

MiB = 1 << 20
RESCUE = Path(__file__).resolve().parents[2] / "rescue"
TYPES = [name for cls in FILESYSTEMS for name in cls.names]
# "msdos" is also the partition table type (parted, sfdisk): not a sign of a FAT list.
FAT_WORDS = set(Fat.names) - {"msdos"}
ALL_WORDS = set(TYPES) - {"msdos"}
# Per-filesystem decisions still made outside rescue/filesystems, in modules other engineers
# own during issue 11: file -> the type names it still tests. The lead shrinks this list as
# those move to the classes (PartFacts carrying the class's answers; discover.py taking mount
# options from lookup()); a new entry anywhere else fails the test.
LEFT_OUTSIDE = {
    "rescue/model/plan.py": {"swap", "xfs", "vfat", "fat", "fat16", "fat32"},
    "rescue/hw/discover.py": {"swap", "LVM2_member", "linux_raid_member", "crypto_LUKS"},  # skipped before any mount
    "rescue/cli.py": {"swap"},  # what a device is used for (a swap area in use), not a type test
}


# --- every class answers every capability ---------------------------------------------------------


@pytest.mark.parametrize("cls", FILESYSTEMS, ids=lambda c: c.__name__)
def test_every_class_answers_every_capability(cls: type[Filesystem]):
    for name in CAPABILITIES:
        assert name in vars(cls), f"{cls.__name__} inherits {name} instead of saying it"
    assert cls.names and all(isinstance(n, str) and n for n in cls.names)
    for flag in (
        "can_grow",
        "grow_fills",
        "can_shrink",
        "shrink_moves_data",
        "mtools",
        "linux_config",
        "can_renumber",
        "can_name_files",
    ):
        assert isinstance(getattr(cls, flag), bool), flag
    assert isinstance(cls.resize_floor, int) and cls.resize_floor >= 0
    for text in ("mount_type", "mount_ro", "mount_rw", "no_files"):
        assert getattr(cls, text) is None or (isinstance(getattr(cls, text), str) and getattr(cls, text)), text


@pytest.mark.parametrize("cls", FILESYSTEMS, ids=lambda c: c.__name__)
def test_capabilities_agree_with_the_methods(cls: type[Filesystem]):
    def overrides(method: str) -> bool:
        return getattr(cls, method) is not getattr(Filesystem, method)

    assert overrides("examine"), "every class reads its own metadata"
    assert cls.can_renumber == overrides("new_uuid")
    assert cls.can_name_files == overrides("files_at")
    assert (cls.can_grow or cls.can_shrink) == overrides("_resize")
    assert not cls.grow_fills or cls.can_grow
    assert not cls.shrink_moves_data or cls.can_shrink
    # Mountable and holding files go together; a mount for looking never writes.
    mountable = cls.mount_type is not None
    assert mountable == (cls.mount_ro is not None) == (cls.mount_rw is not None) == (cls.no_files is None)
    if mountable:
        assert cls.mount_ro.split(",")[0] == "ro" and cls.mount_rw.split(",")[0] == "rw"
    assert not cls.linux_config or mountable


def test_an_incomplete_class_is_refused_at_registration():
    from rescue.filesystems import _by_type

    class Half(Filesystem):
        names = ("half",)
        can_grow = False

    with pytest.raises(TypeError, match="Half does not say grow_fills"):
        _by_type((Half,))


# --- type names -----------------------------------------------------------------------------------


def test_every_type_name_maps_to_exactly_one_class():
    assert len(TYPES) == len(set(TYPES))
    for cls in FILESYSTEMS:
        for name in cls.names:
            fs = lookup(name)
            assert type(fs) is cls and fs.type == name
    assert lookup("ext3") == lookup("ext3") != lookup("ext4")  # bound to the name it was found as


@pytest.mark.parametrize("name", [None, "", "raw", "swsuspend", "BitLocker", "zfs_member", "EXT4", "exfat"])
def test_unknown_types_have_no_class(name):
    assert lookup(name) is None


def test_the_fat_names_agree_everywhere():
    """One list (Fat.names): the wizard, browsing, extraction, post-restore and the planner's
    capabilities all ask the class."""
    from rescue.engine import ImagePart

    for name in [*TYPES, "", "exfat", "iso9660"]:
        fat = name in Fat.names
        assert ImagePart(1, MiB, name).fat == fat, name
        fs = lookup(name)
        assert (fs is not None and fs.mtools) == fat
    found = {where: words for where, words in _type_literals(FAT_WORDS).items() if where not in LEFT_OUTSIDE}
    assert found == {"rescue/filesystems/fat.py": FAT_WORDS}, "FAT names listed outside the Fat class"


def test_no_per_filesystem_decisions_outside_the_classes():
    """Collections, dict keys and comparisons with a filesystem type name, outside
    rescue/filesystems: a decision the class should make (see LEFT_OUTSIDE)."""
    found = {
        where: words
        for where, words in _type_literals(ALL_WORDS).items()
        if not where.startswith("rescue/filesystems/")
    }
    stray = {where: words - LEFT_OUTSIDE.get(where, set()) for where, words in found.items()}
    assert {w: n for w, n in stray.items() if n} == {}


def _type_literals(words: set[str]) -> dict[str, set[str]]:
    """file -> the type names it holds in tuple/set/list literals, dict keys and comparisons."""
    out: dict[str, set[str]] = {}
    for path in sorted(RESCUE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
                consts = node.elts
            elif isinstance(node, ast.Dict):
                consts = [k for k in node.keys if k is not None]
            elif isinstance(node, ast.Compare):
                consts = [node.left, *node.comparators]
            else:
                continue
            hits = {c.value for c in consts if isinstance(c, ast.Constant) and c.value in words}
            if hits:
                out.setdefault(str(path.relative_to(RESCUE.parent)), set()).update(hits)
    return out


# --- what callers rely on ---------------------------------------------------------------------------


def test_identify_an_unformatted_area(tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(MiB))
    found = identify(Volume(str(blank), 0, MiB))
    assert found == Identified(None, None, None)
    info, fs = found  # unpacks as the (info, fs) pair it always was
    assert info is None and fs is None


def test_refusals_before_anything_is_touched():
    """The words tests and people read; raised from the sizes alone."""
    with pytest.raises(FilesystemError, match=r"cannot shrink xfs from 384.0 MiB to 200.0 MiB: XFS can only grow"):
        shrink_plan_check("xfs", None, 200 * MiB, current_size=384 * MiB)
    with pytest.raises(FilesystemError, match=r"cannot resize btrfs to 200.0 MiB: .* no less than 256.0 MiB"):
        lookup("btrfs").shrink_check(None, 200 * MiB)
    with pytest.raises(
        FilesystemError,
        match=rf"cannot shrink ext3 to 40.0 MiB \({40 * MiB} bytes\): it needs "
        rf"at least 60.0 MiB \({60 * MiB} bytes\)",
    ):
        lookup("ext3").shrink_check(60 * MiB, 40 * MiB)
    lookup("ext4").shrink_check(None, 40 * MiB)  # minimum unknown: the resize itself decides
    with pytest.raises(FilesystemError, match="cannot resize a zfs_member filesystem: no resize method"):
        resize_filesystem("zfs_member", "/nonexistent", MiB)
    with pytest.raises(FilesystemError, match="swap cannot be mounted"):
        with lookup("swap").mounted("/nonexistent"):
            pass


def test_one_dumpe2fs_parser_reads_the_superblock_alone():
    """`dumpe2fs -h` (resize, the bad-block lookup) and full dumpe2fs (the map) go through the
    same parser."""
    header = (
        "Filesystem volume name:   root\nFilesystem UUID:          0b5e2a3c-93c4-4f7e-a1d2-5c6b7a8f9e01\n"
        "Filesystem features:      has_journal extent 64bit\nBlock count:              65536\n"
        "Free blocks:              1000\nFirst inode:              11\nBlock size:               4096\n"
    )
    d = parse_dumpe2fs(header, groups=False)
    assert (d.block_count, d.block_size, d.first_inode, d.label) == (65536, 4096, 11, "root")
    assert d.free == []
    with pytest.raises(FilesystemError, match="no block groups"):
        parse_dumpe2fs(header)
    with pytest.raises(FilesystemError, match="no block count"):
        parse_dumpe2fs("Filesystem volume name:   <none>\n", groups=False)

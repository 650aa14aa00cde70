"""Layout planning for a target of another size: pure data in, plan out, no disk.

Expected sizes in the tables were worked out by hand (docs/layout-planning.md shows the
arithmetic for the 4 GiB → 3 GiB proportional case); the invariant checks run on every plan."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

from rescue.errors import UsageError
from rescue.model.layout import DiskLayout, Partition
from rescue.model.plan import (
    BIOS_BOOT_GUID,
    ESP_GUID,
    MSR_GUID,
    SWAP_GUID,
    WINRE_GUID,
    LayoutPlan,
    PartFacts,
    _share,
    fixed_role,
    plan_layout,
    resize_margin,
)
from rescue.planview import layout_text

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TAIL_512 = 33 * 512  # backup GPT: 32 sectors of entries + header


def part(n, start_mib, size_mib, ss=512, **kw) -> Partition:
    per = MiB // ss
    return Partition(n, start_mib * per, (start_mib + size_mib) * per - 1, **kw)


def gpt4(swap_last: bool = True) -> DiskLayout:
    """4 GiB, 512-byte sectors: ESP, root, home and (optionally) swap at the end. Without
    swap, home runs to the last usable sector as `parted ... 100%` leaves it."""
    parts = [
        part(1, 1, 256, type_guid=ESP_GUID, name="EFI", flags=["boot", "esp"], uuid="u1"),
        part(2, 257, 2048, type_guid=LINUX, name="root", uuid="u2"),
    ]
    if swap_last:
        parts += [
            part(3, 2305, 1278, type_guid=LINUX, name="home", uuid="u3"),
            part(4, 3583, 512, type_guid=SWAP_GUID, name="swap", uuid="u4"),
        ]
    else:
        last_lba = 4 * GiB // 512 - 34
        parts.append(Partition(3, 2305 * 2048, last_lba, type_guid=LINUX, name="home", uuid="u3"))
    return DiskLayout("gpt", 512, 4 * GiB, "D1SK", parts)


def gpt4_facts(home_fs: str = "ext4") -> dict[int, PartFacts]:
    home = PartFacts("xfs", None, False, True) if home_fs == "xfs" else PartFacts("ext4", 300 * MiB, True, True)
    return {
        1: PartFacts("vfat", 40 * MiB, True, True),
        2: PartFacts("ext4", 800 * MiB, True, True),
        3: home,
        4: PartFacts("swap", 40 * KiB, True, True),
    }


def mbr4() -> DiskLayout:
    """4 GiB MBR: /boot primary (active), extended holding root, swap, home as logicals,
    each logical 1 MiB after the previous one (room for its EBR), as fdisk lays them out."""
    return DiskLayout(
        "msdos",
        512,
        4 * GiB,
        "0x1234abcd",
        [
            part(1, 1, 512, mbr_type=0x83, flags=["boot"], bootable=True),
            part(2, 513, 3583, mbr_type=0x05, kind="extended"),
            part(5, 514, 2048, mbr_type=0x83, kind="logical"),
            part(6, 2563, 512, mbr_type=0x82, kind="logical"),
            part(7, 3076, 1020, mbr_type=0x83, kind="logical"),
        ],
    )


def mbr4_facts() -> dict[int, PartFacts]:
    return {
        1: PartFacts("ext4", 100 * MiB, True, True),
        5: PartFacts("ext4", 800 * MiB, True, True),
        6: PartFacts("swap", 40 * KiB, True, True),
        7: PartFacts("ext4", 200 * MiB, True, True),
    }


IMAGES = {
    "gpt-swap": (gpt4, gpt4_facts),
    "gpt-home-to-end": (lambda: gpt4(swap_last=False), gpt4_facts),
    "gpt-xfs-home": (gpt4, lambda: gpt4_facts("xfs")),
    "mbr-logicals": (mbr4, mbr4_facts),
}


def usable(table: str, size: int, ss: int) -> tuple[int, int]:
    """[first, end) bytes a partition may use, computed independently of the planner."""
    n = size // ss
    if table == "gpt":
        entries = 16384 // ss
        return (2 + entries) * ss, (n - 1 - entries) * ss  # last usable LBA = n - 2 - entries
    return ss, min(n, 1 << 32) * ss


def check(plan: LayoutPlan, image: DiskLayout, facts: dict[int, PartFacts]) -> None:
    """What must hold for every plan that fits (and, where stated, for every plan)."""
    lay, ss = plan.layout, plan.sector_size
    assert lay.sector_size == ss and lay.table == image.table and lay.disk_id == image.disk_id
    # identity as in the image, partition for partition
    assert [p.number for p in lay.partitions] == [p.number for p in image.partitions]
    for old, new in zip(image.partitions, lay.partitions):  # every field but the geometry
        assert {**asdict(new), "start": 0, "end": 0} == {**asdict(old), "start": 0, "end": 0}
    # moves agree with the layout and name every data partition once
    assert sorted(m.number for m in plan.moves) == sorted(p.number for p in image.data_partitions())
    for m in plan.moves:
        p = next(p for p in lay.partitions if p.number == m.number)
        assert (m.new_start, m.new_size) == (p.offset(ss), p.size(ss))
        assert m.action == (
            "grow"
            if m.new_size > m.old_size and m.new_size - m.old_size >= ss
            else "shrink"
            if m.new_size < m.old_size
            else "move"
            if m.new_start != m.old_start
            else "keep"
        )
    if not plan.fits:
        assert plan.shortfall > 0
        return
    assert plan.shortfall == 0
    first, end = usable(image.table, plan.target_size, ss)
    data = sorted(lay.data_partitions(), key=lambda p: p.start)
    # image order kept
    assert [p.number for p in data] == [p.number for p in sorted(image.data_partitions(), key=lambda p: p.start)]
    for p in lay.partitions:
        assert p.offset(ss) % MiB == 0, f"#{p.number} starts at {p.offset(ss)}"
        assert p.offset(ss) >= first and (p.end + 1) * ss <= end, f"#{p.number} outside usable"
        assert p.length() > 0
    for a, b in zip(data, data[1:]):
        assert a.end < b.start, f"#{a.number} overlaps #{b.number}"
    ext = next((p for p in lay.partitions if p.kind == "extended"), None)
    logicals = [p for p in data if p.kind == "logical"]
    if ext is not None:
        prev = ext.start
        for lp in logicals:  # inside the extended, with room for each EBR before it
            assert lp.start >= prev + 1 and lp.end <= ext.end
            if plan.policy != "same":
                assert (lp.start - prev) * ss >= MiB
            prev = lp.end + 1
        for p in data:
            if p.kind == "primary":
                assert p.end < ext.start or p.start > ext.end
    # resized partitions: whole MiB, within what their filesystem allows
    for m in plan.moves:
        f = facts.get(m.number)
        if m.action == "shrink":
            assert m.new_size % MiB == 0
            assert f is not None and f.can_shrink and f.min_size is not None
            assert m.new_size >= f.min_size + resize_margin(f.min_size)
        if m.action == "grow":
            assert m.new_size % MiB == 0 and f is not None and f.can_grow


# ---- the main table: 4 GiB images onto 3, 4, 8 GiB under each policy --------------------

KEEP4 = ("keep", "keep", "keep", "keep")

CASES = [
    # image, policy, target GiB, fits, actions, new sizes (MiB) or None, new starts (MiB) or None
    ("gpt-swap", "same", 3, False, KEEP4, [256, 2048, 1278, 512], [1, 257, 2305, 3583]),
    ("gpt-swap", "same", 4, True, KEEP4, [256, 2048, 1278, 512], [1, 257, 2305, 3583]),
    ("gpt-swap", "same", 8, True, KEEP4, [256, 2048, 1278, 512], [1, 257, 2305, 3583]),
    (
        "gpt-swap",
        "proportional",
        3,
        True,
        ("keep", "shrink", "shrink", "move"),
        [256, 1417, 885, 512],
        [1, 257, 1674, 2559],
    ),
    ("gpt-swap", "proportional", 4, True, KEEP4, [256, 2048, 1278, 512], [1, 257, 2305, 3583]),
    (
        "gpt-swap",
        "proportional",
        8,
        True,
        ("keep", "grow", "grow", "move"),
        [256, 4570, 2852, 512],
        [1, 257, 4827, 7679],
    ),
    # home (last resizable) cannot give back 1 GiB above its minimum: root gives it back
    (
        "gpt-swap",
        "grow-last",
        3,
        True,
        ("keep", "shrink", "move", "move"),
        [256, 1024, 1278, 512],
        [1, 257, 1281, 2559],
    ),
    ("gpt-swap", "grow-last", 4, True, KEEP4, [256, 2048, 1278, 512], [1, 257, 2305, 3583]),
    # swap is last: home grows, swap keeps its size and moves to the end
    ("gpt-swap", "grow-last", 8, True, ("keep", "keep", "grow", "move"), [256, 2048, 5374, 512], [1, 257, 2305, 7679]),
    ("gpt-home-to-end", "same", 3, False, ("keep",) * 3, None, None),
    ("gpt-home-to-end", "same", 4, True, ("keep",) * 3, None, None),
    ("gpt-home-to-end", "same", 8, True, ("keep",) * 3, None, None),
    ("gpt-home-to-end", "proportional", 3, True, ("keep", "shrink", "shrink"), None, None),
    # home ends 16.5 KiB short of a MiB: it keeps its exact size, no pointless resize
    ("gpt-home-to-end", "proportional", 4, True, ("keep",) * 3, None, None),
    ("gpt-home-to-end", "proportional", 8, True, ("keep", "grow", "grow"), None, None),
    ("gpt-home-to-end", "grow-last", 3, True, ("keep", "keep", "shrink"), [256, 2048, 766], None),
    ("gpt-home-to-end", "grow-last", 4, True, ("keep",) * 3, None, None),
    ("gpt-home-to-end", "grow-last", 8, True, ("keep", "keep", "grow"), [256, 2048, 5886], None),
    # XFS never shrinks: root alone gives back what the target lacks
    (
        "gpt-xfs-home",
        "proportional",
        3,
        True,
        ("keep", "shrink", "move", "move"),
        [256, 1024, 1278, 512],
        [1, 257, 1281, 2559],
    ),
    ("gpt-xfs-home", "proportional", 8, True, ("keep", "grow", "grow", "move"), [256, 4570, 2852, 512], None),
    ("gpt-xfs-home", "grow-last", 3, True, ("keep", "shrink", "move", "move"), [256, 1024, 1278, 512], None),
]


@pytest.mark.parametrize(
    "name,policy,gib,fits,actions,sizes,starts", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}G" for c in CASES]
)
def test_four_gib_image(name, policy, gib, fits, actions, sizes, starts):
    image_of, facts_of = IMAGES[name]
    image, facts = image_of(), facts_of()
    plan = plan_layout(image, facts, gib * GiB, 512, policy)
    check(plan, image, facts)
    assert plan.fits is fits, layout_text(plan)
    assert tuple(m.action for m in plan.moves) == actions, layout_text(plan)
    if sizes is not None:
        assert [m.new_size for m in plan.moves] == [s * MiB for s in sizes], layout_text(plan)
    if starts is not None:
        assert [m.new_start for m in plan.moves] == [s * MiB for s in starts], layout_text(plan)
    if fits:
        assert plan.reason.startswith("fits")


def test_proportional_shares_in_proportion():
    """root and home shrink by the same factor (within the 1 MiB rounding)."""
    plan = plan_layout(gpt4(), gpt4_facts(), 3 * GiB, 512, "proportional")
    root, home = plan.moves[1], plan.moves[2]
    ratio_root, ratio_home = root.new_size / root.old_size, home.new_size / home.old_size
    assert abs(ratio_root - ratio_home) < 2 * MiB / home.old_size
    # and they use everything: the last partition ends in the last MiB before the backup GPT
    assert 3 * GiB - TAIL_512 - MiB < plan.moves[-1].new_start + plan.moves[-1].new_size


# ---- data that cannot fit: exact shortfall and a message that says why --------------------

MISFITS = [
    # image, policy, target, shortfall, partitions named in the reason
    ("gpt-swap", "same", 3 * GiB, 1023 * MiB + TAIL_512, ["#3 (home, ext4)", "#4 (swap)"]),
    ("gpt-home-to-end", "same", 3 * GiB, 1 * GiB, ["#3 (home, ext4)"]),
    # ESP 256 + swap 512 fixed; root ≥ 800+64, XFS home ≥ 1278: 769 + 864 + 1278 = 2911 MiB
    ("gpt-xfs-home", "proportional", 2560 * MiB, 351 * MiB + TAIL_512, ["#4 (swap)"]),
    # root at its minimum (864) after 1 + 256; home at its minimum (364); swap 512
    (
        "gpt-swap",
        "proportional",
        1 * GiB,
        (1 + 256 + 864 + 364 + 512 - 1024) * MiB + TAIL_512,
        ["#3 (home, ext4)", "#4 (swap)"],
    ),
    # grow-last: best candidate is root at 864 MiB, home and swap keep 1278 + 512
    (
        "gpt-swap",
        "grow-last",
        2 * GiB,
        (1 + 256 + 864 + 1278 + 512 - 2048) * MiB + TAIL_512,
        ["#3 (home, ext4)", "#4 (swap)"],
    ),
    # MBR: boot 164 (100+64) from 1 MiB, EBR gaps before each logical, 864 + 512 + 264
    ("mbr-logicals", "proportional", 1 * GiB, (1 + 164 + 1 + 864 + 1 + 512 + 1 + 264 - 1024) * MiB, ["#6", "#7"]),
]


@pytest.mark.parametrize(
    "name,policy,target,shortfall,named", MISFITS, ids=[f"{m[0]}-{m[1]}-{m[2] // MiB}M" for m in MISFITS]
)
def test_cannot_fit(name, policy, target, shortfall, named):
    image_of, facts_of = IMAGES[name]
    image, facts = image_of(), facts_of()
    plan = plan_layout(image, facts, target, 512, policy)
    check(plan, image, facts)
    assert not plan.fits
    assert plan.shortfall == shortfall, (plan.shortfall - shortfall, layout_text(plan))
    assert "needs at least" in plan.reason and "short by" in plan.reason
    for n in named:
        assert n in plan.reason, plan.reason
    # exact: that many more bytes and it fits, one sector fewer and it does not
    assert plan_layout(image, facts, target + shortfall, 512, policy).fits
    assert not plan_layout(image, facts, target + shortfall - 512, 512, policy).fits


def test_reason_reads_like_a_sentence():
    plan = plan_layout(gpt4(), gpt4_facts("xfs"), 2560 * MiB, 512, "proportional")
    assert plan.reason == ("#4 (swap) does not fit: needs at least 2.9 GiB, target has 2.5 GiB (short by 352 MiB)")
    assert any("#3 (home, xfs) needs at least 1.3 GiB (XFS cannot shrink)" == n for n in plan.notes), plan.notes


@pytest.mark.parametrize("policy", ["same", "proportional", "grow-last"])
@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("target", [0, 1, 512, MiB, 100 * MiB])
def test_tiny_targets_never_raise(name, policy, target):
    image_of, facts_of = IMAGES[name]
    image, facts = image_of(), facts_of()
    plan = plan_layout(image, facts, target, 512, policy)
    assert not plan.fits and plan.shortfall > 0
    check(plan, image, facts)
    assert layout_text(plan)


# ---- MBR --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy,gib", [(p, g) for p in ("same", "proportional", "grow-last") for g in (3, 4, 8)])
def test_mbr_logicals(policy, gib):
    image, facts = mbr4(), mbr4_facts()
    plan = plan_layout(image, facts, gib * GiB, 512, policy)
    check(plan, image, facts)
    assert plan.fits is (gib >= 4 or policy != "same"), layout_text(plan)
    lay = {p.number: p for p in plan.layout.partitions}
    ext, logicals = lay[2], [lay[5], lay[6], lay[7]]
    assert ext.kind == "extended" and all(p.kind == "logical" for p in logicals)
    if policy != "same" and plan.fits:
        # the extended partition is exactly as large as its logicals need
        assert ext.start == lay[1].end + 1 and ext.end == lay[7].end
        assert lay[5].start == ext.start + 2048  # first EBR at the extended's start
    assert lay[6].size(512) == 512 * MiB  # swap keeps its size


def test_mbr_boot_flag_is_not_an_esp():
    """'boot' on MBR means active, not EFI: /boot is resized like any ext4."""
    plan = plan_layout(mbr4(), mbr4_facts(), 3 * GiB, 512, "proportional")
    assert plan.moves[0].number == 1 and plan.moves[0].action == "shrink"


def test_mbr_grow_last_logical():
    plan = plan_layout(mbr4(), mbr4_facts(), 3 * GiB, 512, "grow-last")
    check(plan, mbr4(), mbr4_facts())
    # home (#7) would need to go below its minimum: root (#5) gives back the space
    assert [(m.number, m.action) for m in plan.moves] == [(1, "keep"), (5, "shrink"), (6, "move"), (7, "move")]
    assert plan.moves[1].new_size == 1024 * MiB


@pytest.mark.parametrize("policy", ["same", "proportional", "grow-last"])
def test_mbr_on_three_tib(policy):
    image, facts = mbr4(), mbr4_facts()
    plan = plan_layout(image, facts, 3 * TiB, 512, policy)
    check(plan, image, facts)
    assert plan.fits
    ends = [(p.end + 1) * 512 for p in plan.layout.partitions]
    assert max(ends) <= 2 * TiB
    assert any("2.0 TiB" in n and "MBR" in n for n in plan.notes), plan.notes
    if policy != "same":  # the resizing policies use the 2 TiB, not more, not much less
        assert max(ends) > 2 * TiB - 2 * MiB


# ---- sector sizes -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["same", "proportional", "grow-last"])
@pytest.mark.parametrize("gib", [3, 4, 8])
def test_4kn_target(policy, gib):
    image, facts = gpt4(), gpt4_facts()
    plan = plan_layout(image, facts, gib * GiB, 4096, policy)
    check(plan, image, facts)
    ref = plan_layout(image, facts, gib * GiB, 512, policy)
    assert plan.layout.sector_size == 4096
    # backup GPT on 4Kn is 5 sectors (header + 4 of entries): last usable LBA = n - 6
    n = gib * GiB // 4096
    if plan.fits:
        assert max(p.end for p in plan.layout.partitions) <= n - 6
    # the same bytes as on a 512-byte target of the same size: both tails fit in the last MiB
    assert [(m.new_start, m.new_size) for m in plan.moves] == [(m.new_start, m.new_size) for m in ref.moves]
    for p, q in zip(plan.layout.partitions, ref.layout.partitions):
        assert p.start * 8 == q.start and (p.end + 1) * 8 == q.end + 1
    assert any("4096-byte sectors" in n for n in plan.notes)
    assert any("#1 (EFI, vfat) is FAT formatted for 512-byte sectors" in n for n in plan.notes)


def test_4kn_image_onto_512_target():
    image = DiskLayout(
        "gpt",
        4096,
        4 * GiB,
        None,
        [part(1, 1, 256, ss=4096, type_guid=ESP_GUID), part(2, 257, 3000, ss=4096, type_guid=LINUX)],
    )
    facts = {1: PartFacts("vfat", MiB, True, True), 2: PartFacts("ext4", GiB, True, True)}
    plan = plan_layout(image, facts, 4 * GiB, 512, "same")
    check(plan, image, facts)
    assert [(p.start, p.end) for p in plan.layout.partitions] == [(2048, 257 * 2048 - 1), (257 * 2048, 3257 * 2048 - 1)]


def test_same_moves_a_start_the_target_cannot_hold():
    """An old GPT partition at LBA 34 (17 KiB) is no whole 4096-byte sector: it goes to
    1 MiB, the next one keeps its start."""
    image = DiskLayout(
        "gpt",
        512,
        GiB,
        None,
        [
            Partition(1, 34, 2047 * 2 + 33, type_guid=LINUX),  # 34 .. just under 2 MiB
            part(2, 4, 100, type_guid=LINUX),
        ],
    )
    facts = {1: PartFacts("ext4", MiB, True, True), 2: PartFacts("ext4", MiB, True, True)}
    plan = plan_layout(image, facts, GiB, 4096, "same")
    check(plan, image, facts)
    assert [m.action for m in plan.moves] == ["move", "keep"]
    assert plan.moves[0].new_start == MiB
    assert any("#1" in n and "moves to 1 MiB" in n for n in plan.notes)


# ---- which partitions keep their size -----------------------------------------------------

ANY = PartFacts("ext4", MiB, True, True)
FIXED = [
    ("gpt", Partition(1, 2048, 4095, type_guid=ESP_GUID.lower()), ANY, "EFI system"),
    ("gpt", Partition(1, 2048, 4095, type_guid=LINUX, flags=["esp"]), ANY, "EFI system"),
    ("gpt", Partition(1, 2048, 4095, type_guid=LINUX, flags=["boot"]), ANY, "EFI system"),
    ("msdos", Partition(1, 2048, 4095, mbr_type=0xEF), ANY, "EFI system"),
    ("gpt", Partition(1, 2048, 4095, type_guid=BIOS_BOOT_GUID), ANY, "BIOS boot"),
    ("gpt", Partition(1, 2048, 4095, flags=["bios_grub"]), ANY, "BIOS boot"),
    ("gpt", Partition(1, 2048, 4095, type_guid=MSR_GUID), ANY, "Microsoft reserved"),
    ("gpt", Partition(1, 2048, 4095, type_guid=WINRE_GUID), ANY, "Windows recovery"),
    ("msdos", Partition(1, 2048, 4095, mbr_type=0x27), ANY, "Windows recovery"),
    ("gpt", Partition(1, 2048, 4095, type_guid=SWAP_GUID), ANY, "swap"),
    ("msdos", Partition(1, 2048, 4095, mbr_type=0x82), ANY, "swap"),
    ("msdos", Partition(1, 2048, 4095, mbr_type=0x83), None, "unknown"),
    ("msdos", Partition(1, 2048, 4095, mbr_type=0x83), PartFacts("zfs_member"), "cannot be resized"),
]


@pytest.mark.parametrize("table,p,facts,role", FIXED)
def test_fixed_roles(table, p, facts, role):
    assert role in fixed_role(p, table, facts)


@pytest.mark.parametrize(
    "table,p",
    [
        ("gpt", Partition(1, 2048, 4095, type_guid=LINUX)),
        ("msdos", Partition(1, 2048, 4095, mbr_type=0x83, flags=["boot"], bootable=True)),
        ("msdos", Partition(1, 2048, 4095, mbr_type=0x07)),
    ],
)
def test_resizable_roles(table, p):
    assert fixed_role(p, table, ANY) is None


@pytest.mark.parametrize("policy", ["proportional", "grow-last"])
@pytest.mark.parametrize(
    "facts3", [None, PartFacts("ext4", None, True, True), PartFacts("ntfs", 100 * MiB, False, False)]
)
def test_unknown_or_unshrinkable_home_never_shrinks(policy, facts3):
    """No facts, an unknown minimum, or facts that forbid resizing: the partition keeps at
    least its size (it may grow only when the facts say so)."""
    image, facts = gpt4(), gpt4_facts()
    facts[3] = facts3
    if facts3 is None:
        del facts[3]
    for gib in (3, 8):
        plan = plan_layout(image, facts, gib * GiB, 512, policy)
        check(plan, image, facts)
        home = plan.moves[2]
        assert home.new_size >= home.old_size
        if facts3 is None or not facts3.can_grow:
            assert home.new_size == home.old_size


# ---- the proportional share -------------------------------------------------------------

SHARES = [
    # total, weights, lo, hi, expected
    (10, [1, 1], [0, 0], [None, None], [5, 5]),
    (10, [1, 2], [0, 0], [None, None], [3, 7]),  # 3.33 / 6.67: the remainder to the larger fraction
    (10, [1, 1], [7, 0], [None, None], [7, 3]),  # one at its minimum, the other takes the rest
    (10, [1, 1], [0, 0], [2, None], [2, 8]),  # one at its cap
    (10, [1, 1], [0, 0], [2, 3], [2, 3]),  # every one capped: the rest stays free
    (12, [3, 1, 2], [0, 5, 0], [None, None, 2], [5, 5, 2]),  # a minimum and a cap at once
    (9, [1, 1, 1], [3, 3, 3], [None, None, None], [3, 3, 3]),  # exactly the minimums
]


@pytest.mark.parametrize("total,weights,lo,hi,expected", SHARES)
def test_share(total, weights, lo, hi, expected):
    got = _share(total, weights, lo, hi)
    assert got == expected
    assert all(g >= l for g, l in zip(got, lo))
    assert all(h is None or g <= h for g, h in zip(got, hi))


# ---- random layouts: the invariants, and the shortfall is exact ----------------------------


def random_case(seed: int):
    """1-6 partitions with gaps, roles and facts drawn at random; MBR ones may put the
    tail in an extended partition."""
    rnd = random.Random(seed)
    table = rnd.choice(["gpt", "msdos"])
    iss = rnd.choice([512, 4096]) if table == "gpt" else 512
    per = MiB // iss
    count = rnd.randint(1, 6)
    primaries = count if table == "gpt" else rnd.randint(0 if count > 1 else 1, min(3, count))
    parts, facts, cur = [], {}, 1
    ext = None
    for i in range(count):
        logical = i >= primaries
        if logical and ext is None:
            cur += rnd.choice([0, 2])
            ext = Partition(primaries + 1, cur * per, 0, mbr_type=0x0F, kind="extended")
            parts.append(ext)
        if logical:
            cur += 1  # the EBR's MiB
        cur += rnd.choice([0, 0, 1, 7])  # gaps the image may have
        size = rnd.choice([1, 8, 100, 300, 1000, 2500])
        n = i + 1 if not logical else 5 + i - primaries
        role = rnd.random()
        if role < 0.15:
            kw = {"type_guid": ESP_GUID} if table == "gpt" else {"mbr_type": 0xEF}
        elif role < 0.25:
            kw = {"type_guid": SWAP_GUID} if table == "gpt" else {"mbr_type": 0x82}
        else:
            kw = {"type_guid": LINUX} if table == "gpt" else {"mbr_type": 0x83}
        parts.append(Partition(n, cur * per, (cur + size) * per - 1, kind="logical" if logical else "primary", **kw))
        fs = rnd.choice(["ext4", "xfs", "ntfs", None, "btrfs"])
        if fs is not None:
            facts[n] = PartFacts(fs, rnd.choice([None, size * MiB // 4, size * MiB // 2]), fs != "xfs", True)
        cur += size
    if ext is not None:
        ext.end = cur * per - 1
    size = (cur + 2) * MiB
    image = DiskLayout(table, iss, size, None, parts)
    target = rnd.choice([size // 3, size // 2, size - 5 * MiB, size, size + 3 * MiB, size * 3])
    target = max(0, target - target % 4096)
    return image, facts, target, rnd.choice([512, 4096])


@pytest.mark.parametrize("seed", range(200))
def test_random_layouts(seed):
    image, facts, target, ss = random_case(seed)
    numbers = [p.number for p in image.partitions]
    assert len(numbers) == len(set(numbers))
    for policy in ("same", "proportional", "grow-last"):
        plan = plan_layout(image, facts, target, ss, policy)
        check(plan, image, facts)
        if not plan.fits:
            bigger = plan_layout(image, facts, target + plan.shortfall, ss, policy)
            assert bigger.fits, layout_text(plan)
            assert not plan_layout(image, facts, target + plan.shortfall - ss, ss, policy).fits


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError):
        plan_layout(gpt4(), gpt4_facts(), 4 * GiB, 512, "biggest")
    with pytest.raises(UsageError):
        plan_layout(gpt4(), gpt4_facts(), 4 * GiB, 520, "same")


def test_render_shows_every_partition():
    plan = plan_layout(mbr4(), mbr4_facts(), 3 * GiB, 512, "proportional")
    text = layout_text(plan)
    assert "fits" in text.splitlines()[0]
    for n in ("1", "2", "5", "6", "7"):
        assert any(line.split()[0] == n for line in text.splitlines()[1:8])
    assert "extended" in text

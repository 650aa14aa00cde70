"""How a plan looks to people and programs: the drive before and after as two bars to scale,
the table of partitions, the verdict and notes, every step it will carry out; and the same as
JSON. The CLI prints these lines and the wizard draws them; nothing parses their text.

ASCII only (the Linux console's font and a serial line), and no line wider than the width
asked for except table rows, which the wizard narrows as one block."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rescue.model.actions import Action
from rescue.model.layout import DiskLayout, Partition
from rescue.model.plan import LayoutPlan, Move, human, mib, names

if TYPE_CHECKING:
    from rescue.imaging.restore import RestorePlan

WIDTH = 78
Line = tuple[str, str]  # (kind, text): heading, bar, table, reason, note, step


def _segment_label(p: Partition, fstype: str | None) -> str:
    return f"{p.number} {fstype or ''} {p.name or ''}".strip()


def bars(before: DiskLayout, after: DiskLayout, fstypes: dict[int, str | None], width: int = WIDTH) -> list[str]:
    """The drive before and after, each a bar whose length is to scale with the larger drive:
    a smaller target draws a shorter bar. Each partition is a segment starting with "|" and
    its number, filesystem and name as far as they fit; "." is space outside partitions."""
    prefix = 17  # "before  12.3 GiB "
    room = max(10, width - prefix - 2)
    scale = max(before.size, after.size, 1)
    out = []
    for label, layout in (("before", before), ("after", after)):
        n = max(1, round(room * layout.size / scale))
        cells = ["."] * n
        ss = layout.sector_size
        for p in sorted(layout.data_partitions(), key=lambda q: q.start):
            c0 = min(n - 1, p.offset(ss) * n // max(layout.size, 1))
            c1 = max(c0 + 1, min(n, (p.offset(ss) + p.size(ss)) * n // max(layout.size, 1)))
            text = ("|" + _segment_label(p, fstypes.get(p.number)))[: c1 - c0]
            for i in range(c0, c1):
                cells[i] = "-"
            for i, ch in enumerate(text):
                cells[c0 + i] = ch
        out.append(f"{label:<6} {human(layout.size):>9} [{''.join(cells)}]")
    return out


def table(lp: LayoutPlan) -> list[str]:
    """One row per partition: old and new place and size, and what happens to it."""
    rows = [("#", "partition", "old start", "old size", "new start", "new size", "action")]
    moves: dict[int, Move] = {m.number: m for m in lp.moves}
    for p in sorted(lp.layout.partitions, key=lambda q: q.start):  # extended first
        m = moves.get(p.number)
        if m is None:
            rows.append(
                (
                    str(p.number),
                    "extended",
                    "",
                    "",
                    mib(p.offset(lp.sector_size)),
                    mib(p.size(lp.sector_size)),
                    "holds the logicals",
                )
            )
            continue
        name = ", ".join(names(p, m.fstype) + (["logical"] if p.kind == "logical" else [])) or "-"
        rows.append(
            (str(m.number), name, mib(m.old_start), mib(m.old_size), mib(m.new_start), mib(m.new_size), m.action)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:6], widths[2:6])]
        cells.append(r[6])
        out.append("  " + "  ".join(cells).rstrip())
    return out


def lines(
    lp: LayoutPlan | None,
    before: DiskLayout | None,
    reason: str,
    notes: list[str],
    actions: list[Action],
    width: int = WIDTH,
) -> list[Line]:
    """Everything a person reads before confirming, in order."""
    out: list[Line] = []
    if lp is not None:
        out.append(
            (
                "heading",
                f"plan ({lp.policy}) for a {human(lp.target_size)} target, {lp.layout.table}, "
                f"{lp.sector_size}-byte sectors: {'fits' if lp.fits else 'DOES NOT FIT'}",
            )
        )
        if before is not None:
            fstypes = {m.number: m.fstype for m in lp.moves}
            out += [("bar", b) for b in bars(before, lp.layout, fstypes, width)]
        out += [("table", t) for t in table(lp)]
    out.append(("reason", reason))
    out += [("note", n) for n in notes]
    if actions:
        out.append(("heading", "steps:"))
        out += [
            ("step", f"{i}. {a.what}" + ("" if a.aborts else " (a failure is a warning)"))
            for i, a in enumerate(actions, 1)
        ]
    return out


def layout_text(lp: LayoutPlan) -> str:
    """A layout plan alone as text (heading, table, verdict, notes): for logs and test messages."""
    return "\n".join(line for _, line in lines(lp, None, lp.reason, lp.notes, []))


def plan_lines(plan: RestorePlan, width: int = WIDTH) -> list[Line]:
    return lines(plan.layout_plan, plan.source_layout, plan.reason, plan.notes, plan.actions, width)


def text(plan: RestorePlan) -> str:
    """The plan for a terminal: notes and steps indented under the table."""
    prefix = {"note": "  - ", "step": "  "}
    return "\n".join(prefix.get(kind, "") + line for kind, line in plan_lines(plan))


def to_json(plan: RestorePlan) -> dict[str, object]:
    from dataclasses import asdict

    return {
        "fits": plan.fits,
        "reason": plan.reason,
        "policy": plan.policy,
        "target": plan.target_path,
        "target_size": plan.target_size,
        "layout": plan.layout.to_dict(),
        "placements": {k: asdict(v) for k, v in plan.placements.items()},
        "scratch": asdict(plan.scratch) if plan.scratch else None,
        "notes": plan.notes,
        "actions": [a.to_dict() for a in plan.actions],
    }

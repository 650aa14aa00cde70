"""Thin screens: each is built from (controller, data) and only calls controller methods.
All text is laid out for 80 columns."""

from __future__ import annotations

from typing import Any, Sequence

import urwid

from rescue.imaging.progress import fmt_bytes, fmt_duration
from rescue.model.layout import DiskLayout
from rescue.tui.backend import DriveInfo, ImageInfo, PartInfo, Plan, RepoInfo
from rescue.tui.widgets import ActionEdit, Choice, Screen, button, disabled

LIST_HELP = "Up/Down: move  Enter: choose  Tab: buttons  Esc: back"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 2] + ".."


def drive_line(d: DriveInfo) -> str:
    return f"{d.name:<8}{clip(d.model, 28):<28} {fmt_bytes(d.size):>10}  {clip(d.serial, 16):<16} {d.bus}"


def part_lines(parts: Sequence[PartInfo], limit: int = 5) -> list[str]:
    lines = [f"  {clip(p.name, 12):<12} {fmt_bytes(p.size):>10}  {clip(p.fstype or '-', 8):<8} "
             f"{clip(p.label, 30)}" for p in parts[:limit]]
    if len(parts) > limit:
        lines.append(f"  ... and {len(parts) - limit} more")
    return lines or ["  (no partitions)"]


def image_lines(im: ImageInfo) -> str:
    """Two lines of at most 74 columns: name and verification; date, source drive, data."""
    verified = {True: "verified", False: "VERIFY FAILED", None: "not verified"}[im.verified]
    date = im.created.replace("T", " ")[:16]
    return (f"{clip(im.name, 58):<58} {verified:>15}\n"
            f"  {date}  source {clip(im.source_model, 18)}, {fmt_bytes(im.source_size)}"
            f"  data {fmt_bytes(im.data_bytes)}")


class MainMenuView(Screen):
    def __init__(self, c: Any, message: str = ""):
        items = [Choice("Restore an image to a drive", c.restore),
                 Choice("Capture a drive into an image", c.capture),
                 urwid.Divider(),
                 Choice("Shell (leave the wizard for a command line)", c.shell),
                 Choice("Reboot", c.reboot),
                 Choice("Power off", c.poweroff)]
        super().__init__("Main menu", items, excerpt="What do you want to do?",
                         help="Up/Down: move  Enter: choose")
        if message:
            self.set_status(message, error=True)


class RepoView(Screen):
    def __init__(self, c: Any, repos: Sequence[RepoInfo], step: str = ""):
        rows: list[urwid.Widget] = []
        for r in repos:
            where = f"  (on {r.drive})" if r.drive else ""
            ro = "  read-only" if r.read_only else ""
            rows.append(Choice(f"{r.path}{where}{ro}", lambda r=r: c.choose(r.path)))
        if not repos:
            rows.append(urwid.Text("No image repository was found on any drive. Plug in the drive "
                                   "that holds your images and choose Rescan, or type its path."))
        rows += [urwid.Divider(), ActionEdit("Type a path...: ", c.choose)]
        super().__init__("Restore: where are the images?", rows,
                         [button("Rescan", c.rescan), button("Back", c.back)],
                         excerpt="Image repositories found on this machine:",
                         on_back=c.back, help=LIST_HELP, step=step)


class ImageView(Screen):
    def __init__(self, c: Any, repo: RepoInfo, images: Sequence[ImageInfo], step: str = ""):
        rows: list[urwid.Widget] = [Choice(image_lines(im), lambda im=im: c.choose(im)) for im in images]
        if not images:
            rows.append(urwid.Text(("warn", "This repository holds no complete images.")))
        super().__init__("Restore: choose an image", rows, [button("Back", c.back)],
                         excerpt=f"Images in {repo.path}:", on_back=c.back, help=LIST_HELP, step=step)


class DriveListView(Screen):
    """Drives to choose from; refused drives are greyed with the reason. The partitions of
    the highlighted drive are shown below the list."""

    def __init__(self, c: Any, title: str, excerpt: str, drives: Sequence[tuple[DriveInfo, str | None]],
                 step: str = ""):
        self.c = c
        rows: list[urwid.Widget] = []
        self.row_drive: dict[int, DriveInfo] = {}
        for d, reason in drives:
            if reason is None:
                self.row_drive[len(rows)] = d
                rows.append(Choice(drive_line(d), lambda d=d: c.choose(d)))
            else:
                rows.append(disabled(f"{drive_line(d)}\n  not offered: {reason}"))
        if not self.row_drive:
            rows.append(urwid.Text(("warn", "No drive can be used. Plug in a drive and choose Rescan.")))
        walker = urwid.SimpleFocusListWalker(rows)
        self.walker = walker
        self.parts = urwid.Text("")
        body = urwid.Pile([("weight", 1, urwid.ListBox(walker)), ("pack", urwid.Divider("-")),
                           ("pack", self.parts)])
        super().__init__(title, body, [button("Rescan", c.rescan), button("Back", c.back)],
                         excerpt=excerpt, on_back=c.back, help=LIST_HELP, step=step)
        first = min(self.row_drive, default=None)
        if first is not None:
            walker.set_focus(first)
        walker.set_focus_changed_callback(self._focus_changed)
        self._focus_changed(walker.focus)

    def _focus_changed(self, pos: int | None) -> None:
        d = self.row_drive.get(pos) if pos is not None else None
        if d is None:
            self.parts.set_text("")
            return
        lines = [f"Now on {d.name}:"] + part_lines(self.c.partitions(d))
        self.parts.set_text("\n".join(lines))


def layout_lines(layout: DiskLayout | None, fs: dict[int, str], limit: int = 8) -> list[str]:
    if layout is None:
        return ["(nothing readable)"]
    out = [f"{layout.table} table, {fmt_bytes(layout.size)}"]
    for p in layout.data_partitions()[:limit]:
        what = fs.get(p.number) or p.name or "-"
        out.append(f"{p.number:>2} {fmt_bytes(p.size(layout.sector_size)):>10} {clip(what, 20)}")
    if len(layout.data_partitions()) > limit:
        out.append(f"... and {len(layout.data_partitions()) - limit} more")
    if not layout.partitions:
        out.append("(no partitions)")
    return out


class PlanView(Screen):
    def __init__(self, c: Any, target: DriveInfo, image: ImageInfo, plan: Plan,
                 current: Sequence[PartInfo], message: str = "", step: str = ""):
        now = [("heading", f"Now on {target.name}")]
        now_lines = ([f"{fmt_bytes(target.size)} drive"] +
                     [f"{clip(p.name, 10):<10} {fmt_bytes(p.size):>10} {clip(p.fstype or '-', 12)}"
                      for p in current[:8]]) if current else layout_lines(plan.current, {})
        after = [("heading", "After the restore")]
        cols = urwid.Columns([
            urwid.Pile([urwid.Text(now)] + [urwid.Text(x) for x in now_lines]),
            urwid.Pile([urwid.Text(after)] + [urwid.Text(x) for x in layout_lines(plan.layout, plan.new_fs)]),
        ], dividechars=3)
        rows: list[urwid.Widget] = [cols, urwid.Divider()]
        if plan.fits:
            rows.append(urwid.Text(("warn", f"Everything now on {target.name} will be replaced. "
                                            f"{fmt_bytes(plan.write_bytes)} of data will be written.")))
            buttons = [button("Continue", c.done), button("Back", c.back)]
        else:
            rows.append(urwid.Text(("error", f"Cannot restore here: {plan.reason}")))
            buttons = [button("Back", c.back)]
        super().__init__(f"Restore: the plan for {target.name}", [urwid.Pile(rows)], buttons,
                         excerpt=f"Image {image.name} onto {target.name} ({clip(target.model, 30)}):",
                         on_back=c.back, help="Tab: buttons  Enter: choose  Esc: back", step=step)
        self.focus_buttons()
        if message:
            self.set_status(message, error=True)


class ConfirmView(Screen):
    def __init__(self, c: Any, target: DriveInfo, step: str = ""):
        self.edit = ActionEdit(f"Type {target.name} to erase it and restore: ", c.confirm)
        rows = [urwid.Text(("warn", f"All data on {target.name} ({clip(target.model, 30)}, "
                                    f"{fmt_bytes(target.size)}, serial {target.serial}) will be lost.")),
                urwid.Divider(),
                urwid.Text(f"Type the drive's name, {target.name}, and press Enter. "
                           "Anything else goes back without writing."),
                urwid.Divider(), self.edit]
        super().__init__("Restore: confirm", rows,
                         [button("Erase and restore", lambda: c.confirm(self.edit.edit_text)),
                          button("Back", c.back)],
                         on_back=c.back, help="Type the name, Enter: go on  Esc: back", step=step)


class ProgressView(Screen):
    def __init__(self, c: Any, title: str, intro: str, step: str = ""):
        self.area = urwid.Text("Starting...")
        self.area_bar = urwid.ProgressBar("bar", "bar done")
        self.total_bar = urwid.ProgressBar("bar", "bar done")
        self.numbers = urwid.Text("")
        self.phase = urwid.Text("")
        rows = [urwid.Text(intro), urwid.Divider(), self.phase, urwid.Divider(), self.area,
                self.area_bar, urwid.Divider(), urwid.Text("Overall:"), self.total_bar,
                urwid.Divider(), self.numbers]
        super().__init__(title, rows, on_back=c.back, help="Esc: cancel", step=step)

    def update(self, p: Any) -> None:
        self.phase.set_text(("heading", f"Phase: {p.phase}"))
        self.area.set_text(f"Area: {p.area or '-'}  ({fmt_bytes(p.area_done)} of {fmt_bytes(p.area_total)})")
        self.area_bar.set_completion(100.0 * p.area_done / p.area_total if p.area_total else 100.0)
        self.total_bar.set_completion(100.0 * p.done / p.total if p.total else 100.0)
        self.numbers.set_text(f"{fmt_bytes(p.done)} of {fmt_bytes(p.total)}   {p.rate / 1e6:.1f} MB/s"
                              f"   time left {fmt_duration(p.eta)}")


class DoneView(Screen):
    def __init__(self, c: Any, title: str, lines: Sequence[Any], ok: bool):
        rows = [urwid.Text(line) for line in lines]
        super().__init__(title, rows, [button("Main menu", c.menu), button("Reboot", c.reboot),
                                       button("Power off", c.poweroff)],
                         on_back=c.menu, help="Tab/Left/Right: buttons  Enter: choose  Esc: main menu")
        self.focus_buttons()


class DestView(Screen):
    def __init__(self, c: Any, repos: Sequence[tuple[RepoInfo, str, str | None]], step: str = ""):
        rows: list[urwid.Widget] = []
        for r, free, reason in repos:
            line = f"{clip(r.path, 50):<50} {free:>12} free"
            if reason is None:
                rows.append(Choice(line, lambda r=r: c.choose(r.path)))
            else:
                rows.append(disabled(f"{line}\n  not offered: {reason}"))
        if not repos:
            rows.append(urwid.Text("No image repository was found. Type the path of a mounted, "
                                   "writable directory; a new repository is made there."))
        rows += [urwid.Divider(), ActionEdit("Type a path...: ", c.choose)]
        super().__init__("Capture: where to store the image", rows,
                         [button("Rescan", c.rescan), button("Back", c.back)],
                         excerpt="Repositories found (the image goes into one of these):",
                         on_back=c.back, help=LIST_HELP, step=step)


class NameView(Screen):
    def __init__(self, c: Any, default: str, source: DriveInfo, dest: str, step: str = ""):
        self.edit = ActionEdit("Image name: ", c.choose, default)
        rows = [urwid.Text(f"Capture {source.name} ({clip(source.model, 30)}, {fmt_bytes(source.size)})"),
                urwid.Text(f"into {dest}"), urwid.Divider(),
                urwid.Text("Letters, digits, dot, dash and underscore only."), urwid.Divider(), self.edit]
        super().__init__("Capture: name the image", rows,
                         [button("Start capture", lambda: c.choose(self.edit.edit_text)),
                          button("Back", c.back)],
                         on_back=c.back, help="Type the name, Enter: start  Esc: back", step=step)

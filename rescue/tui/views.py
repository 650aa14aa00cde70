"""Thin screens: each is built from (controller, data) and only calls controller methods.
All text is laid out for 80 columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import urwid

from rescue import planview
from rescue.browse.copy import FileEntry
from rescue.engine import POLICIES, DestInfo, DriveInfo, ImageInfo, ImagePart, PartInfo, RepoInfo
from rescue.hw.destination import REPO_FOLDER
from rescue.imaging.progress import fmt_bytes, fmt_duration
from rescue.imaging.restore import RestorePlan as Plan
from rescue.repo.manifest import printable
from rescue.tui.widgets import ActionEdit, Choice, Screen, ScrollBox, button, disabled, disabled_button

WIDTH = 78  # columns inside the screen's 1-column margins
MiB = 1 << 20

LIST_HELP = "Up/Down: move  Enter: choose  Tab: buttons  Esc: back"


def ascii_text(text: str) -> str:
    """The engine's words for a screen that may lack non-ASCII glyphs."""
    for a, b in (
        ("\u2192", "->"),
        ("\u2190", "<-"),
        ("\u2013", "-"),
        ("\u2014", "-"),
        ("\u00d7", "x"),
        ("\u2026", "..."),
    ):
        text = text.replace(a, b)
    return text.encode("ascii", "replace").decode()


def sentence(text: str) -> str:
    """An engine message ("an image named x already exists") as a status line."""
    text = ascii_text(text)
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 2] + ".."


def drive_line(d: DriveInfo) -> str:
    """One line; a second one when an unfinished restore or clone left it partly written."""
    line = f"{d.name:<8}{clip(d.model, 28):<28} {fmt_bytes(d.size):>10}  {clip(d.serial, 16):<16} {d.bus}"
    if d.partly_written:
        line += "\n  " + clip(ascii_text(f"PARTLY WRITTEN: {d.partly_written}"), 72)
    return line


def part_lines(parts: Sequence[PartInfo], limit: int = 5) -> list[str]:
    lines = [
        f"  {clip(p.name, 12):<12} {fmt_bytes(p.size):>10}  {clip(p.fstype or '-', 8):<8} {clip(p.label, 30)}"
        for p in parts[:limit]
    ]
    if len(parts) > limit:
        lines.append(f"  ... and {len(parts) - limit} more")
    return lines or ["  (no partitions)"]


def image_lines(im: ImageInfo) -> str:
    """Two lines of at most 74 columns: name and verification; date, source drive, data."""
    verified = {True: "verified", False: "VERIFY FAILED", None: "not verified"}[im.verified]
    date = im.created.replace("T", " ")[:16]
    return (
        f"{clip(im.name, 58):<58} {verified:>15}\n"
        f"  {date}  source {clip(im.source_model, 18)}, {fmt_bytes(im.source_size)}"
        f"  data {fmt_bytes(im.data_bytes)}"
    )


class MainMenuView(Screen):
    def __init__(self, c: Any, message: str = "", network: str = ""):
        self.network = urwid.Text(network)
        items = [
            Choice("Restore an image to a drive", c.restore),
            Choice("Capture a drive into an image", c.capture),
            Choice("Clone a drive onto another drive", c.clone),
            Choice("Browse an image and copy files out of it", c.browse),
            urwid.Divider(),
            Choice("Shell (leave the wizard for a command line)", c.shell),
            Choice("Reboot", c.reboot),
            Choice("Power off", c.poweroff),
            urwid.Divider(),
            self.network,
        ]
        super().__init__("Main menu", items, excerpt="What do you want to do?", help="Up/Down: move  Enter: choose")
        if message:
            self.set_status(message, error=True)


class RepoView(Screen):
    def __init__(
        self, c: Any, repos: Sequence[RepoInfo], step: str = "", title: str = "Restore: where are the images?"
    ):
        rows: list[urwid.Widget] = []
        for r in repos:
            where = f"  (on {r.drive})" if r.drive else ""
            ro = "  Clonezilla image" if r.clonezilla else "  read-only" if r.read_only else ""
            rows.append(Choice(f"{r.path}{where}{ro}", lambda r=r: c.choose(r.path)))
        if not repos:
            rows.append(
                urwid.Text(
                    "No image repository was found on any drive. Plug in the drive "
                    "that holds your images and choose Rescan, open a share, or type its path."
                )
            )
        self.edit = ActionEdit("Type a path...: ", c.choose)
        rows += [urwid.Divider(), self.edit, *share_rows(c), *remote_rows(c)]
        super().__init__(
            title,
            rows,
            [button("Rescan", c.rescan), button("Back", c.back)],
            excerpt="Image repositories found on this machine:",
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )


class ImageView(Screen):
    def __init__(
        self,
        c: Any,
        repo: RepoInfo,
        images: Sequence[ImageInfo],
        step: str = "",
        title: str = "Restore: choose an image",
    ):
        rows: list[urwid.Widget] = [Choice(image_lines(im), lambda im=im: c.choose(im)) for im in images]
        if not images:
            rows.append(urwid.Text(("warn", "This repository holds no complete images.")))
        super().__init__(
            title,
            rows,
            [button("Back", c.back)],
            excerpt=f"Images in {repo.path}:",
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )


class DriveListView(Screen):
    """Drives to choose from; refused drives are greyed with the reason. The partitions of
    the highlighted drive are shown below the list."""

    def __init__(
        self, c: Any, title: str, excerpt: str, drives: Sequence[tuple[DriveInfo, str | None]], step: str = ""
    ):
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
        body = urwid.Pile([("weight", 1, urwid.ListBox(walker)), ("pack", urwid.Divider("-")), ("pack", self.parts)])
        super().__init__(
            title,
            body,
            [button("Rescan", c.rescan), button("Back", c.back)],
            excerpt=excerpt,
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )
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


def squeeze_table(lines: list[str], width: int = WIDTH) -> list[str]:
    """Narrow a space-aligned table to `width` without breaking its columns: character columns
    that are blank in every row are padding, and runs of them shrink (to one blank) until the
    widest row fits. Whatever is still too wide is cut with ".."."""
    if not lines:
        return []
    rows = [line.rstrip() for line in lines]
    span = max(len(r) for r in rows)
    grid = [r.ljust(span) for r in rows]
    blank = [all(r[i] == " " for r in grid) for i in range(span)]
    keep = [True] * span
    over = span - width
    # Shrink the widest runs of blank columns first, one column at a time, never below one.
    runs = []
    i = 0
    while i < span:
        if blank[i]:
            j = i
            while j < span and blank[j]:
                j += 1
            if i > 0 and j < span:  # leading indent and trailing blanks stay as they are
                runs.append([i, j - i])
            i = j
        else:
            i += 1
    while over > 0 and runs:
        runs.sort(key=lambda r: -r[1])
        run = runs[0]
        if run[1] <= 1:
            break
        run[1] -= 1
        keep[run[0] + run[1]] = False
        over -= 1
    out = ["".join(ch for ch, k in zip(r, keep) if k).rstrip() for r in grid]
    return [clip(r, width) for r in out]


def plan_lines(plan: Plan, width: int = WIDTH) -> list[Any]:
    """The engine's plan lines (rescue.planview) for the screen: table rows narrowed as one
    block, the bars clipped, notes and steps left to wrap. The verdict is shown above the
    table already, in the plan's own words."""
    out: list[Any] = []
    block: list[str] = []
    for kind, line in [(k, ascii_text(t)) for k, t in planview.plan_lines(plan)] or [("reason", plan.reason)]:
        if kind == "table":
            block.append(line)
            continue
        if block:
            out += [("table", r) for r in squeeze_table(block, width)]
            block = []
        if kind == "bar":
            out.append(("table", clip(line, width)))
        elif kind == "note":
            out.append(("note", "  - " + line))
        elif kind != "reason":
            out.append(("text", line))
    out += [("table", r) for r in squeeze_table(block, width)] if block else []
    return out


def current_text(name: str, parts: Sequence[PartInfo]) -> str:
    if not parts:
        return f"Now on {name}: no partitions."
    shown = ", ".join(
        f"{p.name} {fmt_bytes(p.size)} {p.fstype or '-'}" + (f" {p.label}" if p.label else "") for p in parts[:4]
    )
    more = f" and {len(parts) - 4} more" if len(parts) > 4 else ""
    return f"Now on {name}: {shown}{more}."


class PlanView(Screen):
    """The engine's plan for one target, a row of layout policies that re-plans when one is
    chosen, and Continue only when the plan fits. Restore and clone share it."""

    def __init__(
        self,
        c: Any,
        title: str,
        excerpt: str,
        target: DriveInfo,
        plan: Plan,
        policy: str,
        current: Sequence[PartInfo],
        message: str = "",
        step: str = "",
        focus_policy: bool = False,
    ):
        self.radios: list[urwid.RadioButton] = []
        group: list = []
        for p in POLICIES:
            self.radios.append(
                urwid.RadioButton(group, p, p == policy, on_state_change=lambda _r, on, p=p: on and c.set_policy(p))
            )
        cells: list = [("fixed", 7, urwid.Text("Layout:"))]
        cells += [("fixed", len(p) + 4, urwid.AttrMap(r, None, "focus")) for p, r in zip(POLICIES, self.radios)]
        self.policy_row = urwid.Columns(cells, dividechars=2)
        self.policy_row.focus_position = 1 + POLICIES.index(policy)
        chosen = f"auto chose {plan.policy}: " if policy == "auto" else ""
        if plan.fits:
            details: list[urwid.Widget] = [urwid.Text(("heading", f"{chosen}{ascii_text(plan.reason)}"))]
        else:
            which = f"auto chose {plan.policy}" if policy == "auto" else policy
            details = [
                urwid.Text(("error", f"Does not fit ({which}): {ascii_text(plan.reason)}")),
                urwid.Text("Choose another layout above, or go back and choose a bigger drive."),
            ]
        details.append(urwid.Divider())
        for kind, line in plan_lines(plan):
            if kind == "table":
                details.append(urwid.Text(line, wrap="clip"))
            elif kind == "note":
                details.append(urwid.Columns([("fixed", 4, urwid.Text("  -")), urwid.Text(line.strip()[2:])]))
            else:
                details.append(urwid.Text(line))
        self.details = ScrollBox(urwid.SimpleFocusListWalker(details))
        if plan.fits:
            warn = (
                f"{current_text(target.name, current)} All of it will be replaced; "
                f"{fmt_bytes(plan.write_bytes)} of data will be written."
            )
            go = button("Continue", c.done)
        else:
            warn = current_text(target.name, current)
            go = disabled_button("Continue")
        body = urwid.Pile(
            [
                ("pack", self.policy_row),
                ("pack", urwid.Divider()),
                ("weight", 1, self.details),
                ("pack", urwid.Divider()),
                ("pack", urwid.Text(("warn" if plan.fits else "default", warn))),
            ]
        )
        super().__init__(
            title,
            body,
            [go, button("Back", c.back)],
            excerpt=excerpt,
            on_back=c.back,
            help="Left/Right: layout  Enter: choose  Tab: buttons  PgDn: more  Esc: back",
            step=step,
        )
        if not focus_policy:
            self.focus_buttons()
        if message:
            self.set_status(message, error=True)

    def keypress(self, size, key):
        if key in ("page down", "page up"):
            self.details.scroll(key)
            return None
        return super().keypress(size, key)


class ConfirmView(Screen):
    def __init__(
        self,
        c: Any,
        target: DriveInfo,
        step: str = "",
        action: str = "restore",
        title: str = "Restore: confirm",
        button_label: str = "Erase and restore",
    ):
        self.edit = ActionEdit(f"Type {target.name} to erase it and {action}: ", c.confirm)
        rows = [
            urwid.Text(
                (
                    "warn",
                    f"All data on {target.name} ({clip(target.model, 30)}, "
                    f"{fmt_bytes(target.size)}, serial {target.serial}) will be lost.",
                )
            ),
            urwid.Divider(),
            urwid.Text(
                f"Type the drive's name, {target.name}, and press Enter. Anything else goes back without writing."
            ),
            urwid.Divider(),
            self.edit,
        ]
        super().__init__(
            title,
            rows,
            [button(button_label, lambda: c.confirm(self.edit.edit_text)), button("Back", c.back)],
            on_back=c.back,
            help="Type the name, Enter: go on  Esc: back",
            step=step,
        )


class ProgressView(Screen):
    def __init__(self, c: Any, title: str, intro: str, step: str = ""):
        self.area = urwid.Text("Starting...")
        self.area_bar = urwid.ProgressBar("bar", "bar done")
        self.total_bar = urwid.ProgressBar("bar", "bar done")
        self.numbers = urwid.Text("")
        self.phase = urwid.Text("")
        rows = [
            urwid.Text(intro),
            urwid.Divider(),
            self.phase,
            urwid.Divider(),
            self.area,
            self.area_bar,
            urwid.Divider(),
            urwid.Text("Overall:"),
            self.total_bar,
            urwid.Divider(),
            self.numbers,
        ]
        super().__init__(title, rows, on_back=c.back, help="Esc: cancel", step=step)

    def update(self, p: Any, waiting: str | None = None) -> None:
        self.last = p
        self.phase.set_text(("heading", f"Phase: {p.phase}"))
        self.area.set_text(f"Area: {p.area or '-'}  ({fmt_bytes(p.area_done)} of {fmt_bytes(p.area_total)})")
        self.area_bar.set_completion(100.0 * p.area_done / p.area_total if p.area_total else 100.0)
        self.total_bar.set_completion(100.0 * p.done / p.total if p.total else 100.0)
        tail = waiting or f"time left {fmt_duration(p.eta)}"
        self.numbers.set_text(f"{fmt_bytes(p.done)} of {fmt_bytes(p.total)}   {p.rate / 1e6:.1f} MB/s   {tail}")

    def show_waiting(self, waiting: str | None) -> None:
        """Redraw the numbers with "waiting for <server> (N s)" while a server does not answer."""
        if getattr(self, "last", None) is not None:
            self.update(self.last, waiting)


class DoneView(Screen):
    def __init__(self, c: Any, title: str, lines: Sequence[Any], ok: bool):
        rows = [urwid.Text(line) for line in lines]
        super().__init__(
            title,
            rows,
            [button("Main menu", c.menu), button("Reboot", c.reboot), button("Power off", c.poweroff)],
            on_back=c.menu,
            help="Tab/Left/Right: buttons  Enter: choose  Esc: main menu",
        )
        self.focus_buttons()


def place_line(dest: DestInfo, files: bool = False) -> str:
    """One place in a destination list, two lines: the filesystem (type, label, size, free
    space), then its drive and what a job does there. Labels come from the drive: made
    printable."""
    p = dest.place
    model = f" ({clip(ascii_text(dest.drive_model), 26)})" if dest.drive_model else ""
    drive = f"on {p.drive}{model}" if p.drive else "a share"
    if p.blank:
        return f"{p.device:<15} blank drive {fmt_bytes(p.size):>34}\n  {drive}: prepare this drive for images (exFAT)"
    label = f'"{clip(ascii_text(printable(p.label)), 16)}"' if p.label else ""
    free = f"{fmt_bytes(p.free)} free" if p.free is not None else ""
    first = f"{p.device:<15} {p.fstype:<8} {label:<18} {fmt_bytes(p.size):>10}  {free}"
    if dest.refusal is not None:
        return f"{first}\n  {drive}"
    if files:
        what = "a new folder for the files is made on it"
    elif dest.repo:
        what = f"into {clip(dest.repo, 40)}"
    else:
        what = f"new repository folder {REPO_FOLDER}"
    return f"{first}\n  {drive}: {what}"


def place_rows(c: Any, dests: Sequence[DestInfo], files: bool = False) -> list[urwid.Widget]:
    """The places offered first, then those not offered with the reason: a list shows from
    its first choice, so what cannot be chosen must not come before it, out of sight."""
    rows: list[urwid.Widget] = []
    for d in sorted(dests, key=lambda d: d.refusal is not None):
        line = place_line(d, files)
        if d.refusal is None:
            rows.append(Choice(line, lambda d=d: c.choose_place(d)))
        else:
            rows.append(disabled(f"{line}\n  not offered: {ascii_text(d.refusal)}"))
    return rows


def share_rows(c: Any) -> list[urwid.Widget]:
    """The rows that reach images on another computer."""
    return [Choice("Windows share (SMB)...", c.smb), Choice("NFS export...", c.nfs)]


def remote_rows(c: Any) -> list[urwid.Widget]:
    """The rows that reach a repository on a server (the repository screens only)."""
    return [Choice("SSH server (SFTP)...", c.ssh), Choice("S3 object store...", c.s3)]


class FormView(Screen):
    """Labelled one-line fields, Enter in any of them connects; the secret field is masked
    with '*' and never filled in again (what was typed comes back, the secret does not)."""

    secret = ""
    intro = ""

    def __init__(
        self,
        c: Any,
        title: str,
        step: str,
        fields: Sequence[tuple[str, str, str]],  # (key, caption, default)
        typed: dict[str, str] | None,
        connect: Any,
    ):
        typed = typed or {}
        self.connect = connect
        self.fields = {
            key: ActionEdit(caption, lambda _t: self._connect(), "" if key == self.secret else typed.get(key, default))
            for key, caption, default in fields
        }
        self.fields[self.secret].set_mask("*")
        rows: list[urwid.Widget] = [urwid.Text(self.intro), urwid.Divider(), *self.fields.values()]
        super().__init__(
            title,
            rows,
            [button("Connect", self._connect), button("Back", c.start)],
            on_back=c.start,
            help="Up/Down: field  Enter: connect  Esc: back",
            step=step,
        )

    def values(self) -> dict[str, str]:
        return {k: e.edit_text for k, e in self.fields.items()}

    def _connect(self) -> None:
        self.connect(self.values())


class SshView(FormView):
    """An SSH server's folder, over SFTP; the password is not shown, and empty means keys."""

    secret = "password"
    intro = (
        "Images in a folder on an SSH server, over SFTP. A server met for the first time is "
        "trusted and its key's fingerprint shown. Empty password: keys only."
    )

    def __init__(self, c: Any, title: str, step: str = "", typed: dict[str, str] | None = None):
        fields = [
            ("server", "Server (name or address): ", ""),
            ("port", "Port: ", "22"),
            ("user", "User: ", "root"),
            ("folder", "Folder on the server: ", ""),
            ("password", "Password (empty: keys): ", ""),
        ]
        super().__init__(c, title, step, fields, typed, c.connect_ssh)


class S3View(FormView):
    """A bucket (and prefix) on an S3 object store; the secret key is not shown."""

    secret = "secret_key"
    intro = "Images in a bucket of an S3 object store (MinIO, Ceph, Swift, Garage, AWS...)."

    def __init__(self, c: Any, title: str, step: str = "", typed: dict[str, str] | None = None):
        fields = [
            ("endpoint", "Endpoint URL (empty: AWS): ", ""),
            ("bucket", "Bucket: ", ""),
            ("prefix", "Prefix (optional): ", ""),
            ("region", "Region: ", "us-east-1"),
            ("access_key", "Access key: ", ""),
            ("secret_key", "Secret key: ", ""),
        ]
        super().__init__(c, title, step, fields, typed, c.connect_s3)


class SmbView(Screen):
    """Where a Windows share is and who may open it; the password is not shown."""

    def __init__(self, c: Any, title: str, step: str = "", typed: dict[str, str] | None = None):
        typed = typed or {}
        self.fields = {
            "server": ActionEdit("Server (name or address): ", lambda _t: self._connect(c), typed.get("server", "")),
            "share": ActionEdit("Share (and folder, share/a/b): ", lambda _t: self._connect(c), typed.get("share", "")),
            "user": ActionEdit("User (empty: guest): ", lambda _t: self._connect(c), typed.get("user", "")),
            "password": ActionEdit("Password: ", lambda _t: self._connect(c)),
            "domain": ActionEdit("Domain (optional): ", lambda _t: self._connect(c), typed.get("domain", "")),
        }
        self.fields["password"].set_mask("*")
        rows: list[urwid.Widget] = [
            urwid.Text("The share is opened read-only to look; only a capture or a copy writes to it."),
            urwid.Divider(),
            *self.fields.values(),
        ]
        super().__init__(
            title,
            rows,
            [button("Connect", lambda: self._connect(c)), button("Back", c.start)],
            on_back=c.start,
            help="Up/Down: field  Enter: connect  Esc: back",
            step=step,
        )

    def values(self) -> dict[str, str]:
        return {k: e.edit_text for k, e in self.fields.items()}

    def _connect(self, c: Any) -> None:
        c.connect_smb(self.values())


class NfsView(Screen):
    def __init__(self, c: Any, title: str, step: str = "", typed: str = ""):
        self.edit = ActionEdit("Export (server:/path): ", c.connect_nfs, typed)
        rows: list[urwid.Widget] = [
            urwid.Text("The export is opened read-only to look; only a capture or a copy writes to it."),
            urwid.Divider(),
            self.edit,
        ]
        super().__init__(
            title,
            rows,
            [button("Connect", lambda: c.connect_nfs(self.edit.edit_text)), button("Back", c.start)],
            on_back=c.start,
            help="Enter: connect  Esc: back",
            step=step,
        )


class DestView(Screen):
    def __init__(self, c: Any, dests: Sequence[DestInfo], step: str = ""):
        rows = place_rows(c, dests)
        if not dests:
            rows.append(
                urwid.Text(
                    "No drive to store the image on was found. Plug in a USB drive and choose "
                    "Rescan, use a share, or type the path of a mounted, writable directory."
                )
            )
        self.edit = ActionEdit("Type a path...: ", c.choose)
        rows += [urwid.Divider(), self.edit, *share_rows(c), *remote_rows(c)]
        super().__init__(
            "Capture: where to store the image",
            rows,
            [button("Rescan", c.rescan), button("Back", c.back)],
            excerpt="Filesystems and blank drives on this machine (the image goes onto one of these):",
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )


class NameView(Screen):
    """The image's name; when the capture makes a new repository, also whether to encrypt
    it with a password (typed twice, masked with '*', never filled in again)."""

    def __init__(self, c: Any, default: str, source: DriveInfo, dest: str, step: str = "", new_repo: bool = False):
        self.edit = ActionEdit("Image name: ", lambda _t: self._go(c), default)
        rows: list[urwid.Widget] = [
            urwid.Text(f"Capture {source.name} ({clip(source.model, 30)}, {fmt_bytes(source.size)})"),
            urwid.Text(f"into {dest}"),
            urwid.Divider(),
            urwid.Text("Letters, digits, dot, dash and underscore only."),
            urwid.Divider(),
            self.edit,
        ]
        self.encrypt: urwid.CheckBox | None = None
        if new_repo:
            self.encrypt = urwid.CheckBox("Encrypt with a password")
            self.password = ActionEdit("Password:    ", lambda _t: self._go(c))
            self.again = ActionEdit("Same again:  ", lambda _t: self._go(c))
            for edit in (self.password, self.again):
                edit.set_mask("*")
            rows += [
                urwid.Divider(),
                urwid.Text(
                    "A new repository. Encrypted, nobody can read or change its images without the "
                    "password, and nobody can restore them without it either: keep it safe."
                ),
                urwid.AttrMap(self.encrypt, None, "focus"),
                self.password,
                self.again,
            ]
        super().__init__(
            "Capture: name the image",
            rows,
            [button("Start capture", lambda: self._go(c)), button("Back", c.back)],
            on_back=c.back,
            help="Type the name, Enter: start  Esc: back" + ("  Space: encrypt" if new_repo else ""),
            step=step,
        )

    def _go(self, c: Any) -> None:
        if self.encrypt is None:
            c.choose(self.edit.edit_text)
        else:
            c.choose(self.edit.edit_text, self.encrypt.get_state(), self.password.edit_text, self.again.edit_text)


class PasswordView(Screen):
    """The password of an encrypted repository: masked with '*', never filled in again."""

    def __init__(self, c: Any, title: str, repo: str, step: str = ""):
        self.edit = ActionEdit("Password: ", c.unlock)
        self.edit.set_mask("*")
        rows = [
            urwid.Text(f"The repository {clip(printable(repo), 60)} is encrypted."),
            urwid.Text("Its images open only with its password."),
            urwid.Divider(),
            self.edit,
        ]
        super().__init__(
            title,
            rows,
            [button("Open", lambda: c.unlock(self.edit.edit_text)), button("Back", c.back)],
            on_back=c.back,
            help="Type the password, Enter: open  Esc: back",
            step=step,
        )


# --- browse ----------------------------------------------------------------------------------


def image_part_line(p: ImagePart) -> str:
    used = f"{fmt_bytes(p.used)} used" if p.used is not None else ""
    fat = "\n  FAT: no file list here (no FAT driver); the whole partition is copied" if p.fat and not p.refused else ""
    line = (
        f"partition {p.number:<3} {fmt_bytes(p.size):>10}  {clip(p.fstype or '-', 8):<8} {clip(p.label, 24):<24} {used}"
    ).rstrip()
    return line + fat


class PartitionView(Screen):
    def __init__(self, c: Any, image: ImageInfo, parts: Sequence[ImagePart], step: str = ""):
        rows: list[urwid.Widget] = []
        for p in parts:
            if p.refused:
                rows.append(disabled(f"{image_part_line(p)}\n  not offered: {p.refused}"))
            else:
                rows.append(Choice(image_part_line(p), lambda p=p: c.choose(p)))
        if not any(not p.refused for p in parts):
            rows.append(urwid.Text(("warn", "This image has no partition with files to browse.")))
        super().__init__(
            "Browse: choose a partition",
            rows,
            [button("Back", c.back)],
            excerpt=f"Partitions in image {image.name}:",
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )


def fmt_time(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def tree_line(entry: FileEntry, depth: int, marked: str, expanded: bool) -> str:
    """One row of at most WIDTH - 2 columns: mark, indent, folder sign, name, size, date."""
    sign = ("- " if expanded else "+ ") if entry.is_dir else "  "
    name = entry.name + ("/" if entry.is_dir else "") + (f" -> {entry.link}" if entry.link else "")
    left = f"[{marked}] {'  ' * min(depth, 8)}{sign}"
    size = "" if entry.is_dir else fmt_bytes(entry.size)
    room = WIDTH - 2 - len(left) - 10 - 2 - 16 - 1
    return f"{left}{clip(name, room):<{room}} {size:>10}  {fmt_time(entry.mtime)}"


class TreeRow(Choice):
    """A file or folder. Enter opens/closes a folder (marks a file); Space marks; Right opens,
    Left closes the folder (or goes to the parent)."""

    def __init__(self, c: Any, entry: FileEntry, depth: int, marked: str, expanded: bool):
        self.entry, self.depth, self.c = entry, depth, c
        super().__init__(tree_line(entry, depth, marked, expanded), lambda: c.activate(entry))

    def keypress(self, size, key):
        if key == " ":
            self.c.toggle_mark(self.entry)
            return None
        if key == "right" and self.entry.is_dir:
            self.c.expand(self.entry)
            return None
        if key == "left":
            self.c.collapse(self.entry)
            return None
        return super().keypress(size, key)


class TreeView(Screen):
    """The files of one mounted partition. Folders are read when opened. The list is rebuilt
    in place after each change, keeping the focus on the same path."""

    def __init__(
        self,
        c: Any,
        title: str,
        excerpt: str,
        rows: list[tuple[FileEntry, int, str, bool]],
        marked: str,
        step: str = "",
    ):
        self.c = c
        self.walker = urwid.SimpleFocusListWalker([])
        self.summary = urwid.Text("")
        head = "      name".ljust(WIDTH - 2 - 16 - 2 - 4) + "size  modified"
        body = urwid.Pile(
            [
                ("pack", urwid.Text(("heading", head))),
                ("weight", 1, urwid.ListBox(self.walker)),
                ("pack", urwid.Divider("-")),
                ("pack", self.summary),
            ]
        )
        super().__init__(
            title,
            body,
            [button("Copy marked...", c.done), button("Back", c.back)],
            excerpt=excerpt,
            on_back=c.back,
            help="Space: mark  Enter/Right: open folder  Left: close  Tab: buttons  Esc: back",
            step=step,
        )
        self.refresh(rows, marked)
        body.focus_position = 1
        self._focus_first()

    def refresh(self, rows: list[tuple[FileEntry, int, str, bool]], marked: str, focus_path: str | None = None) -> None:
        current = self.walker.get_focus()[0]
        keep = focus_path or (current.entry.path if isinstance(current, TreeRow) else None)
        widgets: list[urwid.Widget] = [TreeRow(self.c, e, d, m, x) for e, d, m, x in rows]
        if not widgets:
            widgets = [urwid.Text(("warn", "This partition holds no files."))]
        self.walker[:] = widgets
        pos = next((i for i, w in enumerate(widgets) if isinstance(w, TreeRow) and w.entry.path == keep), 0)
        self.walker.set_focus(pos)
        self.summary.set_text(marked)


class WholePartitionView(Screen):
    """FAT: the rescue kernel has no FAT driver, so the files are not listed; the whole
    partition is copied with mtools into a new folder."""

    def __init__(self, c: Any, title: str, part: ImagePart, folder: str, step: str = ""):
        rows = [
            urwid.Text(
                f"Partition {part.number} is a FAT partition ({part.fstype}, "
                f"{fmt_bytes(part.size)}{', ' + part.label if part.label else ''})."
            ),
            urwid.Divider(),
            urwid.Text(
                "This rescue system has no FAT driver, so its files cannot be listed "
                "here. Its whole content is copied instead (with mtools, keeping the "
                f"times) into a new folder {folder} inside the folder you choose next."
            ),
        ]
        super().__init__(
            title,
            rows,
            [button("Copy whole partition...", c.done), button("Back", c.back)],
            on_back=c.back,
            help="Enter: choose  Tab/Left/Right: buttons  Esc: back",
            step=step,
        )
        self.focus_buttons()


class CopyDestView(Screen):
    def __init__(self, c: Any, what: str, dests: Sequence[DestInfo], default: str = "", step: str = ""):
        self.edit = ActionEdit("Type a folder...: ", c.choose, default)
        rows = [*place_rows(c, dests, files=True), urwid.Divider(), self.edit, *share_rows(c)]
        super().__init__(
            "Browse: copy to where?",
            rows,
            [button("Rescan", c.start), button("Back", c.back)],
            excerpt=f"{what} Onto a filesystem here (a new folder is made on it), a typed folder, or a share:",
            on_back=c.back,
            help=LIST_HELP,
            step=step,
        )

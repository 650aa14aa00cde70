"""The one screen shape every step uses, and the few widgets the screens share.

Only ASCII is drawn (borders, markers, bars): the wizard runs on the Linux console and on a
serial line, where box-drawing glyphs may be missing. The focused row carries a ">" marker as
well as reverse video, so it is visible on a monochrome terminal too."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import urwid

PRODUCT = "rescue - disk imaging"

PALETTE = [
    ("title", "white", "dark blue", "standout"),
    ("help", "light gray", "dark blue", ""),
    ("focus", "black", "light gray", "standout"),
    ("disabled", "dark gray", "default", ""),
    ("error", "light red", "default", "bold"),
    ("warn", "yellow", "default", "bold"),
    ("heading", "white", "default", "bold"),
    ("bar", "light gray", "dark gray", ""),
    ("bar done", "black", "light green", "standout"),
    ("dialog", "default", "default", ""),
]

ASCII_BOX = dict(tlcorner="+", tline="-", lline="|", trcorner="+", blcorner="+", rline="|", bline="-", brcorner="+")

KEYS_HELP = "Up/Down: move  Enter: choose  Tab: next field  Esc: back"


class Choice(urwid.Widget):
    """A selectable line (or lines) of a list; Enter or Space chooses it."""

    _sizing = frozenset(["flow"])
    _selectable = True

    def __init__(self, label: str, on_choose: Callable[[], None]):
        super().__init__()
        self.label = label
        self.on_choose = on_choose
        self._plain = urwid.Text("  " + label.replace("\n", "\n  "))
        self._focused = urwid.AttrMap(urwid.Text("> " + label.replace("\n", "\n  ")), "focus")

    def _w(self, focus: bool) -> urwid.Widget:
        return self._focused if focus else self._plain

    def rows(self, size, focus=False):
        return self._w(focus).rows(size, focus)

    def render(self, size, focus=False):
        return self._w(focus).render(size, focus)

    def keypress(self, size, key):
        if key in ("enter", " "):
            self.on_choose()
            return None
        return key


class ActionEdit(urwid.Edit):
    """A one-line text field where Enter acts (open this path, confirm this name)."""

    def __init__(self, caption: str, on_enter: Callable[[str], None], text: str = ""):
        super().__init__(caption, text)
        self.on_enter = on_enter

    def keypress(self, size, key):
        if key == "enter":
            self.on_enter(self.edit_text)
            return None
        return super().keypress(size, key)


def button(label: str, on_press: Callable[[], None]) -> urwid.Widget:
    btn = urwid.Button(label, on_press=lambda _b: on_press())
    return urwid.AttrMap(btn, None, "focus")


class DisabledButton(urwid.Text):
    """A button that cannot be pressed now: grey, never takes the focus, and drawn with
    dashes instead of brackets so that it differs on a terminal without colours too."""

    def __init__(self, label: str):
        self.label = label
        super().__init__(f"- {label} -")


def disabled_button(label: str) -> urwid.Widget:
    return urwid.AttrMap(DisabledButton(label), "disabled")


def button_row(buttons: Sequence[urwid.Widget]) -> urwid.Widget:
    cells = [("fixed", len(b.original_widget.label) + 4, b) for b in buttons]
    return urwid.Columns(cells, dividechars=2) if cells else urwid.Text("")


def disabled(text: str) -> urwid.Widget:
    return urwid.Text(("disabled", "  " + text.replace("\n", "\n  ")))


def has_selectable(w: urwid.Widget) -> bool:
    """Whether Tab should stop at this part: a ListBox or Pile counts only when something in
    it can take the focus (urwid calls every ListBox selectable)."""
    if isinstance(w, urwid.ListBox):
        return any(has_selectable(x) for x in w.body)
    if isinstance(w, (urwid.Pile, urwid.Columns)):
        return any(has_selectable(x) for x, _o in w.contents)
    if isinstance(w, (urwid.AttrMap, urwid.Padding)):
        return has_selectable(w.original_widget)
    return w.selectable()


class Screen(urwid.WidgetWrap):
    """Title line, body, buttons, help/status line. Esc calls `on_back`; Tab moves between
    the body's parts (the list, a text field, the buttons)."""

    def __init__(
        self,
        title: str,
        body: Sequence[urwid.Widget] | urwid.Widget,
        buttons: Sequence[urwid.Widget] = (),
        *,
        excerpt: str | None = None,
        on_back: Callable[[], None] | None = None,
        help: str = KEYS_HELP,
        step: str = "",
    ):
        self.on_back = on_back
        self.help = help
        parts: list = []
        if excerpt:
            parts += [("pack", urwid.Text(excerpt)), ("pack", urwid.Divider())]
        if isinstance(body, urwid.Widget):
            parts.append(("weight", 1, body))
        else:
            self.walker = urwid.SimpleFocusListWalker(list(body))
            # Start on the first thing that can be chosen: from a focused plain text, urwid's
            # ListBox both moves the focus and passes Down on, which skips to the buttons.
            first = next((i for i, w in enumerate(self.walker) if has_selectable(w)), None)
            if first is not None:
                self.walker.set_focus(first)
            parts.append(("weight", 1, urwid.ListBox(self.walker)))
        if buttons:
            parts += [("pack", urwid.Divider()), ("pack", button_row(buttons))]
        self.pile = urwid.Pile(parts)
        self._focus_first()
        head = f" {PRODUCT}  |  {title}"
        if step:
            head = head[: 78 - len(step)].ljust(78 - len(step)) + step + " "
        self.status = urwid.Text(("help", " " + help))
        frame = urwid.Frame(
            urwid.Padding(self.pile, left=1, right=1),
            header=urwid.Pile([urwid.AttrMap(urwid.Text(head, wrap="clip"), "title"), urwid.Divider()]),
            footer=urwid.AttrMap(self.status, "help"),
        )
        super().__init__(frame)

    def _selectable_parts(self) -> list[int]:
        return [i for i, (w, _o) in enumerate(self.pile.contents) if has_selectable(w)]

    def _focus_first(self) -> None:
        sel = self._selectable_parts()
        if sel:
            self.pile.focus_position = sel[0]

    def focus_buttons(self) -> None:
        sel = self._selectable_parts()
        if sel:
            self.pile.focus_position = sel[-1]

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.set_text(("error" if error else "help", " " + text))

    def keypress(self, size, key):
        key = super().keypress(size, key)
        if key in ("tab", "shift tab"):
            sel = self._selectable_parts()
            if sel:
                cur = self.pile.focus_position
                step = 1 if key == "tab" else -1
                pos = sel.index(cur) if cur in sel else 0
                self.pile.focus_position = sel[(pos + step) % len(sel)]
            return None
        if key == "esc" and self.on_back is not None:
            self.on_back()
            return None
        return key


class Dialog(urwid.WidgetWrap):
    """A boxed question or message drawn over the current screen. The last answer is the
    safe one (No, Keep going, OK): it has the focus, and Esc chooses it."""

    def __init__(self, title: str, text: str, answers: Sequence[tuple[str, Callable[[], None]]], attr: str = "dialog"):
        self.answers = answers
        btns = [button(label, fn) for label, fn in answers]
        row = button_row(btns)
        row.focus_position = len(btns) - 1  # the safe answer (No, Keep going) has the focus
        body = urwid.Pile([urwid.Text((attr, text)), urwid.Divider(), row])
        body.focus_position = 2
        super().__init__(urwid.LineBox(urwid.Padding(body, left=1, right=1), title=title, **ASCII_BOX))

    def keypress(self, size, key):
        key = super().keypress(size, key)
        if key == "esc":
            self.answers[-1][1]()
            return None
        return key


class ScrollBox(urwid.ListBox):
    """A list of plain lines that the screen scrolls with PgUp/PgDn although nothing in it
    can take the focus (urwid's ListBox only scrolls the widget it is given keys for)."""

    _size: tuple[int, int] | None = None

    def render(self, size, focus=False):
        self._size = size
        return super().render(size, focus)

    def scroll(self, key: str) -> None:
        """PgDn: the first line not shown (in full) goes to the top. PgUp: the lines just above
        the first one shown fill the box, ending where it began."""
        if self._size is None or not len(self.body):
            return
        maxcol, maxrow = self._size
        middle, top, bottom = self.calculate_visible(self._size)
        if middle is None:
            return
        focus = middle[2]
        last = bottom[1][-1][1] if bottom[1] else focus
        first = top[1][-1][1] if top[1] else focus
        if key == "page down":
            if bottom[0] == 0 and last == len(self.body) - 1:
                return  # the end is on the screen already
            new = last if bottom[0] else min(last + 1, len(self.body) - 1)
            new = max(new, first + 1)
        else:
            new, used = first, 0
            while new > 0 and used + self.body[new - 1].rows((maxcol,)) <= maxrow:
                new -= 1
                used += self.body[new].rows((maxcol,))
        self.set_focus(new)
        self.set_focus_valign("top")
        self._invalidate()


def overlay(dialog: urwid.Widget, under: urwid.Widget) -> urwid.Overlay:
    return urwid.Overlay(dialog, under, align="center", width=66, valign="middle", height="pack")

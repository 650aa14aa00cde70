"""View test helpers: render to text, walk the widget tree, press keys, type, click.

Everything goes through the app's Root widget (the same path a key takes under the main
loop), so the error guard, dialogs and Esc handling are exercised as in real use."""

from __future__ import annotations

from collections.abc import Iterator

import urwid

from rescue.tui.widgets import Choice

SIZE = (80, 24)


def render(widget: urwid.Widget, size=SIZE) -> list[str]:
    canvas = widget.render(size, focus=True)
    return [line.decode("utf-8") for line in canvas.text]


def text(app, size=SIZE) -> str:
    return "\n".join(render(app.root, size))


def flat(app) -> str:
    """The screen as one line of words: wrapped sentences can be matched whole."""
    return " ".join(text(app).split())


def dialog_text(app) -> str:
    """The open dialog's words, without its border, as one line."""
    assert dialog_open(app), f"no dialog on:\n{text(app)}"
    lines = render(top(app), (66,))
    return " ".join(" ".join(l.strip("|+-").split()) for l in lines).strip()


def children(w: urwid.Widget) -> list[urwid.Widget]:
    if isinstance(w, urwid.Overlay):
        return [w.top_w, w.bottom_w]
    if isinstance(w, urwid.Frame):
        return [x for x in (w.header, w.body, w.footer) if x is not None]
    if isinstance(w, urwid.ListBox):
        return list(w.body)
    if isinstance(w, (urwid.Pile, urwid.Columns)):
        return [x for x, _o in w.contents]
    if isinstance(w, (urwid.WidgetDecoration, urwid.WidgetPlaceholder)):
        return [w.original_widget]
    if isinstance(w, urwid.WidgetWrap):
        return [w._w]
    return []


def walk(w: urwid.Widget) -> Iterator[urwid.Widget]:
    yield w
    for c in children(w):
        yield from walk(c)


def top(app) -> urwid.Widget:
    """The dialog when one is open, else the screen."""
    w = app.root.original_widget
    return w.top_w if isinstance(w, urwid.Overlay) else w


def find(app, cls, pred=lambda w: True) -> list:
    return [w for w in walk(top(app)) if isinstance(w, cls) and pred(w)]


def find_button(app, label: str):
    found = find(app, (urwid.Button, Choice), lambda w: w.label.startswith(label))
    assert found, f"no button {label!r} on:\n{text(app)}"
    return found[0]


def click(app, label: str) -> None:
    """Act as if the button was pressed (through the app's error guard)."""
    btn = find_button(app, label)
    if isinstance(btn, Choice):
        app.guard(btn.on_choose)
    else:
        app.guard(btn._emit, "click")


def press(app, *keys: str) -> None:
    for k in keys:
        app.root.keypress(SIZE, k)


def type_text(app, s: str) -> None:
    press(app, *s)


def dialog_open(app) -> bool:
    return isinstance(app.root.original_widget, urwid.Overlay)


def focused_line(app) -> str:
    lines = [l for l in render(app.root) if l.startswith(" > ")]
    return lines[0].strip() if lines else ""


def select(app, label: str, limit: int = 30) -> None:
    """Move the focus with Down until the focused choice starts with `label`, then Enter."""
    for _ in range(limit):
        if focused_line(app).startswith("> " + label):
            press(app, "enter")
            return
        press(app, "down")
    raise AssertionError(f"{label!r} never got the focus on:\n{text(app)}")


def focus_field(app, limit: int = 40) -> None:
    """Move the focus down to the screen's text field (a typed path or folder)."""
    for _ in range(limit):
        if app.view.walker[app.view.walker.focus] is app.view.edit:
            return
        press(app, "down")
    raise AssertionError(f"the text field never got the focus on:\n{text(app)}")


def finish_job(app) -> None:
    """Let the worker end, then deliver its events the way urwid's watch_pipe would."""
    app.runner.wait(10)
    assert not app.runner.running
    app.on_pipe(b"!")


def assert_fits(app) -> None:
    lines = render(app.root)
    assert len(lines) == 24
    assert all(len(l) <= 80 for l in lines)
    assert all(l.isascii() for l in lines), "non-ASCII glyph on screen"

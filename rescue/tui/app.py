"""`rescue wizard`: picks the back-end (once, here), runs the urwid main loop, and turns
every error into words on the screen.

Exit codes are the contract with the console launcher (docs/wizard.md):
  0    the person chose "Shell": start a login shell, run the wizard again when it exits
  1    the wizard failed unexpectedly (traceback in the log): show a shell
  2    bad command line or no terminal
  3    reboot or power off was requested and accepted: wait, the system is going down
  130  interrupted (Ctrl-C): run the wizard again
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import urwid

from rescue.errors import RescueError
from rescue.tui import controllers, views
from rescue.tui.widgets import PALETTE, Dialog, overlay
from rescue.tui.wizard import JobRunner, Step, Wizard

NETWORK_REFRESH = 5.0  # seconds between looks at the network while the main menu shows
WAITING_REFRESH = 1.0  # seconds between looks at a server that does not answer, on a progress screen
EXIT_SHELL = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_POWER = 3
EXIT_INTERRUPTED = 130


class Root(urwid.WidgetPlaceholder):
    """The top widget: every key the person presses runs under the app's error guard."""

    def __init__(self, app: App):
        super().__init__(urwid.SolidFill(" "))
        self.app = app

    def keypress(self, size, key):
        return self.app.guard(super().keypress, size, key)


def default_log_dir() -> str:
    for d in (os.environ.get("RESCUE_LOG_DIR"), "/var/log/rescue"):
        if not d:
            continue
        try:
            os.makedirs(d, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    return tempfile.gettempdir()


class App:
    EXIT_SHELL = EXIT_SHELL
    EXIT_POWER = EXIT_POWER

    def __init__(self, backend: Any, *, preset_repo: str | None = None, log_dir: str | None = None):
        self.backend = backend
        self.preset_repo = preset_repo
        self.log_dir = log_dir or default_log_dir()
        self.root = Root(self)
        self.view: Any = None  # the screen under any dialog
        self.state: Any = None
        self.wizard: Wizard | None = None
        self.menu = controllers.MenuController(self)
        self.exit_code: int | None = None
        self.loop: urwid.MainLoop | None = None
        self._pipe_fd: int | None = None
        self.runner = JobRunner(self._notify)

    # screens ------------------------------------------------------------------------------
    def show(self, view: Any) -> None:
        self.view = view
        self.root.original_widget = view

    def main_menu(self, message: str = "") -> None:
        self.wizard = None
        problem = self.close_state()
        self.show(views.MainMenuView(self.menu, message or problem, self.backend.network_summary()))

    def _refresh_network(self, loop: Any, _data: Any = None) -> None:
        """The main menu's network line, every few seconds: DHCP answers after the wizard starts."""
        if isinstance(self.view, views.MainMenuView):
            self.view.network.set_text(self.backend.network_summary())
        loop.set_alarm_in(NETWORK_REFRESH, self._refresh_network)

    def _refresh_waiting(self, loop: Any, _data: Any = None) -> None:
        """A progress screen says so, every second, while a server does not answer."""
        if isinstance(self.view, views.ProgressView):
            self.view.show_waiting(self.backend.waiting())
        loop.set_alarm_in(WAITING_REFRESH, self._refresh_waiting)

    def close_state(self) -> str:
        """End the flow's leftovers (a mounted partition); returns what went wrong, in words."""
        state, self.state = self.state, None
        if state is None or not hasattr(state, "close"):
            return ""
        try:
            state.close()
        except RescueError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - shown in words, the wizard stays up
            return self.unexpected(e, traceback.format_exc())
        return ""

    def start_flow(self, name: str) -> None:
        state_cls, step_classes = controllers.FLOWS[name]
        state = state_cls()
        if name in ("restore", "browse") and self.preset_repo:
            state.repo = self.backend.open_repository(self.preset_repo)
        self.state = state
        self.wizard = Wizard([cls(self) for cls in step_classes], on_leave=self.main_menu)
        self.wizard.begin()

    def wizard_position(self, step: Step) -> str:
        return self.wizard.position(step) if self.wizard else ""

    # dialogs ------------------------------------------------------------------------------
    def ask(self, title: str, text: str, yes: str, no: str, callback: Callable[[bool], Any]) -> None:
        """A question over the current screen; the answer arrives as a bool."""

        def answer(value: bool) -> None:
            self.close_dialog()
            callback(value)

        self.root.original_widget = overlay(
            Dialog(title, text, [(yes, lambda: answer(True)), (no, lambda: answer(False))]), self.view
        )

    def tell(self, title: str, text: str, then: Callable[[], Any] | None = None, attr: str = "dialog") -> None:
        def ok() -> None:
            self.close_dialog()
            if then:
                then()

        self.root.original_widget = overlay(Dialog(title, text, [("OK", ok)], attr), self.view)

    def close_dialog(self) -> None:
        self.root.original_widget = self.view

    # errors -------------------------------------------------------------------------------
    def guard(self, fn: Callable, *args) -> Any:
        """Run an action; an error becomes a message over the screen the person was on."""
        try:
            return fn(*args)
        except urwid.ExitMainLoop:
            raise
        except RescueError as e:
            self.tell("Error", str(e), attr="error")
        except Exception as e:  # noqa: BLE001 - shown in words, the wizard stays up
            self.tell("Error", self.unexpected(e, traceback.format_exc()), attr="error")
        return None

    def unexpected(self, error: BaseException, tb: str) -> str:
        """The one-line text for an error nobody foresaw; the traceback goes to the log."""
        path = os.path.join(self.log_dir, "wizard.log")
        try:
            with open(path, "a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{tb}\n")
            where = f" (details in {path})"
        except OSError:
            where = ""
        return f"Unexpected error: {type(error).__name__}: {error}{where}"

    def job_failed(self, error: BaseException, tb: str) -> None:
        text = str(error) if isinstance(error, RescueError) else self.unexpected(error, tb)
        self.tell("Error", text, then=self.main_menu, attr="error")

    # jobs ---------------------------------------------------------------------------------
    def run_job(self, job: Callable, on_progress: Callable, on_done: Callable, on_error: Callable) -> None:
        self.runner.on_progress, self.runner.on_done, self.runner.on_error = on_progress, on_done, on_error
        self.runner.start(job)

    def _notify(self) -> None:
        if self._pipe_fd is not None:
            try:
                os.write(self._pipe_fd, b"!")
            except OSError:
                pass  # the loop is gone; the job's result no longer has a screen

    def on_pipe(self, _data: bytes) -> bool:
        """urwid calls this on the main thread when the worker wrote to the pipe."""
        self.guard(self.runner.dispatch)
        return True

    # running ------------------------------------------------------------------------------
    def exit(self, code: int) -> None:
        self.exit_code = code
        if self.loop is not None:
            raise urwid.ExitMainLoop()

    def run(self) -> int:
        screen = urwid.raw_display.Screen()
        self.loop = urwid.MainLoop(self.root, PALETTE, screen=screen, handle_mouse=False)
        self._pipe_fd = self.loop.watch_pipe(self.on_pipe)
        self.main_menu()
        self.loop.set_alarm_in(NETWORK_REFRESH, self._refresh_network)
        self.loop.set_alarm_in(WAITING_REFRESH, self._refresh_waiting)
        try:
            self.loop.run()
        finally:
            if self.runner.running:
                self.runner.cancel.set()
                self.runner.wait(30)
            fd, self._pipe_fd = self._pipe_fd, None
            os.close(fd)
            self.close_state()
            self.backend.close()
        return EXIT_SHELL if self.exit_code is None else self.exit_code


def choose_backend(args: argparse.Namespace) -> Any:
    """The engine over the real machine, or over a recorded one (the dry run): the one place
    that decides. The configuration is rescue.toml, as for the CLI."""
    from rescue.engine import Engine

    machine = args.machine or os.environ.get("RESCUE_MACHINE")
    if machine:
        return Engine.recorded(machine, include_loop=args.include_loop)
    return Engine(include_loop=args.include_loop)


def _ensure_terminal_size() -> None:
    """A serial console reports 0x0; urwid then draws nothing. Assume 80x24."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return
    if size.columns == 0 or size.lines == 0:
        from rescue.hw.run import run

        run(["stty", "cols", "80", "rows", "24"], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rescue wizard", description="Text-mode wizard to restore, capture and clone drives and browse images."
    )
    parser.add_argument("--repo", help="use this image repository (skips the repository screen)")
    parser.add_argument("--include-loop", action="store_true", help="offer loop devices as drives")
    parser.add_argument(
        "--machine",
        help="dry run over a recorded machine (python3 -m rescue.hw.record > machine.json); also RESCUE_MACHINE",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("rescue wizard: needs a terminal", file=sys.stderr)
        return EXIT_USAGE
    try:
        backend = choose_backend(args)
    except RescueError as e:
        print(f"rescue wizard: {e}", file=sys.stderr)
        return EXIT_USAGE
    _ensure_terminal_size()
    from rescue.browse.mounts import clear_leftovers

    cleared = clear_leftovers()  # what killed runs left: loop devices, mounts, files, partly written drives
    app = App(backend, preset_repo=args.repo)
    if cleared:  # the first main menu says so on its status line (App.run draws it without a message)
        first_menu = app.main_menu

        def main_menu(message: str = "") -> None:
            del app.main_menu  # later menus are App's own
            first_menu(message or cleared.line())

        app.main_menu = main_menu  # type: ignore[method-assign]
    try:
        return app.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the launcher's documented exit code, not a traceback
        print(app.unexpected(e, traceback.format_exc()), file=sys.stderr)
        return EXIT_FAILED

"""The step engine and the worker-thread runner. Neither knows any particular step.

A flow is an ordered list of steps. Walking forward or back starts the next step that
`applies()`; a step that fails to start leaves the wizard where it was, so the person stays on
a screen that works. Walking off either end hands control back (to the main menu)."""

from __future__ import annotations

import collections
import threading
import traceback
from collections.abc import Callable
from typing import Any


class Step:
    """One screen of a flow. Subclasses build a view in `start()` and call `app.show(view)`;
    views call the step's methods and nothing else."""

    title = ""

    def __init__(self, app: Any):
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def backend(self) -> Any:
        return self.app.backend

    def applies(self) -> bool:
        """False to be skipped in both directions (e.g. a repository given on the command line)."""
        return True

    def start(self) -> None:
        raise NotImplementedError

    def done(self) -> None:
        self.app.wizard.next()

    def back(self) -> None:
        self.app.wizard.back()


class Wizard:
    def __init__(self, steps: list[Step], on_leave: Callable[[], None]):
        self.steps = steps
        self.on_leave = on_leave
        self.index = -1

    @property
    def current(self) -> Step | None:
        return self.steps[self.index] if 0 <= self.index < len(self.steps) else None

    def position(self, step: Step) -> str:
        """ "3/7" for the title line, counting only the steps that apply."""
        shown = [s for s in self.steps if s.applies()]
        return f"{shown.index(step) + 1}/{len(shown)}" if step in shown else ""

    def begin(self) -> None:
        self.index = -1
        self._walk(+1)

    def next(self) -> None:
        self._walk(+1)

    def back(self) -> None:
        self._walk(-1)

    def _walk(self, direction: int) -> None:
        i = self.index + direction
        while 0 <= i < len(self.steps) and not self.steps[i].applies():
            i += direction
        if not 0 <= i < len(self.steps):
            self.index = -1
            self.on_leave()
            return
        self.steps[i].start()  # raises before the index moves: the old screen stays valid
        self.index = i


class JobRunner:
    """Runs one long job in a worker thread. The worker never touches a widget: it queues
    events and pokes `notify` (a write to the pipe urwid's main loop watches); the main loop
    then calls `dispatch()`, which runs the handlers on the main thread."""

    def __init__(self, notify: Callable[[], None]):
        self.notify = notify
        self.cancel = threading.Event()
        self._events: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.on_progress: Callable[[Any], None] = lambda p: None
        self.on_done: Callable[[Any], None] = lambda r: None
        self.on_error: Callable[[BaseException, str], None] = lambda e, tb: None

    def start(self, job: Callable[[Callable[[Any], None], threading.Event], Any]) -> None:
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(job,), name="rescue-job", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _post(self, event: tuple) -> None:
        with self._lock:
            self._events.append(event)
        self.notify()

    def _work(self, job) -> None:
        try:
            result = job(lambda p: self._post(("progress", p)), self.cancel)
        except BaseException as e:  # noqa: BLE001 - delivered to the main thread, shown there in words
            self._post(("error", e, traceback.format_exc()))
        else:
            self._post(("done", result))

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def dispatch(self) -> None:
        """Main thread only. Progress events are coalesced: only the newest is drawn."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
        progress = [e for e in events if e[0] == "progress"]
        if progress:
            self.on_progress(progress[-1][1])
        for e in events:
            if e[0] == "done":
                self.on_done(e[1])
            elif e[0] == "error":
                self.on_error(e[1], e[2])

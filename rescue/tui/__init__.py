"""The text-mode wizard (`rescue wizard`): urwid screens over one Backend seam.

Layout: `wizard.py` is the step engine (knows no step), `widgets.py` the shared screen shape
and dialogs, `views.py` the thin screens, `controllers.py` the steps, `backend.py` the only
module that calls the imaging engine, `app.py` the one place that picks real or dry-run
back-ends and runs the main loop."""

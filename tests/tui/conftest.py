import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_backend import FakeBackend  # noqa: E402

from rescue.tui.app import App  # noqa: E402


@pytest.fixture
def backend():
    b = FakeBackend()
    yield b
    b.close()  # the recorded machine stops standing in for this one


@pytest.fixture
def app(backend, tmp_path):
    a = App(backend, log_dir=str(tmp_path))
    a.main_menu()
    yield a
    if a.runner.running:
        a.runner.cancel.set()
        if backend.gate is not None:
            backend.gate.set()
        a.runner.wait(10)

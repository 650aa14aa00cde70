"""Shared fixtures. Tests write only to files they create and to loop devices they attach,
and detach them whether the test passes or fails."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from disks import LoopRegistry  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root for loop devices")
        for item in items:
            if "root" in item.keywords or "vm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def loops(tmp_path):
    """Attach loop devices over files in this test's directory; all detached at teardown."""
    reg = LoopRegistry(tmp_path)
    try:
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture(scope="module")
def mloops(tmp_path_factory, request):
    """Like `loops`, shared by the tests of one module (for drives that take seconds to build)."""
    reg = LoopRegistry(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield reg
    finally:
        reg.cleanup()

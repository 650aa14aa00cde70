"""Shared fixtures. Tests write only to files they create and to loop devices they attach,
and detach them whether the test passes or fails."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from disks import LoopRegistry  # noqa: E402

# Test tiers (Makefile): `make check` runs tests/unit and tests/tui without root, less what is
# marked root or vm; `make test` then runs the root tier (`-m "root and not vm"`) and the vm
# tier. Every test elsewhere (tests/system, ...) drives loop devices and filesystem tools, so
# it is marked root here, whether or not it says so.
WITHOUT_ROOT = ("unit", "tui")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        try:
            tier = item.path.relative_to(here).parts[0]
        except ValueError:
            tier = ""
        if tier not in WITHOUT_ROOT and "vm" not in item.keywords and "root" not in item.keywords:
            item.add_marker(pytest.mark.root)
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root for loop devices")
        for item in items:
            if "root" in item.keywords or "vm" in item.keywords:
                item.add_marker(skip)


def pytest_collection_finish(session):
    """The Clonezilla images (tests/clonezilla_images.py) take a minute or more to build with
    ocs-sr: when a selected test's module uses them and the cache lacks one, build them in the
    background while the tests before them run (the fixture waits for it)."""
    if os.geteuid() != 0 or session.config.option.collectonly:
        return
    cz = sys.modules.get("clonezilla_images")
    modules = {getattr(item, "module", None) for item in session.items}
    if cz is not None and any(getattr(module, "clonezilla_image", None) is cz.clonezilla_image for module in modules):
        cz.start_builder()


def pytest_sessionfinish(session):
    if "clonezilla_images" in sys.modules:
        sys.modules["clonezilla_images"].stop_builder()


@pytest.fixture(scope="session")
def drive_store():
    """A tmpfs of its own for blank test drives: a target drive is never stored on the
    filesystem that holds the repository (the safety rules refuse that), and test
    repositories live under tmp_path. Sparse files: only what a test writes takes memory,
    and each registry deletes its drives at teardown."""
    path = tempfile.mkdtemp(prefix="rescue-test-drives-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g,mode=0700", "rescue-test-drives", path], check=True)
    try:
        yield Path(path)
    finally:
        subprocess.run(["umount", "--lazy", path])
        os.rmdir(path)


@pytest.fixture
def loops(tmp_path, drive_store):
    """Attach loop devices over files in this test's directory; all detached at teardown."""
    reg = LoopRegistry(tmp_path, drive_store)
    try:
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture(scope="module")
def mloops(tmp_path_factory, request, drive_store):
    """Like `loops`, shared by the tests of one module (for drives that take seconds to build)."""
    reg = LoopRegistry(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), drive_store)
    try:
        yield reg
    finally:
        reg.cleanup()

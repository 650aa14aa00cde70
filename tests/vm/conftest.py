"""The ISO fixture shared by the QEMU tests: built with `make iso` when it is missing or older
than its sources (RESCUE_ISO=path tests a given ISO instead; tests/vm/isofile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from isofile import ensure_iso
from qemu import qemu_available


@pytest.fixture(scope="session")
def iso() -> Path:
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 is not installed")
    return ensure_iso()

"""Configuration: the defaults ship inside the package and are the one source of the default
values; files override some or all of them; bad values are refused with the file's name. And
the version, read from one place."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import rescue
from rescue import config
from rescue.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_checkout_config_is_the_shipped_defaults() -> None:
    """config/rescue.toml (what scripts/build-iso installs as /etc/rescue/rescue.toml) is the
    package's defaults.toml, not a second copy that can drift."""
    shipped = ROOT / "rescue" / "defaults.toml"
    assert (ROOT / "config" / "rescue.toml").read_bytes() == shipped.read_bytes()
    assert config.shipped()[0] == shipped.read_text()


def test_no_file_falls_back_to_the_shipped_defaults(tmp_path: Path) -> None:
    cfg = config.load(search=[tmp_path / "absent.toml"])
    assert "defaults.toml" in cfg.source
    assert (cfg.level, cfg.threads, cfg.chunk_mib, cfg.preverify) == (3, 0, 1, True)


def test_dataclass_defaults_equal_the_shipped_file() -> None:
    from_file = dataclasses.replace(config.parse(*config.shipped()), source="")
    assert dataclasses.replace(config.Config(), source="") == from_file


def test_first_existing_file_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    second.write_text("[capture]\nlevel = 9\n")
    cfg = config.load(search=[first, second])
    assert (cfg.level, cfg.source) == (9, str(second))
    first.write_text("[capture]\nlevel = 5\n")
    assert config.load(search=[first, second]).level == 5


def test_a_partial_file_takes_the_rest_from_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rescue.toml"
    path.write_text("[restore]\npreverify = false\n")
    cfg = config.load(path)
    assert (cfg.level, cfg.threads, cfg.chunk_mib, cfg.preverify) == (3, 0, 1, False)


def test_an_explicit_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        config.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[capture]\nlevel = 0\n", "compression level must be 1..19"),
        ("[capture]\nlevel = true\n", "capture.level must be a whole number"),
        ('[capture]\nthreads = "4"\n', "capture.threads must be a whole number"),
        ("[capture]\nthreads = 999\n", "threads must be 0..256"),
        ("[capture]\nchunk_mib = 3\n", "chunk_mib must be 1, 2, 4, 8 or 16"),
        ('[restore]\npreverify = "yes"\n', "restore.preverify must be true or false"),
        ("capture = 3\n", "capture must be a"),
        ("[capture\n", "rescue.toml"),
    ],
)
def test_bad_values_are_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rescue.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_version_lives_in_one_place() -> None:
    """pyproject.toml reads rescue.__version__ (setuptools dynamic version); scripts/build-iso
    and tests/vm/conftest.py read it from rescue/__init__.py with a pattern that must keep
    matching."""
    text = (ROOT / "rescue" / "__init__.py").read_text()
    found = re.search(r'__version__ = "([^"]+)"', text)
    assert found is not None and found.group(1) == rescue.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "rescue.__version__"}' in pyproject

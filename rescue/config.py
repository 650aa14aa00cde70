"""Defaults from a readable TOML file; command-line flags override them.

Search order: $RESCUE_CONFIG, then /etc/rescue/rescue.toml (the ISO installs the shipped
defaults there, for people to edit). When neither exists, the defaults shipped inside the
package apply: rescue/defaults.toml, read through importlib.resources so that an installed
package has them too. That file is the one source of the default values (config/rescue.toml of
a checkout is a link to it); a file that sets only some keys gets the others from it."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from rescue.errors import UsageError

SHIPPED = "defaults.toml"  # inside the rescue package
SYSTEM = Path("/etc/rescue/rescue.toml")

T = TypeVar("T")

# The chunk size of new repositories, in bytes: defaults.toml's capture.chunk_mib, for the API
# (capture(), Repository.create(), ...) called without a configuration.
CHUNK_SIZE = 1 << 20


@dataclass
class Config:
    # The same values as rescue/defaults.toml (tests/unit/test_config.py holds them equal), for
    # code that builds a Config itself; load() always takes them from the file.
    level: int = 3
    threads: int = 0
    chunk_mib: int = CHUNK_SIZE >> 20
    preverify: bool = True
    bad_sector_retries: int = 1
    network_timeout: int = 30
    network_give_up: int = 300
    source: str = "built-in defaults"

    def worker_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def candidates() -> list[Path]:
    """Configuration files to look for, first found wins."""
    paths = []
    if os.environ.get("RESCUE_CONFIG"):
        paths.append(Path(os.environ["RESCUE_CONFIG"]))
    paths.append(SYSTEM)
    return paths


def shipped() -> tuple[str, str]:
    """(text, name) of the defaults shipped inside the package."""
    resource = resources.files("rescue").joinpath(SHIPPED)
    return resource.read_text(encoding="utf-8"), f"{resource} (shipped defaults)"


def load(path: Path | None = None, search: Sequence[Path] | None = None) -> Config:
    """The configuration from `path` (which must exist), else from the first file of `search`
    (default: candidates()) that exists, else the shipped defaults."""
    for candidate in [path] if path else (candidates() if search is None else search):
        if candidate.is_file():
            return parse(candidate.read_text(), str(candidate))
        if path:
            raise UsageError(f"config file {path} does not exist")
    return parse(*shipped())


def parse(text: str, source: str) -> Config:
    """A configuration file's values over the shipped defaults."""
    base_text, base_source = shipped()
    base = _toml(base_text, base_source)
    data = _toml(text, source)
    cap = {**base["capture"], **data["capture"]}
    res = {**base["restore"], **data["restore"]}
    net = {**base["network"], **data["network"]}
    cfg = Config(
        level=_typed(cap["level"], int, source, "capture.level"),
        threads=_typed(cap["threads"], int, source, "capture.threads"),
        chunk_mib=_typed(cap["chunk_mib"], int, source, "capture.chunk_mib"),
        preverify=_typed(res["preverify"], bool, source, "restore.preverify"),
        bad_sector_retries=_typed(cap["bad_sector_retries"], int, source, "capture.bad_sector_retries"),
        network_timeout=_typed(net["timeout"], int, source, "network.timeout"),
        network_give_up=_typed(net["give_up"], int, source, "network.give_up"),
        source=source,
    )
    validate(cfg)
    return cfg


def _typed(value: object, kind: type[T], source: str, key: str) -> T:
    # bool is an int in Python: `level = true` is not a level.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = "true or false" if kind is bool else "a whole number"
        raise UsageError(f"{source}: {key} must be {expected}, not {value!r}")
    return value


def _toml(text: str, source: str) -> dict[str, dict[str, object]]:
    """The [capture], [restore] and [network] tables of a file (empty when absent)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: {e}") from None
    tables: dict[str, dict[str, object]] = {}
    for section in ("capture", "restore", "network"):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"{source}: {section} must be a [{section}] table")
        tables[section] = table
    return tables


def validate(cfg: Config) -> None:
    """Ranges; also for a Config built from command-line flags."""
    if not 1 <= cfg.level <= 19:
        raise UsageError(f"{cfg.source}: compression level must be 1..19, not {cfg.level!r}")
    if not 0 <= cfg.threads <= 256:
        raise UsageError(f"{cfg.source}: threads must be 0..256, not {cfg.threads!r}")
    if cfg.chunk_mib not in (1, 2, 4, 8, 16):
        raise UsageError(f"{cfg.source}: chunk_mib must be 1, 2, 4, 8 or 16, not {cfg.chunk_mib!r}")
    if not 1 <= cfg.network_timeout <= 3600:
        raise UsageError(f"{cfg.source}: network.timeout must be 1..3600 seconds, not {cfg.network_timeout!r}")
    if not 1 <= cfg.network_give_up <= 86400:
        raise UsageError(f"{cfg.source}: network.give_up must be 1..86400 seconds, not {cfg.network_give_up!r}")
    if not 0 <= cfg.bad_sector_retries <= 100:
        raise UsageError(f"{cfg.source}: bad_sector_retries must be 0..100, not {cfg.bad_sector_retries!r}")

"""Defaults from a readable TOML file; command-line flags override them.

Search order: $RESCUE_CONFIG, /etc/rescue/rescue.toml (the ISO), config/rescue.toml beside the
package (a source checkout). Built-in values apply only when no file is found."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import UsageError


@dataclass
class Config:
    level: int = 3
    threads: int = 0
    chunk_mib: int = 4
    preverify: bool = True
    source: str = "built-in defaults"

    def worker_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def candidates() -> list[Path]:
    paths = []
    if os.environ.get("RESCUE_CONFIG"):
        paths.append(Path(os.environ["RESCUE_CONFIG"]))
    paths.append(Path("/etc/rescue/rescue.toml"))
    paths.append(Path(__file__).resolve().parent.parent / "config" / "rescue.toml")
    return paths


def load(path: Path | None = None) -> Config:
    for candidate in [path] if path else candidates():
        if candidate.is_file():
            return parse(candidate.read_text(), str(candidate))
        if path:
            raise UsageError(f"config file {path} does not exist")
    return Config()


def parse(text: str, source: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source}: {e}") from None
    cap, res = data.get("capture", {}), data.get("restore", {})
    cfg = Config(level=cap.get("level", 3), threads=cap.get("threads", 0),
                 chunk_mib=cap.get("chunk_mib", 4), preverify=res.get("preverify", True), source=source)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    if not (isinstance(cfg.level, int) and 1 <= cfg.level <= 19):
        raise UsageError(f"{cfg.source}: compression level must be 1..19, not {cfg.level!r}")
    if not (isinstance(cfg.threads, int) and 0 <= cfg.threads <= 256):
        raise UsageError(f"{cfg.source}: threads must be 0..256, not {cfg.threads!r}")
    if cfg.chunk_mib not in (1, 2, 4, 8, 16):
        raise UsageError(f"{cfg.source}: chunk_mib must be 1, 2, 4, 8 or 16, not {cfg.chunk_mib!r}")

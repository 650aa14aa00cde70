"""The secrets of an unattended job, from a file on the boot server or on the stick
(`rescue.credentials=URL|PATH`), never from the kernel command line: /proc/cmdline is
readable by anyone and printed at boot (DESIGN.md).

The file is an AWS shared-credentials file, the format every S3 tool and service documents,
with one section of ours:

    [default]
    aws_access_key_id = AKIA...
    aws_secret_access_key = ...

    [rescue]
    password = the encrypted repository's password

Its AWS sections are written to a file readable by root only under /run/rescue (RAM) and
named by AWS_SHARED_CREDENTIALS_FILE, where rescue.repo.s3 looks as it does for any user;
the password is handed to the engine. Nothing of it is printed, logged or kept: the console
says which kinds of secret came, and `discard` removes the file when the job ends.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import RepoError, UsageError

OURS = "rescue"
MAX_SIZE = 64 << 10  # a credentials file is a few lines; anything larger is not one
TRIES = (0, 2, 5)  # seconds before each try: the network may have just come up
TIMEOUT = 20  # seconds per request


@dataclass(frozen=True)
class Secrets:
    """What a credentials file held: the AWS sections as text, and our password."""

    aws: str = field(repr=False)
    password: str | None = field(default=None, repr=False)

    def kinds(self) -> str:
        """What came, for the console: never a value."""
        said = []
        if self.aws:
            said.append("S3 keys")
        if self.password is not None:
            said.append("a repository password")
        return " and ".join(said) or "nothing rescue uses"


def parse(text: str, where: str) -> Secrets:
    """The file's secrets; UsageError naming the file (never a line of it) when it is not
    an INI file, or when its [rescue] section holds what we do not know."""
    ini = configparser.ConfigParser(interpolation=None)
    try:
        ini.read_string(text, source=where)
    except configparser.Error as e:
        raise UsageError(
            f"{where} is not a credentials file (INI: [default] aws_access_key_id = ...): {_kind(e)}"
        ) from None
    password = None
    if ini.has_section(OURS):
        unknown = set(ini[OURS]) - {"password"}
        if unknown:
            raise UsageError(f"{where}: [rescue] holds {', '.join(sorted(unknown))}; only password belongs there")
        password = ini[OURS].get("password") or None
        ini.remove_section(OURS)
    aws = configparser.ConfigParser(interpolation=None)
    aws.read_dict(ini)
    lines: list[str] = []
    for name in aws.sections():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in aws[name].items()]
    return Secrets("\n".join(lines) + "\n" if lines else "", password)


def _kind(e: configparser.Error) -> str:
    """What is wrong, without the line it is in (that line may be a secret)."""
    if isinstance(e, configparser.MissingSectionHeaderError):
        return "it does not start with a [section]"
    if isinstance(e, configparser.DuplicateSectionError | configparser.DuplicateOptionError):
        return "a section or key appears twice"
    return "a line is neither [section] nor key = value"


def fetch(where: str, sleep=time.sleep) -> str:
    """The file's text, from http(s):// (tried three times: DHCP may have only just
    answered) or from a path (the stick, the live medium). RepoError names the place."""
    if not where.startswith(("http://", "https://")):
        try:
            with open(where, "rb") as f:
                blob = f.read(MAX_SIZE + 1)
        except OSError as e:
            raise RepoError(f"cannot read the credentials file {where}: {e.strerror}") from None
        return _text(blob, where)
    why = ""
    for wait in TRIES:
        sleep(wait)
        try:
            with urllib.request.urlopen(where, timeout=TIMEOUT) as r:  # noqa: S310 (http(s) only, checked above)
                return _text(r.read(MAX_SIZE + 1), where)
        except urllib.error.HTTPError as e:
            if e.code < 500:  # not there, not allowed: no retry changes that
                raise RepoError(
                    f"the boot server refused the credentials file {where}: HTTP {e.code} {e.reason}"
                ) from None
            why = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError) as e:
            why = str(getattr(e, "reason", None) or e)
    raise RepoError(f"cannot fetch the credentials file {where} ({len(TRIES)} tries): {why}")


def _text(blob: bytes, where: str) -> str:
    if len(blob) > MAX_SIZE:
        raise UsageError(f"{where} is larger than {MAX_SIZE >> 10} KiB: not a credentials file")
    try:
        return blob.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not text: not a credentials file") from None


def install(secrets: Secrets, run_dir: Path) -> Path | None:
    """Write the AWS sections where rescue.repo.s3 reads them (root only, in RAM) and point
    AWS_SHARED_CREDENTIALS_FILE there; the file, or None when there were none."""
    if not secrets.aws:
        return None
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = run_dir / "fleet-aws-credentials"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.aws)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(path)
    return path


def discard(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

"""What a machine is told to do unattended, read from its kernel command line: the one place
`rescue.*` boot parameters are parsed and checked, and the target rules matched.

Pure: text in, an `Order` out, or a UsageError naming the parameter. Every bad or
contradicting value stops here, before a repository is opened or a drive looked at, so a
typo in a PXE configuration never reaches a drive (Clonezilla's `ocs_live_run` takes a
shell command line and finds its mistakes halfway through).

    rescue.mode=restore rescue.repo=http://10.0.0.5/repo rescue.image=latest:lab-
    rescue.target=internal,size:100G..2T rescue.layout=proportional rescue.confirm=destroy
    rescue.after=poweroff rescue.on_fail=wait
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rescue.errors import UsageError
from rescue.model.layout import DiskLayout
from rescue.model.plan import POLICIES

PREFIX = "rescue."
MODES = ("restore", "capture")
AFTER = ("wait", "poweroff", "reboot", "shell")
# rescue.console belongs to the consoles (live-build's rescue-console), not to the job.
NOT_OURS = frozenset({"console"})
KNOWN = frozenset(
    {
        "mode",
        "repo",
        "image",
        "target",
        "source",
        "layout",
        "confirm",
        "after",
        "on_fail",
        "force",
        "s3_endpoint",
        "credentials",
    }
)
# Decimal units, as drives are sold ("a 2 TB drive"); the binary ones where a person says so.
UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
NOT_INTERNAL_BUSES = frozenset({"usb", "mmc", "file", "loop"})


@dataclass(frozen=True)
class Drive:
    """What a rule looks at: the engine's drive facts, plus whether the live system booted
    from it."""

    path: str
    model: str
    serial: str
    size: int
    bus: str
    removable: bool
    boot_medium: bool = False


@dataclass(frozen=True)
class Rule:
    kind: str  # "serial", "model", "size", "bus", "internal"
    value: str = ""
    low: int = 0
    high: int | None = None

    def matches(self, d: Drive) -> bool:
        if self.kind == "serial":
            return d.serial == self.value
        if self.kind == "model":
            return self.value.casefold() in d.model.casefold()
        if self.kind == "bus":
            return d.bus == self.value
        if self.kind == "size":
            return d.size >= self.low and (self.high is None or d.size <= self.high)
        # internal: not removable, not on a removable bus, not what the live system booted from
        return not d.removable and d.bus not in NOT_INTERNAL_BUSES and not d.boot_medium

    def __str__(self) -> str:
        if self.kind == "internal":
            return "internal"
        if self.kind == "model":
            return f"model~{self.value}"
        if self.kind == "size":
            return f"size:{self.low}..{'' if self.high is None else self.high}"
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class Order:
    mode: str
    repo: str
    image: str = ""  # a name, or "latest:PREFIX"; "" for capture (named from the machine)
    rules: tuple[Rule, ...] = ()
    layout: str = "auto"
    confirmed: bool = False  # rescue.confirm=destroy
    after: str = "wait"
    on_fail: str = "wait"
    force: bool = False
    s3_endpoint: str | None = None
    credentials: str | None = None  # where the job's secrets are: http(s) URL or a path (rescue.fleet.credentials)
    text: str = field(default="", compare=False)  # the parameters as given, for the log

    @property
    def loops(self) -> bool:
        """Whether loop devices are drives here: only when a rule names them (bus:loop). The
        live system's own (its squashfs) never is a machine's drive."""
        return any(r.kind == "bus" and r.value == "loop" for r in self.rules)

    @property
    def latest(self) -> str | None:
        """The name prefix of `latest:PREFIX`, else None."""
        return self.image[len("latest:") :] if self.image.startswith("latest:") else None


def size_of(text: str, param: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]I?)?B?", text.strip().upper())
    if not m:
        raise UsageError(f"{param}: {text!r} is not a size (say 100G, 2T, 512GiB)")
    return int(float(m.group(1)) * UNITS[m.group(2) or ""])


def parse_rules(text: str, param: str = "rescue.target") -> tuple[Rule, ...]:
    """`internal,size:100G..2T,model~Samsung,serial:S3Z...,bus:nvme`: all must hold."""
    rules = []
    for part in (p.strip() for p in text.split(",")):
        if part == "internal":
            rules.append(Rule("internal"))
        elif part.startswith("model~") and part[6:]:
            rules.append(Rule("model", part[6:]))
        elif part.startswith(("serial:", "bus:")) and part.partition(":")[2]:
            kind, _, value = part.partition(":")
            rules.append(Rule(kind, value.lower() if kind == "bus" else value))
        elif part.startswith("size:"):
            low, dots, high = part[5:].partition("..")
            if not dots or not (low or high):
                raise UsageError(f"{param}: {part!r}: say size:MIN..MAX (either side may be left out)")
            lo = size_of(low, param) if low else 0
            hi = size_of(high, param) if high else None
            if hi is not None and hi < lo:
                raise UsageError(f"{param}: {part!r}: the largest size is smaller than the smallest")
            rules.append(Rule("size", low=lo, high=hi))
        else:
            raise UsageError(f"{param}: {part!r} is not a rule (internal, serial:S, model~TEXT, size:MIN..MAX, bus:B)")
    return tuple(rules)


def _pairs(words: Iterable[str]) -> dict[str, str]:
    """`rescue.KEY=VALUE` words; the same key twice with two values contradicts itself."""
    found: dict[str, str] = {}
    for word in words:
        if not word.startswith(PREFIX):
            continue
        key, eq, value = word[len(PREFIX) :].partition("=")
        if key in NOT_OURS:
            continue
        if key not in KNOWN:
            raise UsageError(f"unknown boot parameter {PREFIX}{key} (known: {', '.join(sorted(KNOWN))})")
        if not eq or not value:
            raise UsageError(f"boot parameter {PREFIX}{key} needs a value ({PREFIX}{key}=...)")
        if key in found and found[key] != value:
            raise UsageError(f"{PREFIX}{key} is given twice: {found[key]!r} and {value!r}")
        found[key] = value
    return found


def _one_of(p: dict[str, str], key: str, choices: Sequence[str], default: str) -> str:
    value = p.get(key, default)
    if value not in choices:
        raise UsageError(f"{PREFIX}{key}={value} is not one of: {', '.join(choices)}")
    return value


def wanted(cmdline: str) -> bool:
    """Whether the machine was booted to do a job unattended (any `rescue.mode=`)."""
    return any(w.startswith(PREFIX + "mode=") for w in cmdline.split())


def parse(cmdline: str) -> Order:
    """The order in a kernel command line (/proc/cmdline), checked whole."""
    try:
        words = shlex.split(cmdline)
    except ValueError as e:
        raise UsageError(f"the boot parameters cannot be read: {e}") from None
    p = _pairs(words)
    if "mode" not in p:
        raise UsageError("no rescue.mode=restore or rescue.mode=capture among the boot parameters")
    mode = _one_of(p, "mode", MODES, "")
    if "repo" not in p:
        raise UsageError(f"rescue.mode={mode} needs rescue.repo= (a drive label:NAME or uuid:UUID, a path or URL)")
    for key in ("repo", "credentials"):
        if "://" in p.get(key, "") and urllib.parse.urlsplit(p[key]).password is not None:
            # it would be shown on both consoles and stored in the logs, and anyone can read /proc/cmdline
            raise UsageError(
                f"rescue.{key}= holds a password, and the kernel command line is readable by anyone: "
                "put secrets in the rescue.credentials= file (docs/fleet.md)"
            )
    where = p.get("credentials", "/")
    if not where.startswith(("http://", "https://", "/")):
        raise UsageError(f"rescue.credentials={where}: say an http:// or https:// URL, or an absolute path")
    if mode == "restore":
        if "source" in p:
            raise UsageError("rescue.source= names the drive a capture reads; a restore takes rescue.target=")
        if "image" not in p:
            raise UsageError("rescue.mode=restore needs rescue.image=NAME or rescue.image=latest:PREFIX")
        if "target" not in p:
            raise UsageError("rescue.mode=restore needs rescue.target= rules (say internal, or serial:...)")
        rules = parse_rules(p["target"])
    else:
        for key in ("target", "image", "layout", "force"):
            if key in p:
                raise UsageError(f"rescue.{key}= is for a restore; a capture takes rescue.source= rules")
        rules = parse_rules(p.get("source", "internal"), "rescue.source")
    if p.get("confirm", "destroy") != "destroy":
        raise UsageError(f"rescue.confirm={p['confirm']}: the only confirmation is rescue.confirm=destroy")
    force = p.get("force", "0")
    if force not in ("0", "1"):
        raise UsageError(f"rescue.force={force}: say rescue.force=1 (or leave it out)")
    return Order(
        mode=mode,
        repo=p["repo"],
        image=p.get("image", ""),
        rules=rules,
        layout=_one_of(p, "layout", ("auto", *POLICIES), "auto"),
        confirmed=p.get("confirm") == "destroy",
        after=_one_of(p, "after", AFTER, "wait"),
        on_fail=_one_of(p, "on_fail", AFTER, "wait"),
        force=force == "1",
        s3_endpoint=p.get("s3_endpoint"),
        credentials=p.get("credentials"),
        text=" ".join(w for w in words if w.startswith(PREFIX) and w[len(PREFIX) :].partition("=")[0] in KNOWN),
    )


def matching(rules: Sequence[Rule], drives: Sequence[Drive]) -> list[Drive]:
    """Every drive all the rules hold for."""
    return [d for d in drives if all(r.matches(d) for r in rules)]


def holds_image(
    image: DiskLayout, image_fs: dict[int, str], current: DiskLayout | None, current_fs: dict[int, str]
) -> bool:
    """Whether a drive already holds what restoring the image writes: the same table kind and
    disk id, the same partitions (numbers, and GPT unique GUIDs), and each filesystem the image
    knows the UUID of (partition number -> UUID) there with that UUID. How a machine netbooted
    again knows it was restored, also from a read-only repository (docs/fleet.md). A restore
    keeps all of these (unless --new-ids); a drive that merely looks alike has another disk id."""
    if current is None or current.table != image.table or not image.disk_id:
        return False
    if (current.disk_id or "").lower() != image.disk_id.lower():
        return False
    want = {p.number: (p.uuid or "").lower() for p in image.partitions}
    have = {p.number: (p.uuid or "").lower() for p in current.partitions}
    if want.keys() != have.keys() or any(u and have[n] != u for n, u in want.items()):
        return False
    return all(current_fs.get(n, "").lower() == u.lower() for n, u in image_fs.items() if u)

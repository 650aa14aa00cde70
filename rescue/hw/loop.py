"""Loop devices over a byte range of a file or drive. The kernel here does not parse
partition tables on loop devices, so filesystem tools see a partition through a loop device
with --offset/--sizelimit instead of a partition node."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rescue.errors import DeviceError
from rescue.hw.run import output, run


def attach(path: str, *, offset: int = 0, size: int | None = None, readonly: bool = False) -> str:
    argv = ["losetup", "--find", "--show", "--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    if readonly:
        argv.append("--read-only")
    return output(argv + [path], error=DeviceError).strip()


def detach(dev: str) -> None:
    run(["losetup", "--detach", dev], error=DeviceError, check=False)


@contextlib.contextmanager
def attached(path: str, *, offset: int = 0, size: int | None = None, readonly: bool = False) -> Iterator[str]:
    dev = attach(path, offset=offset, size=size, readonly=readonly)
    try:
        yield dev
    finally:
        detach(dev)

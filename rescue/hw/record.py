"""`python3 -m rescue.hw.record > machine.json`: record this machine for the wizard's dry run
and for tests (`rescue wizard --machine machine.json`).

The kernel's part is `rescue.hw.devices.record()`; what the engine knows above the kernel (the
filesystems on each drive, the repositories found and their images) is added by
`rescue.machine.record()`. This command line is a front end, so it may call up into the
engine's layer; nothing in `rescue.hw` imports it. Reads only: discovery mounts filesystems
read-only and unmounts them again."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from rescue.errors import RescueError
    from rescue.machine import record

    parser = argparse.ArgumentParser(prog="python3 -m rescue.hw.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-loop", action="store_true", help="leave loop devices out of the drive list")
    args = parser.parse_args(argv)
    try:
        data = record(include_loop=not args.no_loop)
    except RescueError as e:
        print(f"rescue.hw.record: {e}", file=sys.stderr)
        return e.exit_code
    json.dump(data, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

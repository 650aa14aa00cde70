"""What the machine does once the result line is out: rescue.after when the job did not
fail, rescue.on_fail when it did (or when the parameters themselves were wrong).

Only `rescue unattended --finish` (the ISO's console) acts; run by hand on a technician's
machine it only says what it would do, so a test or a typo never powers off a host."""

from __future__ import annotations

import subprocess
import sys

from rescue.fleet.order import Order
from rescue.fleet.run import Console, Result

WORDS = {
    "poweroff": "powering off",
    "reboot": "rebooting",
    "wait": "waiting here with the result on the screen",
    "shell": "leaving a root shell",
}


def action(order: Order | None, result: Result) -> str:
    if order is None:
        return "wait"  # the parameters could not be read: nobody knows what was wanted
    if result.status == "failed":
        return order.on_fail
    if result.status == "skipped" and order.after == "reboot":
        return "poweroff"  # nothing was restored to boot: a reboot would netboot, skip, reboot...
    return order.after


def after(order: Order | None, result: Result, console: Console, *, act: bool) -> None:
    what = action(order, result)
    if not act:
        console.say(f"then: {what} (rescue unattended --finish would do it)")
        return
    console.say(f"then: {WORDS[what]}")
    if what in ("poweroff", "reboot"):
        subprocess.run(["sync"], check=False)
        subprocess.run(["systemctl", "--no-block", what], check=False)
    elif what == "wait" and sys.stdin.isatty():
        console.say("press Enter for a root shell")
        sys.stdin.readline()

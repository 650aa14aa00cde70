"""Encrypted repositories inside the ISO (issue 18): opening one on the live system, under
QEMU (TCG) with the VM's 1 GiB of RAM, takes under 3 seconds.

Not a test of its own (it needs no boot of its own): `check_encrypted_open(vm, prompt)` runs in
the root shell of a VM another test has already booted, e.g. tests/vm/test_record.py right
after its shell prompt. It makes an encrypted repository in /tmp (the live system's RAM), then
times, in the guest, opening it with its password (reading rescue-repo.json and the key file,
scrypt over 32 MiB, unwrapping: what the bound is about), the imports before it (rescue.repo.store
and cryptography, paid by every rescue command), and a whole `rescue list` of it (a new
interpreter, the imports, the opening, the listing)."""

from __future__ import annotations

import re

PASSWORD = "open sesame"
REPO = "/tmp/enc-repo"
LIMIT = 3.0  # seconds, the bound on opening


def check_encrypted_open(vm, prompt: re.Pattern[bytes], limit: float = LIMIT) -> float:
    """Seconds the guest took to open an encrypted repository; AssertionError over `limit`.
    Prints both times. Leaves the shell at its prompt, the password out of its environment."""
    vm.sendline(f"export RESCUE_PASSWORD='{PASSWORD}'; rescue init {REPO} --encrypt > /dev/null && echo 'made'\"\" it")
    vm.expect_text("made it", timeout=120)
    vm.expect(prompt, timeout=30, what="the prompt after rescue init")
    opening = (
        "import time; t = time.monotonic(); "
        "from rescue.repo.store import Repository; "
        "u = time.monotonic(); "
        f"Repository.open('{REPO}', password='{PASSWORD}').close(); "
        "print('IMPORTED in %.3f s, OPENED in %.3f s' % (u - t, time.monotonic() - u))"
    )
    vm.sendline(f'python3 -c "{opening}"')
    found = vm.expect(re.compile(rb"IMPORTED in ([0-9.]+) s, OPENED in ([0-9.]+) s"), timeout=120, what="the opening")
    imports, seconds = float(found.group(1)), float(found.group(2))
    vm.expect(prompt, timeout=30, what="the prompt after opening")
    vm.sendline(f"TIMEFORMAT='LISTED in %R s'; time rescue list {REPO} > /dev/null; unset RESCUE_PASSWORD TIMEFORMAT")
    listed = float(vm.expect(re.compile(rb"LISTED in ([0-9.]+) s"), timeout=120, what="rescue list").group(1))
    vm.expect(prompt, timeout=30, what="the prompt after rescue list")
    print(
        f"encrypted repository in the ISO: opened in {seconds:.2f} s (after {imports:.2f} s of imports); "
        f"a whole `rescue list` took {listed:.2f} s",
        flush=True,
    )
    assert seconds < limit, f"opening an encrypted repository took {seconds:.2f} s in the ISO (limit {limit} s)"
    return seconds

"""What firmware this machine booted with: a plan lists a UEFI boot entry only where one can
be added."""

from __future__ import annotations

import os

EFI_DIR = "/sys/firmware/efi"


def uefi_firmware(firmware_dir: str = EFI_DIR) -> bool:
    return os.path.isdir(firmware_dir)

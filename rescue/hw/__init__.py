"""The only code that talks to the kernel, udev, parted and external tools about devices."""

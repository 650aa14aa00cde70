"""The imaging engine: capture, restore, verify. Knows no urwid and no udev."""

"""rescue: capture, restore, verify and browse whole-drive images."""

__version__ = "0.1.0"

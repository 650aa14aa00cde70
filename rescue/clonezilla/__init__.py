"""Clonezilla images in: the image directories `ocs-sr savedisk` writes, and partclone's
image format, read and checked (docs/clonezilla.md). A directory is presented as a read-only
image (source.py) so that planning, writing and storing are the rescue image's own code."""

"""Browsing an image without restoring it: a read-only FUSE view of its areas (imagefs),
loop devices and read-only mounts over it (mounts), and copying single files and folders
out of it (extract)."""

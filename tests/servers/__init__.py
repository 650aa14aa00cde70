"""Network servers that tests start on 127.0.0.1 for the product to talk to: Samba (SMB) and
NFS-Ganesha (NFSv4). Each runs from a private directory of its own, with a bounded lifetime,
and is stopped at the fixture's teardown. A QEMU guest on the user network reaches them at
10.0.2.2 (QEMU forwards its connections to the host's 127.0.0.1)."""

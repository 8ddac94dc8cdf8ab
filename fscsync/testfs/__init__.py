"""A stand-in for an fscrypt filesystem with the key-less encdata interface, for tests.

No kernel here has the ext4/ldiskfs encdata patch, so fscsync is tested against
this FUSE filesystem instead, through ordinary syscalls:

- model     fscrypt v2 crypto (checked against the real ext4 by tests/test_testfs_kernel.py)
- names     the escaped form a locked view shows raw encrypted names in
- backing   the on-disk "encrypted backup layout" a mount serves
- contents  plaintext reads/writes over ciphertext, unit by unit
- fusefs    the FUSE operations (locked view without key, unlocked with)
- mount     start/stop daemons: `with mounted(backing, mnt, key=None) as root: ...`

The sync engine never imports this package.
"""

from fscsync.testfs.backing import make_encrypted_dir
from fscsync.testfs.mount import MountError, mounted, start, stop, umount

__all__ = ["MountError", "make_encrypted_dir", "mounted", "start", "stop", "umount"]

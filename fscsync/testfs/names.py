"""Which shown names stand for raw encrypted names (the escape itself is
cipher.escape_name). The same form names encrypted entries in the backing
directory, which makes the backing directory exactly the "encrypted backup" a
key-less copy produces on a plain filesystem.
"""

from __future__ import annotations

from fscsync.fs.cipher import MAX_NAME, unescape_name

_MIN_RAW = 16


def raw_name(shown: bytes) -> bytes | None:
    """The raw ciphertext name a shown name stands for, or None if it cannot be one."""
    try:
        raw = unescape_name(shown)
    except ValueError:
        return None
    return raw if _MIN_RAW <= len(raw) <= MAX_NAME else None

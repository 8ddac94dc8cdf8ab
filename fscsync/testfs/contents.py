"""Plaintext I/O on a backing file that holds fscrypt ciphertext, as the kernel does it.

Writes re-encrypt only the data units they touch, so an unchanged unit at the
same offset keeps its ciphertext. Bytes past i_size inside the last unit are
kept zero (as ext4 zeroes them on truncate). A unit whose ciphertext is all
zeros is a hole and reads as zeros: that is how sparse regions look in both
views, and how a key-less copy that wrote zeros for a hole stays readable.
"""

from __future__ import annotations

import os

from fscsync.fs.cipher import UNIT, padded_size
from fscsync.testfs.model import decrypt_unit, encrypt_unit

_HOLE = bytes(UNIT)


def _read_unit(fd: int, key: bytes, index: int, size: int) -> bytes:
    if index * UNIT >= size:
        return _HOLE
    cipher = os.pread(fd, UNIT, index * UNIT).ljust(UNIT, b"\0")
    return _HOLE if cipher == _HOLE else decrypt_unit(key, index, cipher)


def read_plain(fd: int, key: bytes, size: int, length: int, offset: int) -> bytes:
    """Up to `length` plaintext bytes at `offset` of a file whose cleartext size is `size`."""
    end = min(offset + length, size)
    if end <= offset:
        return b""
    first, last = offset // UNIT, (end - 1) // UNIT
    plain = b"".join(_read_unit(fd, key, i, size) for i in range(first, last + 1))
    return plain[offset - first * UNIT:end - first * UNIT]


def write_plain(fd: int, key: bytes, size: int, data: bytes, offset: int) -> int:
    """Encrypt `data` into place; returns the new cleartext size."""
    if not data:
        return size
    end = offset + len(data)
    first, last = offset // UNIT, (end - 1) // UNIT
    buf = bytearray((last - first + 1) * UNIT)
    head = offset - first * UNIT
    if head:
        buf[:UNIT] = _read_unit(fd, key, first, size)
    if end % UNIT and (last != first or not head):
        buf[-UNIT:] = _read_unit(fd, key, last, size)
    buf[head:head + len(data)] = data
    cipher = b"".join(
        encrypt_unit(key, first + i, buf[off:off + UNIT])
        for i, off in enumerate(range(0, len(buf), UNIT))
    )
    os.pwrite(fd, cipher, first * UNIT)
    return max(size, end)


def truncate_plain(fd: int, key: bytes, size: int, new_size: int) -> None:
    """Cut or extend to `new_size`; a cut inside a unit re-encrypts it with a zeroed tail."""
    cut = new_size % UNIT
    if new_size < size and cut:
        index = new_size // UNIT
        plain = _read_unit(fd, key, index, size)[:cut]
        os.pwrite(fd, encrypt_unit(key, index, plain), index * UNIT)
    os.ftruncate(fd, padded_size(new_size))

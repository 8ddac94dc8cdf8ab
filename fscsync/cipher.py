"""The key-less fscrypt interface: O_CIPHERTEXT, the security.encdata text, detection.

Everything fscsync knows about encryption lives here; the engine never decrypts,
it only moves ciphertext and this one xattr, set last on the receiver.
"""

from __future__ import annotations

import base64
import errno
import os
import re
from collections import namedtuple

import xattr

ENCDATA_XATTR = b"security.encdata"
# O_NOCTTY | O_NDELAY | O_DSYNC, as the ext4/ldiskfs encdata patch defines it.
O_CIPHERTEXT = os.O_NOCTTY | os.O_NDELAY | os.O_DSYNC
UNIT = 4096
CTX_V2_LEN = 40
MAX_NAME = 255
# Context flags whose IVs depend on inode numbers: such files cannot be
# decrypted once restored to new inodes.
IV_INO_LBLK_64 = 0x08
IV_INO_LBLK_32 = 0x10
MAX_ENCDATA = 1024

_B64U = rb"[A-Za-z0-9_-]*"
_ENCDATA_RE = re.compile(
    rb"\{ encoding: (?P<enc>[a-z0-9]+), size: (?P<size>0|[1-9][0-9]{0,19}), "
    rb"enc_ctx: (?P<ctx>" + _B64U + rb"), enc_name: (?P<name>" + _B64U + rb") \}\x00?"
)


class EncdataError(ValueError):
    """Malformed security.encdata text; the message says what is wrong."""


class EncData(namedtuple("EncData", "size enc_ctx enc_name", defaults=(b"",))):
    """The fields of one encdata text: cleartext size, 40-byte v2 context, raw name."""

    __slots__ = ()

    @property
    def flags(self) -> int:
        return self.enc_ctx[3]

    @property
    def master_key_id(self) -> bytes:
        return self.enc_ctx[8:24]

    @property
    def nonce(self) -> bytes:
        return self.enc_ctx[24:40]

    @property
    def policy(self) -> bytes:
        """The context without its per-inode nonce: equal for one policy."""
        return self.enc_ctx[:24]

    @property
    def ino_based_iv(self) -> bool:
        return bool(self.flags & (IV_INO_LBLK_64 | IV_INO_LBLK_32))


def b64u_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64u_decode(text: bytes, field: str) -> bytes:
    if len(text) % 4 == 1:
        raise EncdataError(f"{field}: impossible base64url length {len(text)}")
    try:
        data = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except ValueError as exc:
        raise EncdataError(f"{field}: bad base64url ({exc})") from None
    if b64u_encode(data) != text:
        raise EncdataError(f"{field}: non-canonical base64url")
    return data


def format_encdata(enc: EncData) -> bytes:
    return (
        b"{ encoding: base64url, size: %d, enc_ctx: %s, enc_name: %s }"
        % (enc.size, b64u_encode(enc.enc_ctx), b64u_encode(enc.enc_name))
    )


def parse_encdata(text: bytes) -> EncData:
    """Strict parse: exact field order and spacing, v2 context, bounded sizes."""
    if not isinstance(text, bytes | bytearray):
        raise EncdataError("not bytes")
    if len(text) > MAX_ENCDATA:
        raise EncdataError(f"too long ({len(text)} bytes)")
    m = _ENCDATA_RE.fullmatch(bytes(text))
    if m is None:
        raise EncdataError("does not match '{ encoding: E, size: N, enc_ctx: C, enc_name: N }'")
    if m["enc"] != b"base64url":
        raise EncdataError(f"unknown encoding {m['enc'].decode()!r}")
    size = int(m["size"])
    if size >= 1 << 63:
        raise EncdataError("size out of range")
    ctx = b64u_decode(m["ctx"], "enc_ctx")
    if len(ctx) != CTX_V2_LEN:
        raise EncdataError(f"enc_ctx is {len(ctx)} bytes, a v2 context has {CTX_V2_LEN}")
    if ctx[0] != 2:
        raise EncdataError(f"enc_ctx version {ctx[0]} is not 2")
    name = b64u_decode(m["name"], "enc_name")
    if len(name) > MAX_NAME:
        raise EncdataError(f"enc_name is {len(name)} bytes, more than {MAX_NAME}")
    return EncData(size, ctx, name)


def read_encdata(target: int | bytes, name: bytes = ENCDATA_XATTR,
                 follow: bool = True) -> bytes | None:
    """The raw encdata text of a path or fd, or None for a plain entry."""
    return find_encdata(target, (name,), follow)[0]


def encdata_names(alternative: bytes) -> tuple[bytes, ...]:
    """Where encdata may be found: its own name, then --encdata-xattr's, if other."""
    return tuple(dict.fromkeys((ENCDATA_XATTR, alternative)))


def find_encdata(target: int | bytes, names: tuple[bytes, ...],
                 follow: bool = True) -> tuple[bytes | None, bytes | None]:
    """(encdata text, the xattr name it was under) for the first of `names` an entry
    has, or (None, None) for a plain entry.

    One listxattr answers the common, plain case: cheaper than a failing get (no
    exception), and this runs once per entry on both sides."""
    try:
        present = os.listxattr(target, follow_symlinks=follow or isinstance(target, int))
        if not present:
            return None, None
        for name in names:
            if os.fsdecode(name) in present:
                return xattr.get(target, name, nofollow=not follow), name
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    return None, None


def padded_size(size: int) -> int:
    """How many ciphertext bytes a cleartext size occupies."""
    return -(-size // UNIT) * UNIT


def open_data(path: bytes, encrypted: bool, dir_fd: int | None = None,
              extra: int = 0) -> tuple[int, bool]:
    """Open a regular file for reading its data: ciphertext when encrypted, plain
    bytes otherwise; returns (fd, direct). `extra`: more open flags (O_NOATIME, which
    only the file's owner may ask for: anyone else reads it without)."""
    try:
        if encrypted:
            return open_ciphertext(path, dir_fd, extra)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | extra,
                       dir_fd=dir_fd), False
    except PermissionError:
        if not extra:
            raise
        return open_data(path, encrypted, dir_fd)


def open_ciphertext(path: bytes, dir_fd: int | None = None,
                    extra: int = 0) -> tuple[int, bool]:
    """Open an encrypted file for raw ciphertext reads; returns (fd, direct).

    O_DIRECT is asked for first (Lustre needs it); filesystems refusing it
    with EINVAL get buffered ciphertext reads instead.
    """
    flags = os.O_RDONLY | O_CIPHERTEXT | os.O_NOFOLLOW | os.O_CLOEXEC | extra
    try:
        return os.open(path, flags | os.O_DIRECT, dir_fd=dir_fd), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(path, flags, dir_fd=dir_fd), False

"""The key-less fscrypt interface: O_CIPHERTEXT, the security.encdata text, detection.

Everything fscsync knows about encryption lives here; the engine never decrypts,
it only moves ciphertext and this one xattr, set last on the receiver.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import struct
from collections import namedtuple

ENCDATA_XATTR = b"security.encdata"
# O_NOCTTY | O_NDELAY | O_DSYNC, as the ext4/ldiskfs encdata patch defines it.
O_CIPHERTEXT = os.O_NOCTTY | os.O_NDELAY | os.O_DSYNC
UNIT = 4096
CTX_V2_LEN = 40
CTX_V1_LEN = 28
NONCE_LEN = 16
MAX_NAME = 255
# Context flags whose IVs depend on inode numbers: such files cannot be
# decrypted once restored to new inodes.
IV_INO_LBLK_64 = 0x08
IV_INO_LBLK_32 = 0x10
MAX_ENCDATA = 1024
MODE_AES_256_XTS = 1
MODE_AES_256_CTS = 4
_POLICY_V2 = struct.Struct("<BBBBB3x16s")
"""The v2 policy (FS_IOC_SET_ENCRYPTION_POLICY's argument): version 2, contents mode,
filenames mode, flags, log2 of the data unit (0: the block size), 3 reserved bytes,
master key identifier. A v2 context is the policy and the inode's nonce."""
_CONTEXT_V2 = struct.Struct(_POLICY_V2.format + f"{NONCE_LEN}s")


def pack_policy(key_id: bytes, flags: int, contents: int = MODE_AES_256_XTS,
                filenames: int = MODE_AES_256_CTS, log2_data_unit: int = 0) -> bytes:
    """A 24-byte fscrypt v2 policy."""
    if len(key_id) != 16:
        raise ValueError("a key identifier is 16 bytes")
    return _POLICY_V2.pack(2, contents, filenames, flags, log2_data_unit, key_id)


def pack_context(key_id: bytes, nonce: bytes, flags: int, contents: int = MODE_AES_256_XTS,
                 filenames: int = MODE_AES_256_CTS, log2_data_unit: int = 0) -> bytes:
    """A 40-byte fscrypt v2 context."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("a nonce is 16 bytes")
    return pack_policy(key_id, flags, contents, filenames, log2_data_unit) + nonce


def unpack_context(raw: bytes) -> tuple[int, int, int, int, bytes, bytes]:
    """(contents mode, filenames mode, flags, log2 data unit, key identifier, nonce) of a
    v2 context; ValueError for anything else."""
    if len(raw) != CTX_V2_LEN or raw[0] != 2:
        raise ValueError(f"not a v2 context: {raw.hex()}")
    return _CONTEXT_V2.unpack(raw)[1:]


_B64U = rb"[A-Za-z0-9_-]*"
_ENCDATA_RE = re.compile(
    rb"\{ encoding: (?P<enc>[a-z0-9]+), size: (?P<size>0|[1-9][0-9]{0,19}), "
    rb"enc_ctx: (?P<ctx>" + _B64U + rb"), enc_name: (?P<name>" + _B64U + rb") \}\x00?"
)


class EncdataError(ValueError):
    """Malformed security.encdata text; the message says what is wrong."""


class EncData(namedtuple("EncData", "size enc_ctx enc_name", defaults=(b"",))):
    """The fields of one encdata text: size, fscrypt context (40-byte v2 or 28-byte
    v1), raw name."""

    __slots__ = ()

    @property
    def is_v2(self) -> bool:
        """Only a v2 context can be installed through security.encdata."""
        return len(self.enc_ctx) == CTX_V2_LEN

    @property
    def flags(self) -> int:
        return self.enc_ctx[3]

    @property
    def master_key_id(self) -> bytes:
        """The v2 key identifier, or the v1 key descriptor."""
        return self.enc_ctx[8:24] if self.is_v2 else self.enc_ctx[4:12]

    @property
    def nonce(self) -> bytes:
        return self.enc_ctx[-NONCE_LEN:]

    @property
    def policy(self) -> bytes:
        """The context without its per-inode nonce: equal for one policy."""
        return self.enc_ctx[:-NONCE_LEN]

    @property
    def ino_based_iv(self) -> bool:
        return self.is_v2 and bool(self.flags & (IV_INO_LBLK_64 | IV_INO_LBLK_32))

    def ino_policy_flag(self) -> str:
        """The name of the inode-number based IV flag this policy sets."""
        return "IV_INO_LBLK_64" if self.flags & IV_INO_LBLK_64 else "IV_INO_LBLK_32"


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
    """Strict parse: exact field order and spacing, a v2 or v1 context, bounded sizes.

    A v1 context parses so that it can be stored on a plain backup; the encdata
    interface itself installs only v2 (EncData.is_v2)."""
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
    version = {CTX_V2_LEN: 2, CTX_V1_LEN: 1}.get(len(ctx))
    if version is None:
        raise EncdataError(f"enc_ctx is {len(ctx)} bytes, a v2 context has {CTX_V2_LEN} "
                           f"and a v1 context {CTX_V1_LEN}")
    if ctx[0] != version:
        raise EncdataError(f"enc_ctx of {len(ctx)} bytes has version {ctx[0]}, not {version}")
    name = b64u_decode(m["name"], "enc_name")
    if len(name) > MAX_NAME:
        raise EncdataError(f"enc_name is {len(name)} bytes, more than {MAX_NAME}")
    return EncData(size, ctx, name)


PLAIN, STORED, VIRTUAL = 0, 1, 2
"""How an entry's data is read: plain bytes; ciphertext stored as ordinary data with its
encdata an ordinary xattr (a backup on a plain filesystem); or ciphertext behind the
encdata interface (O_CIPHERTEXT | O_DIRECT, encdata answered by name only)."""

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_ASKED_KINDS = (0o040000, 0o120000)  # directories and symlinks: few, so always asked
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


def get_encdata(target: int | bytes, name: bytes = ENCDATA_XATTR,
                follow: bool = False) -> bytes | None:
    """The encdata text of a path or fd asked for by name, or None for a plain entry.

    By name, because the real interface (Lustre's ldiskfs patch) answers getxattr but
    never lists security.encdata."""
    try:
        return os.getxattr(target, name, follow_symlinks=follow or isinstance(target, int))
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise


def encdata_names(alternative: bytes) -> tuple[bytes, ...]:
    """Where encdata may be found: its own name, then --encdata-xattr's, if other."""
    return tuple(dict.fromkeys((ENCDATA_XATTR, alternative)))


def may_be_encrypted(mode: int, size: int, in_encrypted_dir: bool) -> bool:
    """Could this entry carry encdata? Decides whether to ask for it by name.

    Every entry of an encrypted directory is encrypted. Elsewhere (an encrypted file
    moved into a plain directory, the top of an encrypted tree) a locked regular file
    shows its size rounded up to the 4096-byte unit, and a backup stores it padded so:
    any other size is plain, and a plain tree pays no getxattr for it. Devices, FIFOs
    and sockets have encrypted contents nowhere, so outside an encrypted directory
    they are not asked."""
    if in_encrypted_dir:
        return True
    fmt = mode & _S_IFMT
    if fmt == _S_IFREG:
        return size % UNIT == 0
    return fmt in _ASKED_KINDS


class EncdataFinder:
    """Finds encdata on both kinds of filesystem and remembers, per device, whether it
    is virtual (never listed: the encdata interface) or stored (a plain backup)."""

    def __init__(self, alternative: bytes = ENCDATA_XATTR):
        self.names = encdata_names(alternative)
        self._virtual: dict[int, bool] = {}
        self._only: int | None = None  # the layout of every device seen, while one

    def ask(self, target: int | bytes, names: tuple[bytes, ...] | None = None,
            follow: bool = False) -> tuple[bytes | None, bytes | None]:
        """(text, the name it was under) for the first of `names` (default: both) the
        entry answers, or (None, None)."""
        for name in names or self.names:
            text = get_encdata(target, name, follow)
            if text is not None:
                return text, name
        return None, None

    def learn(self, target: int | bytes, st_dev: int, name: bytes,
              listed: bool | None = None, follow: bool = False) -> int:
        """The layout of an entry found to carry encdata under `name`; `listed` says
        whether a listing already made showed it (None: not listed yet; one listxattr
        per device then decides)."""
        if name != ENCDATA_XATTR:
            return STORED
        virtual = self._virtual.get(st_dev)
        if virtual is None:
            if listed is None:
                try:
                    listed = os.fsdecode(name) in os.listxattr(
                        target, follow_symlinks=follow or isinstance(target, int))
                except OSError:
                    listed = False
            virtual = self._virtual[st_dev] = not listed
            layouts = {VIRTUAL if v else STORED for v in self._virtual.values()}
            self._only = layouts.pop() if len(layouts) == 1 else None
        return VIRTUAL if virtual else STORED

    def layout(self, path: bytes, encrypted: bool, alt: bool = False) -> int:
        """How to open an entry known only by path: the layout of its device (lstat'ed
        only when the run has met devices of both kinds)."""
        if not encrypted:
            return PLAIN
        if alt:
            return STORED
        if self._only is not None:
            return self._only
        try:
            dev = os.lstat(path).st_dev
        except OSError:
            return VIRTUAL  # the open that follows reports it
        virtual = self._virtual.get(dev)
        if virtual is None:
            return self.learn(path, dev, ENCDATA_XATTR)
        return VIRTUAL if virtual else STORED


_ESCAPE = 0x3D  # '='
_SPECIAL = b"\0\n\r/\x7f="
_SHOW = [bytes([_ESCAPE, b + 64]) if b in _SPECIAL else bytes([b]) for b in range(256)]
_UNSHOW = {b + 64: b for b in _SPECIAL}


def escape_name(raw: bytes) -> bytes:
    """How Lustre's ldiskfs shows a raw encrypted name without the key: NUL, LF, CR,
    '/', DEL and '=' become '=' and chr(byte + 64), every other byte stands for
    itself. fscsync never decodes names; the test filesystem, the tests and the
    benchmark stand in for the kernel with this."""
    return b"".join(_SHOW[b] for b in raw)


def unescape_name(shown: bytes) -> bytes:
    """Invert escape_name; ValueError if `shown` is not something it produces."""
    out = bytearray()
    it = iter(shown)
    for b in it:
        if b == _ESCAPE:
            code = next(it, None)
            if code not in _UNSHOW:
                raise ValueError(f"bad escape in {shown!r}")
            out.append(_UNSHOW[code])
        elif b in _SPECIAL:
            raise ValueError(f"unescaped {bytes([b])!r} in {shown!r}")
        else:
            out.append(b)
    return bytes(out)


def padded_size(size: int) -> int:
    """How many ciphertext bytes a cleartext size occupies."""
    return -(-size // UNIT) * UNIT


def open_data(path: bytes, layout: int, dir_fd: int | None = None,
              extra: int = 0) -> tuple[int, bool]:
    """Open a regular file for reading its data; returns (fd, direct). Only the
    encdata interface needs O_CIPHERTEXT: stored ciphertext is ordinary data. Stored
    encdata on a file the kernel will not read without its key (ENOKEY: an interface
    that lists encdata after all) is read as the interface's ciphertext. `extra`: more
    open flags (O_NOATIME, which only the file's owner may ask for: anyone else reads
    it without)."""
    try:
        if layout == VIRTUAL:
            return open_ciphertext(path, dir_fd, extra)
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | extra,
                           dir_fd=dir_fd), False
        except OSError as exc:
            if layout != STORED or exc.errno != errno.ENOKEY:
                raise
        return open_ciphertext(path, dir_fd, extra)
    except PermissionError:
        if not extra:
            raise
        return open_data(path, layout, dir_fd)


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

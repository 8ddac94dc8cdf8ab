"""The backing directory: the "encrypted backup layout" the test filesystem serves.

- Plain entries are stored as they are.
- An encrypted entry keeps its encdata text in the ordinary xattr
  security.encdata (size = cleartext size, enc_ctx, enc_name = raw name).
- Encrypted regular files hold their ciphertext padded to whole 4096-byte
  units; encrypted symlinks point at the escaped ciphertext target
  (cipher.escape_name) and their encdata size is the on-disk length ext4 gives
  it: 2 + the raw ciphertext length.
- Names inside encrypted directories are the escaped raw names, i.e. the very
  names the locked view shows; so a key-less copy of a locked view onto a plain
  filesystem is itself a valid backing directory.
- Escaping can push a 255-byte raw name past NAME_MAX. Such a name is stored
  as "=~" + base64url(SHA-256(name)) and the name itself in the inode's xattr
  trusted.fscsync.name.<that digest> (one xattr per name, so hard links
  under different long names coexist; stale ones are harmless).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import xattr

from fscsync.fs.cipher import (
    ENCDATA_XATTR,
    NONCE_LEN,
    EncData,
    b64u_encode,
    format_encdata,
    get_encdata,
    parse_encdata,
)
from fscsync.testfs.model import Context, MasterKey

INTERNAL_XATTR_PREFIX = b"trusted.fscsync."
NAME_MAX = 255
_LONG_PREFIX = b"=~"
_LONG_LEN = len(_LONG_PREFIX) + 43
_PADDINGS = {4: 0, 8: 1, 16: 2, 32: 3}
# The same texts are read on every request; EncData is immutable, so share the parse.
_parse = lru_cache(maxsize=1 << 16)(parse_encdata)


def load_encdata(target: int | bytes) -> EncData | None:
    """The stored encdata of a backing path (never followed) or fd; None when plain."""
    text = get_encdata(target)
    return None if text is None else _parse(text)


def store_encdata(target: int | bytes, enc: EncData) -> None:
    xattr.set(target, ENCDATA_XATTR, format_encdata(enc), nofollow=True)


def child_context(parent: EncData) -> bytes:
    """A new inode's context: the parent's policy with a fresh random nonce."""
    return parent.policy + os.urandom(NONCE_LEN)


def _long_xattr(fs_name: bytes) -> bytes:
    return INTERNAL_XATTR_PREFIX + b"name." + fs_name[len(_LONG_PREFIX):]


def fs_name(shown: bytes) -> bytes:
    """The backing file name for an entry shown as `shown`."""
    if len(shown) <= NAME_MAX:
        return shown
    return _LONG_PREFIX + b64u_encode(hashlib.sha256(shown).digest())


def bind_name(path: bytes, shown: bytes) -> None:
    """Record a long shown name on the inode just created or moved to `path`."""
    if len(shown) > NAME_MAX:
        xattr.set(path, _long_xattr(fs_name(shown)), shown, nofollow=True)


def shown_name(directory: bytes, name: bytes) -> bytes:
    """Invert fs_name for an entry found in the backing `directory`."""
    if len(name) == _LONG_LEN and name.startswith(_LONG_PREFIX):
        try:
            return xattr.get(os.path.join(directory, name), _long_xattr(name), nofollow=True)
        except OSError:
            pass
    return name


def make_encrypted_dir(path: bytes, master_key: bytes, padding: int = 32) -> EncData:
    """Give an empty plain backing directory a v2 policy, as FS_IOC_SET_ENCRYPTION_POLICY does.

    Everything created below it through a view holding the key is encrypted.
    """
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {sorted(_PADDINGS)}, not {padding}")
    if load_encdata(path) is not None:
        raise ValueError(f"{os.fsdecode(path)} is already encrypted")
    if os.listdir(path):
        raise ValueError(f"{os.fsdecode(path)} is not empty")
    ctx = Context(MasterKey(master_key).identifier, os.urandom(NONCE_LEN), _PADDINGS[padding])
    enc = EncData(0, ctx.to_bytes(), b"")
    store_encdata(path, enc)
    return enc

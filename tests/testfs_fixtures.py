"""Helpers for tests that need the fscrypt stand-in filesystem (fscsync.testfs).

`needs_fuse` skips where FUSE cannot be mounted; `encrypted_backing` builds a
backing directory with an encrypted and a plain area; `mounted` (re-exported)
serves one as a view. Engine tests can build on the same pieces.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import xattr

from fscsync.fs.cipher import ENCDATA_XATTR, O_CIPHERTEXT
from fscsync.testfs import make_encrypted_dir, mounted

__all__ = ["KEY", "OTHER_KEY", "encdata_of", "encrypted_backing", "mounted", "needs_fuse",
           "read_ciphertext", "snapshot"]

# The master key of the FSCRYPT-FACTS vectors (bytes 0x00..0x3f).
KEY = bytes(range(64))
OTHER_KEY = bytes(range(64, 128))


def _fuse_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (security.* xattrs, allow_other)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed"
    try:
        import fscsync.testfs.fusefs  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse3 unusable: {exc}"
    return None


_MISSING = _fuse_missing()
needs_fuse = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def encrypted_backing(root: Path, key: bytes = KEY, padding: int = 32) -> bytes:
    """A backing dir at `root` holding `enc/` (encrypted with `key`) and `plain/`."""
    root.mkdir()
    (root / "enc").mkdir()
    (root / "plain").mkdir()
    make_encrypted_dir(os.fsencode(root / "enc"), key, padding)
    return os.fsencode(root)


def encdata_of(path: bytes) -> bytes | None:
    """The security.encdata text of a path (not followed), None when absent."""
    try:
        return xattr.get(path, ENCDATA_XATTR, nofollow=True)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def read_ciphertext(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | O_CIPHERTEXT)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def snapshot(top: bytes) -> dict[bytes, tuple[int, int, bytes]]:
    """Relative path -> (type, permission bits, content or link target) for a whole tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            body = b""
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body = f.read()
            out[os.path.relpath(path, top)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                              body)
    return out

"""How a raw encrypted name is shown without the key: Lustre ldiskfs's escape.

NUL, LF, CR, '/', DEL and '=' become '=' followed by chr(byte + 64); every
other byte stands for itself, so shown names are arbitrary non-UTF-8 bytes
that are still legal path components. The same form names encrypted entries
in the backing directory, which makes the backing directory exactly the
"encrypted backup" a key-less copy produces on a plain filesystem.
"""

from __future__ import annotations

from fscsync.cipher import MAX_NAME

ESCAPE = 0x3D  # '='
_SPECIAL = b"\0\n\r/\x7f="
_SHOW = [bytes([ESCAPE, b + 64]) if b in _SPECIAL else bytes([b]) for b in range(256)]
_UNSHOW = {b + 64: b for b in _SPECIAL}
_MIN_RAW = 16


def escape_name(raw: bytes) -> bytes:
    return b"".join(_SHOW[b] for b in raw)


def unescape_name(shown: bytes) -> bytes:
    """Invert escape_name; ValueError if `shown` is not something it produces."""
    out = bytearray()
    it = iter(shown)
    for b in it:
        if b == ESCAPE:
            code = next(it, None)
            if code not in _UNSHOW:
                raise ValueError(f"bad escape in {shown!r}")
            out.append(_UNSHOW[code])
        elif b in _SPECIAL:
            raise ValueError(f"unescaped {bytes([b])!r} in {shown!r}")
        else:
            out.append(b)
    return bytes(out)


def raw_name(shown: bytes) -> bytes | None:
    """The raw ciphertext name a shown name stands for, or None if it cannot be one."""
    try:
        raw = unescape_name(shown)
    except ValueError:
        return None
    return raw if _MIN_RAW <= len(raw) <= MAX_NAME else None

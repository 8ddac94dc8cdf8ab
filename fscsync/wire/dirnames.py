"""The payload of a DIRNAMES frame (protocol.DIRNAMES): one directory's names, as the
sender announces them for --delete-during and --delete-delay. Bounded and checked on
decoding like every frame; knows nothing of the engine."""

from __future__ import annotations

import struct
import zlib

from fscsync.errors import ProtocolError

_MAX_PATH = 4096  # as the file list's paths (engine/flist.py)
_DIRNAMES = struct.Struct(">BHI")
DIRNAMES_PART = 1 << 20
"""Bytes of names in one DIRNAMES frame at most (a million names take about twenty)."""
_MAX_NAME = 255


class DirNames:
    """A directory's names as the sender announces them: the directory's file-list path
    ("." for the root) and its entries' names, sorted bytewise, as one DIRNAMES frame
    or several (`more`: the names go on in the next frame).

    On the wire: flags (IO_ERROR, MORE), the path's length (u16), the names' count
    (u32), the path, the names joined by NUL and zlib-compressed (level 1, as file-list
    batches: sorted names shrink to a fifth or less, uncompressed they added 70 % to the
    bytes of a no-change --delete run)."""

    __slots__ = ("path", "names", "io_error", "more", "size")
    IO_ERROR = 0x1
    """Flag: the sender met an I/O error before this directory (rsync's io_error, which
    stops deletions from there on unless --ignore-errors)."""
    MORE = 0x2
    """Flag: the next frame carries more of this directory's names."""

    def __init__(self, path: bytes, names: list[bytes], io_error: bool = False,
                 more: bool = False, size: int = 0):
        self.path = path
        self.names = names
        self.io_error = io_error
        self.more = more
        self.size = size  # the frame's payload, once received


def encode(d: DirNames) -> list[bytes]:
    """The DIRNAMES payloads announcing d.names for directory d.path (one at least)."""
    flags = DirNames.IO_ERROR if d.io_error else 0
    names = d.names
    out = []
    start = 0
    while True:
        end, size = start, 0
        while end < len(names) and size + len(names[end]) < DIRNAMES_PART:
            size += len(names[end]) + 1
            end += 1
        more = DirNames.MORE if end < len(names) else 0
        out.append(_DIRNAMES.pack(flags | more, len(d.path), end - start) + d.path
                   + zlib.compress(b"\0".join(names[start:end]), 1))
        if not more:
            return out
        start = end


def decode(payload: bytes) -> DirNames:
    """One DIRNAMES frame, checked as far as it goes alone: a ProtocolError names what
    is wrong (engine/deltiming.py's Announced checks it against the list)."""
    head = _DIRNAMES.size
    if len(payload) < head:
        raise ProtocolError("truncated directory-names frame")
    flags, plen, count = _DIRNAMES.unpack_from(payload)
    if flags & ~(DirNames.IO_ERROR | DirNames.MORE):
        raise ProtocolError(f"directory-names frame with unknown flags {flags:#x}")
    path = bytes(payload[head : head + plen])
    if not path or len(path) != plen or plen > _MAX_PATH or b"\0" in path:
        raise ProtocolError("directory-names frame with an empty, overlong or truncated path")
    d = zlib.decompressobj()
    try:  # at most one frame's names: DIRNAMES_PART, and a byte to tell it is more
        body = d.decompress(payload[head + plen :], DIRNAMES_PART + 1)
    except zlib.error as exc:
        raise ProtocolError(f"corrupt directory-names frame: {exc}") from None
    if d.unconsumed_tail or not d.eof or d.unused_data or len(body) > DIRNAMES_PART:
        raise ProtocolError(f"directory-names frame for {path[:100]!r} too long or truncated")
    names = body.split(b"\0") if body else []
    if len(names) != count:
        raise ProtocolError(f"directory-names frame for {path[:100]!r} with {len(names)} "
                            f"names, {count} announced")
    if names:
        lengths = set(map(len, names))
        if 0 in lengths or max(lengths) > _MAX_NAME:
            raise ProtocolError(f"directory-names frame for {path[:100]!r} with an empty "
                                f"or overlong name")
        if b"/" in body or b"." in names or b".." in names:
            raise ProtocolError(f"directory-names frame for {path[:100]!r} with a name "
                                f"that is not one entry's ('/', '.' or '..')")
        if not all(a < b for a, b in zip(names, names[1:], strict=False)):
            raise ProtocolError(f"directory-names frame for {path[:100]!r} with names "
                                f"unsorted or repeated")
    return DirNames(path, names, bool(flags & DirNames.IO_ERROR),
                    bool(flags & DirNames.MORE), len(payload))

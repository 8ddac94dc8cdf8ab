"""File-list records and their wire encoding.

An Entry describes one source entry as the receiver needs it. Paths are bytes
relative to the transfer root (b"." is the root itself). Decoding never trusts
the peer: every length is checked against the frame before it is used.
"""

from __future__ import annotations

import bisect
import stat
import struct
import zlib

from fscsync.cipher import CTX_V2_LEN, EncData, EncdataError, format_encdata, parse_encdata
from fscsync.errors import ProtocolError

F_TARGET = 1
F_XATTRS = 2
F_ENC = 4
F_LINK = 8
F_SUM = 16
F_RDEV = 32
F_ENC_ALT = 64
F_ENC_BIN = 128

_HEAD = struct.Struct(">HIQqIIB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_XA = struct.Struct(">BI")

MAX_PATH = 4096
MAX_XATTRS = 1024
MAX_XATTR_VALUE = 1 << 16
MAX_ENCDATA_WIRE = 1024
MAX_BATCH = 16 << 20


class Entry:
    """One file-list entry. `src` (the sender's full path) never crosses the wire."""

    __slots__ = ("path", "mode", "size", "mtime_ns", "uid", "gid", "rdev", "target",
                 "xattrs", "enc", "enc_alt", "link", "checksum", "src")

    def __init__(self, path: bytes, mode: int, size: int = 0, mtime_ns: int = 0,
                 uid: int = 0, gid: int = 0, rdev: int = 0, target: bytes | None = None,
                 xattrs: list[tuple[bytes, bytes]] | None = None, enc: bytes | None = None,
                 link: int = -1, checksum: bytes | None = None, src: bytes | None = None):
        self.path = path
        self.mode = mode
        self.size = size
        self.mtime_ns = mtime_ns
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.target = target
        self.xattrs = xattrs
        self.enc = enc
        self.enc_alt = False
        self.link = link
        self.checksum = checksum
        self.src = src

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {stat.filemode(self.mode)}, size={self.size})"


def encode_entries(entries: list[Entry]) -> bytes:
    """Pack entries into one FLIST frame payload."""
    out = bytearray()
    head = _HEAD.pack
    for e in entries:
        if (e.target is None and e.enc is None and not e.xattrs and e.link < 0
                and e.checksum is None and not e.rdev and not e.enc_alt):  # the common entry
            out += head(len(e.path), e.mode, e.size, e.mtime_ns, e.uid, e.gid, 0)
            out += e.path
            continue
        flags = 0
        if e.target is not None:
            flags |= F_TARGET
        if e.xattrs:
            flags |= F_XATTRS
        if e.enc is not None:
            flags |= F_ENC
        if e.link >= 0:
            flags |= F_LINK
        if e.checksum is not None:
            flags |= F_SUM
        if e.rdev:
            flags |= F_RDEV
        if e.enc_alt:
            flags |= F_ENC_ALT
        enc_bin = _binary_encdata(e.enc) if e.enc is not None else None
        if enc_bin is not None:
            flags = (flags & ~F_ENC) | F_ENC_BIN
        out += _HEAD.pack(len(e.path), e.mode, e.size, e.mtime_ns, e.uid, e.gid, flags)
        out += e.path
        if flags & F_RDEV:
            out += _U64.pack(e.rdev)
        if flags & F_TARGET:
            out += _U16.pack(len(e.target))
            out += e.target
        if flags & F_LINK:
            out += _U32.pack(e.link)
        if flags & F_XATTRS:
            out += _U16.pack(len(e.xattrs))
            for name, value in e.xattrs:
                out += _XA.pack(len(name), len(value))
                out += name
                out += value
        if flags & F_ENC:
            out += _U16.pack(len(e.enc))
            out += e.enc
        if flags & F_ENC_BIN:
            out += enc_bin
        if flags & F_SUM:
            out += e.checksum
    return bytes(out)


_ENC_BIN = struct.Struct(">QB")


def _binary_encdata(text: bytes) -> bytes | None:
    """Canonical encdata travels as its fields (size, 40-byte context, raw name),
    half the bytes of the text; anything else travels verbatim."""
    try:
        enc = parse_encdata(text)
    except EncdataError:
        return None
    if format_encdata(enc) != text:
        return None
    return _ENC_BIN.pack(enc.size, len(enc.enc_name)) + enc.enc_ctx + enc.enc_name


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError("truncated file-list entry")
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def unpack(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.buf):
            raise ProtocolError("truncated file-list entry")
        vals = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return vals


def pack_batch(entries: list[Entry]) -> bytes:
    """One FLIST payload: the encoded entries, zlib-compressed (names in one directory,
    owners and encryption policies repeat a lot)."""
    return zlib.compress(encode_entries(entries), 1)


class SentList:
    """The sender's memory of its file list: the batches as they went on the wire,
    decoded again when a request names an entry. Entry objects would cost about
    300 bytes a file for the whole run; a compressed batch costs about 11.
    Requests come in list order, so one decoded batch is kept at hand."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._payloads: list[bytes] = []
        self.count = 0
        self._decoded: tuple[int, list[Entry]] = (-1, [])

    def add(self, payload: bytes, count: int) -> None:
        self._starts.append(self.count)
        self._payloads.append(payload)
        self.count += count

    def get(self, idx: int) -> Entry | None:
        """Entry `idx` as the receiver saw it, or None past the end."""
        if not 0 <= idx < self.count:
            return None
        b = bisect.bisect_right(self._starts, idx) - 1
        if self._decoded[0] != b:
            self._decoded = (b, unpack_batch(self._payloads[b]))
        return self._decoded[1][idx - self._starts[b]]


def unpack_batch(payload: bytes) -> list[Entry]:
    """Inverse of pack_batch, refusing to inflate past MAX_BATCH."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(payload, MAX_BATCH)
    except zlib.error as exc:
        raise ProtocolError(f"corrupt file-list frame: {exc}") from None
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise ProtocolError("file-list frame too large or truncated")
    return decode_entries(raw)


def decode_entries(payload: bytes) -> list[Entry]:
    """Unpack one FLIST frame; any inconsistency is a ProtocolError.

    The plain entry (no flags) is decoded inline: it is nearly every entry of a big
    tree, and the receiver decodes while its generator waits."""
    out = []
    append = out.append
    head = _HEAD.unpack_from
    hsize = _HEAD.size
    end = len(payload)
    pos = 0
    while pos < end:
        if pos + hsize > end:
            raise ProtocolError("truncated file-list entry")
        plen, mode, size, mtime_ns, uid, gid, flags = head(payload, pos)
        pos += hsize
        if plen == 0 or plen > MAX_PATH:
            raise ProtocolError(f"file-list entry with a path of {plen} bytes")
        if pos + plen > end:
            raise ProtocolError("truncated file-list entry")
        e = Entry(payload[pos : pos + plen], mode, size, mtime_ns, uid, gid)
        pos += plen
        if flags:
            pos = _decode_extras(e, flags, _Reader(payload, pos))
        append(e)
    return out


def _decode_extras(e: Entry, flags: int, r: _Reader) -> int:
    """The optional fields named by `flags`; returns the position after them."""
    if flags & ~(F_TARGET | F_XATTRS | F_ENC | F_LINK | F_SUM | F_RDEV | F_ENC_ALT | F_ENC_BIN):
        raise ProtocolError("file-list entry with unknown flags")
    e.enc_alt = bool(flags & F_ENC_ALT)
    if flags & F_RDEV:
        (e.rdev,) = r.unpack(_U64)
    if flags & F_TARGET:
        (n,) = r.unpack(_U16)
        e.target = r.take(n)
    if flags & F_LINK:
        (e.link,) = r.unpack(_U32)
    if flags & F_XATTRS:
        (count,) = r.unpack(_U16)
        if count > MAX_XATTRS:
            raise ProtocolError(f"file-list entry with {count} xattrs")
        xattrs = []
        for _ in range(count):
            nlen, vlen = r.unpack(_XA)
            if vlen > MAX_XATTR_VALUE:
                raise ProtocolError(f"xattr value of {vlen} bytes")
            xattrs.append((r.take(nlen), r.take(vlen)))
        e.xattrs = xattrs
    if flags & F_ENC:
        (n,) = r.unpack(_U16)
        if n > MAX_ENCDATA_WIRE:
            raise ProtocolError(f"encdata of {n} bytes")
        e.enc = r.take(n)
    if flags & F_ENC_BIN:
        size, nlen = r.unpack(_ENC_BIN)
        ctx = r.take(CTX_V2_LEN)
        e.enc = format_encdata(EncData(size, ctx, r.take(nlen)))
    if flags & F_SUM:
        e.checksum = r.take(16)
    return r.pos

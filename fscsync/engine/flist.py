"""File-list records and their wire encoding.

An Entry describes one source entry as the receiver needs it. Paths are bytes
relative to the transfer root (b"." is the root itself). Decoding never trusts
the peer: every length is checked against the frame before it is used.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
import zlib
from collections import deque

from fscsync.errors import ProtocolError
from fscsync.fs.cipher import CTX_V2_LEN, EncData, EncdataError, format_encdata, parse_encdata

F_TARGET = 1
F_XATTRS = 2
F_ENC = 4
F_LINK = 8
F_SUM = 16
F_RDEV = 32
F_ENC_ALT = 64
F_ENC_BIN = 128

NO_CONTENT = 1
"""The rdev of a directory sent without its contents (a mount point under -x, an implied
directory of -R, a --files-from directory without -r): nothing in it is deleted."""
IMPLIED = 2
"""The rdev of a -R path component under --no-implied-dirs: the receiver makes it with
default attributes if it is missing and leaves it alone otherwise."""

_COUNTS = struct.Struct(">II")
_COLUMNS = ("I", "Q", "q", "I", "I")  # mode, size, mtime, uid, gid
_ROW = struct.calcsize(">" + "".join(_COLUMNS)) + 1  # one entry's columns and flags
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_XA = struct.Struct(">BI")
_LAST_LINK = 1 << 31
"""In a hard link's leader index on the wire: the group's last name (Entry.link_last)."""

MAX_PATH = 4096
MAX_XATTRS = 1024
MAX_XATTR_VALUE = 1 << 16
MAX_ENCDATA_WIRE = 1024
MAX_BATCH = 16 << 20
MAX_INFLATE = 256
"""How many times its size a file-list frame may inflate to: zlib's level 1, which
the sender packs with, stays under 230 even for zeros; a hostile level 9 reaches 1000."""


class Entry:
    """One file-list entry. `src` (the sender's full path) never crosses the wire."""

    __slots__ = ("path", "mode", "size", "mtime_ns", "uid", "gid", "rdev", "target",
                 "xattrs", "enc", "enc_alt", "link", "link_last", "checksum", "src")

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
        """-H: the index of its group's leader (its own, for the leader itself); -1 for
        an entry in no group."""
        self.link_last = False  # -H: the group's last name the list brings
        self.checksum = checksum
        self.src = src

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def no_content(self) -> bool:
        return self.rdev in (NO_CONTENT, IMPLIED) and stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {stat.filemode(self.mode)}, size={self.size})"


class BatchBuilder:
    """One FLIST payload being built, a column per field: the receiver unpacks each
    column with one struct call instead of one per entry, and settles an unchanged
    file without building an Entry for it.

    Layout: count; the paths' byte length, then the paths joined by NUL (no path can
    hold one); modes, sizes, mtimes, uids, gids and flags, each a column of `count`
    values; then the optional fields of each entry whose flags name some, in order.

    `size` is about what the batch will take on the wire before compression."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self._columns: tuple[list[int], ...] = ([], [], [], [], [])
        self._flags = bytearray()
        self._extras = bytearray()
        self.size = 0

    @classmethod
    def of(cls, entries: list[Entry]) -> BatchBuilder:
        b = cls()
        for e in entries:
            b.add(e)
        return b

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, e: Entry) -> None:
        self.paths.append(e.path)
        modes, sizes, mtimes, uids, gids = self._columns
        modes.append(e.mode)
        sizes.append(e.size)
        mtimes.append(e.mtime_ns)
        uids.append(e.uid)
        gids.append(e.gid)
        before = len(self._extras)
        if (e.target is None and e.enc is None and not e.xattrs and e.link < 0
                and e.checksum is None and not e.rdev and not e.enc_alt):  # the common entry
            self._flags.append(0)
        else:
            self._flags.append(_encode_extras(e, self._extras))
        self.size += len(e.path) + _ROW + len(self._extras) - before

    def add_stats(self, paths: list[bytes], stats: list[os.stat_result]) -> None:
        """Plain regular files (no optional field) straight from their lstat results."""
        self.paths += paths
        modes, sizes, mtimes, uids, gids = self._columns
        modes += [st.st_mode for st in stats]
        sizes += [st.st_size for st in stats]
        mtimes += [st.st_mtime_ns for st in stats]
        uids += [st.st_uid for st in stats]
        gids += [st.st_gid for st in stats]
        self._flags += bytes(len(paths))
        self.size += sum(map(len, paths)) + _ROW * len(paths)

    def encode(self) -> bytes:
        n = len(self.paths)
        paths = b"\0".join(self.paths)
        out = [_COUNTS.pack(n, len(paths)), paths]
        out += [struct.pack(f">{n}{code}", *column)
                for code, column in zip(_COLUMNS, self._columns, strict=True)]
        out += [self._flags, self._extras]
        return b"".join(out)

    def pack(self) -> bytes:
        """The payload zlib-compressed: names in one directory, owners and encryption
        policies repeat a lot."""
        return zlib.compress(self.encode(), 1)


def encode_entries(entries: list[Entry]) -> bytes:
    """One FLIST payload for these entries, uncompressed."""
    return BatchBuilder.of(entries).encode()


def _encode_extras(e: Entry, out: bytearray) -> int:
    """Append entry `e`'s optional fields to `out`; returns the flags that name them."""
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
    if flags & F_RDEV:
        out += _U64.pack(e.rdev)
    if flags & F_TARGET:
        out += _U16.pack(len(e.target))
        out += e.target
    if flags & F_LINK:
        out += _U32.pack(e.link | _LAST_LINK if e.link_last else e.link)
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
    return flags


_ENC_BIN = struct.Struct(">QB")


def _binary_encdata(text: bytes) -> bytes | None:
    """Canonical encdata travels as its fields (size, 40-byte context, raw name),
    half the bytes of the text; anything else travels verbatim."""
    try:
        enc = parse_encdata(text)
    except EncdataError:
        return None
    if not enc.is_v2 or format_encdata(enc) != text:
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
    """One FLIST payload for these entries, as the sender packs it."""
    return BatchBuilder.of(entries).pack()


class SentList:
    """The sender's memory of its file list: the batches as they went on the wire,
    decoded again when a request names an entry. Entry objects would cost about
    300 bytes a file for the whole run; a compressed batch costs about 11, and only
    until the receiver releases it (`release`): what is kept is the batches from the
    receiver's oldest unfinished entry on, bounded by the sender's window, not the
    list. Requests come in list order, so one decoded batch is kept at hand."""

    def __init__(self) -> None:
        self._starts: deque[int] = deque()
        self._payloads: deque[bytes] = deque()
        self.count = 0
        self.released = 0
        self._decoded: tuple[int, Batch | None] = (-1, None)

    def add(self, payload: bytes, count: int) -> None:
        self._starts.append(self.count)
        self._payloads.append(payload)
        self.count += count

    def release(self, idx: int) -> None:
        """The receiver is done with every entry before `idx`: their batches go."""
        if not self.released <= idx <= self.count:
            raise ProtocolError(f"release of entries up to {idx}, with {self.released} "
                                f"released and {self.count} sent")
        self.released = idx
        starts = self._starts
        while len(starts) > 1 and starts[1] <= idx:
            starts.popleft()
            self._payloads.popleft()
            self._decoded = (-1, None)
        if starts and idx == self.count:
            starts.clear()
            self._payloads.clear()
            self._decoded = (-1, None)

    def get(self, idx: int) -> Entry | None:
        """Entry `idx` as the receiver saw it, or None past the end or released."""
        if not self.released <= idx < self.count:
            return None
        b = bisect.bisect_right(self._starts, idx) - 1
        if self._decoded[0] != self._starts[b]:
            self._decoded = (self._starts[b], unpack_batch(self._payloads[b]))
        return self._decoded[1].entry(idx - self._starts[b])


class Batch:
    """One decoded FLIST payload, kept as its columns. An entry with optional fields
    is built at once (`special`, by position); any other only when asked for."""

    __slots__ = ("paths", "modes", "sizes", "mtimes", "uids", "gids", "flags", "special")

    def __init__(self, paths: list[bytes], columns: tuple[tuple[int, ...], ...],
                 flags: bytes, special: dict[int, Entry]):
        self.paths = paths
        self.modes, self.sizes, self.mtimes, self.uids, self.gids = columns
        self.flags = flags
        self.special = special

    def __len__(self) -> int:
        return len(self.paths)

    def entry(self, i: int) -> Entry:
        e = self.special.get(i)
        if e is None:
            e = Entry(self.paths[i], self.modes[i], self.sizes[i], self.mtimes[i],
                      self.uids[i], self.gids[i])
        return e

    def entries(self) -> list[Entry]:
        out = list(map(Entry, self.paths, self.modes, self.sizes, self.mtimes, self.uids,
                       self.gids))
        for i, e in self.special.items():
            out[i] = e
        return out


def unpack_batch(payload: bytes) -> Batch:
    """Inverse of pack_batch, refusing to inflate past MAX_BATCH or MAX_INFLATE times."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(payload, min(MAX_BATCH, MAX_INFLATE * len(payload)))
    except zlib.error as exc:
        raise ProtocolError(f"corrupt file-list frame: {exc}") from None
    if d.unconsumed_tail or not d.eof or d.unused_data:
        raise ProtocolError("file-list frame too large or truncated")
    return decode_batch(raw)


def decode_entries(payload: bytes) -> list[Entry]:
    """The entries of one uncompressed FLIST payload."""
    return decode_batch(payload).entries()


def decode_batch(payload: bytes) -> Batch:
    """Unpack one uncompressed FLIST payload; any inconsistency is a ProtocolError."""
    end = len(payload)
    if end < _COUNTS.size:
        raise ProtocolError("truncated file-list frame")
    n, plen = _COUNTS.unpack_from(payload)
    pos = _COUNTS.size
    if pos + plen + n * _ROW > end:
        raise ProtocolError("truncated file-list frame")
    paths = payload[pos : pos + plen].split(b"\0") if n else []
    pos += plen
    if len(paths) != n:
        raise ProtocolError(f"file-list frame with {len(paths)} paths for {n} entries")
    lengths = set(map(len, paths))
    if 0 in lengths or max(lengths, default=0) > MAX_PATH:
        raise ProtocolError("file-list entry with an empty or overlong path")
    columns = []
    for code in _COLUMNS:
        column = struct.Struct(f">{n}{code}")
        columns.append(column.unpack_from(payload, pos))
        pos += column.size
    flags = payload[pos : pos + n]
    pos += n
    batch = Batch(paths, tuple(columns), flags, {})
    if flags.count(0) != n:
        r = _Reader(payload, pos)
        for i, f in enumerate(flags):
            if f:
                e = batch.entry(i)
                _decode_extras(e, f, r)
                batch.special[i] = e
        pos = r.pos
    if pos != end:
        raise ProtocolError("trailing bytes after the file list")
    return batch


def _decode_extras(e: Entry, flags: int, r: _Reader) -> None:
    """The optional fields named by `flags`, read on from `r`."""
    e.enc_alt = bool(flags & F_ENC_ALT)
    if flags & F_RDEV:
        (e.rdev,) = r.unpack(_U64)
    if flags & F_TARGET:
        (n,) = r.unpack(_U16)
        e.target = r.take(n)
    if flags & F_LINK:
        (link,) = r.unpack(_U32)
        e.link, e.link_last = link & ~_LAST_LINK, bool(link & _LAST_LINK)
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


def unsafe_link(target: bytes, path: bytes) -> bool:
    """rsync's unsafe_symlink: an absolute target, a '..' after any other component,
    even '.' or an empty one (rsync 3.4's rule: `sub/../..`, `./..` and `..//..` are
    unsafe however deep the link sits), or leading '..' steps that climb above the
    transfer's top from the link's directory (`path` is transfer-relative). The
    receiver's --safe-links and the sender's --copy-unsafe-links ask it."""
    if not target or target.startswith(b"/"):
        return True
    depth = path.count(b"/")
    named = False
    for part in target.split(b"/"):
        if part == b"..":
            depth -= 1
            if named or depth < 0:
                return True
        else:
            named = True
    return False


def rel_dir(e: Entry) -> bytes:
    """The destination-relative directory path of a directory entry."""
    return b"" if e.path == b"." else e.path

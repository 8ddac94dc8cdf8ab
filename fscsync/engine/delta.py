"""Delta transfer on aligned blocks.

Ciphertext changes in place per 4096-byte unit, so blocks are compared at the
same offsets and no rolling checksum is needed. Signatures are two-level to
stay small on huge files: the receiver sends one xxh3-128 per chunk (1 MiB or
more), the sender asks for 64-bit block hashes only inside chunks that differ.
Ops carry explicit offsets, so chunk answers may arrive in any order.
"""

from __future__ import annotations

import struct

import xxhash

from fscsync.errors import ProtocolError
from fscsync.fs import cipher
from fscsync.fs.fileio import READ_SIZE, BlockReader

WHOLE = 0
BLOCKS = 1
CHUNKS = 2

OP_COPY = 1
OP_LIT = 2

MIN_CHUNK_BLOCKS = 256
MAX_CHUNKS = 65536
MAX_LITERAL = 256 << 10
SMALL_LITERAL = 16 << 10
SMALL_FILE = MAX_LITERAL
"""Files up to this size go whole in one FILE frame: one frame per file, not two."""

_REQ = struct.Struct(">IBBIQQ")  # idx, kind, retry, block, chunk, basis size
_COPY = struct.Struct(">BQQ")
_LIT = struct.Struct(">BQI")
_IDX = struct.Struct(">I")
_END = struct.Struct(">IBQ16s")
_SIGREQ_ITEM = struct.Struct(">I")

END_OK = 0
END_FAILED = 1
END_VANISHED = 2


def chunk_size_for(size: int, block: int) -> int:
    """Chunk size: 256 blocks (1 MiB at 4 KiB), doubled until at most MAX_CHUNKS chunks."""
    chunk = block * MIN_CHUNK_BLOCKS
    while -(-size // chunk) > MAX_CHUNKS:
        chunk *= 2
    return chunk


def block_hash(data: bytes) -> bytes:
    return xxhash.xxh3_64_digest(data)


def chunk_hash(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


# ---- requests (receiver -> sender) ---------------------------------------------


class Request:
    __slots__ = ("idx", "kind", "retry", "block", "chunk", "basis_size", "hashes")

    def __init__(self, idx: int, kind: int, retry: bool = False, block: int = cipher.UNIT,
                 chunk: int = 0, basis_size: int = 0, hashes: bytes = b""):
        self.idx = idx
        self.kind = kind
        self.retry = retry
        self.block = block
        self.chunk = chunk
        self.basis_size = basis_size
        self.hashes = hashes

    def encode(self) -> bytes:
        return _REQ.pack(self.idx, self.kind, int(self.retry), self.block, self.chunk,
                         self.basis_size) + self.hashes

    @classmethod
    def decode(cls, payload: bytes) -> Request:
        if len(payload) < _REQ.size:
            raise ProtocolError("truncated request")
        idx, kind, retry, block, chunk, basis = _REQ.unpack_from(payload)
        req = cls(idx, kind, bool(retry), block, chunk, basis, payload[_REQ.size:])
        if kind not in (WHOLE, BLOCKS, CHUNKS):
            raise ProtocolError(f"unknown request kind {kind}")
        if kind != WHOLE:
            if block < 512 or block > (1 << 24) or block & (block - 1):
                raise ProtocolError(f"bad block size {block}")
            unit = block if kind == BLOCKS else chunk
            width = 8 if kind == BLOCKS else 16
            if unit < block or unit % block or (
                    kind == CHUNKS and chunk != chunk_size_for(basis, block)):
                raise ProtocolError(f"bad chunk size {chunk}")
            if len(req.hashes) != width * -(-basis // unit):
                raise ProtocolError("signature length does not match the basis size")
        return req


def make_request(idx: int, reader: BlockReader | None, basis_size: int, block: int,
                 retry: bool = False) -> Request:
    """Signature of the receiver's basis (or a whole-file request without one)."""
    if reader is None or basis_size == 0:
        return Request(idx, WHOLE, retry)
    chunk = chunk_size_for(basis_size, block)
    hashes = bytearray()
    off = 0
    if basis_size <= chunk:
        while off < basis_size:
            data = reader.read_at(off, min(READ_SIZE, basis_size - off))
            if not data:
                raise OSError("basis file shrank while reading it")
            for i in range(0, len(data), block):
                hashes += block_hash(data[i : i + block])
            off += len(data)
        return Request(idx, BLOCKS, retry, block, block, basis_size, bytes(hashes))
    while off < basis_size:
        data = reader.read_at(off, min(chunk, basis_size - off))
        if not data:
            raise OSError("basis file shrank while reading it")
        hashes += chunk_hash(data)
        off += len(data)
    return Request(idx, CHUNKS, retry, block, chunk, basis_size, bytes(hashes))


# ---- ops (sender -> receiver) ------------------------------------------------------


class OpWriter:
    """Collects ops for one file into DATA payloads of bounded size."""

    def __init__(self, idx: int, send):
        self._send = send
        self._head = _IDX.pack(idx)
        self._buf = bytearray(self._head)
        self._copy_off = -1
        self._copy_len = 0
        self.literal = 0
        self.matched = 0

    def copy(self, offset: int, length: int) -> None:
        self.matched += length
        if self._copy_len and self._copy_off + self._copy_len == offset:
            self._copy_len += length
            return
        self._flush_copy()
        self._copy_off, self._copy_len = offset, length

    def _flush_copy(self) -> None:
        if self._copy_len:
            self._buf += _COPY.pack(OP_COPY, self._copy_off, self._copy_len)
            self._copy_len = 0
            if len(self._buf) >= MAX_LITERAL:
                self.flush()

    def literal_data(self, offset: int, data: bytes) -> None:
        """Literal bytes at offset; big pieces go out as their own frame without being
        copied (data must be immutable)."""
        self._flush_copy()
        self.literal += len(data)
        view = memoryview(data)
        for i in range(0, len(data), MAX_LITERAL):
            part = view[i : i + MAX_LITERAL]
            head = _LIT.pack(OP_LIT, offset + i, len(part))
            if len(part) >= SMALL_LITERAL:
                self.flush()
                self._send(self._head + head, part)
                continue
            self._buf += head
            self._buf += part
            if len(self._buf) >= MAX_LITERAL:
                self.flush()

    def flush(self) -> None:
        self._flush_copy()
        if len(self._buf) > len(self._head):
            self._send(bytes(self._buf))
            self._buf = bytearray(self._head)


def decode_ops(payload: bytes):
    """Yield (op, offset, length_or_data) from one DATA payload (after the index)."""
    pos = _IDX.size
    end = len(payload)
    view = memoryview(payload)
    while pos < end:
        op = payload[pos]
        if op == OP_COPY:
            if pos + _COPY.size > end:
                raise ProtocolError("truncated copy op")
            _, off, length = _COPY.unpack_from(payload, pos)
            pos += _COPY.size
            yield OP_COPY, off, length
        elif op == OP_LIT:
            if pos + _LIT.size > end:
                raise ProtocolError("truncated literal op")
            _, off, length = _LIT.unpack_from(payload, pos)
            pos += _LIT.size
            if pos + length > end:
                raise ProtocolError("truncated literal data")
            yield OP_LIT, off, view[pos : pos + length]
            pos += length
        else:
            raise ProtocolError(f"unknown delta op {op}")


def data_index(payload: bytes) -> int:
    if len(payload) < _IDX.size:
        raise ProtocolError("truncated data frame")
    return _IDX.unpack_from(payload)[0]


def encode_end(idx: int, status: int, size: int, digest: bytes) -> bytes:
    return _END.pack(idx, status, size, digest)


def decode_end(payload: bytes) -> tuple[int, int, int, bytes]:
    if len(payload) != _END.size:
        raise ProtocolError("malformed end-of-file frame")
    return _END.unpack(payload)


def decode_file(payload: bytes) -> tuple[int, int, bytes, memoryview]:
    """(idx, size, digest, data) of a FILE frame: an end record, then exactly the data."""
    if len(payload) < _END.size:
        raise ProtocolError("malformed whole-file frame")
    idx, status, size, digest = _END.unpack_from(payload)
    if status != END_OK or size != len(payload) - _END.size or size > SMALL_FILE:
        raise ProtocolError(f"whole-file frame of entry {idx} does not hold its {size} bytes")
    return idx, size, digest, memoryview(payload)[_END.size:]


def encode_sigreq(idx: int, chunks: list[int]) -> bytes:
    return _IDX.pack(idx) + b"".join(_SIGREQ_ITEM.pack(c) for c in chunks)


def decode_sigreq(payload: bytes) -> tuple[int, list[int]]:
    if len(payload) < _IDX.size or (len(payload) - _IDX.size) % _SIGREQ_ITEM.size:
        raise ProtocolError("malformed signature request")
    idx = _IDX.unpack_from(payload)[0]
    chunks = [c for (c,) in _SIGREQ_ITEM.iter_unpack(payload[_IDX.size:])]
    return idx, chunks


_SIGBLOCKS = struct.Struct(">II")


def encode_sigblocks(idx: int, chunk: int, hashes: bytes) -> bytes:
    return _SIGBLOCKS.pack(idx, chunk) + hashes


def decode_sigblocks(payload: bytes) -> tuple[int, int, bytes]:
    if len(payload) < _SIGBLOCKS.size or (len(payload) - _SIGBLOCKS.size) % 8:
        raise ProtocolError("malformed block signatures")
    idx, chunk = _SIGBLOCKS.unpack_from(payload)
    return idx, chunk, payload[_SIGBLOCKS.size:]


def block_hashes(data: bytes, block: int) -> bytes:
    return b"".join(block_hash(data[i : i + block]) for i in range(0, len(data), block))


def diff_blocks(out: OpWriter, base_off: int, data: bytes, theirs: bytes, block: int,
                basis_size: int) -> None:
    """Emit copy/literal ops for `data` (at base_off) against the basis' block hashes."""
    nb = len(theirs) // 8
    run_start = -1
    for i in range(0, len(data), block):
        bi = i // block
        piece = data[i : i + block]
        off = base_off + i
        same = (bi < nb and off + len(piece) <= basis_size
                and theirs[bi * 8 : bi * 8 + 8] == block_hash(piece))
        if same:
            if run_start >= 0:
                out.literal_data(base_off + run_start, data[run_start:i])
                run_start = -1
            out.copy(off, len(piece))
        elif run_start < 0:
            run_start = i
    if run_start >= 0:
        out.literal_data(base_off + run_start, data[run_start:])

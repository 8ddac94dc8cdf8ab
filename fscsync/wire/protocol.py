"""Framed, multiplexed byte stream between the two fscsync processes.

A frame is a type byte, a 32-bit big-endian length and a payload of at most
MAX_FRAME bytes. Data, file lists, requests, log lines and errors all travel as
frames on one pipe in each direction, so nothing waits for a round trip.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import select
import struct
import sys
import threading
import time
import zlib
from collections import namedtuple

from fscsync import PROTOCOL_VERSION, __version__
from fscsync.errors import (
    ClosedBeforeHandshake,
    IoTimeout,
    NoAnswer,
    NotFscsync,
    PeerClosed,
    ProtocolError,
    StartupFailed,
    VersionMismatch,
    WrongRole,
    escape_peer,
)

MAGIC = b"FSCSYNC\x00"
MAX_FRAME = 4 << 20
_HDR = struct.Struct(">BI")
_FLUSH_AT = 256 << 10
_READ_CHUNK = 1 << 20
_DIRECT_READ = 64 << 10
_INFLATE_STEP = 1 << 20
_IN_BUFFER = 256 << 10
"""Input buffer: four big frames' worth; frames of _DIRECT_READ or more skip it."""
_IOV_MAX = 512
"""Buffers per writev (the kernel takes up to 1024)."""
_DRAIN_MAX = 64 << 20
"""Input read ahead while a write waits for the peer, at most (a peer that never reads
must not fill our memory instead)."""
F_SETPIPE_SZ = 1031

# Frame types. 13, 17 and 18 were named (item, per-file failure, progress) but never
# sent by any version: item lines travel as LOG frames, a failed file as its DATA_END
# status, progress not at all. They stay unassigned, so no number has meant two things.
# Version 4: STATS holds its counters and exit code flat, as FINISHED does (version 3
# nested them under "stats"), both made and read by engine.stats. Version 5: SUCCESS and
# IOERROR. Version 6: DIRNAMES and RELEASE.
HELLO = 1
SETUP = 2
READY = 3
FLIST = 4
FLIST_END = 5
IDNAME = 6
REQ = 7
SIGREQ = 8
SIGBLOCKS = 9
DATA = 10
DATA_END = 11
LOG = 12
DONE = 14
STATS = 15
FATAL = 16
FINISHED = 19
FLIST_START = 20
NOMORE = 21
NOMORE_ACK = 22
FILE = 23
"""A small file whole: its end-of-file record and all its data in one frame."""
SUCCESS = 24
"""Version 5, receiver to sender, --remove-source-files only: entries now in place at
the destination, each as file-list index, st_dev and st_ino of the destination's
copy (rsync's MSG_SUCCESS with its local same-file check)."""
_SUCCESS = struct.Struct(">IQQ")
MAX_SUCCESSES = MAX_FRAME // _SUCCESS.size
IOERROR = 25
"""Version 5, sender to receiver, empty: a file it listed could not be read (rsync's MSG_IO_ERROR);
sent once, before FINISHED. --delete-after then deletes nothing (--ignore-errors)."""
NOOP = 26
"""Empty keepalive under --timeout, sent only to a peer whose handshake lists
"keepalive"; recv skips it wherever it comes."""
DIRNAMES = 27
"""Version 6, sender to receiver, in --delete-during and --delete-delay runs only
(engine/listmode.py's names_announced): the names a directory's entries have in the
file list, sent before the FLIST frame that brings the directory itself, so that the
receiver deletes what its copy of the directory holds beyond them when it gets there,
without the rest of the list (rsync's incremental recursion). Layout and codec:
wire/dirnames.py."""
RELEASE = 28
"""Version 6, receiver to sender: a file-list index (u64); every entry before it is done
with at the receiver (decided, its file in place or failed), so the sender forgets them
and may list further ahead (engine/sender.py's window). Never lower than the last one,
never past the list sent so far."""
_RELEASE = struct.Struct(">Q")


def encode_release(idx: int) -> bytes:
    return _RELEASE.pack(idx)


def decode_release(payload: bytes) -> int:
    if len(payload) != _RELEASE.size:
        raise ProtocolError(f"malformed release frame of {len(payload)} bytes")
    return _RELEASE.unpack(payload)[0]


def _zstd_installed() -> bool:
    """Whether zstandard can be imported, found without importing it: with the typing
    and platform modules it pulls in, that costs every run 4-5 ms, and only -z runs
    that agree on zstd use it (`_zstandard` imports it then). zstd is optional: zlib
    is always there."""
    if "zstandard" in sys.modules:
        return sys.modules["zstandard"] is not None  # None: imports of it are blocked
    from importlib.machinery import PathFinder

    return PathFinder.find_spec("zstandard") is not None


def _zstandard():
    import zstandard

    return zstandard


CAPABILITIES = ["xxh3-128", "aligned-delta", "encdata", "zlib", "keepalive"]
if _zstd_installed():
    CAPABILITIES.append("zstd")
COMPRESSIONS = [c for c in ("zlib", "zstd") if c in CAPABILITIES]
"""The stream compressions this side can speak."""


class _Codec:
    """Stream compression for one direction (zlib or zstd)."""

    def __init__(self, kind: str):
        if kind == "zstd":
            zstandard = _zstandard()
            self._c = zstandard.ZstdCompressor(level=3).compressobj()
            self._flush = lambda: self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        else:
            self._c = zlib.compressobj(6)
            self._flush = lambda: self._c.flush(zlib.Z_SYNC_FLUSH)

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._flush()


class _Source:
    """The compressed bytes of one direction: what was read past the switch to
    compression first, then the fd (waiting at most `timeout`, else as the channel's
    --timeout allows)."""

    def __init__(self, rfd: int, rest: bytes, chan: Channel):
        self.rfd = rfd
        self.rest = rest
        self.chan = chan
        self.received = 0
        self.eof = False
        self.timeout: float | None = None

    def read(self, n: int) -> bytes:
        if self.rest:
            data, self.rest = self.rest[:n], self.rest[n:]
            return data
        if self.timeout is not None:
            ready, _, _ = select.select([self.rfd], [], [], self.timeout)
            if not ready:
                raise NoAnswer(seconds=self.timeout)
        data = self.chan._read(n)
        self.received += len(data)
        self.eof = not data
        return data


class _Decodec:
    """Stream decompression for the other direction, reading its input itself. Output
    comes at most _INFLATE_STEP bytes a call, zlib and zstd alike: a few compressed bytes
    from an untrusted peer must not inflate into gigabytes at once. (zstandard's
    decompressobj has no output bound; its stream reader's read1 has.)"""

    def __init__(self, kind: str, rfd: int, rest: bytes, chan: Channel):
        self.source = _Source(rfd, rest, chan)
        self._zstd = None
        self._errors: tuple = (zlib.error,)
        if kind == "zstd":
            zstandard = _zstandard()
            self._errors = (zlib.error, zstandard.ZstdError)
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                self.source, read_size=_READ_CHUNK, read_across_frames=True)
        else:
            self._d = zlib.decompressobj()
        self._tail = b""
        self._more = False

    def pull(self, timeout: float | None) -> bytes:
        """Some output (possibly none), reading the input at most once; source.eof tells
        the end of the stream."""
        self.source.timeout = timeout
        try:
            if self._zstd is not None:
                return self._zstd.read1(_INFLATE_STEP)
            if not self._tail and not self._more:
                self._tail = self.source.read(_READ_CHUNK)
            out = self._d.decompress(self._tail, _INFLATE_STEP)
        except self._errors as exc:
            raise ProtocolError(f"corrupt compressed stream: {exc}") from None
        self._tail = self._d.unconsumed_tail
        self._more = len(out) == _INFLATE_STEP
        return out


def _widen_pipe(fd: int) -> None:
    """Pipes default to 64 KiB; a 1 MiB pipe halves the context switches per byte."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass


class Channel:
    """One end of the stream: thread-safe frame sending, frame receiving.

    Sends are buffered and flushed when the buffer grows or when a side is
    about to wait for its peer; counters feed --stats.
    """

    def __init__(self, rfd: int, wfd: int):
        self.rfd = rfd
        self.wfd = wfd
        self._out: list = []
        self._out_len = 0
        self._lock = threading.Lock()
        self._in = bytearray(_IN_BUFFER)
        self._pos = 0
        self._end = 0
        self._eof = False
        self.bytes_sent = 0
        self.bytes_received = 0
        for fd in (rfd, wfd):
            _widen_pipe(fd)
        self._codec: _Codec | None = None
        self._decodec: _Decodec | None = None
        self._bwlimit = 0
        self._bw_start = 0.0
        self._bw_sent = 0
        self._queue: queue.Queue | None = None
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None
        self._timeout = 0
        self._side = ""
        self._last_in = self._last_out = self._last_sent = 0.0
        self._keepalive: threading.Thread | None = None
        self._stop_keepalive = threading.Event()

    def set_timeout(self, seconds: int, side: str, keepalive: bool) -> None:
        """--timeout: from now on a wait for the peer that lasts `seconds` after the last
        data in either direction ends the run with IoTimeout (`side` names this end in
        its line). Reads and writes stop blocking (O_NONBLOCK): each is tried first and
        waited for with select only when the pipe is empty or full, so a frozen peer
        cannot hold one forever; with `keepalive` (the peer reads NOOP frames) a thread sends
        one whenever this side has been silent for a third of the time, so a peer that waits
        while this side works (hashing a huge file, the final pass) does not give up.
        A keepalive is no sign of life from the peer: it never counts as data sent."""
        if not seconds:
            return
        self._timeout = seconds
        self._side = side
        self._last_in = self._last_out = self._last_sent = time.monotonic()
        for fd in (self.rfd, self.wfd):
            os.set_blocking(fd, False)
        if keepalive:
            self._keepalive = threading.Thread(target=self._keep_alive, name="keepalive",
                                               daemon=True)
            self._keepalive.start()

    def stop_keepalive(self) -> None:
        """End the keepalive thread before the caller closes the fds it writes to."""
        self._stop_keepalive.set()
        if self._keepalive is not None and self._keepalive is not threading.current_thread():
            self._keepalive.join()
        self._keepalive = None

    def _keep_alive(self) -> None:
        lull = self._timeout / 3  # rsync allows half, but checks only each second
        while not self._stop_keepalive.wait(lull / 4):
            if time.monotonic() - self._last_sent < lull:
                continue
            if not self._lock.acquire(blocking=False):
                continue  # the owner is sending: try again in a moment
            try:
                real = bool(self._out)
                self._out.append(_HDR.pack(NOOP, 0))
                self._out_len += _HDR.size
                self._flush_locked(real)
            except Exception:  # the owner meets the same trouble on its next read or write
                return
            finally:
                self._lock.release()

    def _await(self, fd: int, write: bool) -> None:
        """Wait until fd is ready (readable, or writable); IoTimeout once --timeout has
        passed since the last data in either direction. A sync-mode writer reads what
        arrives meanwhile into the input buffer, as rsync does: two sides each blocked
        on a full pipe must not wait for each other."""
        keepalive = threading.current_thread() is self._keepalive
        drain = write and self._queue is None and not self._eof and not keepalive
        while True:
            left = wait = None
            if self._timeout:
                left = max(self._last_in, self._last_out) + self._timeout - time.monotonic()
                wait = max(left, 0)
                if keepalive:  # in slices, so that stop_keepalive is heard
                    wait = min(wait, 0.1)
                    if self._stop_keepalive.is_set():
                        raise PeerClosed()
            drain = drain and self._buffered() < _DRAIN_MAX
            rl = [self.rfd] if drain or not write else []
            ready, writable, _ = select.select(rl, [fd] if write else [], [], wait)
            if writable or (ready and not write):
                return  # data waiting counts even past the deadline (we were stopped)
            if ready:
                drain = self._drain_input()
            elif left is not None and left <= 0:
                raise IoTimeout(side=self._side, seconds=self._timeout)

    def _buffered(self) -> int:
        if self._decodec is not None:
            return len(self._decodec.source.rest)
        return self._end - self._pos

    def _drain_input(self) -> bool:
        """Read what the peer sent into the input buffer (raw bytes, still compressed
        if the stream is); False at the end of the stream, which the next read meets."""
        try:
            data = os.read(self.rfd, _READ_CHUNK)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._last_in = time.monotonic()
        self.bytes_received += len(data)
        if self._decodec is not None:
            self._decodec.source.rest += data
        else:
            self._append(data)
        return True

    def _read(self, n: int) -> bytes:
        """os.read of the stream, waiting as --timeout allows."""
        while True:
            try:
                data = os.read(self.rfd, n)
            except BlockingIOError:
                self._await(self.rfd, False)
                continue
            if data and self._timeout:
                self._last_in = time.monotonic()
            return data

    def start_async(self) -> None:
        """From now on, writes happen in a background thread and never block the caller.

        The receiver needs this: its main thread is the only reader of the stream, and
        if it ever blocked writing while the sender blocks writing too, both would wait
        for each other forever."""
        self._queue = queue.Queue()
        self._writer = threading.Thread(target=self._drain, name="channel-writer", daemon=True)
        self._writer.start()

    def stop_async(self) -> None:
        """Wait until everything queued is written, then write synchronously again."""
        if self._queue is None:
            return
        self.flush()
        self._queue.put(None)
        self._writer.join()
        with self._lock:  # a keepalive flushing now writes itself, not into the queue
            self._queue = None
        self._writer = None
        if self._write_error is not None:
            raise self._write_error

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._write_error is not None:
                continue
            try:
                self._write_all(*item)
            except BaseException as exc:
                self._write_error = exc

    def set_compression(self, kind: str | None) -> None:
        """Switch both directions to a compressed stream from here on."""
        if kind:
            self._codec = _Codec(kind)
            self._decodec = _Decodec(kind, self.rfd, bytes(self._in[self._pos : self._end]),
                                     self)
            self._pos = self._end = 0

    def set_bwlimit(self, bytes_per_second: int) -> None:
        self._bwlimit = bytes_per_second
        self._bw_start = time.monotonic()
        self._bw_sent = 0

    def send(self, ftype: int, *parts: bytes | memoryview) -> None:
        """Queue one frame made of `parts` (kept by reference, not copied: callers pass
        immutable buffers)."""
        length = sum(map(len, parts))
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        with self._lock:
            self._out.append(_HDR.pack(ftype, length))
            self._out.extend(parts)
            self._out_len += _HDR.size + length
            if self._out_len >= _FLUSH_AT:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self, real: bool = True) -> None:
        """Write (or queue) what is buffered; `real` False for a lone keepalive."""
        if not self._out:
            return
        data = self._out
        self._out = []
        self._out_len = 0
        if self._codec is not None:
            data = [self._codec.compress(b"".join(data))]
        if self._queue is not None:
            if self._write_error is not None:
                raise self._write_error
            self._queue.put((data, real))
            return
        self._write_all(data, real)

    def _write_all(self, parts: list, real: bool = True) -> None:
        """writev the buffers (bytes-like, one byte per item), resuming after partial
        writes; a blocking pipe takes each batch whole unless a signal cuts it short.
        Under --timeout the fd does not block: a full pipe is waited for (_await)."""
        while parts:
            batch = parts[:_IOV_MAX]
            try:
                n = os.writev(self.wfd, batch)
            except BrokenPipeError:
                raise PeerClosed() from None
            except BlockingIOError:
                self._await(self.wfd, True)
                continue
            if self._timeout:
                self._last_sent = time.monotonic()
                if real:
                    self._last_out = self._last_sent
            self.bytes_sent += n
            if self._bwlimit:
                self._throttle(n)
            parts = parts[_IOV_MAX:]
            if n < sum(map(len, batch)):
                for i, part in enumerate(batch):
                    if n < len(part):
                        parts = [memoryview(part)[n:], *batch[i + 1 :], *parts]
                        break
                    n -= len(part)

    def _throttle(self, n: int) -> None:
        self._bw_sent += n
        due = self._bw_start + self._bw_sent / self._bwlimit
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _fill(self, timeout: float | None = None) -> None:
        if self._eof:
            raise PeerClosed()
        if self._decodec is not None:
            self._fill_decompressed(timeout)
            return
        if timeout is not None:
            ready, _, _ = select.select([self.rfd], [], [], timeout)
            if not ready:
                raise NoAnswer(seconds=timeout)
        # Straight into the buffer: no new 1 MiB object per read, no copy after it.
        self._room(_DIRECT_READ + _HDR.size)
        try:
            got = os.readv(self.rfd, [memoryview(self._in)[self._end :]])
        except BlockingIOError:  # under --timeout: wait as it allows, then read again
            self._await(self.rfd, False)
            return
        self._end += got
        if not got:
            self._eof = True
            raise PeerClosed()
        self.bytes_received += got
        if self._timeout:
            self._last_in = time.monotonic()

    def _fill_decompressed(self, timeout: float | None) -> None:
        source = self._decodec.source
        before = source.received
        out = self._decodec.pull(timeout)
        self.bytes_received += source.received - before
        if out:
            self._append(out)
        elif source.eof:
            self._eof = True
            raise PeerClosed()

    def _room(self, n: int) -> None:
        """At least n free bytes after the buffered data: move it to the front, and
        grow the buffer only when that is not enough (a big compressed frame)."""
        if len(self._in) - self._end >= n:
            return
        keep = self._end - self._pos
        if keep:
            self._in[:keep] = self._in[self._pos : self._end]
        self._pos, self._end = 0, keep
        if len(self._in) - keep < n:
            self._in.extend(bytes(n - (len(self._in) - keep)))

    def _append(self, data: bytes) -> None:
        self._room(len(data))
        self._in[self._end : self._end + len(data)] = data
        self._end += len(data)

    def flush_before_wait(self) -> None:
        """Flush only when the next recv would wait for the peer: answers to frames
        already here go out together, one write for many small files."""
        have = self._end - self._pos
        if have >= _HDR.size:
            ftype, length = _HDR.unpack_from(self._in, self._pos)
            if have >= _HDR.size + length and ftype != NOOP:
                return
        self.flush()

    def _need(self, n: int, timeout: float | None) -> None:
        while self._end - self._pos < n:
            self._fill(timeout)

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next frame other than a keepalive; raises PeerClosed at end of stream."""
        self._need(_HDR.size, timeout)
        ftype, length = _HDR.unpack_from(self._in, self._pos)
        while ftype == NOOP and not length:
            self._pos += _HDR.size
            self._need(_HDR.size, timeout)
            ftype, length = _HDR.unpack_from(self._in, self._pos)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
        if length >= _DIRECT_READ and self._decodec is None:
            return ftype, self._recv_large(length)
        self._need(_HDR.size + length, timeout)
        start = self._pos + _HDR.size
        payload = bytes(self._in[start : start + length])
        self._pos = start + length
        return ftype, payload

    def _recv_large(self, length: int) -> bytearray:
        """Read a big payload straight into its own buffer (no staging copies)."""
        buf = bytearray(length)
        view = memoryview(buf)
        start = self._pos + _HDR.size
        have = min(self._end - start, length)
        view[:have] = memoryview(self._in)[start : start + have]
        self._pos = start + have
        while have < length:
            try:
                n = os.readv(self.rfd, [view[have:]])
            except BlockingIOError:
                self._await(self.rfd, False)
                continue
            if n == 0:
                self._eof = True
                raise PeerClosed()
            have += n
            self.bytes_received += n
            if self._timeout:
                self._last_in = time.monotonic()
        return buf

    def read_raw_prefix(self, n: int, timeout: float) -> bytes:
        """Peek at up to n raw bytes (for telling a non-fscsync peer apart)."""
        try:
            self._need(1, timeout)
        except PeerClosed:
            return b""
        return bytes(self._in[self._pos : min(self._pos + n, self._end)])


def encode_successes(items: list[tuple[int, int, int]]) -> bytes:
    return b"".join(_SUCCESS.pack(*item) for item in items)


def decode_successes(payload: bytes) -> list[tuple[int, int, int]]:
    """A SUCCESS frame's records; a ProtocolError for anything but whole records."""
    if not payload or len(payload) % _SUCCESS.size:
        raise ProtocolError("malformed success frame")
    return list(_SUCCESS.iter_unpack(payload))


Hello = namedtuple("Hello", "version program capabilities")
"""What the peer said in its handshake."""


def send_hello(chan: Channel, role: str) -> None:
    body = json.dumps(
        {"role": role, "program": f"fscsync {__version__}", "capabilities": CAPABILITIES}
    ).encode()
    chan.send(HELLO, MAGIC + struct.pack(">H", PROTOCOL_VERSION) + body)
    chan.flush()


def recv_hello(chan: Channel, want_role: str, timeout: float = 60.0) -> Hello:
    """Check the peer is an fscsync of our protocol version, playing the other role."""
    prefix = chan.read_raw_prefix(_HDR.size + len(MAGIC), timeout)
    if len(prefix) < _HDR.size + len(MAGIC) or prefix[_HDR.size:] != MAGIC:
        if not prefix:
            raise ClosedBeforeHandshake()
        raise NotFscsync(said=prefix.decode("ascii", "replace").strip())
    ftype, payload = chan.recv(timeout)
    if ftype != HELLO or len(payload) < len(MAGIC) + 2:
        raise StartupFailed("malformed handshake from the other side")
    (version,) = struct.unpack_from(">H", payload, len(MAGIC))
    try:
        info = json.loads(payload[len(MAGIC) + 2 :])
        role = str(info["role"])
        program = str(info["program"])
        caps = [str(c) for c in info["capabilities"]]
    except (ValueError, KeyError, TypeError):
        raise StartupFailed("malformed handshake from the other side") from None
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(ours=PROTOCOL_VERSION, program=escape_peer(program),
                              theirs=version)
    if role != want_role:
        raise WrongRole(role=escape_peer(role), want=want_role)
    return Hello(version, program, caps)


def send_json(chan: Channel, ftype: int, obj: object) -> None:
    chan.send(ftype, json.dumps(obj).encode())


def load_json(payload: bytes) -> dict:
    try:
        obj = json.loads(payload)
    except ValueError:
        raise ProtocolError("malformed control frame") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed control frame")
    return obj

"""The sending side: stream the file list, then answer requests with deltas.

The sender never waits on the receiver per file: requests arrive pipelined,
each is answered at once, and a file whose chunks differ is parked until the
block signatures it asked for come back.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time

import xxhash

from fscsync.engine import delta
from fscsync.engine.flist import BatchBuilder, Entry, SentList
from fscsync.engine.listmode import releases_list
from fscsync.engine.report import Reporter
from fscsync.engine.scan import PlainRun, Scanner, split_source
from fscsync.engine.stats import Stats, final_message
from fscsync.errors import (
    ChangedWhileSent,
    ProtocolError,
    ReadFailed,
    SendOpenFailed,
    Vanished,
    escape,
    os_reason,
)
from fscsync.fs.fileio import READ_SIZE, BlockReader, data_segments
from fscsync.fs.meta import group_name, user_name
from fscsync.options import Options
from fscsync.wire import dirnames, protocol
from fscsync.wire.protocol import Channel

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.fs.destfs import Confined

FLIST_BATCH = 48 << 10
"""Bytes of a file-list batch before compression (about a thousand entries)."""
WINDOW = 64 << 10
"""File-list entries the sender may have sent past the receiver's oldest unfinished
one (protocol.RELEASE): what both sides hold of the list is bounded by it, not by the
tree. A receiver that releases nothing (listmode.releases_list) gets no window."""
SCAN_AHEAD_FRAMES = 256
"""File-list frames a scan-ahead thread may hold before the connection is up (about
256,000 entries: far more than a connection takes to set up, and little memory)."""
_ZEROS = bytes(READ_SIZE)


class _Parked:
    """A file waiting for block signatures of the chunks that differ."""

    __slots__ = ("entry", "fd", "reader", "out", "digest", "size", "st", "pending", "chunk",
                 "block", "basis_size")


class Sender:
    def __init__(self, chan: Channel, opts: Options, reporter: Reporter, sources: list[bytes],
                 on_control=None, confined: Confined | None = None):
        self.chan = chan
        self.opts = opts
        self.reporter = reporter
        self.sources = sources
        self.sent = SentList()
        self.scanner = Scanner(opts, reporter, confined)
        self.stats = Stats()
        self.on_control = on_control
        self._parked: dict[int, _Parked] = {}
        self._ahead = None  # the scan-ahead queue, when a thread scans (scan_ahead)
        self._listed_size = 0  # sizes of the listed files and links, for progress only
        self._read_error = False  # IOERROR sent
        self._window = WINDOW if releases_list(opts) else 0
        self._listed = False  # FLIST_END sent
        self._done = False  # DONE came: the receiver wants nothing more

    def run(self) -> Stats:
        self.send_flist()
        self.serve()
        return self.stats

    # ---- file list ------------------------------------------------------------

    def _single_file(self) -> bool:
        """Whether the list holds at most one entry, which rsync then writes under the
        destination's own name unless that ends in '/' (a file; with -d and no -r, a
        directory; nothing at all from `src/` without -r or -d; never with -R)."""
        if len(self.sources) != 1 or self.opts.relative:
            return False
        src = self.sources[0]
        o = self.opts
        shallow = not (o.recursive or o.list_only)
        if split_source(src)[1] is None:
            return shallow and not o.dirs
        fs = self.scanner.confined
        try:
            st = os.lstat(src) if fs is None else fs.stat(src)
            if fs is None and stat.S_ISLNK(st.st_mode) and (o.copy_links or o.copy_dirlinks):
                st = os.stat(src)
        except OSError:
            return False
        return not stat.S_ISDIR(st.st_mode) or (shallow and o.dirs)

    def scan_ahead(self) -> None:
        """Scan in a thread from now on, while the remote shell still connects: the
        file-list frames wait in a bounded queue until send_flist sends them."""
        import queue
        import threading

        ahead: queue.Queue = queue.Queue(maxsize=SCAN_AHEAD_FRAMES)

        def scan() -> None:
            try:
                self._scan(lambda *frame: ahead.put(frame))
            except BaseException as exc:  # handed to the sending thread, raised there
                ahead.put(exc)
            ahead.put(None)

        self._ahead = ahead
        threading.Thread(target=scan, name="scan-ahead", daemon=True).start()

    def send_flist(self) -> None:
        """Send the file list; --stats splits its time into generation (scanning) and
        transfer (sending the frames)."""
        chan = self.chan
        started = time.monotonic()
        protocol.send_json(chan, protocol.FLIST_START, {"single_file": self._single_file()})
        if self._ahead is None:
            self._scan(self._send_frame)
        else:
            for item in iter(self._ahead.get, None):
                if isinstance(item, BaseException):
                    raise item
                self._send_frame(*item)
        self.stats.io_error = self.scanner.io_error
        protocol.send_json(chan, protocol.FLIST_END,
                           {"io_error": self.scanner.io_error, "count": self.sent.count})
        self._listed = True
        chan.flush()
        self.stats.flist_gen_time = time.monotonic() - started - self.stats.flist_xfer_time
        self.reporter.listed(self.sent.count, self._listed_size)

    def _send_frame(self, ftype: int, payload: bytes, count: int = 0) -> None:
        """File-list batches go out at once (not when the output buffer fills), so the
        receiver compares each while the scan goes on; past the window the scan waits
        for the receiver, answering its requests meanwhile. (Below it no request is
        answered before the list is complete: --progress counts against the whole list.)"""
        started = time.monotonic()
        chan, sent = self.chan, self.sent
        chan.send(ftype, payload)
        if ftype == protocol.FLIST:
            sent.add(payload, count)
            chan.flush()
        self.stats.flist_xfer_time += time.monotonic() - started
        while self._window and sent.count - sent.released > self._window:
            chan.flush_before_wait()
            self._handle(*chan.recv())

    def _scan(self, emit) -> None:
        """Scan the sources into file-list frames (batches and owner names, in the
        order the receiver needs them), handed to emit(ftype, payload)."""
        users: set[int] = set()
        groups: set[int] = set()
        batch = BatchBuilder()
        owners = self.opts.owner and not self.opts.numeric_ids
        groups_named = self.opts.group and not self.opts.numeric_ids
        for run in self.scanner.scan(self.sources):
            if type(run) is dirnames.DirNames:
                self._announce(emit, run)
                continue
            plain = type(run) is PlainRun
            if owners:
                ids = {st.st_uid for st in run.stats} if plain else {e.uid for e in run}
                for uid in ids.difference(users):
                    users.add(uid)
                    self._name(emit, b"u", uid)
            if groups_named:
                ids = {st.st_gid for st in run.stats} if plain else {e.gid for e in run}
                for gid in ids.difference(groups):
                    groups.add(gid)
                    self._name(emit, b"g", gid)
            if self.opts.progress:
                self._listed_size += (sum(st.st_size for st in run.stats) if plain else
                                      sum(e.size for e in run if e.is_reg or e.is_link))
            if plain:
                batch.add_stats(run.paths(), run.stats)
                batch = self._ship(batch, emit, FLIST_BATCH)
            else:
                for e in run:
                    batch.add(e)
                    batch = self._ship(batch, emit, FLIST_BATCH)
        self._ship(batch, emit, 1)

    def _announce(self, emit, names: dirnames.DirNames) -> None:
        """A directory's names, ahead of the batch that brings the directory (the one
        being filled), with whether the scan has met an I/O error so far."""
        names.io_error = self.scanner.io_error
        for payload in dirnames.encode(names):
            emit(protocol.DIRNAMES, payload)

    def _ship(self, batch: BatchBuilder, emit, at_least: int) -> BatchBuilder:
        """Emit the batch once it holds `at_least` bytes; the batch to go on filling."""
        if batch.size < at_least:
            return batch
        payload = batch.pack()
        self.stats.flist_size += len(payload)
        emit(protocol.FLIST, payload, len(batch))
        return BatchBuilder()

    @staticmethod
    def _name(emit, kind: bytes, ident: int) -> None:
        name = user_name(ident) if kind == b"u" else group_name(ident)
        if name is not None:
            emit(protocol.IDNAME, kind + struct.pack(">I", ident) + name)

    # ---- requests --------------------------------------------------------------

    def serve(self) -> None:
        chan = self.chan
        while not self._done:
            chan.flush_before_wait()
            self._handle(*chan.recv())
        protocol.send_json(chan, protocol.FINISHED,
                           final_message(self.stats, self.reporter.exit_code))
        chan.flush()

    def _handle(self, ftype: int, payload: bytes) -> None:
        """One frame from the receiver, while the list is sent or after it."""
        if ftype == protocol.REQ:
            self._answer(delta.Request.decode(payload))
        elif ftype == protocol.SIGBLOCKS:
            self._blocks(*delta.decode_sigblocks(payload))
        elif ftype == protocol.RELEASE:
            self.sent.release(protocol.decode_release(payload))
        elif ftype == protocol.NOMORE and self._listed:
            self.chan.send(protocol.NOMORE_ACK)
        elif ftype == protocol.SUCCESS and self.opts.remove_source_files:
            for idx, dev, ino in protocol.decode_successes(payload):
                self._remove_source(idx, dev, ino)
        elif ftype == protocol.DONE and self._listed and not self._done:
            self._done = True
        elif self.on_control is None or not self.on_control(ftype, payload):
            raise ProtocolError(f"unexpected frame type {ftype} at the sender")

    def _remove_source(self, idx: int, dev: int, ino: int) -> None:
        """--remove-source-files: entry idx is in place at the destination (as inode
        dev/ino there). Its source goes unless it changed since it was listed, or is
        that very inode (a source given as its own destination), as rsync checks."""
        e = self.sent.get(idx)
        if e is None or e.is_dir:
            raise ProtocolError(f"success for entry {idx}, which is no file that was sent")
        src = self.scanner.source_path(idx, e.path)
        fs = self.scanner.confined
        try:
            st = os.lstat(src) if fs is None else fs.stat(src)
            if stat.S_ISLNK(st.st_mode) and not e.is_link and fs is None:
                st = os.stat(src)  # -L sent what it points to
        except OSError as exc:
            self._remove_failed(src, "re-lstat", exc)
            return
        if (st.st_dev, st.st_ino) == (dev, ino):
            self.reporter.error(f"ERROR: Skipping sender remove of destination file: "
                                f"{escape(src)}")
            return
        if st.st_mtime_ns != e.mtime_ns or (e.is_reg and e.enc is None and st.st_size != e.size):
            self.reporter.error(f"ERROR: Skipping sender remove for changed file: {escape(src)}")
            return
        try:
            if fs is None:
                os.unlink(src)
            else:
                pfd, name = fs.at(src)
                try:
                    os.unlink(name, dir_fd=pfd)
                finally:
                    os.close(pfd)
        except OSError as exc:
            self._remove_failed(src, "remove", exc)
            return
        self.reporter.info(f"sender removed {escape(e.path)}", 2)

    def _remove_failed(self, src: bytes, what: str, exc: OSError) -> None:
        if exc.errno == errno.ENOENT:
            self.reporter.info(f"sender file already removed: {escape(src)}", 0)
        else:
            self.reporter.error(f"sender failed to {what} {escape(src)}: {os_reason(exc)}")

    def _entry(self, idx: int) -> Entry:
        e = self.sent.get(idx)
        if e is None or not e.is_reg:
            raise ProtocolError(f"request for entry {idx}, which is not a regular file")
        e.src = self.scanner.source_path(idx, e.path)
        return e

    def _open(self, idx: int, e: Entry) -> tuple[int, bool] | None:
        try:
            layout = self.scanner.files.finder.layout(e.src, e.enc is not None, e.enc_alt)
            return self.scanner.files.open_data(e.src, layout)
        except OSError as exc:
            self._open_failed(idx, e, exc)
            return None

    def _open_failed(self, idx: int, e: Entry, exc: OSError) -> None:
        if exc.errno == errno.ENOENT:
            self.reporter.failed(Vanished(path=e.src))
            status = delta.END_VANISHED
        elif exc.errno == errno.ENOKEY and e.enc is not None:
            self.reporter.failed(SendOpenFailed(path=e.src, reason=OSError(
                exc.errno, "no key-less ciphertext access (this kernel lacks the O_CIPHERTEXT "
                "interface)")))
            status = delta.END_FAILED
        else:
            self.reporter.failed(SendOpenFailed(path=e.src, reason=exc))
            status = delta.END_FAILED
        if status == delta.END_FAILED:
            self._io_error()
        self.chan.send(protocol.DATA_END,
                       delta.encode_end(idx, status, 0, bytes(16)))

    def _answer(self, req: delta.Request) -> None:
        e = self._entry(req.idx)
        opened = self._open(req.idx, e)
        if opened is None:
            return
        fd, direct = opened
        reader = BlockReader(fd, direct)
        st = os.fstat(fd)
        size = e.size if e.enc is not None else st.st_size
        if st.st_mtime_ns != e.mtime_ns or (e.enc is None and st.st_size != e.size):
            self.reporter.warning(f'"{escape(e.src)}" changed after the file list was made; '
                                  "sending its current content (the next run settles it)")
        small = None
        out = None
        try:
            if req.kind == delta.WHOLE and size <= delta.SMALL_FILE:
                small = reader.read_at(0, size) if size else b""
                if len(small) != size:
                    raise OSError(errno.EIO, "file shrank while reading it")
                digest = xxhash.xxh3_128_digest(small)
                self.reporter.progress(e.path, size, size, req.idx)
            else:
                out = delta.OpWriter(req.idx, lambda *p: self.chan.send(protocol.DATA, *p))
                if req.kind == delta.CHUNKS:
                    self._chunks_pass(req, e, fd, reader, out, st, size)
                    return
                if req.kind == delta.BLOCKS:
                    digest = self._send_blocks(req, e, reader, out, size)
                else:
                    digest = self._send_whole(req.idx, e, fd, reader, out, size, direct)
        except OSError as exc:
            self._read_failed(req.idx, e, exc, fd, reader)
            return
        self._finish(req.idx, e, fd, reader, out, digest, size, st, small)

    def _finish(self, idx: int, e: Entry, fd: int, reader: BlockReader,
                out: delta.OpWriter | None, digest: bytes, size: int, st: os.stat_result,
                small: bytes | None = None) -> None:
        """End one file. `small` is a small file's whole content (and `out` None): it goes
        out together with the end record, as one FILE frame."""
        if out is not None:
            out.flush()
            self.stats.literal += out.literal
            self.stats.matched += out.matched
        else:
            self.stats.literal += size
        now = os.fstat(fd)
        reader.close()
        os.close(fd)
        status = delta.END_OK
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.reporter.failed(ChangedWhileSent(path=e.src))
            status = delta.END_FAILED
        else:
            self.stats.files_sent += 1
            self.stats.transferred_size += size
        end = delta.encode_end(idx, status, size, digest)
        if small is not None and status == delta.END_OK:
            self.chan.send(protocol.FILE, end, small)
        else:
            self.chan.send(protocol.DATA_END, end)

    def _read_failed(self, idx: int, e: Entry, exc: OSError, fd: int,
                     reader: BlockReader) -> None:
        reader.close()
        os.close(fd)
        self.reporter.failed(ReadFailed(path=e.src, reason=exc))
        self._io_error()
        self.chan.send(protocol.DATA_END, delta.encode_end(idx, delta.END_FAILED, 0, bytes(16)))

    def _io_error(self) -> None:
        """Tell the receiver, once, that a listed file could not be read (a vanished
        one does not count, as in rsync): --delete-after then keeps everything."""
        if not self._read_error:
            self._read_error = True
            self.chan.send(protocol.IOERROR)

    def _send_whole(self, idx: int, e: Entry, fd: int, reader: BlockReader,
                    out: delta.OpWriter,
                    size: int, direct: bool) -> bytes:
        h = xxhash.xxh3_128()
        # Holes are looked for only past one read: for a small file the two lseeks
        # cost more than its zeros, which the receiver turns back into holes anyway.
        # A file grown since its listing goes dense: the receiver takes data past the
        # listed size only where it follows on from what it has.
        whole = direct or e.enc is not None or size <= READ_SIZE or size > e.size
        segments = [(0, size)] if whole else data_segments(fd, size)
        pos = 0
        for start, end in segments:
            _hash_zeros(h, start - pos)
            off = start
            while off < end:
                data = reader.read_at(off, min(READ_SIZE, end - off))
                if not data:
                    raise OSError(errno.EIO, "file shrank while reading it")
                h.update(data)
                out.literal_data(off, data)
                off += len(data)
                self.reporter.progress(e.path, off, size, idx)
            pos = end
        _hash_zeros(h, size - pos)
        return h.digest()

    def _send_blocks(self, req: delta.Request, e: Entry, reader: BlockReader,
                     out: delta.OpWriter, size: int) -> bytes:
        h = xxhash.xxh3_128()
        off = 0
        step = READ_SIZE - READ_SIZE % req.block
        while off < size:
            data = reader.read_at(off, min(step, size - off))
            if not data:
                raise OSError(errno.EIO, "file shrank while reading it")
            h.update(data)
            theirs = req.hashes[off // req.block * 8 :]
            delta.diff_blocks(out, off, data, theirs, req.block, req.basis_size)
            off += len(data)
            self.reporter.progress(e.path, off, size, req.idx)
        return h.digest()

    def _chunks_pass(self, req: delta.Request, e: Entry, fd: int, reader: BlockReader,
                     out: delta.OpWriter, st: os.stat_result, size: int) -> None:
        """First pass over a big file: copy equal chunks, ask for blocks of the rest.
        A chunk is read a piece at a time: the receiver chooses the chunk size."""
        h = xxhash.xxh3_128()
        chunk = req.chunk
        nbasis = len(req.hashes) // 16
        differ = []
        off = 0
        while off < size:
            ci = off // chunk
            end = min(off + chunk, size)
            mine = xxhash.xxh3_128()
            for at, data in _pieces(reader, off, end, req.block):
                h.update(data)
                if ci < nbasis:
                    mine.update(data)
                else:
                    out.literal_data(at, data)
            if ci < nbasis:
                if end <= req.basis_size and req.hashes[ci * 16 : ci * 16 + 16] == mine.digest():
                    out.copy(off, end - off)
                else:
                    differ.append(ci)
            off = end
            self.reporter.progress(e.path, off, size, req.idx)
        if not differ:
            self._finish(req.idx, e, fd, reader, out, h.digest(), size, st)
            return
        p = _Parked()
        p.entry, p.fd, p.reader, p.out = e, fd, reader, out
        p.digest, p.size, p.st = h.digest(), size, st
        p.pending, p.chunk, p.block, p.basis_size = set(differ), chunk, req.block, req.basis_size
        self._parked[req.idx] = p
        self.chan.send(protocol.SIGREQ, delta.encode_sigreq(req.idx, differ))

    def _blocks(self, idx: int, ci: int, hashes: bytes) -> None:
        p = self._parked.get(idx)
        if p is None or ci not in p.pending:
            raise ProtocolError(f"block signatures for entry {idx} chunk {ci} nobody asked for")
        p.pending.discard(ci)
        off = ci * p.chunk
        try:
            for at, data in _pieces(p.reader, off, min(off + p.chunk, p.size), p.block):
                theirs = hashes[(at - off) // p.block * 8 :]
                delta.diff_blocks(p.out, at, data, theirs, p.block, p.basis_size)
        except OSError as exc:
            del self._parked[idx]
            self._read_failed(idx, p.entry, exc, p.fd, p.reader)
            return
        if not p.pending:
            del self._parked[idx]
            self._finish(idx, p.entry, p.fd, p.reader, p.out, p.digest, p.size, p.st)


def _pieces(reader: BlockReader, off: int, end: int, block: int):
    """(offset, data) of [off, end) in reads of about READ_SIZE, whole blocks each."""
    step = max(READ_SIZE - READ_SIZE % block, block)
    while off < end:
        data = reader.read_at(off, min(step, end - off))
        if not data:
            raise OSError(errno.EIO, "file shrank while reading it")
        yield off, data
        off += len(data)


def _hash_zeros(h, n: int) -> None:
    while n > 0:
        step = min(n, len(_ZEROS))
        h.update(memoryview(_ZEROS)[:step])
        n -= step

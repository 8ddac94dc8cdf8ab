"""The writer: builds each requested file from basis ranges and literal data in a
temp file, verifies it, applies attributes in the encrypted-safe order and renames
it into place. The old copy is never touched until the rename, or, for a big file
with few changes, until its verified changes are committed to a redo journal
(`inplace`)."""

from __future__ import annotations

import errno
import os

import xxhash

from fscsync import errors
from fscsync.engine import delta
from fscsync.engine.rxstate import Pending, RxState, Status
from fscsync.errors import EncdataUnsettable, escape
from fscsync.fs import cipher, inplace, meta
from fscsync.fs.destfs import (
    DestTree,
    open_temp,
    place,
    proc_path,
    rename_over,
    temp_mode,
    temp_name,
)
from fscsync.fs.fileio import READ_SIZE, BlockReader, copy_file, copy_range, digest_fd
from fscsync.wire import protocol

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from collections.abc import Callable

    from fscsync.fs.meta import IdMapper
    from fscsync.options import Options

_ZEROS = bytes(READ_SIZE)
_ZERO_UNIT = bytes(cipher.UNIT)
FAULT_ENV = "FSCSYNC_FAULT_CORRUPT_LITERALS"


class Writer:
    """Builds the files the generator requested (RxState.pending) from the sender's
    frames; `send` puts a frame on the way to the sender (a retry, basis hashes)."""

    def __init__(self, state: RxState, opts: Options, ids: IdMapper, tree: DestTree | None,
                 send: Callable[[int, bytes], None], temp_dir_fd: int | None = None):
        """The writer owns (and closes) `tree` and `temp_dir_fd`, the open -T DIR."""
        self.state = state
        self.opts = opts
        self.ids = ids
        self.tree = tree
        self.send = send
        self._corrupt = os.environ.get(FAULT_ENV) == "1"
        self._temp_dir_fd = temp_dir_fd

    def close(self) -> None:
        if self.tree is not None:
            self.tree.close()
        if self._temp_dir_fd is not None:
            os.close(self._temp_dir_fd)

    def abort(self) -> None:
        """Drop every temp file still being built (the run is ending badly)."""
        for p in list(self.state.pending.values()):
            self._discard(p, keep_partial=self.opts.partial)

    def _pending(self, idx: int) -> Pending:
        p = self.state.pending.get(idx)
        if p is None:
            raise errors.ProtocolError(f"data for entry {idx}, which was not requested")
        return p

    def _open_temp(self, p: Pending) -> None:
        state = self.state
        e = state.entries[p.idx]
        pfd, name = state.locate(self.tree, e)
        if p.basis_at is not None:  # nothing of ours to update in place
            self._create_temp(p, pfd, name)
        elif self.opts.inplace and e.enc is None and p.has_basis:
            if state.backups is not None:
                state.backups.copy(pfd, name, state.dest_path(e))
            p.fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            p.tmpdir, p.tmpname = pfd, b""
        elif self._start_update(p, e, pfd, name):
            p.fd = p.update.fd
            p.tmpdir, p.tmpname = pfd, b""
        else:
            self._create_temp(p, pfd, name)
        p.hasher = xxhash.xxh3_128()
        p.hash_pos = 0
        p.sequential = p.update is None
        if p.has_basis and p.tmpname:
            bfd, bname = (p.basis_at.dirfd, p.basis_at.name) if p.basis_at else (pfd, name)
            p.basis_fd, direct = cipher.open_data(bname, p.basis_layout, dir_fd=bfd)
            p.basis_reader = BlockReader(p.basis_fd, direct)

    def _create_temp(self, p: Pending, pfd: int, name: bytes) -> None:
        """The temp file, created with the permissions it will get where that is safe:
        _install then finds its mode right and makes no fchmod (one syscall fewer per
        file, 6 % of the receiver's time on a tree of small files). Safe only beside
        its target, behind the directory it goes to: a -T DIR or a --partial-dir
        (where --delay-updates and --partial keep it) may be open to anyone, so a
        temp file there stays 0600 until its attributes are set. An encrypted file
        keeps the interface's order (its mode after its owner, before its encdata)."""
        p.tmpdir = self._temp_dir_fd if self._temp_dir_fd is not None else pfd
        p.tmpname = temp_name(name)
        e = self.state.entries[p.idx]
        final = None
        if self._temp_dir_fd is None and self.opts.partial_dir is None and e.enc is None:
            final = meta.wanted_mode(self.opts, e.mode, 0, True, p.replaced_mode)
        p.fd = open_temp(p.tmpdir, p.tmpname, temp_mode(final))

    def _start_update(self, p: Pending, e, pfd: int, name: bytes) -> bool:
        """Update in place under a redo journal? Only by default (neither --inplace nor
        --no-inplace), for a plain file with a basis, and not on a retry."""
        if (self.opts.inplace is not None or e.enc is not None or not p.has_basis or p.retried
                or self.opts.backup or self.opts.partial_dir):
            return False
        p.update = inplace.Update.start(pfd, name, p.differ)
        return p.update is not None

    def data(self, payload: bytes) -> None:
        idx = delta.data_index(payload)
        p = self._pending(idx)
        if p.fd == -1:
            return
        try:
            if p.fd is None:
                self._open_temp(p)
            limit = self._limit(p)
            for op, off, arg in delta.decode_ops(payload):
                if op == delta.OP_COPY:
                    if off + arg > limit:
                        raise errors.ProtocolError(
                            f"copy op to {off + arg} past the end of entry {idx} ({limit})")
                    self._hash_gap(p, off, -1)
                    if not p.tmpname:
                        kept = os.fstat(p.fd).st_size
                        p.data_end = max(p.data_end, min(off + arg, kept))
                        continue
                    if p.basis_fd is None:
                        raise errors.ProtocolError("copy op without a basis file")
                    copy_range(p.basis_fd, p.fd, off, arg)
                    p.data_end = max(p.data_end, min(off + arg, os.fstat(p.basis_fd).st_size))
                else:
                    if off > max(limit, p.data_end):
                        raise errors.ProtocolError(
                            f"literal at offset {off} past the end of entry {idx} ({limit})")
                    arg = self._fault(arg)
                    if p.update is not None:
                        p.update.write(off, arg)
                    else:
                        self._write(p, off, arg)
                    self._hash_gap(p, off, len(arg), arg)
                    p.data_end = max(p.data_end, off + len(arg))
        except OSError as exc:
            self._discard(p, keep_partial=self.opts.partial)
            p.fd = -1
            self.state.os_fail(idx, "write of", exc)

    def _limit(self, p: Pending) -> int:
        """How far a correct sender's ops reach: the listed size (ciphertext padded to
        whole units), or the basis the request described rounded up to its chunk (a
        chunk that differs may be answered after the chunks past it). Literals may go on
        from the data already written (a file that grew since its listing is sent as it
        is now), never jump past it: an op at 2**40 must not make a terabyte temp file
        and hash its zeros."""
        e = self.state.entries[p.idx]
        listed = cipher.padded_size(e.size) if e.enc is not None else e.size
        chunk = p.chunk or 1
        return max(listed, -(-p.basis_size // chunk) * chunk)

    def _fault(self, data: bytes | memoryview) -> bytes | memoryview:
        """The literal as received, or with its first byte flipped under FAULT_ENV (the
        tests' way to make verification fail)."""
        if self._corrupt and data:
            return bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        return data

    def _give_up(self, p: Pending, idx: int, what: str, exc: OSError) -> None:
        """An OS error ends this file: its temp file goes (with --partial it replaces the
        previous copy, as rsync keeps what arrived), the error is reported, and the
        entry is done."""
        self._discard(p, keep_partial=self.opts.partial)
        self.state.os_fail(idx, what, exc)
        self._complete(idx, ok=False, quiet=True)

    @staticmethod
    def _write(p: Pending, off: int, data: bytes) -> None:
        """Write literal data, leaving aligned all-zero units of a fresh temp file as
        holes (sparse files stay sparse; encrypted holes stay holes)."""
        if not p.tmpname or off % cipher.UNIT or len(data) < cipher.UNIT:
            os.pwrite(p.fd, data, off)
            return
        view = memoryview(data)
        run = 0
        unit = cipher.UNIT
        for i in range(0, len(data) - unit + 1, unit):
            if view[i] == 0 and view[i + unit - 1] == 0 and view[i : i + unit] == _ZERO_UNIT:
                if run < i:
                    os.pwrite(p.fd, view[run:i], off + run)
                run = i + unit
        if run < len(data):
            os.pwrite(p.fd, view[run:], off + run)

    @staticmethod
    def _hash_gap(p: Pending, off: int, length: int, data: bytes | None = None) -> None:
        """Hash literal data as it arrives while it arrives in order (whole-file sends);
        anything else is verified by re-reading the result."""
        if not p.sequential:
            return
        if data is None or off < p.hash_pos:
            p.sequential = False
            return
        while p.hash_pos < off:
            step = min(off - p.hash_pos, READ_SIZE)
            p.hasher.update(memoryview(_ZEROS)[:step])
            p.hash_pos += step
        p.hasher.update(data)
        p.hash_pos += length

    def end(self, payload: bytes) -> None:
        idx, status, size, digest = delta.decode_end(payload)
        state = self.state
        p = self._pending(idx)
        e = state.entries[idx]
        if p.fd == -1 or status != delta.END_OK:
            self._discard(p, keep_partial=self.opts.partial)
            if status == delta.END_VANISHED:
                state.reporter.note_code(errors.VANISHED)
            elif status != delta.END_OK:
                state.reporter.note_code(errors.PARTIAL)
            self._complete(idx, ok=False, quiet=True)
            return
        if size >= 1 << 63 or size > max(e.size, p.data_end):
            raise errors.ProtocolError(f"end of entry {idx} announces {size} bytes, more than "
                                       "the file list and the data sent")
        try:
            if p.fd is None:
                self._open_temp(p)
            if p.update is not None:
                got = p.update.digest(size)  # the file itself changes only once verified
                st = None
            else:
                st = os.fstat(p.fd)
                if st.st_size != size:  # fstat is far cheaper than a truncate
                    os.ftruncate(p.fd, size)
                    st = os.fstat(p.fd)
                if p.sequential and p.hash_pos <= size:
                    self._hash_gap(p, size, 0, b"")
                    got = p.hasher.digest()
                else:
                    got = self._digest_result(p, size)
        except OSError as exc:
            self._give_up(p, idx, "write of", exc)
            return
        self._conclude(p, idx, size, digest, got, st)

    def file(self, payload: bytes) -> None:
        """A small file whole in one frame: written, verified and installed at once."""
        idx, size, digest, data = delta.decode_file(payload)
        p = self._pending(idx)
        if p.fd is not None or p.has_basis:
            raise errors.ProtocolError(f"whole-file frame for entry {idx}, which has data "
                                       "already or asked for a delta")
        try:
            where = self.state.locate(self.tree, self.state.entries[idx])
            self._create_temp(p, *where)
            if size:
                data = self._fault(data)
                self._write(p, 0, data)
            st = os.fstat(p.fd)
        except OSError as exc:
            self._give_up(p, idx, "write of", exc)
            return
        self._conclude(p, idx, size, digest, xxhash.xxh3_128_digest(data), st, where)

    def _conclude(self, p: Pending, idx: int, size: int, digest: bytes, got: bytes,
                  st: os.stat_result | None, where: tuple[int, bytes] | None = None) -> None:
        """The file is built: install it if its digest is the sender's, else ask again
        once. `st` is the temp file's stat (None for an in-place update); `where` is its
        (parent fd, name) when the caller located it and opened no directory since."""
        state = self.state
        e = state.entries[idx]
        if got != digest:
            self._discard(p, keep_partial=self.opts.partial)
            if not p.retried:
                state.reporter.warning(f'"{escape(e.path)}" failed verification -- '
                                       "sending it again whole")
                fresh = type(p)(idx, p.basis_layout, False)
                fresh.retried = True
                state.pending[idx] = fresh
                self.send(protocol.REQ, delta.Request(idx, delta.WHOLE, retry=True).encode())
                return
            kept = "retained" if self.opts.partial else "discarded"
            state.fail(idx, f'ERROR: "{escape(e.path)}" failed verification -- update {kept}')
            self._complete(idx, ok=False, quiet=True)
            return
        try:
            if p.update is not None:
                p.update.apply(size)
                st = os.fstat(p.fd)
            self._install(p, st, where)
        except meta.EncdataConflict as exc:
            state.failed(idx, EncdataUnsettable(path=e.path, reason=exc))
            self._complete(idx, ok=False, quiet=True)
            return
        except OSError as exc:
            self._give_up(p, idx, "finishing", exc)
            return
        if e.enc is not None:
            state.stats.encrypted_bytes += size
        state.reporter.progress(e.path, size, size, idx)
        if not self.opts.delay_updates:
            state.succeeded(idx, st)
        self._complete(idx, ok=True)

    def _digest_result(self, p: Pending, size: int) -> bytes:
        fd = os.open(proc_path(p.tmpdir, p.tmpname) if p.tmpname else proc_path(
            p.tmpdir, self._final_name(p)), os.O_RDONLY | os.O_CLOEXEC)
        reader = BlockReader(fd, False)
        try:
            return digest_fd(reader, size)
        finally:
            reader.close()
            os.close(fd)

    def _final_name(self, p: Pending) -> bytes:
        return self.state.locate(self.tree, self.state.entries[p.idx])[1]

    def _install(self, p: Pending, st: os.stat_result,
                 where: tuple[int, bytes] | None = None) -> None:
        """Attributes onto the verified temp file (`st` is its stat), then rename; its fd
        (and so its flock) is kept until the rename is done."""
        state = self.state
        e = state.entries[p.idx]
        self._close_basis(p)
        t = meta.Target(p.tmpdir, p.tmpname, fd=p.fd)
        meta.apply_attrs(self.opts, self.ids, e, t, st, new=bool(p.tmpname),
                         replaced=p.replaced_mode if p.tmpname else None, accurate_time=True)
        if self.opts.fsync:  # data, size and attributes on disk before the name moves
            os.fsync(p.fd)
        if p.update is not None:
            p.update.finish()
            p.update = None
        elif p.tmpname:
            pfd, name = where or state.locate(self.tree, e)
            if self.opts.delay_updates:
                state.partials.delay(p.tmpdir, p.tmpname, pfd, name, state.dest_path(e),
                                     p.idx)
                os.close(p.fd)
                p.fd = None
                return
            if state.backups is not None:
                state.backups.keep(pfd, name, state.dest_path(e))
            try:
                rename_over(p.tmpdir, p.tmpname, pfd, name)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._move_beside(p, pfd, name)
            if p.basis_at is not None and p.basis_at.partial:  # its data is in place now
                state.partials.drop(p.basis_at)
        os.close(p.fd)
        p.fd = None

    def _move_beside(self, p: Pending, pfd: int, name: bytes) -> None:
        """-T DIR on another filesystem, which rename cannot cross: the finished file is
        copied into a temp file beside the target, gets its attributes there and is
        renamed in (destfs.place), as rsync does; the one in DIR goes."""
        e = self.state.entries[p.idx]
        src = os.open(p.tmpname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=p.tmpdir)

        def copy(tmp: bytes) -> None:
            fd = open_temp(pfd, tmp)
            try:
                copy_file(src, fd)
                meta.apply_attrs(self.opts, self.ids, e, meta.Target(pfd, tmp, fd=fd),
                                 os.fstat(fd), new=True)
                if self.opts.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

        try:
            place(pfd, name, copy)
        finally:
            os.close(src)
        os.unlink(p.tmpname, dir_fd=p.tmpdir)

    def _close_basis(self, p: Pending) -> None:
        if p.basis_reader is not None:
            p.basis_reader.close()
            p.basis_reader = None
        if p.basis_fd is not None:
            os.close(p.basis_fd)
            p.basis_fd = None
        if p.basis_at is not None and not p.basis_at.partial:  # a DIR's: our dup
            os.close(p.basis_at.dirfd)
            p.basis_at = None

    def _discard(self, p: Pending, keep_partial: bool = False) -> None:
        self._close_basis(p)
        if p.update is not None:
            try:
                untouched = p.update.discard()
            except OSError:
                untouched = True  # the journal was never committed: it is only litter
            if not untouched:
                self.state.reporter.error(
                    f'"{escape(self.state.entries[p.idx].path)}" was left half updated in '
                    "place; the next run into its directory completes it from "
                    f'"{escape(p.update.jname)}"')
            p.update = None
        keep = keep_partial and p.fd is not None and p.fd >= 0 and bool(p.tmpname)
        if p.fd is not None and p.fd >= 0:
            if keep:
                try:  # as rsync: dated 1970, it looks unfinished, never like a new copy
                    os.utime(p.fd, ns=(0, 0))
                    if self.opts.perms:  # and with the file's permissions
                        os.fchmod(p.fd, self.state.entries[p.idx].mode & 0o7777)
                except OSError:
                    pass
            os.close(p.fd)
            p.fd = None
        if p.tmpname:  # with or without its fd: a signal may land just after the open
            try:
                if keep:
                    pfd, name = self.state.locate(self.tree, self.state.entries[p.idx])
                    if self.state.partials is not None:  # --partial-dir: kept aside
                        self.state.partials.keep(p.tmpdir, p.tmpname, pfd, name)
                    else:
                        os.rename(p.tmpname, name, src_dir_fd=p.tmpdir, dst_dir_fd=pfd)
                else:
                    os.unlink(p.tmpname, dir_fd=p.tmpdir)
            except OSError:
                pass

    def _complete(self, idx: int, ok: bool, quiet: bool = False) -> None:
        state = self.state
        p = state.pending.pop(idx, None)
        if p is not None:
            self._close_basis(p)
        state.completed += 1
        if ok:
            state.status[idx] = Status.OK
        else:
            state.status[idx] = Status.FAILED
            if not quiet:
                state.reporter.error(f'"{escape(state.entries[idx].path)}" was not transferred')
        state.done_with(idx)

    def sigreq(self, payload: bytes) -> None:
        """Block hashes of the basis chunks the sender found different."""
        idx, chunks = delta.decode_sigreq(payload)
        p = self._pending(idx)
        state = self.state
        e = state.entries[idx]
        pfd, name = (p.basis_at.dirfd, p.basis_at.name) if p.basis_at else state.locate(
            self.tree, e)
        block = self.opts.block_size
        try:
            fd, direct = cipher.open_data(name, p.basis_layout, dir_fd=pfd)
        except OSError:
            fd, direct = None, False
        reader = BlockReader(fd, direct) if fd is not None else None
        p.differ = len(chunks) * p.chunk
        try:
            chunk = p.chunk
            for ci in chunks:
                data = reader.read_at(ci * chunk, chunk) if reader is not None else b""
                self.send(protocol.SIGBLOCKS,
                          delta.encode_sigblocks(idx, ci, delta.block_hashes(data, block)))
        finally:
            if reader is not None:
                reader.close()
                os.close(fd)

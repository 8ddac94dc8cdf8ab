"""The destination's copy of a regular file as the generator sees it: its encdata,
how to read it, whether it is already the source's (rsync's quick check, made
encryption-aware), and the delta request built on it as the basis."""

from __future__ import annotations

import os

from fscsync.engine import delta
from fscsync.fs import cipher, meta
from fscsync.fs.destfs import proc_path
from fscsync.fs.fileio import BlockReader, digest_fd

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.flist import Entry
    from fscsync.options import Options


class DestCopies:
    """Reads destination files for one run; remembers per directory whether it is
    encrypted, and per filesystem how its encrypted files read."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.finder = cipher.EncdataFinder(opts.encdata_xattr)
        self._enc_dir_key: tuple[int, bytes] | None = None
        self._enc_dir = False

    def encdata(self, pfd: int, name: bytes, e: Entry) -> bytes | None:
        """The destination entry's encdata, under the name this entry's would be stored
        (for a plain source entry: under either name)."""
        path = proc_path(pfd, name) if name else pfd
        names = (meta.encdata_target(self.opts, e),) if e.enc is not None else None
        return self.finder.ask(path, names)[0]

    def may_hold_encdata(self, e: Entry, pfd: int, st: os.stat_result) -> bool:
        """Can the regular destination file in the way of entry `e` be encrypted?

        Asking every file costs a listxattr per entry, the largest single cost of a
        no-change run. A plain source entry skips it when the destination file's size
        is no whole number of encryption units (ciphertext always is) or its
        directory carries no encdata (fscrypt files inherit their directory's
        policy, and the backup layout keeps that shape)."""
        if e.enc is not None:
            return True
        if st.st_size % cipher.UNIT:
            return False
        key = (pfd, e.path.rpartition(b"/")[0])
        if self._enc_dir_key != key:
            self._enc_dir_key = key
            self._enc_dir = self.encdata(pfd, b"", e) is not None
        return self._enc_dir

    def layout(self, pfd: int, name: bytes, st: os.stat_result, e: Entry,
               dest_enc: bytes | None) -> int:
        """How to read the destination file as a basis or for -c: as this entry's kind
        of data (a plain basis is never used for an encrypted entry, nor the reverse)."""
        if dest_enc is None or e.enc is None:
            return cipher.PLAIN
        return self.finder.learn(proc_path(pfd, name), st.st_dev,
                                 meta.encdata_target(self.opts, e))

    def same(self, e: Entry, pfd: int, name: bytes, st: os.stat_result,
             dest_enc: bytes | None) -> bool:
        """rsync's quick check, made encryption-aware: cleartext size from encdata, and
        a different context (new nonce) always means a new file."""
        opts = self.opts
        if e.enc is not None:
            if dest_enc is None:
                return False
            try:
                mine = cipher.parse_encdata(e.enc)
                theirs = cipher.parse_encdata(dest_enc)
            except cipher.EncdataError:
                return False
            if mine.enc_ctx != theirs.enc_ctx or mine.size != theirs.size:
                return False
        elif dest_enc is not None or st.st_size != e.size:
            return False
        if opts.checksum:
            return _digest(pfd, name, self.layout(pfd, name, st, e, dest_enc)) == e.checksum
        if opts.size_only:
            return True
        return not opts.ignore_times and opts.same_time(st.st_mtime_ns, e.mtime_ns)

    def request(self, idx: int, e: Entry, pfd: int, name: bytes, st: os.stat_result | None,
                dest_enc: bytes | None) -> tuple[delta.Request, int]:
        """The request for entry `e` and the layout its basis is read in: a delta
        against the destination's copy when it is the same kind of data under the same
        context, else the whole file."""
        opts = self.opts
        use_basis = st is not None and not opts.whole_file
        if use_basis and (e.enc is None) != (dest_enc is None):
            use_basis = False
        if use_basis and e.enc is not None:
            try:
                use_basis = (cipher.parse_encdata(e.enc).enc_ctx
                             == cipher.parse_encdata(dest_enc).enc_ctx)
            except cipher.EncdataError:
                use_basis = False
        if not use_basis:
            return delta.Request(idx, delta.WHOLE), cipher.PLAIN
        layout = self.layout(pfd, name, st, e, dest_enc)
        return self.delta_request(idx, pfd, name, layout), layout

    def delta_request(self, idx: int, dirfd: int, name: bytes, layout: int) -> delta.Request:
        """A delta request against the file at (dirfd, name) read as `layout` (the
        destination's copy, a DIR's, a --partial-dir file); the whole file with -W or
        when it cannot be read."""
        if self.opts.whole_file:
            return delta.Request(idx, delta.WHOLE)
        try:
            fd, direct = cipher.open_data(name, layout, dir_fd=dirfd)
        except OSError:
            return delta.Request(idx, delta.WHOLE)
        reader = BlockReader(fd, direct)
        try:
            return delta.make_request(idx, reader, os.fstat(fd).st_size, self.opts.block_size)
        except OSError:
            return delta.Request(idx, delta.WHOLE)
        finally:
            reader.close()
            os.close(fd)


def cleartext_size(enc: bytes | None, plain_size: int) -> int:
    """Size as the user sees it: from encdata for encrypted entries (-1 if malformed)."""
    if enc is None:
        return plain_size
    try:
        return cipher.parse_encdata(enc).size
    except cipher.EncdataError:
        return -1


def _digest(pfd: int, name: bytes, layout: int) -> bytes | None:
    try:
        fd, direct = cipher.open_data(name, layout, dir_fd=pfd)
    except OSError:
        return None
    reader = BlockReader(fd, direct)
    try:
        return digest_fd(reader)
    finally:
        reader.close()
        os.close(fd)

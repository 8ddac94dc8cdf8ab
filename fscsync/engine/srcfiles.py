"""One source file as the sender reads it: opened (through --restrict-to's tree when
there is one), its xattrs and encdata and the layout of its data, an encrypted
file's ciphertext size.

The walk (scan.py) decides which entries there are; this module reads what one
entry holds, and the sender opens files for their data through it too.
"""

from __future__ import annotations

import os
import stat

from fscsync.engine.flist import Entry
from fscsync.engine.report import Reporter
from fscsync.errors import MalformedEncdata, NoKeylessRead
from fscsync.fs import cipher, meta
from fscsync.fs.probe import WHY_NO_KEYLESS, keyless_readable
from fscsync.options import Options

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.filters import Filters
    from fscsync.fs.destfs import Confined


class SourceFiles:
    """Opens and reads source files for the walk and the sender."""

    def __init__(self, opts: Options, reporter: Reporter, confined: Confined | None,
                 filters: Filters | None, follows: bool):
        self.opts = opts
        self.reporter = reporter
        self.confined = confined
        self.filters = filters  # its 'x' rules drop xattrs by name
        self.follows = follows  # symlinks may be sent as their referents
        self.want_xattrs = opts.xattrs or opts.acls
        self.open_flags = os.O_NOATIME if opts.open_noatime else 0
        self.finder = cipher.EncdataFinder(opts.encdata_xattr)
        self._keyless: bool | None = None  # of encdata-interface files
        self._stored_seen = False

    def read_encdata(self, e: Entry, path: bytes, st: os.stat_result, in_encrypted_dir: bool,
                 follow: bool = False) -> int:
        """Fill in e's xattrs (if wanted) and encdata; returns its data's layout (follow:
        `path` is a /proc/self/fd link to the pinned entry).

        A listing shows stored encdata (a backup); the encdata interface never lists
        it, so an entry that may be encrypted is also asked by name."""
        finder = self.finder
        follow = follow or (self.follows and not stat.S_ISLNK(st.st_mode))  # its referent
        if self.want_xattrs:
            e.xattrs, e.enc, e.enc_alt = meta.split_xattrs(meta.read_xattrs(path, follow),
                                                           self.opts)
            if self.filters is not None and self.filters.xattr_rules:
                e.xattrs = [(n, v) for n, v in e.xattrs if not self.filters.xattr_excluded(n)]
            if e.enc is not None:
                name = self.opts.encdata_xattr if e.enc_alt else cipher.ENCDATA_XATTR
                return finder.learn(path, st.st_dev, name, listed=True, follow=follow)
            if not cipher.may_be_encrypted(st.st_mode, st.st_size, in_encrypted_dir):
                return cipher.PLAIN
            e.enc, found = finder.ask(path, (cipher.ENCDATA_XATTR,), follow)
        elif cipher.may_be_encrypted(st.st_mode, st.st_size, in_encrypted_dir):
            e.enc, found = finder.ask(path, follow=follow)
        else:
            return cipher.PLAIN
        if e.enc is None:
            return cipher.PLAIN
        e.enc_alt = found != cipher.ENCDATA_XATTR
        return finder.learn(path, st.st_dev, found, follow=follow)

    def cipher_size(self, e: Entry, layout: int) -> int:
        """Ciphertext bytes of an encrypted file: its cleartext size padded to the unit;
        raises the error that fails the file when its encdata is bad or unreadable."""
        try:
            enc = cipher.parse_encdata(e.enc)
        except cipher.EncdataError as exc:
            raise MalformedEncdata(path=e.src, why=exc) from None
        if layout != cipher.VIRTUAL:
            if not self._stored_seen:
                self._stored_seen = True
                self.reporter.info("source keeps encdata as an ordinary xattr (a plain "
                                   "backup): key-less ciphertext reads: yes", 1)
            return cipher.padded_size(enc.size)
        if self._keyless is None:
            self._keyless, why = keyless_readable(e.src)
            self.reporter.info("source gives key-less ciphertext reads: "
                               + ("yes" if self._keyless else f"no ({why})"), 1)
        if not self._keyless:
            raise NoKeylessRead(path=e.src, why=WHY_NO_KEYLESS)
        return cipher.padded_size(enc.size)

    def open(self, path: bytes, flags: int) -> int:
        """os.open of a source path, confined to --restrict-to's tree when there is one."""
        if self.confined is None:
            return os.open(path, flags)
        return self.confined.open(path, flags)

    def open_data(self, path: bytes, layout: int) -> tuple[int, bool]:
        """cipher.open_data of a source file, confined like `open`."""
        if self.confined is None:
            if self.follows:  # the file a followed symlink points to
                path = os.path.realpath(path)
            return cipher.open_data(path, layout, extra=self.open_flags)
        pfd, name = self.confined.at(path)
        try:
            return cipher.open_data(name, layout, dir_fd=pfd, extra=self.open_flags)
        finally:
            os.close(pfd)

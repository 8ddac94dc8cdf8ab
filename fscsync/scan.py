"""Walking the source: turn SRC arguments into file-list entries, in rsync's order.

Within a directory, non-directories come first (sorted bytewise), then each
subdirectory followed by its contents. Errors are reported per entry and mark
the walk as incomplete, which later disables deletions on the receiver.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
from collections.abc import Iterator

from fscsync import cipher, errors, meta
from fscsync.errors import escape
from fscsync.fileio import BlockReader, digest_fd
from fscsync.filters import Filters
from fscsync.flist import Entry
from fscsync.options import Options
from fscsync.probe import WHY_NO_KEYLESS, keyless_readable
from fscsync.report import Reporter

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.destfs import Confined


def split_source(src: bytes) -> tuple[bytes, bytes | None]:
    """(base directory, top name) for one SRC argument; name None means 'the contents'."""
    if src.endswith(b"/") or src in (b".", b"..") or src.endswith(b"/.") or src.endswith(b"/.."):
        base = src.rstrip(b"/") or b"/"
        return base, None
    head, _, name = src.rpartition(b"/")
    if not head and src.startswith(b"/"):
        head = b"/"
    return head or b".", name


_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFREG = stat.S_IFREG
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
RUN_MAX = 1024
"""Entries handed out at once: a directory of a million files is not held as Entry
objects or lstat results all at the same time."""


class PlainRun:
    """Regular files with no xattrs at all, next to each other in one directory, as
    lstat found them (the walk's common case).

    The sender packs their lstat results straight into a file-list batch
    (BatchBuilder.add_stats); an Entry for each, which iterating builds, cost a
    no-change sender a tenth of its time."""

    __slots__ = ("base", "prefix", "names", "stats")

    def __init__(self, base: bytes, prefix: bytes, names: list[bytes],
                 stats: list[os.stat_result]):
        self.base = base
        self.prefix = prefix
        self.names = names
        self.stats = stats

    def __len__(self) -> int:
        return len(self.names)

    def paths(self) -> list[bytes]:
        prefix = self.prefix
        return [prefix + name for name in self.names]

    def __iter__(self) -> Iterator[Entry]:
        for name, st in zip(self.names, self.stats, strict=True):
            yield Entry(self.prefix + name, st.st_mode, st.st_size, st.st_mtime_ns,
                        st.st_uid, st.st_gid, src=self.base + name)


class Scanner:
    def __init__(self, opts: Options, reporter: Reporter, confined: Confined | None = None):
        self.opts = opts
        self.confined = confined  # --restrict-to: directories and files opened through it
        self.filters = Filters(opts.filter_rules)
        self.reporter = reporter
        self.io_error = False
        self.count = 0
        self._links: dict[tuple[int, int], int] = {}
        self._seen: set[bytes] = set()
        self._want_xattrs = opts.xattrs or opts.acls
        self._encdata_names = cipher.encdata_names(opts.encdata_xattr)
        self._keyless: bool | None = None
        self._root_starts: list[int] = []
        self._roots: list[tuple[bytes, bytes]] = []
        # A regular file without xattrs is the common entry: built in few steps in
        # _walk (what _entry would build), unless the run wants xattrs, links or sums.
        self._quick = not (self._want_xattrs or opts.hard_links or opts.checksum)
        self._home = -1

    def scan(self, sources: list[bytes]) -> Iterator[list[Entry] | PlainRun]:
        """The entries of the sources in file-list order, a run at a time (a list of
        entries, or a PlainRun), up to RUN_MAX entries from one directory each: the
        caller's per-entry work stays in its own loop."""
        self._home = os.open(".", os.O_PATH | os.O_CLOEXEC)  # _list returns here
        try:
            yield from self._scan_sources(sources)
        finally:
            os.close(self._home)

    def _scan_sources(self, sources: list[bytes]) -> Iterator[list[Entry] | PlainRun]:
        for src in sources:
            base, name = split_source(src)
            if name is None:
                self._root_starts.append(self.count)
                self._roots.append((base.rstrip(b"/") + b"/", base))
                yield from self._scan_contents(src, base)
            else:
                full = src.rstrip(b"/")
                self._root_starts.append(self.count)
                self._roots.append((full[: len(full) - len(name)], full))
                yield from self._scan_top(src, base, name)

    def source_path(self, idx: int, rel: bytes) -> bytes:
        """The source path of entry `idx` (the `src` it had when scanned), from its
        transfer-relative path: entries need not be kept to be opened later."""
        prefix, root = self._roots[bisect.bisect_right(self._root_starts, idx) - 1]
        return root if rel == b"." else prefix + rel

    def _fail(self, path: bytes, what: str, exc: OSError, code: int = errors.PARTIAL) -> None:
        self.io_error = True
        self.reporter.error(f'{what} "{escape(path)}" failed: {exc.strerror} ({exc.errno})', code)

    def _scan_contents(self, src: bytes, base: bytes) -> Iterator[list[Entry] | PlainRun]:
        try:
            st = os.stat(base) if self.confined is None else self.confined.stat(base)
        except OSError as exc:
            self._fail(src, "change_dir", exc)
            return
        if not stat.S_ISDIR(st.st_mode):
            self._fail(src, "change_dir", OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
            return
        if not self.opts.recursive and not self.opts.list_only:
            self.reporter.info("skipping directory .", 0)
            return
        root = self._entry(b".", base, st) if self._first(b".") else None
        if root is not None:
            yield [root]
        yield from self._walk(base, b"")

    def _scan_top(self, src: bytes, base: bytes, name: bytes) -> Iterator[list[Entry] | PlainRun]:
        full = src.rstrip(b"/")
        try:
            st = os.lstat(full) if self.confined is None else self.confined.stat(full)
        except OSError as exc:
            self._fail(src, "link_stat", exc)
            return
        if stat.S_ISDIR(st.st_mode) and not self.opts.recursive and not self.opts.list_only:
            self.reporter.info(f"skipping directory {escape(name)}", 0)
            return
        if self.filters and self.filters.excluded(name, stat.S_ISDIR(st.st_mode)):
            return
        if not self._first(name):
            return
        entry = self._entry(name, full, st)
        if entry is None:
            return
        yield [entry]
        if entry.is_dir and self.opts.recursive:
            yield from self._walk(full, name + b"/")

    def _first(self, path: bytes) -> bool:
        if path in self._seen:
            return False
        self._seen.add(path)
        return True

    def _walk(self, dirpath: bytes, prefix: bytes) -> Iterator[list[Entry] | PlainRun]:
        base = dirpath if dirpath.endswith(b"/") else dirpath + b"/"
        try:
            names, stats, plain = self._list(base)
        except OSError as exc:
            self._fail(dirpath, "opendir", exc)
            return
        subdirs = []
        files: list[Entry] = []
        bare_names: list[bytes] = []
        bare_stats: list[os.stat_result] = []
        filters = self.filters if self.filters.rules else None
        entry = self._entry
        for name, st, bare in zip(names, stats, plain, strict=True):
            if type(st) is not os.stat_result:
                if st.errno == errno.ENOENT:
                    self.reporter.error(f'file has vanished: "{escape(base + name)}"',
                                        errors.VANISHED)
                else:
                    self._fail(base + name, "readlink_stat", st)
                continue
            is_dir = st.st_mode & _S_IFMT == _S_IFDIR
            if filters is not None and filters.excluded(prefix + name, is_dir):
                continue
            if bare:
                if files:
                    yield files
                    files = []
                bare_names.append(name)
                bare_stats.append(st)
                if len(bare_names) >= RUN_MAX:
                    yield self._plain_run(base, prefix, bare_names, bare_stats)
                    bare_names, bare_stats = [], []
                continue
            rel = prefix + name
            path = base + name
            if is_dir:
                subdirs.append((rel, path, st))
                continue
            if bare_names:
                yield self._plain_run(base, prefix, bare_names, bare_stats)
                bare_names, bare_stats = [], []
            e = entry(rel, path, st)
            if e is not None:
                files.append(e)
                if len(files) >= RUN_MAX:
                    yield files
                    files = []
        if files:
            yield files
        if bare_names:
            yield self._plain_run(base, prefix, bare_names, bare_stats)
        for rel, path, st in subdirs:
            e = entry(rel, path, st)
            if e is None:
                continue
            yield [e]
            if self.opts.recursive:
                yield from self._walk(path, rel + b"/")

    def _plain_run(self, base: bytes, prefix: bytes, names: list[bytes],
                   stats: list[os.stat_result]) -> PlainRun:
        self.count += len(names)
        return PlainRun(base, prefix, names, stats)

    def _list(self, base: bytes) -> tuple[list[bytes], list, list[bool]]:
        """The sorted names in directory `base` (its path, ending in "/"), the lstat of
        each (or the OSError it gave), and whether each is a regular file with no xattrs
        at all (asked only on the quick path; such a file cannot be encrypted).

        A process with no other thread makes the calls from inside the directory, with
        bare names, as rsync walks: a lookup of one component instead of the whole
        path, a fifth of a no-change sender's system time. The working directory is
        back before this returns, so nothing else sees it moved. With other threads
        running (a scan ahead of the connection, a progress display) the calls take
        whole paths: another thread could resolve a relative path meanwhile, an import
        through a relative sys.path entry among them."""
        alone = threading.active_count() == 1 or self.confined is not None
        if alone:
            fd = self.open(base, _DIR_FLAGS)
            try:
                os.fchdir(fd)
            finally:
                os.close(fd)
        where, lead = (b".", b"") if alone else (base, base)
        try:
            names = sorted(os.listdir(where))
            stats: list = []
            plain = [False] * len(names)
            lstat, listxattr, quick = os.lstat, os.listxattr, self._quick
            for i, name in enumerate(names):
                try:
                    st = lstat(lead + name)
                except OSError as exc:
                    stats.append(exc)
                    continue
                stats.append(st)
                if quick and st.st_mode & _S_IFMT == _S_IFREG:
                    try:
                        plain[i] = not listxattr(lead + name, follow_symlinks=False)
                    except OSError:
                        pass  # _entry looks again and reports it
        finally:
            if alone:
                os.fchdir(self._home)
        return names, stats, plain

    def _confined_entry(self, rel: bytes, path: bytes, st: os.stat_result) -> Entry | None:
        """_entry under --restrict-to: the entry is pinned from the allowed tree's fd (no
        symlink followed on the way) and must still be what lstat saw; its xattrs and
        link target are read through that fd."""
        try:
            pin = self.confined.open(path, os.O_PATH | os.O_NOFOLLOW)
        except OSError as exc:
            self._fail(path, "open", exc)
            return None
        try:
            now = os.fstat(pin)
            if (now.st_dev, now.st_ino, now.st_mode & _S_IFMT) != (
                    st.st_dev, st.st_ino, st.st_mode & _S_IFMT):
                self._fail(path, "open", OSError(errno.ESTALE, "replaced during the scan"))
                return None
            return self._entry(rel, path, st, pin)
        finally:
            os.close(pin)

    def _entry(self, rel: bytes, path: bytes, st: os.stat_result,
               at: int | None = None) -> Entry | None:
        """Build one entry, or None when this run skips that kind of file; `at` is an
        O_PATH fd of it to read through (else it is read by path)."""
        if self.confined is not None and at is None:
            return self._confined_entry(rel, path, st)
        opts = self.opts
        mode = st.st_mode
        fmt = mode & _S_IFMT
        e = Entry(rel, mode, 0, st.st_mtime_ns, st.st_uid, st.st_gid, src=path)
        look, follow = (path, False) if at is None else (b"/proc/self/fd/%d" % at, True)
        try:
            if self._want_xattrs:
                e.xattrs, e.enc, e.enc_alt = meta.split_xattrs(
                    meta.read_xattrs(look, follow), opts)
            else:
                e.enc, found = cipher.find_encdata(look, self._encdata_names, follow=follow)
                e.enc_alt = found is not None and found != cipher.ENCDATA_XATTR
        except OSError as exc:
            self._fail(path, "read xattrs of", exc)
            return None
        if fmt == _S_IFREG:
            e.size = st.st_size
            if e.enc is not None:
                e.size = self._cipher_size(e, st)
                if e.size < 0:
                    return None
        elif fmt == stat.S_IFLNK:
            if not opts.links and not opts.list_only:
                self.reporter.info(f'skipping non-regular file "{escape(rel)}"', 0)
                return None
            try:
                e.target = os.readlink(path) if at is None else os.readlink(b"", dir_fd=at)
            except OSError as exc:
                self._fail(path, "readlink", exc)
                return None
            e.size = len(e.target)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            if not opts.devices:
                self.reporter.info(f'skipping non-regular file "{escape(rel)}"', 0)
                return None
            e.rdev = st.st_rdev
        elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            if not opts.specials:
                self.reporter.info(f'skipping non-regular file "{escape(rel)}"', 0)
                return None
        elif fmt == stat.S_IFDIR:
            e.size = st.st_size
        else:
            return None
        if opts.hard_links and fmt != stat.S_IFDIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            leader = self._links.get(key)
            if leader is None:
                self._links[key] = self.count
            else:
                e.link = leader
        if opts.checksum and fmt == stat.S_IFREG and e.link < 0:
            e.checksum = self._checksum(path, e)
            if e.checksum is None:
                return None
        self.count += 1
        return e

    def _cipher_size(self, e: Entry, st: os.stat_result) -> int:
        """Ciphertext bytes of an encrypted file: its cleartext size padded to the unit."""
        try:
            enc = cipher.parse_encdata(e.enc)
        except cipher.EncdataError as exc:
            self.io_error = True
            self.reporter.error(f'malformed encdata on "{escape(e.src)}": {exc}')
            return -1
        if self._keyless is None:
            self._keyless, why = keyless_readable(e.src)
            self.reporter.info("source gives key-less ciphertext reads: "
                               + ("yes" if self._keyless else f"no ({why})"), 1)
        if not self._keyless:
            self.io_error = True
            self.reporter.error(f'cannot read "{escape(e.src)}" without its key: {WHY_NO_KEYLESS}')
            return -1
        return cipher.padded_size(enc.size)

    def open(self, path: bytes, flags: int) -> int:
        """os.open of a source path, confined to --restrict-to's tree when there is one."""
        if self.confined is None:
            return os.open(path, flags)
        return self.confined.open(path, flags)

    def open_data(self, path: bytes, encrypted: bool) -> tuple[int, bool]:
        """cipher.open_data of a source file, confined like `open`."""
        if self.confined is None:
            return cipher.open_data(path, encrypted)
        pfd, name = self.confined.at(path)
        try:
            return cipher.open_data(name, encrypted, dir_fd=pfd)
        finally:
            os.close(pfd)

    def _checksum(self, path: bytes, e: Entry) -> bytes | None:
        try:
            fd, direct = self.open_data(path, e.enc is not None)
        except OSError as exc:
            self._fail(path, "open", exc)
            return None
        reader = BlockReader(fd, direct)
        try:
            return digest_fd(reader)
        except OSError as exc:
            self._fail(path, "read", exc)
            return None
        finally:
            reader.close()
            os.close(fd)

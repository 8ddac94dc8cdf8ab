"""Walking the source: turn SRC arguments into file-list entries, in rsync's order.

Within a directory, non-directories come first (sorted bytewise), then each
subdirectory followed by its contents. Errors are reported per entry and mark
the walk as incomplete, which later disables deletions on the receiver. For
--delete-during and --delete-delay each directory's names come just before its
entry (DirNames: what the receiver compares its copy with when it gets there).
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
from collections.abc import Iterator

from fscsync import errors
from fscsync.engine import filters
from fscsync.engine.flist import IMPLIED, NO_CONTENT, Entry, unsafe_link
from fscsync.engine.listmode import announced_dir, names_announced
from fscsync.engine.report import Reporter
from fscsync.engine.sources import (
    files_from_names,
    in_file_list_order,
    relative_parts,
    split_source,
)
from fscsync.engine.srcfiles import SourceFiles
from fscsync.errors import (
    MalformedEncdata,
    NoKeylessRead,
    NoReferent,
    OSFailed,
    Vanished,
    escape,
)
from fscsync.fs import cipher
from fscsync.fs.fileio import BlockReader, digest_fd
from fscsync.options import Options
from fscsync.wire.dirnames import DirNames

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.fs.destfs import Confined


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
        self.filters = filters.for_side(opts, "sender")
        self._top: filters.DirState | None = None  # the rules before the walk enters a directory
        self._dev = -1  # -x: the device of the current source's top directory
        self.reporter = reporter
        self.io_error = False
        self.count = 0
        self._links: dict[tuple[int, int], list[int]] = {}
        """-H: (device, inode) -> [leader's index, names not yet listed], for inodes with
        more than one name, until the walk has listed them all: what is kept is the
        groups with names still to come (or outside the transfer), not every file."""
        self._seen: set[bytes] = set()
        self._root_starts: list[int] = []
        self._roots: list[tuple[bytes, bytes]] = []
        # A regular file without xattrs is the common entry: built in few steps in
        # _walk (what _entry would build), unless the run wants xattrs, links or sums.
        self._quick = not (opts.xattrs or opts.acls or opts.hard_links or opts.checksum)
        self._home = -1
        self._source_of: list[int] | None = None  # by entry, when sources were merged
        self._held: list[Entry] = []
        """-m: directories listed once something other than a directory is found below
        them (rsync prunes on its receiver, which is where a skipped symlink or special
        file still counts as something)."""
        self._nondir = False  # -m: the directory being walked had a non-directory
        self._kinds = {_S_IFREG: True, _S_IFDIR: True, stat.S_IFLNK: opts.links or opts.list_only,
                       stat.S_IFCHR: opts.devices, stat.S_IFBLK: opts.devices,
                       stat.S_IFIFO: opts.specials, stat.S_IFSOCK: opts.specials}
        """The kinds of entry a walk knows, and whether this run lists each."""
        self._follows = confined is None and (
            opts.copy_links or opts.copy_unsafe_links or opts.copy_dirlinks)
        """-L, -k, --copy-unsafe-links: some symlinks are sent as what they point to (not
        under --restrict-to, whose tree a followed link would leave)."""
        self.files = SourceFiles(opts, reporter, confined, self.filters, self._follows)
        self.partition = None
        """One stream of --parallel (fscsync.run.partition.Partition): which entries of
        each directory this walk lists; None lists them all."""
        self._announce = names_announced(opts)

    def scan(self, sources: list[bytes]) -> Iterator[list[Entry] | PlainRun | DirNames]:
        """The entries of the sources in file-list order, a run at a time (a list of
        entries, or a PlainRun), up to RUN_MAX entries from one directory each: the
        caller's per-entry work stays in its own loop. With names announced, each
        directory whose contents follow is preceded by its DirNames."""
        self._home = os.open(".", os.O_PATH | os.O_CLOEXEC)  # _list returns here
        try:
            if len(sources) > 1 or self.opts.relative or self.opts.files_from is not None \
                    or self.opts.files_from_remote is not None:
                yield from self._in_order(self._scan_sources(sources))
            else:
                yield from self._scan_sources(sources)
        finally:
            os.close(self._home)

    def _in_order(self, runs: Iterator) -> Iterator[list[Entry] | DirNames]:
        """Several sources: their entries as one list in file-list order (held whole,
        as rsync holds it; a single source streams)."""
        kept = in_file_list_order(r for r in runs if type(r) is not DirNames)
        starts = self._root_starts
        self._source_of = [bisect.bisect_right(starts, i) - 1 for i, _ in kept]
        entries = [e for _, e in kept]
        if self.opts.hard_links:
            self._relink(entries)
        self.count = len(entries)
        if self._announce:
            yield from self._named(entries)
            return
        for i in range(0, len(entries), RUN_MAX):
            yield entries[i : i + RUN_MAX]

    def _named(self, entries: list[Entry]) -> Iterator[list[Entry] | DirNames]:
        """The merged list with each directory's names, from the list itself (several
        sources' entries), just before it."""
        names: dict[bytes, list[bytes]] = {}
        for head, _, name in (e.path.rpartition(b"/") for e in entries if e.path != b"."):
            names.setdefault(head, []).append(name)
        run: list[Entry] = []
        for e in entries:
            if e.is_dir and announced_dir(self.opts, e.path, e.no_content):
                if run:
                    yield run
                    run = []
                yield DirNames(e.path, sorted(names.pop(b"" if e.path == b"." else e.path, ())))
            run.append(e)
            if len(run) >= RUN_MAX:
                yield run
                run = []
        if run:
            yield run

    def _relink(self, entries: list[Entry]) -> None:
        """Hard links named their leader by its place in the walk: in the merged list the
        first of each group leads (and carries the checksum -c wants of a leader)."""
        leaders: dict[int, int] = {}
        for i, e in enumerate(entries):
            if e.link < 0:
                continue
            first = leaders.setdefault(e.link, i)
            e.link = first  # the leader's own index marks it
            e.link_last = False  # the whole list is held: no leader need be forgotten
            if first == i and self.opts.checksum and e.is_reg and e.checksum is None:
                layout = self.files.finder.layout(e.src, e.enc is not None, e.enc_alt)
                e.checksum = self._checksum(e.src, layout)

    def _scan_sources(self, sources: list[bytes]) -> Iterator[list[Entry] | PlainRun]:
        names = self.opts.files_from
        if self.opts.files_from_remote is not None and names is None:
            names = self._remote_list(self.opts.files_from_remote)
        if names is not None:
            top = os.path.normpath(sources[0])
            sources = [top + b"/./" + name for name in names]
        for src in sources:
            if self.opts.relative:
                yield from self._scan_relative(src)
                continue
            base, name = split_source(src)
            if self.filters is not None:
                self._top = self.filters.top(os.path.abspath(base))
            if name is None:
                self._root_starts.append(self.count)
                self._roots.append((base.rstrip(b"/") + b"/", base))
                yield from self._scan_contents(src, base)
            else:
                full = src.rstrip(b"/")
                self._root_starts.append(self.count)
                self._roots.append((full[: len(full) - len(name)], full))
                yield from self._scan_top(src, base, name)

    def _remote_list(self, path: bytes) -> list[bytes]:
        """--files-from=HOST:FILE, read here on the sending side."""
        try:
            fd = self.files.open(path, os.O_RDONLY | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise errors.FilesFromUnreadable(path=path, reason=exc) from None
        return files_from_names(data, self.opts.from0)

    def _scan_relative(self, src: bytes) -> Iterator[list[Entry] | PlainRun]:
        """-R: the path after a "/./" (or the whole path, less a leading "/") is the
        name at the destination; its parent directories come first, as implied
        directories without contents (unless --no-implied-dirs)."""
        base, rel = relative_parts(src)
        if self.filters is not None:
            self._top = self.filters.top(os.path.abspath(base))
        if not rel:
            self._root_starts.append(self.count)
            self._roots.append((base.rstrip(b"/") + b"/", base))
            yield from self._scan_contents(base + b"/", base)
            return
        lead = base.rstrip(b"/") + b"/"
        self._root_starts.append(self.count)
        self._roots.append((lead, lead + rel))
        parts = rel.split(b"/")
        for n in range(1, len(parts)):
            yield from self._implied(lead, b"/".join(parts[:n]))
        listed = self.opts.files_from is not None or self.opts.files_from_remote is not None
        if listed and not self.opts.recursive:
            yield from self._scan_listed(lead, rel)
        else:
            yield from self._scan_top(lead + rel, base, rel)

    def _implied(self, lead: bytes, rel: bytes) -> Iterator[list[Entry]]:
        """One implied directory of a -R path (followed if it is a symlink, as rsync);
        under --no-implied-dirs it only names the path (its attributes stay here)."""
        try:
            st = os.stat(lead + rel) if self.confined is None else self.confined.stat(lead + rel)
        except OSError as exc:
            self._fail(lead + rel, "link_stat", exc)
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        if self.filters is not None and self.filters.excluded(self._top, rel, True):
            return
        e = self._entry(rel, lead + rel, st, True)
        if e is not None:
            e.rdev = NO_CONTENT if self.opts.implied_dirs else IMPLIED
            if self.partition is not None:
                self.partition.directory(e)
            yield [e]

    def _scan_listed(self, lead: bytes, rel: bytes) -> Iterator[list[Entry]]:
        """A --files-from name without -r: a directory is sent without its contents
        (rsync's implied --dirs)."""
        full = lead + rel
        try:
            st = os.lstat(full) if self.confined is None else self.confined.stat(full)
        except OSError as exc:
            if not (exc.errno == errno.ENOENT and self.opts.ignore_missing_args):
                self._fail(full, "link_stat", exc)
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.filters is not None and self.filters.excluded(self._top, rel, is_dir):
            return
        e = self._entry(rel, full, st, True)
        if e is not None:
            if is_dir:
                e.rdev = NO_CONTENT
            yield [e]

    def source_path(self, idx: int, rel: bytes) -> bytes:
        """The source path of entry `idx` (the `src` it had when scanned), from its
        transfer-relative path: entries need not be kept to be opened later."""
        if self._source_of is not None:
            prefix, root = self._roots[self._source_of[idx]]
        else:
            prefix, root = self._roots[bisect.bisect_right(self._root_starts, idx) - 1]
        return root if rel == b"." else prefix + rel

    def _fail(self, path: bytes, what: str, exc: OSError, code: int = errors.PARTIAL) -> None:
        self.io_error = True
        self.reporter.failed(OSFailed(what, path, exc, code))

    def _scan_contents(self, src: bytes, base: bytes) -> Iterator[list[Entry] | PlainRun]:
        try:
            st = os.stat(base) if self.confined is None else self.confined.stat(base)
        except OSError as exc:
            self._fail(src, "change_dir", exc)
            return
        if not stat.S_ISDIR(st.st_mode):
            self._fail(src, "change_dir", OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
            return
        if not (self.opts.recursive or self.opts.dirs or self.opts.list_only):
            self.reporter.info("skipping directory .", 0)
            return
        self._dev = st.st_dev
        root = self._entry(b".", base, st, True) if self._first(b".") else None
        if root is not None:
            if self.partition is not None:
                self.partition.directory(root)
            encrypted = root.enc is not None
        else:
            encrypted = self.files.finder.ask(base)[0] is not None
        yield from self._walk(base, b"", encrypted, self._top, root)

    def _scan_top(self, src: bytes, base: bytes, name: bytes) -> Iterator[list[Entry] | PlainRun]:
        full = src.rstrip(b"/")
        try:
            st = os.lstat(full) if self.confined is None else self.confined.stat(full)
        except OSError as exc:
            if not (exc.errno == errno.ENOENT and self.opts.ignore_missing_args):
                self._fail(src, "link_stat", exc)  # (rsync ignores no missing `dir/`)
            return
        if self._follows and st.st_mode & _S_IFMT == stat.S_IFLNK:
            st = self._follow(full, name, st)
            if st is None:
                return
        if stat.S_ISDIR(st.st_mode) and not (self.opts.recursive or self.opts.dirs
                                             or self.opts.list_only):
            self.reporter.info(f"skipping directory {escape(name)}", 0)
            return
        if self.filters is not None and self.filters.excluded(self._top, name,
                                                              stat.S_ISDIR(st.st_mode)):
            return
        if not self._first(name):
            return
        self._dev = st.st_dev
        entry = self._entry(name, full, st, True)
        if entry is None:
            if self._nondir:
                yield from self._out(None)
            return
        if self.partition is not None and not self.partition.top(entry, st):
            return
        if not entry.is_dir:
            yield from self._out([entry])
            return
        yield from self._dir(entry, full, self._top)

    def _first(self, path: bytes) -> bool:
        if path in self._seen:
            return False
        self._seen.add(path)
        return True

    def _walk(self, dirpath: bytes, prefix: bytes, encrypted: bool,
              rules: filters.DirState | None, entry: Entry | None = None
              ) -> Iterator[list[Entry] | PlainRun | DirNames]:
        """The entries below one directory, after its own `entry` (if listed: it comes
        once the directory is read, so that its names can go before it); `encrypted`: it
        carries encdata, so every entry in it is asked for its own; `rules`: the filter
        state of its parent."""
        base = dirpath if dirpath.endswith(b"/") else dirpath + b"/"
        flt = self.filters
        if flt is not None:
            rules = flt.enter(rules, prefix[:-1], self._merge_reader(base))
        try:
            names, stats, plain = self._list(base, encrypted, prefix)
        except OSError as exc:
            self._fail(dirpath, "opendir", exc)
            names, stats, plain = [], [], []
        sent = self._sift(base, prefix, names, stats, rules)
        if entry is not None:
            if sent is not None:
                yield DirNames(entry.path, sent)
            yield [entry]
        subdirs = []
        files: list[Entry] = []
        bare_names: list[bytes] = []
        bare_stats: list[os.stat_result] = []
        make = self._entry
        for name, st, bare in zip(names, stats, plain, strict=True):
            if type(st) is not os.stat_result:
                if st is not None:
                    self._unlisted(base + name, st)
                continue
            is_dir = st.st_mode & _S_IFMT == _S_IFDIR
            if bare:
                if files:
                    yield from self._out(files)
                    files = []
                bare_names.append(name)
                bare_stats.append(st)
                if len(bare_names) >= RUN_MAX:
                    yield from self._out(self._plain_run(base, prefix, bare_names, bare_stats))
                    bare_names, bare_stats = [], []
                continue
            rel = prefix + name
            path = base + name
            if is_dir:
                subdirs.append((rel, path, st))
                continue
            if bare_names:
                yield from self._out(self._plain_run(base, prefix, bare_names, bare_stats))
                bare_names, bare_stats = [], []
            e = make(rel, path, st, encrypted)
            if e is not None:
                files.append(e)
                if len(files) >= RUN_MAX:
                    yield from self._out(files)
                    files = []
        if files:
            yield from self._out(files)
        if bare_names:
            yield from self._out(self._plain_run(base, prefix, bare_names, bare_stats))
        if self._nondir:
            yield from self._out(None)
        for rel, path, st in subdirs:
            mount = self.opts.one_file_system and st.st_dev != self._dev
            if mount and self.opts.one_file_system > 1:
                self.reporter.info(f"[sender] skipping mount-point dir {escape(rel)}", 2)
                continue
            e = make(rel, path, st, encrypted)
            if e is None:
                continue
            if mount:
                e.rdev = NO_CONTENT
            yield from self._dir(e, path, rules, mount)

    def _sift(self, base: bytes, prefix: bytes, names: list[bytes], stats: list,
              rules: filters.DirState | None) -> list[bytes] | None:
        """Which names of a directory the list may bring, settled before any is sent: in
        `stats`, what lstat failed on, a partition, a filter or a dangling -L link leaves
        out becomes None; a followed symlink gets its referent's stat. With names
        announced, those left (less skipped kinds and -xx's mount points): an entry that
        fails later is announced all the same, and its destination copy stays."""
        flt, part, follows = self.filters, self.partition, self._follows
        announce = self._announce
        if flt is None and part is None and not follows and not announce:
            return None
        sent: list[bytes] = []
        skip_mounts = self.opts.one_file_system > 1
        for i, (name, st) in enumerate(zip(names, stats, strict=True)):
            if type(st) is not os.stat_result:
                self._unlisted(base + name, st)
                stats[i] = None
                continue
            if follows and st.st_mode & _S_IFMT == stat.S_IFLNK:
                st = stats[i] = self._follow(base + name, prefix + name, st)
                if st is None:
                    continue
            is_dir = st.st_mode & _S_IFMT == _S_IFDIR
            if (part is not None and not is_dir and not part.mine(name, st)) or (
                    flt is not None and flt.excluded(rules, prefix + name, is_dir)):
                stats[i] = None
                continue
            if announce and self._kinds.get(st.st_mode & _S_IFMT) and not (
                    is_dir and skip_mounts and st.st_dev != self._dev):
                sent.append(name)
        return sent if announce else None

    def _unlisted(self, path: bytes, exc: OSError) -> None:
        """A name the directory listed that lstat could not read."""
        if exc.errno == errno.ENOENT:
            self.reporter.failed(Vanished(path=path))
        else:
            self._fail(path, "readlink_stat", exc)

    def _dir(self, e: Entry, path: bytes, rules: filters.DirState | None,
             mount: bool = False) -> Iterator[list[Entry] | PlainRun | DirNames]:
        """A directory entry and (with -r) what is below it; with -m it is held until
        something other than a directory turns up below it, and left out if nothing
        does. A mount point under -x is sent without its contents."""
        if self.partition is not None:
            self.partition.directory(e)
        walk = self.opts.recursive and not mount
        if not self.opts.prune_empty_dirs:
            if walk:
                yield from self._walk(path, e.path + b"/", e.enc is not None, rules, e)
            else:
                yield [e]
            return
        self.count -= 1  # counted when it is listed
        self._held.append(e)
        if walk:
            yield from self._walk(path, e.path + b"/", e.enc is not None, rules)
        if self._held and self._held[-1] is e:
            self._held.pop()

    def _out(self, run: list[Entry] | PlainRun | None) -> Iterator[list[Entry] | PlainRun]:
        """A run of non-directories (None: one was skipped), after the directories -m
        held above it."""
        self._nondir = False
        if self._held:
            self.count += len(self._held)
            yield self._held
            self._held = []
        if run is not None:
            yield run

    def _follow(self, path: bytes, rel: bytes, st: os.stat_result) -> os.stat_result | None:
        """What the symlink at `path` is sent as, in rsync's order (readlink_stat): -L
        follows it, -k when it leads to a directory, --copy-unsafe-links when it points
        out of the transfer (`rel` is its transfer-relative path). None: it points
        nowhere, reported as rsync reports it."""
        opts = self.opts
        if not opts.copy_links:
            if opts.copy_dirlinks:
                try:
                    there = os.stat(path)
                except OSError:
                    there = None
                if there is not None and stat.S_ISDIR(there.st_mode):
                    return there
            if not opts.copy_unsafe_links:
                return st
            try:
                target = os.readlink(path)
            except OSError as exc:
                self._fail(path, "readlink", exc)
                return None
            if not unsafe_link(target, rel):
                return st
            self.reporter.info(f'copying unsafe symlink "{escape(rel)}" -> '
                               f'"{escape(target)}"', 1)
        try:
            return os.stat(path)
        except OSError as exc:
            self.io_error = True
            if exc.errno == errno.ENOENT:
                self.reporter.failed(NoReferent(path=path))
            else:
                self._fail(path, "stat", exc)
            return None

    def _merge_reader(self, base: bytes) -> filters.Reader:
        """Reads a per-directory merge file of source directory `base` (ends in "/")."""

        def read(name: bytes) -> bytes | None:
            try:
                fd = self.files.open(base + name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
                return b"".join(chunks)
            except OSError:
                return None
            finally:
                os.close(fd)

        return read

    def _plain_run(self, base: bytes, prefix: bytes, names: list[bytes],
                   stats: list[os.stat_result]) -> PlainRun:
        self.count += len(names)
        return PlainRun(base, prefix, names, stats)

    def _list(self, base: bytes, encrypted: bool, prefix: bytes = b""
              ) -> tuple[list[bytes], list, list[bool]]:
        """The sorted names in directory `base` (its path, ending in "/"), the lstat of
        each (or the OSError it gave), and whether each is a regular file that needs
        no more than its lstat (the quick path: no xattrs wanted, and a size that rules
        out encryption, so no xattr call at all).

        A process with no other thread makes the calls from inside the directory, with
        bare names, as rsync walks: a lookup of one component instead of the whole
        path, a fifth of a no-change sender's system time. The working directory is
        back before this returns, so nothing else sees it moved. With other threads
        running (a scan ahead of the connection, a progress display) the calls take
        whole paths: another thread could resolve a relative path meanwhile, an import
        through a relative sys.path entry among them. One stream of --parallel lstats
        only the names its partition may list (`prefix`: the directory's path in the
        transfer)."""
        alone = threading.active_count() == 1 or self.confined is not None
        if alone:
            fd = self.files.open(base, _DIR_FLAGS)
            try:
                os.fchdir(fd)
            finally:
                os.close(fd)
        where, lead = (b".", b"") if alone else (base, base)
        try:
            if self.partition is None:
                names = sorted(os.listdir(where))
            else:
                names = self.partition.names(where, prefix, self._follows)
            stats: list = []
            plain = [False] * len(names)
            lstat, quick = os.lstat, self._quick and not encrypted
            for i, name in enumerate(names):
                try:
                    st = lstat(lead + name)
                except OSError as exc:
                    stats.append(exc)
                    continue
                stats.append(st)
                if quick and st.st_mode & _S_IFMT == _S_IFREG:
                    plain[i] = st.st_size % cipher.UNIT != 0
        finally:
            if alone:
                os.fchdir(self._home)
        return names, stats, plain

    def _confined_entry(self, rel: bytes, path: bytes, st: os.stat_result,
                        in_encrypted_dir: bool) -> Entry | None:
        """_entry under --restrict-to: the entry is pinned from the allowed tree's fd (no
        symlink followed on the way) and must still be what lstat saw; its xattrs,
        encdata and link target are read through that fd."""
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
            return self._entry(rel, path, st, in_encrypted_dir, pin)
        finally:
            os.close(pin)

    def _entry(self, rel: bytes, path: bytes, st: os.stat_result,
               in_encrypted_dir: bool, at: int | None = None) -> Entry | None:
        """Build one entry, or None when this run skips that kind of file; `at` is an
        O_PATH fd of it (under --restrict-to) to read it through."""
        if self.confined is not None and at is None:
            return self._confined_entry(rel, path, st, in_encrypted_dir)
        opts = self.opts
        mode = st.st_mode
        fmt = mode & _S_IFMT
        e = Entry(rel, mode, 0, st.st_mtime_ns, st.st_uid, st.st_gid, src=path)
        try:
            if at is None:
                layout = self.files.read_encdata(e, path, st, in_encrypted_dir)
            else:
                layout = self.files.read_encdata(e, b"/proc/self/fd/%d" % at, st,
                                                 in_encrypted_dir, True)
        except OSError as exc:
            self._fail(path, "read xattrs of", exc)
            return None
        if fmt == _S_IFREG:
            e.size = st.st_size
            if e.enc is not None:
                try:
                    e.size = self.files.cipher_size(e, layout)
                except (MalformedEncdata, NoKeylessRead) as exc:
                    self.io_error = True
                    self.reporter.failed(exc)
                    return None
        elif not self._kinds.get(fmt):
            if fmt in self._kinds:
                self.reporter.info(f'skipping non-regular file "{escape(rel)}"', 0)
                self._nondir = True
            return None
        elif fmt == stat.S_IFLNK:
            try:
                e.target = os.readlink(path) if at is None else os.readlink(b"", dir_fd=at)
            except OSError as exc:
                self._fail(path, "readlink", exc)
                return None
            e.size = len(e.target)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            e.rdev = st.st_rdev
        elif fmt == stat.S_IFDIR:
            e.size = st.st_size
        if opts.hard_links and fmt != stat.S_IFDIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            group = self._links.get(key)
            if group is None:
                e.link = self.count + len(self._held)  # a leader: its own index
                self._links[key] = [e.link, st.st_nlink - 1]
            else:
                e.link = group[0]
                group[1] -= 1
                if group[1] <= 0:  # every name of the inode is listed: forget it
                    del self._links[key]
                    e.link_last = True
        if opts.checksum and fmt == stat.S_IFREG and e.link in (-1, self.count + len(self._held)):
            e.checksum = self._checksum(path, layout)
            if e.checksum is None:
                return None
        self.count += 1
        return e

    def _checksum(self, path: bytes, layout: int) -> bytes | None:
        try:
            fd, direct = self.files.open_data(path, layout)
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

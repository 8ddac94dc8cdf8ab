"""--link-dest, --compare-dest, --copy-dest: the receiver's alternate destinations.

rsync's try_dests_reg and try_dests_non (generator.c): each DIR is asked, in order,
for the entry's path. The first copy there that passes the quick check with unchanged
attributes (unchanged_attrs: time, mode, owner, group, ACLs, xattrs; for an encrypted
entry also the whole encdata text) is a match and ends the search; failing one, the
first that passes the quick check is kept, and else the first of the right kind. A
match of a file becomes a hard link (--link-dest), nothing at all (--compare-dest) or
a local copy (--copy-dest, and any kind's copy that passes the quick check only);
any other copy is the delta basis of a file not yet at the destination. The DIRs are
only ever read: links and copies are made in the destination.

What it must not know: the generator (it hands its hooks in), the wire.
"""

from __future__ import annotations

import os
import stat

from fscsync.engine import itemize
from fscsync.engine.rxstate import Status
from fscsync.errors import escape, os_reason
from fscsync.fs import cipher, meta
from fscsync.fs.destfs import DestTree, link_in, lstat_at, open_temp
from fscsync.fs.fileio import copy_file
from fscsync.fs.meta import Target

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.basis import DestCopies
    from fscsync.engine.flist import Entry
    from fscsync.engine.report import Reporter
    from fscsync.fs.meta import IdMapper
    from fscsync.options import Options

BASIS, QUICK, SAME = 1, 2, 3
"""How well a DIR's copy matches (rsync's match_level): of the right kind, passing the
quick check, and with unchanged attributes too."""
SETTLED = object()
"""regular()'s "this file is done" (linked, compared or copied here)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def unchanged(opts: Options, reporter: Reporter, update: str, e: Entry) -> None:
    """rsync lists an entry settled unchanged from a DIR's copy only at -ii, and names
    it "is uptodate" at -vv."""
    if opts.itemize > 1:
        reporter.itemize(itemize.blank(update, e), e.size)
    elif opts.verbose > 1:
        name = "./" if e.path == b"." else escape(e.path) + "/" * e.is_dir
        reporter.info(f"{name} is uptodate", 2)


class Found:
    """The best copy of an entry in the DIRs: where it is, its stat and encdata."""

    __slots__ = ("level", "dirfd", "name", "st", "enc")

    def __init__(self, level: int, dirfd: int, name: bytes, st: os.stat_result,
                 enc: bytes | None):
        self.level = level
        self.dirfd = dirfd
        self.name = name
        self.st = st
        self.enc = enc


def resolve(opts: Options, root: bytes) -> list[bytes]:
    """The DIRs as paths: a relative one from the destination directory `root`, as
    rsync makes them absolute from it; when the destination does not exist yet (a dry
    run), a leading "../" is taken from its parent, as rsync does."""
    base = os.path.abspath(root)
    out = []
    for d in opts.alt_dest_dirs:
        if len(d) > 1 and d.endswith(b"/"):
            d = d[:-1]
        if not d.startswith(b"/"):
            if d.startswith(b"../") and not os.path.isdir(base):
                d = os.path.join(os.path.dirname(base), d[3:])
            else:
                d = os.path.join(base, d)
        out.append(d)
    return out


class AltDests:
    """The DIRs of one run, opened once (a missing one is warned about and skipped, as
    rsync's check_alt_basis_dirs does), each read through its own fd cache."""

    def __init__(self, opts: Options, ids: IdMapper, copies: DestCopies, root: bytes,
                 reporter: Reporter):
        self.opts = opts
        self.ids = ids
        self.copies = copies
        self.reporter = reporter
        self.kind = opts.alt_dest
        self.trees: list[DestTree] = []
        for path in resolve(opts, root):
            try:
                st = os.stat(path)
            except OSError:
                reporter.warning(f"--{self.kind}-dest arg does not exist: {escape(path)}")
                continue
            if not stat.S_ISDIR(st.st_mode):
                reporter.warning(f"--{self.kind}-dest arg is not a dir: {escape(path)}")
                continue
            try:
                self.trees.append(DestTree(os.open(path, _DIR_FLAGS)))
            except OSError as exc:
                reporter.warning(f"--{self.kind}-dest arg cannot be opened: {escape(path)}: "
                                 f"{os_reason(exc)}")

    def close(self) -> None:
        for tree in self.trees:
            tree.close()
            os.close(tree.root_fd)
        self.trees = []

    # ---- the search ------------------------------------------------------------------

    def _look(self, tree: DestTree, path: bytes) -> tuple[int, bytes, os.stat_result] | None:
        head, _, name = path.rpartition(b"/")
        try:
            if path == b".":
                return tree.root_fd, b"", os.fstat(tree.root_fd)
            dfd = tree.dirfd(head)
            st = lstat_at(dfd, name)
        except OSError:
            return None
        return (dfd, name, st) if st is not None else None

    def _best(self, path: bytes, fmt: int, grade) -> Found | None:
        """The best copy at `path` of kind `fmt` in the DIRs, in order: the first that
        grade(dfd, name, st) -> (level, encdata) finds the SAME ends the search, else
        the first of the highest level found."""
        best = None
        for tree in self.trees:
            got = self._look(tree, path)
            if got is None or stat.S_IFMT(got[2].st_mode) != fmt:
                continue
            try:
                level, enc = grade(*got)
            except OSError:
                continue
            if best is None or level > best.level:
                best = Found(level, *got, enc)
            if level == SAME:
                break
        return best

    def _attrs_same(self, e: Entry, dfd: int, name: bytes, st, enc: bytes | None) -> bool:
        """rsync's unchanged_attrs, and for an encrypted entry the same encdata text."""
        return enc == e.enc and not meta.differences(
            self.opts, self.ids, e, st, Target(dfd, name, is_link=stat.S_ISLNK(st.st_mode)))

    def find_file(self, e: Entry, path: bytes) -> Found | None:
        """The best regular copy of file entry `e` (at `path`) in the DIRs."""
        copies = self.copies

        def grade(dfd: int, name: bytes, st) -> tuple[int, bytes | None]:
            enc = copies.encdata(dfd, name, e) if copies.may_hold_encdata(e, dfd, st) else None
            if not copies.same(e, dfd, name, st, enc):
                return BASIS, enc
            return (SAME if self._attrs_same(e, dfd, name, st, enc) else QUICK), enc

        return self._best(path, stat.S_IFREG, grade)

    def find_other(self, e: Entry, path: bytes) -> Found | None:
        """The best copy of a symlink, device or special file in the DIRs (rsync's
        try_dests_non): of the same kind; the same target or device number passes the
        quick check."""
        fmt = stat.S_IFMT(e.mode)

        def grade(dfd: int, name: bytes, st) -> tuple[int, bytes | None]:
            if fmt == stat.S_IFLNK:
                quick = os.readlink(name, dir_fd=dfd) == e.target
            else:
                quick = fmt not in (stat.S_IFCHR, stat.S_IFBLK) or st.st_rdev == e.rdev
            if not quick:
                return BASIS, None
            enc = self.copies.encdata(dfd, name, e)
            return (SAME if self._attrs_same(e, dfd, name, st, enc) else QUICK), enc

        return self._best(path, fmt, grade)

    def dir_changes(self, e: Entry) -> str | None:
        """A new directory's itemize letters against the best copy in the DIRs ("" for
        an unchanged one), or None when no DIR has one: rsync lists such a directory
        as changed from that copy, not as new."""
        best = None
        for tree in self.trees:
            got = self._look(tree, e.path)
            if got is None or not stat.S_ISDIR(got[2].st_mode):
                continue
            letters = meta.differences(self.opts, self.ids, e, got[2],
                                       Target(got[0], got[1])).letters()
            if best is None or len(letters) < len(best):
                best = letters
            if not letters:
                break
        return best

    # ---- what a match becomes ------------------------------------------------------------

    def regular(self, idx: int, e: Entry, path: bytes, pfd: int, name: bytes, st,
                hooks) -> object:
        """Settle regular file `e` from the DIRs if they allow: SETTLED, else the Found
        copy to use as the delta basis (None: none). `st` is the destination's own
        entry: when it is there only an exact match counts (and --copy-dest never
        looks), as in rsync. `hooks` is the generator (its _item, _place, enc, state)."""
        exists = st is not None and stat.S_ISREG(st.st_mode)
        if exists and self.kind == "copy":
            return None
        found = self.find_file(e, path)
        if found is None or (exists and found.level < SAME):
            return None
        if found.level == SAME and self.kind == "link":
            if exists and (st.st_dev, st.st_ino) == (found.st.st_dev, found.st.st_ino):
                return None
            if self._link(idx, e, found, pfd, name, st is None, hooks):
                return SETTLED
            if exists:
                return None
        elif found.level == SAME and self.kind == "compare":
            if exists and not self.opts.dry_run:
                os.unlink(name, dir_fd=pfd)
            self._blank(".", e, hooks)
            hooks.state.status[idx] = Status.OK
            return SETTLED
        if found.level >= QUICK:
            self._copy(idx, e, found, pfd, name, hooks)
            return SETTLED
        return found

    def other(self, idx: int, e: Entry, path: bytes, pfd: int, name: bytes, hooks) -> object:
        """A symlink, device or special file not at the destination, from the DIRs:
        SETTLED (linked, or left out by --compare-dest), else how to list the entry
        made as usual: None as new, "" unchanged (listed at -ii only), or the letters
        that differ from the DIR's copy."""
        found = self.find_other(e, path)
        if found is None:
            return None
        is_link = stat.S_ISLNK(e.mode)
        if found.level == SAME:
            if self.kind == "link" and self._link(idx, e, found, pfd, name, True, hooks):
                return SETTLED
            if self.kind == "compare":
                self._blank(".", e, hooks)
                hooks.state.status[idx] = Status.OK
                return SETTLED
            return ""
        return "c" + meta.differences(self.opts, self.ids, e, found.st, Target(
            found.dirfd, found.name, is_link=is_link)).letters()

    def _blank(self, update: str, e: Entry, hooks) -> None:
        unchanged(self.opts, hooks.state.reporter, update, e)

    def _link(self, idx: int, e: Entry, found: Found, pfd: int, name: bytes, free: bool,
              hooks) -> bool:
        """A hard link to the DIR's copy; False when the filesystem refuses one (another
        device, too many links): rsync then copies it."""
        if not self.opts.dry_run:
            try:
                link_in(found.dirfd, found.name, pfd, name, free)
            except OSError:
                return False
        hooks.state.stats.linked += 1
        hooks.state.status[idx] = Status.OK
        self._blank("h", e, hooks)
        return True

    def _copy(self, idx: int, e: Entry, found: Found, pfd: int, name: bytes, hooks) -> None:
        """A local copy of the DIR's file (its data only: attributes are the entry's),
        listed with what differs from that copy."""
        if not hooks.enc.writable(idx, e):
            return
        changes = meta.differences(self.opts, self.ids, e, found.st,
                                   Target(found.dirfd, found.name)).letters()
        if changes:
            hooks._item("c", e, changes)
        else:
            self._blank("c", e, hooks)
        if self.opts.dry_run:
            hooks.state.status[idx] = Status.OK
            return
        layout = self.copies.layout(found.dirfd, found.name, found.st, e, found.enc)

        def make(tmp: bytes) -> None:
            src, _ = cipher.open_data(found.name, layout, dir_fd=found.dirfd)
            try:
                dst = open_temp(pfd, tmp)
                try:
                    copy_file(src, dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)

        hooks._place(idx, e, pfd, name, make, is_link=False)

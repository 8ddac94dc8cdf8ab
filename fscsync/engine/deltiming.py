"""When --delete deletes, and the receiver's one deleter (rsync's generator.c and
delete.c).

rsync's four timings, one setting (Options.delete_when):
- before (--delete-before): a pass over every directory of the file list, in list
  order, before the first entry is compared (do_delete_pass);
- during (--delete-during, --del, plain --delete): each directory's extraneous
  entries when the generator reaches that directory, before its entries
  (delete_in_dir);
- delay (--delete-delay): found at that moment, deleted after the transfer;
- after (--delete-after): found and deleted after the transfer, under the merge
  files the run brought.

Before and during need a directory's complete list of names when they get to it,
and fscsync's list brings a directory's subdirectories after the contents of those
before them: for these two the receiver holds the file list until it is complete,
as rsync's receiver does for --delete-before (it turns incremental recursion off).

Every entry is deleted through fs.destfs.remove_tree with this module's hooks: the
run's filter rules (protect), -x fences, --max-delete, itemize lines and counts. It
knows nothing of the stream: the receiver hands it the list's names and I/O errors.
"""

from __future__ import annotations

import os
import stat

from fscsync import errors
from fscsync.engine import itemize
from fscsync.engine.backup import Removal
from fscsync.engine.stats import tally
from fscsync.errors import OSFailed, escape
from fscsync.fs.destfs import deletion_order, is_temp_name, listdir, lstat_at, remove_tree
from fscsync.fs.inplace import is_journal_name

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.engine.filters import DeleteFilter
    from fscsync.engine.flist import Batch
    from fscsync.engine.report import Reporter
    from fscsync.engine.rxstate import Decisions
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.options import Options

BEFORE, DURING, DELAY, AFTER = "before", "during", "delay", "after"
WHENS = (BEFORE, DURING, DELAY, AFTER)


class ListNames:
    """The complete file list as --delete needs it: the names it brings to each
    directory, and the directories whose contents it holds, in list order."""

    def __init__(self) -> None:
        self.children: dict[bytes, set[bytes]] = {}
        self.dirs: list[bytes] = []

    def add(self, batch: Batch) -> None:
        children, dirs, special = self.children, self.dirs, batch.special
        for i, (path, mode) in enumerate(zip(batch.paths, batch.modes, strict=True)):
            is_dir = stat.S_ISDIR(mode)
            if is_dir and not (i in special and special[i].no_content):
                dirs.append(b"" if path == b"." else path)
            if path != b".":
                head, _, name = path.rpartition(b"/")
                children.setdefault(head, set()).add(name)


class Deleter(Removal):
    """The run's deletions: when they happen (the timing above) and each one, through
    remove_tree. One per receiving run, shared by the generator and the final pass, so
    --max-delete counts every deletion of the run.

    `existing`, `children`: the generator's names listed in each destination
    directory, and the names the file list brings there (complete by the time a
    timing acts on them)."""

    def __init__(self, opts: Options, reporter: Reporter, stats: Stats,
                 rules: DeleteFilter | None, existing: dict[bytes, list[bytes]],
                 children: dict[bytes, set[bytes]], backups: Backups | None = None):
        """`backups`: with -b, each deleted file goes into the backup instead."""
        super().__init__(backups)
        self.opts = opts
        self.reporter = reporter
        self.stats = stats
        self.rules = rules
        self.existing = existing
        self.children = children
        # One stream of --parallel sees only part of each directory: it deletes nothing,
        # the final pass does it for all (as --delete-delay).
        self.when = opts.delete_when if opts.delete and opts.spool is None else ""
        self.dry_run = opts.dry_run
        self.list_error = False  # the sender could not list all it was asked to
        self.send_error = False  # ... or read a listed file (known after the transfer)
        self.deleted = 0
        self.skipped = 0
        self._warned = False
        self._fence = _Fence(opts.one_file_system)
        self._tree: DestTree | None = None
        self._room: bytes | None = None  # the entry a make-room removal is for

    # ---- the timings ---------------------------------------------------------------

    def list_complete(self, tree: DestTree | None, names: ListNames) -> None:
        """The held file list is all in (Options.holds_list): before its first entry is
        compared, the before pass runs."""
        self.children.update(names.children)
        if self.when != BEFORE or tree is None or not self._allowed():
            return
        for rel in names.dirs:
            if rel and not self.opts.recursive:
                continue
            try:
                listed = [n for n in listdir(tree.dirfd(rel))
                          if not (is_temp_name(n) or is_journal_name(n))]
            except OSError:
                continue  # not (yet) a directory there: nothing of it to delete
            self.existing.setdefault(rel, listed)  # the rules of its subdirectories
            self._in_dir(tree, rel, listed, self.children)

    def reached(self, tree: DestTree, rel: bytes, no_content: bool) -> None:
        """The generator has listed existing directory `rel`: during, its
        extraneous entries go now."""
        if self.when == DURING and not no_content and rel in self.existing \
                and self._allowed():
            self._in_dir(tree, rel, self.existing[rel], self.children)

    def final(self, tree: DestTree | None, decisions: Decisions, reporter: Reporter,
              stats: Stats) -> None:
        """After the transfer (the final pass's reporter and counters from now on):
        delay and after delete now; every timing reports a --max-delete that stopped
        it."""
        self.reporter, self.stats = reporter, stats
        allowed = bool(self.when) and self._allowed()  # said once, whatever the timing
        if self.when in (DELAY, AFTER) and allowed and tree is not None:
            no_content = {b"" if e.path == b"." else e.path
                          for e, _ in decisions.dirs if e.no_content}
            for rel, names in decisions.existing.items():
                if rel not in no_content:
                    self._in_dir(tree, rel, names, decisions.children)
        if self.skipped:
            self.reporter.error(f"Deletions stopped due to --max-delete limit "
                                f"({self.skipped} skipped)", errors.MAX_DELETE)

    def _allowed(self) -> bool:
        """rsync's check before each directory: no deletions after the sender's I/O
        errors (said once) unless --ignore-errors. An unreadable file is known only
        after the transfer, when --delete-after looks. rsync says it as an always-shown
        message (FINFO: on stdout, and in the log, unless -q), not as an error; the
        run still ends with 23."""
        if self.opts.ignore_errors or not (
                self.list_error or (self.send_error and self.when == AFTER)):
            return True
        if not self._warned:
            self._warned = True
            self.reporter.note_code(errors.PARTIAL)
            self.reporter.info("IO error encountered -- skipping file deletion", 0)
        return False

    # ---- one directory, one entry ----------------------------------------------------

    def _in_dir(self, tree: DestTree, rel: bytes, names: list[bytes],
                children: dict[bytes, set[bytes]]) -> None:
        """Delete the entries of directory `rel` (`names`, as listed) that the file list
        does not bring there (rsync's delete_in_dir): protected ones and mount points
        stay."""
        try:
            dfd = tree.dirfd(rel)
        except OSError:
            return
        if not self._fence.enter(dfd):
            return
        rules = self.rules
        state = rules.state(rel, tree.dirfd, dfd) if rules is not None else None
        keep = children.get(rel, ())
        gone = [(name, st) for name in names
                if name not in keep and (st := lstat_at(dfd, name)) is not None]
        self._tree = tree
        for name, st in deletion_order(gone):
            path = rel + b"/" + name if rel else name
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules is not None and rules.protected(state, path, is_dir):
                continue
            if is_dir and self._fence.mount_point(st, path, self.reporter):
                continue
            remove_tree(dfd, name, self, rel=path, st=st, ctx=(state, None))

    def make_room(self, tree: DestTree, pfd: int, name: bytes, path: bytes) -> bool:
        """Remove the directory at `path` (pfd, name) that another kind of entry
        replaces: its contents are itemized and counted, as rsync's delete_item does
        with DEL_MAKE_ROOM, the directory itself not. False when something stays."""
        rules = self.rules
        head = path.rpartition(b"/")[0]
        state = rules.state(head, tree.dirfd, pfd) if rules is not None else None
        self._tree, self._room = tree, path
        try:
            return remove_tree(pfd, name, self, rel=path, ctx=(state, None))
        finally:
            self._room = None

    # ---- remove_tree's hooks ----------------------------------------------------------

    def enter(self, ctx, rel: bytes, fd: int):
        state, _ = ctx
        if self.rules is not None:
            state = self.rules.state_below(state, rel, fd)
        return state, self._fence.dev_of(fd)

    def keep(self, ctx, rel: bytes, st: os.stat_result) -> bool:
        state, dev = ctx
        is_dir = stat.S_ISDIR(st.st_mode)
        if dev is not None and is_dir and st.st_dev != dev:
            return True  # a mount point pins its parent
        return self.rules is not None and self.rules.protected(state, rel, is_dir,
                                                               perishable=False)

    def stop(self, rel: bytes, st: os.stat_result) -> bool:
        if rel == self._room or self.opts.max_delete < 0 or self.deleted < self.opts.max_delete:
            return False
        self.skipped += 1
        return True

    def removed(self, rel: bytes, st: os.stat_result) -> None:
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and self._tree is not None:
            self._tree.forget(rel)
        if rel == self._room:
            return
        self.deleted += 1
        tally(self.stats.deleted, itemize.kind_name(st.st_mode))
        itemize.tell(self.reporter, self.opts, lambda: itemize.deleting(rel, is_dir),
                     lambda: f"deleting {escape(rel)}{'/' if is_dir else ''}")

    def not_empty(self, rel: bytes) -> None:
        self.reporter.info(f"cannot delete non-empty directory: {escape(rel)}", 0)

    def failed(self, rel: bytes, exc: OSError) -> None:
        self.reporter.failed(OSFailed("delete of", rel, exc))


class _Fence:
    """-x on the receiver: no deletions inside a directory of another filesystem than
    the transfer's top one, and a mount point is never deleted (rsync's delete_in_dir);
    inside a deleted directory a mount point pins its parent."""

    def __init__(self, level: int):
        self.level = level
        self.dev: int | None = None

    def enter(self, dfd: int) -> bool:
        if not self.level:
            return True
        dev = self.dev_of(dfd)
        if self.dev is None:
            self.dev = dev
        return dev == self.dev

    def dev_of(self, fd: int) -> int | None:
        return os.fstat(fd).st_dev if self.level else None

    def mount_point(self, st, path: bytes, reporter: Reporter) -> bool:
        if not self.level or st.st_dev == self.dev:
            return False
        if self.level == 1:
            reporter.info(f"cannot delete mount point: {escape(path)}", 2)
        return True

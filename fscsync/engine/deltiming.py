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

During and delay need a directory's complete list of names when the generator gets
to it, and fscsync's list brings a directory's subdirectories only after the contents
of those before them. So the sender announces each directory's names just ahead of the
batch that brings the directory (protocol.DIRNAMES, names_announced): the receiver
holds no more of the list than the batch at hand, and per directory only what the
Deleter says below, as rsync's receiver with incremental recursion does. Before needs
every directory's names before the first entry: for it the receiver holds the file
list until it is complete, as rsync's receiver does (it turns incremental recursion
off); after takes the names from the list as it goes, keeping them all to the end,
as rsync's does.

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
from fscsync.engine.listmode import announced_dir
from fscsync.engine.stats import tally
from fscsync.errors import OSFailed, ProtocolError, escape
from fscsync.fs.destfs import deletion_order, is_temp_name, listdir, lstat_at, remove_tree
from fscsync.fs.inplace import is_journal_name

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from collections.abc import Container

    from fscsync.engine.backup import Backups
    from fscsync.engine.filters import DeleteFilter
    from fscsync.engine.flist import Batch
    from fscsync.engine.report import Reporter
    from fscsync.engine.rxstate import Decisions
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.options import Options
    from fscsync.wire.dirnames import DirNames

BEFORE, DURING, DELAY, AFTER = "before", "during", "delay", "after"
WHENS = (BEFORE, DURING, DELAY, AFTER)


MAX_ANNOUNCED = 50_000_000
"""Names announced and not yet matched with their batch, at most (as many as a file list
may have entries, receiver.MAX_ENTRIES): a sender must not fill the receiver's memory
with names instead of entries."""


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


class Announced:
    """The names the sender announced (protocol.DIRNAMES) for the directories of the
    next file-list batch, checked against that batch, then handed to the deleter one
    directory at a time.

    What is kept, and for how long: a directory's names from its DIRNAMES frame until
    the generator gets to the directory (Deleter.reached); a directory it does not
    compare (new at the destination, or failed) keeps them until the next batch starts.
    So the names of at most two batches' directories are held (the one being decided,
    the next one's as they arrive), never the list's."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.pending: dict[bytes, set[bytes]] = {}  # for the batch still to come
        self.current: dict[bytes, set[bytes]] = {}  # for the batch being decided
        self._open: bytes | None = None  # a directory whose names go on in the next frame
        self._last = b""  # the last name announced for it
        self._count = 0

    def add(self, part: DirNames) -> None:
        """One DIRNAMES frame, in its place in the stream."""
        rel = b"" if part.path == b"." else part.path
        names = part.names
        if self._open is not None:
            if rel != self._open:
                raise ProtocolError(f"names announced for directory {self._open[:100]!r} end "
                                    f"without their last part")
            if names and names[0] <= self._last:
                raise ProtocolError(f"names announced for directory {rel[:100]!r} unsorted "
                                    f"or repeated")
            self.pending[rel].update(names)
        elif rel in self.pending:
            raise ProtocolError(f"names announced twice for directory {rel[:100]!r}")
        else:
            self.pending[rel] = set(names)
        self._count += len(names)
        if self._count > MAX_ANNOUNCED:
            raise ProtocolError("too many names announced ahead of the file list")
        if names:
            self._last = names[-1]
        self._open = rel if part.more else None

    def brought(self, batch: Batch) -> None:
        """`batch` is about to be decided: the directories it brings that are compared
        are exactly the ones announced since the batch before."""
        if self._open is not None:
            raise ProtocolError(f"names announced for directory {self._open[:100]!r} end "
                                f"without their last part")
        pending, opts, special, paths = self.pending, self.opts, batch.special, batch.paths
        found = set()
        for i in [i for i, mode in enumerate(batch.modes) if mode & 0o170000 == stat.S_IFDIR]:
            path = paths[i]
            e = special.get(i)
            if not announced_dir(opts, path, e is not None and e.no_content):
                continue
            rel = b"" if path == b"." else path
            if rel not in pending:
                raise ProtocolError(f"directory {path[:100]!r} arrived without the names of "
                                    f"its entries")
            found.add(rel)
        if len(found) != len(pending):
            stray = next(rel for rel in pending if rel not in found)
            raise ProtocolError(f"names announced for directory {stray[:100]!r}, which the "
                                f"file list does not bring next")
        self.current, self.pending, self._count = pending, {}, 0

    def take(self, rel: bytes) -> set[bytes] | None:
        return self.current.pop(rel, None)

    def end(self) -> None:
        """The file list is complete: nothing announced may be left without its batch."""
        if self.pending or self._open is not None:
            rel = self._open if self._open is not None else next(iter(self.pending))
            raise ProtocolError(f"names announced for directory {rel[:100]!r}, which the "
                                f"file list does not bring")
        self.current = {}


class Deleter(Removal):
    """The run's deletions: when they happen (the timing above) and each one, through
    remove_tree. One per receiving run, shared by the generator and the final pass, so
    --max-delete counts every deletion of the run.

    `existing`, `children`: the generator's names listed in each destination
    directory, and the names the file list brings there (complete by the time a
    timing acts on them).

    With names announced (names_announced), what is kept per directory, and for how
    long: its destination listing in `existing` from the moment the generator lists
    it until, just after, it reaches it (then an empty list: the key stays, the
    delete rules of its subdirectories inherit through it); its announced names in
    `names` (Announced) until then too; with --delete-delay the names found extraneous
    then, in `delayed`, until the final pass deletes them. `children` stays empty."""

    def __init__(self, opts: Options, reporter: Reporter, stats: Stats,
                 rules: DeleteFilter | None, existing: dict[bytes, list[bytes]],
                 children: dict[bytes, set[bytes]], backups: Backups | None = None,
                 announced: bool = False):
        """`backups`: with -b, each deleted file goes into the backup instead;
        `announced`: the sender announces each directory's names (names_announced),
        the generator's run; the final pass of --parallel has the streams' names."""
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
        self.names = Announced(opts) if announced else None
        self.delayed: dict[bytes, list[bytes]] = {}
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
        """The held file list is all in (holds_list): before its first entry is
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
            self._in_dir(tree, rel, listed, self.children.get(rel, ()))

    def announce(self, part: DirNames) -> None:
        """A DIRNAMES frame, in its place among the file-list frames."""
        if part.io_error:
            self.list_error = True
        self.names.add(part)

    def reached(self, tree: DestTree, rel: bytes, no_content: bool) -> None:
        """The generator has listed existing directory `rel`: during, its
        extraneous entries go now; delay, with names announced, finds them now."""
        if self.names is None:
            if self.when == DURING and not no_content and rel in self.existing \
                    and self._allowed():
                self._in_dir(tree, rel, self.existing[rel], self.children.get(rel, ()))
            return
        listed = self.existing.get(rel)
        keep = self.names.take(rel)
        if listed is None:  # not compared: below the top with -d
            return
        self.existing[rel] = []
        if keep is None or no_content or not listed:
            return
        if self.when == DELAY:
            gone = [name for name in listed if name not in keep]
            if gone:
                self.delayed[rel] = gone
        elif self._allowed():
            self._in_dir(tree, rel, listed, keep)

    def final(self, tree: DestTree | None, decisions: Decisions, reporter: Reporter,
              stats: Stats) -> None:
        """After the transfer (the final pass's reporter and counters from now on):
        delay and after delete now; every timing reports a --max-delete that stopped
        it."""
        self.reporter, self.stats = reporter, stats
        allowed = bool(self.when) and self._allowed()  # said once, whatever the timing
        if self.when in (DELAY, AFTER) and allowed and tree is not None:
            if self.names is not None:
                for rel, gone in self.delayed.items():
                    self._in_dir(tree, rel, gone, ())
            else:
                no_content = {b"" if e.path == b"." else e.path
                              for e, _ in decisions.dirs if e.no_content}
                children = decisions.children
                for rel, names in decisions.existing.items():
                    if rel not in no_content:
                        self._in_dir(tree, rel, names, children.get(rel, ()))
        if self.skipped:
            self.reporter.error(f"Deletions stopped due to --max-delete limit "
                                f"({self.skipped} skipped)", errors.MAX_DELETE)

    def _allowed(self) -> bool:
        """rsync's check before each directory: no deletions after the sender's I/O
        errors (said once) unless --ignore-errors. An unreadable file is known only
        after the transfer, when --delete-after looks; a listing error, with names
        announced, with the batch that brings the directory where it happened (the
        DIRNAMES frames before it say so), so --delete-during stops from that batch on,
        as rsync's from that directory on. rsync says it as an always-shown message
        (FINFO: on stdout, and in the log, unless -q), not as an error; the run still
        ends with 23."""
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
                keep: Container[bytes]) -> None:
        """Delete the entries of directory `rel` (`names`, as listed) that the file list
        does not bring there (`keep`; rsync's delete_in_dir): protected ones and mount
        points stay."""
        try:
            dfd = tree.dirfd(rel)
        except OSError:
            return
        if not self._fence.enter(dfd):
            return
        rules = self.rules
        state = rules.state(rel, tree.dirfd, dfd) if rules is not None else None
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

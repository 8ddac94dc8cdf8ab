"""The finalisation pass, after all data is in (and every hard link made: generator.py,
hardlinks.py): deletions (those their timing leaves until now, engine/deltiming.py),
then directory attributes
(post-order, so encdata goes on a directory after its entries exist).

It is separate from the copy pass so that a partitioned run can copy many
partitions first and finalise once: it reads only the Decisions the generator
handed on (merged, for several partitions), never the generator itself.
"""

from __future__ import annotations

import os

from fscsync.engine.rxstate import Decisions, locate
from fscsync.errors import DirEncdataUnsettable, OSFailed
from fscsync.fs import meta
from fscsync.fs.destfs import (
    in_use,
    remove_tree,
    sync_if_changed,
)
from fscsync.fs.meta import Target

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.engine.report import Reporter
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.fs.meta import IdMapper
    from fscsync.options import Options

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Finalizer:
    """Carries out Decisions at the destination; what it makes and deletes is counted
    in `stats`, what fails goes to `reporter`."""

    def __init__(self, opts: Options, ids: IdMapper, reporter: Reporter, stats: Stats,
                 single_name: bytes | None = None, since_ns: int = 0,
                 backups: Backups | None = None):
        """`single_name` as for rxstate.locate; `since_ns`: when the run started
        (--fsync syncs the directories changed since); `backups` keeps what is deleted
        or replaced (-b)."""
        self.backups = backups
        self.opts = opts
        self.ids = ids
        self.reporter = reporter
        self.stats = stats
        self.single_name = single_name
        self.since_ns = since_ns

    def run(self, tree: DestTree | None, decisions: Decisions) -> None:
        if tree is None:
            # A dry run into a destination that does not exist yet: nothing to delete,
            # but a walk with errors still earns its warning.
            self.deletions(tree, decisions)
            return
        self.deletions(tree, decisions)
        self.litter(tree, decisions.litter, decisions.incoming)
        self.directories(tree, decisions.dirs)
        if self.opts.fsync and not self.opts.dry_run:
            self.sync_directories(tree, decisions.dirs)

    def _locate(self, tree: DestTree, e) -> tuple[int, bytes]:
        return locate(tree, e, self.single_name)

    def _os_fail(self, e, what: str, exc: OSError) -> None:
        self.reporter.failed(OSFailed(what, e.path, exc))

    # ---- deletions ------------------------------------------------------------------

    def deletions(self, tree: DestTree | None, decisions: Decisions) -> None:
        """--delete-delay's and --delete-after's deletions (engine/deltiming.py)."""
        if decisions.deleter is not None:
            decisions.deleter.final(tree, decisions, self.reporter, self.stats)

    # ---- litter -------------------------------------------------------------------

    def litter(self, tree: DestTree, litter: dict[bytes, list[bytes]],
               incoming: dict[bytes, set[bytes]]) -> None:
        """Remove what killed runs left (temp files, uncommitted journals), now that the
        whole file list is known: a real file or directory that only looks like litter
        is in the list, and stays."""
        if self.opts.dry_run:
            return
        for rel, names in litter.items():
            keep = incoming.get(rel, set())
            try:
                dfd = tree.dirfd(rel)
            except OSError:
                continue
            for name in names:
                if name not in keep and not in_use(dfd, name):  # another run's: it stays
                    try:
                        remove_tree(dfd, name)
                    except OSError:
                        pass

    # ---- directories ---------------------------------------------------------------

    def directories(self, tree: DestTree, dirs: list) -> None:
        """Directory attributes, deepest first: times would change as entries are added,
        and encdata must go on after the entries exist."""
        if self.opts.dry_run:
            return
        for e, new in reversed(dirs):
            try:
                pfd, name = self._locate(tree, e)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd) if name else os.dup(pfd)
            except OSError as exc:
                self._os_fail(e, "open of directory", exc)
                continue
            try:
                meta.apply_attrs(self.opts, self.ids, e, Target(pfd, name, fd=fd), os.fstat(fd),
                                 new=new)
            except meta.EncdataConflict as exc:
                self.reporter.failed(DirEncdataUnsettable(path=e.path, reason=exc))
            except OSError as exc:
                self._os_fail(e, "setting attributes of", exc)
            finally:
                os.close(fd)


    def sync_directories(self, tree: DestTree, dirs: list) -> None:
        """--fsync: every directory this run changed, deepest first, once all entries
        and attributes are in place (after them all, so on ext4 the first fsync commits
        the journal for every directory and the rest find nothing left to commit)."""
        root_done = False
        for e, _ in reversed(dirs):
            try:
                pfd, name = self._locate(tree, e)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd) if name else os.dup(pfd)
            except OSError:
                continue  # reported by the attribute pass
            root_done = root_done or not name
            try:
                sync_if_changed(fd, self.since_ns)
            except OSError as exc:
                self._os_fail(e, "fsync of directory", exc)
            finally:
                os.close(fd)
        if not root_done:  # a one-file list, or names listed without their directory
            try:
                sync_if_changed(tree.root_fd, self.since_ns)
            except OSError as exc:
                self.reporter.failed(OSFailed("fsync of directory", b".", exc))

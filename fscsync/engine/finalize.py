"""The finalisation pass, after all data is in: hard links, deletions, then directory
attributes (post-order, so encdata goes on a directory after its entries exist).

It is separate from the copy pass so that a partitioned run can copy many
partitions first and finalise once: it reads only the Decisions the generator
handed on (merged, for several partitions), never the generator itself.
"""

from __future__ import annotations

import errno
import os
import stat

from fscsync import errors
from fscsync.engine import itemize
from fscsync.engine.flist import rel_dir
from fscsync.engine.rxstate import Decisions, locate
from fscsync.engine.stats import tally
from fscsync.errors import DirEncdataUnsettable, OSFailed, escape
from fscsync.fs import meta
from fscsync.fs.destfs import in_use, link_in, listdir, lstat_at, remove_tree, sync_if_changed
from fscsync.fs.meta import Target

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.engine.filters import DeleteFilter
    from fscsync.engine.report import Reporter
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.fs.meta import IdMapper
    from fscsync.options import Options

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def deletion_order(entries: list[tuple[bytes, os.stat_result]]
                   ) -> list[tuple[bytes, os.stat_result]]:
    """The order rsync deletes a directory's extraneous entries in (delete.c walks its
    sorted list from the end): directories first, then the rest, last name first;
    a directory's own contents go before it, in the same order."""
    return sorted(entries, key=lambda e: (stat.S_ISDIR(e[1].st_mode), e[0]), reverse=True)


class Finalizer:
    """Carries out Decisions at the destination; what it makes and deletes is counted
    in `stats`, what fails goes to `reporter`."""

    def __init__(self, opts: Options, ids: IdMapper, reporter: Reporter, stats: Stats,
                 io_error: bool = False, single_name: bytes | None = None,
                 since_ns: int = 0, backups: Backups | None = None):
        """`io_error`: the sender could not read all it was asked to (no deletions
        then); `single_name` as for rxstate.locate; `since_ns`: when the run started
        (--fsync syncs the directories changed since); `backups` keeps what is deleted
        or replaced (-b)."""
        self.backups = backups
        self.opts = opts
        self.ids = ids
        self.reporter = reporter
        self.stats = stats
        self.io_error = io_error
        self.single_name = single_name
        self.since_ns = since_ns

    def run(self, tree: DestTree | None, decisions: Decisions) -> None:
        if tree is None:
            # A dry run into a destination that does not exist yet: nothing to delete,
            # but a walk with errors still earns its warning.
            self._deletion_allowed()
            return
        self.hard_links(tree, decisions.links)
        self.deletions(tree, decisions)
        self.litter(tree, decisions.litter, decisions.incoming)
        self.directories(tree, decisions.dirs)
        if self.opts.fsync and not self.opts.dry_run:
            self.sync_directories(tree, decisions.dirs)

    def _locate(self, tree: DestTree, e) -> tuple[int, bytes]:
        return locate(tree, e, self.single_name)

    def _os_fail(self, e, what: str, exc: OSError) -> None:
        self.reporter.failed(OSFailed(what, e.path, exc))

    # ---- hard links ---------------------------------------------------------------

    def hard_links(self, tree: DestTree, links: list) -> None:
        for e, leader, leader_ok in links:
            if not leader_ok:
                self.reporter.error(f'cannot hard-link "{escape(e.path)}": '
                                    f'"{escape(leader.path)}" was not transferred')
                continue
            try:
                lfd, lname = self._locate(tree, leader)
                pfd, name = self._locate(tree, e)
                lst = lstat_at(lfd, lname) if not self.opts.dry_run else None
                st = lstat_at(pfd, name)
                if lst is not None and st is not None and (st.st_dev, st.st_ino) == (
                        lst.st_dev, lst.st_ino):
                    continue
                if st is None:
                    tally(self.stats.created, itemize.kind_name(e.mode))
                self._item_link(e, leader, new=st is None)
                if not self.opts.dry_run:
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        remove_tree(pfd, name, unlink=self._unlinker(e.path))
                    if self.backups is not None and st is not None:
                        self.backups.keep(pfd, name, e.path)
                    link_in(lfd, lname, pfd, name)
            except OSError as exc:
                self._os_fail(e, "hard-link of", exc)

    def _unlinker(self, path: bytes):
        """remove_tree's unlink for the subtree at `path`: into the backup, with -b."""
        keep = self.backups
        head = path.rpartition(b"/")[0]
        prefix = head + b"/" if head else b""
        return keep and (lambda fd, name, rel: keep.remove(fd, name, prefix + rel))

    def _item_link(self, e, leader, new: bool) -> None:
        if self.opts.itemize or self.opts.log_items:
            self.reporter.itemize(itemize.line("h", e, new=new,
                                               suffix=f" => {escape(leader.path)}"))
        if not self.opts.itemize and self.opts.verbose:
            self.reporter.info(f"{escape(e.path)} => {escape(leader.path)}", 1)

    # ---- deletions ------------------------------------------------------------------

    def _deletion_allowed(self) -> bool:
        if not self.opts.delete:
            return False
        if self.io_error:
            self.reporter.error("IO error encountered -- skipping file deletion", errors.PARTIAL)
            return False
        return True

    def deletions(self, tree: DestTree, decisions: Decisions) -> None:
        if not self._deletion_allowed():
            return
        rules = decisions.rules
        limit = self.opts.max_delete
        deleted = 0
        skipped = 0
        fence = _Fence(self.opts.one_file_system)
        no_content = {rel_dir(e) for e, _ in decisions.dirs if e.no_content}
        for rel, names in decisions.existing.items():
            if rel in no_content:
                continue
            keep = decisions.children.get(rel, set())
            try:
                dfd = tree.dirfd(rel)
            except OSError:
                continue
            if not fence.enter(dfd):
                continue
            state = rules.state(rel, tree.dirfd, dfd) if rules is not None else None
            gone = [(name, st) for name in set(names) - keep
                    if (st := lstat_at(dfd, name)) is not None]
            for name, st in deletion_order(gone):
                path = rel + b"/" + name if rel else name
                is_dir = stat.S_ISDIR(st.st_mode)
                if rules is not None and rules.protected(state, path, is_dir):
                    continue
                if is_dir and fence.mount_point(st, path, self.reporter):
                    continue
                if limit >= 0 and deleted >= limit:
                    skipped += 1
                    continue
                deleted += self._delete(tree, dfd, name, path, st, rules, state)
        if skipped:
            self.reporter.error(f"Deletions stopped due to --max-delete limit "
                                f"({skipped} skipped)", errors.MAX_DELETE)

    def _delete(self, tree: DestTree, dfd: int, name: bytes, path: bytes, st,
                rules: DeleteFilter | None = None, state=None) -> int:
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "reg"
        count = 0
        if stat.S_ISDIR(st.st_mode) and not self.opts.dry_run:
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except OSError as exc:
                self.reporter.failed(OSFailed("delete of", path, exc))
                return 0
            try:
                inner = rules.state_below(state, path, cfd) if rules is not None else None
                dev = os.fstat(cfd).st_dev if self.opts.one_file_system else None
                inside = [(child, cst) for child in listdir(cfd)
                          if (cst := lstat_at(cfd, child)) is not None]
                for child, cst in deletion_order(inside):
                    cpath = path + b"/" + child
                    if rules is not None and rules.protected(
                            inner, cpath, stat.S_ISDIR(cst.st_mode), perishable=False):
                        continue
                    if dev is not None and stat.S_ISDIR(cst.st_mode) and cst.st_dev != dev:
                        continue  # a mount point pins its parent
                    count += self._delete(tree, cfd, child, cpath, cst, rules, inner)
            finally:
                os.close(cfd)
        if not self.opts.dry_run:
            try:
                if stat.S_ISDIR(st.st_mode):
                    tree.forget(path)
                    os.rmdir(name, dir_fd=dfd)
                elif self.backups is not None:
                    self.backups.remove(dfd, name, path)
                else:
                    os.unlink(name, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    self.reporter.info(f"cannot delete non-empty directory: {escape(path)}", 0)
                    return count
                if exc.errno != errno.ENOENT:
                    self.reporter.failed(OSFailed("delete of", path, exc))
                    return count
        if self.opts.itemize or self.opts.log_items:
            self.reporter.itemize(itemize.deleting(path, stat.S_ISDIR(st.st_mode)))
        if not self.opts.itemize and self.opts.verbose:
            self.reporter.info(f"deleting {escape(path)}{'/' if kind == 'dir' else ''}", 1)
        tally(self.stats.deleted, kind)
        return count + 1

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


class _Fence:
    """-x on the receiver: no deletions inside a directory of another filesystem than
    the transfer's top one, and a mount point is never deleted (rsync's delete_in_dir)."""

    def __init__(self, level: int):
        self.level = level
        self.dev: int | None = None

    def enter(self, dfd: int) -> bool:
        if not self.level:
            return True
        dev = os.fstat(dfd).st_dev
        if self.dev is None:
            self.dev = dev
        return dev == self.dev

    def mount_point(self, st, path: bytes, reporter: Reporter) -> bool:
        if not self.level or st.st_dev == self.dev:
            return False
        if self.level == 1:
            reporter.info(f"cannot delete mount point: {escape(path)}", 2)
        return True

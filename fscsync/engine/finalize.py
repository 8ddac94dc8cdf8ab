"""The finalisation pass, after all data is in: hard links, deletions, then directory
attributes (post-order, so encdata goes on a directory after its entries exist).

It is separate from the copy pass so that a partitioned run can copy many
partitions first and finalise once.
"""

from __future__ import annotations

import errno
import os
import stat

from fscsync import errors
from fscsync.engine import itemize
from fscsync.engine.filters import Filters
from fscsync.errors import escape
from fscsync.fs import meta
from fscsync.fs.destfs import listdir, lstat_at, remove_tree, temp_name
from fscsync.fs.meta import Target

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.receiver import Receiver

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def deletion_order(entries: list[tuple[bytes, os.stat_result]]
                   ) -> list[tuple[bytes, os.stat_result]]:
    """The order rsync deletes a directory's extraneous entries in (delete.c walks its
    sorted list from the end): directories first, then the rest, last name first;
    a directory's own contents go before it, in the same order."""
    return sorted(entries, key=lambda e: (stat.S_ISDIR(e[1].st_mode), e[0]), reverse=True)


class Finalizer:
    def __init__(self, rx: Receiver):
        self.rx = rx
        self.opts = rx.opts
        self.gen = rx.generator

    def run(self) -> None:
        tree = self.rx.tree()
        if tree is None:
            # A dry run into a destination that does not exist yet: nothing to delete,
            # but a walk with errors still earns its warning.
            self._deletion_allowed()
            return
        try:
            self.hard_links(tree)
            self.deletions(tree)
            self.litter(tree)
            self.directories(tree)
        finally:
            tree.close()

    # ---- hard links ---------------------------------------------------------------

    def hard_links(self, tree) -> None:
        rx = self.rx
        for idx in self.gen.hardlinks:
            e = rx.entries[idx]
            leader = rx.entries[e.link]
            if rx.status[e.link] != 1:
                rx.fail(idx, f'cannot hard-link "{escape(e.path)}": '
                             f'"{escape(leader.path)}" was not transferred')
                continue
            try:
                lfd, lname = rx.locate(tree, leader)
                pfd, name = rx.locate(tree, e)
                lst = lstat_at(lfd, lname) if not self.opts.dry_run else None
                st = lstat_at(pfd, name)
                if lst is not None and st is not None and (st.st_dev, st.st_ino) == (
                        lst.st_dev, lst.st_ino):
                    rx.status[idx] = 1
                    continue
                if st is None:
                    self.gen._count_created(e)
                self._item_link(e, leader, new=st is None)
                if not self.opts.dry_run:
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        remove_tree(pfd, name)
                    tmp = temp_name(name)
                    try:  # the link inside: a signal just after it still removes it
                        os.link(lname, tmp, src_dir_fd=lfd, dst_dir_fd=pfd,
                                follow_symlinks=False)
                        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
                    except BaseException:
                        try:
                            os.unlink(tmp, dir_fd=pfd)
                        except OSError:
                            pass
                        raise
                rx.status[idx] = 1
            except OSError as exc:
                rx.os_fail(idx, "hard-link of", exc)

    def _item_link(self, e, leader, new: bool) -> None:
        if self.opts.itemize or self.opts.log_items:
            self.rx.reporter.itemize(itemize.line("h", e, new=new,
                                                  suffix=f" => {escape(leader.path)}"))
        if not self.opts.itemize and self.opts.verbose:
            self.rx.reporter.info(f"{escape(e.path)} => {escape(leader.path)}", 1)

    # ---- deletions ------------------------------------------------------------------

    def _deletion_allowed(self) -> bool:
        rx = self.rx
        if not self.opts.delete:
            return False
        if rx.io_error:
            rx.reporter.error("IO error encountered -- skipping file deletion", errors.PARTIAL)
            return False
        return True

    def deletions(self, tree) -> None:
        if not self._deletion_allowed():
            return
        rx = self.rx
        filters = Filters(self.opts.filter_rules)
        protect = bool(filters) and not self.opts.delete_excluded
        self._protected = (lambda path, is_dir: filters.excluded(path, is_dir)) if protect \
            else (lambda path, is_dir: False)
        limit = self.opts.max_delete
        deleted = 0
        skipped = 0
        for rel, names in self.gen.existing.items():
            keep = self.gen.children.get(rel, set())
            try:
                dfd = tree.dirfd(rel)
            except OSError:
                continue
            gone = [(name, st) for name in set(names) - keep
                    if (st := lstat_at(dfd, name)) is not None]
            for name, st in deletion_order(gone):
                path = rel + b"/" + name if rel else name
                is_dir = stat.S_ISDIR(st.st_mode)
                if self._protected(path, is_dir):
                    continue
                if limit >= 0 and deleted >= limit:
                    skipped += 1
                    continue
                deleted += self._delete(tree, dfd, name, path, st)
        if skipped:
            rx.reporter.error(f"Deletions stopped due to --max-delete limit "
                              f"({skipped} skipped)", errors.MAX_DELETE)

    def _delete(self, tree, dfd: int, name: bytes, path: bytes, st) -> int:
        rx = self.rx
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "reg"
        count = 0
        if stat.S_ISDIR(st.st_mode) and not self.opts.dry_run:
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except OSError as exc:
                rx.reporter.error(f'delete of "{escape(path)}" failed: {exc.strerror}')
                return 0
            try:
                inside = [(child, cst) for child in listdir(cfd)
                          if (cst := lstat_at(cfd, child)) is not None]
                for child, cst in deletion_order(inside):
                    cpath = path + b"/" + child
                    if self._protected(cpath, stat.S_ISDIR(cst.st_mode)):
                        continue
                    count += self._delete(tree, cfd, child, cpath, cst)
            finally:
                os.close(cfd)
        if not self.opts.dry_run:
            try:
                if stat.S_ISDIR(st.st_mode):
                    tree.forget(path)
                    os.rmdir(name, dir_fd=dfd)
                else:
                    os.unlink(name, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    rx.reporter.info(f"cannot delete non-empty directory: {escape(path)}", 0)
                    return count
                if exc.errno != errno.ENOENT:
                    rx.reporter.error(f'delete of "{escape(path)}" failed: {exc.strerror} '
                                      f"({exc.errno})")
                    return count
        if self.opts.itemize or self.opts.log_items:
            rx.reporter.itemize(itemize.deleting(path, stat.S_ISDIR(st.st_mode)))
        if not self.opts.itemize and self.opts.verbose:
            rx.reporter.info(f"deleting {escape(path)}{'/' if kind == 'dir' else ''}", 1)
        rx.stats.deleted[kind] = rx.stats.deleted.get(kind, 0) + 1
        return count + 1

    # ---- litter -------------------------------------------------------------------

    def litter(self, tree) -> None:
        """Remove what killed runs left (temp files, uncommitted journals), now that the
        whole file list is known: a real file or directory that only looks like litter
        is in the list, and stays."""
        if self.opts.dry_run:
            return
        for rel, names in self.gen.litter.items():
            keep = self.gen.incoming.get(rel, set())
            try:
                dfd = tree.dirfd(rel)
            except OSError:
                continue
            for name in names:
                if name not in keep:
                    try:
                        remove_tree(dfd, name)
                    except OSError:
                        pass

    # ---- directories ---------------------------------------------------------------

    def directories(self, tree) -> None:
        """Directory attributes, deepest first: times would change as entries are added,
        and encdata must go on after the entries exist."""
        rx = self.rx
        if self.opts.dry_run:
            return
        for idx, new in reversed(self.gen.dirs):
            if rx.status[idx] != 1:
                continue
            e = rx.entries[idx]
            try:
                pfd, name = rx.locate(tree, e)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd) if name else os.dup(pfd)
            except OSError as exc:
                rx.os_fail(idx, "open of directory", exc)
                continue
            try:
                meta.apply_attrs(self.opts, rx.ids, e, Target(pfd, name, fd=fd), os.fstat(fd),
                                 new=new)
            except meta.EncdataConflict as exc:
                rx.fail(idx, f'cannot set encdata on directory "{escape(e.path)}": '
                             f"{exc.strerror}")
            except OSError as exc:
                rx.os_fail(idx, "setting attributes of", exc)
            finally:
                os.close(fd)

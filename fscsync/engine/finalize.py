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
from fscsync.engine import filters, itemize
from fscsync.errors import escape
from fscsync.fs import meta
from fscsync.fs.destfs import listdir, lstat_at, remove_tree, temp_name
from fscsync.fs.meta import Target

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.receiver import Receiver

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
        rules = self.gen.delete_rules
        limit = self.opts.max_delete
        deleted = 0
        skipped = 0
        fence = _Fence(self.opts.one_file_system)
        no_content = {rx.rel_dir(rx.entries[idx]) for idx, _ in self.gen.dirs
                      if rx.entries[idx] is not None and rx.entries[idx].no_content}
        for rel, names in self.gen.existing.items():
            if rel in no_content:
                continue
            keep = self.gen.children.get(rel, set())
            try:
                dfd = tree.dirfd(rel)
            except OSError:
                continue
            if not fence.enter(dfd):
                continue
            state = rules.state(rel, tree.dirfd, dfd) if rules is not None else None
            for name in sorted(set(names) - keep):
                path = rel + b"/" + name if rel else name
                st = lstat_at(dfd, name)
                if st is None:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if rules is not None and rules.protected(state, path, is_dir):
                    continue
                if is_dir and fence.mount_point(st, path, rx.reporter):
                    continue
                if limit >= 0 and deleted >= limit:
                    skipped += 1
                    continue
                deleted += self._delete(tree, dfd, name, path, st, rules, state)
        if skipped:
            rx.reporter.error(f"Deletions stopped due to --max-delete limit "
                              f"({skipped} skipped)", errors.MAX_DELETE)

    def _delete(self, tree, dfd: int, name: bytes, path: bytes, st,
                rules: filters.DeleteFilter | None = None, state=None) -> int:
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
                inner = rules.state_below(state, path, cfd) if rules is not None else None
                dev = os.fstat(cfd).st_dev if self.opts.one_file_system else None
                for child in sorted(listdir(cfd), reverse=True):
                    cst = lstat_at(cfd, child)
                    cpath = path + b"/" + child
                    if cst is None or (rules is not None and rules.protected(
                            inner, cpath, stat.S_ISDIR(cst.st_mode), perishable=False)):
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

    def mount_point(self, st, path: bytes, reporter) -> bool:
        if not self.level or st.st_dev == self.dev:
            return False
        if self.level == 1:
            reporter.info(f"cannot delete mount point: {escape(path)}", 1)
        return True

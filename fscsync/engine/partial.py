"""--partial-dir and --delay-updates: where a file's data waits that is not (yet) to
stand under its final name.

rsync's partial_dir_fname/handle_partial_dir, on directory fds. A relative DIR lies
in each file's own directory (made when a file needs it, removed again once empty);
an absolute one holds the waiting files of every directory by name. An interrupted
file's data is moved there instead of over the previous copy; the next run finds it
and uses it as the delta basis, so only what is missing travels, and removes it
once the file is in place. With --delay-updates every finished file is moved there
and renamed into its final place only when all data is in (`commit`).

It knows directories and names only: the writer and the generator say when.
"""

from __future__ import annotations

import errno
import os
import stat

from fscsync.engine.rxstate import BasisAt
from fscsync.fs.destfs import lstat_at, remove_tree, rename_over

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.fs.destfs import Confined
    from fscsync.options import Options

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PartialDirs:
    """The partial directory of one receiving run. Directory fds it hands out (the
    second member of a location) stay open until close()."""

    def __init__(self, opts: Options, confined: Confined | None = None):
        """`confined`: a --restrict-to server's tree, through which an absolute DIR is
        opened."""
        self.opts = opts
        self.confined = confined
        self.dir = opts.partial_dir
        self.absolute = self.dir.startswith(b"/")
        self._fds: dict[tuple[int, int], int] = {}  # (dev, ino) of a parent -> its DIR
        self._abs_fd: int | None = None
        self.delayed: list[tuple[int, bytes, bytes, int]] = []  # (parent fd, name, path, idx)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._abs_fd is not None:
            os.close(self._abs_fd)
            self._abs_fd = None

    def _dir_fd(self, pfd: int, make: bool) -> int | None:
        """fd of the partial directory for files of directory `pfd` (made if `make`;
        only its last component, as rsync, and anything but a directory in its way
        goes); None if it does not exist."""
        if self.absolute:
            if self._abs_fd is None:
                head, last = os.path.split(self.dir)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                base = (os.open(head, flags) if self.confined is None
                        else self.confined.open(head, flags))
                self._abs_fd = self._open(base, last, make)
            return self._abs_fd
        st = os.fstat(pfd)
        key = (st.st_dev, st.st_ino)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._open(os.dup(pfd), self.dir, make)
            if fd is not None:
                self._fds[key] = fd
        return fd

    @staticmethod
    def _open(base: int, rel: bytes, make: bool) -> int | None:
        """Open `rel` below `base` (which this closes), making its last part if asked."""
        head, _, last = rel.rpartition(b"/")
        try:
            fd = base
            for part in [p for p in head.split(b"/") if p]:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            st = lstat_at(fd, last)
            if st is not None and not stat.S_ISDIR(st.st_mode) and make:
                os.unlink(last, dir_fd=fd)
                st = None
            if st is None:
                if not make:
                    return None
                os.mkdir(last, 0o700, dir_fd=fd)
            return os.open(last, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if make:
                raise
            return None
        finally:
            os.close(fd)

    # ---- a partial file as the next run's basis -------------------------------------

    def find(self, pfd: int, name: bytes) -> BasisAt | None:
        """Where a partial file waiting for `name` of `pfd` is: the basis of its
        request (plain data as written, ciphertext for an encrypted entry: a partial
        file never has encdata)."""
        try:
            dfd = self._dir_fd(pfd, make=False)
        except OSError:
            return None
        if dfd is None:
            return None
        st = lstat_at(dfd, name)
        return BasisAt(dfd, name, partial=True) if st is not None and stat.S_ISREG(
            st.st_mode) else None

    def drop(self, at: BasisAt) -> None:
        """The file is in place: its partial file goes, and a relative partial
        directory left empty with it."""
        try:
            os.unlink(at.name, dir_fd=at.dirfd)
        except FileNotFoundError:
            pass
        if not self.absolute:
            self._remove_if_empty(at.dirfd)

    def _remove_if_empty(self, dfd: int) -> None:
        for key, fd in list(self._fds.items()):
            if fd != dfd:
                continue
            try:
                if os.listdir(b"/proc/self/fd/%d" % fd):
                    return
                parent = os.open(b"..", _DIR_FLAGS, dir_fd=fd)
                try:
                    os.rmdir(os.path.basename(self.dir), dir_fd=parent)
                finally:
                    os.close(parent)
            except OSError:
                return
            del self._fds[key]
            os.close(fd)

    # ---- moving finished or interrupted data there ------------------------------------

    def keep(self, tmpdir: int, tmpname: bytes, pfd: int, name: bytes) -> None:
        """Move a temp file into the partial directory, as the partial file of `name`
        (an older one there is replaced)."""
        dfd = self._dir_fd(pfd, make=True)
        try:
            os.rename(tmpname, name, src_dir_fd=tmpdir, dst_dir_fd=dfd)
        except IsADirectoryError:
            remove_tree(dfd, name)
            os.rename(tmpname, name, src_dir_fd=tmpdir, dst_dir_fd=dfd)

    def delay(self, tmpdir: int, tmpname: bytes, pfd: int, name: bytes, path: bytes,
              idx: int) -> None:
        """--delay-updates: finished file `idx` waits in the partial directory."""
        self.keep(tmpdir, tmpname, pfd, name)
        self.delayed.append((os.dup(pfd), name, path, idx))

    def commit(self, backups: Backups | None, failed) -> list[tuple[int, os.stat_result]]:
        """Rename every delayed file into its place, one after another (after its
        backup, with -b); failed(path, what, exc) hears of each that cannot be. The
        (index, stat) of each one put in place."""
        done = []
        for pfd, name, path, idx in self.delayed:
            try:
                dfd = self._dir_fd(pfd, make=False)
                if dfd is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                if backups is not None:
                    backups.keep(pfd, name, path)
                rename_over(dfd, name, pfd, name)
                done.append((idx, lstat_at(pfd, name)))
                if not self.absolute:
                    self._remove_if_empty(dfd)
            except OSError as exc:
                failed(path, "rename of", exc)
            finally:
                os.close(pfd)
        self.delayed.clear()
        return done

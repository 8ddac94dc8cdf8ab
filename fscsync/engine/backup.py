"""-b/--backup, --backup-dir and --suffix: what a run replaces or deletes is kept.

rsync's backup.c, on directory fds. A file about to be replaced is hard-linked to
its backup name first (the old copy stays in place until the new one is renamed
over it; across filesystems a regular file is renamed, anything else copied); a
file about to be deleted is renamed there. Either way the backup is the old inode
itself, so its data, mode, owners, times, xattrs and stored encdata (an encrypted
file of the plain-filesystem layout stays a valid encrypted file) are kept as they
were. Directories are never backed up themselves: their files are, and the
directories of a backup path are made in the backup tree with the attributes of
the destination's own directories (rsync's copy_valid_path).

It owns the backup tree and nothing else: callers (the writer's install, the
generator's making way and placing, the finaliser's deletions, remove_tree) hand
it an entry just before they replace or remove it.
"""

from __future__ import annotations

import errno
import os
import stat

import xattr

from fscsync.engine.flist import unsafe_link
from fscsync.errors import BackupDirNotDirectory, escape
from fscsync.fs import cipher, meta
from fscsync.fs.destfs import DestTree, RemoveHooks, lstat_at, remove_tree, temp_dir_path
from fscsync.fs.fileio import copy_file

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.report import Reporter
    from fscsync.fs.destfs import Confined
    from fscsync.options import Options

DEFAULT_SUFFIX = b"~"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def suffix_of(opts: Options) -> bytes:
    """rsync's default suffix: "~" without --backup-dir, none with it."""
    if opts.backup_suffix is not None:
        return opts.backup_suffix
    return b"" if opts.backup_dir else DEFAULT_SUFFIX


def protect_rules(opts: Options) -> list[bytes]:
    """The filter rules --backup adds at the end of the run's rules, so --delete
    keeps what earlier runs backed up: rsync's `P *~` (the suffix) without a backup
    directory, unless --delete-excluded; with one inside the destination (a relative
    DIR that stays inside), that directory (rsync 3.5.0 would instead back its
    contents up into DIR/DIR/... and report it as not empty)."""
    if not opts.backup or not opts.delete:
        return []
    if not opts.backup_dir:
        return [] if opts.delete_excluded else [b"P *" + suffix_of(opts)]
    parts = [p for p in opts.backup_dir.split(b"/") if p not in (b"", b".")]
    if opts.backup_dir.startswith(b"/") or not parts or b".." in parts:
        return []
    return [b"P /" + b"/".join(parts) + b"/"]


class Backups:
    """The backup tree of one receiving run. `root_fd` is the destination directory
    (the base of entry paths and of a relative --backup-dir)."""

    def __init__(self, opts: Options, reporter: Reporter, root_fd: int,
                 confined: Confined | None = None, root_path: bytes = b""):
        """`confined`: a --restrict-to server's tree, through which an absolute or
        climbing --backup-dir is opened (`root_path` is the destination's path)."""
        self.opts = opts
        self.reporter = reporter
        self.suffix = suffix_of(opts)
        self._root_fd = root_fd
        self._confined = confined
        self._root_path = root_path
        self._tree: DestTree | None = None  # the backup directory's, once made
        if opts.backup_dir:
            self._announce(opts.backup_dir.rstrip(b"/") or b"/")

    def _announce(self, path: bytes) -> None:
        """rsync's check of the backup directory before any file comes (-vv names it)."""
        try:
            st = os.stat(path, dir_fd=self._root_fd)
        except FileNotFoundError:
            self.reporter.info(f"(new) backup_dir is {escape(path)}", 2)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise BackupDirNotDirectory(path=path)
        self.reporter.info(f"backup_dir is {escape(path)}", 2)

    def close(self) -> None:
        if self._tree is not None:
            self._tree.close()
            os.close(self._tree.root_fd)
            self._tree = None

    # ---- the two hooks ---------------------------------------------------------------

    def keep(self, pfd: int, name: bytes, path: bytes) -> None:
        """Back up the entry `path` at (pfd, name) that is about to be replaced: it
        stays in place (hard-linked) where it can. OSError if it cannot be kept: the
        caller then must not replace it."""
        self._backup(pfd, name, path, move=False)

    def remove(self, pfd: int, name: bytes, path: bytes) -> None:
        """Delete a non-directory by moving it into the backup (--delete, making way).
        Without a backup directory, a file that already bears the suffix is simply
        deleted, as rsync does."""
        if not self.opts.backup_dir and self.suffix and name.endswith(self.suffix):
            os.unlink(name, dir_fd=pfd)
            return
        if self._backup(pfd, name, path, move=True):
            os.unlink(name, dir_fd=pfd)

    # ---- rsync's make_backup --------------------------------------------------------

    def _backup(self, pfd: int, name: bytes, path: bytes, move: bool) -> bool:
        """Put the entry at its backup name; True when the original is still there
        (linked or copied, not moved)."""
        st = lstat_at(pfd, name)
        if st is None:
            return False
        if stat.S_ISDIR(st.st_mode):
            return True
        bfd, bname, shown = self._where(pfd, path)
        if stat.S_ISLNK(st.st_mode) and self.opts.safe_links and unsafe_link(
                os.readlink(name, dir_fd=pfd), path):
            self.reporter.info(f'not backing up unsafe symlink "{escape(path)}"', 1)
            return True
        try:
            kept = self._link_or_rename(pfd, name, bfd, bname, st, move)
        except (FileExistsError, IsADirectoryError):
            self._clear(bfd, bname, path)
            kept = self._link_or_rename(pfd, name, bfd, bname, st, move)
        if kept is None:
            self._copy(pfd, name, bfd, bname, st)
            kept = True
        self.reporter.info(f"backed up {escape(path)} to {escape(shown)}", 2)
        return kept

    @staticmethod
    def _link_or_rename(pfd: int, name: bytes, bfd: int, bname: bytes, st,
                        move: bool) -> bool | None:
        """A deletion renames; a replacement hard-links, or renames a regular file the
        link could not reach (another filesystem). True: the original is still there,
        False: it moved, None: neither worked (copy it)."""
        if not move:
            try:
                os.link(name, bname, src_dir_fd=pfd, dst_dir_fd=bfd, follow_symlinks=False)
                return True
            except (FileExistsError, IsADirectoryError):
                raise
            except OSError:
                if not stat.S_ISREG(st.st_mode):
                    return None
        try:
            os.rename(name, bname, src_dir_fd=pfd, dst_dir_fd=bfd)
        except (FileExistsError, IsADirectoryError):
            raise
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return None
        return False

    def _clear(self, bfd: int, bname: bytes, path: bytes) -> None:
        """An older backup (or anything else) where this one goes: removed."""
        remove_tree(bfd, bname)
        if self._tree is not None:
            self._tree.forget(path + self.suffix)

    def _where(self, pfd: int, path: bytes) -> tuple[int, bytes, bytes]:
        """(directory fd, name, the path shown) of the backup of `path`, whose
        directory at the destination is `pfd`."""
        head, _, name = path.rpartition(b"/")
        bname = name + self.suffix
        if not self.opts.backup_dir:
            return pfd, bname, path + self.suffix
        shown = self.opts.backup_dir.rstrip(b"/") + b"/" + path + self.suffix
        return self._backup_dir(head), bname, shown

    def _backup_dir(self, rel: bytes) -> int:
        """fd of directory `rel` in the backup tree, made (with the attributes of the
        destination's `rel`) where missing; anything else in its way goes."""
        tree = self._tree or self._open_root()
        try:
            return tree.dirfd(rel)
        except (FileNotFoundError, NotADirectoryError):
            pass
        fd = tree.root_fd
        done = b""
        for part in rel.split(b"/"):
            done = done + b"/" + part if done else part
            st = lstat_at(fd, part)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                remove_tree(fd, part)
                st = None
            if st is None:
                os.mkdir(part, 0o700, dir_fd=fd)
                tree.forget(done)
                self._dir_attrs(done, fd, part)
            fd = tree.dirfd(done)
        return fd

    def _open_root(self) -> DestTree:
        """Open --backup-dir (relative to the destination), making it as mkdir -p."""
        path = self.opts.backup_dir
        if self._confined is not None:
            self._tree = DestTree(self._confined_root(temp_dir_path(self._root_path, path)))
            return self._tree
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)
        except FileNotFoundError:
            base = self._root_fd
            if path.startswith(b"/"):
                base = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = _make_path(base, path.lstrip(b"/"))
            finally:
                if base != self._root_fd:
                    os.close(base)
        self._tree = DestTree(fd)
        return self._tree

    def _confined_root(self, path: bytes) -> int:
        """mkdir -p and open of the backup directory, every step inside --restrict-to's
        tree with no symlink followed."""
        fs = self._confined
        missing = []
        while True:
            try:
                fs.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
        for path in reversed(missing):
            fs.mkdir(path, 0o777)
        return fs.open(missing[0] if missing else path, os.O_RDONLY | os.O_DIRECTORY)

    # ---- attributes and copies ---------------------------------------------------------

    def _dir_attrs(self, rel: bytes, bfd: int, bname: bytes) -> None:
        """A new backup directory gets the attributes of the destination's `rel`."""
        try:
            src = _walk(self._root_fd, rel)
        except OSError:
            return
        try:
            fd = os.open(bname, _DIR_FLAGS, dir_fd=bfd)
            try:
                self._attrs(src, fd, os.fstat(src))
            finally:
                os.close(fd)
        finally:
            os.close(src)

    def _attrs(self, src: int | bytes, dst: int | bytes, st: os.stat_result) -> None:
        """Copy what the run preserves (owner, mode, xattrs, stored encdata, mtime) from
        one inode to another, each given as an fd or a /proc path not followed."""
        opts = self.opts
        nofollow = not isinstance(src, int)
        if (opts.owner and meta.IS_ROOT) or opts.group:
            os.chown(dst, st.st_uid if opts.owner and meta.IS_ROOT else -1,
                     st.st_gid if opts.group else -1, follow_symlinks=not nofollow)
        if opts.perms and not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        wanted = meta.xattr_wanted(opts)
        stored = cipher.encdata_names(opts.encdata_xattr)
        for xname, value in meta.read_xattrs(src):
            if wanted(xname) or xname in stored:
                xattr.set(dst, xname, value, nofollow=nofollow)
        if opts.keeps_time(st.st_mode):
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not nofollow)

    def _copy(self, pfd: int, name: bytes, bfd: int, bname: bytes, st) -> None:
        """The last resort (a backup directory on another filesystem): a copy of the
        entry, with its attributes."""
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFLNK:
            os.symlink(os.readlink(name, dir_fd=pfd), bname, dir_fd=bfd)
        elif fmt == stat.S_IFREG:
            self._copy_data(pfd, name, bfd, bname, st)
            return
        else:
            os.mknod(bname, st.st_mode, st.st_rdev, dir_fd=bfd)
        src = b"/proc/self/fd/%d/%s" % (pfd, name)
        self._attrs(src, b"/proc/self/fd/%d/%s" % (bfd, bname), st)

    def _copy_data(self, pfd: int, name: bytes, bfd: int, bname: bytes, st) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            dst = os.open(bname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=bfd)
            try:
                copy_file(src, dst, st.st_size)
                self._attrs(src, dst, st)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def copy(self, pfd: int, name: bytes, path: bytes) -> None:
        """--inplace: the file is about to be overwritten where it is, so its backup
        is a copy (rsync's back_file)."""
        st = lstat_at(pfd, name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return
        bfd, bname, shown = self._where(pfd, path)
        if lstat_at(bfd, bname) is not None:
            self._clear(bfd, bname, path)
        self._copy_data(pfd, name, bfd, bname, st)
        self.reporter.info(f"backed up {escape(path)} to {escape(shown)}", 2)


def _walk(root_fd: int, rel: bytes) -> int:
    """A new fd of directory `rel` below root_fd, no symlink followed."""
    fd = os.dup(root_fd)
    for part in rel.split(b"/") if rel else []:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _make_path(base: int, path: bytes) -> int:
    """mkdir -p of `path` below `base`; the fd of its last directory."""
    fd = os.dup(base)
    try:
        for part in [p for p in path.split(b"/") if p]:
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


class Removal(RemoveHooks):
    """remove_tree's plain hooks, but with -b each non-directory goes into the backup
    instead (rsync's delete_item): the one place that chooses between the two, for
    deletions, making way and the final pass alike."""

    def __init__(self, backups: Backups | None):
        self.backups = backups

    def unlink(self, dirfd: int, name: bytes, rel: bytes) -> None:
        if self.backups is not None:
            self.backups.remove(dirfd, name, rel)
        else:
            os.unlink(name, dir_fd=dirfd)

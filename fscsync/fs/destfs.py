"""Safe operations on the destination tree, all relative to directory fds.

The receiver never resolves a destination path through a symlink: every
directory is opened component by component with O_NOFOLLOW, and every change
is made with *at() calls on the parent's fd. A symlink planted (or received)
where a directory should be therefore stops the entry instead of redirecting it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from collections import OrderedDict

from fscsync.errors import ProtocolError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_MARK = b".~fscsync~"
TEMP_RE = re.compile(rb"\..*\.~fscsync~[A-Za-z0-9]{6}", re.DOTALL)
_UNSAFE = re.compile(rb"\x00|\A/|//|/\Z|(?:\A|/)\.\.?(?:/|\Z)")
"""A NUL, an absolute path, or an empty, "." or ".." component."""
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_ALNUM = bytes(_ALNUM[b % 62] for b in range(256))


def check_path(path: bytes) -> None:
    """Refuse entry paths that could leave the destination (the peer is not trusted)."""
    if path == b".":
        return
    if not path or len(path) > 4096 or _UNSAFE.search(path) is not None:
        raise ProtocolError(f"unsafe path in file list: {path[:100]!r}")


def check_paths(paths: list[bytes]) -> None:
    """check_path for a file-list batch, in a few scans instead of a match per path.

    Between the slashes of "/" + "/".join(paths) + "/" lie exactly the components of
    all the paths, so a bad path (empty, absolute, ending in "/", or with an empty,
    "." or ".." component) shows there as "//", "/./" or "/../", and good ones never
    do. Any finding goes through check_path one by one, which names the bad path; so
    does a batch with "." anywhere but first (where the root entry comes)."""
    if paths and paths[0] == b".":
        paths = paths[1:]
    joined = b"/" + b"/".join(paths) + b"/"
    if (b"//" in joined or b"/./" in joined or b"/../" in joined or b"\0" in joined
            or max(map(len, paths), default=0) > 4096):
        for path in paths:
            check_path(path)


_random = bytearray()
os.register_at_fork(after_in_child=_random.clear)  # a forked peer draws its own


def temp_name(name: bytes) -> bytes:
    """A hidden sibling name for a file being built, recognisable for cleanup."""
    if len(_random) < 6:
        _random[:] = os.urandom(6 << 10)  # one getrandom per thousand names
    suffix = TEMP_MARK + _random[-6:].translate(_TO_ALNUM)
    del _random[-6:]
    room = 255 - 1 - len(suffix)
    return b"." + name[:room] + suffix


def is_temp_name(name: bytes) -> bool:
    return TEMP_RE.fullmatch(name) is not None


def open_temp(dirfd: int, tmpname: bytes, mode: int = 0o600) -> int:
    """Create a temp file for writing and hold an exclusive flock on it for as long as
    the fd stays open: another run into the same directory (two overlapping cron
    jobs) then sees it is in use and leaves it, where it would remove a killed run's.
    `mode` (less the umask) is what it is created with; see temp_mode."""
    fd = os.open(tmpname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dirfd)
    lock(fd)
    return fd


def temp_mode(final: int | None) -> int:
    """The mode a temp file is created with when it will end with `final`: that one
    where no chmod is then needed, but never writable by group or others, never
    set-id or sticky (before its chown and verification), always readable and
    writable by its owner (it is re-read to verify it)."""
    if final is None:
        return 0o600
    return final & 0o755 | 0o600


def lock(fd: int) -> None:
    """The exclusive flock that marks a temp file or journal as this run's."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a filesystem without flock: cleanup then works as before
        pass


def in_use(dirfd: int, name: bytes) -> bool:
    """Whether a regular file named like our temp files is held by a running fscsync
    (open_temp's flock), so that it is not litter; other kinds never are held."""
    try:
        st = lstat_at(dirfd, name)
    except OSError:
        return False
    if st is None or not stat.S_ISREG(st.st_mode):  # never open a device to look
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:  # gone, replaced by a symlink, or unreadable
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def proc_path(dirfd: int, name: bytes) -> bytes:
    """A path naming `name` inside an open directory, for calls without an *at form
    (xattrs on symlinks and special files); the last component is not followed."""
    return b"/proc/self/fd/%d/%s" % (dirfd, name)


class DestTree:
    """Directory fds under one destination root, opened safely and cached."""

    def __init__(self, root_fd: int, cache: int = 128):
        self.root_fd = root_fd
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._limit = cache
        self._last = (b"", root_fd)  # entries come directory by directory

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        self._last = (b"", self.root_fd)

    def dirfd(self, rel: bytes) -> int:
        """fd of directory `rel` (b"" = the root), never following a symlink."""
        if rel == self._last[0]:
            return self._last[1]
        if not rel:
            return self.root_fd
        fd = self._cache.get(rel)
        if fd is not None:
            self._cache.move_to_end(rel)
            self._last = (rel, fd)
            return fd
        head, _, name = rel.rpartition(b"/")
        parent = self.dirfd(head)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._cache[rel] = fd
        if len(self._cache) > self._limit:
            os.close(self._cache.popitem(last=False)[1])
        self._last = (rel, fd)
        return fd

    def forget(self, rel: bytes) -> None:
        """Drop cached fds at and below rel (it was removed or replaced)."""
        self._last = (b"", self.root_fd)
        for key in [k for k in self._cache if k == rel or k.startswith(rel + b"/")]:
            os.close(self._cache.pop(key))


def place(dirfd: int, name: bytes, make) -> None:
    """make(tmp) an entry under a temp name in dirfd, then rename it over `name` (what
    is there is replaced in one step). The temp entry is made inside the try: one a
    failure or a signal leaves half made is removed."""
    tmp = temp_name(name)
    try:
        make(tmp)
        rename_over(dirfd, tmp, dirfd, name)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise


def rename_over(src_dir: int, src: bytes, dirfd: int, name: bytes) -> None:
    """Rename src (in src_dir) over `name` in dirfd; an empty directory in the way goes
    first (rename puts no other kind over one, and a non-empty one stays)."""
    try:
        os.rename(src, name, src_dir_fd=src_dir, dst_dir_fd=dirfd)
    except IsADirectoryError:
        os.rmdir(name, dir_fd=dirfd)
        os.rename(src, name, src_dir_fd=src_dir, dst_dir_fd=dirfd)


def link_in(src_dir: int, src_name: bytes, dirfd: int, name: bytes, free: bool = False) -> None:
    """Hard-link src_name (in src_dir) as `name` in dirfd, replacing what is there (by
    place()); never follows a symlink at either end. `free`: nothing was there, so the
    link goes straight to its name (a rename less), unless something has appeared."""
    def link(to: bytes) -> None:
        os.link(src_name, to, src_dir_fd=src_dir, dst_dir_fd=dirfd, follow_symlinks=False)

    if free:
        try:
            link(name)
            return
        except FileExistsError:
            pass
    place(dirfd, name, link)


def listdir(dirfd: int) -> list[bytes]:
    """Names in an open directory, as bytes (os.listdir on an fd gives str, and
    encoding each name back costs more than the listing)."""
    return os.listdir(b"/proc/self/fd/%d" % dirfd)


def lstat_at(dirfd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def deletion_order(entries: list[tuple[bytes, os.stat_result]]
                   ) -> list[tuple[bytes, os.stat_result]]:
    """The order rsync deletes a directory's entries in (delete.c walks its sorted list
    from the end): directories first, then the rest, last name first."""
    return sorted(entries, key=lambda e: (stat.S_ISDIR(e[1].st_mode), e[0]), reverse=True)


class RemoveHooks:
    """What remove_tree asks and tells as it goes; this plain form keeps nothing back
    and raises every error. The engine's deleter (engine/deltiming.py) answers with
    the run's filter rules, -x fences, --max-delete and its itemize lines.

    `ctx` is whatever enter() made of a directory (the filter state inside it)."""

    dry_run = False

    def enter(self, ctx, rel: bytes, fd: int):
        """The context for the entries of directory `rel`, open as fd."""
        return ctx

    def keep(self, ctx, rel: bytes, st: os.stat_result) -> bool:
        """True: leave entry `rel` in place (and so the directories above it)."""
        return False

    def stop(self, rel: bytes, st: os.stat_result) -> bool:
        """Asked just before `rel` itself goes (a directory after its contents): True
        leaves it (rsync's --max-delete checks there)."""
        return False

    def unlink(self, dirfd: int, name: bytes, rel: bytes) -> None:
        """Remove a non-directory (a backup may take it instead)."""
        os.unlink(name, dir_fd=dirfd)

    def removed(self, rel: bytes, st: os.stat_result) -> None:
        """Entry `rel` is gone (a dry run: would be); children before their directory."""

    def not_empty(self, rel: bytes) -> None:
        """Directory `rel` stays: something in it was kept or failed."""

    def failed(self, rel: bytes, exc: OSError) -> None:
        raise exc


_PLAIN = RemoveHooks()


def remove_tree(dirfd: int, name: bytes, hooks: RemoveHooks = _PLAIN, *, rel: bytes = b"",
                st: os.stat_result | None = None, ctx=None, _top: bool = True) -> bool:
    """rm -r of one entry inside dirfd, never following symlinks, in rsync's order
    (deletion_order; a directory's contents before it); the run's one deleter. `rel`
    names the entry to the hooks (default: name), `st` is its lstat if known, `ctx`
    the context of the directory it is in. True when the entry is gone (or was gone
    already).

    A directory below the top whose contents stay is still tried, as rsync's
    delete_dir_contents does: counted against the limit, then "not empty" again (and,
    in a dry run, reported as deleted)."""
    rel = rel or name
    if st is None:
        st = lstat_at(dirfd, name)
        if st is None:
            return True
    try:
        if stat.S_ISDIR(st.st_mode):
            if not _remove_contents(dirfd, name, hooks, rel, ctx):
                hooks.not_empty(rel)
                if _top:
                    return False
            if hooks.stop(rel, st):
                return False
            if not hooks.dry_run:
                os.rmdir(name, dir_fd=dirfd)
        else:
            if hooks.stop(rel, st):
                return False
            if not hooks.dry_run:
                hooks.unlink(dirfd, name, rel)
    except FileNotFoundError:
        return True  # gone meanwhile: not ours to report
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            hooks.not_empty(rel)
        else:
            hooks.failed(rel, exc)
        return False
    hooks.removed(rel, st)
    return True


def _remove_contents(dirfd: int, name: bytes, hooks: RemoveHooks, rel: bytes, ctx) -> bool:
    """Remove what directory `name` holds; False when anything stays."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
    try:
        inner = hooks.enter(ctx, rel, fd)
        children = [(child, cst) for child in listdir(fd)
                    if (cst := lstat_at(fd, child)) is not None]
        empty = True
        for child, cst in deletion_order(children):
            crel = rel + b"/" + child
            if hooks.keep(inner, crel, cst) or not remove_tree(
                    fd, child, hooks, rel=crel, st=cst, ctx=inner, _top=False):
                empty = False
        return empty
    finally:
        os.close(fd)


_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Confined:
    """--restrict-to's tree, opened once. Every path a client names is walked from that
    fd with no symlink followed (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or a walk
    of O_NOFOLLOW opens where the kernel lacks openat2) and never resolved by name again:
    a symlink planted after the check cannot lead a read or a write outside."""

    def __init__(self, root: bytes):
        self.root = os.path.abspath(root)
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._openat2 = _openat2_call()

    def rel(self, path: bytes) -> bytes | None:
        """path relative to the root (b"." for the root), or None if it lies outside;
        ".." is taken lexically, as the walk below never follows a symlink anyway."""
        real = os.path.abspath(path)
        if real == self.root:
            return b"."
        base = self.root.rstrip(b"/") + b"/"
        return real[len(base):] if real.startswith(base) else None

    def inside(self, path: bytes) -> bool:
        """Under the root, with no symlink on the way through the part that exists (the
        check at setup, for a clear refusal; every later open is confined itself)."""
        rel = self.rel(path)
        if rel is None:
            return False
        fd = os.dup(self.fd)
        try:
            for name in (rel.split(b"/") if rel != b"." else []):
                try:
                    child = os.open(name, _PATH_FLAGS, dir_fd=fd)
                except OSError:
                    return True  # the rest does not exist (yet): made under the root
                os.close(fd)
                fd = child
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    return False
            return True
        finally:
            os.close(fd)

    def open(self, path: bytes, flags: int, mode: int = 0o777) -> int:
        """Open a path of the tree; refused (EXDEV) if it lies outside, ELOOP if any
        component is a symlink (a trailing one is returned with O_PATH|O_NOFOLLOW)."""
        rel = self.rel(path)
        if rel is None:
            raise OSError(errno.EXDEV, "outside the allowed tree (--restrict-to)")
        flags |= os.O_CLOEXEC
        if self._openat2 is not None:
            try:
                return self._openat2(self.fd, rel, flags, mode)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                self._openat2 = None
        return _walk_open(self.fd, rel, flags, mode)

    def at(self, path: bytes) -> tuple[int, bytes]:
        """(an fd of path's parent directory, its last component) for *at() calls; the
        caller closes the fd."""
        head, _, name = os.path.abspath(path).rpartition(b"/")
        return self.open(head or b"/", os.O_PATH | os.O_DIRECTORY), name

    def stat(self, path: bytes) -> os.stat_result:
        """lstat of a path of the tree, reached with no symlink followed."""
        fd = self.open(path, _PATH_FLAGS)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: bytes, mode: int) -> None:
        pfd, name = self.at(path)
        try:
            os.mkdir(name, mode, dir_fd=pfd)
        finally:
            os.close(pfd)


def _walk_open(dirfd: int, rel: bytes, flags: int, mode: int) -> int:
    """openat2's confinement by hand: one O_NOFOLLOW open per component."""
    if rel == b".":
        return os.open(b".", flags, mode, dir_fd=dirfd)
    names = rel.split(b"/")
    fd = os.dup(dirfd)
    try:
        for name in names[:-1]:
            child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
        got = os.open(names[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
    finally:
        os.close(fd)
    if not flags & os.O_PATH and stat.S_ISLNK(os.fstat(got).st_mode):
        os.close(got)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    return got


def _openat2_call():
    """openat2(dirfd, path, flags, mode) beneath dirfd with no symlinks, through libc's
    syscall(); None where ctypes or the symbol is missing (the walk then does it)."""
    try:
        import ctypes
    except ImportError:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def openat2(dirfd: int, rel: bytes, flags: int, mode: int) -> int:
        how = OpenHow(flags, mode if flags & os.O_CREAT else 0,
                      _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
        fd = syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), ctypes.c_char_p(rel),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), rel)
        return fd

    return openat2


def temp_dir_path(dest: bytes, temp_dir: bytes) -> bytes:
    """Where -T DIR lies: a relative DIR is taken from the destination directory."""
    return temp_dir if temp_dir.startswith(b"/") else os.path.join(dest, temp_dir)


CHANGE_SLACK_NS = 50 * 10**6
"""How far before a run's start a directory's ctime may lie and still count as changed
by the run: the kernel stamps ctime from a coarse clock, a tick (at most 10 ms) behind
time.time_ns()."""


def sync_if_changed(fd: int, since_ns: int) -> bool:
    """--fsync for a directory: fsync it if its ctime says it changed since `since_ns`
    (an entry added, renamed, removed, or its attributes set), so a no-change run
    forces no journal commit per directory."""
    if os.fstat(fd).st_ctime_ns < since_ns - CHANGE_SLACK_NS:
        return False
    os.fsync(fd)
    return True


def sync_parents(path: bytes, levels: int) -> None:
    """--fsync for the destination directory a run made (`levels` of them with
    --mkpath): the parent of each made directory is synced, nearest first, so the new
    names survive a power cut too (the made directories themselves are synced with
    the tree)."""
    path = os.path.abspath(path)
    for _ in range(levels):
        path = os.path.dirname(path)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

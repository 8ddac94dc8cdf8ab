"""Safe operations on the destination tree, all relative to directory fds.

The receiver never resolves a destination path through a symlink: every
directory is opened component by component with O_NOFOLLOW, and every change
is made with *at() calls on the parent's fd. A symlink planted (or received)
where a directory should be therefore stops the entry instead of redirecting it.
"""

from __future__ import annotations

import errno
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


def listdir(dirfd: int) -> list[bytes]:
    """Names in an open directory, as bytes (os.listdir on an fd gives str, and
    encoding each name back costs more than the listing)."""
    return os.listdir(b"/proc/self/fd/%d" % dirfd)


def lstat_at(dirfd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_tree(dirfd: int, name: bytes, on_entry=None, _rel: bytes = b"") -> None:
    """rm -r of one entry inside dirfd, never following symlinks; on_entry(rel, is_dir)
    hears of each removed entry, children before their directory."""
    rel = _rel or name
    st = lstat_at(dirfd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        if on_entry is not None:
            on_entry(rel, False)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
    try:
        for child in sorted(listdir(fd), reverse=True):
            remove_tree(fd, child, on_entry, rel + b"/" + child)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    if on_entry is not None:
        on_entry(rel, True)

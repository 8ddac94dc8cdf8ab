"""Metadata: which xattrs travel, owner names, and applying modes, owners, xattrs, times."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

import xattr

from fscsync.fs.cipher import ENCDATA_XATTR, EncdataError, parse_encdata
from fscsync.options import Options

ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
IS_ROOT = os.geteuid() == 0


def encdata_target(opts: Options, e) -> bytes:
    """The xattr name encdata is written under at the destination.

    With --encdata-xattr NAME, encdata read as security.encdata is stored as
    NAME (the backup side) and encdata read as NAME is restored as
    security.encdata, so the same command line works both ways."""
    if opts.encdata_xattr == ENCDATA_XATTR:
        return ENCDATA_XATTR
    return ENCDATA_XATTR if e.enc_alt else opts.encdata_xattr


def xattr_wanted(opts: Options):
    """A predicate saying which xattr names this run copies (rsync's -X/-A rules)."""
    enc = (ENCDATA_XATTR, opts.encdata_xattr)

    def wanted(name: bytes) -> bool:
        if name in enc:
            return False
        if name in ACL_NAMES:
            return opts.acls
        if not opts.xattrs or name.startswith(b"system."):
            return False
        return IS_ROOT or name.startswith(b"user.")

    return wanted


def read_xattrs(target: bytes | int, follow: bool = False) -> list[tuple[bytes, bytes]]:
    """All xattrs of a path or fd, sorted; an fs without xattrs has none."""
    try:
        items = xattr.get_all(target, nofollow=not follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
            return []
        raise
    return sorted(items)


def split_xattrs(items: list[tuple[bytes, bytes]], opts: Options
                 ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """(the xattrs this run copies, the encdata text if any, whether it came from
    the --encdata-xattr name rather than security.encdata)."""
    wanted = xattr_wanted(opts)
    found = dict(items)
    enc = found.get(ENCDATA_XATTR)
    alt = False
    if enc is None and opts.encdata_xattr != ENCDATA_XATTR:
        enc = found.get(opts.encdata_xattr)
        alt = enc is not None
    keep = [(n, v) for n, v in items if wanted(n)]
    return keep, enc, alt


class IdMapper:
    """Receiver side: the sender's uids/gids by name, mapped to local ids."""

    def __init__(self, numeric: bool, user_rules: list | None = None,
                 group_rules: list | None = None):
        self.numeric = numeric
        self.user_names: dict[int, bytes] = {}
        self.group_names: dict[int, bytes] = {}
        self._uid_cache: dict[int, int] = {}
        self._gid_cache: dict[int, int] = {}
        self._user_rules = user_rules or []  # --usermap/--chown (fscsync.engine.idmap)
        self._group_rules = group_rules or []

    def uid(self, remote: int) -> int:
        local = self._uid_cache.get(remote)
        if local is not None:
            return local
        return self._map(remote, self.user_names, self._uid_cache,
                         lambda n: pwd.getpwnam(n).pw_uid, self._user_rules)

    def gid(self, remote: int) -> int:
        local = self._gid_cache.get(remote)
        if local is not None:
            return local
        return self._map(remote, self.group_names, self._gid_cache,
                         lambda n: grp.getgrnam(n).gr_gid, self._group_rules)

    def _map(self, remote: int, names: dict[int, bytes], cache: dict[int, int], lookup,
             rules: list) -> int:
        """Local id for a remote one, remembered: the first mapping rule that matches,
        else by name unless --numeric-ids; id 0 never maps by name."""
        name = None if self.numeric else names.get(remote)
        for matches, target in rules:
            if matches(remote, name):
                cache[remote] = target
                return target
        local = remote
        if not self.numeric and remote != 0:
            name = names.get(remote)
            if name is not None:
                try:
                    local = lookup(os.fsdecode(name))
                except KeyError:
                    pass
        cache[remote] = local
        return local


def user_name(uid: int) -> bytes | None:
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return None


def group_name(gid: int) -> bytes | None:
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except KeyError:
        return None


def set_xattrs(target: bytes | int, want: list[tuple[bytes, bytes]],
               have: list[tuple[bytes, bytes]], managed, follow: bool = False) -> bool:
    """Make the managed xattrs of target equal `want`; True when anything changed."""
    nofollow = not follow
    have_d = dict(have)
    want_d = dict(want)
    changed = False
    for name, value in want:
        if have_d.get(name) != value:
            xattr.set(target, name, value, nofollow=nofollow)
            changed = True
    for name in have_d:
        if name not in want_d and managed(name):
            try:
                xattr.remove(target, name, nofollow=nofollow)
                changed = True
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    return changed



def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


UMASK = _umask()


class Target:
    """One destination inode: an open fd where we have one, else (dirfd, name).

    A target known only by name is pinned before anything changes (`pin`): an
    O_PATH|O_NOFOLLOW fd whose fstat must show the inode that was compared, and every
    change then goes through /proc/self/fd/N, which names that inode however the
    name is swapped meanwhile (a symlink planted by a local user is never followed).
    """

    __slots__ = ("dirfd", "name", "fd", "is_link", "_path_fd")

    def __init__(self, dirfd: int, name: bytes, fd: int | None = None, is_link: bool = False):
        self.dirfd = dirfd
        self.name = name
        self.fd = fd
        self.is_link = is_link
        self._path_fd: int | None = None

    def pin(self, st: os.stat_result) -> None:
        """Hold the inode `st` describes, or fail if the name now holds another."""
        if self.fd is not None or not self.name or self._path_fd is not None:
            return
        fd = os.open(self.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfd)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (
                st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
            os.close(fd)
            raise OSError(errno.ESTALE, "replaced during the run; left alone")
        self._path_fd = fd

    def hold(self) -> os.stat_result:
        """Pin a node this run just made, whatever it is now, and return its stat (the
        inode the attributes then go to, however the name is swapped)."""
        fd = os.open(self.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dirfd)
        self._path_fd = fd
        return os.fstat(fd)

    def unpin(self) -> None:
        if self._path_fd is not None:
            os.close(self._path_fd)
            self._path_fd = None

    def _pinned(self) -> bytes:
        if self._path_fd is None:
            raise ValueError("attributes changed on a target that is not pinned")
        return b"/proc/self/fd/%d" % self._path_fd

    def xattr_target(self) -> bytes | int:
        if self.fd is not None:
            return self.fd
        if self._path_fd is not None:
            return self._pinned()
        return b"/proc/self/fd/%d/%s" % (self.dirfd, self.name) if self.name else self.dirfd

    def xattr_follow(self) -> bool:
        """A pinned target's /proc link must be followed (to the inode it holds)."""
        return self._path_fd is not None

    def stat(self) -> os.stat_result:
        """The inode's stat now (of the pinned inode, for a target known by name)."""
        if self.fd is not None:
            return os.fstat(self.fd)
        if not self.name:
            return os.fstat(self.dirfd)
        return os.stat(self._pinned())

    def chown(self, uid: int, gid: int) -> None:
        if self.fd is not None:
            os.fchown(self.fd, uid, gid)
        elif not self.name:
            os.fchown(self.dirfd, uid, gid)
        else:
            os.chown(self._pinned(), uid, gid)

    def chmod(self, mode: int) -> None:
        if self.fd is not None:
            os.fchmod(self.fd, mode)
        elif not self.name:
            os.fchmod(self.dirfd, mode)
        else:
            os.chmod(self._pinned(), mode)

    def utime(self, atime_ns: int, mtime_ns: int) -> None:
        ns = (atime_ns, mtime_ns)
        if self.fd is not None:
            os.utime(self.fd, ns=ns)
        elif not self.name:
            os.utime(self.dirfd, ns=ns)
        else:
            os.utime(self._pinned(), ns=ns)


def wanted_mode(opts: Options, mode: int, dest_mode: int, new: bool,
                replaced: int | None = None) -> int | None:
    """The permission bits a non-link entry gets (rsync's dest_mode), or None to leave
    them. -p copies the source's; a new entry gets them less the umask, but a file
    that replaces one (`replaced`, its mode) keeps that one's; with -E a regular
    file's execute bits follow the source's (for whoever can read it)."""
    if opts.perms:
        return stat.S_IMODE(mode)
    if new and replaced is None:
        return stat.S_IMODE(mode) & ~UMASK
    have = stat.S_IMODE(dest_mode if replaced is None else replaced)
    if opts.executability and stat.S_ISREG(mode):
        if not mode & 0o111:
            have &= ~0o111
        elif not have & 0o111:
            have |= (have & 0o444) >> 2
    elif replaced is None:
        return None
    return have


class AttrDiff:
    """What differs between an entry and the destination inode it goes to, decided in
    one place (differences): the itemize letters of an existing entry and what
    apply_attrs changes both come from it. uid and gid are -1 where they stay, mode
    None; `xattr_lists` holds (wanted, have) per kind, ACLs first, for apply_attrs."""

    __slots__ = ("uid", "gid", "mode", "acls", "xattrs", "time", "xattr_lists")

    def __init__(self) -> None:
        self.uid = self.gid = -1
        self.mode: int | None = None
        self.acls = self.xattrs = self.time = False
        self.xattr_lists: tuple = ()

    def __bool__(self) -> bool:
        return (self.uid != -1 or self.gid != -1 or self.mode is not None or self.acls
                or self.xattrs or self.time)

    def letters(self) -> str:
        """rsync's itemize letters of what differs (for an existing entry: a new one
        shows +++++++++ instead)."""
        return ("t" * self.time + "p" * (self.mode is not None) + "o" * (self.uid != -1)
                + "g" * (self.gid != -1) + "a" * self.acls + "x" * self.xattrs)


def differences(opts: Options, ids: IdMapper, e, st: os.stat_result, t: Target,
                new: bool = False, replaced: int | None = None, accurate_time: bool = False,
                strict: bool = False) -> AttrDiff:
    """What of owner, mode, xattrs, ACLs and mtime must change for t (whose stat is
    `st`) to match entry e. Only the xattrs this run copies count, on both sides. The
    time compares within --modify-window, as rsync's does for an entry it leaves in
    place, unless `accurate_time` (data just written). Unreadable xattrs count as none,
    unless `strict` (about to change them)."""
    d = AttrDiff()
    if opts.owner and IS_ROOT and ids.uid(e.uid) != st.st_uid:
        d.uid = ids.uid(e.uid)
    if opts.group and ids.gid(e.gid) != st.st_gid:
        d.gid = ids.gid(e.gid)
    if not t.is_link:
        want = wanted_mode(opts, e.mode, st.st_mode, new, replaced)
        if want is not None and want != stat.S_IMODE(st.st_mode):
            d.mode = want
    if opts.xattrs or opts.acls:
        try:
            have = read_xattrs(t.xattr_target(), t.xattr_follow())
        except OSError:
            if strict:
                raise
            have = []
        wanted = xattr_wanted(opts)
        d.xattr_lists = tuple(
            ([x for x in e.xattrs or () if (x[0] in ACL_NAMES) == acl and wanted(x[0])],
             [x for x in have if (x[0] in ACL_NAMES) == acl and wanted(x[0])])
            for acl in (True, False))
        (acl_want, acl_have), (x_want, x_have) = d.xattr_lists
        d.acls = opts.acls and dict(acl_want) != dict(acl_have)
        d.xattrs = opts.xattrs and dict(x_want) != dict(x_have)
    if opts.keeps_time(e.mode):
        if new:
            d.time = True
        elif accurate_time:
            d.time = st.st_mtime_ns != e.mtime_ns
        else:
            d.time = not opts.same_time(st.st_mtime_ns, e.mtime_ns)
    return d


_SET_ID = stat.S_ISUID | stat.S_ISGID


def apply_attrs(opts: Options, ids: IdMapper, e, t: Target, st: os.stat_result,
                new: bool, replaced: int | None = None, accurate_time: bool = False) -> str:
    """Bring owner, mode, xattrs, encdata and mtime of t in line with entry e, as
    differences() decides, in the order the encrypted interface needs (encdata after
    everything but times). A target known by name is pinned first, so no change can
    land on what a swapped-in symlink names.

    Returns the itemize letters rsync shows for it: a chown clears the setuid and
    setgid bits of anything but a directory, so after one on such an inode the rest
    is decided again from what the kernel left (the owner then matches, the mode may
    not), as rsync re-reads it."""
    t.pin(st)
    try:
        d = differences(opts, ids, e, st, t, new, replaced, accurate_time, strict=True)
        if d.uid != -1 or d.gid != -1:
            t.chown(d.uid, d.gid)
            if st.st_mode & _SET_ID and not stat.S_ISDIR(st.st_mode) and not t.is_link:
                d = differences(opts, ids, e, t.stat(), t, new, replaced, accurate_time,
                                strict=True)
        if d.mode is not None:
            t.chmod(d.mode)
        if d.acls or d.xattrs:
            target, follow, wanted = t.xattr_target(), t.xattr_follow(), xattr_wanted(opts)
            for changed, (want, have) in zip((d.acls, d.xattrs), d.xattr_lists, strict=True):
                if changed:
                    set_xattrs(target, want, have, wanted, follow)
        if e.enc is not None:
            set_encdata(t, e.enc, encdata_target(opts, e))
        if d.time:
            t.utime(e.mtime_ns if new else st.st_atime_ns, e.mtime_ns)
        return d.letters()
    finally:
        t.unpin()


class EncdataConflict(OSError):
    """The destination inode is already encrypted with another context."""


def set_encdata(t: Target, text: bytes, name: bytes) -> bool:
    """Install encdata unless the inode already carries exactly this text."""
    target = t.xattr_target()
    nofollow = not t.xattr_follow()
    try:
        have = xattr.get(target, name, nofollow=nofollow)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        have = None
    if have == text:
        return False
    if have is not None and ctx_of(have) != ctx_of(text):
        raise EncdataConflict("already encrypted with another context")
    if have is not None:
        xattr.set(target, name, text, nofollow=nofollow, flags=xattr.XATTR_REPLACE)
        return True
    xattr.set(target, name, text, nofollow=nofollow, flags=xattr.XATTR_CREATE)
    return True


def ctx_of(text: bytes) -> bytes:
    try:
        return parse_encdata(text).enc_ctx
    except EncdataError:
        return b""

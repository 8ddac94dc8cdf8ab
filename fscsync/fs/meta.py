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


def apply_attrs(opts: Options, ids: IdMapper, e, t: Target, st: os.stat_result,
                new: bool, replaced: int | None = None) -> str:
    """Bring owner, mode, xattrs, encdata and mtime of t in line with entry e, in the
    order the encrypted interface needs (encdata after everything but times).
    Returns the itemize letters of what changed (o g p x a t). A target known by name
    is pinned first, so no change can land on what a swapped-in symlink names."""
    t.pin(st)
    try:
        return _apply_attrs(opts, ids, e, t, st, new, replaced)
    finally:
        t.unpin()


def _apply_attrs(opts: Options, ids: IdMapper, e, t: Target, st: os.stat_result,
                 new: bool, replaced: int | None) -> str:
    changed = ""
    chowned = False
    if opts.owner or opts.group:
        uid = ids.uid(e.uid) if opts.owner and IS_ROOT else -1
        gid = ids.gid(e.gid) if opts.group else -1
        do_uid = uid != -1 and uid != st.st_uid
        do_gid = gid != -1 and gid != st.st_gid
        if do_uid or do_gid:
            t.chown(uid if do_uid else -1, gid if do_gid else -1)
            chowned = True
            changed += "o" if do_uid else ""
            changed += "g" if do_gid else ""
    if not t.is_link:
        want = wanted_mode(opts, e.mode, st.st_mode, new, replaced)
        if want is not None and (want != stat.S_IMODE(st.st_mode) or
                                 (chowned and want & 0o6000)):
            t.chmod(want)
            if not new:
                changed += "p"
    if opts.xattrs or opts.acls:
        target = t.xattr_target()
        follow = t.xattr_follow()
        have = [(n, v) for n, v in read_xattrs(target, follow)
                if n not in (ENCDATA_XATTR, opts.encdata_xattr)]
        want_x = e.xattrs or []
        wanted = xattr_wanted(opts)
        acl_have = [(n, v) for n, v in have if n in ACL_NAMES]
        acl_want = [(n, v) for n, v in want_x if n in ACL_NAMES]
        plain_have = [(n, v) for n, v in have if n not in ACL_NAMES]
        plain_want = [(n, v) for n, v in want_x if n not in ACL_NAMES]
        if opts.acls and set_xattrs(target, acl_want, acl_have, wanted, follow) and not new:
            changed += "a"
        if opts.xattrs and set_xattrs(target, plain_want, plain_have, wanted, follow) and not new:
            changed += "x"
    if e.enc is not None:
        set_encdata(t, e.enc, encdata_target(opts, e))
    if opts.keeps_time(e.mode) and (new or st.st_mtime_ns != e.mtime_ns):
        t.utime(e.mtime_ns if new else st.st_atime_ns, e.mtime_ns)
        if not new:
            changed += "t"
    return changed


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
        raise EncdataConflict(errno.EEXIST, "already encrypted with another context")
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

"""The FUSE filesystem: a backing directory (backing.py) served as a locked or unlocked view.

Locked and unlocked are decided per inode, as in the kernel: an encrypted
inode is unlocked when the mount holds the master key its context names (and
the model supports the policy); a mount without --key is the locked view.

Locked inodes: names shown escaped (names.py); regular files open only with
O_CIPHERTEXT (ENOKEY otherwise) and read raw ciphertext, st_size rounded up to
4096; symlinks read as the escaped ciphertext target; writing or truncating
an encrypted inode fails with EPERM. Unlocked inodes show plaintext and are
written by re-encrypting the touched units. O_CIPHERTEXT opens of encrypted
files give ciphertext (read-only) in both views.

`security.encdata` is the stored text, answered by name only: listxattr never
shows it, as on Lustre's ldiskfs patch (the mount option list_encdata lists it,
a kinder behaviour kept so that both can be tested). Without the key, st_size of
every encrypted inode (files, directories, symlinks) is rounded up to 4096; an
encrypted symlink's encdata size is its on-disk length, 2 + the ciphertext
length. Setting encdata on a plain inode installs it, v2 contexts only (the
patch's sscanf takes a 54-character enc_ctx): EINVAL if the inode is encrypted,
with XATTR_REPLACE, on malformed text or a v1 context,
on device nodes, FIFOs and sockets (the kernel never encrypts those: they get
encrypted names only), or on a symlink whose target is not an escaped
ciphertext; a symlink's `size` is not interpreted. Removing it fails with
EPERM. enc_name is remembered as given and replaced only when a view holding
the key renames or links the entry (it then knows the new raw name).

New entries are encrypted (fresh nonce, parent policy) only in unlocked
encrypted directories and only when not created with O_CIPHERTEXT; all others
start plain until their encdata is set.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from itertools import count

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402  (reads FUSE_LIBRARY_NAME at import)
import xattr  # noqa: E402

from fscsync.fs.cipher import (  # noqa: E402
    ENCDATA_XATTR,
    EncData,
    EncdataError,
    escape_name,
    padded_size,
    parse_encdata,
    unescape_name,
)
from fscsync.testfs.backing import (  # noqa: E402
    INTERNAL_XATTR_PREFIX,
    bind_name,
    child_context,
    fs_name,
    load_encdata,
    shown_name,
    store_encdata,
)
from fscsync.testfs.contents import read_plain, truncate_plain, write_plain  # noqa: E402
from fscsync.testfs.model import (  # noqa: E402
    MasterKey,
    decrypt_name,
    encrypt_name,
    encrypt_symlink,
)
from fscsync.testfs.names import raw_name  # noqa: E402

# The kernel strips O_NOCTTY before a FUSE daemon sees an open, so this is
# what is left of O_CIPHERTEXT (O_NDELAY == O_NONBLOCK).
CIPHERTEXT_SEEN = os.O_NONBLOCK | os.O_DSYNC
RENAME_NOREPLACE = 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# ext4 stores an encrypted symlink as a u16 length, the ciphertext and a NUL; i_size
# (and so encdata's size) counts the length and the ciphertext.
SYMLINK_HEADER = 2
_STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
              "st_blksize", "st_blocks")
_STATVFS_KEYS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                 "f_ffree", "f_favail", "f_flag", "f_namemax")


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _is_ciphertext(flags: int) -> bool:
    return flags & CIPHERTEXT_SEEN == CIPHERTEXT_SEEN


@dataclass(frozen=True, slots=True)
class _Dir:
    path: bytes
    enc: EncData | None
    name_key: bytes | None  # the directory's 32-byte name key, when unlocked


@dataclass(frozen=True, slots=True)
class _Entry:
    parent: _Dir | None  # None for the root
    path: bytes  # in the backing directory
    shown: bytes  # the name as stored: escaped raw name in encrypted directories
    raw: bytes | None  # raw encrypted name, when the parent is unlocked


@dataclass(frozen=True, slots=True)
class _Handle:
    fd: int
    ciphertext: bool  # opened with O_CIPHERTEXT: raw bytes, never decrypted
    append: bool


class TestFS(mfusepy.Operations):
    """FUSE operations over one backing directory, with or without a master key."""

    use_ns = True

    def __init__(self, backing: bytes, key: MasterKey | None, ready_fd: int | None = None,
                 list_encdata: bool = False):
        self.root = os.path.abspath(backing)
        self.key = key
        self.list_encdata = list_encdata
        self.ready_fd = ready_fd
        self.handles: dict[int, _Handle] = {}
        self._fh = count(1)

    # --- keys and names ---------------------------------------------------------------------

    def _file_key(self, enc: EncData | None) -> bytes | None:
        """The 64-byte per-file key when the mount's key unlocks `enc`."""
        if enc is None or self.key is None:
            return None
        return self.key.key_for(enc.enc_ctx)

    def _dir(self, path: bytes) -> _Dir:
        enc = load_encdata(path)
        key = self._file_key(enc)
        return _Dir(path, enc, key[:32] if key else None)

    def _plain_name(self, d: _Dir, shown: bytes) -> bytes | None:
        """The plaintext of a stored name, or None if it is not a ciphertext name of `d`."""
        raw = raw_name(shown)
        if raw is None:
            return None
        plain = decrypt_name(d.name_key, raw)
        if not plain or b"/" in plain or encrypt_name(d.name_key, plain, d.enc.flags) != raw:
            return None
        return plain

    def _child(self, d: _Dir, name: bytes) -> _Entry:
        if d.name_key is None:
            return _Entry(d, os.path.join(d.path, fs_name(name)), name, None)
        try:
            raw = encrypt_name(d.name_key, name, d.enc.flags)
        except ValueError:
            raise _fail(errno.ENAMETOOLONG) from None
        shown = escape_name(raw)
        path = os.path.join(d.path, fs_name(shown))
        if not os.path.lexists(path):
            # A plain entry made without the key keeps its stored name.
            literal = os.path.join(d.path, fs_name(name))
            if os.path.lexists(literal) and self._plain_name(d, name) is None:
                return _Entry(d, literal, name, None)
        return _Entry(d, path, shown, raw)

    def _lookup(self, path: str) -> _Entry:
        entry = _Entry(None, self.root, b"", None)
        for part in os.fsencode(path).split(b"/"):
            if part:
                entry = self._child(self._dir(entry.path), part)
        return entry

    def _target(self, link: bytes, key: bytes) -> bytes:
        try:
            return decrypt_name(key, unescape_name(link))
        except ValueError:
            raise _fail(errno.EIO) from None

    # --- attributes -------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        if fh is not None:
            target: int | bytes = self.handles[fh].fd
            st = os.fstat(target)
        else:
            target = self._lookup(path).path
            st = os.lstat(target)
        attrs = {k: getattr(st, k) for k in _STAT_KEYS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        enc = load_encdata(target)
        if enc is not None:
            key = self._file_key(enc)
            if key is None:
                size = enc.size if stat.S_ISREG(st.st_mode) else st.st_size
                attrs["st_size"] = padded_size(size)
            elif stat.S_ISREG(st.st_mode):
                attrs["st_size"] = enc.size
            elif stat.S_ISLNK(st.st_mode):
                attrs["st_size"] = len(self._target(os.readlink(target), key))
        return attrs

    def readlink(self, path: str) -> str:
        link = self._lookup(path).path
        target = os.readlink(link)
        key = self._file_key(load_encdata(link))
        return os.fsdecode(self._target(target, key) if key else target)

    def readdir(self, path: str, fh: int) -> list:
        d = self._dir(self._lookup(path).path)
        names: list = [".", ".."]
        with os.scandir(d.path) as it:
            for de in it:
                shown = shown_name(d.path, de.name)
                plain = self._plain_name(d, shown) if d.name_key else None
                st = de.stat(follow_symlinks=False)
                names.append((os.fsdecode(plain or shown),
                              {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
        return names

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {k: getattr(st, k) for k in _STATVFS_KEYS}

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._lookup(path).path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self._lookup(path).path, uid, gid)

    def utimens(self, path: str, times: tuple[tuple[int, int], tuple[int, int]] | None = None
                ) -> None:
        """`times` is ((sec, nsec), (sec, nsec)) with UTIME_NOW/UTIME_OMIT kept intact."""
        target = self._lookup(path).path
        if times is None:
            os.utime(target, follow_symlinks=False)
            return
        st = os.lstat(target)
        now = time.time_ns()
        ns = tuple(
            current if nsec == UTIME_OMIT else now if nsec == UTIME_NOW else sec * 10**9 + nsec
            for (sec, nsec), current in zip(times, (st.st_atime_ns, st.st_mtime_ns), strict=True)
        )
        os.utime(target, ns=ns, follow_symlinks=False)

    # --- extended attributes ----------------------------------------------------------------

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        attr = os.fsencode(name)
        if attr.startswith(INTERNAL_XATTR_PREFIX):
            raise _fail(errno.ENODATA)
        return xattr.get(self._lookup(path).path, attr, nofollow=True)

    def listxattr(self, path: str) -> list[str]:
        names = xattr.list(self._lookup(path).path, nofollow=True)
        return [os.fsdecode(n) for n in names if not n.startswith(INTERNAL_XATTR_PREFIX)
                and (self.list_encdata or n != ENCDATA_XATTR)]

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0
                 ) -> None:
        attr, target = os.fsencode(name), self._lookup(path).path
        if attr == ENCDATA_XATTR:
            self._install(target, value, options)
        elif attr.startswith(INTERNAL_XATTR_PREFIX):
            raise _fail(errno.EPERM)
        else:
            xattr.set(target, attr, value, flags=options, nofollow=True)

    def removexattr(self, path: str, name: str) -> None:
        attr, target = os.fsencode(name), self._lookup(path).path
        if attr == ENCDATA_XATTR:
            raise _fail(errno.EPERM if load_encdata(target) else errno.ENODATA)
        if attr.startswith(INTERNAL_XATTR_PREFIX):
            raise _fail(errno.ENODATA)
        xattr.remove(target, attr, nofollow=True)

    def _install(self, target: bytes, text: bytes, options: int) -> None:
        """setxattr security.encdata: turn a plain inode into an encrypted one."""
        if options & xattr.XATTR_REPLACE:
            raise _fail(errno.EINVAL)
        try:
            enc = parse_encdata(text)
        except EncdataError:
            raise _fail(errno.EINVAL) from None
        if not enc.is_v2 or load_encdata(target) is not None:
            raise _fail(errno.EINVAL)
        mode = os.lstat(target).st_mode
        if stat.S_ISREG(mode):
            os.truncate(target, padded_size(enc.size))
        elif stat.S_ISLNK(mode):
            try:
                unescape_name(os.readlink(target))
            except ValueError:
                raise _fail(errno.EINVAL) from None
        elif not stat.S_ISDIR(mode):
            raise _fail(errno.EINVAL)
        store_encdata(target, enc)

    # --- namespace --------------------------------------------------------------------------

    def _new_enc(self, entry: _Entry) -> EncData | None:
        """The encdata a new inode gets: encrypted only inside an unlocked encrypted dir."""
        if entry.parent.name_key is None:
            return None
        return EncData(0, child_context(entry.parent.enc), entry.raw)

    def _created(self, entry: _Entry, enc: EncData | None) -> None:
        uid, gid, _ = mfusepy.fuse_get_context()
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.lchown(entry.path, uid, gid)
        bind_name(entry.path, entry.shown)
        if enc is not None:
            store_encdata(entry.path, enc)

    def mkdir(self, path: str, mode: int) -> None:
        entry = self._lookup(path)
        os.mkdir(entry.path, mode)
        self._created(entry, self._new_enc(entry))

    def mknod(self, path: str, mode: int, dev: int) -> None:
        entry = self._lookup(path)
        os.mknod(entry.path, mode, dev)
        self._created(entry, None)

    def symlink(self, path: str, target: str) -> None:
        entry = self._lookup(path)
        link, enc = os.fsencode(target), self._new_enc(entry)
        if enc is not None:
            flags = entry.parent.enc.flags
            try:
                cipher = encrypt_symlink(self._file_key(enc), link, flags)
            except ValueError:
                raise _fail(errno.ENAMETOOLONG) from None
            link, enc = escape_name(cipher), enc._replace(size=SYMLINK_HEADER + len(cipher))
        os.symlink(link, entry.path)
        self._created(entry, enc)

    def unlink(self, path: str) -> None:
        os.unlink(self._lookup(path).path)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._lookup(path).path)

    def _moved(self, src: bytes, dst: _Entry) -> EncData | None:
        """fscrypt's rule: an encrypted inode may only enter a dir of the same policy."""
        enc = load_encdata(src)
        parent = dst.parent.enc
        if enc is not None and parent is not None and enc.policy != parent.policy:
            raise _fail(errno.EXDEV)
        return enc

    def _arrived(self, dst: _Entry, enc: EncData | None) -> None:
        bind_name(dst.path, dst.shown)
        if enc is not None and dst.raw is not None and enc.enc_name != dst.raw:
            store_encdata(dst.path, enc._replace(enc_name=dst.raw))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        src, dst = self._lookup(old), self._lookup(new)
        if flags & ~RENAME_NOREPLACE:
            raise _fail(errno.EINVAL)
        if flags and os.path.lexists(dst.path):
            raise _fail(errno.EEXIST)
        enc = self._moved(src.path, dst)
        os.rename(src.path, dst.path)
        self._arrived(dst, enc)

    def link(self, path: str, existing: str) -> None:
        src, dst = self._lookup(existing), self._lookup(path)
        enc = self._moved(src.path, dst)
        os.link(src.path, dst.path, follow_symlinks=False)
        self._arrived(dst, enc)

    # --- file contents ----------------------------------------------------------------------

    def _register(self, fd: int, flags: int) -> int:
        fh = next(self._fh)
        self.handles[fh] = _Handle(fd, _is_ciphertext(flags), bool(flags & os.O_APPEND))
        return fh

    def create(self, path: str, mode: int, flags: int) -> int:
        entry = self._lookup(path)
        fd = os.open(entry.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, mode)
        self._created(entry, None if _is_ciphertext(flags) else self._new_enc(entry))
        return self._register(fd, flags)

    def open(self, path: str, flags: int) -> int:
        target = self._lookup(path).path
        enc = load_encdata(target)
        access = flags & os.O_ACCMODE
        decrypting = False
        if enc is not None:
            if _is_ciphertext(flags):
                if access != os.O_RDONLY or flags & os.O_TRUNC:
                    raise _fail(errno.EPERM)
            elif self._file_key(enc) is None:
                raise _fail(errno.ENOKEY)
            else:
                decrypting = True
        # Re-encrypting a partial unit needs to read it, even through a write-only handle.
        backing_access = os.O_RDWR if decrypting and access != os.O_RDONLY else access
        fd = os.open(target, backing_access | os.O_CLOEXEC)
        if flags & os.O_TRUNC and access != os.O_RDONLY:
            self._resize(fd, 0)
        return self._register(fd, flags)

    def _resize(self, fd: int, length: int) -> None:
        enc = load_encdata(fd)
        if enc is None:
            os.ftruncate(fd, length)
            return
        key = self._file_key(enc)
        if key is None:
            raise _fail(errno.EPERM)
        truncate_plain(fd, key, enc.size, length)
        store_encdata(fd, enc._replace(size=length))

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            self._resize(self.handles[fh].fd, length)
            return
        fd = os.open(self._lookup(path).path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._resize(fd, length)
        finally:
            os.close(fd)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self.handles[fh]
        enc = load_encdata(handle.fd)
        if enc is None or handle.ciphertext:
            return os.pread(handle.fd, size, offset)
        key = self._file_key(enc)
        if key is None:
            raise _fail(errno.ENOKEY)
        return read_plain(handle.fd, key, enc.size, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self.handles[fh]
        enc = load_encdata(handle.fd)
        if enc is None:
            return os.pwrite(handle.fd, data, os.fstat(handle.fd).st_size if handle.append
                             else offset)
        key = None if handle.ciphertext else self._file_key(enc)
        if key is None:
            raise _fail(errno.EPERM)
        size = write_plain(handle.fd, key, enc.size, data, enc.size if handle.append else offset)
        if size != enc.size:
            store_encdata(handle.fd, enc._replace(size=size))
        return len(data)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(self.handles[fh].fd)

    def release(self, path: str, fh: int) -> None:
        os.close(self.handles.pop(fh).fd)

    def init(self, path: str) -> None:
        """Called once the kernel has the mount: tell the starter we are ready."""
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)


class _Fuse(mfusepy.FUSE):
    """mfusepy drops rename flags and folds UTIME_NOW/UTIME_OMIT into times: pass both on."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(os.fsdecode(old), os.fsdecode(new), flags)

    def utimens_fuse_3(self, path: bytes, buf, fip) -> int:
        times = None
        if buf:
            t = buf.contents
            times = ((t.actime.tv_sec, t.actime.tv_nsec), (t.modtime.tv_sec, t.modtime.tv_nsec))
        return self.operations.utimens(os.fsdecode(path), times)


def serve(backing: bytes, mountpoint: bytes, key: MasterKey | None,
          ready_fd: int | None = None, list_encdata: bool = False) -> None:
    """Mount and serve in the foreground until unmounted."""
    os.umask(0)
    _Fuse(
        TestFS(backing, key, ready_fd, list_encdata), os.fsdecode(mountpoint),
        foreground=True, nothreads=True, allow_other=True, default_permissions=True,
        use_ino=True, direct_io=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
        fsname="fscsync-testfs", subtype="fscsync-testfs",
    )

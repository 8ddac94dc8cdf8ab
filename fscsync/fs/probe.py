"""Probes of what a filesystem can do (as rdiff-backup does), so per-file failures
are decided before any data moves and can be explained once."""

from __future__ import annotations

import errno
import os

import xattr

from fscsync import errors
from fscsync.fs import cipher
from fscsync.fs.destfs import temp_name
from fscsync.record import Record

_PROBE_CTX = cipher.pack_context(bytes(16), bytes(16), flags=0x02)


class DestAbilities(Record):
    encdata: bool = True
    encdata_why: str = ""
    encdata_virtual: bool = False  # the encdata interface, not a plain backup
    xattrs: bool = True
    owners: bool = True

    def lines(self) -> list[str]:
        def yn(ok: bool, why: str = "") -> str:
            return "yes" if ok else ("no" + (f" ({why})" if why else ""))

        how = ("yes (the encdata interface)" if self.encdata_virtual
               else "yes (as an ordinary xattr: a plain backup)")
        return [
            f"destination stores encdata: {how if self.encdata else yn(False, self.encdata_why)}",
            f"destination stores xattrs: {yn(self.xattrs)}",
            f"destination sets owners: {yn(self.owners)}",
        ]


_TMPFILE_REFUSED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)


def probe_dest(dirfd: int, encdata_name: bytes) -> DestAbilities:
    """Try each ability on a scratch inode of the destination filesystem.

    An unnamed O_TMPFILE inode leaves no trace (no entry, no changed directory time,
    nothing for an inotify watcher); a filesystem without O_TMPFILE (FUSE) gets a named
    scratch file, removed at once, and the directory's times put back. Called only
    when an encrypted entry is about to be written, never under --dry-run."""
    ab = DestAbilities()
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno not in _TMPFILE_REFUSED:
            raise
    else:
        try:
            _probe(fd, encdata_name, ab)
        finally:
            os.close(fd)
        return ab
    before = os.fstat(dirfd)
    name = temp_name(b"probe")
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dirfd)
        try:
            _probe(fd, encdata_name, ab)
        finally:
            os.close(fd)
    finally:
        # By name, also when a signal came between the create and the try above.
        try:
            os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        os.utime(dirfd, ns=(before.st_atime_ns, before.st_mtime_ns))
    return ab


def _probe(fd: int, encdata_name: bytes, ab: DestAbilities) -> None:
    try:
        xattr.set(fd, b"user.fscsync.probe", b"1")
    except OSError as exc:
        ab.xattrs = exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP)
    text = cipher.format_encdata(cipher.EncData(0, _PROBE_CTX, b""))
    try:
        xattr.set(fd, encdata_name, text, flags=xattr.XATTR_CREATE)
    except OSError as exc:
        ab.encdata = False
        if exc.errno == errno.EPERM:
            ab.encdata_why = f"writing {encdata_name.decode()} needs root (CAP_SYS_ADMIN)"
        elif exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            ab.encdata_why = "the filesystem does not support xattrs"
        else:
            ab.encdata_why = errors.os_reason(exc)
    else:
        ab.encdata_virtual = (encdata_name == cipher.ENCDATA_XATTR
                              and os.fsdecode(encdata_name) not in os.listxattr(fd))
    try:
        os.fchown(fd, 4242, 4242)
    except OSError:
        ab.owners = False


WHY_NO_KEYLESS = ("this kernel gives no key-less ciphertext access (O_CIPHERTEXT open "
                  "fails with ENOKEY; it needs the encdata interface)")


def keyless_readable(path: bytes) -> tuple[bool, str]:
    """Can this encrypted file be read as ciphertext without the key?"""
    try:
        fd, _ = cipher.open_ciphertext(path)
    except OSError as exc:
        if exc.errno == errno.ENOKEY:
            return False, WHY_NO_KEYLESS
        return True, ""
    os.close(fd)
    return True, ""

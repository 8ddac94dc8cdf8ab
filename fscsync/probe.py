"""Pre-flight probes of what a filesystem can do (as rdiff-backup does), so per-file
failures are decided before any data moves and can be explained once."""

from __future__ import annotations

import errno
import os

import xattr

from fscsync import cipher
from fscsync.destfs import temp_name
from fscsync.record import Record

_PROBE_CTX = bytes([2, 1, 4, 2, 0, 0, 0, 0]) + bytes(32)


class DestAbilities(Record):
    encdata: bool = True
    encdata_why: str = ""
    xattrs: bool = True
    owners: bool = True
    devices: bool = True

    def lines(self) -> list[str]:
        def yn(ok: bool, why: str = "") -> str:
            return "yes" if ok else ("no" + (f" ({why})" if why else ""))

        return [
            f"destination stores encdata: {yn(self.encdata, self.encdata_why)}",
            f"destination stores xattrs: {yn(self.xattrs)}",
            f"destination sets owners: {yn(self.owners)}",
            f"destination makes device nodes: {yn(self.devices)}",
        ]


def probe_dest(dirfd: int, encdata_name: bytes) -> DestAbilities:
    """Try each ability on a scratch file in the destination root, then remove it."""
    ab = DestAbilities()
    before = os.fstat(dirfd)
    try:
        _probe(dirfd, encdata_name, ab)
    finally:
        os.utime(dirfd, ns=(before.st_atime_ns, before.st_mtime_ns))
    return ab


def _probe(dirfd: int, encdata_name: bytes, ab: DestAbilities) -> None:
    name = temp_name(b"probe")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                 dir_fd=dirfd)
    try:
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
                ab.encdata_why = exc.strerror or str(exc)
        try:
            os.fchown(fd, 4242, 4242)
        except OSError:
            ab.owners = False
    finally:
        os.close(fd)
        os.unlink(name, dir_fd=dirfd)
    dev = temp_name(b"probedev")
    try:
        os.mknod(dev, 0o600 | 0o020000, os.makedev(1, 3), dir_fd=dirfd)
        os.unlink(dev, dir_fd=dirfd)
    except OSError:
        ab.devices = False


WHY_NO_KEYLESS = ("this kernel gives no key-less ciphertext access (O_CIPHERTEXT open "
                  "fails with ENOKEY; it needs the encdata interface)")


def keyless_readable(path: bytes) -> tuple[bool, str]:
    """Can this encrypted file be read as ciphertext without the key?"""
    try:
        fd, direct = cipher.open_ciphertext(path)
    except OSError as exc:
        if exc.errno == errno.ENOKEY:
            return False, WHY_NO_KEYLESS
        return True, ""
    os.close(fd)
    return True, ""

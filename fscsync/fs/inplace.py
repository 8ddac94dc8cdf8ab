"""Journaled in-place updates of big files.

Rebuilding a 1 GiB file in a temp file to change ten blocks copies the whole
file, and renaming it over the old one makes ext4 start writing all of it back
(auto_da_alloc). A big file whose destination copy is mostly unchanged is
therefore updated where it lies, under a redo journal that keeps the old copy
safe the way a temp file would:

1. the changed data goes to a journal beside the file (`.NAME.~fscsync~redo`),
   never to the file itself, while the transfer runs;
2. the result is verified by hashing the old file with the journal overlaid;
   a failed or interrupted transfer only deletes the journal;
3. a commit record (size, record count and a hash of everything before it) is
   appended and the journal synced; only then are the ranges written into the
   file, which is synced, after which the caller sets the attributes and the
   journal is deleted.

A crash after the commit leaves a journal that the next run applies again
(`recover`) before it looks at the directory; one without a valid commit
record never touched the file and is deleted. The window in which the file
holds part of the new data is the few writes of step 3.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import stat
import struct

import xxhash

from fscsync.fs.destfs import TEMP_MARK, lock
from fscsync.fs.fileio import READ_SIZE

MIN_SIZE = 64 << 20
"""Smaller files are rebuilt in a temp file: copying them costs less than the syncs."""
MAX_CHANGED = 4
"""At most 1/MAX_CHANGED of the file may differ (as far as known when the update starts)."""
MAX_RANGES = 1 << 20
"""Literal ranges kept in memory for one file; more, and it is sent again whole."""

JOURNAL_MARK = TEMP_MARK + b"redo"
_MAGIC = b"FSCREDO1"
_HEAD = struct.Struct(">8sQH")  # magic, target inode, name length (the name follows)
_REC = struct.Struct(">QI")  # offset, length (the data follows)
_COMMIT = struct.Struct(">8sQQ16s")  # marker, final size, records, xxh3-128 of all before
_COMMIT_MARK = b"FSCOMMIT"


def journal_name(name: bytes) -> bytes:
    """One fixed name per file, so a second update cannot start over a leftover."""
    return b"." + name[: 255 - 1 - len(JOURNAL_MARK)] + JOURNAL_MARK


def is_journal_name(name: bytes) -> bool:
    return name.startswith(b".") and name.endswith(JOURNAL_MARK)


class Update:
    """One file being updated in place: the target stays untouched until `apply`."""

    def __init__(self, dirfd: int, fd: int, jname: bytes, jfd: int):
        self.dirfd = dirfd
        self.fd = fd  # the target, open read-write
        self.jname = jname
        self.jfd = jfd
        self.jpos = 0
        self.hasher = xxhash.xxh3_128()
        self.ranges: list[tuple[int, int, int]] = []  # offset, length, data position
        self.committed = False
        self.overflow = False

    @classmethod
    def start(cls, dirfd: int, name: bytes, differ: int | None) -> Update | None:
        """An update of existing file `name` in place, or None when a temp file should
        be built instead: the file is small, hard-linked (the other names must keep
        the old data), mostly different (`differ`: bytes in chunks the sender found
        different, None while unknown), not writable, or a journal is left over."""
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size < MIN_SIZE
                    or (differ is not None and differ * MAX_CHANGED > st.st_size)):
                os.close(fd)
                return None
            jname = journal_name(name)
            jfd = os.open(jname, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        except OSError:
            os.close(fd)
            return None
        lock(jfd)  # held until the journal is gone: another run's recover leaves it
        update = cls(dirfd, fd, jname, jfd)
        try:
            update._append(_HEAD.pack(_MAGIC, st.st_ino, len(name)) + name)
        except OSError:
            update.discard()
            os.close(fd)
            return None
        return update

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.jfd, view, self.jpos)
            self.hasher.update(view[:n])
            self.jpos += n
            view = view[n:]

    def write(self, offset: int, data: bytes) -> None:
        """Literal data for [offset, offset+len): into the journal, not the file."""
        if len(self.ranges) >= MAX_RANGES:
            self.overflow = True
            return
        self._append(_REC.pack(offset, len(data)))
        self.ranges.append((offset, len(data), self.jpos))
        self._append(data)

    def digest(self, size: int) -> bytes | None:
        """xxh3-128 of the file as `apply` would leave it at `size` bytes; None when
        literal ranges overlap (no honest sender does that) or were too many."""
        if self.overflow:
            return None
        order = sorted(self.ranges)
        for (a, alen, _), (b, _, _) in zip(order, order[1:], strict=False):
            if a + alen > b:
                return None
        starts = [r[0] for r in order]
        h = xxhash.xxh3_128()
        off = 0
        while off < size:
            n = min(READ_SIZE, size - off)
            buf = bytearray(os.pread(self.fd, n, off))
            if len(buf) < n:
                buf += bytes(n - len(buf))
            i = max(bisect.bisect_right(starts, off) - 1, 0)
            while i < len(order) and order[i][0] < off + n:
                r_off, r_len, pos = order[i]
                lo, hi = max(r_off, off), min(r_off + r_len, off + n)
                if lo < hi:
                    buf[lo - off : hi - off] = os.pread(self.jfd, hi - lo, pos + lo - r_off)
                i += 1
            h.update(buf)
            off += n
        return h.digest()

    def apply(self, size: int) -> None:
        """Commit the journal, then write it into the file (the file is synced). A
        size change alone needs no journal: one ftruncate cannot be half done."""
        if not self.ranges:
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
            return
        self._reserve(size)
        self._append(_COMMIT.pack(_COMMIT_MARK, size, len(self.ranges), self.hasher.digest()))
        os.fdatasync(self.jfd)
        os.fsync(self.dirfd)  # the journal's name must outlive a crash too
        self.committed = True
        _write_ranges(self.jfd, self.fd, self.ranges, size)

    def _reserve(self, size: int) -> None:
        """Allocate the holes the ranges will fill, so running out of space stops the
        update before the commit rather than halfway through the writes."""
        old = os.fstat(self.fd).st_size
        for off, length, _ in self.ranges:
            end = min(off + length, old, size)  # growth past `old` allocates as it writes
            if off < end:
                os.posix_fallocate(self.fd, off, end - off)

    def finish(self) -> None:
        """The file is complete and its attributes are set: drop the journal (its name
        first, while the lock still holds)."""
        try:
            os.unlink(self.jname, dir_fd=self.dirfd)
        finally:
            self.close()

    def discard(self) -> bool:
        """Give up before the commit: the file was never touched. After the commit the
        journal stays for the next run to apply (False)."""
        if self.committed:
            self.close()
            return False
        try:
            os.unlink(self.jname, dir_fd=self.dirfd)
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Close the journal (the target's fd belongs to the caller once started)."""
        if self.jfd >= 0:
            os.close(self.jfd)
            self.jfd = -1


def _write_ranges(jfd: int, fd: int, ranges: list[tuple[int, int, int]], size: int) -> None:
    """The journal's ranges into the file, cut at `size` as its digest was."""
    for off, length, pos in ranges:
        length = min(length, size - off)
        done = 0
        while done < length:
            data = os.pread(jfd, min(READ_SIZE, length - done), pos + done)
            if not data:
                raise OSError(errno.EIO, "redo journal shorter than its records")
            os.pwrite(fd, data, off + done)
            done += len(data)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    os.fdatasync(fd)


def recover(dirfd: int, jname: bytes, drop_invalid: bool = True) -> bool | None:
    """Finish or drop the update a killed run left behind; the journal is removed
    either way. True when its data was written into the file. With drop_invalid
    False, a file that holds no committed journal stays (it may be a real file of that
    name, which only the whole file list can tell) and None says so. A journal that a
    running fscsync holds (its flock: two runs into one directory) is left to it: False,
    as if nothing were there."""
    jfd = os.open(jname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        fcntl.flock(jfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(jfd)
        return False
    except OSError:  # no flock here: recover as before
        pass
    try:
        found = _read_journal(jfd)
        if found is None and not drop_invalid:
            return None
        applied = False
        if found is not None:
            name, ino, size, ranges = found
            try:
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_ino == ino:
                        _write_ranges(jfd, fd, ranges, size)
                        applied = True
                finally:
                    os.close(fd)
    finally:
        os.close(jfd)
    os.unlink(jname, dir_fd=dirfd)
    return applied


def _read_journal(jfd: int) -> tuple[bytes, int, int, list[tuple[int, int, int]]] | None:
    """Target name, inode, final size and ranges of a committed journal; None when it
    was never committed (or is not a journal at all)."""
    total = os.fstat(jfd).st_size
    head = os.pread(jfd, _HEAD.size, 0)
    if len(head) < _HEAD.size or total < _HEAD.size + _COMMIT.size:
        return None
    magic, ino, nlen = _HEAD.unpack(head)
    if magic != _MAGIC:
        return None
    name = os.pread(jfd, nlen, _HEAD.size)
    body_end = total - _COMMIT.size
    mark, size, count, digest = _COMMIT.unpack(os.pread(jfd, _COMMIT.size, body_end))
    if mark != _COMMIT_MARK:
        return None
    h = xxhash.xxh3_128()
    pos = 0
    while pos < body_end:
        data = os.pread(jfd, min(READ_SIZE, body_end - pos), pos)
        if not data:
            return None
        h.update(data)
        pos += len(data)
    if h.digest() != digest or name in (b"", b".", b"..") or b"/" in name:
        return None
    ranges = []
    pos = _HEAD.size + nlen
    while pos < body_end:
        rec = os.pread(jfd, _REC.size, pos)
        if len(rec) < _REC.size:
            return None
        off, length = _REC.unpack(rec)
        pos += _REC.size
        ranges.append((off, length, pos))
        pos += length
    if pos != body_end or len(ranges) != count:
        return None
    return name, ino, size, ranges

"""Reading and writing file data: O_DIRECT-safe aligned reads, kernel-side range copies."""

from __future__ import annotations

import errno
import mmap
import os

import xxhash

READ_SIZE = 1 << 20


class BlockReader:
    """Positional reads from an fd that may be O_DIRECT.

    O_DIRECT needs aligned offsets and aligned memory: reads go through an
    anonymous mmap buffer (page aligned), which preadv fills.
    """

    def __init__(self, fd: int, direct: bool):
        self.fd = fd
        self.direct = direct
        self._buf: mmap.mmap | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        if not self.direct:
            return os.pread(self.fd, length, offset)
        aligned = -(-length // 4096) * 4096
        if self._buf is None or len(self._buf) < aligned:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, max(aligned, READ_SIZE))
        got = os.preadv(self.fd, [memoryview(self._buf)[:aligned]], offset)
        return self._buf[: min(got, length)]

    def close(self) -> None:
        if self._buf is not None:
            self._buf.close()
            self._buf = None


def digest_fd(reader: BlockReader, size: int | None = None) -> bytes:
    """Whole-file xxh3-128 from offset 0 (to EOF, or `size` bytes)."""
    h = xxhash.xxh3_128()
    off = 0
    while size is None or off < size:
        want = READ_SIZE if size is None else min(READ_SIZE, size - off)
        data = reader.read_at(off, want)
        if not data:
            break
        h.update(data)
        off += len(data)
    return h.digest()


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Copy [offset, offset+length) between two files at the same offset, in the kernel
    where it can, through a buffer where it cannot. Holes in the source stay holes
    (the target is a fresh file): an encrypted file's hole must not become
    allocated zero ciphertext, which would decrypt to garbage."""
    end = offset + length
    for start, stop in data_segments(src_fd, end, offset):
        _copy_data(src_fd, dst_fd, start, stop - start)


def copy_file(src_fd: int, dst_fd: int, size: int | None = None) -> int:
    """A whole file's data (`size` bytes, else all it holds now) into a fresh file:
    copy_range, then the size set, which a hole at the end would otherwise leave
    short. Returns the size."""
    if size is None:
        size = os.fstat(src_fd).st_size
    copy_range(src_fd, dst_fd, 0, size)
    os.ftruncate(dst_fd, size)
    return size


def _copy_data(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                 errno.EBADF, errno.ENOTSUP):
                raise
            _copy_buffered(src_fd, dst_fd, offset + done, length - done)
            return
        if n == 0:
            raise OSError(errno.EIO, "basis file shrank while copying from it")
        done += n


def _copy_buffered(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    reader = BlockReader(src_fd, direct=False)
    end = offset + length
    try:
        while offset < end:
            data = _read_any(src_fd, reader, offset, min(READ_SIZE, end - offset))
            if not data:
                raise OSError(errno.EIO, "basis file shrank while copying from it")
            os.pwrite(dst_fd, data, offset)
            offset += len(data)
    finally:
        reader.close()


def _read_any(fd: int, reader: BlockReader, offset: int, length: int) -> bytes:
    """pread, retried through an aligned buffer when the fd is O_DIRECT (EINVAL)."""
    try:
        return os.pread(fd, length, offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    reader.direct = True
    return reader.read_at(offset, length)


def data_segments(fd: int, size: int, start: int = 0) -> list[tuple[int, int]]:
    """The (offset, end) ranges in [start, size) that hold data; holes read as zeros."""
    segs = []
    off = start
    try:
        while off < size:
            start = os.lseek(fd, off, os.SEEK_DATA)
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segs.append((start, end))
            off = end
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return segs
        return [(start, size)] if size > start else []
    return segs

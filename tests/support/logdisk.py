"""A disk that records every write and flush, for power-cut tests (dm-log-writes by hand).

This machine's kernel has no device-mapper, so dm-flakey and dm-log-writes cannot be
had. Instead a FUSE filesystem serves one file, `disk`, backed by an image file; a
loop device on that file is the disk the receiver's ext4 lives on. The loop driver
turns each block write into a write of the file and each flush (REQ_PREFLUSH, and
the flush after a FUA write, since loop declares no FUA) into an fsync, which the
single-threaded server records in order in a log, as dm-log-writes does. Writing to
the file `mark` records a mark (a label) at that point of the log.

`replay` then rebuilds what the disk may hold after a power cut at any record: every
write before the last flush is there, and of those after it, which a disk with a
volatile cache may or may not have kept, each 4 KiB sector independently with
probability 1/2.

Run as `python logdisk.py IMAGE LOG MOUNTPOINT`; it serves until unmounted.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import struct
import sys
from typing import NamedTuple

_REC = struct.Struct(">cQI")  # kind (W write, F flush, M mark), offset, length
WRITE, FLUSH, MARK = b"W", b"F", b"M"
SECTOR = 4096
"""The unit a disk writes whole: an unflushed write may survive in part, sector by sector."""


class Record(NamedTuple):
    kind: bytes
    offset: int
    length: int
    pos: int  # where its data lies in the log file


def read_log(path: str) -> list[Record]:
    records = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        kind, offset, length = _REC.unpack_from(data, pos)
        pos += _REC.size
        records.append(Record(kind, offset, length, pos))
        pos += length
    return records


def mark_index(log: str, records: list[Record], label: bytes) -> int:
    """Index of the mark record with this label."""
    with open(log, "rb") as f:
        for i, r in enumerate(records):
            if r.kind == MARK and os.pread(f.fileno(), r.length, r.pos) == label:
                return i
    raise LookupError(label)


def replay(log: str, records: list[Record], image: str, cut: int, rng: random.Random) -> int:
    """Apply records[:cut] onto `image` as a power cut just before record `cut` may
    leave it: flushed writes all, each sector of the unflushed ones kept or lost at
    random. Returns how many sectors were dropped."""
    last_flush = max((i for i in range(cut) if records[i].kind == FLUSH), default=-1)
    dropped = 0
    fd = os.open(image, os.O_WRONLY)
    lfd = os.open(log, os.O_RDONLY)
    try:
        for i in range(cut):
            r = records[i]
            if r.kind != WRITE:
                continue
            data = os.pread(lfd, r.length, r.pos)
            if i <= last_flush:
                os.pwrite(fd, data, r.offset)
                continue
            for at in range(0, len(data), SECTOR):  # a disk tears writes at sectors
                if rng.random() < 0.5:
                    dropped += 1
                else:
                    os.pwrite(fd, data[at : at + SECTOR], r.offset + at)
    finally:
        os.close(lfd)
        os.close(fd)
    return dropped


def serve(image: str, log: str, mountpoint: str) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy

    class LogDisk(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.fd = os.open(image, os.O_RDWR)
            self.size = os.fstat(self.fd).st_size
            self.log = open(log, "wb")  # noqa: SIM115 (open for the server's life)

        def _record(self, kind: bytes, offset: int, data: bytes) -> None:
            self.log.write(_REC.pack(kind, offset, len(data)))
            self.log.write(data)

        def getattr(self, path: str, fh: int | None = None) -> dict:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o700, "st_nlink": 2}
            if path in ("/disk", "/mark"):
                return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1,
                        "st_size": self.size if path == "/disk" else 0}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list:
            return [".", "..", "disk", "mark"]

        def open(self, path: str, flags: int) -> int:
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            if path == "/disk" and length != self.size:
                raise mfusepy.FuseOSError(errno.EPERM)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(self.fd, size, offset) if path == "/disk" else b""

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if path == "/mark":
                self._record(MARK, 0, data)
                self.log.flush()
                return len(data)
            if offset + len(data) > self.size:
                raise mfusepy.FuseOSError(errno.ENOSPC)
            os.pwrite(self.fd, data, offset)
            self._record(WRITE, offset, data)
            return len(data)

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._record(FLUSH, 0, b"")
            self.log.flush()
            return 0

        def destroy(self, path: str) -> None:
            self.log.close()
            os.close(self.fd)

    mfusepy.FUSE(LogDisk(), mountpoint, foreground=True, nothreads=True, direct_io=True,
                 attr_timeout=0, entry_timeout=0, fsname="logdisk")


if __name__ == "__main__":
    serve(*sys.argv[1:4])

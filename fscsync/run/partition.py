"""Which part of the source tree one stream of `--parallel N` lists.

Every stream walks the whole directory tree (a readdir per directory, no lstat
of what it does not send) in the same order, so all of them see the same
sequence of units: the non-directories of each directory, in slices of SLICE
names. A shared ticket counter hands out the units: a stream owns the unit whose
number it drew, and draws the next one when it gets there. A stream slowed by
big files draws fewer tickets, so the others take over the rest of a huge
directory (work stealing without a queue); no unit is owned twice.

Directories are not partitioned: the first pass (`dirs_only`) lists all of them
once, with their attributes, and the streams list each as an implied directory
(made if missing, never itemized, attributes left to the final pass). Hard links
(with -H) are routed by inode: every member of a group goes to the stream its
(device, inode) hashes to, so each group is linked within one stream.

A stream also digests every directory listing it walked; the streams' digests
differ only if the source changed under them, and then no deletion is done
(a unit could have been cut differently for two of them).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import struct
import tempfile

from fscsync.engine.flist import IMPLIED

SLICE = 128
"""Non-directories of one directory a unit holds: small enough that N streams share
a directory of a few thousand files, big enough that drawing a ticket (a locked
read and write of 8 bytes) costs nothing beside the lstat calls."""
_TICKET = struct.Struct("=q")


class Tickets:
    """A counter shared by forked processes: a temporary file's first 8 bytes, under
    a POSIX record lock (which, unlike flock, excludes processes that share the
    open file)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # already unlinked: nothing to clean up
        self.fd = self.file.fileno()
        os.pwrite(self.fd, _TICKET.pack(0), 0)

    def draw(self) -> int:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            (n,) = _TICKET.unpack(os.pread(self.fd, 8, 0))
            os.pwrite(self.fd, _TICKET.pack(n + 1), 0)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return n

    def close(self) -> None:
        self.file.close()


class Partition:
    """The scanner's view of one stream (Scanner.partition): `dirs_only` for the first
    pass, else stream `index` of `count` drawing units from `tickets`."""

    def __init__(self, index: int, count: int, tickets: Tickets | None, hard_links: bool,
                 dirs_only: bool = False):
        self.index = index
        self.count = count
        self.tickets = tickets
        self.hard_links = hard_links
        self.dirs_only = dirs_only
        self.unit = 0  # the number of the next unit in the walk
        self.ticket = -1  # the unit this stream owns next
        self.owned: set[bytes] = set()  # of the directory being walked
        self.digest = hashlib.blake2b(digest_size=16)

    def _mine(self) -> bool:
        """Whether the next unit is this stream's (each call is one unit)."""
        if self.ticket < self.unit:
            self.ticket = self.tickets.draw()
        self.unit += 1
        return self.ticket == self.unit - 1

    def names(self, where: bytes, prefix: bytes, follows: bool) -> list[bytes]:
        """The sorted names of directory `where` that the scanner is to lstat: every
        directory (and symlink, where -L or -k may make one a directory), and the
        non-directories of the units this stream owns (all regular files with -H:
        their link count decides)."""
        with os.scandir(where) as it:
            kinds = sorted((e.name, e.is_dir(follow_symlinks=False),
                            follows and e.is_symlink()) for e in it)
        self.digest.update(prefix + b"\0" + b"\0".join(k[0] for k in kinds) + b"\0\0")
        keep: list[bytes] = []
        others = [name for name, is_dir, _ in kinds if not is_dir]
        owned = set()
        if not self.dirs_only:
            for i in range(0, len(others), SLICE):
                if self._mine():
                    owned.update(others[i : i + SLICE])
        self.owned = owned
        for name, is_dir, link in kinds:
            if is_dir or link or name in owned or (self.hard_links and not self.dirs_only):
                keep.append(name)
        return keep

    def mine(self, name: bytes, st: os.stat_result) -> bool:
        """Whether this stream lists the non-directory `name` of the directory walked."""
        if self.dirs_only:
            return False
        if self.hard_links and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            return hash((st.st_dev, st.st_ino)) % self.count == self.index
        return name in self.owned

    def top(self, e, st: os.stat_result) -> bool:
        """A source named on the command line: a directory is every stream's, anything
        else one unit."""
        if e.is_dir:
            return True
        if self.dirs_only:
            return False
        if self.hard_links and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            return hash((st.st_dev, st.st_ino)) % self.count == self.index
        return self._mine()

    def directory(self, e) -> None:
        """A directory entry about to be listed: the streams list it as implied."""
        if not self.dirs_only:
            e.rdev = IMPLIED

"""What crosses between the receiving stages, as values.

The receiver makes one RxState per run and hands it, with the other values each
stage needs, to the generator (decides per entry, sends requests), the writer
(builds the requested files) and the finaliser (hard links, deletions, directory
attributes); no stage sees the receiver. The generator's hand-off to the writer is
a Pending per requested file; its hand-off to the finaliser is a Decisions, which
merge, so the copy passes of several partitions can be finalised once.
"""

from __future__ import annotations

import os
from enum import IntEnum

from fscsync import errors

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.engine.deltiming import Deleter
    from fscsync.engine.filters import DeleteFilter
    from fscsync.engine.flist import Entry
    from fscsync.engine.partial import PartialDirs
    from fscsync.engine.report import Reporter
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.fs.fileio import BlockReader
    from fscsync.fs.inplace import Update

class Status(IntEnum):
    """An entry's state in RxState.status (no key: undecided)."""

    UNDECIDED = 0
    OK = 1  # in place at the destination (or settled: left alone, listed, dry run)
    FAILED = 2


def locate(tree: DestTree, e: Entry, single_name: bytes | None) -> tuple[int, bytes]:
    """(parent fd, name) of an entry at the destination; name b"" is the root.
    `single_name` is the destination's name for a one-file list (rsync's `cp a b`)."""
    if single_name is not None:
        return tree.root_fd, single_name
    if e.path == b".":
        return tree.root_fd, b""
    head, _, name = e.path.rpartition(b"/")
    return tree.dirfd(head), name


class RxState:
    """The file list as it arrives, each entry's status, the requests in flight and the
    counters: what the generator and the writer both read and change."""

    def __init__(self, reporter: Reporter, stats: Stats, single_name: bytes | None):
        self.reporter = reporter
        self.stats = stats
        self.single_name = single_name
        self.count = 0  # entries the list has brought so far (decided or being decided)
        self.entries: dict[int, Entry] = {}
        """The entries still needed, by index: a file from its decision until it is
        settled or its request completes (at most the sender's window of them); a
        directory until the final pass sets its attributes (one Entry a directory, as
        rsync keeps its directory list); with -H a hard-link leader (whose link is its own
        index) and
        each later name of its group until it is linked. A file settled from
        the batch's columns never gets an Entry at all."""
        self.status: dict[int, Status] = {}
        """The status of each decided entry that is in `entries`, or being decided."""
        self.pending: dict[int, Pending] = {}
        self.requested = 0
        self.completed = 0
        self.backups: Backups | None = None  # -b: what is replaced or deleted is kept
        self.partials: PartialDirs | None = None  # --partial-dir, --delay-updates
        self.successes: list[tuple[int, int, int]] | None = None
        """--remove-source-files: (index, st_dev, st_ino) of each entry now in place at
        the destination, for the sender (sent and cleared by the receiver)."""

    def succeeded(self, idx: int, st: os.stat_result | None) -> None:
        """Entry idx is in place as inode `st`: with --remove-source-files the sender
        may remove its source."""
        if self.successes is not None and st is not None:
            self.successes.append((idx, st.st_dev, st.st_ino))

    def locate(self, tree: DestTree, e: Entry) -> tuple[int, bytes]:
        return locate(tree, e, self.single_name)

    def dest_path(self, e: Entry) -> bytes:
        """The entry's path at the destination: a one-file list's file has the name
        the destination gives it (where its backup goes, -b)."""
        return self.single_name if self.single_name is not None else e.path

    def done_with(self, idx: int) -> None:
        """Drop an entry nothing later needs (directories wait for the final pass, and
        so do hard-link leaders): a big run would otherwise hold its whole file list."""
        e = self.entries.get(idx)
        if e is not None and not e.is_dir and e.link != idx:
            del self.entries[idx]
            self.status.pop(idx, None)

    def fail(self, idx: int, message: str, code: int = errors.PARTIAL) -> None:
        self.status[idx] = Status.FAILED
        self.reporter.error(message, code)

    def failed(self, idx: int, err: errors.FscsyncError) -> None:
        """The entry failed on a condition named by its class: its line, its code."""
        self.status[idx] = Status.FAILED
        self.reporter.failed(err)

    def os_fail(self, idx: int, what: str, exc: OSError) -> None:
        """The entry failed on an OS error (a full disk or quota ends the run with 11)."""
        self.failed(idx, errors.OSFailed(what, self.entries[idx].path, exc))


class Pending:
    """A requested file: made by the generator, built by the writer until it is renamed
    into place."""

    __slots__ = ("idx", "basis_layout", "has_basis", "chunk", "retried", "fd", "tmpdir",
                 "tmpname", "basis_fd", "basis_reader", "hasher", "hash_pos", "sequential",
                 "data_end", "differ", "update", "basis_size", "replaced_mode", "basis_at")

    def __init__(self, idx: int, basis_layout: int, has_basis: bool):
        self.idx = idx
        self.basis_layout = basis_layout  # cipher.PLAIN, STORED or VIRTUAL
        self.has_basis = has_basis
        self.chunk = 0
        self.retried = False
        self.fd: int | None = None
        self.tmpdir = -1
        self.tmpname = b""
        self.basis_fd: int | None = None
        self.basis_reader: BlockReader | None = None
        self.hasher = None
        self.hash_pos = 0
        self.sequential = True
        self.data_end = 0
        self.differ: int | None = None  # bytes in chunks the sender found different
        self.update: Update | None = None  # set when the file is updated in place
        self.basis_size = 0  # what the request told the sender it may copy from
        self.replaced_mode: int | None = None  # the file it replaces: its mode stays
        self.basis_at: BasisAt | None = None  # None: the basis is the file it replaces


class BasisAt:
    """Where a requested file's basis is when it is not the file it replaces (rsync's
    fnamecmp and fnamecmp_type): a --partial-dir file (`partial`: its directory fd is
    PartialDirs', and the file goes once the new one is in), or a copy in a
    --link-dest/--copy-dest/--compare-dest DIR (its directory fd a dup the writer
    closes). Either way nothing of the destination's own is updated in place."""

    __slots__ = ("dirfd", "name", "partial")

    def __init__(self, dirfd: int, name: bytes, partial: bool):
        self.dirfd = dirfd
        self.name = name
        self.partial = partial


class Decisions:
    """What the generator left for the final pass, by value (entries, not indices into
    one run's list), so the decisions of several partitions merge into one.

    dirs: directories whose attributes the final pass sets, parents before children,
    each with whether this run made it (hard links are made before: generator.py and
    hardlinks.py). existing: the names listed in each destination directory --delete
    looks at; children: the names the file list brings to each. litter: names like
    a killed run's temp files, per directory; incoming: the names the list brings
    to those directories (a real file that only looks like litter stays). rules: the
    filter rules deletions obey, with the destination merge files read so far;
    deleter: the run's deletions, of which delay and after are still to do."""

    __slots__ = ("dirs", "existing", "children", "litter", "incoming", "rules",
                 "deleter")

    def __init__(self) -> None:
        self.dirs: list[tuple[Entry, bool]] = []
        self.existing: dict[bytes, list[bytes]] = {}
        self.children: dict[bytes, set[bytes]] = {}
        self.litter: dict[bytes, list[bytes]] = {}
        self.incoming: dict[bytes, set[bytes]] = {}
        self.rules: DeleteFilter | None = None  # the receiver's filter rules for --delete
        self.deleter: Deleter | None = None

    def merge(self, other: Decisions) -> Decisions:
        """Fold another partition's decisions in (and return self). A directory's names
        may come from several partitions, so the sets are joined; directories are put
        back in tree order, which the final pass walks backwards (children first)."""
        self.dirs += other.dirs
        self.dirs.sort(key=lambda d: () if d[0].path == b"." else tuple(d[0].path.split(b"/")))
        self.rules = self.rules or other.rules
        self.deleter = self.deleter or other.deleter
        for mine, theirs in ((self.existing, other.existing), (self.litter, other.litter)):
            for rel, names in theirs.items():
                mine[rel] = list(dict.fromkeys(mine.get(rel, []) + names))
        for mine, theirs in ((self.children, other.children),
                             (self.incoming, other.incoming)):
            for rel, names in theirs.items():
                mine.setdefault(rel, set()).update(names)
        return self

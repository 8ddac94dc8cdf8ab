"""What an existing destination directory holds, listed once per run: the names
--delete compares with the file list, the litter a killed run left (temp files,
journals), and the in-place updates it committed but did not finish."""

from __future__ import annotations

from fscsync.errors import JournalUnrecoverable, escape
from fscsync.fs.destfs import TEMP_MARK, is_temp_name, listdir
from fscsync.fs.inplace import is_journal_name, recover

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.filters import DeleteFilter
    from fscsync.engine.report import Reporter
    from fscsync.fs.destfs import DestTree
    from fscsync.options import Options


class DestListing:
    """The per-directory names the final pass needs, by destination-relative path:
    `existing` (for --delete), `litter` (ours to remove) and `incoming` (the names
    the file list brings where litter lies: those are not litter's to lose)."""

    def __init__(self, opts: Options, reporter: Reporter):
        self.opts = opts
        self.reporter = reporter
        self.existing: dict[bytes, list[bytes]] = {}
        self.litter: dict[bytes, list[bytes]] = {}
        self.incoming: dict[bytes, set[bytes]] = {}

    def scan(self, tree: DestTree, rel: bytes, is_top: bool,
             delete_rules: DeleteFilter | None) -> None:
        """List directory `rel` once: clean up after a killed run and remember the
        names for --delete (`is_top`: the transfer's top, which -d without -r lists).

        Without --delete, a directory whose time still equals the source's is not
        listed (a tenth of a no-change run's receiver time): making a temp file or a
        journal in it set its time to that moment, and a killed run never gets as far
        as setting it back. What such a directory can still hold is what a finished
        run failed to remove: litter, or the committed journal of an update that
        failed half applied, whose file then carries the time of those writes and is
        sent again; only --size-only could miss that, and it lists."""
        opts = self.opts
        try:
            fd = tree.dirfd(rel)
            names = listdir(fd)
        except OSError:
            return
        deletes = opts.delete and (opts.recursive or is_top)
        if delete_rules is not None and not opts.delete_after:
            delete_rules.state(rel, tree.dirfd, fd)  # its merge files as they are now
        if TEMP_MARK not in b"/".join(names):  # one search instead of a match per name
            if deletes:
                self.existing[rel] = names
            return
        keep = []
        litter = []
        for n in names:
            if is_journal_name(n) and not opts.dry_run and self._recover(fd, rel, n):
                continue
            if is_temp_name(n) or is_journal_name(n):
                litter.append(n)
                continue
            keep.append(n)
        if litter:
            self.litter[rel] = litter
            self.incoming.setdefault(rel, set())
        if deletes:
            self.existing[rel] = keep

    def _recover(self, fd: int, rel: bytes, jname: bytes) -> bool:
        """Finish an in-place update a killed run committed, before any entry of this
        directory is compared; True when the journal is gone. Anything else of that name
        is litter for the final pass, unless the file list brings that name."""
        path = rel + b"/" + jname if rel else jname
        try:
            applied = recover(fd, jname, drop_invalid=False)
        except OSError as exc:
            self.reporter.failed(JournalUnrecoverable(path=path, reason=exc))
            return True
        if applied:
            self.reporter.info(f'finished the interrupted update of "{escape(path)}"', 0)
        return applied is not None

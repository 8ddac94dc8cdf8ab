"""-H at the receiver: one later name of a hard-link group made a link to its leader's
copy (rsync's hard_link_check and finish_hard_link).

The generator links a name as soon as it decides it when the leader's copy is already
in place (or has failed), so a run keeps no list of every linked name; only names whose
leader was still in flight wait for the final pass (finalize.py), as do the names of
one --parallel stream, whose leader another stream may bring.
"""

from __future__ import annotations

import os
import stat

from fscsync.engine import itemize
from fscsync.engine.backup import Removal
from fscsync.engine.rxstate import locate
from fscsync.engine.stats import tally
from fscsync.errors import OSFailed, escape
from fscsync.fs.destfs import link_in, lstat_at, remove_tree

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.backup import Backups
    from fscsync.engine.flist import Entry
    from fscsync.engine.report import Reporter
    from fscsync.engine.stats import Stats
    from fscsync.fs.destfs import DestTree
    from fscsync.options import Options


class Linker:
    """Links names to their leaders at the destination; what it makes is counted in
    `stats`, what fails goes to `reporter`; with -b a replaced file is kept."""

    def __init__(self, opts: Options, reporter: Reporter, stats: Stats,
                 single_name: bytes | None, backups: Backups | None):
        self.opts = opts
        self.reporter = reporter
        self.stats = stats
        self.single_name = single_name
        self.backups = backups

    def link(self, tree: DestTree, e: Entry, leader: Entry,
             leader_ok: bool) -> os.stat_result | None:
        """Make `e` a link to `leader`'s copy, unless it already is one. The inode it
        then names (for --remove-source-files, as rsync's finish_hard_link reports every
        linked name), or None if it names none (failed, or a dry run)."""
        if not leader_ok:
            self.reporter.error(f'cannot hard-link "{escape(e.path)}": '
                                f'"{escape(leader.path)}" was not transferred')
            return None
        dry_run = self.opts.dry_run
        try:
            pfd, name = locate(tree, e, self.single_name)
        except FileNotFoundError:
            if not dry_run:
                raise
            tally(self.stats.created, itemize.kind_name(e.mode))
            self._item(e, leader, new=True)  # into a directory the run would make
            return None
        try:
            lfd, lname = locate(tree, leader, self.single_name)
            lst = lstat_at(lfd, lname) if not dry_run else None
            st = lstat_at(pfd, name)
            if lst is not None and st is not None and (st.st_dev, st.st_ino) == (
                    lst.st_dev, lst.st_ino):
                return st
            if st is None:
                tally(self.stats.created, itemize.kind_name(e.mode))
            self._item(e, leader, new=st is None)
            if not dry_run:
                if st is not None and stat.S_ISDIR(st.st_mode):
                    remove_tree(pfd, name, Removal(self.backups), rel=e.path)
                if self.backups is not None and st is not None:
                    self.backups.keep(pfd, name, e.path)
                link_in(lfd, lname, pfd, name)
            return lst
        except OSError as exc:
            self.reporter.failed(OSFailed("hard-link of", e.path, exc))
            return None

    def _item(self, e: Entry, leader: Entry, new: bool) -> None:
        itemize.tell(self.reporter, self.opts,
                     lambda: itemize.line("h", e, new=new, suffix=f" => {escape(leader.path)}"),
                     lambda: f"{escape(e.path)} => {escape(leader.path)}")

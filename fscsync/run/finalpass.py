"""The one final pass of a `--parallel` run, on the receiving host: every stream's
spooled Decisions merged, then deletions, the litter sweep and directory
attributes (post-order) carried out once, after every stream is done.

It is a server role (`finalize`) like sender and receiver, so it runs the same
way locally (a forked server) and over ssh (one more connection), and it reports
through the same LOG frames and a closing STATS frame.
"""

from __future__ import annotations

import os

from fscsync.engine import idmap, spool
from fscsync.engine.deltiming import DELAY, Deleter
from fscsync.engine.filters import delete_filter
from fscsync.engine.finalize import Finalizer
from fscsync.engine.report import Reporter
from fscsync.engine.stats import Stats
from fscsync.errors import FscsyncError, escape
from fscsync.fs.destfs import Confined, DestTree
from fscsync.fs.meta import IdMapper
from fscsync.options import Options


def finalize(opts: Options, reporter: Reporter, dest: bytes, token: bytes,
             confined: Confined | None = None) -> Stats:
    """Merge the run's spool files (`token`) and finalise `dest` once; the spool goes."""
    stats = Stats()
    try:
        decisions, users, groups, io_error, _count = spool.read_all(token)
        ids = IdMapper(opts.numeric_ids,
                       idmap.rules(opts.usermap, "--usermap", reporter.warning),
                       idmap.rules(opts.groupmap, "--groupmap", reporter.warning))
        ids.user_names.update(users)
        ids.group_names.update(groups)
        for rel in decisions.litter:  # the files the streams brought are no litter
            decisions.incoming.setdefault(rel, set()).update(decisions.children.get(rel, ()))
        tree = _open(dest, confined, opts.dry_run)
        try:
            decisions.rules = delete_filter(opts, tree, decisions.existing)
            if opts.delete:  # the streams found what goes; it goes now, once
                opts.delete_when = DELAY
                decisions.deleter = Deleter(opts, reporter, stats, decisions.rules,
                                            decisions.existing, decisions.children)
                decisions.deleter.list_error = io_error
            Finalizer(opts, ids, reporter, stats).run(tree, decisions)
        finally:
            if tree is not None:
                tree.close()
    finally:
        spool.remove(token)
    return stats


def _open(dest: bytes, confined: Confined | None, dry_run: bool) -> DestTree | None:
    """The destination directory the streams wrote (absent only in a dry run)."""
    path = dest.rstrip(b"/") or b"/"
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags) if confined is None else confined.open(path, flags)
    except FileNotFoundError:
        if dry_run:
            return None
        raise FscsyncError(f'destination "{escape(dest)}" vanished before the final pass') \
            from None
    except OSError as exc:
        raise FscsyncError(f'cannot open destination "{escape(path)}": {exc.strerror}') \
            from None
    return DestTree(fd)

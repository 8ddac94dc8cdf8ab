"""The filter rules one side applies (exclude.c's check_filter and push_local_filters):
first-match-wins checks on paths relative to the transfer root, and per-directory
merge files read as a walk enters each directory.

Each side builds a `Filters` from the rule texts the client sent (filterrules.py
parses them) and keeps only the rules for its side (sender: hide/show, receiver:
protect/risk). Per-directory rules live in `DirState`s: the state of a directory is
its parent's plus the rules its own merge files add, so a walk keeps one state per
open directory. `DeleteFilter` is the receiver's view for --delete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from fscsync.engine.filterrules import (
    ANCHORED2ABS,
    CVS,
    INCLUDE,
    MERGE,
    NO_INHERIT,
    NO_PREFIXES,
    PERDIR,
    PERISHABLE,
    RECEIVER,
    SENDER,
    SIDES,
    WORD_SPLIT,
    XATTR,
    Parser,
    Rule,
    Target,
    compact,
)

DEFAULT_CVSIGNORE = (b"RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state "
                     b".nse_depinfo *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej "
                     b".del-* *.a *.olb *.o *.obj *.so *.exe *.Z *.elc *.ln core .svn/ "
                     b".git/ .hg/ .bzr/")


class DirState:
    """The rules in force inside one directory of a walk: for each per-directory merge
    rule, the rules its files added here and above (if inherited)."""

    __slots__ = ("lists", "slots", "abs", "root")

    def __init__(self, lists: dict[Rule, list[Rule]], slots: list[Rule], abs_root: bytes):
        self.lists = lists
        self.slots = slots
        self.abs = abs_root  # the walk's root, absolute (rsync's curr_dir)
        self.root = abs_root.lstrip(b"/")


Reader = Callable[[bytes], "bytes | None"]
"""Reads a file named relative to the directory being entered; None if it is not there."""


class Filters:
    """The rules one side applies (side "sender" or "receiver"), from the rule texts
    the client sent; rsync's `elide` keeps each side to its own rules."""

    def __init__(self, texts: Iterable[bytes], side: str, delete_excluded: bool = False,
                 cvs_exclude: bool = False, from0: bool = False):
        self.side = side
        self.delete_excluded = delete_excluded
        self.from0 = from0
        self.names: dict[Rule, bytes] = {}  # per-directory file names, once set up
        self._setup_done = False
        slots: list[Rule] = []
        p = Parser(side, delete_excluded, from0, activate=_dedupe(slots))
        p.merges = False
        target = Target()
        for text in texts:
            p.parse(target, text)
        if cvs_exclude:
            p.parse(target, b":C")
            p.parse(target, b"-C")
        self.rules = compact([r for r in target.rules if self._mine(r)])
        self.slots = [r for r in self.rules if r.flags & PERDIR]
        cvs = [r for r in self.rules if r.flags & CVS and not r.flags & MERGE]
        self.cvs = self._cvs_rules(cvs[0].flags) if cvs else []
        self.xattr_rules = any(r.flags & XATTR for r in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _mine(self, rule: Rule) -> bool:
        """send_rules' elision: which rules this side checks."""
        f = rule.flags
        sides = f & SIDES
        if not sides and self.delete_excluded and (not f & PERDIR or f & NO_PREFIXES):
            sides = SENDER
        if not sides or sides == SIDES:
            return True
        return sides == (SENDER if self.side == "sender" else RECEIVER)

    def _cvs_rules(self, flags: int) -> list[Rule]:
        """The -C list: rsync's defaults (perishable), ~/.cvsignore, $CVSIGNORE."""
        p = Parser(self.side, self.delete_excluded)
        template = flags & (NO_PREFIXES | WORD_SPLIT | NO_INHERIT | CVS | SIDES)
        target = Target()
        p.parse(target, DEFAULT_CVSIGNORE, template | PERISHABLE)
        home = os.environb.get(b"HOME")
        if home:
            p.merge_file(target, os.path.join(home, b".cvsignore"), template, 0)
        env = os.environb.get(b"CVSIGNORE")
        if env:
            p.parse(target, env, template)
        return compact([r for r in target.rules if not p.other_side(r.flags)])

    # ---- walking ------------------------------------------------------------------

    def top(self, abs_root: bytes) -> DirState:
        """The state before a walk rooted at abs_root enters any directory."""
        return DirState({}, self.slots, abs_root)

    def enter(self, state: DirState, rel: bytes, read: Reader) -> DirState:
        """The state inside directory `rel` (transfer-relative, b"" for the root), whose
        per-directory merge files `read` returns (push_local_filters)."""
        if not state.slots:
            return state
        abs_dir = os.path.join(state.abs, rel) if rel else state.abs
        inherited_of = state.lists
        if not self._setup_done:
            self._setup_done = True
            inherited_of = self._parent_scan(state, abs_dir)
        slots = list(state.slots)
        p = Parser(self.side, self.delete_excluded, self.from0, cwd=state.abs,
                   activate=_dedupe(slots, self.names))
        p.dirbuf = abs_dir.rstrip(b"/") + b"/"
        lists: dict[Rule, list[Rule]] = {}
        i = 0
        while i < len(slots):
            m = slots[i]
            i += 1
            target = Target()
            name = self.names.get(m, m.pattern)
            data = None if b".." in name.split(b"/") else read(name)  # only below the dir
            if data is not None:
                p.parse_file(target, data, m.flags, ANCHORED2ABS)
            keep = not (m.flags & NO_INHERIT or target.cleared)
            local = compact(target.rules)
            lists[m] = local + inherited_of.get(m, []) if keep else local
        return DirState(lists, slots, state.abs)

    def _parent_scan(self, state: DirState, abs_dir: bytes) -> dict[Rule, list[Rule]]:
        """A per-directory file named with a path (-F's "/.rsync-filter") is first read
        in every directory from that path's down to the parent of the first directory
        the walk enters (setup_merge_file); later directories read its base name."""
        lists = dict(state.lists)
        here = abs_dir.rstrip(b"/") + b"/"
        for m in state.slots:
            if b"/" not in m.pattern:
                continue
            full = os.path.normpath(m.pattern if m.pattern.startswith(b"/")
                                    else os.path.join(abs_dir, m.pattern))
            top, _, name = full.rpartition(b"/")
            self.names[m] = name
            top = top.rstrip(b"/") + b"/"
            if not here.startswith(top):
                continue
            p = Parser(self.side, self.delete_excluded, self.from0, cwd=state.abs,
                       activate=_dedupe(list(state.slots), self.names))
            found: list[Rule] = []
            d = top
            while len(d) < len(here):
                target = Target()
                p.dirbuf = d
                data = p.read(d + name, 0, 0)
                if data is not None:
                    p.parse_file(target, data, m.flags, ANCHORED2ABS)
                found = target.rules if target.cleared else target.rules + found
                if m.flags & NO_INHERIT:
                    found = []
                d = here[: here.index(b"/", len(d)) + 1]
            lists[m] = found
        return lists

    # ---- checks -------------------------------------------------------------------

    def excluded(self, state: DirState, path: bytes, is_dir: bool,
                 perishable: bool = True) -> bool:
        """Is this transfer-relative path excluded (on the receiver: protected)?
        perishable=False: a directory being deleted, where 'p' rules do not hold."""
        return self._check(self.rules, state, path, is_dir, not perishable) < 0

    def _check(self, rules: list[Rule], state: DirState, path: bytes, is_dir: bool,
               skip_perishable: bool) -> int:
        for r in rules:
            f = r.flags
            if skip_perishable and f & PERISHABLE:
                continue
            if f & PERDIR:
                rc = self._check(state.lists.get(r, []), state, path, is_dir, skip_perishable)
            elif f & CVS:
                rc = self._check(self.cvs, state, path, is_dir, skip_perishable)
            elif r.matches(path, is_dir, state.root):
                return 1 if f & INCLUDE else -1
            else:
                continue
            if rc:
                return rc
        return 0

    def xattr_excluded(self, name: bytes) -> bool:
        """Is this xattr name excluded by an 'x' rule (of the command line)?"""
        for r in self.rules:
            if r.flags & XATTR and r.matches_xattr(name):
                return not r.flags & INCLUDE
        return False


def _dedupe(slots: list[Rule], names: dict[Rule, bytes] | None = None
            ) -> Callable[[Rule], bool]:
    """A per-directory merge rule for a file name already in force is dropped; a new
    one joins `slots` (and its file is read in the directory that named it too)."""
    names = names or {}

    def activate(rule: Rule) -> bool:
        name = rule.pattern.rpartition(b"/")[2]
        for s in slots:
            if names.get(s, s.pattern).rpartition(b"/")[2] == name:
                return False
        slots.append(rule)
        return True

    return activate


def for_side(opts, side: str) -> Filters | None:
    """This side's rules from the run's options, or None when there are none."""
    f = Filters(opts.filter_rules, side, opts.delete_excluded, opts.cvs_exclude, opts.from0)
    return f if f else None


def read_at(dirfd: int) -> Reader:
    """A Reader for a destination directory open as dirfd (no symlink followed)."""

    def read(name: bytes) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        except OSError:
            return None
        finally:
            os.close(fd)

    return read


class DeleteFilter:
    """The receiver's rules for --delete (rsync's delete_in_dir and delete_dir_contents):
    a destination name its rules exclude is protected. Each directory's state comes from
    its parent's, when the parent is a directory of the transfer, and the merge files
    in the destination directory itself, read when the generator lists it (the moment
    rsync's --delete-during reads them) or, with --delete-after, when deletions start."""

    def __init__(self, filters: Filters, root: bytes, existing: dict[bytes, list[bytes]]):
        self.filters = filters
        self.existing = existing  # the transfer's directories the destination has
        self._top = filters.top(os.path.abspath(root))
        self._states: dict[bytes, DirState] = {}

    def state(self, rel: bytes, dirfd: Callable[[bytes], int], fd: int | None = None
              ) -> DirState:
        """The state inside destination directory `rel` (open as fd, if it is)."""
        st = self._states.get(rel)
        if st is not None:
            return st
        head = rel.rpartition(b"/")[0] if rel else None
        parent = self._top
        if head is not None and head in self.existing:
            parent = self.state(head, dirfd)
        st = self.filters.enter(parent, rel, read_at(dirfd(rel) if fd is None else fd))
        self._states[rel] = st
        return st

    def state_below(self, parent: DirState, rel: bytes, fd: int) -> DirState:
        """The state inside a directory being deleted (not kept: it is going away)."""
        return self.filters.enter(parent, rel, read_at(fd))

    def protected(self, state: DirState, path: bytes, is_dir: bool,
                  perishable: bool = True) -> bool:
        return self.filters.excluded(state, path, is_dir, perishable)


def delete_filter(opts, tree, existing: dict[bytes, list[bytes]]) -> DeleteFilter | None:
    """The receiver's DeleteFilter for a --delete run with rules, else None; `tree` is
    the destination's DestTree (its root's absolute path is what '/' rules see)."""
    rules = for_side(opts, "receiver") if opts.delete and tree is not None else None
    if rules is None:
        return None
    return DeleteFilter(rules, os.readlink(b"/proc/self/fd/%d" % tree.root_fd), existing)

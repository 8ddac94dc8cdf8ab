"""rsync's filter rule grammar (exclude.c's parse_rule_tok, add_rule, parse_filter_str
and parse_filter_file): rule flags, one parsed `Rule` and how it matches a path, and
the `Parser` that turns rule texts and merge files into rules.

The client parses the command line once here (`parse_cli`, reading --exclude-from and
merge files) into the rule texts that travel in the options; which side applies which
rule, and the per-directory state of a walk, are filters.py's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from fscsync.engine.wildmatch import compile_match
from fscsync.errors import BadFilterRule, FilterFileUnreadable, escape

INCLUDE = 1 << 0
DIRECTORY = 1 << 1
ABS_PATH = 1 << 2
NEGATE = 1 << 3
PERISHABLE = 1 << 4
XATTR = 1 << 5
SENDER = 1 << 6
RECEIVER = 1 << 7
MERGE = 1 << 8
PERDIR = 1 << 9
NO_PREFIXES = 1 << 10
WORD_SPLIT = 1 << 11
NO_INHERIT = 1 << 12
CVS = 1 << 13
EXCLUDE_SELF = 1 << 14
CLEAR = 1 << 15
WILD = 1 << 16
WILD2 = 1 << 17
WILD2_PREFIX = 1 << 18
WILD3_SUFFIX = 1 << 19
SIDES = SENDER | RECEIVER
_FROM_CONTAINER = ABS_PATH | INCLUDE | DIRECTORY | NEGATE | PERISHABLE

OLD_PREFIXES = 1  # --exclude/--include and their -from files: only '+ ' and '- '
ANCHORED2ABS = 2  # a per-directory file: '/' anchors at that directory
FATAL = 4  # a file the user named: failing to read it ends the run

MAX_MERGE_DEPTH = 32
RSYNC_FILTER = b".rsync-filter"

_WORDS = {b"clear": b"!", b"dir-merge": b":", b"exclude": b"-", b"hide": b"H",
          b"include": b"+", b"merge": b".", b"protect": b"P", b"risk": b"R", b"show": b"S"}
_SPACE = b" \t\n\r\v\f"


class Rule:
    """One parsed rule: its flags and pattern, and how it matches (rule_matches)."""

    __slots__ = ("flags", "pattern", "slash_cnt", "regex", "trailing", "base_only")

    def __init__(self, flags: int, pattern: bytes, slash_cnt: int):
        self.flags = flags
        self.pattern = pattern
        self.slash_cnt = slash_cnt
        body = pattern
        anchored = body.startswith(b"/")
        if anchored:
            body = body[1:]
        self.base_only = not slash_cnt and not flags & WILD2
        self.trailing = slash_cnt + 1 if not anchored and slash_cnt and not flags & WILD2 \
            else 0
        anywhere = not anchored and not flags & WILD2_PREFIX and bool(flags & WILD2)
        self.regex = None if flags & (MERGE | CVS) else \
            compile_match(body, bool(flags & WILD), anywhere)

    def matches(self, name: bytes, is_dir: bool, root: bytes = b"") -> bool:
        """Does the rule match this transfer-relative path; `root` is the walk's
        directory as an absolute path without its leading slash (for '/' rules)."""
        f = self.flags
        if not name or f & XATTR:
            return False
        if self.base_only:
            s = name.rpartition(b"/")[2]
        elif f & ABS_PATH and root:
            s = root + b"/" + name
        elif f & WILD2_PREFIX:
            s = b"/" + name
        else:
            s = name
        negate = bool(f & NEGATE)
        if is_dir:
            if f & WILD3_SUFFIX:
                s += b"/"
        elif f & DIRECTORY:
            return negate
        if self.trailing:
            s = _trailing(s, self.trailing)
            if s is None:
                return negate
        return (self.regex.fullmatch(s) is not None) != negate

    @classmethod
    def group(cls, rules: list[Rule]) -> Rule:
        """One rule for a run of name-only rules with the same flags: the first of them
        that matches decides the same way as any other would, so one regex (an
        alternation) answers for all, instead of a Python call for each."""
        g = object.__new__(cls)
        g.flags = rules[0].flags
        g.pattern = b"|".join(r.pattern for r in rules)
        g.slash_cnt = g.trailing = 0
        g.base_only = True
        g.regex = re.compile(b"|".join(b"(?:" + r.regex.pattern + b")" for r in rules),
                             re.DOTALL)
        return g

    def matches_xattr(self, name: bytes) -> bool:
        if not name or not self.flags & XATTR:
            return False
        return (self.regex.fullmatch(name) is not None) != bool(self.flags & NEGATE)

    def text(self) -> bytes:
        """The rule as rsync sends it to its peer (get_rule_prefix + pattern)."""
        f = self.flags
        out = b":" if f & PERDIR else b"+" if f & INCLUDE else b"-"
        if f & ABS_PATH:
            out += b"/"
        if f & NEGATE:
            out += b"!"
        if f & CVS:
            out += b"C"
        else:
            out += b"n" if f & NO_INHERIT else b""
            out += b"w" if f & WORD_SPLIT else b""
            if f & NO_PREFIXES:
                out += b"+" if f & INCLUDE else b"-"
        for flag, mod in ((XATTR, b"x"), (SENDER, b"s"), (RECEIVER, b"r"),
                          (PERISHABLE, b"p")):
            if f & flag:
                out += mod
        return out + b" " + self.pattern + (b"/" if f & DIRECTORY else b"")


def compact(rules: list[Rule]) -> list[Rule]:
    """The rules with each run of groupable neighbours (name-only, same flags, not
    negated, not merges) made one Rule.group: same answers, far fewer calls."""
    out: list[Rule] = []
    run: list[Rule] = []
    key = None
    for r in rules + [None]:
        k = None
        if r is not None and r.base_only and not r.flags & (NEGATE | MERGE | CVS):
            k = r.flags & ~WILD
        if run and (k is None or k != key):
            out.append(run[0] if len(run) == 1 else Rule.group(run))
            run = []
        if k is not None:
            run.append(r)
            key = k
        elif r is not None:
            out.append(r)
    return out


def _trailing(s: bytes, count: int) -> bytes | None:
    """The last `count` slash-separated elements of s (wildmatch's trailing_N_elements)."""
    pos = len(s)
    while True:
        pos = s.rfind(b"/", 0, pos)
        if pos < 0:
            break
        count -= 1
        if count == 0:
            return s[pos + 1:]
    return s if count == 1 else None


class Target:
    """Where parsed rules go: a list, and whether a '!' dropped what it inherits."""

    __slots__ = ("rules", "cleared")

    def __init__(self, rules: list[Rule] | None = None):
        self.rules = rules if rules is not None else []
        self.cleared = False


class Parser:
    """parse_filter_str / parse_filter_file for one side (side None: keep every rule,
    as the client does before sending them)."""

    def __init__(self, side: str | None, delete_excluded: bool = False, from0: bool = False,
                 cwd: bytes = b"", activate: Callable[[Rule], bool] | None = None):
        self.side = side
        self.delete_excluded = delete_excluded
        self.from0 = from0
        self.cwd = cwd  # where a merge-file name without a slash is opened
        self.activate = activate or (lambda rule: True)
        self.dirbuf = b""  # the directory of the per-directory file being parsed
        self.depth = 0
        self.cvs_wanted = False
        self.where: str | None = None  # the file whose contents are being parsed
        self.merges = True  # False: rule texts from the peer, whose merge files the
        # client has read already (a '.' rule there would read a file of this host)

    def _show(self, text: bytes) -> str:
        """A rule's text for an error, unless it came from a file: a peer may choose
        which file is merged, and must not read it back through our errors."""
        return f"<rule from {self.where}>" if self.where else escape(text)

    def other_side(self, flags: int) -> bool:
        if self.side is None:
            return False
        sides = flags & SIDES
        return sides == (RECEIVER if self.side == "sender" else SENDER)

    # ---- one rule --------------------------------------------------------------

    def _token(self, s: bytes, template: int, xflags: int) -> tuple[int, bytes, bytes] | None:
        """(flags, pattern, rest) of the next rule in s (parse_rule_tok)."""
        if template & WORD_SPLIT:
            s = s.lstrip(_SPACE)
        if not s:
            return None
        whole = s
        flags = template & _FROM_CONTAINER
        i = 0
        if template & NO_PREFIXES:
            if s[:1] == b"!" and template & CVS:
                flags |= CLEAR
        elif xflags & OLD_PREFIXES:
            if s[:2] == b"- ":
                flags &= ~INCLUDE
                i = 2
            elif s[:2] == b"+ ":
                flags |= INCLUDE
                i = 2
            elif s[:1] == b"!":
                flags |= CLEAR
        else:
            ch, i = self._kind(s)
            flags, side_given = self._kind_flags(ch, flags, whole)
            while ch != b"!":
                i += 1
                if i >= len(s) or s[i] in b" _":
                    break
                if template & WORD_SPLIT and s[i] in _SPACE:
                    i -= 1
                    break
                flags = self._modifier(s, i, flags, side_given, whole)
            if i < len(s):
                i += 1
        s = s[i:]
        if template & SIDES:
            if flags & SIDES:
                raise BadFilterRule("specified-side merge file contains specified-side "
                                  f"filter: {self._show(whole)}")
            flags |= template & SIDES
        if template & WORD_SPLIT:
            end = 0
            while end < len(s) and s[end] not in _SPACE:
                end += 1
            pattern, rest = s[:end], s[end:]
        else:
            pattern, rest = s, b""
        if flags & CLEAR:
            if not template & NO_PREFIXES and not xflags & OLD_PREFIXES and pattern:
                raise BadFilterRule(f"'!' rule has trailing characters: {self._show(whole)}")
            if len(pattern) > 1:
                flags &= ~CLEAR
        elif not pattern and not flags & CVS:
            raise BadFilterRule(f"unexpected end of filter rule: {self._show(whole)}")
        if self.delete_excluded and not flags & (SIDES | MERGE | PERDIR):
            flags |= SENDER
        return flags, pattern, rest

    @staticmethod
    def _kind(s: bytes) -> tuple[bytes, int]:
        """The rule's kind character and the index of the byte before its modifiers (a
        word must be whole: "exclude", "exclude,MODS", "exclude_PAT")."""
        first = s[:1]
        for word, ch in _WORDS.items():
            if word[:1] == first:
                if s.startswith(word):
                    after = s[len(word) : len(word) + 1]
                    if not after or after == b"_" or after in _SPACE:
                        return ch, len(word) - 1
                    if after == b",":
                        return ch, len(word)
                return b"", 0
        return first, 1 if s[1:2] == b"," else 0

    def _kind_flags(self, ch: bytes, flags: int, whole: bytes) -> tuple[int, bool]:
        if ch == b":":
            return flags | PERDIR | MERGE, False
        if ch == b".":
            return flags | MERGE, False
        if ch == b"+":
            return flags | INCLUDE, False
        if ch == b"-":
            return flags, False
        if ch in (b"S", b"H"):
            return flags | SENDER | (INCLUDE if ch == b"S" else 0), True
        if ch in (b"R", b"P"):
            return flags | RECEIVER | (INCLUDE if ch == b"R" else 0), True
        if ch == b"!":
            return flags | CLEAR, False
        raise BadFilterRule(f"Unknown filter rule: {self._show(whole)}")

    def _modifier(self, s: bytes, i: int, flags: int, side_given: bool, whole: bytes) -> int:
        c = s[i : i + 1]
        merge = bool(flags & MERGE)
        ok = True
        if c in (b"-", b"+"):
            ok = merge and not flags & NO_PREFIXES
            flags |= NO_PREFIXES | (INCLUDE if c == b"+" else 0)
        elif c == b"/":
            flags |= ABS_PATH
        elif c == b"!":
            ok = not merge
            flags |= NEGATE
        elif c == b"C":
            ok = not flags & NO_PREFIXES and not side_given
            flags |= NO_PREFIXES | WORD_SPLIT | NO_INHERIT | CVS
        elif c in (b"e", b"n", b"w"):
            ok = merge
            flags |= {b"e": EXCLUDE_SELF, b"n": NO_INHERIT, b"w": WORD_SPLIT}[c]
        elif c == b"p":
            flags |= PERISHABLE
        elif c in (b"r", b"s"):
            ok = not side_given
            flags |= RECEIVER if c == b"r" else SENDER
        elif c == b"x":
            flags |= XATTR
        else:
            ok = False
        if not ok:
            where = "" if self.where else f" '{escape(c)}' at position {i}"
            raise BadFilterRule(f"invalid modifier{where} in filter rule: {self._show(whole)}")
        return flags

    # ---- rule lists ------------------------------------------------------------

    def parse(self, target: Target, text: bytes, template: int = 0, xflags: int = 0) -> None:
        """Add the rules of one rule string (parse_filter_str)."""
        while True:
            tok = self._token(text, template, xflags)
            if tok is None:
                return
            flags, pattern, text = tok
            if flags & CLEAR:
                target.rules.clear()
                target.cleared = True
                continue
            if flags & MERGE:
                if not pattern:
                    pattern = b".cvsignore"
                if flags & EXCLUDE_SELF:
                    self.add(target, pattern.rpartition(b"/")[2], 0, 0)
                    flags &= ~EXCLUDE_SELF
                if not flags & PERDIR:
                    if not self.merges:
                        raise BadFilterRule("a merge rule from the other side (the client "
                                            "reads merge files itself)")
                    self.merge_file(target, pattern, flags, xflags | FATAL)
                    continue
            self.add(target, pattern, flags, xflags)
            if flags & CVS and not flags & MERGE:
                self.cvs_wanted = True

    def add(self, target: Target, pattern: bytes, flags: int, xflags: int) -> None:
        """add_rule: flags the pattern's wildcards, anchors per-directory rules."""
        if xflags & ANCHORED2ABS and self.other_side(flags):
            return
        if len(pattern) > 1 and pattern.endswith(b"/"):
            pattern = pattern[:-1]
            flags |= DIRECTORY
        slash_cnt = pattern.count(b"/")
        if (not flags & (ABS_PATH | MERGE) and xflags & ANCHORED2ABS
                and pattern.startswith(b"/")):
            flags |= ABS_PATH
            prefix = self.dirbuf.rstrip(b"/")
            slash_cnt += prefix.count(b"/")
            pattern = prefix + pattern
        if any(c in pattern for c in b"*[?"):
            flags |= WILD
            at = pattern.find(b"**")
            if at >= 0:
                flags |= WILD2
                if at == 0:
                    flags |= WILD2_PREFIX
                if pattern.endswith(b"***"):
                    flags |= WILD3_SUFFIX
        rule = Rule(flags, pattern, slash_cnt)
        if flags & PERDIR and not self.activate(rule):
            return
        target.rules.append(rule)

    def merge_file(self, target: Target, name: bytes, template: int, xflags: int) -> None:
        """Read a merge file (or --exclude-from's) into target."""
        if b"/" in name:
            name = os.path.normpath(name if name.startswith(b"/") else self.dirbuf + name)
        elif b"/" not in name and name != b"-" and self.cwd:
            name = os.path.join(self.cwd, name)
        data = self.read(name, xflags, template)
        if data is not None:
            self.parse_file(target, data, template, xflags, name)

    def read(self, name: bytes, xflags: int, template: int) -> bytes | None:
        try:
            if name == b"-":
                import sys

                return sys.stdin.buffer.read()
            with open(name, "rb") as f:
                return f.read()
        except OSError as exc:
            if xflags & FATAL:
                raise FilterFileUnreadable(kind="include" if template & INCLUDE else "exclude",
                                           path=name, reason=exc) from None
            return None

    def parse_file(self, target: Target, data: bytes, template: int, xflags: int,
                   name: bytes = b"a merge file") -> None:
        """The rules of a file's contents, a line (or with 'w', a word) at a time."""
        if self.depth >= MAX_MERGE_DEPTH:
            raise BadFilterRule(f"merge-file include depth limit ({MAX_MERGE_DEPTH}) exceeded")
        self.depth += 1
        where, self.where = self.where, escape(name)
        try:
            word_split = bool(template & WORD_SPLIT)
            for line in lines(data, word_split, self.from0):
                if line and (word_split or line[:1] not in (b";", b"#")):
                    self.parse(target, line, template, xflags)
        finally:
            self.depth -= 1
            self.where = where


def lines(data: bytes, word_split: bool, from0: bool) -> list[bytes]:
    """A rule file's items: words ('w' rules), NUL-ended names (--from0), or lines
    (any of rsync's line ends); --files-from lists are read the same way."""
    if word_split:
        return data.split()
    if from0:
        return data.split(b"\0")
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


# ---- the command line ----------------------------------------------------------

def parse_cli(items: Iterable[tuple[str, bytes]], delete_excluded: bool, from0: bool
              ) -> list[bytes]:
    """The command line's rules (--filter, --include, --exclude, their -from files,
    -F) as the rule texts that travel to the peer: merge files read here, on the
    client, as rsync reads them."""
    seen: list[bytes] = []

    def activate(rule: Rule) -> bool:
        name = rule.pattern.rpartition(b"/")[2]
        if name in seen:
            return False
        seen.append(name)
        return True

    p = Parser(None, delete_excluded, from0, activate=activate)
    target = Target()
    f_count = 0
    for kind, text in items:
        if kind == "F":
            f_count += 1
            if f_count <= 2:
                p.parse(target, b": /" + RSYNC_FILTER if f_count == 1 else b"- " + RSYNC_FILTER)
        elif kind == "filter":
            p.parse(target, text)
        elif kind in ("exclude", "include"):
            p.parse(target, text, INCLUDE if kind == "include" else 0, OLD_PREFIXES)
        elif kind in ("exclude-from", "include-from"):
            p.merge_file(target, text, INCLUDE if kind == "include-from" else 0,
                         OLD_PREFIXES | FATAL)
        else:
            raise ValueError(kind)
    return [rule.text() for rule in target.rules]

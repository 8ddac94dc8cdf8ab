"""--chmod: rsync's mode tweaks, applied by the receiver to the modes the sender
supplied, before anything compares or sets them (so -i and the tree agree).

A clause is `[D|F]` (directories only, other files only) then an octal mode or one
symbolic `[ugoa]*[-+=][rwxXst]*`; clauses are comma-separated and apply in order.
As in rsync (chmod.c), a clause without `ugoa` is masked by the umask, `s` and `t`
follow the who letters' set-id bits and sticky is never masked, and `X` adds execute
for directories and for files that already have some.
"""

from __future__ import annotations

import os
import re
import stat

from fscsync.errors import UsageError

_CLAUSE = re.compile(r"([DF]?)(?:([0-7]{1,4})|([ugoa]*)([-+=])([rwxXst]*))")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_WHAT = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000, "X": 0}

Rule = tuple[str, int, str, int, bool]
"""(D, F or '', where, op ('' for an octal mode), what, X given)."""


def parse(text: str, umask: int | None = None) -> list[Rule]:
    """The rules of one or more comma-joined --chmod values."""
    if umask is None:
        umask = os.umask(0)
        os.umask(umask)
    rules = []
    for clause in text.split(","):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise UsageError(f"Invalid argument passed to --chmod ({text})")
        kind, octal, who, op, perms = m.groups()
        if octal is not None:
            rules.append((kind, 0o7777, "", int(octal, 8), False))
            continue
        where = 0o1000
        for letter in who:
            where |= _WHO[letter]
        if not who:
            where |= 0o7000 | (0o777 & ~umask)
        what = 0
        for letter in perms:
            what |= _WHAT[letter]
        rules.append((kind, where, op, what & where, "X" in perms))
    return rules


def apply(rules: list[Rule], mode: int) -> int:
    """`mode` after the rules that concern its kind (never a symlink's)."""
    if stat.S_ISLNK(mode):
        return mode
    is_dir = stat.S_ISDIR(mode)
    for kind, where, op, what, big_x in rules:
        if (kind == "D" and not is_dir) or (kind == "F" and is_dir):
            continue
        if big_x and (is_dir or mode & 0o111):
            what |= 0o111 & where
        if op == "":
            mode = (mode & ~0o7777) | what
        elif op == "+":
            mode |= what
        elif op == "-":
            mode &= ~what
        else:
            mode = (mode & ~(where & 0o7777)) | what
    return mode

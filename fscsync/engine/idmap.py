"""--usermap, --groupmap and --chown: rsync's owner-mapping rules, read once.

A value is `FROM:TO[,FROM:TO]...`; FROM is a sender-side name or wildcard pattern
(matched against the names the sender sent, so never with --numeric-ids, except
`*`), an id or an id range `LOW-HIGH`; TO is a local name or id. The first rule
that matches decides; an id no rule matches is mapped as without them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from fscsync.errors import UsageError

Rule = tuple[Callable[[int, bytes | None], bool], int]


def _matcher(pattern: str) -> Callable[[int, bytes | None], bool]:
    if pattern.isdigit():
        return lambda ident, name: ident == int(pattern)
    m = re.fullmatch(r"(\d+)-(\d+)", pattern)
    if m:
        low, high = int(m.group(1)), int(m.group(2))
        return lambda ident, name: low <= ident <= high
    if pattern == "*":
        return lambda ident, name: True
    from fnmatch import fnmatchcase

    return lambda ident, name: name is not None and fnmatchcase(os.fsdecode(name), pattern)


def rules(text: str, option: str, warn: Callable[[str], None]) -> list[Rule]:
    """The receiver's rules for a --usermap or --groupmap value (none when empty); a
    TO name unknown here drops its rule, with warn(message), as rsync does."""
    if not text:
        return []
    if option == "--usermap":
        import pwd

        return parse(text, option, lambda name: pwd.getpwnam(name).pw_uid, warn)
    import grp

    return parse(text, option, lambda name: grp.getgrnam(name).gr_gid, warn)


def parse(text: str, option: str, lookup: Callable[[str], int] | None = None,
          warn: Callable[[str], None] | None = None) -> list[Rule]:
    """The rules of one --usermap/--groupmap value, with rsync's words for a bad one.
    lookup: local name -> id (None: check the syntax only); a TO name it does not know
    drops that rule, with warn(message)."""
    out = []
    for item in text.split(","):
        frm, colon, to = item.partition(":")
        if not colon:
            raise UsageError(f"No colon found in {option}: {item}")
        if not to:
            raise UsageError(f"No name found after colon {option}: {item}")
        if lookup is None:
            continue
        if to.isdigit():
            target = int(to)
        else:
            try:
                target = lookup(to)
            except KeyError:
                if warn is not None:
                    warn(f"Unknown {option} name on receiver: {to}")
                continue
        out.append((_matcher(frm), target))
    return out

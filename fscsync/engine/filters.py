"""rsync's include/exclude rules: first match wins, on paths relative to the transfer root."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from fscsync.errors import FilterFileUnreadable

INCLUDE = "+"
EXCLUDE = "-"


def _translate(pattern: bytes) -> bytes:
    """Turn one rsync wildcard pattern into a regex body (no anchors)."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
        elif pattern.startswith(b"/***", i) and i + 4 == n:
            out.append(b"(/.*)?")
            i += 4
        elif pattern.startswith(b"**", i):
            j = i
            while j < n and pattern[j : j + 1] == b"*":
                j += 1
            out.append(b".*")
            i = j
        elif c == b"*":
            out.append(b"[^/]*")
            i += 1
        elif c == b"?":
            out.append(b"[^/]")
            i += 1
        elif c == b"[":
            j = i + 1
            if j < n and pattern[j : j + 1] in (b"!", b"^"):
                j += 1
            if j < n and pattern[j : j + 1] == b"]":
                j += 1
            while j < n and pattern[j : j + 1] != b"]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            if body[:1] in (b"!", b"^"):
                body = b"^" + body[1:]
            out.append(b"[" + body.replace(b"\\", b"\\\\") + b"]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return b"".join(out)


class Rule:
    __slots__ = ("kind", "pattern", "dir_only", "regex")

    def __init__(self, kind: str, pattern: bytes):
        if kind not in (INCLUDE, EXCLUDE):
            raise ValueError(kind)
        self.kind = kind
        self.pattern = pattern
        self.dir_only = pattern.endswith(b"/") and not pattern.endswith(b"/***")
        body = pattern.rstrip(b"/") if self.dir_only else pattern
        if body.startswith(b"/"):
            rx = b"^" + _translate(body[1:]) + b"$"
        else:
            rx = b"(?:^|/)" + _translate(body) + b"$"
        self.regex = re.compile(rx, re.DOTALL)

    def matches(self, path: bytes, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.search(path) is not None


class Filters:
    """An ordered rule list; an empty list excludes nothing."""

    def __init__(self, rules: Iterable[tuple[str, bytes]] = ()):
        self.rules = [Rule(kind, pat) for kind, pat in rules]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        """Is this path (relative to the transfer root, no leading ./) excluded?"""
        for rule in self.rules:
            if rule.matches(path, is_dir):
                return rule.kind == EXCLUDE
        return False


def read_rule_file(path: str, default_kind: str) -> list[tuple[str, bytes]]:
    """Rules from --exclude-from/--include-from: one pattern a line, '#'/';' comments,
    and rsync's '+ '/'- ' prefixes."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise FilterFileUnreadable(path=os.fsencode(path), reason=exc) from None
    rules = []
    for line in data.splitlines():
        line = line.rstrip(b"\r")
        if not line or line[:1] in (b"#", b";"):
            continue
        if line[:2] in (b"+ ", b"- "):
            rules.append((line[:1].decode(), line[2:]))
        else:
            rules.append((default_kind, line))
    return rules

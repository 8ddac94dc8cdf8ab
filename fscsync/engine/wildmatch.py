"""rsync's wildmatch (lib/wildmatch.c) as a compiled regex: `*` stops at a slash, `**`
does not, `?` and `[...]` never match a slash, and a malformed class matches nothing.

A regex runs the inner loop in C: a walk checks every name against every rule.
"""

from __future__ import annotations

import re

NEVER = re.compile(b"(?!)")

_CLASSES = {
    b"alnum": b"0-9A-Za-z", b"alpha": b"A-Za-z", b"blank": b" \\t", b"cntrl": b"\\x00-\\x1f\\x7f",
    b"digit": b"0-9", b"graph": b"!-~", b"lower": b"a-z", b"print": b" -~",
    b"punct": b"!-/:-@\\[-`{-~", b"space": b"\\t-\\r ", b"upper": b"A-Z",
    b"xdigit": b"0-9A-Fa-f",
}


def _byte(b: int) -> bytes:
    return b"\\x%02x" % b


def _char_class(p: bytes, i: int) -> tuple[bytes, int] | None:
    """The regex of the class opening at p[i] == '[' and the index after its ']', or
    None when it never closes (wildmatch then matches nothing at all)."""
    n = len(p)
    i += 1
    negate = i < n and p[i] in b"!^"
    if negate:
        i += 1
    parts: list[bytes] = []
    prev = 0
    first = True
    while True:
        if i >= n:
            return None
        c = p[i]
        if c == 0x5D and not first:  # ']'
            break
        first = False
        if c == 0x5C:  # '\\'
            i += 1
            if i >= n:
                return None
            c = p[i]
            parts.append(_byte(c))
            prev = c
        elif c == 0x2D and prev and i + 1 < n and p[i + 1] != 0x5D:  # a range
            i += 1
            hi = p[i]
            if hi == 0x5C:
                i += 1
                if i >= n:
                    return None
                hi = p[i]
            if prev <= hi:
                parts.append(_byte(prev) + b"-" + _byte(hi))
            prev = 0
        elif c == 0x5B and i + 1 < n and p[i + 1] == 0x3A:  # '[:'
            end = p.find(b"]", i + 2)
            if end < 0:
                return None
            if end - 1 < i + 2 or p[end - 1] != 0x3A:
                parts.append(_byte(c))  # no ':]': a plain '['
                prev = c
            else:
                name = p[i + 2 : end - 1]
                if name not in _CLASSES:
                    return None
                parts.append(_CLASSES[name])
                prev = 0
                i = end
        else:
            parts.append(_byte(c))
            prev = c
        i += 1
    body = b"".join(parts)
    if negate:
        return b"[^/" + body + b"]", i + 1
    return (b"(?!/)[" + body + b"]" if body else b"(?!)"), i + 1


def translate(pattern: bytes) -> bytes | None:
    """The regex body of a wildcard pattern, or None if it can never match."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x5C:  # '\\'
            if i + 1 >= n:
                return None
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
        elif c == 0x2A:  # '*'
            j = i
            while j < n and pattern[j] == 0x2A:
                j += 1
            out.append(b".*" if j - i > 1 else b"[^/]*")
            i = j
        elif c == 0x3F:  # '?'
            out.append(b"[^/]")
            i += 1
        elif c == 0x5B:  # '['
            cls = _char_class(pattern, i)
            if cls is None:
                return None
            out.append(cls[0])
            i = cls[1]
        else:
            out.append(re.escape(pattern[i : i + 1]))
            i += 1
    return b"".join(out)


def compile_match(pattern: bytes, wild: bool, anywhere: bool) -> re.Pattern:
    """A regex to fullmatch a whole string with: `anywhere` also lets the match start
    after any slash (wildmatch_array's where < 0); a literal pattern is taken as is."""
    body = translate(pattern) if wild else re.escape(pattern)
    if body is None:
        return NEVER
    if anywhere:
        body = b"(?:.*/)?" + body
    return re.compile(body, re.DOTALL)

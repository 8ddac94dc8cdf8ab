"""Remote wildcards: `fscsync host:'dir/*.txt' dst/` picks files on the far side.

rsync passes a remote source through the remote shell with every shell character
escaped except `*`, `?` and `[...]`, so the far side's shell expands those (and a
leading `~/`) and nothing else: no braces, no variables, and `\\*` is a literal
star. fscsync's paths travel inside the protocol, never through a shell, so the
serving side expands them here the way that shell would: sorted matches, no hidden
names for a leading `*`, and the word itself (backslashes before wildcards
removed) when nothing matches, which then fails as a missing source.
"""

from __future__ import annotations

import glob
import os

_WILD = frozenset(b"*?[")
_ESCAPABLE = frozenset(b"*?[]")


def expand(arg: bytes) -> list[bytes]:
    """The source paths a remote source word stands for, as rsync's remote shell
    would give them."""
    if arg.startswith(b"~") and b"/" in arg:
        arg = os.path.expanduser(arg)
    pattern = bytearray()
    word = bytearray()
    magic = False
    i = 0
    while i < len(arg):
        c = arg[i]
        if c == 0x5C and i + 1 < len(arg) and arg[i + 1] in _ESCAPABLE:
            pattern += b"[" + arg[i + 1 : i + 2] + b"]"
            word.append(arg[i + 1])
            i += 2
            continue
        magic = magic or c in _WILD
        pattern.append(c)
        word.append(c)
        i += 1
    if not magic:
        return [bytes(word)]
    return sorted(glob.glob(bytes(pattern))) or [bytes(word)]

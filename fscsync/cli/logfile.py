"""rsync's --log-file and --log-file-format: an audit trail of one run, appended to a file.

Every line starts with "YYYY/MM/DD hh:mm:ss [pid] " as in rsync. A run logs a
header ("building file list"), one line per item formatted with the
--log-file-format escapes (default "%i %n%L"), errors, warnings and the
always-shown messages, and at the end rsync's "sent X bytes  received Y bytes
total size Z" line.

The engine never calls this module: the client's reporter hands it the lines it
already prints (`event(kind, message)`). Item lines are itemize lines
(">f+++++++++ path", "*deleting   path"), and the escapes are derived from them,
so with the default format a logged item reads exactly like the -i output.

Escapes: %t date-time, %p pid, %o operation (send, recv, del.), %n name
(trailing "/" on directories), %L " -> target" / " => leader" for links, %i the
11-character itemize string, %l length, %b bytes transferred, %f full path (no
trailing "/"), %% a percent sign. As in rsync, a width may follow the "%"
("%-10n" pads on the right, "%10l" on the left) and "'" groups digits
("%'l" gives 1,234,567).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import namedtuple
from collections.abc import Callable

from fscsync.errors import LogFileUnopenable, UsageError

DEFAULT_FORMAT = "%i %n%L"
ESCAPES = "tponLilbf"
NUMERIC = "plb"
# Escapes rsync knows that only make sense for a daemon or need data the client's
# reporter does not have: refused up front so a nightly log never fills with blanks.
_UNSUPPORTED = {
    "a": "remote IP address (daemon only)", "h": "remote host name (daemon only)",
    "m": "module name (daemon only)", "P": "module path (daemon only)",
    "u": "authenticated user name (daemon only)", "c": "checksum", "C": "full-file checksum",
    "M": "modification time", "B": "permission bits", "U": "uid", "G": "gid",
}
_ESCAPE_RE = re.compile(r"%('*)(-?)(\d*)('*)(.?)", re.DOTALL)
_ITEM_RE = re.compile(r"(?P<i>[<>ch.*][fdLDS].{9}) (?P<rest>.*)", re.DOTALL)
_DELETING = "*deleting  "
_ENCRYPTED = " (encrypted)"


class Item(namedtuple("Item", "itemize name link op", defaults=("", "recv"))):
    """What the escapes need to know about one itemized entry."""

    __slots__ = ()

    @property
    def transferred(self) -> bool:
        return self.itemize[:1] in ("<", ">")

    @property
    def deleted(self) -> bool:
        return self.itemize == _DELETING


def parse_item(line: str) -> Item | None:
    """Split an itemize line into %i, %n, %L and %o; None if it is not one.

    Names are printed escaped but may contain " -> " or " => " themselves, so the
    split can guess wrong for such names; "%n%L" always gives back the original text.
    """
    if line.startswith("*deleting   "):
        return Item(_DELETING, line[12:], op="del.")
    m = _ITEM_RE.fullmatch(line)
    if not m:
        return None
    flags, rest = m.group("i"), m.group("rest")
    link = ""
    if rest.endswith(_ENCRYPTED):
        rest, link = rest[: -len(_ENCRYPTED)], _ENCRYPTED
    if flags[0] == "h" and " => " in rest:
        rest, _, leader = rest.rpartition(" => ")
        link = f" => {leader}{link}"
    if flags[1] == "L" and " -> " in rest:
        rest, _, target = rest.partition(" -> ")
        link = f" -> {target}{link}"
    return Item(flags, rest, link, "send" if flags[0] == "<" else "recv")


def compile_format(fmt: str, option: str = "--log-file-format"
                   ) -> list[tuple[str, str, int, bool]]:
    """Parse a --log-file-format (or --out-format, `option`) into (literal, escape,
    width, group-digits) pieces.

    Raises ValueError naming the first escape fscsync cannot fill.
    """
    pieces: list[tuple[str, str, int, bool]] = []
    pos = 0
    for m in _ESCAPE_RE.finditer(fmt):
        if m.start() > pos:
            pieces.append((fmt[pos : m.start()], "", 0, False))
        pos = m.end()
        quotes, left, width, more_quotes, esc = m.groups()
        quotes += more_quotes
        if esc == "%" and not (left or width or quotes):
            pieces.append(("%", "", 0, False))
            continue
        if esc in _UNSUPPORTED:
            raise ValueError(f"{option} escape %{esc} ({_UNSUPPORTED[esc]}) "
                             "is not supported")
        if not esc or esc not in ESCAPES:
            shown = f"%{esc}" if esc else "a lone % at the end"
            raise ValueError(f"unknown {option} escape {shown!r} (use %% for a %)")
        size = int(width or 0)
        pieces.append(("", esc, -size if left else size, bool(quotes)))
    if pos < len(fmt):
        pieces.append((fmt[pos:], "", 0, False))
    return pieces


def _has(pieces: list[tuple[str, str, int, bool]], escape: str) -> bool:
    return any(esc == escape for _, esc, _, _ in pieces)


def _named(it: Item) -> bool:
    """Would -v name this entry: anything created, and directories (rsync lists a
    directory it has looked into)."""
    return "+" in it.itemize or it.itemize[1] == "d"


def timestamp(now: float) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now))


class ItemFormat:
    """Itemize lines through a format's escapes: --log-file-format's, and
    --out-format's on stdout. `every`: --out-format's choice of entries (a format
    without %i shows every entry -v names, directories and new entries too, as rsync
    prints them); else the log's (rsync's maybe_log_item, whatever the format):
    transfers, deletions, entries made, linked or copied here and directories that
    changed, and other changed entries only when `itemized` (-i, or an --out-format
    with %i)."""

    def __init__(self, fmt: str, option: str = "--log-file-format", *,
                 root: str | None = None, clock: Callable[[], float] = time.time,
                 every: bool = False, op: str | None = None, prefix: str | None = None,
                 itemized: bool = False):
        """op: what %o says of a transfer (rsync's stdout speaks for the sender when
        the client sends); prefix: %f is prefix + name (the sender's path) when given."""
        try:
            self.pieces = compile_format(fmt, option)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if option == "--out-format" and _has(self.pieces, "b"):
            raise UsageError("--out-format escape %b (bytes on the wire per file) is not "
                             "supported")
        self.fmt = fmt
        self.root = root
        self.clock = clock
        self.every = every
        self.itemized = itemized
        self.op = op
        self.prefix = prefix
        # rsync: without %i and %o a deletion is logged as "deleting NAME".
        self.all_items = _has(self.pieces, "i")
        self.delete_pieces = (self.pieces if self.all_items or _has(self.pieces, "o")
                              else compile_format("deleting %n"))

    def line(self, line: str, length: int, transferred: int) -> str | None:
        """The formatted line for one itemize line, or None when the format skips it."""
        it = parse_item(line)
        if it is None:
            return line
        if it.deleted:
            pieces = self.delete_pieces
        elif self._shown(it):
            pieces = self.pieces
        else:
            return None
        return self.render(pieces, it, length, transferred)

    def _shown(self, it: Item) -> bool:
        if self.every:
            return self.all_items or it.transferred or _named(it)
        return it.itemize[0] in "<>ch" or it.itemize[1] == "d" or self.itemized

    def render(self, pieces: list[tuple[str, str, int, bool]], it: Item, length: int,
               transferred: int) -> str:
        out = []
        for literal, esc, width, group in pieces:
            if not esc:
                out.append(literal)
                continue
            value = self._value(esc, it, length, transferred)
            if isinstance(value, int):
                value = f"{value:,}" if group else str(value)
            out.append(value.ljust(-width) if width < 0 else value.rjust(width))
        return "".join(out)

    def _value(self, esc: str, it: Item, length: int, transferred: int) -> str | int:
        if esc == "t":
            return timestamp(self.clock())
        if esc == "p":
            return os.getpid()
        if esc == "o":
            return self.op if self.op and not it.deleted else it.op
        if esc == "n":
            return it.name
        if esc == "L":
            return it.link
        if esc == "i":
            return it.itemize
        if esc == "l":
            return length
        if esc == "b":
            return transferred if it.transferred else 0
        # "f": the path without the trailing "/", under the root when one was given.
        if self.prefix is not None and not it.deleted:  # a deletion: the receiver's name
            return self.prefix + (it.name.rstrip("/") or ".")
        name = it.name.rstrip("/") or "."
        if name.startswith("./"):
            name = name[2:]
        if self.root:
            root = self.root.rstrip("/") or "/"
            return root if name == "." else f"{root.rstrip('/')}/{name}"
        return name


class LogFile:
    """One run's log: appends to `path` (created if missing), line-buffered and locked.

    `fmt` None means the default "%i %n%L"; an empty string logs no item lines
    (as rsync: "updated files will not be mentioned"). A bad path raises
    LogFileUnopenable (exit code 11); a bad format raises UsageError (code 1).
    """

    def __init__(self, path: str, fmt: str | None = None, *, root: str | None = None,
                 header: str | None = "building file list",
                 clock: Callable[[], float] = time.time, itemized: bool = False):
        """`itemized`: the run itemizes (-i), so entries whose attributes alone changed
        are logged too (ItemFormat)."""
        self.format = ItemFormat(DEFAULT_FORMAT if fmt is None else fmt, root=root,
                                 clock=clock, itemized=itemized)
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self._fp = open(path, "a", encoding="utf-8", errors="backslashreplace",
                            buffering=1)
        except OSError as exc:
            raise LogFileUnopenable(path=os.fsencode(path), reason=exc) from None
        if header:
            self.write(header)

    # -- what the reporter calls -------------------------------------------------------

    def event(self, kind: str, message: str, *, length: int | None = None,
              transferred: int | None = None) -> None:
        """One reporter line. `length`/`transferred` fill %l and %b when known (else 0)."""
        if kind == "item":
            self.item(message, length=length, transferred=transferred)
        elif kind == "error":
            self.write(f"fscsync: {message}")
        elif kind == "warning":
            self.write(f"fscsync: warning: {message}")
        elif kind == "info0":
            self.write(message)
        # info1/info2 are -v chatter for the terminal: the item lines already cover them.

    def item(self, line: str, *, length: int | None = None,
             transferred: int | None = None) -> None:
        if not self.format.fmt:
            return
        text = self.format.line(line, length or 0, transferred or 0)
        if text is not None:
            self.write(text)

    def summary(self, sent: int, received: int, total: int) -> None:
        self.write(f"sent {sent:,} bytes  received {received:,} bytes  total size {total:,}")

    def write(self, text: str) -> None:
        """Log text as is, one prefixed line per line of text."""
        with self._lock:
            if self._fp is None:
                return
            prefix = f"{timestamp(self.clock())} [{os.getpid()}] "
            for line in text.split("\n"):
                self._fp.write(prefix + line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._fp is not None:
                self._fp.close()
                self._fp = None

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""rsync's --itemize-changes lines: YXcstpoguax, then the name."""

from __future__ import annotations

import stat
import time

from fscsync.errors import escape
from fscsync.fs.cipher import EncdataError, parse_encdata

NEW = "+++++++++"


_KINDS = {stat.S_IFREG: ("f", "reg"), stat.S_IFDIR: ("d", "dir"), stat.S_IFLNK: ("L", "link"),
          stat.S_IFCHR: ("D", "dev"), stat.S_IFBLK: ("D", "dev")}
_SPECIAL = ("S", "special")


def type_letter(mode: int) -> str:
    """rsync's X column: f d L D S."""
    return _KINDS.get(stat.S_IFMT(mode), _SPECIAL)[0]


def kind_name(mode: int) -> str:
    """rsync's --stats kind: reg dir link dev special."""
    return _KINDS.get(stat.S_IFMT(mode), _SPECIAL)[1]


def display_name(e) -> str:
    name = "./" if e.path == b"." else escape(e.path) + ("/" if e.is_dir else "")
    if e.target is not None:
        name += " -> " + escape(e.target)
    return name


def line(update: str, e, changes: str = "", new: bool = False, suffix: str = "") -> str:
    """update is rsync's Y ('>', '<', 'c', 'h', '.'); changes are the letters that differ."""
    flags = NEW if new else "".join(c if c in changes else "." for c in "cstpoguax")
    text = f"{update}{type_letter(e.mode)}{flags} {display_name(e)}{suffix}"
    if e.enc is not None:
        text += " (encrypted)"
    return text


def blank(update: str, e) -> str:
    """rsync's line for an entry settled unchanged from a --link-dest/--compare-dest/
    --copy-dest copy (`hf`, `.f`, `cf`, `cd`: shown only at -ii): no change letters."""
    text = f"{update}{type_letter(e.mode)}{' ' * 9} {display_name(e)}"
    return text + " (encrypted)" if e.enc is not None else text


def listing(e, show_target: bool = True) -> str:
    """One line of --list-only, as rsync prints it (cleartext size for encrypted files)."""
    size = e.size
    if e.enc is not None and e.is_reg:
        try:
            size = parse_encdata(e.enc).size
        except EncdataError:
            pass
    when = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(e.mtime_ns // 1_000_000_000))
    name = "." if e.path == b"." else escape(e.path)
    if e.target is not None and show_target:
        name += " -> " + escape(e.target)
    return f"{stat.filemode(e.mode)} {size:>14,} {when} {name}"


def deleting(path: bytes, is_dir: bool) -> str:
    return f"*deleting   {escape(path)}{'/' if is_dir else ''}"

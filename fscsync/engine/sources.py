"""What the SRC arguments name, before any directory is walked: the base directory
and top name of a SRC, a -R path's split at "/./", the names of a --files-from list,
and the one file-list order that entries of several sources are merged into.

Pure functions of paths and entries (no filesystem access): scan.py walks what they
name; the client reads --files-from through `files_from_names` as well.
"""

from __future__ import annotations

from collections.abc import Iterable

from fscsync.engine.filterrules import lines

TYPE_CHECKING = False  # the client reads --files-from before it needs the file list
if TYPE_CHECKING:
    from fscsync.engine.flist import Entry


def split_source(src: bytes) -> tuple[bytes, bytes | None]:
    """(base directory, top name) for one SRC argument; name None means 'the contents'."""
    if src.endswith(b"/") or src in (b".", b"..") or src.endswith(b"/.") or src.endswith(b"/.."):
        base = src.rstrip(b"/") or b"/"
        return base, None
    head, _, name = src.rpartition(b"/")
    if not head and src.startswith(b"/"):
        head = b"/"
    return head or b".", name


def relative_parts(src: bytes) -> tuple[bytes, bytes]:
    """(the directory a -R path is read from, the name it gets at the destination):
    split at the first "/./", else the working directory and the path less its leading
    slashes; "." and empty components are dropped (rsync's clean_fname)."""
    at = src.find(b"/./")
    if at >= 0:
        base, rel = src[:at] or b"/", src[at + 3:]
    elif src.startswith(b"./"):
        base, rel = b".", src[2:]
    else:
        base, rel = (b"/" if src.startswith(b"/") else b"."), src.lstrip(b"/")
    parts = [p for p in rel.split(b"/") if p not in (b"", b".")]
    return base, b"/".join(parts)


def files_from_names(data: bytes, from0: bool) -> list[bytes]:
    """The names of a --files-from list: a line each (NUL-ended with --from0), empty
    lines and '#'/';' comments skipped, leading slashes and ".." dropped (rsync's
    sanitize_path: no name leads outside the source directory); "/./" is kept."""
    names = []
    for line in lines(data, False, from0):
        if not line or line[:1] in (b"#", b";"):
            continue
        kept: list[bytes] = []
        for part in line.split(b"/"):
            if part == b"..":
                if kept and kept[-1] not in (b"", b"."):
                    kept.pop()
                continue
            kept.append(part)
        name = b"/".join(kept).lstrip(b"/")
        if name:
            names.append(name)
    return names


def in_file_list_order(runs: Iterable[Iterable[Entry]]) -> list[tuple[int, Entry]]:
    """The entries of several sources as one list in file-list order, each with its
    place in the walk. Where two give the same path the first source's entry is kept,
    unless a later one is a directory and it is not (rsync's rule: the directory may
    have contents). The receiver refuses a path that repeats or comes out of order (a
    hostile sender's cheap duplicates), so one source's walk order must hold across
    sources too; an entry whose parent directory was not kept is dropped."""
    kept: list[tuple[list[tuple[int, bytes]], int, Entry]] = []
    seen: dict[bytes, int] = {}
    dirs = {b""}
    idx = 0
    for run in runs:
        for e in run:
            at = seen.get(e.path)
            if at is None:
                keep = e.path == b"." or e.path.rpartition(b"/")[0] in dirs
                if keep:
                    seen[e.path] = len(kept)
                    kept.append((_order_key(e), idx, e))
            else:
                was = kept[at][2]  # a directory's contents outrank an implied one
                keep = e.is_dir and (not was.is_dir or was.no_content and not e.no_content)
                if keep:
                    kept[at] = (_order_key(e), idx, e)
            if keep and e.is_dir:
                dirs.add(e.path)
            idx += 1
    kept.sort(key=lambda k: k[0])
    return [(i, e) for _, i, e in kept]


def _order_key(e: Entry) -> list[tuple[int, bytes]]:
    """Where an entry goes in file-list order: under each parent directory, its
    non-directories (sorted) before its directories (sorted, each before its contents)."""
    if e.path == b".":
        return []
    *parents, name = e.path.split(b"/")
    return [(1, p) for p in parents] + [(int(e.is_dir), name)]

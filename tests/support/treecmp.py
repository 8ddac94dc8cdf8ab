"""Compare two directory trees the way a mirror must reproduce them.

Tests assert "the destination is an exact copy" far more often than anything
else, so this module turns a tree into a plain dict of per-path records and
reports differences readably (paths are bytes and may hold any byte but NUL
and "/", so they are always printed escaped).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import xattr

_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


@dataclass
class Rec:
    """What a faithful mirror must preserve about one entry.

    Fields that do not apply to the entry's type are None, so two records of
    different types still compare field by field. `mtime`/`atime` are in ns.
    `link` names the smallest path of the entry's hard-link group inside the
    snapshot (None when the inode appears once), which makes two trees equal
    exactly when the same paths are linked together.
    """

    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    atime: int | None = None
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: int | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    link: bytes | None = None
    sparse: bool | None = None


FIELDS = tuple(f.name for f in dataclasses.fields(Rec))


def show(path: bytes) -> str:
    """Escape a byte path for messages: printable ASCII kept, other bytes as \\xNN."""
    return "".join(
        chr(b) if 32 <= b < 127 and b != 0x5C else f"\\x{b:02x}" for b in path
    )


def _file_sha256(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    """All xattrs in every namespace; filesystems without xattrs give {}."""
    try:
        pairs = xattr.get_all(path, nofollow=True)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return dict(pairs)


def _walk(root: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    """Yield (relative path, lstat) for root (as b".") and everything below, sorted."""
    yield b".", os.lstat(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            names = sorted(e.name for e in it)
        subdirs = []
        for name in names:
            child = os.path.join(rel, name) if rel else name
            st = os.lstat(os.path.join(root, child))
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def _record(path: bytes, st: os.stat_result, *, xattrs: bool, atime: bool, sparse: bool,
            content: bool) -> Rec:
    fmt = stat.S_IFMT(st.st_mode)
    rec = Rec(
        type=_TYPES[fmt],
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns,
        atime=st.st_atime_ns if atime else None,
        xattrs=_xattrs(path) if xattrs else {},
    )
    if fmt == stat.S_IFREG:
        rec.size = st.st_size
        rec.sha256 = _file_sha256(path) if content else None
        if sparse:
            rec.sparse = st.st_blocks * 512 < st.st_size
    elif fmt == stat.S_IFLNK:
        rec.target = os.readlink(path)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        rec.rdev = st.st_rdev
    return rec


def snapshot(
    root: bytes | str | os.PathLike[str], *, xattrs: bool = True, atime: bool = False,
    sparse: bool = False, content: bool = True,
) -> dict[bytes, Rec]:
    """Record every entry under root (never following symlinks), keyed by relative path.

    content=False skips hashing files (sha256 stays None): the benchmark checks a
    freshly populated gigabyte tree's metadata only."""
    root_b = os.fsencode(root)
    snap: dict[bytes, Rec] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in _walk(root_b):
        path = root_b if rel == b"." else os.path.join(root_b, rel)
        snap[rel] = _record(path, st, xattrs=xattrs, atime=atime, sparse=sparse,
                            content=content)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for group in inodes.values():
        if len(group) > 1:
            for rel in group:
                snap[rel].link = min(group)
    return snap


def _fmt(name: str, value: object) -> str:
    if value is None:
        return "-"
    if name == "mode":
        return f"{value:#o}"
    if isinstance(value, bytes):
        return show(value)
    if name == "sha256":
        return str(value)[:12]
    return repr(value)


def _xattr_diff(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> str:
    names = sorted(set(a) | set(b))
    changed = [show(n) for n in names if a.get(n) != b.get(n)]
    return "xattrs differ: " + ", ".join(changed)


def _rec_diff(a: Rec, b: Rec, fields: Iterable[str]) -> list[str]:
    out = []
    for name in fields:
        va, vb = getattr(a, name), getattr(b, name)
        if va == vb:
            continue
        if name == "xattrs":
            out.append(_xattr_diff(va, vb))
        else:
            out.append(f"{name} {_fmt(name, va)} != {_fmt(name, vb)}")
    return out


def diff(
    a: dict[bytes, Rec], b: dict[bytes, Rec], *, ignore: Iterable[str] = (),
    ignore_dir_mtime: bool = False,
) -> list[str]:
    """Readable differences between two snapshots, one line per path and field.

    `ignore` names Rec fields to skip everywhere; `ignore_dir_mtime` skips mtime
    on directories only (many tools set directory times in a final pass).
    """
    ignored = set(ignore)
    unknown = ignored - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown fields to ignore: {sorted(unknown)}; known: {FIELDS}")
    fields = [f for f in FIELDS if f not in ignored]
    dir_fields = [f for f in fields if not (ignore_dir_mtime and f == "mtime")]
    out = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            out.append(f"{show(rel)}: only in first tree ({a[rel].type})")
        elif rel not in a:
            out.append(f"{show(rel)}: only in second tree ({b[rel].type})")
        else:
            use = dir_fields if a[rel].type == b[rel].type == "dir" else fields
            out.extend(f"{show(rel)}: {d}" for d in _rec_diff(a[rel], b[rel], use))
    return out


def assert_same_tree(
    a_root: bytes | str | os.PathLike[str], b_root: bytes | str | os.PathLike[str], *,
    ignore: Iterable[str] = (), ignore_dir_mtime: bool = False, xattrs: bool = True,
    atime: bool = False, sparse: bool = False, limit: int = 20,
) -> None:
    """Raise AssertionError listing the first `limit` differences between two trees."""
    opts = {"xattrs": xattrs, "atime": atime, "sparse": sparse}
    problems = diff(snapshot(a_root, **opts), snapshot(b_root, **opts),
                    ignore=ignore, ignore_dir_mtime=ignore_dir_mtime)
    if problems:
        head = "\n  ".join(problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise AssertionError(
            f"trees differ: {os.fsdecode(a_root)} vs {os.fsdecode(b_root)} "
            f"({len(problems)} differences)\n  {head}{more}"
        )

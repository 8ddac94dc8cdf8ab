"""One stream's Decisions kept on the receiving host for the final pass of a
`--parallel` run, which merges every stream's and carries them out once.

A receiver told to spool (Options.spool) writes a file in a directory of its own
user under the temporary directory, named by the run's token: the stream's
directory entries (in the file-list codec, attributes and encdata included),
the names --delete and the litter sweep compare, the owner names the
directories are mapped by, and whether its sender missed anything. marshal
holds the rest: it builds only plain values, and the directory is checked to be
this user's and private before anything is read from it.
"""

from __future__ import annotations

import marshal
import os
import stat

from fscsync.engine.flist import decode_entries, encode_entries
from fscsync.engine.rxstate import Decisions
from fscsync.errors import FscsyncError

_VERSION = 1


def spool_dir(token: bytes, make: bool = False) -> bytes:
    """The run's spool directory on this host (made, private, when `make`); a path
    another user made, or a symlink, is refused."""
    if not token or b"/" in token or token.startswith(b"."):
        raise FscsyncError("malformed spool name for --parallel")
    import tempfile  # 8 ms (shutil, random, bz2, lzma): only --parallel runs need it

    path = os.path.join(os.fsencode(tempfile.gettempdir()), b"fscsync-" + token)
    if make:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise FscsyncError(f"spool directory {os.fsdecode(path)!r} is not this user's own")
    return path


def write(token: bytes, name: bytes, decisions: Decisions, names: tuple[dict, dict],
          io_error: bool) -> None:
    """Spool one stream's decisions as `name` in the run's directory (written to a
    temporary name first: the final pass reads only whole files)."""
    d = decisions
    dirs = [e for e, _ in d.dirs]
    payload = marshal.dumps((
        _VERSION, encode_entries(dirs) if dirs else b"", [new for _, new in d.dirs],
        d.existing, {k: list(v) for k, v in d.children.items()}, d.litter,
        {k: list(v) for k, v in d.incoming.items()}, names[0], names[1], io_error))
    path = spool_dir(token, make=True)
    tmp = os.path.join(path, b"." + name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(path, name))


def read_all(token: bytes) -> tuple[Decisions, dict, dict, bool, int]:
    """Every spooled stream merged: (decisions, user names, group names, whether any
    sender missed something, how many streams spooled)."""
    path = spool_dir(token)
    out = Decisions()
    users: dict = {}
    groups: dict = {}
    io_error = False
    count = 0
    for name in sorted(os.listdir(path)):
        if name.startswith(b"."):
            continue
        fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        try:
            (version, dirs, new, existing, children, litter, incoming, u, g,
             err) = marshal.loads(data)
        except (ValueError, EOFError, TypeError):
            raise FscsyncError("unreadable --parallel spool file") from None
        if version != _VERSION:
            raise FscsyncError("--parallel spool file of another version")
        part = Decisions()
        part.dirs = list(zip(decode_entries(dirs) if dirs else [], new, strict=True))
        part.existing, part.litter = existing, litter
        part.children = {k: set(v) for k, v in children.items()}
        part.incoming = {k: set(v) for k, v in incoming.items()}
        out.merge(part)
        users.update(u)
        groups.update(g)
        io_error = io_error or err
        count += 1
    return out, users, groups, io_error, count


def remove(token: bytes) -> None:
    """The run's spool directory and what is in it."""
    try:
        path = spool_dir(token)
    except (OSError, FscsyncError):
        return
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)

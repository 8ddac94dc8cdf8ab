"""Builders for test trees that exercise everything `rsync -aHAX` preserves.

One rich tree covers the awkward cases a mirror gets wrong: block-boundary
sizes, non-UTF-8 and newline names, every file type, hard-link groups, odd
modes, xattrs in several namespaces, ACLs, nanosecond times and foreign owners.
Content and times are deterministic so two builds compare equal.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from dataclasses import dataclass, field

import xattr

BASE_NS = 1_600_000_000_123_456_789
"""A fixed mtime with a nanosecond part, so time bugs show up as diffs."""

FOREIGN_UID, FOREIGN_GID = 1234, 2345

SIZES = {b"empty": 0, b"one": 1, b"4095": 4095, b"4096": 4096, b"4097": 4097,
         b"big": (1 << 20) + 3}


@dataclass
class Built:
    """What make_rich_tree made: feature name -> relative path, and what it skipped why."""

    root: bytes
    paths: dict[str, bytes] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def pattern(size: int, seed: int | bytes | str = 0) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, so deltas are honest)."""
    return random.Random(seed).randbytes(size)


def write(path: bytes | str, data: bytes, mode: int | None = None) -> None:
    """Create or replace a file with exactly `data`, optionally chmod-ing it."""
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def set_times(path: bytes | str, ns: int, atime_ns: int | None = None) -> None:
    """Set mtime (and atime, default the same) without following symlinks."""
    os.utime(path, ns=(ns if atime_ns is None else atime_ns, ns), follow_symlinks=False)


def set_tree_times(root: bytes | str, base_ns: int = BASE_NS) -> None:
    """Give every entry a distinct, deterministic time, directories after their contents."""
    root_b = os.fsencode(root)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root_b, topdown=False):
        entries.extend(os.path.join(dirpath, n) for n in sorted(filenames + dirnames))
        entries.append(dirpath)
    for path in entries:
        digest = hashlib.sha256(os.path.relpath(path, root_b)).digest()
        set_times(path, base_ns + int.from_bytes(digest[:8], "big") % 10**15)


def _files(root: bytes, built: Built) -> None:
    os.mkdir(os.path.join(root, b"files"))
    for name, size in SIZES.items():
        rel = os.path.join(b"files", name)
        write(os.path.join(root, rel), pattern(size, name))
        built.paths[f"size-{size}"] = rel
    os.makedirs(os.path.join(root, b"d1/d2/d3"))
    write(os.path.join(root, b"d1/d2/d3/leaf.txt"), b"deep\n")
    built.paths["nested"] = b"d1/d2/d3/leaf.txt"
    sparse = os.path.join(root, b"files/sparse")
    with open(sparse, "wb") as f:
        f.write(b"head")
        f.seek(4 << 20)
        f.write(b"tail")
    built.paths["sparse"] = b"files/sparse"


def _names(root: bytes, built: Built) -> None:
    os.mkdir(os.path.join(root, b"names"))
    for feature, name in (("non-utf8", b"caf\xe9"), ("newline", b"new\nline"),
                          ("name-255", b"n" * 255)):
        rel = os.path.join(b"names", name)
        write(os.path.join(root, rel), name + b"\n")
        built.paths[feature] = rel


def _links(root: bytes, built: Built) -> None:
    links = os.path.join(root, b"links")
    os.mkdir(links)
    for feature, name, target in (
        ("symlink-rel", b"rel", b"../files/one"),
        ("symlink-abs", b"abs", b"/etc/passwd"),
        ("symlink-dangling", b"dangling", b"missing/\xff target"),
        ("symlink-dir", b"todir", b"../d1"),
    ):
        os.symlink(target, os.path.join(links, name))
        built.paths[feature] = os.path.join(b"links", name)
    write(os.path.join(links, b"pair-a"), b"pair\n")
    os.link(os.path.join(links, b"pair-a"), os.path.join(links, b"pair-b"))
    built.paths["hardlink-pair"] = b"links/pair-a"
    write(os.path.join(links, b"tri-1"), b"triple\n")
    for other in (b"links/tri-2", b"d1/d2/tri-3"):
        os.link(os.path.join(links, b"tri-1"), os.path.join(root, other))
    built.paths["hardlink-triple"] = b"links/tri-1"


def _specials(root: bytes, built: Built, as_root: bool) -> None:
    special = os.path.join(root, b"special")
    os.mkdir(special)
    os.mkfifo(os.path.join(special, b"fifo"))
    built.paths["fifo"] = b"special/fifo"
    if as_root:
        os.mknod(os.path.join(special, b"null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        built.paths["chardev"] = b"special/null"
    else:
        built.skipped["chardev"] = "needs root"


def _modes(root: bytes, built: Built) -> None:
    modes = os.path.join(root, b"modes")
    os.mkdir(modes)
    for name, mode in ((b"f0600", 0o600), (b"f0751", 0o751), (b"setuid", 0o4755)):
        write(os.path.join(modes, name), name + b"\n", mode)
        built.paths[f"mode-{name.decode()}"] = os.path.join(b"modes", name)
    for name, mode in ((b"setgid-dir", 0o2775), (b"sticky-dir", 0o1777)):
        os.mkdir(os.path.join(modes, name))
        os.chmod(os.path.join(modes, name), mode)
        built.paths[name.decode()] = os.path.join(b"modes", name)


def _xattrs(root: bytes, built: Built, as_root: bool) -> None:
    xattr.set(os.path.join(root, b"files/one"), b"user.fscsync.test", b"\x00bin\xffvalue")
    xattr.set(os.path.join(root, b"d1"), b"user.fscsync.dir", b"dir-value")
    built.paths["xattr-user-file"] = b"files/one"
    built.paths["xattr-user-dir"] = b"d1"
    if not as_root:
        built.skipped["xattr-trusted"] = built.skipped["xattr-security"] = "needs root"
        return
    xattr.set(os.path.join(root, b"files/4096"), b"trusted.fscsync", b"t")
    xattr.set(os.path.join(root, b"files/4096"), b"security.fscsync", b"s")
    xattr.set(os.path.join(root, b"links/rel"), b"trusted.fscsync.link", b"l", nofollow=True)
    built.paths["xattr-trusted"] = built.paths["xattr-security"] = b"files/4096"
    built.paths["xattr-trusted-symlink"] = b"links/rel"


def _acls(root: bytes, built: Built) -> None:
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        built.skipped["acl"] = "setfacl not installed"
        return
    acl = f"u:{FOREIGN_UID}:rwx,g:{FOREIGN_GID}:r-x"
    subprocess.run([setfacl, "-m", acl, os.path.join(root, b"files/4097")], check=True)
    subprocess.run([setfacl, "-d", "-m", acl, os.path.join(root, b"d1/d2")], check=True)
    built.paths["acl"] = b"files/4097"
    built.paths["acl-default"] = b"d1/d2"


def _owners(root: bytes, built: Built) -> None:
    """Hand some entries to another uid/gid; chown clears setuid, so restore modes."""
    for rel in (b"files/4095", b"links/abs", b"modes/setuid", b"d1/d2/d3"):
        path = os.path.join(root, rel)
        mode = os.lstat(path).st_mode
        os.chown(path, FOREIGN_UID, FOREIGN_GID, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(path, stat.S_IMODE(mode))
    built.paths["foreign-owner"] = b"files/4095"
    built.paths["foreign-owner-symlink"] = b"links/abs"


def make_rich_tree(root: bytes | str | os.PathLike[str], *, root_only: bool = True) -> Built:
    """Build the rich tree under root (created if missing).

    With root_only (the default) and when running as root, also make what only
    root can: a char device, trusted.*/security.* xattrs, foreign owners.
    """
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    as_root = root_only and os.geteuid() == 0
    built = Built(root=root_b)
    _files(root_b, built)
    _names(root_b, built)
    _links(root_b, built)
    _specials(root_b, built, as_root)
    _modes(root_b, built)
    _xattrs(root_b, built, as_root)
    _acls(root_b, built)
    if as_root:
        _owners(root_b, built)
    else:
        built.skipped["foreign-owner"] = "needs root"
    set_tree_times(root_b)
    return built

"""Building blocks for the end-to-end proof on the test filesystem (tests/test_e2e_testfs.py).

The proof is: a plaintext tree written through an unlocked view, mirrored by
fscsync between locked views (no key anywhere), reads back byte for byte
through an unlocked view of the copy. This module holds the pieces:

- `build_original`: the plaintext tree (39 entries) on a plain directory,
  with every kind of entry a mirror gets wrong;
- `replicate`: `cp -a` into a view (types, contents, modes, owners, hard links,
  times, directories last), so the view is written the way users write it;
- `World`: backing directories and their views (mounted with fscsync.testfs);
  every view is unmounted when the world closes, whatever happened;
- `item_lines`: read fscsync's `-i` output (`support.stats.parse_stats` reads `--stats`).

Layout (mirrors reality): the root of a filesystem is never encrypted (ext4
refuses a policy on its root inode), so a backing directory's root is plain and
holds `vault/`, the encrypted directory (a v2 policy, `make_encrypted_dir`), next
to plain entries. The destination of a mirror is an *empty plain* backing
directory: fscsync creates `vault/` there as a plain directory, fills it with
entries that stay plain until their ciphertext is written, and installs each
entry's `security.encdata` last (post-order for directories), which is exactly
what a key-less mirror on an encdata-capable filesystem has to do.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from fscsync.testfs import make_encrypted_dir, mounted
from support.trees import pattern, set_tree_times

join = os.path.join

KEY = bytes(range(64))
"""The master key of the encrypted tree (the FSCRYPT-FACTS vector key 0x00..0x3f)."""

VAULT = b"vault"
FOREIGN_UID, FOREIGN_GID = 1234, 2345
LONG_NAME = b"L" * 100 + "é".encode() * 50  # 200 bytes, UTF-8
LONG_DIR = b"\xd0" * 190  # 190 bytes, not UTF-8
BIG_SIZE = (3 << 20) + 5
MIB_SIZE = (1 << 20) + 3

SIZES = {b"empty": 0, b"one": 1, b"u4095": 4095, b"u4096": 4096, b"u4097": 4097,
         b"mib": MIB_SIZE}


def write(path: bytes, data: bytes, mode: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_original(root: bytes) -> None:
    """The plaintext tree (39 entries), on an existing empty directory `root`.

    README, plain/note.txt          unencrypted entries beside the encrypted dir
    vault/files/<sizes>             0, 1, 4095, 4096, 4097, 1 MiB + 3 bytes
    vault/big.img                   3 MiB + 5 bytes (the file changed in place)
    vault/names/                    mode 0751: non-UTF-8, newline, '=', space and
                                    200-byte names, a 190-byte directory name
    vault/links/                    relative, absolute, dangling, non-UTF-8 and
                                    directory symlinks; a hard link to files/u4097
    vault/special/                  mode 0700: a FIFO, modes 0600/0751/0444, an owner
    vault/deep/a/b/c/leaf.txt, vault/empty/
    Every entry gets a distinct nanosecond mtime (support.trees.set_tree_times).
    """
    write(join(root, b"README"), b"not encrypted\n", 0o644)
    os.mkdir(join(root, b"plain"))
    write(join(root, b"plain", b"note.txt"), pattern(5000, "note"), 0o644)
    v = join(root, VAULT)
    os.mkdir(v, 0o755)
    os.mkdir(join(v, b"files"))
    for i, (name, size) in enumerate(SIZES.items()):
        write(join(v, b"files", name), pattern(size, name), 0o600 if i % 2 else 0o644)
    write(join(v, b"big.img"), pattern(BIG_SIZE, "big"), 0o644)
    names = join(v, b"names")
    os.mkdir(names)
    for name in (b"caf\xe9", b"\xff\xfe\x80raw", b"new\nline", b"eq=ual", b"sp ace",
                 LONG_NAME):
        write(join(names, name), name * 3)
    os.mkdir(join(names, LONG_DIR))
    write(join(names, LONG_DIR, b"inside"), b"in a long directory\n")
    os.chmod(names, 0o751)
    links = join(v, b"links")
    os.mkdir(links)
    for name, target in ((b"rel", b"../files/one"), (b"abs", b"/nonexistent/abs/target"),
                         (b"dangling", b"missing"), (b"odd\xff", b"\xff/odd\xfe=\n"),
                         (b"todir", b"../names")):
        os.symlink(target, join(links, name))
    os.link(join(v, b"files", b"u4097"), join(links, b"hard-u4097"))
    special = join(v, b"special")
    os.mkdir(special)
    os.mkfifo(join(special, b"fifo"), 0o640)
    os.chmod(join(special, b"fifo"), 0o640)
    write(join(special, b"exec"), b"#!/bin/sh\necho hi\n", 0o751)
    write(join(special, b"readonly"), b"read only\n", 0o444)
    write(join(special, b"owned"), b"someone else's\n")
    os.chown(join(special, b"owned"), FOREIGN_UID, FOREIGN_GID)
    os.chmod(join(special, b"owned"), 0o600)
    os.chmod(special, 0o700)
    os.makedirs(join(v, b"deep", b"a", b"b", b"c"))
    write(join(v, b"deep", b"a", b"b", b"c", b"leaf.txt"), b"deep\n")
    os.mkdir(join(v, b"empty"), 0o700)
    os.chmod(join(v, b"empty"), 0o700)
    set_tree_times(root)


def _meta(dst: bytes, st: os.stat_result) -> None:
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_children(src: bytes, dst: bytes, seen: dict[tuple[int, int], bytes]) -> None:
    for name in sorted(os.listdir(src)):
        s, d = join(src, name), join(dst, name)
        st = os.lstat(s)
        inode = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            if not os.path.isdir(d):
                os.mkdir(d, 0o700)
            _copy_children(s, d, seen)
        elif inode in seen:
            os.link(seen[inode], d)
            continue
        elif stat.S_ISREG(st.st_mode):
            write(d, read(s))
            if st.st_nlink > 1:
                seen[inode] = d
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(d)
        else:
            raise ValueError(f"replicate: unsupported type {st.st_mode:o} at {s!r}")
        _meta(d, st)


def replicate(src: bytes, dst: bytes) -> None:
    """Copy the tree below `src` into the existing directory `dst` like `cp -a`.

    Directories that already exist in `dst` (an encrypted `vault/` made with
    mkpolicy) are filled, not replaced; their attributes are set after their
    contents, so every time in `dst` equals the one in `src`.
    """
    _copy_children(src, dst, {})
    _meta(dst, os.lstat(src))


def same_times(src: bytes, dst: bytes) -> None:
    """Give every entry of `dst` the times of the same path in `src` (dirs last)."""
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for name in [*filenames, *dirnames, None]:
            path = dirpath if name is None else join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, src)
            os.utime(join(dst, rel) if rel != b"." else dst, ns=(st.st_atime_ns, st.st_mtime_ns),
                     follow_symlinks=False)


def locked_twin(unlocked_root: bytes, locked_root: bytes, rel: bytes) -> bytes:
    """The locked-view path of `rel` (a plaintext path), found component by component by
    inode number (the views are mounted with use_ino over the same backing directory)."""
    here, there = unlocked_root, locked_root
    for part in rel.split(b"/"):
        here = join(here, part)
        ino = os.lstat(here).st_ino
        there = next(p for p in (join(there, n) for n in os.listdir(there))
                     if os.lstat(p).st_ino == ino)
    return there


@dataclass
class World:
    """Backing directories and their testfs views under one temporary directory.

    `view()` mounts a backing directory (locked without a key) until `close()`;
    `mounted_view()` is the same as a context manager, for a view that must
    go away before the next step (e.g. "unmount B, mount it with the key").
    Views behave as the real interface does (encdata never listed) unless
    `list_encdata` asks for the kinder stand-in.
    """

    base: Path
    list_encdata: bool = False
    stack: ExitStack = field(default_factory=ExitStack)
    _n: count = field(default_factory=count)

    def backing(self, name: str, encrypted_vault: bool = False) -> bytes:
        path = self.base / name
        path.mkdir()
        if encrypted_vault:
            (path / os.fsdecode(VAULT)).mkdir()
            make_encrypted_dir(os.fsencode(path / os.fsdecode(VAULT)), KEY)
        return os.fsencode(path)

    def _mountpoint(self, backing: bytes, key: bytes | None) -> Path:
        kind = "unlocked" if key else "locked"
        mp = self.base / f"mnt-{os.path.basename(os.fsdecode(backing))}-{kind}-{next(self._n)}"
        mp.mkdir()
        return mp

    def view(self, backing: bytes, key: bytes | None = None) -> bytes:
        return self.stack.enter_context(self.mounted_view(backing, key))

    def mounted_view(self, backing: bytes, key: bytes | None = None
                     ) -> AbstractContextManager[bytes]:
        return mounted(backing, self._mountpoint(backing, key), key, self.list_encdata)

    def close(self) -> None:
        self.stack.close()


ITEM_RE = re.compile(r"^(\*deleting  |[<>ch.][fdLDS][.+?cstpoguax]{9}) (.*)$")


def item_lines(out: bytes) -> list[tuple[str, str]]:
    """(flags, rest) for every `-i` line of a run's stdout."""
    lines = out.decode("ascii", "replace").splitlines()
    return [(m.group(1), m.group(2)) for m in map(ITEM_RE.match, lines) if m]

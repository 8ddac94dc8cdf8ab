"""Encrypted trees in the "backup layout", built on a plain filesystem (as root).

A locked fscrypt tree mirrored to a stock filesystem looks like this: regular
files hold raw ciphertext padded to the 4096-byte encryption unit, and every
encrypted inode (files, directories, symlinks, special files) carries
`security.encdata` as an ordinary xattr (root may write `security.*`). No key
and no real cryptography are needed to build one: ciphertext is random bytes,
contexts are made up, and the rules that matter to a mirror hold:

- rewriting N blocks in place (same nonce) changes exactly those ciphertext
  blocks, as AES-XTS per data unit does;
- rewriting a file "anew" (write new + rename) gives a new inode, a new nonce
  and entirely new ciphertext.

Everything is deterministic for a given seed, so two builds compare equal.
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass, field

import xattr

from fscsync.fs.cipher import (
    NONCE_LEN,
    UNIT,
    EncData,
    escape_name,
    format_encdata,
    pack_context,
    padded_size,
    parse_encdata,
)
from support.trees import BASE_NS, set_times, set_tree_times

ENCDATA = b"security.encdata"
USER_ENCDATA = b"user.fscsync.encdata"

FLAG_PAD_32 = 0x03
FLAG_IV_INO_LBLK_64 = 0x08
FLAG_IV_INO_LBLK_32 = 0x10


def make_ctx(key_id: bytes, nonce: bytes, flags: int = 0) -> bytes:
    """A 40-byte fscrypt v2 context (AES-256-XTS contents, AES-256-CTS names)."""
    return pack_context(key_id, nonce, flags)


def encdata_text(size: int, ctx: bytes, enc_name: bytes = b"") -> bytes:
    return format_encdata(EncData(size, ctx, enc_name))


def read_encdata(path: bytes | str, name: bytes = ENCDATA) -> bytes | None:
    """The stored encdata text of a path (not following symlinks), or None."""
    try:
        return xattr.get(path, name, nofollow=True)
    except OSError:
        return None


@dataclass
class EncTree:
    """Builder for one encrypted tree under `root` (created if missing).

    `key_id` and `flags` give the default policy; each entry may use another.
    Paths given to the methods are relative to root (bytes); the methods
    return the full path. Call `finish()` once to give every entry a distinct
    deterministic mtime (directories after their contents).
    """

    root: bytes
    seed: int | str = 0
    key_id: bytes = bytes(range(0xA0, 0xB0))
    flags: int = FLAG_PAD_32
    xattr_name: bytes = ENCDATA
    paths: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = os.fsencode(self.root)
        self._rng = random.Random(self.seed)
        os.makedirs(self.root, exist_ok=True)

    # ---- helpers ---------------------------------------------------------------

    def path(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel not in (b"", b".") else self.root

    def _ctx(self, key_id: bytes | None, flags: int | None) -> bytes:
        return make_ctx(key_id or self.key_id, self._rng.randbytes(16),
                        self.flags if flags is None else flags)

    def _name(self) -> bytes:
        return self._rng.randbytes(self._rng.choice((16, 32)))

    def _set(self, path: bytes, text: bytes) -> None:
        xattr.set(path, self.xattr_name, text, nofollow=True)

    def encdata(self, rel: bytes) -> EncData:
        text = read_encdata(self.path(rel), self.xattr_name)
        if text is None:
            raise AssertionError(f"{rel!r} has no {self.xattr_name!r}")
        return parse_encdata(text)

    def ciphertext(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    # ---- entries -----------------------------------------------------------------

    def dir(self, rel: bytes, mode: int = 0o755, *, encrypted: bool = True,
            key_id: bytes | None = None, flags: int | None = None) -> bytes:
        """A directory; encrypted ones carry encdata with size 0."""
        p = self.path(rel)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
        if encrypted:
            self._set(p, encdata_text(0, self._ctx(key_id, flags), self._name()))
        return p

    def file(self, rel: bytes, size: int, mode: int = 0o644, *, encrypted: bool = True,
             key_id: bytes | None = None, flags: int | None = None,
             data: bytes | None = None) -> bytes:
        """An encrypted file: `size` cleartext bytes as padded random ciphertext.
        Unencrypted (`encrypted=False`): `size` random bytes, no encdata."""
        p = self.path(rel)
        n = padded_size(size) if encrypted else size
        with open(p, "wb") as f:
            f.write(data if data is not None else self.ciphertext(n))
        os.chmod(p, mode)
        if encrypted:
            self._set(p, encdata_text(size, self._ctx(key_id, flags), self._name()))
        return p

    def symlink(self, rel: bytes, target: bytes | None = None, *,
                key_id: bytes | None = None, flags: int | None = None) -> bytes:
        """An encrypted symlink: an opaque (non-UTF-8) target, encdata set nofollow."""
        p = self.path(rel)
        if target is None:
            target = escape_name(self._rng.randbytes(32)).replace(b"\x00", b"\x01")
            target = b"\xff" + target
        os.symlink(target, p)
        self._set(p, encdata_text(len(target), self._ctx(key_id, flags), self._name()))
        return p

    def fifo(self, rel: bytes, mode: int = 0o640) -> bytes:
        """A FIFO in an encrypted directory: encrypted name, no contents."""
        p = self.path(rel)
        os.mkfifo(p, mode)
        os.chmod(p, mode)
        self._set(p, encdata_text(0, self._ctx(None, None), self._name()))
        return p

    def hardlink(self, existing: bytes, rel: bytes) -> bytes:
        p = self.path(rel)
        os.link(self.path(existing), p)
        return p

    def finish(self, base_ns: int = BASE_NS) -> None:
        set_tree_times(self.root, base_ns)

    # ---- changes -----------------------------------------------------------------

    def rewrite_blocks(self, rel: bytes, blocks: list[int], *, keep_mtime: bool = False
                       ) -> None:
        """Change ciphertext blocks in place (same inode, same nonce, same size), as an
        in-place write of those data units does; the mtime moves on by one second."""
        p = self.path(rel)
        st = os.lstat(p)
        with open(p, "r+b") as f:
            for b in blocks:
                if (b + 1) * UNIT > st.st_size:
                    raise ValueError(f"block {b} is beyond the ciphertext of {rel!r}")
                f.seek(b * UNIT)
                f.write(self.ciphertext(UNIT))
        set_times(p, st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000)

    def rewrite_anew(self, rel: bytes, size: int | None = None) -> bytes:
        """Replace the file through "write new + rename": a new inode, a new nonce and
        all-new ciphertext (same policy, same encrypted name unless told)."""
        p = self.path(rel)
        st = os.lstat(p)
        old = self.encdata(rel)
        size = old.size if size is None else size
        head, _, name = p.rpartition(b"/")
        tmp = os.path.join(head, b".new-" + name[:200])
        with open(tmp, "wb") as f:
            f.write(self.ciphertext(padded_size(size)))
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.chown(tmp, st.st_uid, st.st_gid)
        ctx = old.policy + self._rng.randbytes(NONCE_LEN)
        self._set(tmp, encdata_text(size, ctx, old.enc_name))
        set_times(tmp, st.st_mtime_ns + 1_000_000_000)
        dir_st = os.lstat(head)
        os.rename(tmp, p)
        set_times(head, dir_st.st_mtime_ns)
        return p


def build_standard(root: bytes | str, seed: int | str = 0, *,
                   xattr_name: bytes = ENCDATA) -> EncTree:
    """The standard encrypted tree used by the tests (about 3.2 MiB of ciphertext):

    plain/           unencrypted: a plain file and a plain subdir (mixed trees exist)
    enc/             encrypted dir (mode 0700), mainline-style (base64url-ish) names
      <n0>...<n5>    files of cleartext sizes 0, 1, 4095, 4096, 4097, 3 MiB + 5
      <sub>/         nested encrypted dir with a Lustre-escaped non-UTF-8 name
        <f>          a file of 10000 bytes, mode 0600
        <link>       a symlink with an opaque non-UTF-8 target
        <fifo>       a FIFO
      <hl-a>, <sub>/<hl-b>   a hard-link pair of one encrypted file
    Names are recorded in `tree.paths`.
    """
    t = EncTree(os.fsencode(root), seed=seed, xattr_name=xattr_name)
    t.dir(b"plain", encrypted=False)
    t.paths["plain-file"] = b"plain/readme.txt"
    t.file(b"plain/readme.txt", 5000, encrypted=False)
    t.dir(b"plain/sub", encrypted=False)
    t.file(b"plain/sub/data.bin", 70000, encrypted=False)
    t.dir(b"enc", 0o700)
    for i, size in enumerate((0, 1, 4095, 4096, 4097, (3 << 20) + 5)):
        name = b"enc/" + f"AbCd{i}_-xYz{size}".encode()
        t.file(name, size)
        t.paths[f"file-{size}"] = name
    sub = b"enc/" + escape_name(b"\x00sub\xe9\xff/\x7f=dir")
    t.dir(sub)
    t.paths["subdir"] = sub
    t.paths["file-10000"] = t.file(sub + b"/" + escape_name(b"\x80\x81f\n1"), 10000,
                                   0o600)[len(t.root) + 1:]
    t.paths["symlink"] = t.symlink(sub + b"/" + escape_name(b"\xfelink\r"))[len(t.root) + 1:]
    t.paths["fifo"] = t.fifo(sub + b"/" + escape_name(b"\xc3\x28fifo"))[len(t.root) + 1:]
    t.file(b"enc/hl-a", 9000)
    t.hardlink(b"enc/hl-a", sub + b"/hl-b")
    t.paths["hardlink-a"] = b"enc/hl-a"
    t.paths["hardlink-b"] = sub + b"/hl-b"
    t.finish()
    return t

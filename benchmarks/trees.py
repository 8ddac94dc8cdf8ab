"""Tree builders for the benchmark (benchmarks/bench.py).

Every tree is deterministic (seeded content, sizes, names and times) and is
built once per parameter set: a stamp file beside the tree records the
parameters, so `bench.py --keep` runs reuse trees instead of rebuilding them.

Changed-block scenarios (S3, S5) keep the *old* contents of the changed
blocks in a side file, so a destination can be put back to the old version
by writing those few blocks and the old mtime back (see `restore_old`) rather
than by copying a whole gigabyte before every timed run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

BLOCK = 4096
CHUNK = 16 << 20
BASE_NS = 1_700_000_000_000_000_000
"""Fixed mtime of built trees (plus a per-entry offset), so rebuilt trees compare equal."""
NEWER_NS = 3600 * 10**9
"""How much newer the changed file's mtime is than the old version's."""

SMALL_MIN, SMALL_MAX = 100, 8 << 10

ENCDATA_XATTR = "security.encdata"
ENC_FLAGS = 0x03  # FSCRYPT_POLICY_FLAGS_PAD_32
ENC_RAW_NAME_LEN = 32  # a 1..32-byte name encrypts to 32 bytes with PAD_32


# --------------------------------------------------------------------------- helpers


def random_bytes(n: int, seed: int | str) -> bytes:
    return random.Random(seed).randbytes(n)


def write_random_file(path: str, size: int, seed: int | str) -> None:
    """Incompressible, deterministic content, written in 16 MiB chunks."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        done = 0
        index = 0
        while done < size:
            n = min(CHUNK, size - done)
            os.write(fd, random_bytes(n, f"{seed}/{index}"))
            done += n
            index += 1
    finally:
        os.close(fd)


def write_file(path: str | bytes, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def set_tree_times(root: str | bytes) -> None:
    """Deterministic mtimes, directories after their contents (post-order)."""
    for i, path in enumerate(_post_order(os.fsencode(root))):
        ns = BASE_NS + i * 1_000_003
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _post_order(root: bytes) -> Iterator[bytes]:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in sorted(filenames) + sorted(dirnames):
            yield os.path.join(dirpath, name)
    yield root


def small_sizes(n: int, seed: int | str) -> list[int]:
    rng = random.Random(f"sizes/{seed}")
    return [rng.randint(SMALL_MIN, SMALL_MAX) for _ in range(n)]


def disk_usage(path: str) -> int:
    """Bytes allocated under path (st_blocks), 0 if it does not exist."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- stamps


def _stamp_path(tree: str) -> str:
    return tree.rstrip("/") + ".stamp.json"


def ensure(tree: str, params: dict, build: Callable[[str], dict | None]) -> dict:
    """Build `tree` with `build(tree)` unless a stamp says it exists with `params`.

    Returns the stamp's `extra` dict (whatever the builder returned).
    """
    stamp = _stamp_path(tree)
    try:
        with open(stamp) as f:
            saved = json.load(f)
        if saved.get("params") == params and os.path.isdir(tree):
            return saved.get("extra") or {}
    except (OSError, ValueError):
        pass
    remove(tree)
    try:
        os.unlink(stamp)
    except FileNotFoundError:
        pass
    os.makedirs(tree)
    extra = build(tree) or {}
    with open(stamp + ".tmp", "w") as f:
        json.dump({"params": params, "extra": extra}, f)
    os.replace(stamp + ".tmp", stamp)
    return extra


def remove(path: str) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


# --------------------------------------------------------------------------- plain trees


def build_small_files(root: str, files: int, dirs: int, seed: str) -> int:
    """`files` files of 100 B - 8 KiB spread evenly over `dirs` directories; returns bytes."""
    sizes = small_sizes(files, seed)
    per_dir = -(-files // dirs)
    total = 0
    for d in range(dirs):
        dpath = os.path.join(root, f"d{d:03d}")
        os.mkdir(dpath)
        for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
            write_file(os.path.join(dpath, f"f{i:06d}.dat"), random_bytes(sizes[i], f"{seed}/{i}"))
            total += sizes[i]
    return total


@dataclass(frozen=True)
class ChangeSet:
    """Which aligned 4 KiB blocks of one file differ between the old and new version."""

    offsets: list[int]
    old_mtime_ns: int
    new_mtime_ns: int
    old_blocks_file: str
    """A file holding the old contents of the blocks, concatenated in offset order."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ChangeSet:
        return cls(**d)


def pick_blocks(size: int, count: int, seed: int | str) -> list[int]:
    """`count` distinct random block-aligned offsets inside a file of `size` bytes."""
    nblocks = size // BLOCK
    rng = random.Random(f"blocks/{seed}")
    return sorted(b * BLOCK for b in rng.sample(range(nblocks), count))


def change_blocks(path: str, count: int, seed: str, old_blocks_file: str) -> ChangeSet:
    """Overwrite `count` random 4 KiB blocks of `path` with new random data, in place.

    The old block contents go to `old_blocks_file`; the file's mtime moves forward by an
    hour so both tools see that it changed (its size stays the same).
    """
    st = os.stat(path)
    offsets = pick_blocks(st.st_size, count, seed)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        old = b"".join(os.pread(fd, BLOCK, off) for off in offsets)
        for i, off in enumerate(offsets):
            os.pwrite(fd, random_bytes(BLOCK, f"{seed}/new/{i}"), off)
    finally:
        os.close(fd)
    write_file(old_blocks_file, old)
    new_ns = st.st_mtime_ns + NEWER_NS
    os.utime(path, ns=(new_ns, new_ns))
    return ChangeSet(offsets, st.st_mtime_ns, new_ns, old_blocks_file)


def restore_old(path: str | bytes, cs: ChangeSet) -> None:
    """Turn a copy of the new version back into the old one: old blocks, old mtime."""
    with open(cs.old_blocks_file, "rb") as f:
        old = f.read()
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for i, off in enumerate(cs.offsets):
            os.pwrite(fd, old[i * BLOCK:(i + 1) * BLOCK], off)
    finally:
        os.close(fd)
    os.utime(path, ns=(cs.old_mtime_ns, cs.old_mtime_ns), follow_symlinks=False)


def blocks_match(path: str | bytes, reference: str | bytes, cs: ChangeSet) -> bool:
    """Cheap per-run check: do the changed blocks of `path` equal those of `reference`?"""
    with open(path, "rb") as a, open(reference, "rb") as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            return False
        return all(os.pread(a.fileno(), BLOCK, off) == os.pread(b.fileno(), BLOCK, off)
                   for off in cs.offsets)


def build_s1(root: str, big: int, files: int, dirs: int) -> dict:
    """S1: `big.bin` of `big` bytes + `small/` with `files` small files in `dirs` dirs."""
    write_random_file(os.path.join(root, "big.bin"), big, "s1/big")
    small = os.path.join(root, "small")
    os.mkdir(small)
    total = build_small_files(small, files, dirs, "s1/small")
    set_tree_times(root)
    return {"bytes": big + total, "small_bytes": total}


def build_many(root: str, files: int, dirs: int) -> dict:
    """S2b: `files` small files in `dirs` directories."""
    total = build_small_files(root, files, dirs, "many")
    set_tree_times(root)
    return {"bytes": total}


def build_big_changed(root: str, big: int, changed: int, side: str) -> dict:
    """S3: `big.bin` alone, with `changed` random blocks rewritten after the old version."""
    path = os.path.join(root, "big.bin")
    write_random_file(path, big, "s3/big")
    set_tree_times(root)
    cs = change_blocks(path, changed, "s3", side)
    return {"changes": cs.to_json(), "file": "big.bin"}


# --------------------------------------------------------------------------- encrypted backup

class _Encryptor:
    """Stores encdata the way the backup layout does: as the ordinary xattr security.encdata."""

    def __init__(self, seed: str):
        from fscsync.fs import cipher  # after bench.py set sys.path

        self._cipher = cipher
        self.escape = cipher.escape_name  # the name a locked view shows for a raw name
        self.padded = cipher.padded_size  # the ciphertext bytes of a cleartext size
        self.rng = random.Random(f"enc/{seed}")
        self.key_id = self.rng.randbytes(16)

    def raw_name(self) -> bytes:
        return self.rng.randbytes(ENC_RAW_NAME_LEN)

    def store(self, path: bytes, size: int, raw_name: bytes) -> None:
        c = self._cipher
        ctx = c.pack_context(self.key_id, self.rng.randbytes(16), ENC_FLAGS)
        text = c.format_encdata(c.EncData(size, ctx, raw_name))
        os.setxattr(path, ENCDATA_XATTR, text, follow_symlinks=False)


def build_encrypted(root: str, big: int, files: int, dirs: int, changed: int,
                    side: str) -> dict:
    """S5: an encrypted tree in the backup layout, one big file with `changed` new blocks.

    root/vault is the encrypted directory (plaintext name, empty enc_name); below it every
    name is an escaped 32-byte raw ciphertext name, every regular file holds its
    ciphertext padded to 4096 bytes, and every entry carries security.encdata (cleartext
    size, context, raw name). The big file's cleartext is 100 bytes short of `big`.
    """
    enc = _Encryptor("s5")
    vault = os.path.join(os.fsencode(root), b"vault")
    os.mkdir(vault)
    sizes = small_sizes(files, "s5")
    per_dir = -(-files // dirs)
    stored = 0
    for d in range(dirs):
        raw = enc.raw_name()
        dpath = os.path.join(vault, enc.escape(raw))
        os.mkdir(dpath)
        for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
            fraw = enc.raw_name()
            fpath = os.path.join(dpath, enc.escape(fraw))
            padded = enc.padded(sizes[i])
            write_file(fpath, random_bytes(padded, f"s5/{i}"))
            enc.store(fpath, sizes[i], fraw)
            stored += padded
        enc.store(dpath, 0, raw)
    big_raw = enc.raw_name()
    big_path = os.path.join(vault, enc.escape(big_raw))
    write_random_file(os.fsdecode(big_path), big, "s5/big")
    enc.store(big_path, big - 100, big_raw)
    enc.store(vault, 0, b"")
    set_tree_times(root)
    cs = change_blocks(os.fsdecode(big_path), changed, "s5", side)
    rel = os.path.relpath(big_path, os.fsencode(root))
    return {"changes": cs.to_json(), "file": os.fsdecode(rel), "bytes": big + stored}

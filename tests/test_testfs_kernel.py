"""Cross-check the fscrypt model against ciphertext the real kernel writes.

A loop-mounted `mkfs.ext4 -O encrypt -b 4096` image gets a v2 key and two
policies (padding 32 and 4); files, names and symlinks are written with the
key, the image is unmounted and its raw blocks, directory entries, symlink
bodies and contexts are read back with debugfs and compared with the model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fscsync.fs import cipher
from fscsync.fs.cipher import UNIT
from fscsync.testfs import model

FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_GET_ENCRYPTION_NONCE = 0x8010661B
KEY_SPEC_TYPE_IDENTIFIER = 2
MASTER = bytes(range(64))
# Plaintext names by length, two of them not UTF-8.
NAMES = [b"n" * n for n in (1, 15, 16, 17, 20, 31, 32, 33, 100, 200, 255)] + [
    b"caf\xe9-\xff\xfe", b"x\x80" * 40,
]
CONTENTS = {
    b"empty": b"",
    b"small": b"0123456789",
    b"one-unit": os.urandom(UNIT),
    b"multi": os.urandom(3 * UNIT + 100),
}
SYMLINKS = {b"short-link": b"../target", b"long-link": b"t/" * 150}


def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=False)


def _debugfs(image: Path, request: str) -> bytes:
    out = _run("debugfs", "-R", request, str(image))
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def ext4_image(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image, mountpoint) of a fresh encrypt-capable ext4; always unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mount")
    for tool in ("mkfs.ext4", "debugfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control")
    image, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    mkfs = _run("mkfs.ext4", "-q", "-F", "-O", "encrypt", "-b", str(UNIT), str(image))
    assert mkfs.returncode == 0, mkfs.stderr
    loop = _run("losetup", "-f", "--show", str(image))
    if loop.returncode != 0:
        pytest.skip(f"losetup failed: {loop.stderr.decode().strip()}")
    device = loop.stdout.decode().strip()
    try:
        mount = _run("mount", "-t", "ext4", device, str(mnt))
        if mount.returncode != 0:
            pytest.skip(f"mount failed: {mount.stderr.decode().strip()}")
        try:
            yield image, mnt
        finally:
            if os.path.ismount(mnt) and _run("umount", str(mnt)).returncode != 0:
                _run("umount", "-l", str(mnt))
    finally:
        _run("losetup", "-d", device)


def _add_key(mnt: Path) -> bytes:
    """Add MASTER to the filesystem keyring; returns the identifier the kernel computed."""
    arg = struct.pack("<II32sII32x", KEY_SPEC_TYPE_IDENTIFIER, 0, b"", len(MASTER), 0) + MASTER
    fd = os.open(mnt, os.O_RDONLY)
    try:
        out = fcntl.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    except OSError as exc:
        pytest.skip(f"kernel refuses FS_IOC_ADD_ENCRYPTION_KEY: {exc}")
    finally:
        os.close(fd)
    return bytes(out[8:24])


def _set_policy(path: Path, ident: bytes, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, cipher.pack_policy(ident, flags))
    finally:
        os.close(fd)


def _nonce(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return bytes(fcntl.ioctl(fd, FS_IOC_GET_ENCRYPTION_NONCE, bytes(16)))
    finally:
        os.close(fd)


def _populate(directory: Path) -> None:
    for name, data in CONTENTS.items():
        (directory / os.fsdecode(name)).write_bytes(data)
    for name in NAMES:
        (directory / os.fsdecode(name)).write_bytes(name)
    for name, target in SYMLINKS.items():
        os.symlink(target, directory / os.fsdecode(name))
    (directory / "sub").mkdir()
    (directory / "sub" / "inner").write_bytes(b"inner file")
    os.mkfifo(directory / "fifo")


def _blocks(image: Path, ino: int) -> bytes:
    numbers = [int(b) for b in _debugfs(image, f"blocks <{ino}>").split()]
    with open(image, "rb") as f:
        return b"".join(os.pread(f.fileno(), UNIT, n * UNIT) for n in numbers)


def _context(image: Path, ino: int, scratch: Path) -> bytes:
    _debugfs(image, f"ea_get -f {scratch} <{ino}> c")
    return scratch.read_bytes()


def _i_block(image: Path, ino: int) -> bytes:
    """The 60-byte i_block area of an inode, where a fast symlink keeps its body."""
    text = _debugfs(image, f"imap <{ino}>").decode()
    block = int(text.split("located at block ")[1].split(",")[0])
    offset = int(text.split("offset ")[1].split()[0], 16)
    with open(image, "rb") as f:
        return os.pread(f.fileno(), 60, block * UNIT + offset + 40)


def _dir_entries(image: Path, ino: int) -> dict[int, bytes]:
    """inode -> raw on-disk name, parsed from the directory's linear blocks."""
    data, entries, pos = _blocks(image, ino), {}, 0
    while pos < len(data):
        child, rec_len, name_len = struct.unpack_from("<IHB", data, pos)
        name = data[pos + 8:pos + 8 + name_len]
        if child and name not in (b".", b".."):
            entries[child] = name
        pos += rec_len
    return entries


def test_model_matches_kernel_ext4(ext4_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, mnt = ext4_image
    ident = _add_key(mnt)
    assert ident == model.key_identifier(MASTER)
    policies = {b"pad32": 0x03, b"pad4": 0x00}
    nonces: dict[int, bytes] = {}
    plain_names: dict[int, bytes] = {}
    for dirname, flags in policies.items():
        top = mnt / os.fsdecode(dirname)
        top.mkdir()
        _set_policy(top, ident, flags)
        _populate(top)
        for path in [top, top / "sub", *top.iterdir(), *(top / "sub").iterdir()]:
            st = path.lstat()
            plain_names[st.st_ino] = os.fsencode(path.name)
            if not path.is_symlink() and not path.is_fifo():
                nonces[st.st_ino] = _nonce(path)
    dir_inos = {d: (mnt / os.fsdecode(d)).stat().st_ino for d in policies}
    sub_inos = {d: (mnt / os.fsdecode(d) / "sub").stat().st_ino for d in policies}
    subprocess.run(["umount", str(mnt)], check=True)

    scratch = tmp_path / "ctx.bin"
    checked = 0
    for dirname, flags in policies.items():
        for dir_ino in (dir_inos[dirname], sub_inos[dirname]):
            dir_ctx = model.Context.from_bytes(_context(image, dir_ino, scratch))
            assert dir_ctx == model.Context(ident, nonces[dir_ino], flags)
            dir_key = model.file_key(MASTER, dir_ctx.nonce)[:32]
            for ino, raw in _dir_entries(image, ino=dir_ino).items():
                name = plain_names[ino]
                assert raw == model.encrypt_name(dir_key, name, flags), name
                assert model.decrypt_name(dir_key, raw) == name
                checked += 1
                if name == b"fifo":  # special files: encrypted name, no context at all
                    assert b"c (" not in _debugfs(image, f"ea_list <{ino}>")
                    continue
                ctx_raw = _context(image, ino, scratch)
                ctx = model.Context.from_bytes(ctx_raw)
                assert replace(ctx, nonce=dir_ctx.nonce) == dir_ctx  # same policy
                key = model.file_key(MASTER, ctx.nonce)
                if name in SYMLINKS:
                    body = model.symlink_disk_form(model.encrypt_symlink(key, SYMLINKS[name],
                                                                         flags))
                    stored = _i_block(image, ino) if len(body) <= 60 else _blocks(image, ino)
                    assert stored[:len(body)] == body, name
                    assert model.decrypt_name(key, body[2:-1]) == SYMLINKS[name]
                elif name != b"sub":
                    assert ctx.nonce == nonces[ino]
                    plain = CONTENTS.get(name, b"inner file" if name == b"inner" else name)
                    cipher = _blocks(image, ino)
                    assert cipher == model.encrypt_contents(key, plain), name
                    assert model.decrypt_contents(key, cipher, len(plain)) == plain
    assert checked == 2 * (len(CONTENTS) + len(NAMES) + len(SYMLINKS) + 3)

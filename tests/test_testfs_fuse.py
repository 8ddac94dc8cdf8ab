"""The FUSE test filesystem: unlocked and locked views over one backing directory.

One backing directory is mounted twice for the module (with and without the
key); each test works in its own directory. Paths are bytes throughout.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xattr
from support.e2e import locked_twin
from testfs_fixtures import (
    KEY,
    OTHER_KEY,
    encdata_of,
    encrypted_backing,
    mounted,
    needs_fuse,
    read_ciphertext,
    snapshot,
)

from fscsync.fs.cipher import (
    ENCDATA_XATTR,
    O_CIPHERTEXT,
    UNIT,
    EncData,
    escape_name,
    format_encdata,
    padded_size,
    parse_encdata,
    unescape_name,
)
from fscsync.testfs import MountError, make_encrypted_dir, model, start

pytestmark = needs_fuse
join = os.path.join


@dataclass(frozen=True)
class Views:
    backing: bytes
    unlocked: bytes
    locked: bytes


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Views]:
    base = tmp_path_factory.mktemp("views")
    backing = encrypted_backing(base / "backing")
    os.mkdir(join(backing, b"enc4"))
    make_encrypted_dir(join(backing, b"enc4"), KEY, padding=4)
    (base / "u").mkdir()
    (base / "l").mkdir()
    with mounted(backing, base / "u", KEY) as unlocked, mounted(backing, base / "l") as locked:
        yield Views(backing, unlocked, locked)


@pytest.fixture
def area(views: Views, request: pytest.FixtureRequest) -> tuple[bytes, bytes]:
    """(unlocked, locked) paths of a fresh encrypted directory for this test."""
    path = join(views.unlocked, b"enc", os.fsencode(request.node.name))
    os.mkdir(path)
    return path, twin(views, path)


def twin(views: Views, unlocked_path: bytes) -> bytes:
    """The same entry seen through the locked view, found by inode number."""
    return locked_twin(views.unlocked, views.locked,
                       os.path.relpath(unlocked_path, views.unlocked))


def write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def encdata(path: bytes) -> EncData:
    text = encdata_of(path)
    assert text is not None, path
    return parse_encdata(text)


def errno_of(func, *args) -> int:
    with pytest.raises(OSError) as info:
        func(*args)
    return info.value.errno


SIZES = [0, 1, UNIT - 1, UNIT, UNIT + 1, 3 * UNIT + 100]


def test_unlocked_writes_model_ciphertext(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    for size in SIZES:
        data = os.urandom(size)
        write(join(u, b"f%d" % size), data)
        assert read(join(u, b"f%d" % size)) == data
        assert os.stat(join(u, b"f%d" % size)).st_size == size
        lpath = twin(views, join(u, b"f%d" % size))
        enc = encdata(lpath)
        assert enc.size == size and enc.policy == encdata(locked).policy
        cipher = model.encrypt_contents(model.file_key(KEY, enc.nonce), data)
        assert read_ciphertext(lpath) == cipher
        assert os.stat(lpath).st_size == padded_size(size) == len(cipher)
        name_key = model.file_key(KEY, encdata(locked).nonce)
        assert unescape_name(os.path.basename(lpath)) == enc.enc_name
        assert enc.enc_name == model.encrypt_name(name_key, b"f%d" % size, enc.flags)


def test_names_round_trip_non_utf8_and_long(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    names = [b"caf\xe9", b"\xff\xfe\x80", b"new\nline", b"eq=ual", b"\x7fdel", b"x" * 255,
             b"\xc3" * 254, b"a" * 16, b"b" * 17, overlong_name(locked)]
    for name in names:
        write(join(u, name), name)
    assert sorted(os.listdir(u)) == sorted(names)
    dir_key = model.file_key(KEY, encdata(locked).nonce)
    shown = os.listdir(locked)
    assert len(shown) == len(names)
    assert any(len(s) > 255 for s in shown)  # escaping pushed a 255-byte raw name past NAME_MAX
    for s in shown:
        plain = model.decrypt_name(dir_key, unescape_name(s))
        assert plain in names
        assert read_ciphertext(join(locked, s))  # long shown names open too
        assert encdata(join(locked, s)).enc_name == unescape_name(s)
    assert errno_of(os.open, join(u, b"y" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG


def test_locked_open_needs_ciphertext_flag(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    write(join(u, b"secret"), b"plaintext")
    lpath = twin(views, join(u, b"secret"))
    assert errno_of(os.open, lpath, os.O_RDONLY) == errno.ENOKEY == 126
    assert errno_of(os.open, lpath, os.O_WRONLY) == errno.ENOKEY
    fd = os.open(lpath, os.O_RDONLY | O_CIPHERTEXT | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, 2 * UNIT)
        assert os.preadv(fd, [buf], 0) == UNIT
        assert buf[:UNIT] != b"plaintext".ljust(UNIT, b"\0")
        assert bytes(buf[:UNIT]) == read_ciphertext(lpath)
    finally:
        os.close(fd)


def test_locked_sizes_round_up(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    for size in SIZES:
        write(join(u, b"s%d" % size), bytes(size))
        assert os.stat(twin(views, join(u, b"s%d" % size))).st_size == padded_size(size)


def test_unlocked_view_reads_ciphertext_with_flag(views: Views, area: tuple[bytes, bytes]
                                                  ) -> None:
    u, _ = area
    write(join(u, b"f"), b"x" * 5000)
    assert read_ciphertext(join(u, b"f")) == read_ciphertext(twin(views, join(u, b"f")))
    assert errno_of(os.open, join(u, b"f"), os.O_WRONLY | O_CIPHERTEXT) == errno.EPERM


def test_virtual_encdata_on_every_encrypted_kind(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    write(join(u, b"f"), b"abc")
    os.mkdir(join(u, b"d"))
    os.symlink(b"target/path", join(u, b"l"))
    for name in (b"f", b"d", b"l"):
        lpath = twin(views, join(u, name))
        # As on Lustre's ldiskfs patch: answered by name, never listed, in either view.
        assert ENCDATA_XATTR not in xattr.list(lpath, nofollow=True)
        assert ENCDATA_XATTR not in xattr.list(join(u, name), nofollow=True)
        enc = encdata(lpath)
        assert enc.policy == encdata(locked).policy
        assert encdata(join(u, name)) == enc
        # Without the key every encrypted inode's size is rounded up to the unit.
        assert os.lstat(lpath).st_size == UNIT
    assert encdata(twin(views, join(u, b"f"))).size == 3
    assert encdata(twin(views, join(u, b"d"))).size == 0
    assert os.lstat(join(u, b"f")).st_size == 3
    assert os.lstat(join(u, b"l")).st_size == len(b"target/path")
    plain = join(views.locked, b"plain", b"virtual-encdata")
    write(plain, b"")
    assert errno_of(xattr.get, plain, ENCDATA_XATTR) == errno.ENODATA
    assert ENCDATA_XATTR not in xattr.list(plain)


def test_list_encdata_option_lists_it(tmp_path: Path) -> None:
    """The kinder behaviour some stand-ins have, kept as a mount option so fscsync is
    tested against both: listxattr shows encdata on encrypted inodes only."""
    backing = encrypted_backing(tmp_path / "backing")
    (tmp_path / "u").mkdir()
    (tmp_path / "l").mkdir()
    with mounted(backing, tmp_path / "u", KEY) as unlocked:
        write(join(unlocked, b"enc", b"f"), b"abc")
        write(join(unlocked, b"plain", b"p"), b"abc")
    with mounted(backing, tmp_path / "l", list_encdata=True) as locked:
        (name,) = os.listdir(join(locked, b"enc"))
        assert ENCDATA_XATTR in xattr.list(join(locked, b"enc", name), nofollow=True)
        assert ENCDATA_XATTR in xattr.list(join(locked, b"enc"), nofollow=True)
        assert ENCDATA_XATTR not in xattr.list(join(locked, b"plain", b"p"), nofollow=True)


def test_symlinks_locked_and_unlocked(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    for target in (b"short", b"../" * 100 + b"deep", b"\xff/odd/\xfe"):
        link = join(u, b"l%d" % len(target))
        os.symlink(target, link)
        assert os.readlink(link) == target
        assert os.lstat(link).st_size == len(target)
        lpath = twin(views, link)
        enc = encdata(lpath)
        cipher = unescape_name(os.readlink(lpath))
        # encdata's size is i_size: ext4's 2-byte length prefix + the ciphertext.
        assert enc.size == 2 + len(cipher)
        assert len(cipher) == model.name_ciphertext_len(len(target), enc.flags, 4093)
        assert model.decrypt_name(model.file_key(KEY, enc.nonce), cipher) == target
        assert os.lstat(lpath).st_size == UNIT


def _install(path: bytes, enc: EncData, flags: int = 0) -> None:
    xattr.set(path, ENCDATA_XATTR, format_encdata(enc), flags=flags, nofollow=True)


def test_setxattr_encdata_rules(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    write(join(u, b"enc"), b"data")
    encrypted = twin(views, join(u, b"enc"))
    good = encdata(encrypted)
    assert errno_of(_install, encrypted, good) == errno.EINVAL  # already encrypted
    target = join(locked, b"incoming")
    write(target, os.urandom(5000))
    assert errno_of(_install, target, good, xattr.XATTR_REPLACE) == errno.EINVAL
    for bad in (b"", b"{ encoding: base64url }", format_encdata(good)[:-2],
                format_encdata(good).replace(b"base64url", b"base32")):
        assert errno_of(xattr.set, target, ENCDATA_XATTR, bad) == errno.EINVAL
    assert encdata_of(target) is None
    v1 = EncData(100, bytes([1, 1, 4, 0]) + good.enc_ctx[8:16] + good.nonce, good.enc_name)
    assert errno_of(_install, target, v1) == errno.EINVAL  # the patch installs v2 only
    os.mkfifo(join(locked, b"fifo"))
    assert errno_of(_install, join(locked, b"fifo"), good) == errno.EINVAL
    os.symlink(b"not=escaped", join(locked, b"badlink"))
    assert errno_of(_install, join(locked, b"badlink"), good) == errno.EINVAL
    os.symlink(b"=}escaped\xff", join(locked, b"goodlink"))
    _install(join(locked, b"goodlink"), EncData(11, good.enc_ctx, good.enc_name))
    assert os.readlink(join(locked, b"goodlink")) == b"=}escaped\xff"
    _install(target, EncData(100, good.enc_ctx, good.enc_name), xattr.XATTR_CREATE)
    assert os.stat(target).st_size == UNIT  # i_size := 100, shown rounded up
    assert encdata(target) == EncData(100, good.enc_ctx, good.enc_name)
    assert errno_of(xattr.remove, target, ENCDATA_XATTR) == errno.EPERM
    assert errno_of(xattr.remove, join(locked, b"fifo"), ENCDATA_XATTR) == errno.ENODATA


def test_encdata_needs_root(views: Views) -> None:
    """The kernel itself asks for CAP_SYS_ADMIN before a security.* xattr reaches us."""
    path = join(views.locked, b"plain", b"not-for-users")
    write(path, b"")
    fd = os.open(path, os.O_RDONLY)
    text = format_encdata(EncData(0, bytes([2]) + bytes(39), b""))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.setxattr(fd, ENCDATA_XATTR, text)
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    os.close(fd)
    assert os.waitpid(pid, 0)[1] == 0
    assert encdata_of(path) is None


def test_locked_writes_refused(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    write(join(u, b"f"), b"x" * 100)
    lpath = twin(views, join(u, b"f"))
    assert errno_of(os.open, lpath, os.O_RDWR | O_CIPHERTEXT) == errno.EPERM
    assert errno_of(os.truncate, lpath, 0) == errno.EPERM
    # a handle opened while the inode was plain cannot write once encdata is set
    incoming = join(locked, b"incoming")
    fd = os.open(incoming, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, read_ciphertext(lpath))
        xattr.set(fd, ENCDATA_XATTR, encdata_of(lpath))
        assert errno_of(os.write, fd, b"more") == errno.EPERM
    finally:
        os.close(fd)
    assert errno_of(os.truncate, incoming, 5) == errno.EPERM


def test_unchanged_units_keep_ciphertext(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    path = join(u, b"big")
    data = bytearray(os.urandom(4 * UNIT + 10))
    write(path, data)
    before = read_ciphertext(twin(views, path))
    with open(path, "r+b") as f:
        f.seek(UNIT + 5)
        f.write(b"!!")
    data[UNIT + 5:UNIT + 7] = b"!!"
    after = read_ciphertext(twin(views, path))
    units = range(0, 5 * UNIT, UNIT)
    assert [i for i in units if before[i:i + UNIT] != after[i:i + UNIT]] == [UNIT]
    assert read(path) == data
    with open(path, "ab") as f:  # append re-encrypts only the partial last unit
        f.write(b"tail")
    appended = read_ciphertext(twin(views, path))
    assert appended[:4 * UNIT] == after[:4 * UNIT] and appended[4 * UNIT:] != after[4 * UNIT:]
    assert read(path) == data + b"tail"


def test_new_file_gets_new_nonce(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    data = os.urandom(2 * UNIT)
    write(join(u, b"a"), data)
    old = encdata(twin(views, join(u, b"a")))
    old_cipher = read_ciphertext(twin(views, join(u, b"a")))
    write(join(u, b"a.tmp"), data)  # rsync-style rewrite: new file, rename over
    os.rename(join(u, b"a.tmp"), join(u, b"a"))
    new = encdata(twin(views, join(u, b"a")))
    new_cipher = read_ciphertext(twin(views, join(u, b"a")))
    assert new.nonce != old.nonce and new.policy == old.policy
    assert new.enc_name == old.enc_name  # rename updated the remembered raw name
    assert all(old_cipher[i:i + UNIT] != new_cipher[i:i + UNIT] for i in (0, UNIT))


def test_truncate_unlocked(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    path = join(u, b"t")
    data = os.urandom(3 * UNIT)
    write(path, data)
    os.truncate(path, UNIT + 10)
    assert read(path) == data[:UNIT + 10]
    assert len(read_ciphertext(twin(views, path))) == 2 * UNIT
    os.truncate(path, 5 * UNIT)  # extending leaves a hole that reads as zeros
    assert read(path) == data[:UNIT + 10] + bytes(4 * UNIT - 10)
    with open(path, "r+b") as f:
        f.truncate(3)
    assert read(path) == data[:3]
    write(path, b"new")  # O_TRUNC
    assert read(path) == b"new"


def test_namespace_ops_in_both_views(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    for top in (u, locked, join(views.locked, b"plain")):
        d = join(top, b"ops")
        os.mkdir(d, 0o750)
        write(join(d, b"f"), b"data", 0o600)
        os.link(join(d, b"f"), join(d, b"hard"))
        assert os.stat(join(d, b"f")).st_nlink == 2
        os.symlink(b"f", join(d, b"sym"))
        os.mkfifo(join(d, b"fifo"))
        os.rename(join(d, b"hard"), join(d, b"moved"))
        os.chmod(join(d, b"f"), 0o640)
        os.chown(join(d, b"f"), 1234, 5678)
        os.utime(join(d, b"f"), ns=(1_000_000_123, 2_000_000_456))
        st = os.stat(join(d, b"moved"))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
        os.utime(join(d, b"f"), ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
        xattr.set(join(d, b"f"), b"user.note", b"\xffvalue")
        assert xattr.get(join(d, b"moved"), b"user.note") == b"\xffvalue"
        assert b"user.note" in xattr.list(join(d, b"f"))
        xattr.remove(join(d, b"f"), b"user.note")
        assert sorted(os.listdir(d)) == [b"f", b"fifo", b"moved", b"sym"]
        os.unlink(join(d, b"moved"))
        assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
        for name in os.listdir(d):
            os.unlink(join(d, name))
        os.rmdir(d)
    # the fifo made with the key has an encrypted name but no encdata
    os.mkfifo(join(u, b"fifo2"))
    assert encdata_of(twin(views, join(u, b"fifo2"))) is None
    assert os.listdir(locked) == [os.path.basename(twin(views, join(u, b"fifo2")))]


def overlong_name(locked_dir: bytes) -> bytes:
    """A 250-byte plaintext name whose escaped ciphertext in `locked_dir` exceeds NAME_MAX."""
    enc = encdata(locked_dir)
    key = model.file_key(KEY, enc.nonce)
    return next(name for name in (b"L" * 247 + b"%03d" % i for i in range(1000))
                if len(escape_name(model.encrypt_name(key, name, enc.flags))) > 255)


def test_times_omit_and_rename_flags(views: Views, area: tuple[bytes, bytes]) -> None:
    """UTIME_OMIT/UTIME_NOW and renameat2 flags survive mfusepy (fusefs._Fuse)."""
    u, _ = area
    path = join(u, b"f")
    write(path, b"")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    subprocess.run(["touch", "-m", "-d", "@5", os.fsdecode(path)], check=True)
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 5_000_000_000)
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, noreplace, exchange = -100, 1, 2

    def renameat2(old: bytes, new: bytes, flags: int) -> int:
        if libc.renameat2(at_fdcwd, old, at_fdcwd, new, flags) == 0:
            return 0
        return ctypes.get_errno()

    write(join(u, b"g"), b"g")
    assert renameat2(path, join(u, b"g"), noreplace) == errno.EEXIST
    assert renameat2(path, join(u, b"g"), exchange) == errno.EINVAL
    assert renameat2(path, join(u, b"h"), noreplace) == 0
    assert sorted(os.listdir(u)) == [b"g", b"h"]


def test_ciphertext_create_is_plain_and_append_works(views: Views,
                                                     area: tuple[bytes, bytes]) -> None:
    u, locked = area
    fd = os.open(join(u, b"raw"), os.O_WRONLY | os.O_CREAT | O_CIPHERTEXT, 0o600)
    os.close(fd)
    assert encdata_of(join(u, b"raw")) is None  # a receiver's temp file, even with the key
    for path in (join(u, b"enc-append"), join(locked, b"plain-append")):
        write(path, b"a" * 5000)
        with open(path, "ab") as f:
            f.write(b"b")
        assert os.stat(path).st_size == 5001
    assert read(join(u, b"enc-append")) == b"a" * 5000 + b"b"
    assert read(join(locked, b"plain-append")) == b"a" * 5000 + b"b"


def test_internal_xattrs_hidden(views: Views, area: tuple[bytes, bytes]) -> None:
    u, locked = area
    write(join(u, overlong_name(locked)), b"")
    (long,) = os.listdir(locked)
    assert len(long) > 255
    assert not [n for n in xattr.list(join(locked, long)) if n.startswith(b"trusted.fscsync")]
    assert errno_of(xattr.set, join(locked, long), b"trusted.fscsync.name.x", b"") == errno.EPERM


def test_exdev_across_policies(views: Views, area: tuple[bytes, bytes]) -> None:
    u, _ = area
    write(join(u, b"f"), b"x")
    other = join(views.unlocked, b"enc4")
    assert errno_of(os.rename, join(u, b"f"), join(other, b"f")) == errno.EXDEV
    assert errno_of(os.link, join(u, b"f"), join(other, b"f")) == errno.EXDEV
    os.rename(join(u, b"f"), join(views.unlocked, b"plain", b"exdev-f"))  # into plain: allowed
    assert read(join(views.unlocked, b"plain", b"exdev-f")) == b"x"


def test_locked_install_then_rename_into_presented_name(views: Views,
                                                        area: tuple[bytes, bytes]) -> None:
    """What a key-less receiver does: plain temp file, ciphertext, encdata, rename."""
    u, locked = area
    dir_enc = encdata(locked)
    nonce = os.urandom(16)
    ctx = dir_enc.policy + nonce
    raw = model.encrypt_name(model.file_key(KEY, dir_enc.nonce), b"restored\xff", dir_enc.flags)
    data = os.urandom(UNIT + 1)
    tmp = join(locked, b".tmp.restored")
    write(tmp, model.encrypt_contents(model.file_key(KEY, nonce), data), 0o600)
    assert encdata_of(tmp) is None  # created plain in an encrypted dir
    _install(tmp, EncData(len(data), ctx, raw))
    os.rename(tmp, join(locked, escape_name(raw)))
    (shown,) = os.listdir(locked)
    assert unescape_name(shown) == encdata(join(locked, shown)).enc_name == raw
    assert os.listdir(u) == [b"restored\xff"]
    assert read(join(u, b"restored\xff")) == data


def test_unlocked_view_shows_undecryptable_names_as_stored(views: Views,
                                                           area: tuple[bytes, bytes]) -> None:
    u, locked = area
    write(join(locked, b".partial"), b"plain bytes")
    assert os.listdir(u) == [b".partial"]
    assert read(join(u, b".partial")) == b"plain bytes"
    os.unlink(join(u, b".partial"))


def test_wrong_key_is_locked(views: Views, area: tuple[bytes, bytes], tmp_path: Path) -> None:
    u, locked = area
    write(join(u, b"f"), b"x")
    (tmp_path / "m").mkdir()
    with mounted(views.backing, tmp_path / "m", OTHER_KEY) as other:
        rel = os.path.relpath(twin(views, join(u, b"f")), views.locked)
        assert errno_of(os.open, join(other, rel), os.O_RDONLY) == errno.ENOKEY
        assert sorted(os.listdir(join(other, os.path.dirname(rel)))) == sorted(os.listdir(locked))


def test_direct_open_flags_reach_the_kernel(views: Views, area: tuple[bytes, bytes],
                                            tmp_path: Path) -> None:
    """strace shows the full O_CIPHERTEXT (O_NOCTTY|O_NDELAY|O_DSYNC) plus O_DIRECT."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    u, _ = area
    write(join(u, b"f"), b"y" * 3000)
    link = tmp_path / "ciphertext-link"
    link.symlink_to(os.fsdecode(twin(views, join(u, b"f"))))
    program = ("import mmap, os, sys\n"
               f"fd = os.open(sys.argv[1], os.O_RDONLY | {O_CIPHERTEXT} | os.O_DIRECT)\n"
               "buf = mmap.mmap(-1, 8192)\n"
               "print(os.preadv(fd, [buf], 0))\n")
    trace = tmp_path / "trace"
    result = subprocess.run(["strace", "-f", "-e", "trace=openat", "-o", str(trace),
                             sys.executable, "-c", program, str(link)],
                            capture_output=True, check=False)
    if result.returncode != 0 and b"ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.decode().strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"4096"
    (line,) = [ln for ln in trace.read_text().splitlines() if str(link) in ln]
    flags = set(re.search(r'", ([A-Z_|]+)', line).group(1).split("|"))
    assert {"O_RDONLY", "O_NOCTTY", "O_NONBLOCK", "O_DSYNC", "O_DIRECT"} <= flags


def test_mount_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="did not mount"):
        start(tmp_path, tmp_path / "missing")


def test_cli_mount_umount_and_bad_key(views: Views, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(KEY)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = [sys.executable, "-m", "fscsync.testfs"]
    run = subprocess.run([*cli, "mount", "--key", str(key), os.fsdecode(views.backing),
                          str(mnt)], capture_output=True, check=False, timeout=30)
    assert run.returncode == 0, run.stderr
    try:
        assert os.path.ismount(mnt)
        assert sorted(os.listdir(mnt)) == ["enc", "enc4", "plain"]
    finally:
        run = subprocess.run([*cli, "umount", str(mnt)], capture_output=True, check=False)
    assert run.returncode == 0, run.stderr
    assert not os.path.ismount(mnt)
    key.write_bytes(KEY[:10])
    run = subprocess.run([*cli, "mount", "--key", str(key), os.fsdecode(views.backing),
                          str(mnt)], capture_output=True, check=False)
    assert run.returncode != 0 and b"64 bytes" in run.stderr


# --- end to end: copy a locked view the way fscsync's receiver will ------------------------------

def copy_locked(src: bytes, dst: bytes) -> None:
    """Copy one entry key-lessly: ciphertext in, encdata set last, rename into place.

    Files and links are built under a temporary name; a directory gets its
    mode, encdata and times only after its children exist.
    """
    st = os.lstat(src)
    enc = encdata_of(src)
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)
        for name in os.listdir(src):
            copy_locked(join(src, name), join(dst, name))
        target = dst
    else:
        target = join(os.path.dirname(dst), b".fscsync.tmp")
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(target)
        else:
            write(target, read_ciphertext(src) if enc else read(src), 0o600)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    if enc is not None:
        xattr.set(target, ENCDATA_XATTR, enc, nofollow=True)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    if target != dst:
        os.rename(target, dst)


def build_tree(top: bytes, long_names: bool) -> None:
    os.makedirs(join(top, b"a", b"b\xff", b"c"), 0o755)
    os.chmod(join(top, b"a"), 0o710)
    for i, size in enumerate(SIZES):
        write(join(top, b"a", b"file%d" % i), os.urandom(size), 0o600 + i)
    write(join(top, b"a", b"b\xff", b"c", b"deep \xe9=\n"), b"deep")
    os.symlink(b"../file1", join(top, b"a", b"b\xff", b"up"))
    os.symlink(b"x/" * 200, join(top, b"a", b"long-link"))
    os.mkfifo(join(top, b"a", b"pipe"), 0o640)
    os.mkdir(join(top, b"empty"))
    if long_names:
        write(join(top, b"a", b"N" * 255), b"long name")
        os.mkdir(join(top, b"\xee" * 240))


@pytest.mark.parametrize("via", ["locked-testfs", "plain-backup"])
def test_end_to_end_copy_of_locked_view(views: Views, tmp_path: Path, via: str) -> None:
    """Plaintext -> unlocked A -> key-less copy of locked A -> B -> unlocked B: identical."""
    top = join(views.unlocked, b"enc", b"e2e-" + via.encode())
    os.mkdir(top)
    build_tree(top, long_names=via == "locked-testfs")
    locked_top = twin(views, top)
    dest = tmp_path / "B"
    dest.mkdir()
    (tmp_path / "lb").mkdir()
    (tmp_path / "ub").mkdir()
    if via == "locked-testfs":
        with mounted(dest, tmp_path / "lb") as locked_b:
            copy_locked(locked_top, join(locked_b, b"top"))
    else:  # a stock filesystem keeps security.encdata as an ordinary xattr
        copy_locked(locked_top, join(os.fsencode(dest), b"top"))
    assert encdata(join(os.fsencode(dest), b"top")).enc_name == encdata(locked_top).enc_name
    with mounted(dest, tmp_path / "ub", KEY) as unlocked_b:
        copied = snapshot(join(unlocked_b, b"top"))
    original = snapshot(top)
    assert copied == original
    assert len(original) == 14 + 2 * (via == "locked-testfs")

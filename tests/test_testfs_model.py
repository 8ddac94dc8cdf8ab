"""The fscrypt model, the name escape, the backing layout and unit-wise contents I/O.

Vectors and length rules come from /work/shared/FSCRYPT-FACTS.md (measured on
Linux 6.18); test_testfs_kernel.py checks the same model against a live ext4.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fscsync.fs.cipher import UNIT, EncData, escape_name, unescape_name
from fscsync.testfs import backing, model
from fscsync.testfs.contents import read_plain, truncate_plain, write_plain
from fscsync.testfs.names import raw_name

MASTER = bytes(range(64))
NONCE = bytes.fromhex("bf5bfb4f559184a56d5fb250225fb4f3")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.*/security.* xattrs need root")


def test_key_vectors() -> None:
    assert model.key_identifier(MASTER).hex() == "8699c2c53707405da5aba5ae4d8583c0"
    assert model.file_key(MASTER, NONCE)[:8].hex() == "3b0031a693580c50"
    assert len(model.file_key(MASTER, NONCE)) == 64


@pytest.mark.parametrize(("flags", "lengths"), [
    (0x03, {1: 32, 32: 32, 33: 64, 200: 224}),
    (0x02, {1: 16, 16: 16, 17: 32}),
    (0x00, {1: 16, 5: 16, 16: 16, 17: 20, 20: 20, 253: 255, 255: 255}),
    (0x01, {1: 16, 17: 24, 250: 255}),
])
def test_name_length_rule(flags: int, lengths: dict[int, int]) -> None:
    for n, expected in lengths.items():
        assert model.name_ciphertext_len(n, flags) == expected
        assert len(model.encrypt_name(bytes(32), b"a" * n, flags)) == expected


def test_cts_one_block_is_plain_cbc_and_two_blocks_swap() -> None:
    key = os.urandom(32)
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    plain = os.urandom(32)
    cbc = enc.update(plain) + enc.finalize()
    assert model.cts_encrypt(key, plain[:16]) == cbc[:16]
    assert model.cts_encrypt(key, plain) == cbc[16:] + cbc[:16]


@given(st.binary(min_size=16, max_size=300))
def test_cts_round_trip(plain: bytes) -> None:
    key = bytes(range(32))
    cipher = model.cts_encrypt(key, plain)
    assert len(cipher) == len(plain)
    assert model.cts_decrypt(key, cipher) == plain


@given(st.binary(min_size=1, max_size=255).filter(lambda n: b"\0" not in n),
       st.sampled_from([0, 1, 2, 3]))
def test_name_round_trip(name: bytes, flags: int) -> None:
    key = model.file_key(MASTER, NONCE)
    assert model.decrypt_name(key, model.encrypt_name(key, name, flags)) == name


def test_name_limits() -> None:
    with pytest.raises(ValueError):
        model.encrypt_name(bytes(32), b"x" * 256, 3)
    with pytest.raises(ValueError):
        model.cts_encrypt(bytes(32), b"short")


def test_xts_tweak_is_le64_unit_index() -> None:
    key = os.urandom(64)
    plain = os.urandom(UNIT)
    enc = Cipher(algorithms.AES(key), modes.XTS(struct.pack("<Q", 5) + bytes(8))).encryptor()
    assert model.encrypt_unit(key, 5, plain) == enc.update(plain) + enc.finalize()
    assert model.decrypt_unit(key, 5, model.encrypt_unit(key, 5, plain)) == plain


def test_contents_padding_and_unit_independence() -> None:
    key = model.file_key(MASTER, NONCE)
    plain = os.urandom(2 * UNIT + 10)
    cipher = model.encrypt_contents(key, plain)
    assert len(cipher) == 3 * UNIT
    assert cipher[2 * UNIT:] == model.encrypt_unit(key, 2, plain[2 * UNIT:] + bytes(UNIT - 10))
    assert model.decrypt_contents(key, cipher, len(plain)) == plain
    changed = plain[:UNIT] + b"X" + plain[UNIT + 1:]
    other = model.encrypt_contents(key, changed)
    assert other[:UNIT] == cipher[:UNIT] and other[2 * UNIT:] == cipher[2 * UNIT:]
    assert other[UNIT:2 * UNIT] != cipher[UNIT:2 * UNIT]
    fresh = model.encrypt_contents(model.file_key(MASTER, os.urandom(16)), plain)
    assert all(fresh[i:i + UNIT] != cipher[i:i + UNIT] for i in range(0, len(cipher), UNIT))
    assert model.encrypt_contents(key, b"") == b""


def test_context_layout() -> None:
    ident = model.key_identifier(MASTER)
    ctx = model.Context(ident, NONCE, flags=0x02)
    raw = ctx.to_bytes()
    assert raw == bytes([2, 1, 4, 2, 0, 0, 0, 0]) + ident + NONCE
    assert model.Context.from_bytes(raw) == ctx
    with pytest.raises(ValueError):
        model.Context.from_bytes(b"\x01" + raw[1:])
    ctx.check_supported()
    for bad in (model.Context(ident, NONCE, flags=0x04), model.Context(ident, NONCE, 3, 9),
                model.Context(ident, NONCE, log2_data_unit_size=10)):
        with pytest.raises(model.UnsupportedPolicy):
            bad.check_supported()


def test_master_key_unlocks_only_its_supported_contexts() -> None:
    key = model.MasterKey(MASTER)
    assert key.identifier == model.key_identifier(MASTER)
    assert key.key_for(model.Context(key.identifier, NONCE).to_bytes()) == model.file_key(
        MASTER, NONCE)
    assert key.key_for(model.Context(bytes(16), NONCE).to_bytes()) is None
    assert key.key_for(model.Context(key.identifier, NONCE, flags=0x08).to_bytes()) is None
    with pytest.raises(ValueError):
        model.MasterKey(MASTER[:32])


def test_symlink_forms() -> None:
    key = model.file_key(MASTER, NONCE)
    cipher = model.encrypt_symlink(key, b"../target", 0x03)
    assert len(cipher) == 32
    assert model.symlink_disk_form(cipher) == b"\x20\x00" + cipher + b"\0"
    assert model.decrypt_name(key, cipher) == b"../target"
    long_target = b"d/" * 1000
    assert model.decrypt_name(key, model.encrypt_symlink(key, long_target, 0)) == long_target


def test_escape_exact_form() -> None:
    assert escape_name(b"a\0b\nc\rd/e\x7ff=g\xff") == b"a=@b=Jc=Md=oe=\xbff=}g\xff"
    assert unescape_name(b"a=@b=Jc=Md=oe=\xbff=}g\xff") == b"a\0b\nc\rd/e\x7ff=g\xff"


@given(st.binary(max_size=300))
def test_escape_round_trip(raw: bytes) -> None:
    shown = escape_name(raw)
    assert b"\0" not in shown and b"/" not in shown
    assert unescape_name(shown) == raw


@pytest.mark.parametrize("shown", [b"a=b", b"trailing=", b"new\nline", b"del\x7f", b"=A"])
def test_unescape_rejects_what_escape_never_makes(shown: bytes) -> None:
    with pytest.raises(ValueError):
        unescape_name(shown)
    assert raw_name(shown) is None


def test_raw_name_needs_a_ciphertext_length() -> None:
    assert raw_name(b"short") is None
    assert raw_name(escape_name(b"/" * 16)) == b"/" * 16
    assert raw_name(escape_name(b"x" * 256)) is None


@root_only
def test_long_names_survive_the_backing(tmp_path: Path) -> None:
    shown = escape_name(b"=" * 200)
    assert len(shown) == 400
    name = backing.fs_name(shown)
    assert len(name) <= backing.NAME_MAX and backing.fs_name(b"short") == b"short"
    path = os.path.join(os.fsencode(tmp_path), name)
    os.symlink(b"anywhere", path)
    backing.bind_name(path, shown)
    assert backing.shown_name(os.fsencode(tmp_path), name) == shown
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"=~" + b"A" * 43))
    assert backing.shown_name(os.fsencode(tmp_path), b"=~" + b"A" * 43) == b"=~" + b"A" * 43


@root_only
def test_make_encrypted_dir(tmp_path: Path) -> None:
    d = os.fsencode(tmp_path / "d")
    os.mkdir(d)
    enc = backing.make_encrypted_dir(d, MASTER, padding=16)
    assert backing.load_encdata(d) == enc
    assert enc.size == 0 and enc.enc_name == b"" and enc.flags == 0x02
    assert enc.master_key_id == model.key_identifier(MASTER)
    child = EncData(0, backing.child_context(enc))
    assert child.policy == enc.policy and child.nonce != enc.nonce
    with pytest.raises(ValueError, match="already encrypted"):
        backing.make_encrypted_dir(d, MASTER)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(ValueError, match="not empty"):
        backing.make_encrypted_dir(os.fsencode(full), MASTER)
    with pytest.raises(ValueError, match="padding"):
        backing.make_encrypted_dir(os.fsencode(tmp_path), MASTER, padding=12)


_ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 5 * UNIT), st.binary(min_size=1, max_size=2 * UNIT)),
    st.tuples(st.just("t"), st.integers(0, 5 * UNIT), st.just(b"")),
), max_size=8)


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_contents_io_matches_plain_model(tmp_path_factory: pytest.TempPathFactory,
                                         ops: list[tuple[str, int, bytes]]) -> None:
    key = model.file_key(MASTER, NONCE)
    path = tmp_path_factory.mktemp("contents") / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        size, expect = 0, bytearray()
        for op, offset, data in ops:
            if op == "w":
                size = write_plain(fd, key, size, data, offset)
                expect.extend(bytes(max(0, offset - len(expect))))
                expect[offset:offset + len(data)] = data
            else:
                truncate_plain(fd, key, size, offset)
                size = offset
                del expect[offset:]
                expect.extend(bytes(offset - len(expect)))
            assert size == len(expect)
            assert os.fstat(fd).st_size == -(-size // UNIT) * UNIT
            assert read_plain(fd, key, size, size + 10, 0) == expect
            assert read_plain(fd, key, size, 100, max(0, size - 50)) == expect[max(0, size - 50):]
        if size % UNIT:
            # bytes past i_size inside the last unit stay zero (unless it is a hole)
            last = size // UNIT
            cipher = os.pread(fd, UNIT, last * UNIT)
            if cipher != bytes(UNIT):
                tail = model.decrypt_unit(key, last, cipher)
                assert tail[size % UNIT:] == bytes(UNIT - size % UNIT)
    finally:
        os.close(fd)


def test_contents_write_keeps_untouched_units(tmp_path: Path) -> None:
    key = model.file_key(MASTER, NONCE)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        size = write_plain(fd, key, 0, os.urandom(3 * UNIT), 0)
        before = os.pread(fd, 3 * UNIT, 0)
        write_plain(fd, key, size, b"!", UNIT + 7)
        after = os.pread(fd, 3 * UNIT, 0)
        assert after[:UNIT] == before[:UNIT] and after[2 * UNIT:] == before[2 * UNIT:]
        assert after[UNIT:2 * UNIT] != before[UNIT:2 * UNIT]
        # a hole (all-zero ciphertext unit) reads as zeros
        size = write_plain(fd, key, size, b"end", 6 * UNIT)
        assert os.pread(fd, UNIT, 4 * UNIT) == bytes(UNIT)
        assert read_plain(fd, key, size, UNIT, 4 * UNIT) == bytes(UNIT)
    finally:
        os.close(fd)

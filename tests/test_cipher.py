"""The security.encdata text: strict formatter and parser, and the O_CIPHERTEXT flag.

The format (DESIGN.md section 1) is exactly
`{ encoding: base64url, size: N, enc_ctx: <b64u>, enc_name: <b64u> }`:
one field order, single spaces, base64url without padding (canonical: the
unused low bits of the last character are zero), a decimal size without
leading zeros below 2**63, a 40-byte version-2 context (or a 28-byte version-1
context, which parses so that a plain backup can store it), a name of at most 255
bytes. Anything else must be rejected with EncdataError, never another
exception, because the text comes from filesystems and from the peer.
"""

from __future__ import annotations

import base64
import os
import platform
import re

import pytest
import xattr
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from fscsync.fs import cipher
from fscsync.fs.cipher import EncData, EncdataError, format_encdata, parse_encdata

B64U = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MAX_SIZE = (1 << 63) - 1

sizes = st.one_of(st.integers(0, MAX_SIZE), st.sampled_from([0, 1, 4095, 4096, MAX_SIZE]))
contexts = st.binary(min_size=39, max_size=39).map(lambda rest: b"\x02" + rest)
names = st.binary(max_size=255)
encdatas = st.builds(EncData, sizes, contexts, names)


def b64u(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def text_of(size: bytes | int, ctx: bytes, name: bytes, encoding: bytes = b"base64url") -> bytes:
    """Assemble a text from already-encoded fields (so tests can break any of them)."""
    size_b = str(size).encode() if isinstance(size, int) else size
    return b"{ encoding: %s, size: %s, enc_ctx: %s, enc_name: %s }" % (encoding, size_b,
                                                                       ctx, name)


def rejected(text: bytes | str) -> EncdataError:
    with pytest.raises(EncdataError) as info:
        parse_encdata(text)  # type: ignore[arg-type]
    assert str(info.value), "the error must say what is wrong"
    return info.value


# ---- explicit examples -------------------------------------------------------------

DESIGN_CTX = bytes([2, 1, 4, 2, 0, 0, 0, 0]) + bytes(range(16)) + bytes(range(16, 32))
DESIGN_NAME = bytes(range(0xF0, 0x100))
DESIGN_TEXT = (b"{ encoding: base64url, size: 3012, "
               b"enc_ctx: AgEEAgAAAAAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw, "
               b"enc_name: 8PHy8_T19vf4-fr7_P3-_w }")


def test_design_example_parses_and_formats_exactly() -> None:
    enc = parse_encdata(DESIGN_TEXT)
    assert enc == EncData(3012, DESIGN_CTX, DESIGN_NAME)
    assert format_encdata(enc) == DESIGN_TEXT
    assert enc.flags == 2
    assert enc.master_key_id == bytes(range(16))
    assert enc.nonce == bytes(range(16, 32))
    assert enc.policy == DESIGN_CTX[:24]
    assert not enc.ino_based_iv


def test_empty_name_and_directory_size() -> None:
    text = format_encdata(EncData(0, DESIGN_CTX, b""))
    assert text == (b"{ encoding: base64url, size: 0, "
                    b"enc_ctx: AgEEAgAAAAAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw, "
                    b"enc_name:  }")
    assert parse_encdata(text) == EncData(0, DESIGN_CTX, b"")


@pytest.mark.parametrize("flags, ino", [(0x00, False), (0x03, False), (0x04, False),
                                        (0x08, True), (0x10, True), (0x0B, True)])
def test_ino_based_iv_flags(flags: int, ino: bool) -> None:
    ctx = bytearray(DESIGN_CTX)
    ctx[3] = flags
    enc = parse_encdata(format_encdata(EncData(1, bytes(ctx), b"n")))
    assert enc.flags == flags
    assert enc.ino_based_iv is ino


def test_size_bounds() -> None:
    ctx, name = b64u(DESIGN_CTX), b64u(DESIGN_NAME)
    assert parse_encdata(text_of(MAX_SIZE, ctx, name)).size == MAX_SIZE
    for bad in (1 << 63, (1 << 64) - 1, 1 << 64, 10**19, 10**20, 10**30):
        rejected(text_of(bad, ctx, name))


@pytest.mark.parametrize("text", [
    b"",
    b"{}",
    b"{ }",
    DESIGN_TEXT[:-1],
    DESIGN_TEXT[1:],
    DESIGN_TEXT + b" ",
    b" " + DESIGN_TEXT,
    DESIGN_TEXT + b"\n",
    DESIGN_TEXT.replace(b"base64url", b"base64"),
    DESIGN_TEXT.replace(b"base64url", b"hex"),
    DESIGN_TEXT.replace(b"base64url", b"BASE64URL"),
    DESIGN_TEXT.replace(b"size", b"Size"),
    DESIGN_TEXT.replace(b"size: 3012", b"size: 0x10"),
    DESIGN_TEXT.replace(b"size: 3012", b"size: +3012"),
    DESIGN_TEXT.replace(b"size: 3012", b"size: 3012.0"),
    DESIGN_TEXT.replace(b"size: 3012", b"size: 3e3"),
    DESIGN_TEXT.replace(b"size: 3012", b"size: "),
    DESIGN_TEXT.replace(b"size: 3012", b"size: \xd9\xa3"),  # Arabic-Indic digit 3
    DESIGN_TEXT.replace(b", enc_name: 8PHy8_T19vf4-fr7_P3-_w", b""),
    DESIGN_TEXT.replace(b"enc_name", b"enc_name: x, enc_name"),
    DESIGN_TEXT.replace(b"-", b"+").replace(b"_", b"/"),  # standard, not url-safe alphabet
    DESIGN_TEXT.replace(b", ", b","),
    DESIGN_TEXT.replace(b": ", b":"),
    DESIGN_TEXT.replace(b" ", b"\t"),
    DESIGN_TEXT.replace(b"{ ", b"{"),
    DESIGN_TEXT.replace(b" }", b"}"),
    DESIGN_TEXT.replace(b"{", b"(").replace(b"}", b")"),
    b"\xff" * 50,
    b"{ encoding: base64url, size: 1, enc_ctx: " + b"A" * 2000 + b", enc_name:  }",
])
def test_malformed_examples(text: bytes) -> None:
    rejected(text)


def test_not_bytes_is_rejected() -> None:
    rejected(DESIGN_TEXT.decode())
    rejected(None)  # type: ignore[arg-type]


def test_o_ciphertext_flag() -> None:
    assert cipher.O_CIPHERTEXT == os.O_NOCTTY | os.O_NDELAY | os.O_DSYNC
    assert os.O_NDELAY == os.O_NONBLOCK
    if platform.machine() == "x86_64":
        assert cipher.O_CIPHERTEXT == 0x1900


def test_padded_size() -> None:
    assert [cipher.padded_size(n) for n in (0, 1, 4095, 4096, 4097, 8192)] == [
        0, 4096, 4096, 4096, 8192, 8192]


def test_get_encdata_asks_by_name(tmp_path) -> None:
    """get_encdata asks by name (the real interface never lists encdata): None for a
    plain entry, the text for a stored one, a symlink not followed unless asked."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert cipher.get_encdata(os.fsencode(plain)) is None
    if os.geteuid() != 0:
        pytest.skip("writing security.* needs root")
    enc = tmp_path / "enc"
    enc.write_bytes(bytes(4096))
    xattr.set(os.fsencode(enc), b"security.encdata", DESIGN_TEXT)
    assert cipher.get_encdata(os.fsencode(enc)) == DESIGN_TEXT
    link = tmp_path / "link"
    os.symlink("enc", link)
    assert cipher.get_encdata(os.fsencode(link)) is None
    assert cipher.get_encdata(os.fsencode(link), follow=True) == DESIGN_TEXT
    fd = os.open(enc, os.O_RDONLY)
    try:
        assert cipher.get_encdata(fd) == DESIGN_TEXT
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode, size, in_enc_dir, asked", [
    (0o100644, 4097, False, False), (0o100644, 8192, False, True), (0o100644, 0, False, True),
    (0o100644, 4097, True, True), (0o040755, 17, False, True), (0o120777, 9, False, True),
    (0o010644, 0, False, False), (0o010644, 0, True, True), (0o020644, 0, False, False)])
def test_may_be_encrypted(mode: int, size: int, in_enc_dir: bool, asked: bool) -> None:
    """Outside encrypted directories only what could be a locked or stored encrypted
    entry is asked: regular files of whole units, directories, symlinks."""
    assert cipher.may_be_encrypted(mode, size, in_enc_dir) is asked


def test_finder_learns_stored_and_virtual_per_device(tmp_path) -> None:
    """A listed encdata is stored (a plain backup: buffered reads); one found by name
    only is virtual (the encdata interface: O_CIPHERTEXT | O_DIRECT)."""
    if os.geteuid() != 0:
        pytest.skip("writing security.* needs root")
    enc = tmp_path / "enc"
    enc.write_bytes(bytes(4096))
    xattr.set(os.fsencode(enc), b"security.encdata", DESIGN_TEXT)
    dev = os.lstat(enc).st_dev
    finder = cipher.EncdataFinder()
    assert finder.ask(os.fsencode(enc)) == (DESIGN_TEXT, cipher.ENCDATA_XATTR)
    assert finder.learn(os.fsencode(enc), dev, cipher.ENCDATA_XATTR) == cipher.STORED
    assert finder.layout(os.fsencode(enc), True) == cipher.STORED
    assert finder.layout(os.fsencode(enc), False) == cipher.PLAIN
    other = cipher.EncdataFinder()
    assert other.learn(os.fsencode(enc), dev + 1, cipher.ENCDATA_XATTR,
                       listed=False) == cipher.VIRTUAL
    assert other.layout(os.fsencode(enc), True) == cipher.VIRTUAL
    assert other.learn(os.fsencode(enc), dev, cipher.ENCDATA_XATTR) == cipher.STORED
    assert other.layout(os.fsencode(enc), True) == cipher.STORED  # by its device now
    alt = cipher.EncdataFinder(b"user.fscsync.encdata")
    assert alt.names == (cipher.ENCDATA_XATTR, b"user.fscsync.encdata")
    assert alt.layout(os.fsencode(enc), True, alt=True) == cipher.STORED


# ---- properties ----------------------------------------------------------------------


@given(encdatas)
@example(EncData(0, DESIGN_CTX, b""))
@example(EncData(MAX_SIZE, DESIGN_CTX, b"\xff" * 255))
def test_round_trip(enc: EncData) -> None:
    text = format_encdata(enc)
    assert text.isascii()
    assert re.fullmatch(rb"\{ encoding: base64url, size: (0|[1-9][0-9]*), enc_ctx: [A-Za-z0-9_-]+, "
                        rb"enc_name: [A-Za-z0-9_-]* \}", text)
    assert b"=" not in text
    assert parse_encdata(text) == enc
    assert format_encdata(parse_encdata(text)) == text


@given(encdatas, st.permutations(range(4)))
def test_wrong_field_order(enc: EncData, order: list[int]) -> None:
    assume(order != [0, 1, 2, 3])
    fields = [b"encoding: base64url", b"size: %d" % enc.size,
              b"enc_ctx: " + b64u(enc.enc_ctx), b"enc_name: " + b64u(enc.enc_name)]
    rejected(b"{ " + b", ".join(fields[i] for i in order) + b" }")


@given(encdatas, st.data())
def test_extra_space_anywhere(enc: EncData, data: st.DataObject) -> None:
    text = format_encdata(enc)
    i = data.draw(st.integers(0, len(text)))
    rejected(text[:i] + b" " + text[i:])


@given(encdatas, st.data())
def test_missing_space_anywhere(enc: EncData, data: st.DataObject) -> None:
    text = format_encdata(enc)
    spaces = [i for i, c in enumerate(text) if c == 0x20]
    i = data.draw(st.sampled_from(spaces))
    rejected(text[:i] + text[i + 1:])


@given(encdatas, st.sampled_from([b"=", b"==", b"==="]), st.booleans())
def test_padding_is_rejected(enc: EncData, pad: bytes, on_ctx: bool) -> None:
    ctx, name = b64u(enc.enc_ctx), b64u(enc.enc_name)
    if on_ctx:
        ctx += pad
    else:
        name += pad
    rejected(text_of(enc.size, ctx, name))


@given(encdatas, st.data())
def test_structural_garbage_is_rejected(enc: EncData, data: st.DataObject) -> None:
    """Insert one byte that is neither base64url nor a digit nor NUL: never valid."""
    text = format_encdata(enc)
    i = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.integers(1, 255).filter(lambda b: b not in B64U))
    rejected(text[:i] + bytes([junk]) + text[i:])


def _non_canonical(encoded: bytes, unused_bits: int, data: st.DataObject) -> bytes:
    """Set some of the unused low bits of the last base64url character."""
    last = B64U.index(encoded[-1:])
    extra = data.draw(st.integers(1, (1 << unused_bits) - 1))
    return encoded[:-1] + B64U[last | extra : (last | extra) + 1]


@given(encdatas, st.data())
def test_non_canonical_ctx(enc: EncData, data: st.DataObject) -> None:
    # 40 bytes = 13 groups of 3 + 1 byte: 2 characters, the last with 4 unused bits
    ctx = _non_canonical(b64u(enc.enc_ctx), 4, data)
    rejected(text_of(enc.size, ctx, b64u(enc.enc_name)))


@given(sizes, contexts, names.filter(lambda n: len(n) % 3 != 0), st.data())
def test_non_canonical_name(size: int, ctx: bytes, name: bytes, data: st.DataObject) -> None:
    unused = 4 if len(name) % 3 == 1 else 2
    bad = _non_canonical(b64u(name), unused, data)
    rejected(text_of(size, b64u(ctx), bad))


@given(sizes, st.binary(max_size=120).filter(lambda c: len(c) not in (28, 40)), names)
def test_wrong_ctx_length(size: int, ctx: bytes, name: bytes) -> None:
    ctx = b"\x02" + ctx[1:] if ctx else ctx
    rejected(text_of(size, b64u(ctx), b64u(name)))


@given(sizes, st.integers(0, 255).filter(lambda v: v != 2), st.binary(min_size=39, max_size=39),
       names)
def test_wrong_ctx_version(size: int, version: int, rest: bytes, name: bytes) -> None:
    rejected(text_of(size, b64u(bytes([version]) + rest), b64u(name)))


@given(sizes, st.integers(0, 255).filter(lambda v: v != 1), st.binary(min_size=27, max_size=27),
       names)
def test_wrong_v1_ctx_version(size: int, version: int, rest: bytes, name: bytes) -> None:
    rejected(text_of(size, b64u(bytes([version]) + rest), b64u(name)))


def test_v1_context_parses_but_is_not_v2() -> None:
    """A v1 context (28 bytes: version, modes, flags, 8-byte key descriptor, nonce)
    parses, so a plain backup can keep it; only v2 can be installed key-less."""
    ctx = bytes([1, 1, 4, 0]) + bytes(range(8)) + bytes(range(100, 116))
    enc = parse_encdata(format_encdata(EncData(5, ctx, b"n")))
    assert not enc.is_v2 and enc.master_key_id == bytes(range(8))
    assert enc.nonce == bytes(range(100, 116)) and enc.policy == ctx[:12]
    assert not enc.ino_based_iv
    assert parse_encdata(DESIGN_TEXT).is_v2


@given(sizes, contexts, st.binary(min_size=256, max_size=600))
def test_name_too_long(size: int, ctx: bytes, name: bytes) -> None:
    rejected(text_of(size, b64u(ctx), b64u(name)))


@given(sizes, contexts, names, st.integers(1, 3))
def test_size_with_leading_zeros(size: int, ctx: bytes, name: bytes, zeros: int) -> None:
    rejected(text_of(b"0" * zeros + str(size).encode(), b64u(ctx), b64u(name)))


@given(st.integers(0, 1 << 70), contexts, names)
def test_negative_size(size: int, ctx: bytes, name: bytes) -> None:
    rejected(text_of(b"-%d" % size, b64u(ctx), b64u(name)))


@given(st.integers(1 << 63, 1 << 80), contexts, names)
def test_size_out_of_range(size: int, ctx: bytes, name: bytes) -> None:
    rejected(text_of(size, b64u(ctx), b64u(name)))


@settings(max_examples=300)
@given(st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda pre, post: pre + DESIGN_TEXT + post, st.binary(max_size=8),
              st.binary(max_size=8)),
    st.builds(lambda i, junk: DESIGN_TEXT[:i] + junk + DESIGN_TEXT[i:],
              st.integers(0, len(DESIGN_TEXT)), st.binary(min_size=1, max_size=20)),
    st.builds(lambda i, j: DESIGN_TEXT[:i] + DESIGN_TEXT[j:],
              st.integers(0, len(DESIGN_TEXT)), st.integers(0, len(DESIGN_TEXT))),
))
def test_garbage_never_crashes(text: bytes) -> None:
    """Arbitrary bytes: a valid EncData (then it is canonical) or EncdataError, nothing else."""
    try:
        enc = parse_encdata(text)
    except EncdataError:
        return
    assert format_encdata(enc) == text.rstrip(b"\x00")

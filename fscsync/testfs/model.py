"""A pure-Python model of fscrypt v2 as ext4 implements it (AES-256-XTS + AES-256-CTS).

The test filesystem encrypts with this model, and tests/test_testfs_kernel.py
checks it byte for byte against ciphertext the real kernel wrote, so the
stand-in filesystem produces the same bytes a real encrypted ext4 would.
Only the default v2 policy layout is modelled: no DIRECT_KEY, no IV_INO_LBLK_*.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fscsync.fs.cipher import (
    MAX_NAME,
    MODE_AES_256_CTS,
    MODE_AES_256_XTS,
    UNIT,
    pack_context,
    unpack_context,
)

MASTER_KEY_LEN = 64
KEY_ID_LEN = 16
PAD_MASK = 0x03
LOG2_UNIT = UNIT.bit_length() - 1
# The kernel caps an encrypted symlink target at blocksize - 3 bytes:
# a 2-byte length prefix and a trailing NUL share the block.
MAX_SYMLINK_CT = UNIT - 3
_HKDF_CONTEXT_KEY_IDENTIFIER = 1
_HKDF_CONTEXT_PER_FILE_KEY = 2
_BLOCK = 16


class UnsupportedPolicy(ValueError):
    """A context this model cannot decrypt (other modes, flags or data-unit size)."""


@dataclass(frozen=True, slots=True)
class Context:
    """The 40-byte v2 context stored with every encrypted inode."""

    master_key_id: bytes
    nonce: bytes
    flags: int = 0x03
    contents_mode: int = MODE_AES_256_XTS
    filenames_mode: int = MODE_AES_256_CTS
    log2_data_unit_size: int = 0

    def to_bytes(self) -> bytes:
        return pack_context(self.master_key_id, self.nonce, self.flags, self.contents_mode,
                            self.filenames_mode, self.log2_data_unit_size)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Context:
        contents, names, flags, log2, key_id, nonce = unpack_context(raw)
        return cls(key_id, nonce, flags, contents, names, log2)

    def check_supported(self) -> None:
        """Raise UnsupportedPolicy unless this model can en/decrypt under the context."""
        if (self.contents_mode, self.filenames_mode) != (MODE_AES_256_XTS, MODE_AES_256_CTS):
            raise UnsupportedPolicy(f"modes {self.contents_mode}/{self.filenames_mode}")
        if self.flags & ~PAD_MASK:
            raise UnsupportedPolicy(f"policy flags {self.flags:#x}")
        if self.log2_data_unit_size not in (0, LOG2_UNIT):
            raise UnsupportedPolicy(f"data unit 2**{self.log2_data_unit_size}")


def _hkdf(master_key: bytes, context: int, extra: bytes, length: int) -> bytes:
    info = b"fscrypt\0" + bytes([context]) + extra
    return HKDF(algorithm=hashes.SHA512(), length=length, salt=None, info=info).derive(master_key)


def key_identifier(master_key: bytes) -> bytes:
    """The 16-byte identifier a v2 policy names its master key by."""
    return _hkdf(master_key, _HKDF_CONTEXT_KEY_IDENTIFIER, b"", KEY_ID_LEN)


def file_key(master_key: bytes, nonce: bytes) -> bytes:
    """The 64-byte per-file key; directories and symlinks use its first 32 bytes."""
    return _hkdf(master_key, _HKDF_CONTEXT_PER_FILE_KEY, nonce, 64)


class MasterKey:
    """A master key plus its identifier: decides which inodes it unlocks."""

    def __init__(self, raw: bytes):
        if len(raw) != MASTER_KEY_LEN:
            raise ValueError(f"a master key has {MASTER_KEY_LEN} bytes, not {len(raw)}")
        self.raw = raw
        self.identifier = key_identifier(raw)
        # Asked on every FUSE request: remember the answer per context.
        self.key_for = lru_cache(maxsize=1 << 16)(self._key_for)

    def _key_for(self, ctx: bytes) -> bytes | None:
        """The 64-byte per-file key for an inode with context `ctx`; None if locked to us."""
        parsed = Context.from_bytes(ctx)
        if parsed.master_key_id != self.identifier:
            return None
        try:
            parsed.check_supported()
        except UnsupportedPolicy:
            return None
        return file_key(self.raw, parsed.nonce)


# --- contents: AES-256-XTS per data unit -------------------------------------------------------

def _xts(key: bytes, index: int) -> Cipher:
    return Cipher(algorithms.AES(key), modes.XTS(struct.pack("<Q8x", index)))


def encrypt_unit(key: bytes, index: int, plain: bytes) -> bytes:
    """Encrypt data unit `index`; a short last unit is zero-padded to UNIT first."""
    enc = _xts(key, index).encryptor()
    return enc.update(plain.ljust(UNIT, b"\0")) + enc.finalize()


def decrypt_unit(key: bytes, index: int, cipher: bytes) -> bytes:
    dec = _xts(key, index).decryptor()
    return dec.update(cipher) + dec.finalize()


def encrypt_contents(key: bytes, plain: bytes, first_unit: int = 0) -> bytes:
    """Ciphertext of `plain` starting at unit `first_unit`, padded to whole units."""
    return b"".join(
        encrypt_unit(key, first_unit + i, plain[off:off + UNIT])
        for i, off in enumerate(range(0, len(plain), UNIT))
    )


def decrypt_contents(key: bytes, cipher: bytes, size: int, first_unit: int = 0) -> bytes:
    """Plaintext of whole ciphertext units, cut to `size` bytes."""
    return b"".join(
        decrypt_unit(key, first_unit + i, cipher[off:off + UNIT])
        for i, off in enumerate(range(0, len(cipher), UNIT))
    )[:size]


# --- names: AES-256-CBC-CS3 with zero IV --------------------------------------------------------

def name_ciphertext_len(n: int, flags: int, max_len: int = MAX_NAME) -> int:
    """L for an n-byte name: at least 16, rounded up to the policy padding, capped."""
    pad = 4 << (flags & PAD_MASK)
    return min(-(-max(n, _BLOCK) // pad) * pad, max_len)


def _cbc(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(bytes(_BLOCK)))


def cts_encrypt(key: bytes, plain: bytes) -> bytes:
    """CBC-CS3: CBC over the zero-padded text, last two blocks swapped, tail cut."""
    if len(plain) < _BLOCK:
        raise ValueError("CTS needs at least one block")
    tail = len(plain) % _BLOCK or _BLOCK
    padded = plain + bytes(-len(plain) % _BLOCK)
    enc = _cbc(key).encryptor()
    out = enc.update(padded) + enc.finalize()
    if len(out) == _BLOCK:
        return out
    return out[:-2 * _BLOCK] + out[-_BLOCK:] + out[-2 * _BLOCK:-_BLOCK][:tail]


def cts_decrypt(key: bytes, cipher: bytes) -> bytes:
    if len(cipher) < _BLOCK:
        raise ValueError("CTS needs at least one block")
    if len(cipher) == _BLOCK:
        dec = _cbc(key).decryptor()
        return dec.update(cipher) + dec.finalize()
    tail = len(cipher) % _BLOCK or _BLOCK
    head, last_full, short = cipher[:-_BLOCK - tail], cipher[-_BLOCK - tail:-tail], cipher[-tail:]
    ecb = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    mixed = ecb.update(last_full) + ecb.finalize()
    prev = short + mixed[tail:]
    last_plain = bytes(a ^ b for a, b in zip(mixed[:tail], short, strict=True))
    dec = _cbc(key).decryptor()
    return dec.update(head + prev) + dec.finalize() + last_plain


@lru_cache(maxsize=1 << 16)
def encrypt_name(dir_key: bytes, name: bytes, flags: int, max_len: int = MAX_NAME) -> bytes:
    """The raw on-disk name: NUL-padded to the policy length, then CTS-encrypted."""
    if not 0 < len(name) <= max_len:
        raise ValueError(f"name length {len(name)} outside 1..{max_len}")
    length = name_ciphertext_len(len(name), flags, max_len)
    return cts_encrypt(dir_key[:32], name.ljust(length, b"\0"))


@lru_cache(maxsize=1 << 16)
def decrypt_name(dir_key: bytes, raw: bytes) -> bytes:
    """The plaintext name, NUL padding removed (the kernel stops at the first NUL)."""
    return cts_decrypt(dir_key[:32], raw).split(b"\0", 1)[0]


# --- symlinks -----------------------------------------------------------------------------------

def encrypt_symlink(key: bytes, target: bytes, flags: int) -> bytes:
    """The encrypted target alone (what the testfs stores and shows escaped)."""
    return encrypt_name(key, target, flags, MAX_SYMLINK_CT)


def symlink_disk_form(cipher: bytes) -> bytes:
    """ext4's on-disk symlink body: LE u16 length, ciphertext, NUL."""
    return struct.pack("<H", len(cipher)) + cipher + b"\0"

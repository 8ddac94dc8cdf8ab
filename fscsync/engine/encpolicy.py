"""What the receiver accepts of an encrypted entry: a well-formed encdata, a policy
the run allows, and a destination able to store it. Checked per entry, warned once
per policy."""

from __future__ import annotations

from fscsync.errors import escape
from fscsync.fs import cipher

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from collections.abc import Callable

    from fscsync.engine.flist import Entry
    from fscsync.engine.rxstate import RxState
    from fscsync.fs.probe import DestAbilities
    from fscsync.options import Options

_INO_IV_MEANS = ("its ciphertext is bound to the inode numbers of the source, so a copy on "
                 "another inode or filesystem cannot be decrypted, even with the key")


class EncPolicy:
    """The encryption checks of one run; failures go to the state as the entry's."""

    def __init__(self, state: RxState, opts: Options, abilities: Callable[[], DestAbilities]):
        """`abilities` probes what the destination can store, asked only before an
        encrypted entry is written, so a run that writes none probes nothing."""
        self.state = state
        self.opts = opts
        self.abilities = abilities
        self._warned: set[bytes] = set()

    def accepted(self, idx: int, e: Entry) -> bool:
        """Is entry `e`'s encdata one the run takes? Counts encrypted files."""
        state = self.state
        try:
            enc = cipher.parse_encdata(e.enc)
        except cipher.EncdataError as exc:
            state.fail(idx, f'malformed encdata for "{escape(e.path)}" from the sender: {exc}')
            return False
        if enc.ino_based_iv:
            if self.opts.refuse_ino_policies:
                state.fail(idx, f'"{escape(e.path)}" uses a policy with '
                                f"{enc.ino_policy_flag()} (flags 0x{enc.flags:02x}): "
                                f"{_INO_IV_MEANS} (--refuse-ino-policies)")
                return False
            self._warn_once(enc, f"policy with key {enc.master_key_id.hex()} sets "
                                 f"{enc.ino_policy_flag()} (flags 0x{enc.flags:02x}): "
                                 f"{_INO_IV_MEANS}; the copy is only a backup of the ciphertext")
        if e.is_reg:
            state.stats.encrypted_files += 1
        return True

    def writable(self, idx: int, e: Entry) -> bool:
        """Can the destination take entry `e`'s encdata? (Plain entries: always.)"""
        if e.enc is None or self.opts.dry_run:
            return True
        state = self.state
        ab = self.abilities()
        if not ab.encdata:
            state.fail(idx, f'cannot store "{escape(e.path)}" encrypted: {ab.encdata_why}')
            return False
        enc = cipher.parse_encdata(e.enc)  # accepted() has parsed it already
        if enc.is_v2:
            return True
        if ab.encdata_virtual and not e.enc_alt:
            state.fail(idx, f'cannot restore "{escape(e.path)}" key-less: its fscrypt '
                            f"context is v{enc.enc_ctx[0]} ({len(enc.enc_ctx)} bytes), and "
                            f"security.encdata installs only {cipher.CTX_V2_LEN}-byte v2 contexts")
            return False
        self._warn_once(enc, f"policy with key descriptor {enc.master_key_id.hex()} is "
                             "fscrypt v1: its entries are stored as they are on this plain "
                             "backup, but no encdata interface can restore them key-less")
        return True

    def _warn_once(self, enc: cipher.EncData, text: str) -> None:
        """One warning per policy, however many of its entries the run meets."""
        if enc.policy not in self._warned:
            self._warned.add(enc.policy)
            self.state.reporter.warning(text)

"""Transfer counters, shared by both sides and merged for --stats."""

from __future__ import annotations

from fscsync.errors import ProtocolError, peer_code
from fscsync.record import Record

KINDS = frozenset({"reg", "dir", "link", "dev", "special"})
MAX_COUNT = (1 << 63) - 1


class Stats(Record):
    files: dict[str, int] = {}
    created: dict[str, int] = {}
    deleted: dict[str, int] = {}
    files_sent: int = 0
    total_size: int = 0
    transferred_size: int = 0
    literal: int = 0
    matched: int = 0
    flist_size: int = 0
    flist_gen_time: float = 0.0  # seconds, the sender's
    flist_xfer_time: float = 0.0
    encrypted_files: int = 0
    encrypted_bytes: int = 0
    linked: int = 0  # files hard-linked to their --link-dest copy
    io_error: bool = False

    def to_wire(self) -> dict:
        return {n: dict(v) if isinstance(v, dict) else v
                for n in self.fields for v in (getattr(self, n),)}

    @classmethod
    def from_wire(cls, data: dict) -> Stats:
        """The peer's counters, each checked against its field's type: a count is an
        int from 0 to 2^63-1, a time a finite number from 0, a per-kind count is keyed
        by a kind --stats knows, a flag is a bool. Anything else is a protocol error,
        never a TypeError in merge() or format_stats()."""
        out = cls()
        for name in cls.fields:
            if name not in data:
                continue
            value, default = data[name], getattr(out, name)
            if isinstance(default, bool):
                ok = type(value) is bool
            elif isinstance(default, dict):
                ok = type(value) is dict and all(
                    k in KINDS and _count(v) for k, v in value.items())
            elif isinstance(default, float):
                ok = type(value) in (int, float) and 0 <= value <= MAX_COUNT  # NaN: False
            else:
                ok = _count(value)
            if not ok:
                raise ProtocolError(f"malformed counter {name!r} from the other side")
            setattr(out, name, dict(value) if isinstance(value, dict) else value)
        return out

    def merge(self, other: Stats) -> None:
        """Fold the peer's counters in: each counter is kept by one side only."""
        for name in self.fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            elif isinstance(mine, bool):
                setattr(self, name, mine or theirs)
            else:
                setattr(self, name, mine + theirs)


def final_message(stats: Stats, exit_code: int) -> dict:
    """What one side's last frame says (the sender's FINISHED, a receiving server's
    STATS): its counters and the exit code it would end with, in one flat object."""
    return {**stats.to_wire(), "exit_code": exit_code}


def read_final(msg: dict) -> tuple[Stats, int]:
    """The peer's counters and exit code from its last frame, each field checked."""
    return Stats.from_wire(msg), peer_code(msg.get("exit_code", 0))


def tally(counts: dict[str, int], kind: str, n: int = 1) -> None:
    """One more (or `n` more) of a kind in a per-kind counter (files, created, deleted)."""
    counts[kind] = counts.get(kind, 0) + n


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def human(n: float, level: int = 1, decimals: int = 0) -> str:
    """A number as rsync prints it at -h level `level`: 0 plain digits, 1 digits grouped
    by three, 2 units of 1000 and 3 of 1024 with two decimals ('1.24M')."""
    if level > 1:
        mult = 1000 if level == 2 else 1024
        if abs(n) >= mult:
            for unit in "KMGTPE":
                n /= mult
                if abs(n) < mult or unit == "E":
                    return f"{n:.2f}{unit}"
    grouping = "," if level else ""
    return f"{n:{grouping}.{decimals}f}"


def _kinds(counts: dict[str, int], level: int) -> str:
    total = sum(counts.values())
    order = ["reg", "dir", "link", "dev", "special"]
    c = min(level, 1)
    parts = [f"{k}: {human(counts[k], c)}" for k in order if counts.get(k)]
    return human(total, c) + (f" ({', '.join(parts)})" if parts else "")


def summary(sent: int, received: int, total_size: int, elapsed: float,
            level: int = 1) -> list[str]:
    """The two lines -v and --stats end with, numbers at -h level `level`."""
    rate = (sent + received) / elapsed if elapsed > 0 else 0.0
    speedup = total_size / (sent + received) if sent + received else 0.0
    return [f"sent {human(sent, level)} bytes  received {human(received, level)} bytes  "
            f"{human(rate, level, 2)} bytes/sec",
            f"total size is {human(total_size, level)}  speedup is {speedup:,.2f}"]


def format_stats(s: Stats, sent: int, received: int, elapsed: float,
                 level: int = 1) -> list[str]:
    """rsync's --stats block, plus fscsync's encrypted-file and --link-dest counters."""
    c = min(level, 1)
    return [
        "",
        f"Number of files: {_kinds(s.files, level)}",
        f"Number of created files: {_kinds(s.created, level)}",
        f"Number of deleted files: {_kinds(s.deleted, level)}",
        f"Number of regular files transferred: {human(s.files_sent, c)}",
        f"Number of encrypted files: {human(s.encrypted_files, c)}",
        f"Number of linked files: {human(s.linked, c)}",
        f"Total file size: {human(s.total_size, level)} bytes",
        f"Total transferred file size: {human(s.transferred_size, level)} bytes",
        f"Encrypted data transferred: {human(s.encrypted_bytes, level)} bytes",
        f"Literal data: {human(s.literal, level)} bytes",
        f"Matched data: {human(s.matched, level)} bytes",
        f"File list size: {human(s.flist_size, level)}",
        f"File list generation time: {s.flist_gen_time:.3f} seconds",
        f"File list transfer time: {s.flist_xfer_time:.3f} seconds",
        f"Total bytes sent: {human(sent, level)}",
        f"Total bytes received: {human(received, level)}",
        "",
        *summary(sent, received, s.total_size, elapsed, level),
    ]

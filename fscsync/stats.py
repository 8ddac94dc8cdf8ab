"""Transfer counters, shared by both sides and merged for --stats."""

from __future__ import annotations

from fscsync.errors import ProtocolError
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
    encrypted_files: int = 0
    encrypted_bytes: int = 0
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


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT


def _kinds(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    order = ["reg", "dir", "link", "dev", "special"]
    parts = [f"{k}: {counts[k]:,}" for k in order if counts.get(k)]
    return f"{total:,}" + (f" ({', '.join(parts)})" if parts else "")


def format_stats(s: Stats, sent: int, received: int, elapsed: float) -> list[str]:
    """rsync's --stats block, plus fscsync's encrypted-file counters."""
    rate = (sent + received) / elapsed if elapsed > 0 else 0.0
    speedup = s.total_size / (sent + received) if sent + received else 0.0
    return [
        "",
        f"Number of files: {_kinds(s.files)}",
        f"Number of created files: {_kinds(s.created)}",
        f"Number of deleted files: {_kinds(s.deleted)}",
        f"Number of regular files transferred: {s.files_sent:,}",
        f"Number of encrypted files: {s.encrypted_files:,}",
        f"Total file size: {s.total_size:,} bytes",
        f"Total transferred file size: {s.transferred_size:,} bytes",
        f"Encrypted data transferred: {s.encrypted_bytes:,} bytes",
        f"Literal data: {s.literal:,} bytes",
        f"Matched data: {s.matched:,} bytes",
        f"File list size: {s.flist_size:,}",
        f"Total bytes sent: {sent:,}",
        f"Total bytes received: {received:,}",
        "",
        f"sent {sent:,} bytes  received {received:,} bytes  {rate:,.2f} bytes/sec",
        f"total size is {s.total_size:,}  speedup is {speedup:,.2f}",
    ]

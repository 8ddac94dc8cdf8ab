"""Reading fscsync's `--stats` block in tests."""

from __future__ import annotations

import re

STAT_LINES = {
    "literal": "Literal data",
    "matched": "Matched data",
    "sent": "Total bytes sent",
    "received": "Total bytes received",
    "transferred": "Number of regular files transferred",
    "encrypted": "Number of encrypted files",
    "linked": "Number of linked files",
    "encrypted_bytes": "Encrypted data transferred",
    "deleted": "Number of deleted files",
}


def parse_stats(out: bytes) -> dict[str, int]:
    """The `--stats` counters named in STAT_LINES (AssertionError if one is missing)."""
    text = out.decode(errors="replace")
    got = {}
    for key, label in STAT_LINES.items():
        m = re.search(rf"^{label}: ([\d,]+)", text, re.M)
        assert m, f"--stats output lacks {label!r}:\n{text}"
        got[key] = int(m.group(1).replace(",", ""))
    return got

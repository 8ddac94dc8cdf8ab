"""The wire's frame types are the ones the code speaks: a type that is defined but never
sent nor handled misleads a reader of the protocol (issue 20)."""

from __future__ import annotations

import re

from support import REPO

from fscsync.wire import protocol

PROTOCOL = REPO / "fscsync/wire/protocol.py"


def frame_types() -> dict[str, int]:
    """NAME = number lines of protocol.py's "# Frame types." block."""
    block = PROTOCOL.read_text().split("# Frame types.", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^([A-Z_]+) = (\d+)$", block, re.M)}


def test_frame_types_are_distinct_bytes() -> None:
    types = frame_types()
    assert len(types) > 10
    assert len(set(types.values())) == len(types)
    assert all(0 < n < 256 and getattr(protocol, name) == n for name, n in types.items())


def test_every_frame_type_is_used() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "fscsync").rglob("*.py"))
    unused = [name for name in frame_types()
              if len(re.findall(rf"\b{name}\b", source)) < 2]  # the definition, then a use
    assert not unused, f"frame types defined and never sent nor handled: {unused}"

"""The file-list codec on its own: what the sender packs, the receiver gets back
field for field, and bytes that are not such a batch are refused as a protocol error,
never as a crash. (test_hostile plays hand-made frames against a real receiver.)"""

from __future__ import annotations

import os
import stat

from hypothesis import given
from hypothesis import strategies as st

from fscsync.engine.flist import (
    MAX_PATH,
    BatchBuilder,
    Entry,
    decode_batch,
    decode_entries,
    encode_entries,
    pack_batch,
    unpack_batch,
)
from fscsync.errors import ProtocolError
from fscsync.fs.cipher import EncData, format_encdata

paths = st.binary(min_size=1, max_size=60).filter(lambda p: b"\0" not in p)
u32 = st.integers(0, 2**32 - 1)
encdatas = st.one_of(
    st.builds(lambda size, ctx, name: format_encdata(EncData(size, ctx, name)),
              st.integers(0, 2**40), st.binary(min_size=40, max_size=40),
              st.binary(max_size=40)),
    st.binary(max_size=80))


@st.composite
def entries(draw) -> Entry:
    e = Entry(draw(paths), draw(u32), draw(st.integers(0, 2**64 - 1)),
              draw(st.integers(-2**63, 2**63 - 1)), draw(u32), draw(u32))
    if draw(st.booleans()):
        e.rdev = draw(st.integers(0, 2**64 - 1))
        e.target = draw(st.none() | st.binary(max_size=30))
        e.xattrs = draw(st.none() | st.lists(st.tuples(st.binary(min_size=1, max_size=12),
                                                       st.binary(max_size=20)), max_size=3))
        e.enc = draw(st.none() | encdatas)
        e.enc_alt = draw(st.booleans())
        e.link = draw(st.integers(-1, 2**31 - 1))  # the top bit is link_last's
        e.link_last = e.link >= 0 and draw(st.booleans())
        e.checksum = draw(st.none() | st.binary(min_size=16, max_size=16))
    return e


def fields(e: Entry) -> tuple:
    """What crosses the wire (no xattrs and an empty list of them travel alike)."""
    return (e.path, e.mode, e.size, e.mtime_ns, e.uid, e.gid, e.rdev, e.target,
            e.xattrs or None, e.enc, e.enc_alt, e.link, e.link_last, e.checksum)


@given(st.lists(entries(), max_size=12))
def test_entries_come_back_field_for_field(batch: list[Entry]) -> None:
    back = unpack_batch(pack_batch(batch)).entries()
    assert [fields(e) for e in back] == [fields(e) for e in batch]
    assert [fields(e) for e in decode_entries(encode_entries(batch))] == [
        fields(e) for e in batch]


@given(st.lists(entries(), min_size=1, max_size=6), st.data())
def test_damaged_batches_are_protocol_errors(batch: list[Entry], data) -> None:
    raw = bytearray(encode_entries(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for damaged in (bytes(raw), bytes(raw[:cut]), bytes(raw) + b"\0"):
        try:
            decoded = decode_batch(damaged)
        except ProtocolError:
            continue
        assert all(0 < len(p) <= MAX_PATH and b"\0" not in p for p in decoded.paths)
        assert len(decoded.entries()) == len(decoded.paths)


def test_lstat_results_pack_as_their_entries_would(tmp_path) -> None:
    """BatchBuilder.add_stats (the sender's plain files) and add (every other entry)
    write the same columns, in the order they were added."""
    names = [b"a", b"b\xff", b"c d"]
    for name in names:
        (tmp_path / os.fsdecode(name)).write_bytes(name * 3)
    stats = [os.lstat(os.path.join(bytes(tmp_path), n)) for n in names]
    link = Entry(b"l", stat.S_IFLNK | 0o777, 1, 5, 0, 0, target=b"a")
    mixed = BatchBuilder()
    mixed.add_stats(names[:2], stats[:2])
    mixed.add(link)
    mixed.add_stats(names[2:], stats[2:])
    plain = [Entry(n, s.st_mode, s.st_size, s.st_mtime_ns, s.st_uid, s.st_gid)
             for n, s in zip(names, stats, strict=True)]
    assert mixed.encode() == encode_entries([plain[0], plain[1], link, plain[2]])
    assert len(mixed) == 4

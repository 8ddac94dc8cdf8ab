"""Issue 9: protocol fuzzing of the receiver.

A real push (`fscsync -aHX src/ host:dest/`) is recorded once through a remote shell that
tees both directions. Each example replays the sender's half of that stream, mutated
(bytes flipped, frames dropped, duplicated, reordered, retyped, cut, lengths lied
about, file-list entries and delta ops rewritten, hostile entries added), against a
real `fscsync --server` on a fresh copy of the old destination. The replay waits for
the server's requests where the real sender would have, so the unmutated stream
reproduces the sync exactly (checked first).

Invariants for every example: the server ends within a few seconds; no Python
traceback and no "internal error"; a documented exit code; nothing created or changed
outside the destination (a sibling canary directory and the sandbox's parent are
watched); every regular file in the destination is a complete version the run knew
(the old or the new content at its path, never a mix); files the stream never
mentions are untouched; no temp file is left behind.

Longer runs: FSCSYNC_FUZZ_EXAMPLES=5000 (random seeds, and the example database).
FSCSYNC_TEST_SPAWN=1 starts every server as `python -m fscsync --server` instead of forking
it from a process that imported fscsync (the same code, ~0.25 s more per example).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import stat
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from support import run_fscsync
from support.peer import (
    FakeSender,
    Result,
    flist_entries,
    flist_payload,
    server_launcher,
    split_frames,
)
from support.treecmp import assert_same_tree

from fscsync.engine import delta
from fscsync.engine import flist as flist_module
from fscsync.engine.flist import BatchBuilder, Entry
from fscsync.engine.receiver import Receiver
from fscsync.engine.report import Reporter
from fscsync.errors import ProtocolError
from fscsync.options import Options
from fscsync.wire import protocol

EXAMPLES = int(os.environ.get("FSCSYNC_FUZZ_EXAMPLES", "150"))
TIMEOUT = 6.0
"""Seconds one mutated run may take before it counts as a hang."""
AWAIT = 0.15
"""How long the replay waits for a request the mutated stream may never cause."""
CODES = {0, 12, 23, 24}
"""The exit codes a server receiving a broken or changed stream may end with."""

T_OLD = 1_500_000_000_000_000_000
T_NEW = 1_600_000_000_000_000_000
TEMP_MARK = b".~fscsync~"


# ---- the recording ---------------------------------------------------------------------


class Recording:
    """The recorded push and what the trees held (a plain class: hypothesis prints the
    fixtures of a failing example, and a dataclass would be printed field by field)."""

    def __init__(self, setup: dict, frames: list[tuple[int, bytes]], template: Path,
                 src: Path, old: dict[bytes, bytes], new: dict[bytes, bytes]):
        self.setup = setup
        self.frames = frames
        """The sender's frames after the setup frame, in order."""
        self.template = template
        """The old destination, copied fresh for every example."""
        self.src = src
        self.old = old
        self.new = new
        self.untouched = {k: v for k, v in old.items() if k not in new}
        """Files only in the destination: the stream never names them."""

    def __repr__(self) -> str:
        return f"<Recording of {len(self.frames)} frames from {self.src}>"

    @property
    def known(self) -> set[bytes]:
        return {_h(d) for d in [*self.old.values(), *self.new.values()]}


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _put(path: Path, data: bytes, ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(ns, ns))


def _build(src: Path, dest: Path) -> None:
    rnd = random.Random(9)
    old_alpha = rnd.randbytes(40_000)
    new_alpha = bytearray(old_alpha)
    new_alpha[5000] ^= 1
    _put(src / "alpha.bin", bytes(new_alpha) + b"tail", T_NEW)
    _put(dest / "alpha.bin", old_alpha, T_OLD)
    old_big = rnd.randbytes(1_200_000)
    new_big = bytearray(old_big)
    new_big[1_100_000] ^= 1
    _put(src / "sub/bravo.big", bytes(new_big), T_NEW)
    _put(dest / "sub/bravo.big", old_big, T_OLD)
    _put(src / "charlie.txt", b"charlie, new\n", T_NEW)
    os.setxattr(src / "charlie.txt", "user.fuzz", b"value")
    os.link(src / "charlie.txt", src / "sub/hotel.link")
    _put(src / "echo.new", b"", T_NEW)
    _put(src / "foxtrot.same", b"the same on both sides\n", T_OLD)
    _put(dest / "foxtrot.same", b"the same on both sides\n", T_OLD)
    os.symlink("../alpha.bin", src / "sub/golf.sym")
    _put(dest / "delta.keep", b"only in the destination\n", T_OLD)
    for d in (src, dest, src / "sub", dest / "sub"):
        os.utime(d, ns=(T_OLD, T_OLD))


def _files(root: Path) -> dict[bytes, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[os.fsencode(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    work = tmp_path_factory.mktemp("fuzz-recording")
    src, template, dest = work / "src", work / "template", work / "dest"
    _build(src, template)
    shutil.copytree(template, dest, symlinks=True)
    c2s, s2c = work / "c2s.bin", work / "s2c.bin"
    tee = work / "tee.sh"
    tee.write_text(f"#!/bin/sh\ntee {shlex.quote(str(c2s))} | {shlex.quote(sys.executable)} "
                   f"-m fscsync --server | tee {shlex.quote(str(s2c))}\n")
    run_fscsync("-aHX", "-e", f"sh {shlex.quote(str(tee))}", f"{src}/", f"recorded:{dest}/",
                check=True, timeout=60)
    (dest / "delta.keep").unlink()  # only in the destination (no --delete)
    assert_same_tree(src, dest, ignore_dir_mtime=True)
    frames, rest = split_frames(c2s.read_bytes())
    assert not rest and [t for t, _ in frames[:2]] == [protocol.HELLO, protocol.SETUP]
    types = {t for t, _ in frames}
    for needed in (protocol.FLIST, protocol.DATA, protocol.DATA_END, protocol.FILE,
                   protocol.SIGREQ, protocol.NOMORE_ACK, protocol.FINISHED):
        assert needed in types, f"the recorded stream lacks frame type {needed}"
    old, new = _files(template), _files(src)
    return Recording(json.loads(frames[1][1]), frames[2:], template, src, old, new)


@pytest.fixture(scope="module")
def launcher():
    with server_launcher() as launch:
        yield launch


# ---- replaying a (mutated) stream ------------------------------------------------------

Item = tuple[str, int, bytes]
"""("frame", type, payload) or ("raw", 0, bytes)."""


def _idx(payload: bytes) -> int | None:
    return struct.unpack_from(">I", payload)[0] if len(payload) >= 4 else None


_ANSWERS = (protocol.DATA, protocol.DATA_END, protocol.FILE, protocol.SIGREQ)
"""Frames about one file (index first), which the real sender sent only once asked."""
_ENDS = (protocol.DATA_END, protocol.FILE)
"""Frames that start with an end-of-file record (a FILE frame's data follows it)."""


def replay(peer: FakeSender, items: list[Item]) -> None:
    """Send the items, waiting where the real sender waited for the receiver."""
    answered: set[int] = set()
    sigs: dict[int, int] = {}
    for kind, ftype, payload in items:
        if kind == "frame":
            idx = _idx(payload)
            if ftype in _ANSWERS and idx is not None:
                if idx not in answered:
                    answered.add(idx)
                    want = payload[:4]
                    peer.wait_for(lambda t, p, w=want: (t == protocol.REQ and p[:4] == w)
                                  or t == protocol.NOMORE, AWAIT)
                if ftype == protocol.SIGREQ:
                    sigs[idx] = sigs.get(idx, 0) + max(0, (len(payload) - 4) // 4)
                elif sigs.get(idx):
                    peer.wait_count(lambda t, p, w=payload[:4]: t == protocol.SIGBLOCKS
                                    and p[:4] == w, sigs.pop(idx), AWAIT)
            elif ftype == protocol.NOMORE_ACK:
                peer.wait_type(protocol.NOMORE, AWAIT)
            elif ftype == protocol.FINISHED:
                peer.wait_type(protocol.DONE, AWAIT)
            ok = peer.send(ftype, payload)
        else:
            ok = peer.send_raw(payload)
        if not ok or peer.exited_output:
            break
    if any(k == "frame" and t == protocol.FINISHED for k, t, _ in items):
        peer.wait_type(protocol.STATS, AWAIT)


@dataclass
class Box:
    base: Path
    dest: Path
    outside: Path

    def outside_state(self) -> dict[str, object]:
        state: dict[str, object] = {}
        for dirpath, dirs, names in os.walk(self.base):
            here = Path(dirpath)
            if here == self.dest:
                dirs[:] = []
                continue
            for n in sorted(dirs + names):
                p = here / n
                if p == self.dest:
                    continue
                st = os.lstat(p)
                body = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
                state[str(p)] = (st.st_mode, st.st_uid, st.st_mtime_ns, body)
        st = os.stat(self.base)
        state["."] = (st.st_mode, st.st_uid)
        state[".."] = sorted(os.listdir(self.base.parent))
        return state


def _sandbox(root: Path, rec: Recording) -> Box:
    base = Path(tempfile.mkdtemp(dir=root))
    box = Box(base, base / "dest", base / "outside")
    shutil.copytree(rec.template, box.dest, symlinks=True)
    box.outside.mkdir()
    (box.outside / "canary.txt").write_bytes(b"canary\n")
    return box


def run_items(launcher, rec: Recording, box: Box, items: list[Item]) -> Result:
    peer = FakeSender(launcher=launcher, timeout=TIMEOUT)
    opts = Options.from_wire(rec.setup["options"])
    assert peer.setup(box.dest, opts, item_dir=rec.setup.get("item_dir", "<")), (
        peer.finish().describe())
    replay(peer, items)
    return peer.finish()


def check(result: Result, box: Box, rec: Recording, before: dict[str, object],
          what: str, relinked: bool = False) -> None:
    """`relinked`: a mutation re-aimed a hard link, so a file may legitimately hold the
    content the sender sent whole for its new leader."""
    info = f"{what}\n{result.describe()}"
    assert not result.hung, "the server hung: " + info
    assert "Traceback" not in result.text, info
    assert "internal error" not in result.messages(), info
    assert result.code in CODES, info
    now = box.outside_state()
    assert now == before, ("changed outside the destination: "
                           f"{sorted(set(now.items()) ^ set(before.items()))[:6]}\n{info}")
    for rel, data in rec.untouched.items():
        assert (box.dest / os.fsdecode(rel)).read_bytes() == data, f"{rel!r} changed\n{info}"
    known = rec.known
    temps = []
    for dirpath, _, names in os.walk(box.dest):
        for n in names:
            p = Path(dirpath) / n
            rel = os.fsencode(p.relative_to(box.dest))
            if TEMP_MARK in os.fsencode(n):
                temps.append(rel)
                continue
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            data = p.read_bytes()
            if (rel in rec.old or rel in rec.new) and not (relinked and _h(data) in known):
                allowed = {rec.old.get(rel), rec.new.get(rel)}
                assert data in allowed, f"{rel!r} is neither its old nor its new version\n{info}"
            else:
                assert _h(data) in known, f"{rel!r} holds content nobody sent whole\n{info}"
    assert not temps, f"temp files left behind: {temps}\n{info}"


# ---- mutations -------------------------------------------------------------------------


def _encode_ops(idx: int, ops: list[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray(struct.pack(">I", idx))
    for op, off, arg in ops:
        if op == delta.OP_COPY:
            out += struct.pack(">BQQ", op, off, arg)
        else:
            out += struct.pack(">BQI", op, off, len(arg)) + arg
    return bytes(out)


HOSTILE = ["dotdot", "absolute", "symlink-parent", "symlink-dup", "nul", "later-parent",
           "device", "hardlink-later"]


def _hostile_entries(kind: str, box_outside: bytes) -> list[Entry]:
    reg = stat.S_IFREG | 0o644
    if kind == "dotdot":
        return [Entry(b"sub/../../outside/pwn", reg, 4, T_NEW)]
    if kind == "absolute":
        return [Entry(box_outside + b"/pwn", reg, 4, T_NEW)]
    if kind == "symlink-parent":
        return [Entry(b"lnk", stat.S_IFLNK | 0o777, 0, T_NEW, target=box_outside),
                Entry(b"lnk/pwn", reg, 4, T_NEW)]
    if kind == "symlink-dup":
        return [Entry(b"lnk", stat.S_IFDIR | 0o755, 0, T_NEW),
                Entry(b"lnk", stat.S_IFLNK | 0o777, 0, T_NEW, target=b"../outside"),
                Entry(b"lnk/pwn", reg, 4, T_NEW)]
    if kind == "nul":
        return [Entry(b"pwn\x00/../../outside/pwn", reg, 4, T_NEW)]
    if kind == "later-parent":
        return [Entry(b"later/pwn", reg, 4, T_NEW), Entry(b"later", stat.S_IFDIR | 0o755)]
    if kind == "device":
        return [Entry(b"pwn", stat.S_IFBLK | 0o666, 0, T_NEW, rdev=os.makedev(8, 0))]
    return [Entry(b"pwn", reg, 4, T_NEW, link=10_000)]


def apply(frames: list[tuple[int, bytes]], mutations: list[tuple], outside: bytes
          ) -> list[Item]:
    """The stream with the mutations applied, in order. Positions are taken modulo the
    current length, so every drawn mutation applies."""
    items: list[Item] = [("frame", t, p) for t, p in frames]
    for m in mutations:
        if not items:
            break
        kind = m[0]
        i = m[1] % len(items)
        k, t, p = items[i]
        if kind == "flip" and p:
            pos = m[2] % len(p)
            items[i] = (k, t, p[:pos] + bytes([p[pos] ^ m[3]]) + p[pos + 1:])
        elif kind == "truncate":
            items[i] = (k, t, p[: m[2] % (len(p) + 1)])
        elif kind == "drop":
            del items[i]
        elif kind == "dup":
            items.insert(i, items[i])
        elif kind == "swap" and i + 1 < len(items):
            items[i], items[i + 1] = items[i + 1], items[i]
        elif kind == "retype" and k == "frame":
            items[i] = (k, m[2], p)
        elif kind == "insert":
            items.insert(i, ("frame", m[2], m[3]))
        elif kind == "lie-length" and k == "frame":
            items[i] = ("raw", 0, struct.pack(">BI", t, m[2]) + p)
        elif kind == "cut":
            raw = struct.pack(">BI", t, len(p)) + p if k == "frame" else p
            items[i:] = [("raw", 0, raw[: m[2] % (len(raw) + 1)])]
        elif kind == "entry" and k == "frame" and t == protocol.FLIST:
            items[i] = (k, t, _mutate_entry(p, m[2], m[3], m[4]))
        elif kind == "op" and k == "frame" and t == protocol.DATA:
            items[i] = (k, t, _mutate_op(p, m[2], m[3], m[4]))
        elif kind == "end" and k == "frame" and t in _ENDS and len(p) >= 29:
            field_, value = m[2], m[3]
            if field_ == "size":
                p = p[:5] + struct.pack(">Q", value % (1 << 64)) + p[13:]
            elif field_ == "status":
                p = p[:4] + bytes([value % 256]) + p[5:]
            else:
                p = struct.pack(">I", value % (1 << 32)) + p[4:]
            items[i] = (k, t, p)
        elif kind == "hostile":
            items = _add_hostile(items, HOSTILE[m[2] % len(HOSTILE)], outside)
    return items


def _mutate_entry(payload: bytes, which: int, field_: str, value: int) -> bytes:
    try:
        entries = flist_entries(payload)
    except ProtocolError:
        return payload
    if not entries:
        return payload
    e = entries[which % len(entries)]
    types = [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
             stat.S_IFCHR, stat.S_IFBLK, 0]
    if field_ == "path" and e.path:
        pos = value % len(e.path)
        e.path = e.path[:pos] + bytes([(e.path[pos] ^ (value >> 8 | 1)) & 0xFF]) + e.path[pos+1:]
    elif field_ == "type":
        e.mode = types[value % len(types)] | (e.mode & 0o7777)
        if stat.S_ISLNK(e.mode) and e.target is None:
            e.target = b"../outside"
    elif field_ == "perm":
        e.mode = (e.mode & ~0o7777) | (value & 0o7777)
    elif field_ == "size":
        e.size = value % (1 << 64)
    elif field_ == "mtime":
        e.mtime_ns = value % (1 << 63) - (value & 1) * (1 << 62)
    elif field_ == "owner":
        e.uid, e.gid = value % (1 << 32), (value >> 3) % (1 << 32)
    elif field_ == "link":
        e.link = value % 12 - 1
    elif field_ == "target":
        e.target = [b"/", b"..", b"../outside", b"", b"x" * 300][value % 5]
    elif field_ == "xattrs":
        e.xattrs = [(b"user.f%d" % j, b"v" * (value % 300)) for j in range(value % 40)]
    elif field_ == "rdev":
        e.rdev = value % (1 << 64)
    try:
        return flist_payload(entries)
    except (struct.error, OverflowError, TypeError):
        return payload


def _mutate_op(payload: bytes, which: int, field_: str, value: int) -> bytes:
    try:
        idx = delta.data_index(payload)
        ops = list(delta.decode_ops(payload))
    except ProtocolError:
        return payload
    if not ops:
        return payload
    j = which % len(ops)
    op, off, arg = ops[j]
    if field_ == "offset":
        off = value % (1 << 64)
    elif field_ == "length" and op == delta.OP_COPY:
        arg = value % (1 << 64)
    elif field_ == "kind":
        if op == delta.OP_COPY:
            op, arg = delta.OP_LIT, b"\0" * min(arg, 4096)
        else:
            op, arg = delta.OP_COPY, len(arg)
    elif field_ == "dup":
        ops.insert(j, (op, off, arg))
    ops[j] = (op, off, arg)
    return _encode_ops(idx, ops)


def _add_hostile(items: list[Item], kind: str, outside: bytes) -> list[Item]:
    """Append hostile entries to the file list (after the real ones, so indexes hold) and
    data for them before the end of the data, as if the receiver had asked."""
    flist_at = [n for n, (k, t, _) in enumerate(items) if k == "frame" and t == protocol.FLIST]
    if not flist_at:
        return items
    n = flist_at[-1]
    try:
        count = sum(len(flist_entries(p)) for k, t, p in items
                    if k == "frame" and t == protocol.FLIST)
    except ProtocolError:
        return items
    extra = _hostile_entries(kind, outside)
    items = list(items)
    items.insert(n + 1, ("frame", protocol.FLIST, flist_payload(extra)))
    data_frames: list[Item] = []
    for j, e in enumerate(extra):
        if e.is_reg and e.link < 0:
            idx = count + j
            data_frames.append(("frame", protocol.FILE, delta.encode_end(
                idx, delta.END_OK, 4, delta.chunk_hash(b"pwn!")) + b"pwn!"))
    ack = [n for n, (k, t, _) in enumerate(items) if k == "frame" and t == protocol.NOMORE_ACK]
    at = ack[0] if ack else len(items)
    return items[:at] + data_frames + items[at:]


_pos = st.integers(0, 1 << 20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _pos, _pos, st.integers(1, 255)),
    st.tuples(st.just("truncate"), _pos, _pos),
    st.tuples(st.just("drop"), _pos),
    st.tuples(st.just("dup"), _pos),
    st.tuples(st.just("swap"), _pos),
    st.tuples(st.just("retype"), _pos, st.integers(0, 255)),
    st.tuples(st.just("insert"), _pos, st.integers(0, 255), st.binary(max_size=64)),
    st.tuples(st.just("lie-length"), _pos,
              st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 32) - 1))),
    st.tuples(st.just("cut"), _pos, _pos),
    st.tuples(st.just("entry"), _pos, _pos,
              st.sampled_from(["path", "type", "perm", "size", "mtime", "owner", "link",
                               "target", "xattrs", "rdev"]), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("op"), _pos, _pos, st.sampled_from(["offset", "length", "kind", "dup"]),
              st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("end"), _pos, st.sampled_from(["size", "status", "idx"]),
              st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("hostile"), st.just(0), st.integers(0, len(HOSTILE) - 1)),
)


def _targeted(mutation: tuple, frames: list[tuple[int, bytes]]) -> tuple:
    """Point entry/op/end mutations at a frame of the right type (position i among them)."""
    kind = mutation[0]
    want = {"entry": (protocol.FLIST,), "op": (protocol.DATA,), "end": _ENDS}.get(kind)
    if want is None:
        return mutation
    where = [n for n, (t, _) in enumerate(frames) if t in want]
    return (kind, where[mutation[1] % len(where)], *mutation[2:])


# ---- the tests ---------------------------------------------------------------------------


def test_unmutated_replay_reproduces_the_sync(recording: Recording, launcher,
                                              tmp_path: Path) -> None:
    """The harness itself: replaying the recorded stream unchanged makes the same tree
    as the real run, with exit 0, so mutated replays test the receiver, not the replay."""
    box = _sandbox(tmp_path, recording)
    before = box.outside_state()
    result = run_items(launcher, recording, box,
                       [("frame", t, p) for t, p in recording.frames])
    assert result.code == 0, result.describe()
    check(result, box, recording, before, "unmutated")
    for rel, data in recording.new.items():
        assert (box.dest / os.fsdecode(rel)).read_bytes() == data
    assert (box.dest / "delta.keep").exists()
    assert os.readlink(box.dest / "sub/golf.sym") == "../alpha.bin"
    assert os.stat(box.dest / "charlie.txt").st_ino == os.stat(box.dest / "sub/hotel.link").st_ino


_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
    database=None if EXAMPLES <= 150 else settings.default.database,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large], print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])


@_SETTINGS
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_streams_never_escape_or_corrupt(recording: Recording, launcher,
                                                 tmp_path: Path, mutations) -> None:
    frames = recording.frames
    targeted = [_targeted(m, frames) for m in mutations]
    root = tmp_path / "examples"
    root.mkdir(exist_ok=True)
    box = _sandbox(root, recording)
    try:
        before = box.outside_state()
        items = apply(frames, targeted, os.fsencode(box.outside))
        result = run_items(launcher, recording, box, items)
        event(f"exit {result.code}")
        event(f"mutation {targeted[0][0]}")
        check(result, box, recording, before, f"mutations: {targeted}",
              relinked=any("link" in m for m in targeted))
    finally:
        shutil.rmtree(box.base, ignore_errors=True)


# ---- the frame decoders and the file-list rules, in process ------------------------------

DECODER_EXAMPLES = int(os.environ.get("FSCSYNC_FUZZ_DECODER_EXAMPLES", "200"))
_DECODERS = settings(
    max_examples=DECODER_EXAMPLES, deadline=None, derandomize=DECODER_EXAMPLES <= 200,
    database=None if DECODER_EXAMPLES <= 200 else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)

_EXTREMES = st.sampled_from([0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 1 << 40, 1 << 63, (1 << 64) - 1])


def _samples() -> dict[str, tuple[bytes, object]]:
    """A valid payload of each frame kind a peer sends, and its decoder."""
    req_chunk = delta.chunk_size_for(5 << 20, 4096)
    entries = [Entry(b".", stat.S_IFDIR | 0o755), Entry(b"f", stat.S_IFREG | 0o644, 3, T_NEW),
               Entry(b"h", stat.S_IFREG | 0o644, 3, T_NEW, link=1),
               Entry(b"l", stat.S_IFLNK | 0o777, 2, T_NEW, target=b"../x",
                     xattrs=[(b"user.a", b"v")])]
    ops = (struct.pack(">IBQI", 1, delta.OP_LIT, 0, 3) + b"abc"
           + struct.pack(">BQQ", delta.OP_COPY, 4096, 4096))
    return {
        "req-whole": (delta.Request(1, delta.WHOLE).encode(), delta.Request.decode),
        "req-blocks": (delta.Request(1, delta.BLOCKS, block=4096, chunk=4096, basis_size=8192,
                                     hashes=bytes(16)).encode(), delta.Request.decode),
        "req-chunks": (delta.Request(1, delta.CHUNKS, block=4096, chunk=req_chunk,
                                     basis_size=5 << 20, hashes=bytes(16 * 5)).encode(),
                       delta.Request.decode),
        "ops": (ops, lambda p: (delta.data_index(p), list(delta.decode_ops(p)))),
        "end": (delta.encode_end(1, delta.END_OK, 3, bytes(16)), delta.decode_end),
        "file": (delta.encode_end(1, delta.END_OK, 3, bytes(16)) + b"abc", delta.decode_file),
        "sigreq": (delta.encode_sigreq(1, [0, 2]), delta.decode_sigreq),
        "sigblocks": (delta.encode_sigblocks(1, 2, bytes(16)), delta.decode_sigblocks),
        "flist": (flist_payload(entries), lambda p: flist_module.unpack_batch(p).entries()),
        "flist-raw": (flist_module.encode_entries(entries),
                      lambda p: flist_module.decode_batch(p).entries()),
        "control": (b'{"exit_code": 0, "count": 3}', protocol.load_json),
    }


SAMPLES = _samples()
DAMAGE = st.lists(st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(1, 255)),
    st.tuples(st.just("cut"), _pos),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("number"), _pos, st.sampled_from([">I", ">Q", ">H"]), _EXTREMES),
), min_size=1, max_size=4)


def _damage(payload: bytes, damage: list[tuple]) -> bytes:
    out = bytearray(payload)
    for kind, pos, *arg in damage:
        at = pos % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= arg[0]
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = arg[0]
        elif kind == "number":
            fmt, value = arg
            packed = struct.pack(fmt, value % (1 << (8 * struct.calcsize(fmt))))
            out[at : at + len(packed)] = packed
    return bytes(out)


@_DECODERS
@given(kind=st.sampled_from(sorted(SAMPLES)), damage=DAMAGE)
def test_frame_decoders_decode_or_refuse(kind: str, damage: list[tuple]) -> None:
    """Every decoder of a peer's frame, given a valid payload damaged (bytes flipped, cut,
    inserted, numbers made extreme), either decodes it or raises ProtocolError: never
    another exception, which would end a run as an internal error."""
    payload, decode = SAMPLES[kind]
    decode(payload)
    damaged = _damage(payload, damage)
    try:
        decode(damaged)
    except ProtocolError:
        event(f"{kind}: refused")
    else:
        event(f"{kind}: decoded")


def _channel_over(data: bytes, kind: str | None) -> protocol.Channel:
    r, w = os.pipe()
    protocol._widen_pipe(w)
    os.write(w, data)
    os.close(w)
    chan = protocol.Channel(r, os.open(os.devnull, os.O_WRONLY))
    chan.set_compression(kind)
    return chan


@_DECODERS
@given(frames=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=200)), max_size=6),
       damage=DAMAGE, kind=st.sampled_from([None, *protocol.COMPRESSIONS]))
def test_channel_reads_frames_or_refuses_the_stream(frames, damage, kind) -> None:
    """A stream of frames (compressed as -z sends it, or not), damaged: the channel hands
    out frames until a ProtocolError (PeerClosed at its end), nothing else."""
    raw = b"".join(struct.pack(">BI", t, len(p)) + p for t, p in frames)
    if kind is not None:
        raw = protocol._Codec(kind).compress(raw)
    chan = _channel_over(_damage(raw, damage) if raw else raw, kind)
    try:
        for _ in range(len(frames) + 8):
            ftype, payload = chan.recv()
            assert len(payload) <= protocol.MAX_FRAME
    except ProtocolError:
        pass
    finally:
        os.close(chan.rfd)
        os.close(chan.wfd)


_NAMES = st.sampled_from([b"a", b"b", b"c"])
_LISTED = st.tuples(st.lists(_NAMES, min_size=1, max_size=3).map(b"/".join), st.booleans())


def _in_order(row: tuple[bytes, bool]) -> list[tuple[int, bytes]]:
    *parents, name = row[0].split(b"/")
    return [(1, p) for p in parents] + [(int(row[1]), name)]


@st.composite
def _listings(draw) -> list[list[tuple[bytes, bool]]]:
    """Rows in file-list order with their directories (acceptable), then a few
    repeated somewhere, cut into batches."""
    drawn = set(draw(st.lists(_LISTED, max_size=14)))
    drawn |= {(p[:i], True) for p, _ in drawn for i in range(len(p)) if p[i : i + 1] == b"/"}
    rows = sorted(drawn, key=_in_order)
    for _ in range(draw(st.integers(0, 2))):
        if rows:
            row = rows[draw(st.integers(0, len(rows) - 1))]
            rows.insert(draw(st.integers(0, len(rows))), row)
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=3)))
    return [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]


class _Silent(Reporter):
    """A reporter for a receiver that is fed batches and never prints."""

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        pass


@_DECODERS
@given(batches=_listings())
def test_receiver_accepts_no_repeated_path(batches) -> None:
    """The receiver's file-list rules (issue 19), over lists a hostile sender may send in
    any number of batches: what it accepts has every entry after its directory, no
    directory twice and no other entry twice (a name may be listed once as a
    non-directory, then once as a directory: the generator makes way for the second);
    anything else is a ProtocolError."""
    rx = Receiver(None, Options(), _Silent(), b"")
    accepted: list[tuple[bytes, bool]] = []
    try:
        for n, rows in enumerate(batches):
            listed = [(b".", True)] * (n == 0) + rows
            batch = BatchBuilder.of([Entry(p, (stat.S_IFDIR | 0o755) if d else
                                           (stat.S_IFREG | 0o644)) for p, d in listed])
            rx._add_entries(flist_module.decode_batch(batch.encode()))
            accepted += listed
    except ProtocolError:
        event("refused")
    dirs = {b""} | {p for p, d in accepted if d}
    for path, _ in accepted:
        assert path == b"." or path.rpartition(b"/")[0] in dirs
    assert len(set(accepted)) == len(accepted), accepted

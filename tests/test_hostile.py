"""Issue 9: the receiver never trusts the sender.

Hand-made hostile streams, one test per rule, played by a fake client (the sender,
tests/support/peer.py) against a real `fscsync --server` acting as the receiver.
Every run must end with the documented exit code within a few seconds, without a
Python traceback, without writing anything outside the destination, and with the
destination's previous files exactly as they were. Then `--restrict-to`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from support import REPO, run_fscsync
from support.peer import (
    FLIST_COMPRESSED,
    SERVER_ENV,
    FakeSender,
    Result,
    _Popened,
    default_options,
    flist_entries,
    flist_payload,
    flist_payload_raw,
    frame,
    measured_server,
    server_launcher,
    spawn_server,
)
from support.treecmp import diff, snapshot

from fscsync.engine import delta
from fscsync.engine import flist as flist_module
from fscsync.engine.flist import F_LINK, F_TARGET, F_XATTRS, MAX_XATTRS, Entry, encode_entries
from fscsync.engine.stats import Stats, final_message, read_final
from fscsync.errors import ProtocolError
from fscsync.fs.destfs import check_path, check_paths
from fscsync.wire import dirnames, protocol

STREAM = 12
FILE_SELECT = 3
PARTIAL = 23
QUICK = 5.0
"""Seconds a hostile stream may take to be refused (the server is started fresh)."""

T_OLD = 1_500_000_000_000_000_000
T_NEW = 1_600_000_000_000_000_000
DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777
KEEP = b"the previous good copy\n"
CANARY = b"outside the destination\n"


# ---- the sandbox -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher():
    """Servers are forked from one process that imported fscsync (see support.peer);
    FSCSYNC_TEST_SPAWN=1 starts each in a fresh interpreter instead (slower)."""
    with server_launcher() as launch:
        yield launch


@dataclass
class Sandbox:
    """base/dest is what the server may write; base/outside (and base itself) it may not."""

    base: Path
    dest: Path
    outside: Path
    launcher: object = None

    def watch(self) -> None:
        self._outside = self._outside_state()
        self._dest = snapshot(self.dest)

    def _outside_state(self) -> dict[bytes, object]:
        """Everything under base except dest, plus base itself."""
        state = {b"base:" + n: None for n in sorted(os.listdir(bytes(self.base)))}
        for rel, rec in snapshot(self.outside).items():
            state[b"outside:" + rel] = rec
        st = os.stat(self.base)
        state[b"base-attrs"] = (st.st_mode, st.st_uid, st.st_gid)
        return state

    def assert_nothing_outside(self) -> None:
        now = self._outside_state()
        changed = [k for k in set(now) | set(self._outside) if now.get(k, "-") !=
                   self._outside.get(k, "-")]
        assert not changed, f"written outside the destination: {sorted(changed)}"

    def assert_previous_intact(self) -> None:
        """Every entry the destination held before is unchanged (the root may gain entries,
        so its mtime may move); nothing else is checked here."""
        now = snapshot(self.dest)
        before = dict(self._dest)
        problems = diff(before, {k: v for k, v in now.items() if k in before},
                        ignore_dir_mtime=True)
        assert not problems, "the destination's previous entries changed:\n" + "\n".join(
            problems)
        assert (self.dest / "keep.txt").read_bytes() == KEEP

    def new_entries(self) -> list[bytes]:
        return sorted(set(snapshot(self.dest)) - set(self._dest))


@pytest.fixture
def sb(tmp_path: Path, launcher) -> Sandbox:
    base = tmp_path / "sandbox"
    dest, outside = base / "dest", base / "outside"
    (dest / "sub").mkdir(parents=True)
    outside.mkdir()
    (dest / "keep.txt").write_bytes(KEEP)
    (dest / "sub/old.txt").write_bytes(b"old\n")
    (outside / "canary.txt").write_bytes(CANARY)
    for p in (dest / "keep.txt", dest / "sub/old.txt", dest / "sub", outside / "canary.txt"):
        os.utime(p, ns=(T_OLD, T_OLD))
    box = Sandbox(base, dest, outside, launcher)
    box.watch()
    return box


# ---- streams ----------------------------------------------------------------------------


def root() -> Entry:
    return Entry(b".", DIR, 0, T_NEW)


def reg(path: bytes, data: bytes = b"", **kw) -> Entry:
    return Entry(path, REG, len(data), T_NEW, **kw)


def lit(idx: int, data: bytes, offset: int = 0) -> bytes:
    """A DATA payload carrying `data` as one literal op."""
    return struct.pack(">IBQI", idx, delta.OP_LIT, offset, len(data)) + data


def copy_op(idx: int, offset: int, length: int) -> bytes:
    return struct.pack(">IBQQ", idx, delta.OP_COPY, offset, length)


def end(idx: int, data: bytes) -> bytes:
    return delta.encode_end(idx, delta.END_OK, len(data), xxhash.xxh3_128_digest(data))


def flist_end(count: int, io_error: bool = False) -> bytes:
    return json.dumps({"io_error": io_error, "count": count}).encode()


ROOT_ROW = (b".", DIR, 0, b"")


def raw_batch(rows: list[tuple[bytes, int, int, bytes]], count: int | None = None,
              paths_len: int | None = None) -> bytes:
    """An uncompressed FLIST payload the encoder cannot make: rows of (path, mode, flags,
    optional-field bytes), with the entry count or the paths' length overridden."""
    n = len(rows)
    paths = b"\0".join(r[0] for r in rows)
    return b"".join([
        struct.pack(">II", n if count is None else count,
                    len(paths) if paths_len is None else paths_len), paths,
        struct.pack(f">{n}I", *(r[1] for r in rows)), struct.pack(f">{n}Q", *[0] * n),
        struct.pack(f">{n}q", *[T_NEW] * n), struct.pack(f">{2 * n}I", *[0] * (2 * n)),
        bytes(r[2] for r in rows), *(r[3] for r in rows)])


def start(sb: Sandbox, options=None, timeout: float = QUICK, spawn: bool = False
          ) -> FakeSender:
    """A server on sb.dest past the opening; spawn: a fresh `python -m fscsync --server`."""
    peer = FakeSender(timeout=timeout, launcher=spawn_server if spawn else sb.launcher)
    assert peer.setup(sb.dest, options), "the server did not accept a plain setup"
    assert peer.start_flist()
    return peer


def play(sb: Sandbox, frames: Iterable[tuple[int, bytes]], options=None, spawn: bool = False
         ) -> Result:
    """Send the frames after the opening, then close the stream and wait for the end."""
    peer = start(sb, options, spawn=spawn)
    for ftype, payload in frames:
        if not peer.send(ftype, payload):
            break
    return peer.finish()


def flist(*entries: Entry) -> tuple[int, bytes]:
    return protocol.FLIST, flist_payload(list(entries))


def assert_clean(result: Result) -> None:
    assert not result.hung, result.describe()
    assert "Traceback" not in result.text, result.describe()
    assert "internal error" not in result.messages(), result.describe()


def assert_refused(result: Result, sb: Sandbox, *words: str, code: int = STREAM) -> None:
    """A protocol error with a message naming the problem, and no harm done."""
    assert_clean(result)
    assert result.code == code, result.describe()
    fatal = " ".join(str(m.get("msg")) for m in result.fatal())
    assert fatal, f"no error message reached the client\n{result.describe()}"
    for w in words:
        assert w in fatal, f"{w!r} not in the error\n{result.describe()}"
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


# ---- path safety: names ------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["data-end", "file"])
@pytest.mark.parametrize("spawn", [True, False], ids=["python-m", "forked"])
def test_a_valid_stream_is_accepted(sb: Sandbox, spawn: bool, framing: str) -> None:
    """The baseline the hostile tests deviate from: the same frames, well formed (with the
    server in a fresh interpreter, and forked as most tests here start it), the file's
    data sent as DATA then DATA_END, or whole in one FILE frame."""
    data = b"new file\n"
    peer = start(sb, spawn=spawn)
    peer.send(*flist(root(), reg(b"new.txt", data)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    if framing == "file":
        peer.send(protocol.FILE, end(1, data) + data)
    else:
        peer.send(protocol.DATA, lit(1, data))
        peer.send(protocol.DATA_END, end(1, data))
    assert peer.wait_type(protocol.NOMORE) is not None
    peer.send(protocol.NOMORE_ACK)
    assert peer.wait_type(protocol.DONE) is not None
    peer.send_json(protocol.FINISHED, {"exit_code": 0})
    assert peer.wait_type(protocol.STATS) is not None
    result = peer.finish()
    assert_clean(result)
    assert result.code == 0, result.describe()


def test_a_receiving_servers_stats_have_the_senders_shape(sb: Sandbox) -> None:
    """STATS, the receiving server's last frame, holds its counters and exit code flat as
    the sender's FINISHED does, and one reader takes both (protocol 4; 3 nested them)."""
    data = b"new file\n"
    peer = start(sb)
    peer.send(*flist(root(), reg(b"new.txt", data)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.FILE, end(1, data) + data)
    assert peer.wait_type(protocol.NOMORE) is not None
    peer.send(protocol.NOMORE_ACK)
    assert peer.wait_type(protocol.DONE) is not None
    peer.send_json(protocol.FINISHED, final_message(Stats(), 0))
    payload = peer.wait_type(protocol.STATS)
    assert_clean(peer.finish())
    counters, code = read_final(json.loads(payload))
    assert code == 0
    assert (counters.files, counters.created, counters.total_size) == (
        {"reg": 1, "dir": 1}, {"reg": 1}, len(data))
    assert (sb.dest / "new.txt").read_bytes() == data
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


@pytest.mark.parametrize("spawn", [True, False], ids=["python-m", "forked"])
def test_absolute_path_is_refused(sb: Sandbox, spawn: bool) -> None:
    target = bytes(sb.outside / "pwned")
    result = play(sb, [flist(root(), reg(target, b"x"))], spawn=spawn)
    assert_refused(result, sb, "unsafe path")
    assert not os.path.lexists(target)


@pytest.mark.parametrize("path", [b"..", b"../outside/pwned", b"sub/../../outside/pwned",
                                  b"sub/..", b"sub/../keep.txt"])
def test_dotdot_component_is_refused(sb: Sandbox, path: bytes) -> None:
    result = play(sb, [flist(root(), Entry(b"sub", DIR, 0, T_OLD), reg(path, b"x"))])
    assert_refused(result, sb, "unsafe path")


@pytest.mark.parametrize("path", [b"sub//x", b"sub/", b"./x", b"sub/./x", b"/"])
def test_empty_or_dot_component_is_refused(sb: Sandbox, path: bytes) -> None:
    result = play(sb, [flist(root(), Entry(b"sub", DIR, 0, T_OLD), reg(path, b"x"))])
    assert_refused(result, sb, "unsafe path")


UNSAFE_PATHS = [b"..", b"../x", b"a/../b", b"a/..", b"./x", b"a/./b", b"a/.", b"/",
                b"/a", b"a/", b"a//b", b"", b"x\x00y", b"\x00", b"a" * 4097]
SAFE_NAMES = [b"...", b".a", b"a.", b"..b", b"b..", b"a/.../b", b"a/.b/c.", b"x" * 4096]


@pytest.mark.parametrize("bad", UNSAFE_PATHS, ids=repr)
def test_batch_path_check_refuses_what_the_single_check_does(bad: bytes) -> None:
    """The receiver checks a file-list batch at once; a bad path anywhere in it, between
    good ones, is refused with that path in the message, as check_path refuses it."""
    with pytest.raises(ProtocolError, match="unsafe path"):
        check_path(bad)
    batch = [b"d/f%d" % i for i in range(50)] + [bad] + SAFE_NAMES
    with pytest.raises(ProtocolError, match="unsafe path") as refused:
        check_paths(batch)
    assert repr(bad[:100]) in str(refused.value)


def test_batch_path_check_passes_good_names_and_the_root() -> None:
    for path in SAFE_NAMES:
        check_path(path)
    check_paths(SAFE_NAMES)
    check_paths([b".", *SAFE_NAMES])
    check_paths([])


@pytest.mark.parametrize("path", [b"x\x00y", b"sub\x00/../../outside/pwned", b"\x00"])
def test_nul_byte_in_name_is_refused(sb: Sandbox, path: bytes) -> None:
    result = play(sb, [flist(root(), Entry(b"sub", DIR, 0, T_OLD), reg(path, b"x"))])
    assert_refused(result, sb)


def test_empty_path_is_refused(sb: Sandbox) -> None:
    result = play(sb, [flist(root(), reg(b"", b"x"))])
    assert_refused(result, sb)


@pytest.mark.parametrize("parent", ["missing", "regular", "later"])
def test_entry_before_its_directory_is_refused(sb: Sandbox, parent: str) -> None:
    """d/x needs a directory entry d earlier in the list: not missing, not a file, not
    after it."""
    entries = [root()]
    if parent == "regular":
        entries.append(reg(b"d", b"file"))
    entries.append(reg(b"d/x", b"x"))
    if parent == "later":
        entries.append(Entry(b"d", DIR, 0, T_NEW))
    result = play(sb, [flist(*entries)])
    assert_refused(result, sb, "before its directory")
    assert not (sb.dest / "d").exists()


@pytest.mark.parametrize("target", ["absolute", "relative", "dotdot"])
@pytest.mark.parametrize("child", ["file", "dir", "symlink"])
def test_symlink_in_the_stream_cannot_be_a_parent(sb: Sandbox, target: str,
                                                  child: str) -> None:
    """`a -> OUTSIDE` followed by `a/x`: refused because a is not a directory entry,
    whether a/x is a file, a directory or another symlink."""
    link = {"absolute": bytes(sb.outside), "relative": b"../outside",
            "dotdot": b"../.."}[target]
    kid = {"file": reg(b"a/x", b"x"), "dir": Entry(b"a/x", DIR, 0, T_NEW),
           "symlink": Entry(b"a/x", LNK, 3, T_NEW, target=b"/etc")}[child]
    # The symlink goes in an earlier frame, so the generator may already have made it.
    result = play(sb, [flist(root(), Entry(b"a", LNK, len(link), T_NEW, target=link)),
                       flist(kid)])
    assert_refused(result, sb, "before its directory")
    assert not (sb.outside / "x").exists()


def _serve(peer: FakeSender, files: dict[int, bytes]) -> None:
    """Answer the requests for `files` (index -> content) whole, then end the run."""
    for idx, data in files.items():
        want = struct.pack(">I", idx)
        got = peer.wait_for(lambda t, p, want=want: (t == protocol.REQ and p[:4] == want)
                            or t == protocol.NOMORE)
        if got is not None and got[0] == protocol.REQ:
            if data:
                peer.send(protocol.DATA, lit(idx, data))
            peer.send(protocol.DATA_END, end(idx, data))
    if peer.wait_type(protocol.NOMORE) is not None:
        peer.send(protocol.NOMORE_ACK)
    if peer.wait_type(protocol.DONE) is not None:
        peer.send_json(protocol.FINISHED, {"exit_code": 0})
        peer.wait_type(protocol.STATS)


def _link_to(sb: Sandbox) -> Entry:
    return Entry(b"a", LNK, 0, T_NEW, target=bytes(sb.outside))


@pytest.mark.parametrize("order", ["link-dir-file", "dir-link-file", "dir-file-link-file"])
def test_duplicate_name_symlink_and_directory(sb: Sandbox, order: str) -> None:
    """The same name twice, once a symlink out of the tree and once a directory (the
    class of rsync's 2024 traversal bugs): whatever the receiver makes of it, no later
    file lands outside and the previous files stay."""
    link, d = _link_to(sb), Entry(b"a", DIR, 0, T_NEW)
    if order == "link-dir-file":
        entries = [root(), link, d, reg(b"a/x", b"x1")]
    elif order == "dir-link-file":
        entries = [root(), d, link, reg(b"a/x", b"x1")]
    else:
        entries = [root(), d, reg(b"a/y", b"y1"), link, reg(b"a/x", b"x1")]
    files = {i: e.path[-1:] + b"1" for i, e in enumerate(entries) if e.is_reg}
    peer = start(sb)
    for e in entries:  # one frame each: the generator may act on each before the next
        peer.send(*flist(e))
    peer.send(protocol.FLIST_END, flist_end(len(entries)))
    _serve(peer, files)
    result = peer.finish()
    assert_clean(result)
    assert result.code in (0, STREAM, PARTIAL), result.describe()
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    assert not (sb.outside / "x").exists() and not (sb.outside / "y").exists()
    a = sb.dest / "a"
    if (a / "x").exists():
        assert a.is_dir() and not a.is_symlink(), "a/x was written through a symlink"


def test_symlink_already_in_the_destination_is_not_followed(sb: Sandbox) -> None:
    """dest/a -> OUTSIDE exists; the stream sends directory a and file a/x. rsync
    (without --keep-dirlinks) replaces the symlink by a real directory: x lands inside."""
    os.symlink(sb.outside, sb.dest / "a")
    sb.watch()
    peer = start(sb)
    peer.send(*flist(root(), Entry(b"a", DIR, 0, T_NEW), reg(b"a/x", b"inside")))
    peer.send(protocol.FLIST_END, flist_end(3))
    _serve(peer, {2: b"inside"})
    result = peer.finish()
    assert_clean(result)
    assert result.code == 0, result.describe()
    sb.assert_nothing_outside()
    assert not (sb.outside / "x").exists()
    assert (sb.dest / "a").is_dir() and not (sb.dest / "a").is_symlink()
    assert (sb.dest / "a/x").read_bytes() == b"inside"


def test_symlink_in_a_deeper_destination_directory_is_not_followed(sb: Sandbox) -> None:
    """dest/sub exists (a real directory, listed in the stream unchanged); dest/sub/a ->
    OUTSIDE; the stream sends sub/a as a directory and sub/a/x."""
    os.symlink(b"../../outside", sb.dest / "sub/a")
    os.utime(sb.dest / "sub", ns=(T_OLD, T_OLD))
    sb.watch()
    peer = start(sb)
    peer.send(*flist(root(), Entry(b"sub", DIR, 0, T_OLD), Entry(b"sub/a", DIR, 0, T_NEW),
                     reg(b"sub/a/x", b"inside")))
    peer.send(protocol.FLIST_END, flist_end(4))
    _serve(peer, {3: b"inside"})
    result = peer.finish()
    assert_clean(result)
    assert result.code == 0, result.describe()
    sb.assert_nothing_outside()
    assert (sb.dest / "sub/a/x").read_bytes() == b"inside"
    assert not (sb.dest / "sub/a").is_symlink()


@pytest.mark.parametrize("inplace", [False, True], ids=["temp", "inplace"])
def test_file_over_a_symlink_replaces_the_link(sb: Sandbox, inplace: bool) -> None:
    """dest/f -> OUTSIDE/canary.txt; the stream sends a regular file f: the symlink is
    replaced, the canary is never opened for writing (also with --inplace)."""
    os.symlink(sb.outside / "canary.txt", sb.dest / "f")
    sb.watch()
    peer = start(sb, default_options(inplace=inplace))
    peer.send(*flist(root(), reg(b"f", b"replaced")))
    peer.send(protocol.FLIST_END, flist_end(2))
    _serve(peer, {1: b"replaced"})
    result = peer.finish()
    assert_clean(result)
    assert result.code == 0, result.describe()
    sb.assert_nothing_outside()
    assert (sb.dest / "f").read_bytes() == b"replaced" and not (sb.dest / "f").is_symlink()


def test_attributes_of_an_existing_symlink_are_not_applied_to_its_target(sb: Sandbox
                                                                         ) -> None:
    """dest/l -> OUTSIDE/canary.txt is up to date (same target); the stream asks for
    another mode, owner and time on l: the canary keeps all of its own."""
    target = bytes(sb.outside / "canary.txt")
    os.symlink(target, sb.dest / "l")
    sb.watch()
    peer = start(sb)
    peer.send(*flist(root(), Entry(b"l", stat.S_IFLNK | 0o777, len(target), T_NEW,
                                   uid=1234, gid=2345, target=target)))
    peer.send(protocol.FLIST_END, flist_end(2))
    _serve(peer, {})
    result = peer.finish()
    assert_clean(result)
    assert result.code == 0, result.describe()
    sb.assert_nothing_outside()


# ---- links, requests and data the receiver never asked for -------------------------------


@pytest.mark.parametrize("link", [2, 3, 99, 0xFFFFFFFF], ids=["self", "later", "far", "max"])
def test_hard_link_to_a_later_or_missing_entry_is_refused(sb: Sandbox, link: int) -> None:
    entries = [root(), reg(b"a", b"a"), reg(b"h", link=link), reg(b"z", b"z")]
    result = play(sb, [flist(*entries)])
    assert_refused(result, sb, "hard link")
    assert not (sb.dest / "h").exists()


def test_hard_link_from_a_directory_entry_is_refused(sb: Sandbox) -> None:
    entries = [root(), reg(b"a", b"a"), Entry(b"d", DIR, 0, T_NEW, link=1)]
    result = play(sb, [flist(*entries)])
    assert_refused(result, sb, "hard link")


@pytest.mark.parametrize("what", ["data-dir", "data-up-to-date", "data-unknown", "end-dir",
                                  "end-twice", "sigreq-unknown"])
def test_data_for_an_entry_never_requested_is_refused(sb: Sandbox, what: str) -> None:
    """Index 1 is up to date (keep.txt as it is), 2 a new file, 3 a directory; 9 does
    not exist. The receiver asked only for 2."""
    entries = [root(), Entry(b"keep.txt", REG, len(KEEP), T_OLD), reg(b"new", b"new"),
               Entry(b"sub", DIR, 0, T_OLD)]
    peer = start(sb)
    peer.send(*flist(*entries))
    peer.send(protocol.FLIST_END, flist_end(len(entries)))
    assert peer.wait_request(2), peer.finish().describe()
    if what == "data-dir":
        peer.send(protocol.DATA, lit(3, b"evil"))
    elif what == "data-up-to-date":
        peer.send(protocol.DATA, lit(1, b"evil"))
    elif what == "data-unknown":
        peer.send(protocol.DATA, lit(9, b"evil"))
    elif what == "end-dir":
        peer.send(protocol.DATA_END, end(3, b""))
    elif what == "end-twice":
        peer.send(protocol.DATA, lit(2, b"new"))
        peer.send(protocol.DATA_END, end(2, b"new"))
        peer.send(protocol.DATA_END, end(2, b"new"))
    else:
        peer.send(protocol.SIGREQ, delta.encode_sigreq(9, [0]))
    result = peer.finish()
    assert_refused(result, sb, "not requested" if what != "sigreq-unknown" else "")
    assert (sb.dest / "sub").is_dir()


def test_copy_op_without_a_basis_is_refused(sb: Sandbox) -> None:
    """A new file is requested whole (there is no old copy): a copy op has nothing to copy
    from. Refused, and the half-built temp file is removed."""
    peer = start(sb)
    peer.send(*flist(root(), reg(b"new", b"x" * 8192)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, lit(1, b"x" * 4096) + copy_op(1, 4096, 4096)[4:])
    result = peer.finish()
    assert_refused(result, sb, "basis")
    assert not (sb.dest / "new").exists()
    assert sb.new_entries() == [], "the temp file was left behind"


def test_copy_op_past_the_end_of_the_basis_fails_the_file(sb: Sandbox) -> None:
    """keep.txt is requested with its old copy as the basis; copy ops beyond its end (and
    of absurd length) cannot build the announced file: it fails (after the retry the
    receiver may ask for, which this sender cannot serve), never its old copy."""
    peer = start(sb)
    peer.send(*flist(root(), Entry(b"keep.txt", REG, 8192, T_NEW)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, copy_op(1, 4096, 4096) + copy_op(1, 1 << 40, 1 << 62)[4:])
    peer.send(protocol.DATA_END, end(1, b"y" * 8192))
    retry = peer.wait_for(lambda t, p: t == protocol.REQ and p[:4] == b"\0\0\0\1", start=7)
    if retry is not None and len(peer.requested()) > 1:
        peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_FAILED, 0, bytes(16)))
    _serve(peer, {})
    result = peer.finish()
    assert_clean(result)
    # This sender reports its own failure (END_FAILED) as a real one does, so the server
    # may end with 0: the client's own error decides the run's code.
    assert result.code in (0, PARTIAL, STREAM), result.describe()
    assert not (sb.dest / "keep.txt").read_bytes().startswith(b"y")
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


# ---- bounded input: frames and counts ----------------------------------------------------


def test_data_end_size_shorter_than_the_data_is_not_installed(sb: Sandbox) -> None:
    """`f` arrives as "abc" with the digest of "abc", but the end frame says 1 byte: the
    file would be cut to "a" after the digest was checked over "abc". What is installed
    must be what was verified: never "a"."""
    peer = start(sb)
    peer.send(*flist(root(), reg(b"f", b"abc")))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, lit(1, b"abc"))
    peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_OK, 1,
                                                  xxhash.xxh3_128_digest(b"abc")))
    if peer.wait_for(lambda t, p: t == protocol.REQ and p[:4] == b"\0\0\0\1"
                     and len(peer.requested()) > 1, timeout=1):
        peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_FAILED, 0, bytes(16)))
    _serve(peer, {})
    result = peer.finish()
    assert_clean(result)
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    f = sb.dest / "f"
    assert not f.exists() or f.read_bytes() == b"abc", (
        f"installed {f.read_bytes()!r}, not the verified content\n{result.describe()}")


def _file_frame(idx: int, data: bytes, size: int | None = None,
                status: int = delta.END_OK) -> bytes:
    """A FILE payload: an end record (announcing `size`, by default the data's) and data."""
    size = len(data) if size is None else size
    return delta.encode_end(idx, status, size, xxhash.xxh3_128_digest(data)) + data


@pytest.mark.parametrize("case", ["longer", "shorter", "status", "over-the-limit", "cut"])
def test_file_frame_that_does_not_hold_what_it_announces_is_refused(sb: Sandbox,
                                                                     case: str) -> None:
    """A FILE frame's end record must announce exactly the data after it, as a good
    end (failures go as DATA_END), for a small file: anything else is a protocol error,
    and nothing of it is installed."""
    data = b"abc" * 1000
    payload = {
        "longer": _file_frame(1, data, size=len(data) + 1),
        "shorter": _file_frame(1, data, size=len(data) - 1),
        "status": _file_frame(1, data, status=delta.END_FAILED),
        "over-the-limit": _file_frame(1, bytes(delta.SMALL_FILE + 1)),
        "cut": _file_frame(1, data)[:20],
    }[case]
    peer = start(sb)
    peer.send(*flist(root(), reg(b"f", data)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.FILE, payload)
    result = peer.finish()
    assert_refused(result, sb, "whole-file frame" if case != "cut" else "malformed")
    assert not (sb.dest / "f").exists()
    assert sb.new_entries() == [], "the temp file was left behind"


@pytest.mark.parametrize("when", ["unrequested", "after-data", "delta-requested"])
def test_file_frame_out_of_turn_is_refused(sb: Sandbox, when: str) -> None:
    """A FILE frame answers one whole-file request and nothing else: not an entry nobody
    asked for, not one whose data has begun, not one the receiver asked a delta for
    (keep.txt, whose old copy is the basis). keep.txt stays as it was."""
    data = b"y" * 100
    peer = start(sb)
    if when == "delta-requested":
        peer.send(*flist(root(), Entry(b"keep.txt", REG, len(data), T_NEW)))
    else:
        peer.send(*flist(root(), reg(b"f", data), reg(b"g", data)))
    peer.send(protocol.FLIST_END, flist_end(2 if when == "delta-requested" else 3))
    if when == "unrequested":
        peer.send(protocol.FILE, _file_frame(5, data))
    else:
        assert peer.wait_request(1), peer.finish().describe()
        if when == "after-data":
            peer.send(protocol.DATA, lit(1, data[:10]))
        peer.send(protocol.FILE, _file_frame(1, data))
    result = peer.finish()
    assert_refused(result, sb, "entry")
    assert not (sb.dest / "f").exists()
    assert sb.new_entries() == [], "the temp file was left behind"


def test_file_frame_with_a_wrong_digest_is_asked_again_then_fails(sb: Sandbox) -> None:
    """A FILE frame whose data does not hash to its digest is not installed: the receiver
    asks once more (whole), and a second bad answer fails the file, exit 23."""
    data = b"the real content\n"
    bad = delta.encode_end(1, delta.END_OK, len(data), xxhash.xxh3_128_digest(b"x")) + data
    peer = start(sb)
    peer.send(*flist(root(), reg(b"f", data)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.FILE, bad)
    retry = peer.wait_for(lambda t, p: t == protocol.REQ and p[:4] == b"\0\0\0\1"
                          and len(peer.requested()) > 1, start=7)
    assert retry is not None, peer.finish().describe()
    assert delta.Request.decode(retry[1]).retry
    peer.send(protocol.FILE, bad)
    _serve(peer, {})
    result = peer.finish()
    assert_clean(result)
    assert result.code == PARTIAL, result.describe()
    assert "verification" in result.messages(), result.describe()
    assert not (sb.dest / "f").exists()
    assert sb.new_entries() == [], "the temp file was left behind"
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1])
def test_data_end_size_out_of_range_is_refused_cleanly(sb: Sandbox, size: int) -> None:
    """An end frame whose size no file can have (>= 2**63): a clean error, not an
    exception from deep inside the writer."""
    peer = start(sb)
    peer.send(*flist(root(), reg(b"f", b"abc")))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, lit(1, b"abc"))
    peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_OK, size, bytes(16)))
    peer.wait_for(lambda t, p: t in (protocol.FATAL, protocol.LOG), timeout=2, start=7)
    result = peer.finish()
    assert_clean(result)
    assert result.code in (STREAM, PARTIAL), result.describe()
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    assert not (sb.dest / "f").exists()


def test_data_end_announcing_a_huge_size_does_not_hang(sb: Sandbox) -> None:
    """The list says `f` has 3 bytes and 3 bytes arrive, then the end frame claims 1 TiB.
    A 29-byte frame must not make the receiver hash a terabyte of holes (minutes of CPU
    per file, again for every retry): the file fails (or the run stops) within seconds,
    and nothing is installed."""
    peer = start(sb)
    peer.send(*flist(root(), reg(b"f", b"abc")))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, lit(1, b"abc"))
    seen = len(peer.frames)
    peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_OK, 1 << 40, bytes(16)))
    # Whatever it decides (an error, a retry request, a warning), it must say so soon.
    answered = peer.wait_for(lambda t, p: t in (protocol.FATAL, protocol.LOG, protocol.REQ),
                             timeout=QUICK, start=seen)
    result = peer.finish()
    assert answered is not None, "no reaction to the end frame within seconds\n" + (
        result.describe())
    assert_clean(result)
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    assert not (sb.dest / "f").exists()


@pytest.mark.parametrize("length", [protocol.MAX_FRAME + 1, 0xFFFFFFFF])
@pytest.mark.parametrize("ftype", [protocol.FLIST, protocol.DATA, 0xEE])
def test_oversized_frame_is_refused_before_reading_it(sb: Sandbox, length: int,
                                                      ftype: int) -> None:
    """Only the header is sent: the server must not wait for (or allocate) the payload."""
    peer = start(sb)
    peer.send_raw(struct.pack(">BI", ftype, length) + b"\0" * 100)
    got = peer.wait_for(lambda t, p: t == protocol.FATAL, timeout=QUICK)
    result = peer.finish()
    assert got is not None, "no error before the stream was closed\n" + result.describe()
    assert_refused(result, sb, "exceeds")


@pytest.mark.parametrize("cut", ["header", "payload", "entry", "data"])
def test_truncated_frame_then_eof(sb: Sandbox, cut: str) -> None:
    """The stream stops in the middle of a frame: exit 12, quickly."""
    peer = start(sb)
    if cut == "header":
        peer.send_raw(struct.pack(">BI", protocol.FLIST, 300)[:3])
    elif cut == "payload":
        peer.send_raw(frame(protocol.FLIST, flist_payload([root(), reg(b"f", b"abc")]))[:30])
    elif cut == "entry":
        peer.send(*flist(root(), reg(b"f", b"abc")))
        peer.send_raw(frame(protocol.FLIST_END, flist_end(2))[:-4])
    else:
        peer.send(*flist(root(), reg(b"f", b"0123456789" * 100)))
        peer.send(protocol.FLIST_END, flist_end(2))
        assert peer.wait_request(1)
        peer.send_raw(frame(protocol.DATA, lit(1, b"0123456789" * 100))[:500])
    result = peer.finish()
    assert_clean(result)
    assert result.code == STREAM, result.describe()
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    assert not (sb.dest / "f").exists()
    if cut == "data":
        assert sb.new_entries() == [], "the temp file of the cut file was left behind"


def _xattr_row(count: int, pairs: bytes) -> tuple[bytes, int, int, bytes]:
    return (b"x", REG, F_XATTRS, struct.pack(">H", count) + pairs)


@pytest.mark.parametrize("case", [
    "path-past-end", "target-past-end", "link-past-end", "xattr-count-past-end",
    "xattr-value-past-end", "half-header", "flags-without-their-fields", "path-too-long",
    "empty-path", "more-paths-than-entries", "encdata-too-long", "trailing-garbage"])
def test_inconsistent_lengths_inside_a_file_list_frame(sb: Sandbox, case: str) -> None:
    plain = [ROOT_ROW, (b"f", REG, 0, b"")]
    raw = {
        "path-past-end": lambda: raw_batch(plain, paths_len=200),
        "target-past-end": lambda: raw_batch(
            [ROOT_ROW, (b"l", LNK, F_TARGET, struct.pack(">H", 500) + b"t")]),
        "link-past-end": lambda: raw_batch([ROOT_ROW, (b"h", REG, F_LINK, b"\0\0")]),
        "xattr-count-past-end": lambda: raw_batch(
            [ROOT_ROW, _xattr_row(5, struct.pack(">BI", 6, 1) + b"user.a" + b"v")]),
        "xattr-value-past-end": lambda: raw_batch(
            [ROOT_ROW, _xattr_row(1, struct.pack(">BI", 6, 60000) + b"user.a" + b"v")]),
        "half-header": lambda: raw_batch(plain)[:-10],
        "flags-without-their-fields": lambda: raw_batch([ROOT_ROW, (b"f", REG, 0x80, b"")]),
        "path-too-long": lambda: raw_batch([ROOT_ROW, (b"p" * 5000, REG, 0, b"")]),
        "empty-path": lambda: raw_batch([ROOT_ROW, (b"", REG, 0, b"")]),
        "more-paths-than-entries": lambda: raw_batch(plain, count=1)[:-29],
        "encdata-too-long": lambda: raw_batch(
            [ROOT_ROW, (b"e", REG, 4, struct.pack(">H", 60000) + b"e" * 60000)]),
        "trailing-garbage": lambda: raw_batch(plain) + b"\x00\x01",
    }[case]()
    result = play(sb, [(protocol.FLIST, flist_payload_raw(raw))])
    assert_refused(result, sb)
    assert not (sb.dest / "f").exists() and not (sb.dest / "x").exists()


def test_hand_made_file_list_frame_decodes() -> None:
    """raw_batch itself makes the frames the encoder makes, so the refusals above are
    refusals of what each case breaks."""
    raw = raw_batch([ROOT_ROW, (b"f", REG, 0, b"")])
    assert raw == encode_entries([root(), reg(b"f", b"")])
    assert [e.path for e in flist_module.decode_entries(raw)] == [b".", b"f"]


@pytest.mark.parametrize("count", [MAX_XATTRS + 1, 0xFFFF])
def test_huge_xattr_count_is_refused_before_reading(sb: Sandbox, count: int) -> None:
    raw = raw_batch([ROOT_ROW, _xattr_row(count, struct.pack(">BI", 6, 1) + b"user.a" + b"v")])
    result = play(sb, [(protocol.FLIST, flist_payload_raw(raw))], default_options(xattrs=True))
    assert_refused(result, sb, "xattrs")


@pytest.mark.skipif(not FLIST_COMPRESSED, reason="file-list frames are not compressed")
@pytest.mark.parametrize("case", ["bomb", "corrupt", "truncated", "trailing"])
def test_compressed_file_list_frame_is_bounded(sb: Sandbox, case: str) -> None:
    """A 4 MB frame may not inflate into gigabytes (refused past the batch limit, before
    the memory is taken), and a corrupt or cut compressed frame is a protocol error."""
    if case == "bomb":
        c = zlib.compressobj(1)
        limit = getattr(flist_module, "MAX_BATCH", 16 << 20)
        payload = c.compress(encode_entries([root()])) + b"".join(
            c.compress(bytes(1 << 20)) for _ in range(limit // (1 << 20) + 4)) + c.flush()
    elif case == "corrupt":
        payload = b"\x78\x01" + bytes(range(40))
    elif case == "truncated":
        payload = flist_payload([root(), reg(b"f", b"")])[:-3]
    else:
        payload = flist_payload([root()]) + b"more"
    result = play(sb, [(protocol.FLIST, payload)])
    assert_refused(result, sb)


def _server_under_memory_limit(args=(), env=None, cwd=None):
    """`python -m fscsync --server` with 256 MiB of address space (prlimit)."""
    proc = subprocess.Popen(
        ["prlimit", f"--as={256 << 20}", "--", sys.executable, "-m", "fscsync", "--server",
         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd, env={**os.environ, **SERVER_ENV, **(env or {})})
    return _Popened(proc)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) missing")
def test_compressed_stream_is_inflated_a_step_at_a_time(sb: Sandbox) -> None:
    """With -z, 1 MB on the wire that inflates to 1 GiB of zeros is refused as what it
    is (zeros are no frame the server expects), in bounded steps: under an address-space
    limit far below that gigabyte, with no MemoryError."""
    peer = FakeSender(timeout=QUICK, launcher=_server_under_memory_limit)
    assert peer.setup(sb.dest, compress="zlib"), "the server did not accept -z"
    c = zlib.compressobj(9)
    # After a full flush the compressor starts afresh, so every further MiB of zeros
    # compresses to the same bytes: the bomb is built without deflating a gigabyte.
    first = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    bomb = first + again * 1023
    assert len(bomb) < 2 << 20
    peer.send_raw(bomb)
    result = peer.finish()
    assert result.code == STREAM, result.describe()
    assert "Traceback" not in result.text and "MemoryError" not in result.text, (
        result.describe())
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


def test_file_list_shorter_than_announced_deletes_nothing(sb: Sandbox) -> None:
    """FLIST_END says 5 entries (as the real sender counts them), 2 arrived: the list is
    inconsistent (a frame was lost or forged). Finishing the run with --delete would
    delete what the short list lacks, the previous copy. A protocol error instead;
    keep.txt and sub/ stay. (The root's names come first, as a sender announces them
    for --delete, all of them: the frames lost are the entries'.)"""
    peer = start(sb, default_options(delete=True))
    peer.send(protocol.DIRNAMES, *dirnames.encode(
        dirnames.DirNames(b".", [b"keep.txt", b"new", b"sub"])))
    peer.send(*flist(root(), reg(b"new", b"")))
    peer.send(protocol.FLIST_END, flist_end(5))
    _serve(peer, {1: b""})
    result = peer.finish()
    assert (sb.dest / "keep.txt").exists(), "the previous copy was deleted\n" + (
        result.describe())
    assert_refused(result, sb, "count")


@pytest.mark.parametrize("case", ["flist-after-end", "second-flist-start", "unknown-type",
                                  "req-to-receiver", "setup-again"])
def test_frame_out_of_place_is_refused(sb: Sandbox, case: str) -> None:
    frames = [flist(root())]
    if case == "flist-after-end":
        frames += [(protocol.FLIST_END, flist_end(1)), flist(reg(b"late", b""))]
    elif case == "second-flist-start":
        frames += [(protocol.FLIST_START, b'{"single_file": false}')]
    elif case == "unknown-type":
        frames += [(0xEE, b"????")]
    elif case == "req-to-receiver":
        frames += [(protocol.REQ, delta.Request(0, delta.WHOLE).encode())]
    else:
        frames += [(protocol.SETUP, b"{}")]
    result = play(sb, frames)
    assert_refused(result, sb, "unexpected")
    assert not (sb.dest / "late").exists()


def test_end_of_run_before_the_requested_data_is_refused(sb: Sandbox) -> None:
    """The receiver asked for `new`; the sender sends half of it, acknowledges NOMORE and
    says FINISHED without the file's end and before the receiver said DONE. A protocol
    error: the half-built temp file is removed, nothing is installed, the code is not 0."""
    peer = start(sb)
    peer.send(*flist(root(), reg(b"new", b"0123456789")))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    peer.send(protocol.DATA, lit(1, b"01234"))
    assert peer.wait_type(protocol.NOMORE) is not None
    peer.send(protocol.NOMORE_ACK)
    peer.send_json(protocol.FINISHED, {"exit_code": 0})
    peer.wait_type(protocol.STATS, timeout=1)
    result = peer.finish()
    assert_refused(result, sb)
    assert not (sb.dest / "new").exists()
    assert sb.new_entries() == [], "the temp file of the unfinished file was left behind"


@pytest.mark.parametrize("last", [protocol.NOMORE_ACK, protocol.FINISHED])
def test_end_of_run_before_the_end_of_the_file_list_is_refused(sb: Sandbox,
                                                                last: int) -> None:
    """NOMORE_ACK (for a NOMORE never sent) and FINISHED while the file list is still open:
    the receiver must end with a protocol error at once, not wait for its generator
    forever."""
    peer = start(sb)
    peer.send(*flist(root(), Entry(b"d", DIR, 0, T_NEW)))
    peer.send(protocol.NOMORE_ACK)
    if last == protocol.FINISHED:
        peer.wait_type(protocol.DONE, timeout=1)
        peer.send_json(protocol.FINISHED, {"exit_code": 0})
    refused = peer.wait_for(lambda t, p: t == protocol.FATAL, timeout=QUICK)
    result = peer.finish()
    assert refused is not None, "no protocol error while the stream was open\n" + (
        result.describe())
    assert_refused(result, sb, "unexpected")


def test_protocol_error_while_the_generator_works_leaves_no_temp_entry(sb: Sandbox) -> None:
    """3000 symlinks in one batch keep the generator busy; a bad frame arrives meanwhile.
    The server must stop its generator before it exits: a process ending between the
    generator's symlink(temp) and rename leaves `.lNNNNN.~fscsync~XXXXXX` behind
    (seen in about a third of the runs; ten runs here)."""
    links = [Entry(b"l%05d" % j, LNK, 1, T_NEW, target=b"t") for j in range(3000)]
    left = []
    for attempt in range(10):
        dest = sb.base / f"busy{attempt}"
        dest.mkdir()
        # 3000 symlinks take seconds on a loaded machine: a generous hang limit.
        peer = FakeSender(timeout=6 * QUICK, launcher=sb.launcher)
        assert peer.setup(dest) and peer.start_flist()
        peer.send(*flist(root(), *links))
        peer.wait_for(lambda t, p: False, timeout=0.03)
        peer.send(0xEE, b"")
        result = peer.finish()
        assert_clean(result)
        assert result.code == STREAM, result.describe()
        left += [f"{dest.name}/{n}" for n in os.listdir(dest) if "~fscsync~" in n]
        shutil.rmtree(dest)
    assert not left, f"temp entries left after a protocol error: {left}"


@pytest.mark.parametrize("kind", ["blockdev", "chardev", "fifo", "symlink"])
def test_entries_of_a_kind_the_run_did_not_ask_for_are_not_made(sb: Sandbox,
                                                                kind: str) -> None:
    """Without -D the receiver makes no device or fifo, without -l no symlink, whatever
    the sender lists (rsync skips them on the receiving side too): a sender must not
    plant /dev/sda's twin in a mirror."""
    entry = {
        "blockdev": Entry(b"n", stat.S_IFBLK | 0o666, 0, T_NEW, rdev=os.makedev(8, 0)),
        "chardev": Entry(b"n", stat.S_IFCHR | 0o666, 0, T_NEW, rdev=os.makedev(1, 3)),
        "fifo": Entry(b"n", stat.S_IFIFO | 0o666, 0, T_NEW),
        "symlink": Entry(b"n", LNK, 4, T_NEW, target=b"/etc"),
    }[kind]
    opts = default_options(devices=False, specials=False, links=False)
    peer = start(sb, opts)
    peer.send(*flist(root(), entry))
    peer.send(protocol.FLIST_END, flist_end(2))
    _serve(peer, {})
    result = peer.finish()
    assert_clean(result)
    sb.assert_nothing_outside()
    sb.assert_previous_intact()
    assert not os.path.lexists(sb.dest / "n"), (
        f"a {kind} the run did not ask for was made\n{result.describe()}")


# ---- --restrict-to ---------------------------------------------------------------------


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """tmp/allowed (with a tree), tmp/other, tmp/allowed-evil, and symlinks out."""
    (tmp_path / "allowed/tree/sub").mkdir(parents=True)
    (tmp_path / "allowed/tree/f").write_bytes(b"inside\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/secret").write_bytes(b"secret\n")
    (tmp_path / "allowed-evil").mkdir()
    os.symlink(tmp_path / "other", tmp_path / "allowed/out")
    os.symlink("../../other", tmp_path / "allowed/tree/rel-out")
    return tmp_path


def _restricted_setup(area: Path, launcher, role: str, paths: list[str], options=None
                      ) -> tuple[bool, Result]:
    peer = FakeSender(["--restrict-to", str(area / "allowed")], timeout=QUICK,
                      launcher=launcher)
    ready = peer.setup(b"", options, role=role, paths=[os.fsencode(p) for p in paths])
    return ready, peer.finish()


OUTSIDE_PATHS = ["{a}/other/x", "{a}/allowed/../other/x", "{a}/allowed/tree/../../other",
                 "{a}/allowed/out/x", "{a}/allowed/out", "{a}/allowed/tree/rel-out/x",
                 "{a}/allowed-evil/x", "/", "other/x"]


@pytest.mark.parametrize("role", ["receiver", "sender"])
@pytest.mark.parametrize("path", OUTSIDE_PATHS)
def test_restrict_to_refuses_paths_outside(area: Path, launcher, role: str, path: str
                                           ) -> None:
    ready, result = _restricted_setup(area, launcher, role, [path.format(a=area)])
    assert not ready
    assert_clean(result)
    assert result.code == FILE_SELECT, result.describe()
    fatal = " ".join(str(m.get("msg")) for m in result.fatal())
    assert "outside the allowed tree" in fatal, result.describe()
    assert sorted(os.listdir(area / "other")) == ["secret"]


@pytest.mark.parametrize("role", ["receiver", "sender"])
@pytest.mark.parametrize("path", ["{a}/allowed", "{a}/allowed/tree", "{a}/allowed/tree/f",
                                  "{a}/allowed/new-dir/", "{a}/allowed/tree/sub/../f"])
def test_restrict_to_allows_paths_inside(area: Path, launcher, role: str, path: str) -> None:
    ready, result = _restricted_setup(area, launcher, role, [path.format(a=area)])
    assert ready, result.describe()
    assert_clean(result)


def test_restrict_to_refuses_any_outside_source_among_several(area: Path, launcher) -> None:
    ready, result = _restricted_setup(area, launcher, "sender", [f"{area}/allowed/tree/f",
                                                       f"{area}/other/secret"])
    assert not ready
    assert result.code == FILE_SELECT, result.describe()


@pytest.mark.parametrize("temp_dir", ["{a}/other", "../../other", "../out"])
def test_restrict_to_refuses_a_temp_dir_outside(area: Path, launcher, temp_dir: str) -> None:
    opts = default_options(temp_dir=os.fsencode(temp_dir.format(a=area)))
    ready, result = _restricted_setup(area, launcher, "receiver", [f"{area}/allowed/tree"], opts)
    assert not ready
    assert_clean(result)
    assert result.code == FILE_SELECT, result.describe()
    assert "temp-dir" in " ".join(str(m.get("msg")) for m in result.fatal())


def _plant_link_out(area: Path, rel: str) -> None:
    """What a second connection (or a local user of the tree) does in the window between
    the setup check and the use: swap the directory `rel` for a symlink out."""
    os.rename(area / "allowed" / rel, area / "allowed" / f"{rel}.old")
    os.symlink(area / "other", area / "allowed" / rel)


def _without_openat2(args: Iterable[str] = (), env: dict[str, str] | None = None,
                     cwd: str | None = None) -> _Popened:
    """A server whose kernel seems to lack openat2 (strace makes it fail with ENOSYS), so
    --restrict-to falls back to its walk of O_NOFOLLOW opens."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    proc = subprocess.Popen(
        [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=openat2",
         "-e", "inject=openat2:error=ENOSYS", sys.executable, "-m", "fscsync", "--server",
         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd, env={**os.environ, **SERVER_ENV, **(env or {})})
    return _Popened(proc)


@pytest.fixture(params=["openat2", "walk"])
def confined_launcher(request, launcher):
    """The restricted server as it runs where openat2 exists, and where it does not."""
    return launcher if request.param == "openat2" else _without_openat2


def test_restrict_to_push_cannot_follow_a_symlink_planted_after_setup(
        area: Path, confined_launcher) -> None:
    """Finding 2: the destination passes the check at SETUP, then its parent becomes a
    symlink to AREA/other before the file list arrives. The receiver reaches the
    destination from the allowed tree's fd with no symlink followed: nothing is
    written outside, and the run fails instead."""
    peer = FakeSender(["--restrict-to", str(area / "allowed")], timeout=QUICK,
                      launcher=confined_launcher)
    dest = os.fsencode(area / "allowed/tree/sub")
    assert peer.setup(dest, role="receiver"), peer.finish().describe()
    _plant_link_out(area, "tree")
    (area / "other/sub").mkdir()
    data = b"#!/bin/sh\nplanted by root\n"
    peer.start_flist()
    peer.send(*flist(root(), reg(b"planted", data)))
    peer.send(protocol.FLIST_END, flist_end(2))
    if peer.wait_request(1, timeout=QUICK):
        peer.send(protocol.FILE, end(1, data) + data)
    result = peer.finish()
    assert sorted(os.listdir(area / "other")) == ["secret", "sub"]
    assert os.listdir(area / "other/sub") == [], result.describe()
    assert result.code != 0, result.describe()


def test_restrict_to_pull_cannot_follow_a_symlink_planted_after_the_file_list(
        area: Path, confined_launcher) -> None:
    """Finding 2, the sender role: a restricted pull lists AREA/allowed/tree, then the
    tree is swapped for a symlink to AREA/other, which has a file of the same name.
    The request for tree/f must not read AREA/other/f: the sender opens the file from
    the allowed tree's fd with no symlink followed."""
    (area / "other/f").write_bytes(b"secret of other\n")
    peer = FakeSender(["--restrict-to", str(area / "allowed")], timeout=QUICK,
                      launcher=confined_launcher)
    assert peer.setup(b"", role="sender", paths=[os.fsencode(f"{area}/allowed/tree/")]), \
        peer.finish().describe()
    assert peer.wait_type(protocol.FLIST_END) is not None, peer.finish().describe()
    paths = [e.path for t, p in peer.frames if t == protocol.FLIST for e in flist_entries(p)]
    _plant_link_out(area, "tree")
    peer.send(protocol.REQ, delta.Request(paths.index(b"f"), delta.WHOLE).encode())
    peer.wait_for(lambda t, p: t in (protocol.FILE, protocol.DATA_END), timeout=QUICK)
    result = peer.finish()
    sent = b"".join(p for t, p in result.frames if t in (protocol.FILE, protocol.DATA))
    assert b"secret" not in sent, result.describe()
    assert b"inside" not in sent, "the planted symlink was followed to the moved tree"


def _forced_rsh(tmp_path: Path, allowed: Path) -> str:
    """A remote shell that ignores the command the client asks for and runs the server
    restricted, as an authorized_keys forced command does."""
    script = tmp_path / "forced.sh"
    script.write_text("#!/bin/sh\n"
                      f"PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} "
                      f"-m fscsync --server --restrict-to {shlex.quote(str(allowed))}\n")
    return f"sh {shlex.quote(str(script))}"


def _assert_pushes_confined(rsh: str, host: str, area: Path, tmp_path: Path, outside: str,
                            content: bytes, timeout: float) -> None:
    """Through a server restricted to AREA/allowed: a push to `outside` (which resolves to
    AREA/other/pushed) is refused with a clear message (exit 3) and writes nothing; a
    push to AREA/allowed/pushed is copied."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(content)
    bad = run_fscsync("-a", "-e", rsh, f"{src}/", f"{host}:{outside}", timeout=timeout)
    text = bad.stderr.decode(errors="replace")
    assert bad.returncode == FILE_SELECT, text
    assert "outside the allowed tree" in text and "Traceback" not in text
    assert not (area / "other/pushed").exists()
    good = run_fscsync("-a", "-e", rsh, f"{src}/", f"{host}:{area}/allowed/pushed",
                       timeout=timeout)
    assert good.returncode == 0, good.stderr.decode(errors="replace")
    assert (area / "allowed/pushed/file").read_bytes() == content


def test_restrict_to_through_the_client(area: Path, tmp_path: Path) -> None:
    """A real client pushing to a restricted server: outside refused with a clear message
    (exit 3), inside accepted and copied."""
    rsh = _forced_rsh(tmp_path, area / "allowed")
    _assert_pushes_confined(rsh, "host", area, tmp_path, f"{area}/allowed/../other/pushed",
                            b"pushed\n", timeout=30)
    pulled = run_fscsync("-a", "-e", rsh, f"host:{area}/other/", f"{tmp_path}/pulled",
                         timeout=30)
    assert pulled.returncode == FILE_SELECT, pulled.stderr.decode(errors="replace")
    assert not (tmp_path / "pulled/secret").exists()


def test_restrict_to_as_an_authorized_keys_forced_command(sshd, area: Path,
                                                          tmp_path: Path) -> None:
    """A second key in the test sshd's authorized_keys, with command="fscsync --server
    --restrict-to ALLOWED": pushes outside are refused, inside accepted."""
    key = tmp_path / "forced_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    forced = f"{sshd.remote_fscsync} --server --restrict-to {area / 'allowed'}"
    keys = sshd.workdir / "authorized_keys"
    saved = keys.read_bytes()
    line = f'command="{forced}",restrict {key.with_suffix(".pub").read_text().strip()}\n'
    keys.write_bytes(saved + line.encode())
    try:
        argv = [a if a != str(sshd.key) else str(key) for a in sshd.ssh_argv]
        _assert_pushes_confined(shlex.join(argv), sshd.host, area, tmp_path,
                                f"{area}/other/pushed", b"over ssh\n", timeout=60)
    finally:
        keys.write_bytes(saved)
    shutil.rmtree(area / "allowed/pushed")


# ---- issue 19: a hostile peer's numbers --------------------------------------------------


def test_hard_link_entry_without_hard_links_is_refused(sb: Sandbox) -> None:
    """Finding 11: an entry naming a hard-link leader in a run without -H is no list a
    sender of that run makes: a protocol error (exit 12, a message), not an
    AttributeError from deep inside the generator."""
    peer = start(sb, default_options(hard_links=False))
    peer.send(*flist(root(), reg(b"a", b"a"), reg(b"h", link=1)))
    peer.send(protocol.FLIST_END, flist_end(3))
    _serve(peer, {1: b"a"})
    result = peer.finish()
    assert_refused(result, sb, "hard link")
    assert not (sb.dest / "h").exists()


@pytest.mark.parametrize("op", ["literal", "copy"])
def test_op_past_the_end_of_the_entry_is_refused_before_writing(sb: Sandbox, op: str
                                                                 ) -> None:
    """Finding 3: the list says `f` has 6 bytes. A literal at offset 2**40 (a 1 TiB sparse
    temp file, a terabyte of zeros to hash) or a copy op reaching 2**40 (keep.txt's old
    copy is the basis) is refused at once: exit 12 within seconds, and no temp file."""
    peer = start(sb)
    name = b"f" if op == "literal" else b"keep.txt"
    peer.send(*flist(root(), Entry(name, REG, 6, T_NEW)))
    peer.send(protocol.FLIST_END, flist_end(2))
    assert peer.wait_request(1), peer.finish().describe()
    if op == "literal":
        peer.send(protocol.DATA, lit(1, b"x", offset=1 << 40))
    else:
        peer.send(protocol.DATA, copy_op(1, 0, 1 << 40))
    peer.send(protocol.DATA_END, end(1, b"x"))
    peer.wait_for(lambda t, p: t == protocol.FATAL, timeout=QUICK)
    result = peer.finish()
    assert_refused(result, sb, "past the end")
    assert sb.new_entries() == [], "the temp file was left behind"


MEMORY_BOUND = 200 << 20
"""Peak RSS a hostile peer may cost the victim (an idle server takes about 30 MB)."""
CPU_BOUND = 30.0
"""CPU seconds it may cost (the runs below take one or two)."""


def _assert_bounded(peer: FakeSender, result: Result) -> None:
    proc = peer.proc
    assert proc.peak_rss is not None, result.describe()
    assert proc.peak_rss < MEMORY_BOUND, (
        f"peak RSS {proc.peak_rss >> 20} MiB\n{result.describe()}")
    assert proc.cpu < CPU_BOUND, f"{proc.cpu:.1f} s of CPU\n{result.describe()}"


@pytest.mark.parametrize("basis", [1, 1 << 56], ids=["one-chunk", "the-chunk-of-its-basis"])
def test_chunks_request_with_a_huge_chunk_is_read_a_piece_at_a_time(tmp_path: Path,
                                                                     basis: int) -> None:
    """Finding 13, a hostile receiver: a CHUNKS request for a 384 MiB file with chunks of
    2**40 bytes made the sender read the whole file into one buffer. A chunk size the
    protocol never asks for that basis is refused (exit 12); the one it does ask for a
    basis of 2**56 bytes (2**40) is honoured, read a piece at a time: the sender's peak
    RSS stays under MEMORY_BOUND either way."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(384 << 20)
    peer = FakeSender(timeout=30, launcher=measured_server())
    assert peer.setup(b"", role="sender", paths=[bytes(big)]), peer.finish().describe()
    assert peer.wait_type(protocol.FLIST_END) is not None, peer.finish().describe()
    chunk = 1 << 40
    hashes = os.urandom(16 * -(-basis // chunk))
    peer.send(protocol.REQ, delta.Request(0, delta.CHUNKS, block=4096, chunk=chunk,
                                          basis_size=basis, hashes=hashes).encode())
    answer = peer.wait_for(lambda t, p: t in (protocol.SIGREQ, protocol.FATAL))
    result = peer.finish()
    assert "Traceback" not in result.text, result.describe()
    if basis == 1:
        assert result.code == STREAM, result.describe()
        assert "bad chunk size" in " ".join(str(m.get("msg")) for m in result.fatal()), (
            result.describe())
    else:
        assert answer is not None and answer[0] == protocol.SIGREQ, result.describe()
    _assert_bounded(peer, result)


def _compressed_sender(sb: Sandbox, kind: str) -> tuple[FakeSender, Callable[..., bytes]]:
    """A measured server past the opening with -z (`kind`), and the function that
    compresses the frames sent to it, as one stream."""
    peer = FakeSender(timeout=30, launcher=measured_server())
    assert peer.setup(sb.dest, compress=kind), peer.finish().describe()
    if kind == "zstd":
        import zstandard

        c = zstandard.ZstdCompressor(level=3).compressobj()
        return peer, lambda data: c.compress(data) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    z = zlib.compressobj(9)
    return peer, lambda data: z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)


IN_FLIGHT = [root(), *(reg(b"f%04d" % j, b"x") for j in range(300))]
"""More new files than the receiver keeps requests in flight for: what comes after them
waits in its backlog."""


def _assert_bomb_refused(peer, sb: Sandbox) -> None:
    """A decompression or backlog bomb ends the server with a protocol error, within
    MEMORY_BOUND, and the destination is as it was."""
    result = peer.finish()
    assert result.code == STREAM, result.describe()
    assert "Traceback" not in result.text and "MemoryError" not in result.text, (
        result.describe())
    _assert_bounded(peer, result)
    sb.assert_nothing_outside()
    sb.assert_previous_intact()


def test_file_list_backlog_is_bounded_by_the_bytes_it_holds(sb: Sandbox) -> None:
    """Finding 6: with -z, 300 unanswered requests, then 400 file-list frames of 4 MiB
    each (1.6 MB on the wire) grew the receiver's backlog to 1.6 GB. Past its bound in
    bytes the backlog is decided at once instead of held (these frames are garbage: a
    protocol error), so the peak RSS stays under MEMORY_BOUND."""
    peer, z = _compressed_sender(sb, "zlib")
    start_list = frame(protocol.FLIST_START, b'{"single_file": false}')
    peer.send_raw(z(start_list + frame(protocol.FLIST, flist_payload(IN_FLIGHT))))
    junk = z(frame(protocol.FLIST, bytes(protocol.MAX_FRAME)))
    again = z(frame(protocol.FLIST, bytes(protocol.MAX_FRAME)))
    bomb = junk + again * 399
    assert len(bomb) < 2 << 20
    peer.send_raw(bomb)
    _assert_bomb_refused(peer, sb)


@pytest.mark.skipif("zstd" not in protocol.CAPABILITIES, reason="zstandard not installed")
def test_zstd_stream_is_inflated_a_step_at_a_time(sb: Sandbox) -> None:
    """Finding 10: with -z negotiated as zstd, 1 GiB of zeros in a few kB on the wire was
    inflated at once (zstandard's decompressobj has no output bound). It comes a step at
    a time, as zlib's does: refused as what it is (zeros are no frame the server expects),
    the server's peak RSS under MEMORY_BOUND."""
    peer, z = _compressed_sender(sb, "zstd")
    zeros = bytes(1 << 20)
    bomb = b"".join(z(zeros) for _ in range(1024))
    assert len(bomb) < 1 << 20
    peer.send_raw(bomb)
    _assert_bomb_refused(peer, sb)


def _server_without_zstd(args=(), env=None, cwd=None):
    """`fscsync --server` in an interpreter where zstandard cannot be imported."""
    code = ("import sys; sys.modules['zstandard'] = None; sys.argv[1:1] = ['--server']; "
            "from fscsync.cli.main import run; run()")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **SERVER_ENV, **(env or {})})
    return _Popened(proc)


@pytest.mark.parametrize("kind", ["zstd", "lz4"])
def test_setup_asking_for_a_compression_this_side_lacks_is_refused(sb: Sandbox, kind: str
                                                                   ) -> None:
    """A client asking for a stream compression the server does not offer (zstd where
    zstandard is missing, or a name nobody knows) is refused at setup: exit 5, not an
    internal error."""
    peer = FakeSender(timeout=QUICK, launcher=_server_without_zstd)
    assert not peer.setup(sb.dest, compress=kind)
    result = peer.finish()
    assert_refused(result, sb, "malformed setup", code=5)


@pytest.mark.parametrize("case", ["dir-twice", "file-twice", "backwards", "dir-then-file",
                                  "across-frames", "root-child-twice"])
def test_repeated_or_out_of_order_entry_is_refused(sb: Sandbox, case: str) -> None:
    """Finding 7: a directory's entries arrive in order (non-directories sorted, then
    directories sorted), so an entry that is not past the one before it in its directory
    repeats one (or is out of place): a protocol error, whichever batch it comes in."""
    d, f = Entry(b"d", DIR, 0, T_NEW), reg(b"d/f", b"f")
    frames = {
        "dir-twice": [flist(root(), d, d)],
        "file-twice": [flist(root(), d, f, f)],
        "backwards": [flist(root(), d, reg(b"d/g"), reg(b"d/f"))],
        "dir-then-file": [flist(root(), d, Entry(b"d/e", DIR, 0, T_NEW), reg(b"d/f"))],
        "across-frames": [flist(root(), d, f), flist(f)],
        "root-child-twice": [flist(root(), reg(b"x"), d, reg(b"x"))],
    }[case]
    result = play(sb, frames)
    assert_refused(result, sb, "repeats or is out of order")


@pytest.mark.parametrize("level", [1, 9])
def test_a_batch_of_one_directory_repeated_is_refused_within_bounds(sb: Sandbox,
                                                                    level: int) -> None:
    """Finding 7: 500,000 copies of one directory entry, 16 kB on the wire, cost the
    receiver 18 s of CPU and 183 MB, and it ended with exit 0. At zlib level 1 (the
    sender's) the second copy is refused; at level 9 the frame inflates more than a file
    list does (MAX_INFLATE) and is refused before it is decoded."""
    raw = encode_entries([root()] + [Entry(b"d", DIR, 0, T_NEW)] * 500_000)
    payload = zlib.compress(raw, level)
    assert len(payload) < 80_000
    peer = FakeSender(timeout=60, launcher=measured_server())
    assert peer.setup(sb.dest) and peer.start_flist(), peer.finish().describe()
    peer.send(protocol.FLIST, payload)
    peer.send(protocol.FLIST_END, flist_end(500_001))
    _serve(peer, {})
    result = peer.finish()
    assert_refused(result, sb, "repeats" if level == 1 else "too large")
    _assert_bounded(peer, result)

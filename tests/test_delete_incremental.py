"""--delete-during and --delete-delay without the whole list (issue 24): the sender
announces each directory's names (protocol.DIRNAMES) ahead of the batch that brings
it, and the receiver keeps per directory only what it needs, while it needs it.

What the receiver holds is counted on a real run (sender and receiver in this
process, on a pipe pair); the announcements a hostile sender may send are refused
with a message naming what is wrong, before anything is deleted; and the trees and
lines of the cases the announcement has to get right (several sources, -m, hidden
and skipped entries) are compared with rsync's.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.pair import run_pair
from support.peer import default_options
from support.trees import write
from test_delete_timing import lines, split
from test_hostile import (  # noqa: F401 (the fixtures)
    DIR,
    assert_refused,
    flist,
    flist_end,
    launcher,
    reg,
    root,
    sb,
    start,
)
from test_local_sync import Twin, settle

from fscsync.engine import listmode, receiver
from fscsync.engine.deltiming import Announced, Deleter
from fscsync.engine.flist import Entry, pack_batch, unpack_batch
from fscsync.errors import ProtocolError
from fscsync.options import Options
from fscsync.wire import dirnames, protocol
from fscsync.wire.dirnames import DirNames

DIRS, FILES = 20, 500


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """DIRS directories of FILES files (made once: a slow disk takes seconds)."""
    src = tmp_path_factory.mktemp("incremental") / "src"
    for d in range(DIRS):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(FILES):
            (src / f"d{d:02d}/f{f:04d}").write_bytes(b"x")
    return src


def _dest(src: Path, dst: Path) -> None:
    """A destination with every file of `src` up to date (the same inodes), one file more
    in each directory and one directory more."""
    for d in range(DIRS):
        (dst / f"d{d:02d}").mkdir(parents=True)
        for f in range(FILES):
            os.link(src / f"d{d:02d}/f{f:04d}", dst / f"d{d:02d}/f{f:04d}")
        (dst / f"d{d:02d}/stale").write_bytes(b"old")
    (dst / "gone").mkdir()
    (dst / "gone/g").write_bytes(b"old")


def _held(deleter: Deleter) -> int:
    """The names the deleter holds: destination listings, the list's names, announced
    names (for this batch and the next) and those found to delete later."""
    held = sum(map(len, deleter.existing.values())) + sum(map(len, deleter.children.values()))
    held += sum(map(len, deleter.delayed.values()))
    if deleter.names is not None:
        held += sum(map(len, deleter.names.current.values()))
        held += sum(map(len, deleter.names.pending.values()))
    return held


def _run(src: Path, dst: Path, opts: Options, monkeypatch) -> tuple[Deleter, list[int]]:
    """One run in this process; the run's deleter as the final pass got it, and the
    names it held each time the generator reached a directory."""
    seen: list[int] = []
    got: list[Deleter] = []
    reached, final = Deleter.reached, receiver.Finalizer.run

    def counting(self, tree, rel, no_content):
        seen.append(_held(self))
        reached(self, tree, rel, no_content)

    def keep(self, tree, decisions):
        got.append(decisions.deleter)
        final(self, tree, decisions)

    monkeypatch.setattr(Deleter, "reached", counting)
    monkeypatch.setattr(receiver.Finalizer, "run", keep)
    run_pair(src, dst, opts)
    return got[0], seen


@pytest.mark.parametrize("when", ["during", "delay"])
def test_held_names_do_not_grow_with_the_file_count(source: Path, tmp_path: Path,
                                                    monkeypatch, when: str) -> None:
    """20 directories of 500 files: the deleter holds at most the names of two
    batches' directories (the one decided, the next one's announced) and the listing of
    the directory at hand, not the tree's 10,000, and at the end no per-file names at
    all; --delete-delay kept only what it deleted after the transfer."""
    src, dst = source, tmp_path / "dst"
    _dest(src, dst)
    opts = Options(recursive=True, times=True, delete=True, delete_when=when)
    assert not listmode.holds_list(opts)
    deleter, seen = _run(src, dst, opts, monkeypatch)
    assert len(seen) == DIRS + 1
    assert max(seen) < DIRS * FILES // 4, seen
    assert deleter.children == {}
    assert not any(deleter.existing.values())
    assert deleter.names.current == deleter.names.pending == {}
    if when == "delay":
        assert deleter.delayed == {b"": [b"gone"], **{b"d%02d" % d: [b"stale"]
                                                      for d in range(DIRS)}}
    else:
        assert deleter.delayed == {}
    assert sorted(os.listdir(dst)) == [f"d{d:02d}" for d in range(DIRS)]
    assert all(not (dst / f"d{d:02d}/stale").exists() for d in range(DIRS))
    assert deleter.deleted == DIRS + 2


def test_delete_after_keeps_the_names_of_the_list(source: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    """The contrast: --delete-after takes the list's names as they come and keeps them
    all to the end, as rsync's does (it runs without incremental recursion)."""
    src, dst = source, tmp_path / "dst"
    _dest(src, dst)
    opts = Options(recursive=True, times=True, delete=True, delete_when="after")
    deleter, _ = _run(src, dst, opts, monkeypatch)
    assert deleter.names is None
    assert sum(map(len, deleter.children.values())) == DIRS * (FILES + 1)


def test_a_directory_of_many_names_spans_frames(source: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    """A directory whose names outgrow one DIRNAMES frame goes in several, the last
    without MORE; the receiver joins them and deletes only what none of them names."""
    monkeypatch.setattr(dirnames, "DIRNAMES_PART", 64)
    src, dst = source, tmp_path / "dst"
    _dest(src, dst)
    parts = dirnames.encode(DirNames(b"d00", [b"f%04d" % f for f in range(FILES)]))
    assert len(parts) > 40
    assert [dirnames.decode(p).more for p in parts] == [True] * (len(parts) - 1) + [
        False]
    opts = Options(recursive=True, times=True, delete=True)
    deleter, _ = _run(src, dst, opts, monkeypatch)
    assert deleter.deleted == DIRS + 2
    assert all(len(os.listdir(dst / f"d{d:02d}")) == FILES for d in range(DIRS))


# ---- the frame alone ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_decoding_refuses_with_a_protocol_error_only(payload: bytes) -> None:
    """Any bytes: a ProtocolError, or names that encode back to the same frame."""
    try:
        got = dirnames.decode(payload)
    except ProtocolError:
        return
    again = dirnames.decode(dirnames.encode(DirNames(got.path, got.names, got.io_error))[0])
    assert (again.path, again.names, again.io_error) == (got.path, got.names, got.io_error)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.binary(min_size=1, max_size=255).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")), unique=True),
       st.booleans())
def test_names_round_trip(names: list[bytes], io_error: bool) -> None:
    names.sort()
    got = [dirnames.decode(p)
           for p in dirnames.encode(DirNames(b"a/b", names, io_error))]
    assert [n for part in got for n in part.names] == names
    assert {part.io_error for part in got} == {io_error}


def _frame(path: bytes, names: list[bytes], flags: int = 0, count: int | None = None) -> bytes:
    """A DIRNAMES payload the encoder would not make."""
    return (dirnames._DIRNAMES.pack(flags, len(path), len(names) if count is None else count)
            + path + zlib.compress(b"\0".join(names)))


@pytest.mark.parametrize(("payload", "words"), [
    (b"\0\0", "truncated"),
    (_frame(b"d", [b"a"])[:-2], "truncated"),
    (_frame(b"d", [b"a"])[:8] + b"not zlib", "corrupt"),
    (_frame(b"d", [])[:8] + zlib.compress(bytes(2 << 20)), "too long"),
    (_frame(b"d", [b"a"], flags=0x80), "unknown flags"),
    (_frame(b"", [b"a"]), "path"),
    (_frame(b"d" * 4097, [b"a"]), "overlong"),
    (_frame(b"d", [b"a", b"b"], count=3), "2 names, 3 announced"),
    (_frame(b"d", [b"a" * 256]), "overlong name"),
    (_frame(b"d", [b"a", b""]), "empty"),
    (_frame(b"d", [b"x/y"]), "'/'"),
    (_frame(b"d", [b".."]), "'..'"),
    (_frame(b"d", [b"b", b"a"]), "unsorted or repeated"),
    (_frame(b"d", [b"a", b"a"]), "unsorted or repeated"),
], ids=["truncated", "cut", "not-zlib", "bomb", "flags", "no-path", "long-path", "count",
        "long-name", "empty-name", "slash", "dotdot", "unsorted", "repeated"])
def test_malformed_frame(payload: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words.replace(".", r"\.")):
        dirnames.decode(payload)


def test_announced_names_are_checked_against_the_next_batch() -> None:
    """Every compared directory of a batch was announced since the batch before, and
    nothing else was; parts of one directory's names follow each other, in order."""
    opts = default_options(delete=True)

    def batch(*entries: Entry):
        return unpack_batch(pack_batch(list(entries)))

    names = Announced(opts)
    names.add(DirNames(b".", [b"a"]))
    names.add(DirNames(b"a", [b"x"], more=True))
    names.add(DirNames(b"a", [b"y"]))
    names.brought(batch(root(), Entry(b"a", DIR), reg(b"a/x")))
    assert names.take(b"a") == {b"x", b"y"} and names.take(b"a") is None
    for frames, entries, words in [
        ([], [Entry(b"b", DIR)], "arrived without the names"),
        ([DirNames(b"c", [])], [Entry(b"b", DIR)], "arrived without the names"),
        ([DirNames(b"b", []), DirNames(b"c", [])], [Entry(b"b", DIR)], "'c', which the file"),
        ([DirNames(b"b", [b"z"], more=True)], [Entry(b"b", DIR)], "without their last part"),
    ]:
        names = Announced(opts)
        for part in frames:
            names.add(part)
        with pytest.raises(ProtocolError, match=words):
            names.brought(batch(*entries))
    for first, second, words in [
        (DirNames(b"b", [b"m"]), DirNames(b"b", [b"n"]), "announced twice"),
        (DirNames(b"b", [b"m"], more=True), DirNames(b"c", [b"n"]), "without their last"),
        (DirNames(b"b", [b"m"], more=True), DirNames(b"b", [b"m"]), "unsorted or repeated"),
    ]:
        names = Announced(opts)
        names.add(first)
        with pytest.raises(ProtocolError, match=words):
            names.add(second)
    names = Announced(opts)
    names.add(DirNames(b"b", []))
    with pytest.raises(ProtocolError, match="does not bring"):
        names.end()


def test_no_content_directories_get_no_names() -> None:
    """A directory the list brings without its contents (-x's mount point, -R's implied
    ones), and with -d and no -r any but the top, is compared with nothing."""
    assert not listmode.announced_dir(default_options(), b"m", True)
    assert not listmode.announced_dir(default_options(recursive=False, dirs=True), b"a",
                                       False)
    assert listmode.announced_dir(default_options(recursive=False, dirs=True), b".", False)


# ---- a hostile sender -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown-directory", "missing", "bad-name", "at-the-end"])
def test_hostile_announcements_are_refused_before_any_deletion(sb, case: str) -> None:  # noqa: F811
    """keep.txt and sub/ are not in the list: a sender that could make the receiver act
    on names it announced wrongly would have them deleted."""
    peer = start(sb, default_options(delete=True, itemize=1))
    if case == "unknown-directory":
        peer.send(protocol.DIRNAMES, _frame(b".", [b"new"]))
        peer.send(protocol.DIRNAMES, _frame(b"elsewhere", []))
    elif case == "bad-name":
        peer.send(protocol.DIRNAMES, _frame(b".", [b"new", b"sub/old.txt"]))
    elif case == "at-the-end":
        peer.send(protocol.DIRNAMES, _frame(b".", [b"keep.txt", b"new", b"sub"]))
        peer.send(protocol.DIRNAMES, _frame(b"sub", [b"old.txt"]))
    if case != "at-the-end":
        peer.send(*flist(root(), reg(b"new", b"")))
    else:
        peer.send(*flist(root(), reg(b"new", b""), Entry(b"sub", DIR)))
        peer.send(protocol.DIRNAMES, _frame(b"sub/deeper", []))
        peer.send(protocol.FLIST_END, flist_end(3))
    words = {"unknown-directory": "'elsewhere', which the file list does not bring next",
             "missing": "directory b'.' arrived without the names of its entries",
             "bad-name": "not one entry's", "at-the-end": "'sub/deeper', which the file list "
             "does not bring"}[case]
    assert_refused(peer.finish(), sb, words)


def test_names_are_refused_where_none_are_announced(sb) -> None:  # noqa: F811 (the fixture)
    """--delete-after (and any run without --delete) takes no DIRNAMES frame."""
    peer = start(sb, default_options(delete=True, delete_when="after"))
    peer.send(protocol.DIRNAMES, _frame(b".", [b"new"]))
    peer.send(*flist(root(), reg(b"new", b"")))
    assert_refused(peer.finish(), sb, f"unexpected frame type {protocol.DIRNAMES}")


# ---- side by side with rsync ---------------------------------------------------------------


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, data)


def _stale(area: Path) -> None:
    d = area / "dst"
    for rel in ("one/keep", "one/extra", "two/extra", "hidden.o", "x.o", "deep/er/gone"):
        _put(d / rel, b"old")
    settle(d)


@pytest.mark.parametrize("args", [
    ["-ai", "--delete", "{src}/one", "{src}/two/", "@D/dst/"],
    ["-rti", "--delete", "-f", "H hidden.o", "--exclude", "x.o", "{src}/", "@D/dst/"],
    ["-rti", "--delete-delay", "--delete-excluded", "--exclude", "*.o", "{src}/", "@D/dst/"],
    ["-aim", "--delete", "{src}/", "@D/dst/"],
], ids=["two-sources", "hidden-and-excluded", "delete-excluded", "prune-empty-dirs"])
def test_like_rsync(tmp_path: Path, args: list[str]) -> None:
    """Several sources (the names of both), filters (a hidden name is deleted, an
    excluded one kept unless --delete-excluded), kinds -r skips (a symlink, a fifo),
    and -m (the list held, as before)."""
    t = Twin(tmp_path)
    for rel in ("one/keep", "two/new", "hidden.o", "x.o", "deep/er/here"):
        _put(t.src / rel, b"new")
    (t.src / "empty/inner").mkdir(parents=True)
    os.symlink("one/keep", t.src / "link")
    os.mkfifo(t.src / "fifo")
    settle(t.src)
    t.each(_stale)
    runs = t.run(*[a.format(src=t.src) for a in args])
    t.assert_same("dst", ignore_dir_mtime=True)
    assert split(lines(runs.fscsync)) == split(lines(runs.rsync))

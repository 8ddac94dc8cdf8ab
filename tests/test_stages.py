"""The receiving stages on their own (issue 20): the generator, the writer and the
finaliser each built from an RxState and the values they need, on a real destination
tree, without a receiver, a channel or a sender. The behaviour tests drive the same
code through whole runs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import xxhash
from support.reporter import Collect

from fscsync.engine import delta
from fscsync.engine.deltiming import Deleter
from fscsync.engine.finalize import Finalizer
from fscsync.engine.flist import Entry, pack_batch, unpack_batch
from fscsync.engine.generator import Generator
from fscsync.engine.hardlinks import Linker
from fscsync.engine.report import Reporter
from fscsync.engine.rxstate import Decisions, RxState, Status
from fscsync.engine.stats import Stats
from fscsync.engine.writer import Writer
from fscsync.fs.destfs import DestTree
from fscsync.fs.meta import IdMapper
from fscsync.fs.probe import DestAbilities
from fscsync.options import Options
from fscsync.wire import protocol

T0 = 1_600_000_000_000_000_000
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


class _Stage:
    """One partition's receiving side by hand: a state, a tree, the frames sent."""

    def __init__(self, dest: Path, opts: Options, reporter: Reporter) -> None:
        self.opts = opts
        self.ids = IdMapper(True)
        self.state = RxState(reporter, Stats(), None)
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        self.tree = DestTree(self.root_fd)
        self.sent: list[tuple[int, bytes]] = []
        self.gen = Generator(self.state, opts, self.ids, self.tree, self._send,
                             lambda: DestAbilities(encdata=False, encdata_why="unused"))

    def _send(self, ftype: int, payload: bytes = b"") -> None:
        self.sent.append((ftype, payload))

    def feed(self, entries: list[Entry]) -> None:
        """What the receiver does with a file-list batch: count it, then decide."""
        base = self.state.count
        self.state.count += len(entries)
        self.gen.batch(base, unpack_batch(pack_batch(entries)))

    def close(self) -> None:
        self.tree.close()
        os.close(self.root_fd)


def _file(path: Path, data: bytes, mtime_ns: int = T0) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _partitioned_dest(dest: Path) -> None:
    """a/ and b/ with an up-to-date file each, one stale file each, and a/z, which the
    second partition lists although a/ is in the first."""
    for d in ("a", "b"):
        (dest / d).mkdir(parents=True)
        _file(dest / d / "keep", b"k" * 10)
        _file(dest / d / "stale", b"s")
    _file(dest / "a" / "z", b"z" * 5)


def test_two_partitions_decisions_merge_and_are_finalised_once(tmp_path: Path) -> None:
    """Partition one lists the root and a/, partition two b/ (with a hard link) and
    a/z. Finalised alone, the first partition's decisions would delete b/ and a/z,
    which only the second lists; merged and finalised once, only the two stale files
    go, b/link is made once (by the second partition), and every directory gets its
    source time."""
    dest = tmp_path / "dest"
    _partitioned_dest(dest)
    # Partitions are streams of --parallel (spool): they delete nothing; the final pass
    # deletes once, after merging, as --delete-delay (run/finalpass.py).
    opts = Options(recursive=True, times=True, delete=True, delete_when="delay",
                   hard_links=True, itemize=True, spool=b"run/stream")
    reporter = Collect()
    one, two = _Stage(dest, opts, reporter), _Stage(dest, opts, reporter)
    one.feed([Entry(b".", DIR, mtime_ns=T0 + 1), Entry(b"a", DIR, mtime_ns=T0 + 2),
              Entry(b"a/keep", FILE, 10, T0)])
    two.feed([Entry(b"a/z", FILE, 5, T0), Entry(b"b", DIR, mtime_ns=T0 + 3),
              Entry(b"b/keep", FILE, 10, T0, link=2), Entry(b"b/link", FILE, 10, T0, link=2)])
    assert one.sent == two.sent == []  # all up to date: nothing to request
    # Kept: the directories and the hard-link leader (its link is its own index), each
    # OK; the settled files have left nothing behind. The leader is in place, so the
    # generator made b/link at once (engine/hardlinks.py): nothing waits for it.
    assert one.state.status == {0: Status.OK, 1: Status.OK} and list(one.state.entries) == [0, 1]
    assert two.state.status == {1: Status.OK, 2: Status.OK} and list(two.state.entries) == [1, 2]
    assert os.stat(dest / "b" / "link").st_ino == os.stat(dest / "b" / "keep").st_ino
    assert two.state.stats.created == {"reg": 1}
    assert ("item", "hf+++++++++ b/link => b/keep") in reporter.lines

    first = one.gen.decisions()
    assert set(first.existing[b""]) - first.children[b""] == {b"b"}
    assert set(first.existing[b"a"]) - first.children[b"a"] == {b"stale", b"z"}
    merged = first.merge(two.gen.decisions())
    stats = Stats()
    opts.spool = None  # the final pass's own options
    merged.deleter = Deleter(opts, reporter, stats, None, merged.existing, merged.children)
    before = len(reporter.lines)
    Finalizer(opts, one.ids, reporter, stats).run(one.tree, merged)
    one.close()
    two.close()

    assert sorted(os.listdir(dest)) == ["a", "b"]
    assert sorted(os.listdir(dest / "a")) == ["keep", "z"]
    assert sorted(os.listdir(dest / "b")) == ["keep", "link"]
    assert os.stat(dest / "b" / "link").st_ino == os.stat(dest / "b" / "keep").st_ino
    assert stats.deleted == {"reg": 2}
    assert stats.created == {}
    items = [m for kind, m in reporter.lines[before:] if kind == "item"]
    assert sorted(items) == ["*deleting   a/stale", "*deleting   b/stale"]
    assert [os.stat(p).st_mtime_ns for p in (dest, dest / "a", dest / "b")] == [
        T0 + 1, T0 + 2, T0 + 3]


def test_merge_joins_names_and_keeps_parents_before_children() -> None:
    """A directory's names may come from several partitions: the sets are joined, the
    listings kept once each; the final pass walks dirs backwards, so parents must stay
    before their children whatever partition holds them."""
    a, b = Decisions(), Decisions()
    a.dirs = [(Entry(b".", DIR), False), (Entry(b"x/y", DIR), True)]
    b.dirs = [(Entry(b"x", DIR), False), (Entry(b"x/y/z", DIR), True), (Entry(b"w", DIR), True)]
    a.existing, b.existing = {b"x": [b"1", b"2"]}, {b"x": [b"2", b"3"], b"w": [b"4"]}
    a.children, b.children = {b"x": {b"1"}}, {b"x": {b"3"}}
    a.litter, b.incoming = {b"x": [b".t.~fscsync~abcdef"]}, {b"x": {b"n"}}
    merged = a.merge(b)
    assert merged is a
    assert [e.path for e, _ in merged.dirs] == [b".", b"w", b"x", b"x/y", b"x/y/z"]
    assert merged.existing == {b"x": [b"1", b"2", b"3"], b"w": [b"4"]}
    assert merged.children == {b"x": {b"1", b"3"}}
    assert merged.litter == {b"x": [b".t.~fscsync~abcdef"]} and merged.incoming == {
        b"x": {b"n"}}


def test_generator_requests_a_new_file_and_settles_an_unchanged_one(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _file(dest / "same", b"s" * 7)
    stage = _Stage(dest, Options(times=True), Collect())
    stage.feed([Entry(b"same", FILE, 7, T0), Entry(b"new", FILE, 3, T0)])
    assert stage.state.status == {}  # the settled one left nothing, the new one waits
    assert [f for f, _ in stage.sent] == [protocol.REQ]
    assert list(stage.state.pending) == [1] and stage.state.requested == 1
    assert stage.state.stats.created == {"reg": 1}
    assert list(stage.state.entries) == [1]  # no Entry for the settled one
    stage.gen.finish()
    assert stage.sent[-1][0] == protocol.NOMORE
    stage.close()


def test_writer_installs_a_requested_file_and_completes_it(tmp_path: Path) -> None:
    """The generator's hand-off (a Pending in the state) is all the writer needs."""
    dest = tmp_path / "dest"
    dest.mkdir()
    opts = Options(times=True)
    stage = _Stage(dest, opts, Collect())
    stage.feed([Entry(b"new", FILE, 3, T0)])
    writer = Writer(stage.state, opts, stage.ids, DestTree(stage.root_fd), stage._send)
    data = b"abc"
    writer.file(delta.encode_end(0, delta.END_OK, 3, xxhash.xxh3_128_digest(data)) + data)
    assert (dest / "new").read_bytes() == data
    assert os.stat(dest / "new").st_mtime_ns == T0
    assert stage.state.completed == 1 and stage.state.pending == {}
    assert stage.state.entries == stage.state.status == {}  # done with: nothing kept
    assert os.listdir(dest) == ["new"]
    stage.close()


def test_writer_failed_verification_twice_keeps_the_old_copy(tmp_path: Path) -> None:
    """A file whose data does not match its digest is asked for again once, then fails:
    the status is FAILED, the old copy stays, no temp file is left."""
    dest = tmp_path / "dest"
    dest.mkdir()
    _file(dest / "f", b"old!", T0 - 10**9)
    opts = Options(times=True, whole_file=True)
    reporter = Collect()
    stage = _Stage(dest, opts, reporter)
    stage.feed([Entry(b"f", FILE, 3, T0)])
    writer = Writer(stage.state, opts, stage.ids, DestTree(stage.root_fd), stage._send)
    bad = delta.encode_end(0, delta.END_OK, 3, bytes(16)) + b"abc"
    writer.file(bad)
    assert stage.sent[-1][0] == protocol.REQ  # the retry
    writer.file(bad)
    assert stage.state.completed == 1 and stage.state.entries == stage.state.status == {}
    assert (dest / "f").read_bytes() == b"old!" and os.listdir(dest) == ["f"]
    assert any("failed verification -- update discarded" in m for _, m in reporter.lines)
    stage.close()


def test_a_link_to_a_leader_not_in_place_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    reporter = Collect()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    tree = DestTree(fd)
    linker = Linker(Options(hard_links=True), reporter, Stats(), None, None)
    assert linker.link(tree, Entry(b"l", FILE, link=0), Entry(b"f", FILE), False) is None
    tree.close()
    os.close(fd)
    assert os.listdir(dest) == []
    assert reporter.lines == [("error", 'cannot hard-link "l": "f" was not transferred')]
    assert reporter.exit_code == 23

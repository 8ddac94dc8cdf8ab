"""Big files with few changes are updated in place under a redo journal (issue 7's S3).

Whole runs are checked against rsync (same result, fscsync keeping the inode), the
choice between in place and a temp file is checked by inode, and the journal's
promises are checked where they matter: the file is untouched until the commit,
a failed transfer only drops the journal, a committed journal left by a killed run
is finished by the next run, an uncommitted or stale one is dropped.
"""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import pytest
import xxhash
from support import run_fscsync
from support.peer import FakeSender, default_options, flist_payload, server_launcher
from test_local_sync import ENV, T0, Twin, assert_clean_stderr, items, settle, temp_files_under

from fscsync.engine import delta
from fscsync.engine.flist import Entry
from fscsync.fs import inplace
from fscsync.wire import protocol

BLOCK = 4096
SIZE = inplace.MIN_SIZE + 3 * BLOCK + 123
DATA_AT = (0, 16 << 20, 40 << 20)
"""Where the sparse test file holds 1 MiB of data each; the rest is holes."""


def _make_big(path: Path, seed: int) -> None:
    """A sparse file of SIZE bytes: three 1 MiB runs of random data, holes between."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for off in DATA_AT:
            f.seek(off)
            f.write(rng.randbytes(1 << 20))
        f.truncate(SIZE)
    os.utime(path, (T0, T0))


def _change(path: Path, offsets: list[int], seed: int, size: int | None = None,
            mtime: int = T0 + 100) -> None:
    """New random blocks at `offsets` (in data runs and in holes), optionally a new size."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(rng.randbytes(BLOCK))
        if size is not None:
            f.truncate(size)
    os.utime(path, (mtime, mtime))


FEW = [BLOCK * 3, (16 << 20) + BLOCK * 10, (30 << 20), (50 << 20) + BLOCK]
"""Four changed blocks: two inside data runs, two inside holes."""


def _mirrored_then_changed(tmp_path: Path, seed: int
                           ) -> tuple[Path, Path, bytes, os.stat_result]:
    """src/big synced to dst/big, then FEW of src's blocks changed: (src, dst, and the
    destination copy's bytes and stat before any further run)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _make_big(src / "big", seed)
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    old = (dst / "big").read_bytes(), os.stat(dst / "big")
    _change(src / "big", FEW, seed + 1)
    return src, dst, *old


def _eventually(check, timeout: float = 20.0) -> bool:
    """Poll `check` until it holds or the deadline passes (a wait, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _journals(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if inplace.is_journal_name(os.fsencode(n))]


@pytest.mark.parametrize("resize", [None, SIZE + 5000, SIZE - 2 * BLOCK - 100],
                         ids=["same-size", "grows", "shrinks"])
def test_few_changed_blocks_update_the_file_in_place_like_rsync(tmp_path: Path,
                                                                 resize: int | None) -> None:
    t = Twin(tmp_path)
    _make_big(t.src / "big", 1)
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst/")
    ino = os.stat(t.f / "dst/big").st_ino
    _change(t.src / "big", FEW, 2, resize)
    runs = t.run("-ai", f"{t.src}/", "@D/dst/")
    assert items(runs.fscsync) == items(runs.rsync)
    assert len(items(runs.fscsync)) == 1
    t.assert_same()
    assert os.stat(t.f / "dst/big").st_ino == ino, "the file was rebuilt, not updated in place"
    assert _journals(t.f / "dst") == []


def test_literal_data_is_only_the_changed_blocks(tmp_path: Path) -> None:
    src, dst, _, _ = _mirrored_then_changed(tmp_path, 3)
    out = run_fscsync("-a", "--stats", f"{src}/", f"{dst}/", check=True, env=ENV)
    assert b"Literal data: 16,384 bytes" in out.stdout, out.stdout.decode()
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()


@pytest.mark.parametrize("option, same_inode", [("--no-inplace", False), ("--inplace", True)])
def test_options_choose_between_a_new_copy_and_the_old_inode(tmp_path: Path, option: str,
                                                             same_inode: bool) -> None:
    src, dst, _, old_st = _mirrored_then_changed(tmp_path, 5)
    run_fscsync("-a", option, f"{src}/", f"{dst}/", check=True)
    assert (os.stat(dst / "big").st_ino == old_st.st_ino) is same_inode
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()
    assert _journals(dst) == [] and not temp_files_under(dst)


def test_hard_linked_destination_is_rebuilt_and_the_other_name_keeps_the_old_data(
        tmp_path: Path) -> None:
    """The other name is outside the transfer; rsync (without -H) leaves it the old data."""
    t = Twin(tmp_path)
    _make_big(t.src / "big", 7)
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst/")
    old = (t.src / "big").read_bytes()
    t.each(lambda area: os.link(area / "dst/big", area / "other"))
    _change(t.src / "big", FEW, 8)
    t.run("-a", f"{t.src}/", "@D/dst/")
    t.assert_same("dst")
    for area in (t.r, t.f):
        assert (area / "other").read_bytes() == old
        assert os.stat(area / "other").st_nlink == 1


def test_a_mostly_changed_file_is_rebuilt_in_a_temp_file(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    _make_big(t.src / "big", 9)
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst/")
    ino = os.stat(t.f / "dst/big").st_ino
    _change(t.src / "big", [c << 20 for c in range(0, SIZE >> 20, 2)], 10)  # half the chunks
    t.run("-a", f"{t.src}/", "@D/dst/")
    t.assert_same()
    assert os.stat(t.f / "dst/big").st_ino != ino


def test_a_failed_update_leaves_the_file_untouched(tmp_path: Path) -> None:
    """Corrupted literals fail verification in place, then again when sent whole: the
    run ends with 23 and the destination keeps its old copy, inode and time."""
    src, dst, old, old_st = _mirrored_then_changed(tmp_path, 11)
    out = run_fscsync("-a", f"{src}/", f"{dst}/", check=23,
                      env={**ENV, "FSCSYNC_FAULT_CORRUPT_LITERALS": "1"})
    assert_clean_stderr(out)
    assert b"failed verification -- sending it again whole" in out.stderr
    after = os.stat(dst / "big")
    assert (dst / "big").read_bytes() == old
    assert (after.st_ino, after.st_mtime_ns) == (old_st.st_ino, old_st.st_mtime_ns)
    assert _journals(dst) == [] and not temp_files_under(dst)


def test_changes_wait_in_the_journal_until_the_sender_finishes(tmp_path: Path) -> None:
    """A sender that fails after sending a changed block: while the transfer runs the
    block is in the journal, not in the file; after the failure the journal is gone."""
    dest = tmp_path / "dest"
    dest.mkdir()
    _make_big(dest / "big", 13)
    old = (dest / "big").read_bytes()
    with server_launcher() as launch:
        peer = FakeSender(timeout=20, launcher=launch)
        assert peer.setup(dest, default_options(recursive=True, times=True))
        assert peer.start_flist()
        peer.send(protocol.FLIST, flist_payload([
            Entry(b".", 0o40755, 0, T0 * 10**9),
            Entry(b"big", 0o100644, SIZE, (T0 + 5) * 10**9)]))
        peer.send(protocol.FLIST_END, b'{"io_error": false, "count": 2}')
        assert peer.wait_request(1), peer.finish().describe()
        new_block = b"\xa5" * BLOCK
        peer.send(protocol.DATA, struct.pack(">IBQI", 1, delta.OP_LIT, BLOCK, BLOCK) + new_block)
        journal = dest / os.fsdecode(inplace.journal_name(b"big"))
        assert _eventually(lambda: journal.exists() and new_block in journal.read_bytes()), \
            "the changed block did not reach a journal"
        assert (dest / "big").read_bytes() == old
        peer.send(protocol.DATA_END, delta.encode_end(1, delta.END_FAILED, 0, bytes(16)))
        if peer.wait_type(protocol.NOMORE) is not None:
            peer.send(protocol.NOMORE_ACK)
        if peer.wait_type(protocol.DONE) is not None:
            peer.send_json(protocol.FINISHED, {"exit_code": 0})
            peer.wait_type(protocol.STATS)
        result = peer.finish()
    assert "Traceback" not in result.text, result.describe()
    assert (dest / "big").read_bytes() == old
    assert _journals(dest) == [] and not temp_files_under(dest)


# ---- journals left by a killed run ---------------------------------------------------------


def _journal_for(dst: Path, src: Path, offsets: list[int], commit: bool,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave dst/big's journal as a run killed at that point would: the changed blocks of
    src/big recorded, then (commit) committed with the first block written into the file."""
    dirfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        update = inplace.Update.start(dirfd, b"big", None)
        assert update is not None
        new = (src / "big").read_bytes()
        for off in offsets:
            update.write(off, new[off : off + BLOCK])
        if commit:
            real = inplace._write_ranges

            def killed(jfd: int, fd: int, ranges: list, size: int) -> None:
                real(jfd, fd, ranges[:1], size)
                raise KeyboardInterrupt("killed")

            monkeypatch.setattr(inplace, "_write_ranges", killed)
            with pytest.raises(KeyboardInterrupt):
                update.apply(len(new))
        update.close()
        os.close(update.fd)
    finally:
        os.close(dirfd)


def test_a_committed_journal_is_finished_by_the_next_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, _, _ = _mirrored_then_changed(tmp_path, 14)
    _journal_for(dst, src, FEW, True, monkeypatch)
    assert (dst / "big").read_bytes() != (src / "big").read_bytes(), "the kill came too late"
    dry = run_fscsync("-an", f"{src}/", f"{dst}/", check=True, env=ENV)
    assert _journals(dst), "a dry run must not touch the journal"
    assert b"interrupted" not in dry.stdout + dry.stderr
    out = run_fscsync("-a", "--stats", f"{src}/", f"{dst}/", check=True, env=ENV)
    assert b'finished the interrupted update of ".big.~fscsync~redo"' in out.stdout + out.stderr
    assert b"Literal data: 0 bytes" in out.stdout, "the journal's blocks were sent again"
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()
    assert _journals(dst) == []


def test_an_uncommitted_journal_is_dropped(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst, old, _ = _mirrored_then_changed(tmp_path, 16)
    _journal_for(dst, src, FEW, False, monkeypatch)
    assert (dst / "big").read_bytes() == old
    out = run_fscsync("-a", "--stats", f"{src}/", f"{dst}/", check=True, env=ENV)
    assert b"interrupted" not in out.stdout + out.stderr
    assert b"Literal data: 16,384 bytes" in out.stdout
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()
    assert _journals(dst) == []


def test_a_journal_for_a_replaced_file_is_not_applied(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """After the kill the file was replaced (another tool renamed a new copy over it): the
    journal's inode no longer matches, so its blocks must not land in the new file."""
    src, dst, _, _ = _mirrored_then_changed(tmp_path, 18)
    _journal_for(dst, src, FEW, True, monkeypatch)
    replacement = (dst / "big").read_bytes()[:BLOCK * 2]
    (dst / "new").write_bytes(replacement)
    os.replace(dst / "new", dst / "big")
    dirfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert inplace.recover(dirfd, inplace.journal_name(b"big")) is False
    finally:
        os.close(dirfd)
    assert (dst / "big").read_bytes() == replacement
    assert _journals(dst) == []


# ---- the journal itself --------------------------------------------------------------------


@pytest.fixture
def big_dir(tmp_path: Path):
    _make_big(tmp_path / "big", 20)
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, dirfd
    os.close(dirfd)


def _expected(path: Path, writes: list[tuple[int, bytes]], size: int) -> bytes:
    data = bytearray(path.read_bytes())
    for off, chunk in writes:
        end = off + len(chunk)
        if end > len(data):
            data.extend(bytes(end - len(data)))
        data[off:end] = chunk
    return bytes(data[:size]) + bytes(max(0, size - len(data)))


@pytest.mark.parametrize("size_change", [0, 9000, -9000])
def test_digest_predicts_the_applied_file(big_dir, size_change: int) -> None:
    """Ranges past the final size are cut, as the digest cut them."""
    root, dirfd = big_dir
    size = SIZE + size_change
    writes = [(BLOCK, b"a" * BLOCK), (30 << 20, b"b" * 100), (SIZE - 50, b"c" * 4000),
              (SIZE + 20000, b"d" * 10)]
    want = _expected(root / "big", writes, size)
    update = inplace.Update.start(dirfd, b"big", None)
    assert update is not None
    for off, chunk in writes:
        update.write(off, chunk)
    assert update.digest(size) == xxhash.xxh3_128_digest(want)
    assert (root / "big").stat().st_size == SIZE, "the file changed before the commit"
    update.apply(size)
    update.finish()
    os.close(update.fd)
    assert (root / "big").read_bytes() == want
    assert _journals(root) == []


def test_overlapping_ranges_never_verify(big_dir) -> None:
    root, dirfd = big_dir
    update = inplace.Update.start(dirfd, b"big", None)
    update.write(0, b"x" * BLOCK)
    update.write(BLOCK // 2, b"y" * BLOCK)
    assert update.digest(SIZE) is None
    assert update.discard() is True
    os.close(update.fd)
    assert _journals(root) == []


def test_a_torn_commit_record_is_not_applied(big_dir) -> None:
    root, dirfd = big_dir
    old = (root / "big").read_bytes()
    update = inplace.Update.start(dirfd, b"big", None)
    update.write(BLOCK, b"z" * BLOCK)
    update._append(b"FSCOMMIT")  # the record began, the rest never reached the disk
    update.close()
    os.close(update.fd)
    assert inplace.recover(dirfd, inplace.journal_name(b"big")) is False
    assert (root / "big").read_bytes() == old
    assert _journals(root) == []


def test_start_declines_what_a_temp_file_should_handle(big_dir) -> None:
    root, dirfd = big_dir
    (root / "small").write_bytes(b"s" * (inplace.MIN_SIZE - 1))
    assert inplace.Update.start(dirfd, b"small", None) is None
    assert inplace.Update.start(dirfd, b"big", SIZE) is None, "all of it differs"
    os.link(root / "big", root / "twin")
    assert inplace.Update.start(dirfd, b"big", None) is None, "hard-linked"
    os.unlink(root / "twin")
    (root / os.fsdecode(inplace.journal_name(b"big"))).write_bytes(b"")
    assert inplace.Update.start(dirfd, b"big", None) is None, "a journal is left over"
    os.unlink(root / os.fsdecode(inplace.journal_name(b"big")))
    update = inplace.Update.start(dirfd, b"big", SIZE // inplace.MAX_CHANGED)
    assert update is not None
    assert update.discard() is True
    os.close(update.fd)

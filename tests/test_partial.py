"""--partial-dir, --delay-updates and --remove-source-files (issue 22), side by side
with rsync where rsync can be made to do the same thing.

Runs that must be caught midway are slowed with --bwlimit and watched from the
test (the temp file growing): no timing is asserted, only what the tree holds at
that moment and after."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, needs_root, run_fscsync, run_rsync
from support.e2e import item_lines
from support.enctree import EncTree, read_encdata
from support.peer import FakeSender, default_options
from support.stats import parse_stats
from support.treecmp import assert_same_tree
from support.trees import BASE_NS, set_times, write

from fscsync.fs.destfs import TEMP_MARK
from fscsync.wire import protocol

MiB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}


def _popen(*args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fscsync", *map(str, args)], env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _temp_with_data(root: Path, name: str, at_least: int, mark: str = TEMP_MARK.decode()
                    ) -> bool:
    """A temp file of `name` (its name holds `mark` too: fscsync's, or rsync's ".")
    holds at least `at_least` bytes: the file is half sent."""
    for p in root.rglob("*"):
        if mark in p.name and name in p.name:
            try:
                if p.stat().st_size >= at_least:
                    return True
            except OSError:
                continue
    return False


def _wait_for(proc: subprocess.Popen[bytes], what, why: str) -> None:
    deadline = time.monotonic() + 60
    while not what():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{why} never happened (exit {proc.returncode}): {err!r}")
        time.sleep(0.005)


def _literal(out: bytes) -> int:
    m = re.search(rb"^Literal data: ([\d,]+)", out, re.M)
    assert m, out
    return int(m.group(1).replace(b",", b""))


def _timed(root: Path, run: int) -> None:
    for i, p in enumerate(sorted(root.rglob("*")) + [root]):
        set_times(os.fsencode(p), BASE_NS + (run * 1000 + i) * 10**9)


# ---- --partial-dir --------------------------------------------------------------------


def test_partial_dir_is_the_basis_of_the_next_run(tmp_path: Path) -> None:
    """A run stopped (SIGTERM) in the middle of a big file leaves what arrived in
    .part/, never under the final name; the next run sends only the rest (Literal
    data), then removes the partial file and its directory. rsync, given the same
    partial file, does the same."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    data = random.Random(22).randbytes(6 * MiB)
    write(src / "big", data)
    proc = _popen("-a", "--partial-dir=.part", "--bwlimit=2M", f"{src}/", f"{dst}/")
    _wait_for(proc, lambda: _temp_with_data(dst, "big", MiB), "a half-written temp file")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 20
    assert not (dst / "big").exists(), "the partial data went under the final name"
    kept = (dst / ".part" / "big").read_bytes()
    assert MiB <= len(kept) < len(data) and data.startswith(kept)
    r_dst = tmp_path / "rsync"
    rsync = subprocess.Popen([shutil.which("rsync") or "rsync", "-a", "--partial-dir=.part",
                              "--bwlimit=2048", f"{src}/", f"{r_dst}/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(rsync, lambda: _temp_with_data(r_dst, ".big.", MiB, mark="."),
              "rsync's temp file")
    rsync.send_signal(signal.SIGTERM)
    rsync.communicate(timeout=60)
    assert (r_dst / ".part" / "big").exists() and not (r_dst / "big").exists()
    shutil.copy(dst / ".part" / "big", r_dst / ".part" / "big")  # the same basis for both

    out = run_fscsync("-a", "--stats", "--partial-dir=.part", f"{src}/", f"{dst}/", check=True)
    stats = parse_stats(out.stdout)
    assert stats["literal"] + stats["matched"] == len(data)
    assert stats["matched"] >= len(kept) - 4096, stats
    assert (dst / "big").read_bytes() == data
    assert not (dst / ".part").exists()
    r_out = run_rsync("-a", "--stats", "--no-whole-file", "--partial-dir=.part",
                      f"{src}/", f"{r_dst}/", check=True)
    assert _literal(r_out.stdout) < len(data) - len(kept) + 64 * 1024
    assert not (r_dst / ".part").exists()
    assert_same_tree(dst, r_dst)


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_partial_dir_of_an_up_to_date_file_is_removed(tmp_path: Path, absolute: bool
                                                      ) -> None:
    """A partial file left for a file that is now up to date is removed (a relative
    partial directory with it), and a partial dir in the source is not sent: as in
    rsync."""
    src = tmp_path / "src"
    (src / "sub" / ".part").mkdir(parents=True)
    write(src / "sub" / "f", b"current\n")
    write(src / "sub" / ".part" / "junk", b"not to be sent\n")
    _timed(src, 0)
    trees = {}
    for name, run in (("f", run_fscsync), ("r", run_rsync)):
        dst = tmp_path / name
        part = tmp_path / f"{name}.abs" if absolute else dst / "sub" / ".part"
        run("-a", "--exclude=.part/", f"{src}/", f"{dst}/", check=True)
        part.mkdir()
        write(part / "f", b"stale partial data\n")
        out = run("-ai", f"--partial-dir={part if absolute else '.part'}", f"{src}/",
                  f"{dst}/", check=True)
        assert not (part / "f").exists()
        assert part.exists() == absolute
        trees[name] = item_lines(out.stdout)
    assert trees["f"] == trees["r"]
    assert not (tmp_path / "f" / "sub" / ".part").exists() or absolute
    assert_same_tree(tmp_path / "f", tmp_path / "r")


# ---- --delay-updates ------------------------------------------------------------------


def test_delay_updates_changes_no_final_name_before_the_end(tmp_path: Path) -> None:
    """While a slow big file is on its way, the small files sent before it wait in
    .~tmp~ (their old copies untouched under the final names); at the end every file
    is in place and no .~tmp~ is left. The result and -i lines are rsync's."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write(src / "a", b"a old\n")
    write(src / "sub" / "b", b"b old\n")
    _timed(src, 0)
    dst, r_dst = tmp_path / "dst", tmp_path / "rsync"
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    run_rsync("-a", f"{src}/", f"{r_dst}/", check=True)
    write(src / "a", b"a new, longer\n")
    write(src / "sub" / "b", b"b new, longer\n")
    write(src / "sub" / "new", b"a new file\n")
    write(src / "zbig", random.Random(5).randbytes(4 * MiB))
    _timed(src, 1)
    proc = _popen("-ai", "--delay-updates", "--bwlimit=2M", f"{src}/", f"{dst}/")
    _wait_for(proc, lambda: _temp_with_data(dst, "zbig", MiB), "a half-written zbig")
    assert (dst / "a").read_bytes() == b"a old\n"
    assert (dst / ".~tmp~" / "a").read_bytes() == b"a new, longer\n"
    assert (dst / "sub" / "b").read_bytes() == b"b old\n"
    assert not (dst / "sub" / "new").exists()
    assert not (dst / "zbig").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    r_out = run_rsync("-ai", "--delay-updates", f"{src}/", f"{r_dst}/", check=True)
    assert sorted(item_lines(out)) == sorted(item_lines(r_out.stdout))
    assert not list(dst.rglob(".~tmp~"))
    assert_same_tree(src, dst)
    assert_same_tree(dst, r_dst)


def test_delay_updates_refuses_inplace(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for opts in (["--delay-updates", "--inplace"], ["--partial-dir=x", "--inplace"]):
        f = run_fscsync("-a", *opts, f"{tmp_path}/src/", str(tmp_path / "d"))
        r = run_rsync("-a", *opts, f"{tmp_path}/src/", str(tmp_path / "d"))
        assert f.returncode == r.returncode == 1
        assert b"cannot be used with" in f.stderr


# ---- --remove-source-files -----------------------------------------------------------


def _movable_tree(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    write(src / "a", b"a\n")
    write(src / "sub" / "b", b"b\n")
    write(src / "same", b"already there\n")
    write(src / "bad", b"cannot land: a directory is in its way\n")
    os.symlink("a", src / "link")
    _timed(src, 0)


def _prepared_dest(dst: Path, src: Path) -> None:
    (dst / "bad").mkdir(parents=True)
    write(dst / "bad" / "keep", b"x")
    shutil.copy2(src / "same", dst / "same")


def _left(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_remove_source_files_locally_like_rsync(tmp_path: Path) -> None:
    """Files that arrived (and the one already up to date, and the symlink) leave the
    source; the one whose destination copy failed stays, as do directories."""
    left = {}
    for name, run in (("f", run_fscsync), ("r", run_rsync)):
        src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
        _movable_tree(src)
        _prepared_dest(dst, src)
        out = run("-a", "--remove-source-files", f"{src}/", f"{dst}/")
        assert out.returncode == 23, out.stderr
        assert (dst / "a").read_bytes() == b"a\n"
        left[name] = _left(src)
    assert left["f"] == left["r"] == ["bad", "sub"]


def _linked_tree(src: Path) -> None:
    """A hard-link group of three names in two directories, and a lone file."""
    (src / "d").mkdir(parents=True)
    write(src / "a", b"linked\n")
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "d" / "c")
    write(src / "solo", b"solo\n")
    _timed(src, 0)


@pytest.mark.parametrize("again", [False, True], ids=["new", "up-to-date"])
def test_remove_source_files_removes_every_hard_link_name(tmp_path: Path, again: bool
                                                          ) -> None:
    """-H: every name of a hard-link group that is in place at the destination (sent,
    linked there, or already linked) leaves the source, as in rsync, not only the one
    that carried the data."""
    left = {}
    for name, run in (("f", run_fscsync), ("r", run_rsync)):
        src, dst = tmp_path / f"{name}-src", tmp_path / f"{name}-dst"
        _linked_tree(src)
        if again:
            assert run("-aH", f"{src}/", f"{dst}/").returncode == 0
        out = run("-aH", "--remove-source-files", f"{src}/", f"{dst}/")
        assert out.returncode == 0, out.stderr
        assert {os.lstat(dst / rel).st_ino for rel in ("a", "b", "d/c")} == {
            os.lstat(dst / "a").st_ino}
        assert (dst / "d" / "c").read_bytes() == b"linked\n"
        left[name] = _left(src)
    assert left["f"] == left["r"] == ["d"]


def test_remove_source_files_keeps_the_destination_inode(tmp_path: Path) -> None:
    """Source and destination the same directory: nothing is removed (rsync's local
    same-file check)."""
    src = tmp_path / "src"
    _movable_tree(src)
    os.unlink(src / "bad")
    out = run_fscsync("-a", "--remove-source-files", f"{src}/", f"{src}/")
    assert b"Skipping sender remove of destination file" in out.stderr
    assert _left(src) == ["a", "link", "same", "sub", "sub/b"]


def test_remove_source_files_skips_a_changed_file(tmp_path: Path) -> None:
    """A file changed after it was listed (here: while its slow transfer ran) is not
    removed, even though it arrived."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    write(src / "big", random.Random(1).randbytes(3 * MiB))
    write(src / "small", b"small\n")
    proc = _popen("-a", "--remove-source-files", "--bwlimit=2M", f"{src}/", f"{dst}/")
    _wait_for(proc, lambda: _temp_with_data(dst, "big", MiB // 2), "a half-written big")
    os.utime(src / "big", ns=(BASE_NS, BASE_NS))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 23, err
    assert (src / "big").exists()
    assert not (src / "small").exists()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_remove_source_files_over_ssh(sshd, tmp_path: Path, direction: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _movable_tree(src)
    _prepared_dest(dst, src)
    remote = ["-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync]
    ends = [f"{src}/", f"{sshd.host}:{dst}/"] if direction == "push" else [
        f"{sshd.host}:{src}/", f"{dst}/"]
    out = run_fscsync("-a", "-vv", "--remove-source-files", *remote, *ends, timeout=60)
    assert out.returncode == 23, out.stderr
    assert b"sender removed sub/b" in out.stdout
    assert _left(src) == ["bad", "sub"]
    assert (dst / "sub" / "b").read_bytes() == b"b\n"


@pytest.mark.parametrize("case", ["directory", "out-of-range", "malformed", "not-asked"])
def test_a_hostile_success_frame_removes_nothing(tmp_path: Path, case: str) -> None:
    """The sender takes SUCCESS only for a file it listed, in whole records, and only
    with --remove-source-files: anything else is a protocol error (exit 12) and the
    source stays whole."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "f", b"data\n")
    peer = FakeSender(timeout=30)
    opts = default_options(recursive=True, remove_source_files=case != "not-asked")
    assert peer.setup(b"", opts, role="sender", paths=[os.fsencode(src) + b"/"]), (
        peer.finish().describe())
    assert peer.wait_type(protocol.FLIST_END) is not None, peer.finish().describe()
    record = {"directory": (0, 1, 1), "out-of-range": (99, 1, 1), "not-asked": (1, 1, 1)}
    payload = (protocol.encode_successes([record[case]]) if case in record
               else b"\x00" * 7)
    peer.send(protocol.SUCCESS, payload)
    peer.wait_for(lambda t, p: t == protocol.FATAL)
    result = peer.finish()
    assert result.code == 12, result.describe()
    assert "Traceback" not in result.text
    assert (src / "f").read_bytes() == b"data\n"


@needs_root
def test_partial_dir_of_an_encrypted_file(tmp_path: Path) -> None:
    """An encrypted-layout file interrupted midway: its partial ciphertext waits in
    .part/ (no encdata on it, so it is never taken for the file), the next run sends
    only the rest and installs ciphertext and encdata exactly."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    t = EncTree(os.fsencode(src), seed="partial")
    t.dir(b"enc", 0o700)
    t.file(b"enc/big", 6 * MiB + 5)
    t.finish()
    proc = _popen("-aX", "--partial-dir=.part", "--bwlimit=2M", f"{src}/", f"{dst}/")
    _wait_for(proc, lambda: _temp_with_data(dst, "big", MiB), "a half-written temp file")
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    part = dst / "enc" / ".part" / "big"
    assert part.exists() and not (dst / "enc" / "big").exists()
    assert read_encdata(os.fsencode(part)) is None
    kept = part.stat().st_size
    out = run_fscsync("-aX", "--stats", "--partial-dir=.part", f"{src}/", f"{dst}/", check=True)
    stats = parse_stats(out.stdout)
    assert stats["matched"] >= kept - 4096, stats
    assert (dst / "enc" / "big").read_bytes() == (src / "enc" / "big").read_bytes()
    assert read_encdata(os.fsencode(dst / "enc" / "big")) == read_encdata(
        os.fsencode(src / "enc" / "big"))
    assert not (dst / "enc" / ".part").exists()


@needs_root
def test_delay_updates_of_encrypted_files(tmp_path: Path) -> None:
    """Delayed encrypted files get their encdata in .~tmp~ and keep it when renamed
    into place: the mirror equals the source, no .~tmp~ left."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    t = EncTree(os.fsencode(src), seed="delay")
    t.dir(b"enc", 0o700)
    t.file(b"enc/a", 100)
    t.file(b"enc/b", 9000)
    t.finish()
    run_fscsync("-aX", f"{src}/", f"{dst}/", check=True)
    t.file(b"enc/a", 200)
    t.file(b"enc/c", 300)
    t.finish()
    run_fscsync("-aX", "--delay-updates", f"{src}/", f"{dst}/", check=True)
    assert not list(dst.rglob(".~tmp~"))
    assert_same_tree(src, dst)

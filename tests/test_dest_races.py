"""A local user racing the receiver at the destination, and names that look like
fscsync's own litter (issue 19: findings 1, 9, 15 and 17).

The races are made deterministic with strace: the receiver's attribute call is held
at its entry (delay_enter) while the test swaps the destination entry, so the swap
always lands inside the window the attacker would have to hit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, run_fscsync

NS = 1_600_000_000 * 10**9
HOLD_US = 3_000_000
"""How long strace holds the receiver at the call: only the room for the swap."""


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    return strace


def _put(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(NS, NS))


def held_run(args: list[str], calls: str, log: Path, at_hold: Callable[[], None]
             ) -> subprocess.CompletedProcess[bytes]:
    """Run fscsync under strace with every `calls` syscall held at entry; `at_hold`
    runs once, as soon as the first of them is held (strace has printed its entry)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [_strace(), "-f", "-qq", "-e", "signal=none", "-o", str(log), "-e", f"trace={calls}",
         "-e", f"inject={calls}:delay_enter={HOLD_US}",
         sys.executable, "-m", "fscsync", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    held = False
    deadline = time.monotonic() + 60
    while not held and proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and any(f"{c}(" in line for line in log.read_text().splitlines()
                                for c in calls.split(",")):
            at_hold()
            held = True
        else:
            time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    assert held, f"the receiver never made the held call:\n{err.decode(errors='replace')}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _swap_for_link(entry: Path, victim: Path) -> None:
    """What the local user does: rename a symlink over the destination entry."""
    planted = entry.with_name(".planted")
    planted.symlink_to(victim)
    os.rename(planted, entry)


@pytest.mark.parametrize("kind", ["up-to-date-file", "existing-fifo", "new-fifo"])
def test_swapped_symlink_never_redirects_a_chmod(tmp_path: Path, kind: str) -> None:
    """Finding 1: while the receiver is about to change a mode (of an up-to-date file,
    an existing FIFO, or the temp node of a new one), the entry is swapped for a
    symlink to a file outside the destination. The victim must keep its mode: the
    change goes to the inode that was compared, through a pinned fd, or not at all."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    victim = tmp_path / "victim"
    _put(victim, b"secret\n", 0o600)
    if kind == "up-to-date-file":
        _put(src / "f", b"same\n", 0o4755)
        _put(dst / "f", b"same\n", 0o644)
    else:
        os.mkfifo(src / "f", 0o4755)
        os.chmod(src / "f", 0o4755)
        if kind == "existing-fifo":
            os.mkfifo(dst / "f", 0o644)

    def swap() -> None:
        if kind == "new-fifo":
            temp = [n for n in os.listdir(dst) if ".~fscsync~" in n]
            assert len(temp) == 1, temp
            _swap_for_link(dst / temp[0], victim)
        else:
            _swap_for_link(dst / "f", victim)

    proc = held_run(["-rlpt", "--specials", f"{src}/", f"{dst}/"], "chmod,fchmodat",
                    tmp_path / "strace.log", swap)
    err = proc.stderr.decode(errors="replace")
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, \
        f"root changed the mode of a file outside the destination:\n{err}"
    assert victim.read_bytes() == b"secret\n"
    assert proc.returncode in (0, 23), err


def test_real_names_like_litter_are_kept_and_not_sent_again(tmp_path: Path) -> None:
    """Finding 17: a real directory named like a temp file and a real file named like a
    redo journal are in the source. A second run (with --delete, so the directory is
    listed) must leave them as they are, same inodes, nothing sent; real litter of a
    killed run (a temp file, an uncommitted journal) is still removed."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d/.cache.~fscsync~AAAAAA").mkdir(parents=True)
    _put(src / "d/.cache.~fscsync~AAAAAA/inner", b"cached\n", 0o644)
    _put(src / "d/.notes.~fscsync~redo", b"my notes\n", 0o644)
    _put(src / "d/plain", b"plain\n", 0o644)
    run_fscsync("-a", "--delete", f"{src}/", f"{dst}/", check=True)
    real = [dst / "d/.cache.~fscsync~AAAAAA", dst / "d/.cache.~fscsync~AAAAAA/inner",
            dst / "d/.notes.~fscsync~redo"]
    inodes = [p.lstat().st_ino for p in real]
    _put(dst / "d/.plain.~fscsync~Zz09Qx", b"half a copy", 0o600)
    _put(dst / "d/.gone.~fscsync~redo", b"not a committed journal", 0o600)
    again = run_fscsync("-ai", "--delete", f"{src}/", f"{dst}/", check=True)
    out = again.stdout.decode(errors="replace")
    assert "fscsync~" not in out, f"real entries were sent or deleted again:\n{out}"
    assert [p.lstat().st_ino for p in real] == inodes
    assert (dst / "d/.notes.~fscsync~redo").read_bytes() == b"my notes\n"
    assert (dst / "d/.cache.~fscsync~AAAAAA/inner").read_bytes() == b"cached\n"
    assert sorted(os.listdir(dst / "d")) == [".cache.~fscsync~AAAAAA",
                                             ".notes.~fscsync~redo", "plain"]


@pytest.mark.parametrize(("source", "dest", "during"), [
    (0o700, 0o777, 0o700), (0o755, 0o700, 0o700), (0o750, 0o705, 0o700)],
    ids=["narrowed", "not-widened", "both"])
def test_an_existing_directory_is_narrowed_before_files_land(
        tmp_path: Path, source: int, dest: int, during: int) -> None:
    """Finding 9: an existing destination directory with bits the source's lacks loses
    them when the generator first reaches it (never gaining any then), so a 0700
    tree's files never sit in a 0777 directory; the exact mode comes at the end. The
    check is made while the receiver is held at its first rename: the directory's
    first new file, its attributes set, about to be renamed into place."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    _put(src / "d/f", b"private\n", 0o644)
    os.chmod(src / "d", source)
    (dst / "d").mkdir(parents=True)
    os.chmod(dst / "d", dest)
    seen = []
    proc = held_run(["-a", f"{src}/", f"{dst}/"], "renameat,renameat2", tmp_path / "strace.log",
                    lambda: seen.append(stat.S_IMODE((dst / "d").stat().st_mode)))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert seen == [during], f"mode while files landed: {oct(seen[0])}"
    assert stat.S_IMODE((dst / "d").stat().st_mode) == source
    assert (dst / "d/f").read_bytes() == b"private\n"


@pytest.fixture
def other_fs(tmp_path: Path):
    """A tmpfs mounted for the test: a -T DIR on another filesystem than the destination."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_temp_dir_on_another_filesystem_is_copied_beside_the_target(
        tmp_path: Path, other_fs: Path) -> None:
    """Finding 15: with -T DIR on another filesystem, rename cannot cross it (EXDEV).
    As rsync does, the finished file is copied beside the target and renamed: every
    file arrives with its attributes, exit 0, and neither DIR nor the destination
    keeps a temp file. rsync on the same tree and DIR, for comparison."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    _put(src / "new", b"new file\n", 0o640)
    _put(src / "sub/changed", os.urandom(300_000), 0o600)
    results = {}
    for tool in ("fscsync", "rsync"):
        dst = tmp_path / f"dst-{tool}"
        (dst / "sub").mkdir(parents=True)
        _put(dst / "sub/changed", (src / "sub/changed").read_bytes()[:200_000], 0o644)
        os.utime(dst / "sub/changed", ns=(NS - 10**9, NS - 10**9))
        args = ["-a", "--no-whole-file", "-T", str(other_fs), f"{src}/", f"{dst}/"]
        if tool == "fscsync":
            proc = run_fscsync(*args)
        else:
            proc = subprocess.run(["rsync", *args], capture_output=True)
        results[tool] = proc.returncode, proc.stderr.decode(errors="replace")
        for rel in ("new", "sub/changed"):
            a, b = os.lstat(src / rel), os.lstat(dst / rel)
            assert (dst / rel).read_bytes() == (src / rel).read_bytes(), (tool, rel)
            assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns), (tool, rel)
        assert os.listdir(other_fs) == [], tool
        assert sorted(os.listdir(dst)) == ["new", "sub"], tool
        assert os.listdir(dst / "sub") == ["changed"], tool
    assert results == {"fscsync": (0, ""), "rsync": (0, "")}


@pytest.mark.parametrize("where", ["beside", "temp-dir"])
def test_a_temp_file_is_open_to_others_only_behind_its_directory(
        tmp_path: Path, where: str) -> None:
    """A temp file is created with the mode it will end with (no fchmod later) only
    beside its target, where the destination directory guards it; in a -T DIR, which
    anyone may read, it stays 0600 until its attributes are set. Checked while the
    receiver is held at the write of its data."""
    src, dst, tdir = tmp_path / "src", tmp_path / "dst", tmp_path / "tdir"
    src.mkdir()
    tdir.mkdir()
    _put(src / "f", b"readable by all once in place\n", 0o644)
    args = ["-a", *(["-T", str(tdir)] if where == "temp-dir" else []), f"{src}/", f"{dst}/"]
    look = dst if where == "beside" else tdir
    seen = []
    proc = held_run(args, "pwrite64", tmp_path / "strace.log", lambda: seen.extend(
        stat.S_IMODE(os.lstat(look / n).st_mode) for n in os.listdir(look)))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert seen == [0o644 if where == "beside" else 0o600]
    assert stat.S_IMODE((dst / "f").stat().st_mode) == 0o644

"""Issue 22: two runs into one destination at the same time (two overlapping cron jobs).

Both must end with exit 0 and the source as the result: one run's temp files and
journals are never another's litter (each holds a flock on its own while it uses
them), and --lock-file makes the second run wait for the first.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from support.treecmp import assert_same_tree
from test_kill import ENV, T_A, T_B, MiB, _put
from test_kill import temp_files as _temp_files
from test_timeout import HANG_GUARD_S
from test_timeout import _finish as finish

from fscsync.fs import inplace

T_OLD, T_NEW = T_A, T_B


def _tree(root: Path, seed: int, big: int = 6 * MiB) -> None:
    """A big file and a few hundred small ones in a few directories, all dated `seed`."""
    rnd = random.Random(seed)
    ns = T_NEW + seed
    _put(root / "big", rnd.randbytes(big), ns)
    for d in range(4):
        for j in range(100):
            _put(root / f"d{d}" / f"f{j:03d}", rnd.randbytes(rnd.randrange(0, 3000)), ns)


def _start(*args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fscsync", *map(str, args)], env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_temp(proc: subprocess.Popen[bytes], root: Path, name: str) -> bool:
    """Until a temp file or journal of `name` exists (the first run is writing it);
    False if the run ended first."""
    deadline = time.monotonic() + HANG_GUARD_S
    while proc.poll() is None and time.monotonic() < deadline:
        if any(name in t for t in _temp_files(root)):
            return True
        time.sleep(0.002)
    return False


def _finish(*procs: subprocess.Popen[bytes]) -> list[tuple[int, str]]:
    return [finish(proc) for proc in procs]


def _check(results: list[tuple[int, str]], src: Path, dst: Path, what: str) -> None:
    for code, err in results:
        assert code == 0, f"{what}: exit {code}\n{err}"
    assert not _temp_files(dst), f"{what}: {_temp_files(dst)}"
    assert_same_tree(src, dst)


def test_two_runs_started_together_both_complete(tmp_path: Path) -> None:
    """Started at the same moment, three times over changing sources: both exit 0."""
    dst = tmp_path / "dst"
    for i in range(3):
        src = tmp_path / f"src{i}"
        _tree(src, i)
        what = f"round {i}"
        a = _start("-a", "--delete", "--bwlimit", "8M", f"{src}/", dst)
        b = _start("-a", "--delete", f"{src}/", dst)
        _check(_finish(a, b), src, dst, what)


def test_second_run_starting_while_the_first_writes_the_big_file(tmp_path: Path) -> None:
    """The overlapping cron job: the second run starts while the first (throttled) has
    the big file half written, so the second lists the first's temp file among what a
    killed run would leave. Before each run held its temp files, the second removed it
    and the first failed with 'finishing "big" failed: No such file or directory'."""
    dst = tmp_path / "dst"
    for i in range(3):
        src = tmp_path / f"src{i}"
        _tree(src, i)
        what = f"round {i}"
        a = _start("-a", "--delete", "--bwlimit", "2M", f"{src}/", dst)
        assert _wait_for_temp(a, dst, "big"), f"{what}: no temp file seen: {_finish(a)}"
        b = _start("-a", "--delete", f"{src}/", dst)
        _check(_finish(b, a), src, dst, what)


def test_second_run_meets_the_first_runs_redo_journal(tmp_path: Path) -> None:
    """A big file with few changes is updated in place under a redo journal; a second
    run that lists the directory meanwhile must leave that live journal alone (neither
    apply nor remove it) and still end with the source's data."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = inplace.MIN_SIZE + 4096
    rnd = random.Random(5)
    data = bytearray(rnd.randbytes(size))
    _put(src / "big", bytes(data), T_OLD)
    _put(src / "small", b"x", T_OLD)
    _check(_finish(_start("-a", f"{src}/", dst)), src, dst, "first copy")
    for off in range(0, size // 8, MiB):  # an eighth changes: updated where it lies
        data[off : off + 4096] = rnd.randbytes(4096)
    data[size // 2 : size // 2 + 4 * MiB] = rnd.randbytes(4 * MiB)
    _put(src / "big", bytes(data), T_NEW)
    _put(src / "small", b"y", T_NEW)
    a = _start("-a", "--bwlimit", "2M", f"{src}/", dst)
    assert _wait_for_temp(a, dst, "big"), "the first run wrote no journal"
    assert [Path(t).name for t in _temp_files(dst)] == [inplace.journal_name(b"big").decode()]
    b = _start("-a", f"{src}/", dst)
    _check(_finish(b, a), src, dst, "in-place update")
    assert (dst / "big").read_bytes() == bytes(data)


def _held(lock: Path) -> bool:
    """Whether some process holds an exclusive flock on `lock`."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_lock_file_makes_the_second_run_wait_for_the_first(tmp_path: Path) -> None:
    """With --lock-file the second run says it waits, and starts only once the first is
    done: it then finds nothing to do (its -i lists nothing), where without the lock
    it would have copied everything itself while the throttled first run went on."""
    src, dst, lock = tmp_path / "src", tmp_path / "dst", tmp_path / "nightly.lock"
    _tree(src, 7)
    a = _start("-a", "--delete", "--bwlimit", "4M", "--lock-file", lock, f"{src}/", dst)
    deadline = time.monotonic() + HANG_GUARD_S
    while not _held(lock):
        assert a.poll() is None and time.monotonic() < deadline, _finish(a)
        time.sleep(0.002)
    b = _start("-a", "--delete", "-iv", "--lock-file", lock, f"{src}/", dst)
    assert finish(a)[0] == 0
    out, err = b.communicate(timeout=HANG_GUARD_S)
    assert b.returncode == 0, err
    lines = out.decode().splitlines()
    assert f"waiting for the lock on {lock} (another run holds it)" in lines, lines
    assert not [ln for ln in lines if ln.startswith(("<", ">", "c", "h", "*"))], lines
    assert lock.exists() and not _held(lock)
    assert not _temp_files(dst)
    assert_same_tree(src, dst)


def test_lock_file_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    lock = tmp_path / "no-such-dir" / "x.lock"
    proc = subprocess.run([sys.executable, "-m", "fscsync", "-a", "--lock-file", str(lock),
                           f"{tmp_path}/", str(tmp_path / "dst")], env=ENV,
                          capture_output=True, timeout=HANG_GUARD_S)
    err = proc.stderr.decode()
    assert proc.returncode == 11, err
    assert err.startswith(f"fscsync: cannot lock {lock} (--lock-file): No such file or "
                          "directory (2)"), err
    assert not (tmp_path / "dst").exists()

"""The pipeline under the speed work of issue 7, checked against rsync where it shows:
more files than the receiver keeps requested at once, the sender finding many
sources' files again from their transfer paths, a compressed stream whose frames
outgrow the input buffer, and the local server as a fork (spawned when threads run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import run_fscsync, run_rsync
from support.treecmp import assert_same_tree
from support.trees import pattern, write
from test_local_sync import ENV, Twin, items, settle

from fscsync.engine.receiver import MAX_IN_FLIGHT
from fscsync.run import transport


def _small_files(root: Path, count: int, dirs: int) -> None:
    for i in range(count):
        d = root / f"d{i % dirs:02d}"
        d.mkdir(exist_ok=True)
        write(d / f"f{i:05d}", pattern(i % 700 + 1, i))


def test_more_files_than_requests_in_flight(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    _small_files(t.src, 3 * MAX_IN_FLIGHT + 17, 7)
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    t.assert_same()
    again = t.fscsync("-ai", f"{t.src}/", "@D/dst")
    assert items(again) == [], again.stdout.decode(errors="replace")


def test_files_of_many_sources_are_read_from_their_own_paths(tmp_path: Path) -> None:
    """Requested files are opened from the path the scanner gave them, rebuilt from the
    transfer path and its source: a file in a subdirectory, a directory's contents, a
    bare relative name, a directory by name, and a trailing /. form."""
    src = tmp_path / "src"
    for rel, size in [("a/one.txt", 10), ("a/skip.txt", 3), ("b/sub/two.txt", 5000),
                      ("c", 1), ("d/deep/three", 70_000), ("e/four", 2)]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        write(src / rel, pattern(size, rel))
    settle(src)
    sources = ["a/one.txt", "b/", "c", "d", "e/."]
    for tool, run in (("r", run_rsync), ("f", run_fscsync)):
        run("-a", *sources, str(tmp_path / tool) + "/", cwd=src, env=ENV, check=0)
    for d in ("r", "f"):
        os.utime(tmp_path / d, ns=(0, 0))
    assert_same_tree(tmp_path / "r", tmp_path / "f")


def test_compressed_frames_bigger_than_the_input_buffer(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    write(t.src / "random", pattern(3 << 20, "big"))
    write(t.src / "text", b"a compressible line of text\n" * 100_000)
    settle(t.src)
    t.run("-az", f"{t.src}/", "@D/dst")
    t.assert_same()


def test_local_server_is_a_fork_not_a_second_interpreter(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None or subprocess.run([strace, "-qq", "-o", "/dev/null", "true"]).returncode:
        pytest.skip("strace missing or not allowed to trace here")
    src = tmp_path / "src"
    src.mkdir()
    write(src / "x", b"x")
    log = tmp_path / "execs"
    subprocess.run([strace, "-f", "-qq", "-o", str(log), "-e", "trace=execve",
                    sys.executable, "-m", "fscsync", "-a", f"{src}/", str(tmp_path / "dst")],
                   check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    execs = [ln for ln in log.read_text().splitlines() if "execve(" in ln]
    assert len(execs) == 1, execs
    assert (tmp_path / "dst" / "x").read_bytes() == b"x"


def test_forked_server_runs_the_function_and_reports_its_code() -> None:
    if threading.active_count() > 1:
        pytest.skip("this test process already runs other threads")
    peer = transport.fork_server(lambda rfd, wfd: 7 if os.write(wfd, b"hi") == 2 else 1)
    assert peer.argv is None, "forked, not spawned"
    assert os.read(peer.rfd, 2) == b"hi"
    assert peer.close() == 7


def test_server_is_spawned_when_threads_already_run() -> None:
    """Forking a process with running threads can copy a lock held by one of them
    (a rich progress bar refreshes from a thread): then the server is started anew."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        peer = transport.fork_server(lambda rfd, wfd: 0)
    finally:
        stop.set()
        thread.join()
    assert peer.argv[1:] == ["-m", "fscsync", "--server"]
    assert isinstance(peer.close(timeout=30), int)


@pytest.mark.parametrize("closed", ["stdin", "stdin-and-stdout"])
def test_client_started_with_standard_descriptors_closed(tmp_path: Path, closed: str) -> None:
    """A client started with stdin (and stdout) closed, as some schedulers start jobs,
    gets pipes numbered 0 and 1: the remote shell must still find them as its stdin
    and stdout, and the client must end cleanly with nothing to print to."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    rsh = tmp_path / "rsh.sh"
    rsh.write_text(f"#!/bin/sh\nexec {sys.executable} -m fscsync --server\n")
    close = "exec 0<&-" if closed == "stdin" else "exec 0<&- 1>&-"
    proc = subprocess.run(
        ["sh", "-c", f'{close}; exec "$@"', "sh", sys.executable, "-m", "fscsync", "-a",
         "-e", f"sh {rsh}", f"{src}/", f"elsewhere:{dst}/"],
        stderr=subprocess.PIPE, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert err == ""
    assert (dst / "f").read_bytes() == b"data\n"


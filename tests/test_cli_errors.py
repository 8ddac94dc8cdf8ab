"""Failures: one clear line, rsync's exit code, and the rest of the work still done."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, needs_root, run_fscsync, run_rsync
from support.treecmp import assert_same_tree
from support.trees import set_times, write
from test_local_sync import (
    ENV,
    T0,
    Proc,
    Runs,
    Twin,
    assert_clean_stderr,
    err_lines,
    make_plain_tree,
    settle,
    subst,
)

NOCAP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search"]
"""Root without the capabilities that bypass file modes: a mode-000 file is unreadable."""


def problem_lines(proc: Proc) -> list[str]:
    """stderr without the rsync-style closing summary ("fscsync error: ... (code N)")."""
    return [ln for ln in err_lines(proc) if not ln.startswith("fscsync error: ")]


def assert_one_clear_line(proc: Proc, *needles: str) -> str:
    assert_clean_stderr(proc)
    lines = problem_lines(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith("fscsync"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines)
    return lines[0]


# ---- bad command lines -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--bogus-option", "a", "b"],
    ["--max-delete=abc", "a", "b"],
    ["--bwlimit=fast", "a", "b"],
    ["-a"],
    [],
], ids=["unknown", "max-delete", "bwlimit", "no-paths", "nothing"])
def test_bad_command_line(tmp_path: Path, argv: list[str]) -> None:
    expected = run_rsync(*argv, cwd=tmp_path).returncode
    assert expected == 1
    proc = run_fscsync(*argv, cwd=tmp_path, check=1)
    needle = argv[0].split("=")[0].lstrip("-") if argv and argv[0] != "-a" else ""
    assert_one_clear_line(proc, needle)
    assert os.listdir(tmp_path) == []


def test_help_and_version() -> None:
    assert b"--delete" in run_fscsync("--help", check=True).stdout
    assert run_fscsync("--version", check=True).stdout.startswith(b"fscsync version ")


# ---- sources ------------------------------------------------------------------------------


def test_missing_source_rest_still_copied(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    runs = t.run("-a", t.src / "a.txt", t.src / "missing", t.src / "sub", "@D/dst", code=23)
    assert_one_clear_line(runs.fscsync, "missing", "No such file or directory")
    t.assert_same(made=["dst"])
    assert (t.f / "dst/sub/deeper/c.txt").exists()


def test_missing_source_skips_deletion(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    write(t.f / "dst/extraneous", b"keep me")
    proc = t.fscsync("-a", "--delete", f"{t.src}/", t.src / "missing", "@D/dst", code=23)
    assert (t.f / "dst/extraneous").exists()
    assert "IO error encountered -- skipping file deletion" in proc.stdout.decode(
        ).splitlines(), proc.stdout


@pytest.fixture
def nocap() -> list[str]:
    """The NOCAP prefix, once it is shown to really take root's file-mode bypass away."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    probe = subprocess.run([*NOCAP, "cat", "/proc/self/fdinfo/0"], capture_output=True,
                           stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr!r}")
    return NOCAP


def run_both_nocap(t: Twin, nocap: list[str], *args: str, code: int) -> Runs:
    """Twin.run, with both tools started without the file-mode bypass."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    procs = []
    for tool, area in (([shutil.which("rsync") or "rsync"], t.r),
                       ([sys.executable, "-m", "fscsync"], t.f)):
        proc = subprocess.run([*nocap, *tool, *(subst(a, area) for a in args)],
                              capture_output=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=60)
        assert proc.returncode == code, (tool, proc.returncode, proc.stderr)
        procs.append(proc)
    assert_clean_stderr(procs[1])
    return Runs(*procs)


@pytest.fixture
def unreadable(tmp_path: Path) -> Iterator[Twin]:
    """A synced-from tree with an unreadable file and an unreadable directory."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    write(t.src / "secret", b"s")
    settle(t.src)
    os.chmod(t.src / "secret", 0)
    os.chmod(t.src / "sub/deeper", 0)
    yield t
    os.chmod(t.src / "sub/deeper", 0o755)


def test_unreadable_entries_rest_still_copied(unreadable: Twin, nocap: list[str]) -> None:
    t = unreadable
    runs = run_both_nocap(t, nocap, "-a", f"{t.src}/", "@D/dst", code=23)
    lines = problem_lines(runs.fscsync)
    assert len(lines) == 2, lines
    assert any("secret" in ln and "Permission denied" in ln for ln in lines), lines
    assert any("sub/deeper" in ln and "Permission denied" in ln for ln in lines), lines
    t.assert_same()
    assert (t.f / "dst/sub/b.bin").exists() and not (t.f / "dst/secret").exists()


def test_source_walk_error_skips_deletion(unreadable: Twin, nocap: list[str]) -> None:
    t = unreadable
    (t.f / "dst/gone-dir").mkdir(parents=True)
    write(t.f / "dst/gone-dir/f", b"x")
    write(t.f / "dst/gone", b"x")
    proc = run_both_nocap(t, nocap, "-a", "--delete", f"{t.src}/", "@D/dst", code=23).fscsync
    assert (t.f / "dst/gone").exists() and (t.f / "dst/gone-dir/f").exists()
    assert "IO error encountered -- skipping file deletion" in proc.stdout.decode(
        ).splitlines(), proc.stdout
    assert (t.f / "dst/a.txt").exists()


# ---- destinations -------------------------------------------------------------------------


@pytest.mark.parametrize("dest, code", [
    ("@D/file", 3),
    ("@D/file/", 3),
    ("@D/no/such/dir/", 11),
], ids=["is-a-file", "is-a-file-slash", "parent-missing"])
def test_unusable_destination(tmp_path: Path, dest: str, code: int) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    for area in (t.r, t.f):
        write(area / "file", b"a plain file")
        set_times(area / "file", T0 * 10**9)
    runs = t.run("-a", f"{t.src}/", t.src / "a.txt", dest, code=code)
    assert_one_clear_line(runs.fscsync)
    t.assert_same()


GIVES_UP_AFTER_FLIST_START = """
from fscsync.wire import protocol
chan = protocol.Channel(0, 1)
protocol.send_hello(chan, "server")
protocol.recv_hello(chan, "client")
chan.recv()
chan.send(protocol.READY)
chan.flush()
assert chan.recv()[0] == protocol.FLIST_START
protocol.send_json(chan, protocol.FATAL, {"msg": "no room for it here", "code": 11})
chan.flush()
"""


def test_peer_reason_wins_over_the_broken_pipe(tmp_path: Path) -> None:
    """A receiver that gives up (says why, and exits) while the sender still writes a
    file list bigger than a pipe holds: the sender's next write meets the closed pipe,
    and the user still sees the receiver's reason and exit code, not "connection
    closed by the other side" (exit 12)."""
    src = tmp_path / "src"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for _ in range(1000):
            (src / f"d{d}" / os.urandom(12).hex()).touch()
    fake = tmp_path / "fake-receiver.py"
    fake.write_text(GIVES_UP_AFTER_FLIST_START)
    rsh = tmp_path / "rsh"
    rsh.write_text(f"#!/bin/sh\nexec {sys.executable} {fake}\n")
    rsh.chmod(0o755)
    proc = run_fscsync("-a", "-e", str(rsh), f"{src}/", "host:dst/",
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 11, proc.stderr
    assert_one_clear_line(proc, "no room for it here")


@pytest.fixture
def readonly_mount(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", mnt],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr!r}")
    yield mnt
    subprocess.run(["umount", mnt], check=True)


@needs_root
@pytest.mark.parametrize("sub, codes", [("new/", {11}), ("", {23})],
                         ids=["new-dir", "existing-dir"])
def test_read_only_destination(tmp_path: Path, readonly_mount: Path, sub: str,
                               codes: set[int]) -> None:
    """rsync: 11 when it cannot create the destination, 23 when every file fails in it
    (each file says why: nothing is probed by writing before the first file)."""
    src = tmp_path / "src"
    make_plain_tree(src)
    assert run_rsync("-a", f"{src}/", f"{readonly_mount}/{sub}").returncode in codes
    proc = run_fscsync("-a", f"{src}/", f"{readonly_mount}/{sub}")
    assert proc.returncode in codes
    if sub:
        assert_one_clear_line(proc, "Read-only file system")
    else:
        assert_clean_stderr(proc)
        lines = problem_lines(proc)
        assert lines and "Read-only file system" in lines[0], lines
    assert os.listdir(readonly_mount) == []


@needs_root
def test_full_disk_is_an_error_in_file_io(tmp_path: Path) -> None:
    """A destination that fills up: the file fails, its temp file goes, and the run ends
    with rsync's 11 (error in file I/O), not 23."""
    src, dst = tmp_path / "src", tmp_path / "small"
    src.mkdir()
    dst.mkdir()
    write(src / "big.bin", os.urandom(3 << 20))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dst],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {mounted.stderr!r}")
    try:
        assert run_rsync("-a", f"{src}/", f"{dst}/").returncode == 11
        for name in os.listdir(dst):
            os.unlink(dst / name)
        proc = run_fscsync("-a", f"{src}/", f"{dst}/")
        assert proc.returncode == 11, proc.stderr
        assert_clean_stderr(proc)
        assert "No space left on device" in proc.stderr.decode(), proc.stderr
        assert os.listdir(dst) == []
    finally:
        subprocess.run(["umount", dst], check=True)


@needs_root
def test_no_change_run_into_read_only_mirror(tmp_path: Path) -> None:
    """A no-change run writes nothing, so a read-only mirror is no error: exit 0 as
    rsync's (the destination used to be probed by writing first: exit 11)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_plain_tree(src)
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    bound = subprocess.run(["mount", "--bind", dst, dst], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount: {bound.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", dst], check=True, capture_output=True)
        assert run_rsync("-a", f"{src}/", f"{dst}/").returncode == 0
        proc = run_fscsync("-a", f"{src}/", f"{dst}/")
        assert proc.returncode == 0, proc.stderr
        assert_clean_stderr(proc)
    finally:
        subprocess.run(["umount", dst], check=True)


def _with_closed_stdout(argv: list[str], how: str = "pipe"
                        ) -> subprocess.CompletedProcess[bytes]:
    """Run argv with stdout a pipe whose reader is already gone (`| head -1`, made
    deterministic: every write to stdout meets EPIPE), or (how="closed") with
    descriptor 1 closed (`>&-`)."""
    if how == "closed":
        argv = ["sh", "-c", 'exec "$@" >&-', "sh", *argv]
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"},
                              timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("how", ["pipe", "closed"])
@pytest.mark.parametrize("args", [["-av"], ["-av", "--stats"], ["-ai", "--progress"],
                                  ["--version"], ["--help"]], ids=" ".join)
def test_a_reader_that_went_away_leaves_the_run_and_its_exit_code(tmp_path: Path,
                                                                  args: list[str],
                                                                  how: str) -> None:
    """`fscsync -av src/ dst/ | head -1`: the copy finishes and exits 0, as rsync's does
    (it ignores SIGPIPE and the lost output), never "internal error: BrokenPipeError";
    the same with stdout closed (where rsync, which puts its own pipes there, fails)."""
    src = tmp_path / "src"
    make_plain_tree(src)
    ours = _with_closed_stdout([sys.executable, "-m", "fscsync", *args, f"{src}/",
                                f"{tmp_path}/dst/"] if args[0].startswith("-a") else
                               [sys.executable, "-m", "fscsync", *args], how)
    assert ours.returncode == 0 and not ours.stderr, ours.stderr
    if not args[0].startswith("-a"):
        return
    assert_same_tree(src, tmp_path / "dst")
    if how == "pipe":
        theirs = _with_closed_stdout(["rsync", *args, f"{src}/", f"{tmp_path}/rdst/"])
        assert theirs.returncode == 0, theirs.stderr


def test_a_reader_that_went_away_does_not_hide_a_failure(tmp_path: Path) -> None:
    """With stdout gone, a missing source still ends with its error on stderr and 23."""
    src = tmp_path / "src"
    make_plain_tree(src)
    proc = _with_closed_stdout([sys.executable, "-m", "fscsync", "-av", f"{src}/",
                                f"{tmp_path}/missing", f"{tmp_path}/dst/"])
    text = proc.stderr.decode(errors="replace")
    assert proc.returncode == 23, text
    assert "missing" in text and "Traceback" not in text and "internal error" not in text
    assert (tmp_path / "dst/a.txt").read_bytes() == b"alpha\n"

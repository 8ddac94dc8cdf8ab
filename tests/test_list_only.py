"""--list-only (and a lone SRC) lists a tree as rsync does, locally and over ssh,
and never writes anywhere."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from support import run_fscsync, run_rsync


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"x" * 1234)
    (root / "sub" / "b").write_bytes(b"")
    os.symlink("a.txt", root / "ln")
    os.mkfifo(root / "fifo")
    for p in (root / "a.txt", root / "sub" / "b", root / "sub", root / "fifo", root):
        os.utime(p, (1_600_000_000, 1_600_000_000))
    os.utime(root / "ln", (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def _lines(out: bytes) -> list[str]:
    return sorted(out.decode().splitlines())


def test_list_only_matches_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    ours = run_fscsync("--list-only", "-rl", f"{src}/", check=True)
    theirs = run_rsync("--list-only", "-rl", f"{src}/", check=True)
    assert _lines(ours.stdout) == _lines(theirs.stdout)
    assert any(line.endswith("ln -> a.txt") for line in _lines(ours.stdout))


def test_lone_source_lists_one_level(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    before = sorted(os.listdir(tmp_path))
    ours = run_fscsync(f"{src}/", check=True)
    theirs = run_rsync(f"{src}/", check=True)
    assert _lines(ours.stdout) == _lines(theirs.stdout)
    assert "sub/b" not in ours.stdout.decode()
    assert sorted(os.listdir(tmp_path)) == before


def test_list_only_over_ssh(tmp_path: Path, sshd) -> None:
    src = tmp_path / "src"
    _tree(src)
    ours = run_fscsync("--list-only", "-r", "-e", sshd.rsh, "--remote-fscsync",
                       sshd.remote_fscsync, f"{sshd.host}:{src}/", check=True)
    local = run_fscsync("--list-only", "-r", f"{src}/", check=True)
    assert _lines(ours.stdout) == _lines(local.stdout)


def test_progress_into_a_closed_pipe_still_copies_everything(tmp_path: Path) -> None:
    """A reader that goes away (`| head -1`) must not turn progress lines into file
    errors: the copy completes and exits 0."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(200):
        (src / f"f{i:03d}").write_bytes(b"x" * (i + 1))
    cmd = (f"{shlex.quote(sys.executable)} -m fscsync -a --progress {shlex.quote(str(src))}/ "
           f"{shlex.quote(str(dst))}/ | head -1; exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(dst)) == sorted(os.listdir(src))

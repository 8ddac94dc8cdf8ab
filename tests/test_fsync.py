"""--fsync: which syncs a run makes, and in which order, seen through strace.

The power-cut test (test_powercut.py) shows what the order buys; this one pins the
order itself on any filesystem: each file is synced before its rename into place,
each directory the run changed is synced after its last entry changed, a run that
changes nothing syncs nothing, and the result and -i lines are rsync --fsync's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, run_rsync
from support.treecmp import assert_same_tree

from fscsync.fs.destfs import is_temp_name

_CALL = re.compile(r"^\d+\s+(fsync|renameat2?|rename|unlinkat|mkdirat|mkdir)\((.*)\)\s+= 0")
_FD = re.compile(r"<([^>]*)>")


Calls = list[tuple[str, list[str]]]


def _traced(*args: str, cwd: Path | None = None
            ) -> tuple[subprocess.CompletedProcess[bytes], Calls]:
    """Run fscsync under strace -f -y; its successful syncs, renames, unlinks and
    mkdirs, each with the paths strace shows for its fd arguments and its names."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    out = Path(os.environ.get("TMPDIR", "/tmp"))
    log = out / f"fscsync-fsync-{os.getpid()}.strace"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(log), "-e",
                           "trace=fsync,rename,renameat,renameat2,unlinkat,mkdir,mkdirat",
                           sys.executable, "-m", "fscsync", *args],
                          capture_output=True, env=env, timeout=120, check=False, cwd=cwd)
    calls = []
    try:
        for line in log.read_text(errors="replace").splitlines():
            m = _CALL.match(line)
            if m:
                calls.append((m.group(1), [a.strip().strip('"') for a in m.group(2).split(",")]))
    finally:
        log.unlink()
    if proc.returncode != 0 and b"PTRACE" in proc.stderr:
        pytest.skip("strace cannot trace here")
    assert proc.returncode == 0, proc.stderr
    return proc, calls


def _tree(root: Path) -> None:
    for rel, data in {"a": b"1", "sub/b": b"22" * 5000, "sub/deep/c": b"", "d/e": b"x"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink("a", root / "link")
    for path in [*root.rglob("*"), root]:  # rsync sets no time within the second it has
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)


def _dir_of(arg: str) -> str:
    m = _FD.search(arg)
    assert m, arg
    return m.group(1)


def test_each_file_synced_before_its_rename_and_changed_dirs_after(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tree(src)
    _, calls = _traced("-a", "--fsync", f"{src}/", f"{dst}/")
    assert_same_tree(src, dst)
    synced_files = set()
    renamed_into: dict[str, int] = {}  # directory -> index of its last change
    renames = 0
    for i, (call, args) in enumerate(calls):
        if call == "fsync":
            synced_files.add(_dir_of(args[0]))
        elif call.startswith("rename") and is_temp_name(os.fsencode(args[1])):
            renamed_into[_dir_of(args[2])] = i
            if os.path.islink(os.path.join(_dir_of(args[2]), args[3])):
                continue  # a symlink's target is in its inode: nothing to sync first
            renames += 1
            temp = os.path.join(_dir_of(args[0]), args[1])
            assert temp in synced_files, f"{temp} renamed into place before its fsync"
        elif call in ("mkdirat", "mkdir"):
            parent = _dir_of(args[0]) if call == "mkdirat" else os.path.dirname(args[0])
            renamed_into[parent] = i
    assert renames == 4  # a, b, c, e
    for directory, last in renamed_into.items():
        later = [i for i, (call, args) in enumerate(calls)
                 if call == "fsync" and _dir_of(args[0]) == directory and i > last]
        assert later, f"directory {directory} changed but never synced after"
    assert str(tmp_path) in {_dir_of(a[0]) for c, a in calls if c == "fsync"}, \
        "the made destination's parent was not synced"


def test_no_change_run_syncs_nothing_and_matches_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    first, _ = _traced("-ai", "--fsync", "src/", "ours/", cwd=tmp_path)
    ref = run_rsync("-ai", "--fsync", "src/", "theirs/", check=True, cwd=tmp_path)
    assert first.stdout.replace(b"ours", b"theirs") == ref.stdout
    assert_same_tree(ours, theirs)
    (src / "sub" / "b").write_bytes(b"changed")
    (src / "d" / "e").unlink()
    again, calls = _traced("-ai", "--fsync", "--delete", f"{src}/", f"{ours}/")
    ref = run_rsync("-ai", "--fsync", "--delete", f"{src}/", f"{theirs}/", check=True)
    # the same lines; their order around deletions is --delete-during's (issue 22's)
    assert sorted(again.stdout.splitlines()) == sorted(ref.stdout.splitlines())
    assert_same_tree(ours, theirs)
    synced = [_dir_of(a[0]) for c, a in calls if c == "fsync"]
    assert str(ours / "sub") in synced and str(ours / "d") in synced  # changed dirs
    assert str(ours / "sub" / "deep") not in synced and str(ours) not in synced
    time.sleep(0.1)  # past CHANGE_SLACK_NS: the last run's changes are not this one's
    _, calls = _traced("-a", "--fsync", f"{src}/", f"{ours}/")
    assert [c for c, _ in calls if c == "fsync"] == []

"""Tests of the test helpers themselves: a comparison that misses differences is worse than none."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import xattr
from support import needs_root, run_rsync
from support.treecmp import assert_same_tree, diff, show, snapshot
from support.trees import make_rich_tree, set_times, write

AS_ROOT = os.geteuid() == 0


def _twin_trees(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    make_rich_tree(a)
    make_rich_tree(b)
    return a, b


def _keep_mtime(path: Path, change: Callable[[], None]) -> None:
    """Apply a change but restore the entry's and its parent's mtimes, isolating one field."""
    times = {p: os.lstat(p).st_mtime_ns for p in (path, path.parent) if os.path.lexists(p)}
    change()
    for p, ns in times.items():
        if os.path.lexists(p):
            set_times(p, ns)


def test_rich_tree_has_every_kind(tmp_path: Path) -> None:
    built = make_rich_tree(tmp_path / "t")
    snap = snapshot(tmp_path / "t", sparse=True)
    kinds = {rec.type for rec in snap.values()}
    assert {"dir", "file", "symlink", "fifo"} <= kinds
    assert ("chr" in kinds) == AS_ROOT
    assert snap[b"."].type == "dir"
    assert snap[b"names/caf\xe9"].size == 5
    assert snap[b"links/dangling"].target == b"missing/\xff target"
    assert snap[b"files/sparse"].sparse is True
    assert snap[b"files/big"].sparse is False
    assert snap[b"files/big"].size == (1 << 20) + 3
    assert snap[b"links/pair-a"].link == snap[b"links/pair-b"].link == b"links/pair-a"
    assert {snap[p].link for p in (b"links/tri-1", b"links/tri-2", b"d1/d2/tri-3")} == {
        b"d1/d2/tri-3"}
    assert snap[b"files/one"].xattrs[b"user.fscsync.test"] == b"\x00bin\xffvalue"
    assert snap[b"modes/setgid-dir"].mode == 0o2775
    assert snap[b"modes/sticky-dir"].mode == 0o1777
    assert all(rec.mtime % 1_000_000_000 for rec in snap.values()), "want nanosecond times"
    if AS_ROOT:
        assert snap[b"files/4095"].uid == 1234 and snap[b"files/4095"].gid == 2345
        assert snap[b"modes/setuid"].mode == 0o4755
        assert set(snap[b"files/4096"].xattrs) >= {b"trusted.fscsync", b"security.fscsync"}
    assert "acl" in built.paths or "acl" in built.skipped


def test_two_builds_compare_equal(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    assert_same_tree(a, b, sparse=True)


def test_snapshot_without_optional_fields(tmp_path: Path) -> None:
    make_rich_tree(tmp_path)
    snap = snapshot(tmp_path, xattrs=False)
    assert all(rec.xattrs == {} and rec.atime is None and rec.sparse is None
               for rec in snap.values())
    assert snapshot(tmp_path, atime=True)[b"files/one"].atime is not None


def _relink(path: Path) -> None:
    """Break a hard link: same content and times, new inode."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _retarget(path: Path) -> None:
    path.unlink()
    os.symlink(b"../files/4096", path)


def _fifo_to_file(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"")
    path.chmod(0o644)


MUTATIONS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "content": ("files/4096", lambda p: write(p, b"x" * 4096), "sha256"),
    "size": ("files/one", lambda p: write(p, b"ab"), "size 1 != 2"),
    "mode": ("modes/f0600", lambda p: p.chmod(0o640), "mode 0o600 != 0o640"),
    "special-bits": ("modes/sticky-dir", lambda p: p.chmod(0o777), "mode 0o1777 != 0o777"),
    "symlink-target": ("links/rel", _retarget, "target ../files/one != ../files/4096"),
    "xattr-value": ("d1", lambda p: xattr.set(p, b"user.fscsync.dir", b"other"),
                    "xattrs differ: user.fscsync.dir"),
    "xattr-removed": ("files/one", lambda p: xattr.remove(p, b"user.fscsync.test"),
                      "xattrs differ: user.fscsync.test"),
    "hardlink": ("links/pair-b", _relink, "link links/pair-a != -"),
    "type": ("special/fifo", _fifo_to_file, "type 'fifo' != 'file'"),
    "missing": ("files/4097", lambda p: p.unlink(), "only in first tree (file)"),
    "extra": ("files/new", lambda p: write(p, b"new"), "only in second tree (file)"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_diff_detects(tmp_path: Path, name: str) -> None:
    rel, change, expected = MUTATIONS[name]
    a, b = _twin_trees(tmp_path)
    _keep_mtime(b / rel, lambda: change(b / rel))
    problems = diff(snapshot(a), snapshot(b))
    assert any(p.startswith(f"{rel}: {expected}") for p in problems), problems
    with pytest.raises(AssertionError, match="trees differ"):
        assert_same_tree(a, b)


def test_diff_detects_mtime_and_ignores_it_on_request(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    set_times(b / "files/one", 5)
    set_times(b / "d1", 5)
    sa, sb = snapshot(a), snapshot(b)
    assert {p.split(":")[0] for p in diff(sa, sb)} == {"files/one", "d1"}
    assert [p.split(":")[0] for p in diff(sa, sb, ignore_dir_mtime=True)] == ["files/one"]
    assert diff(sa, sb, ignore=("mtime",)) == []
    with pytest.raises(ValueError, match="unknown fields"):
        diff(sa, sb, ignore=("mtime_ns",))


@needs_root
def test_diff_detects_owner_and_rdev(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    os.chown(b / "files/one", 1, 2)
    null = b / "special/null"
    _keep_mtime(null, lambda: (null.unlink(), os.mknod(null, 0o20644, os.makedev(1, 5))))
    problems = diff(snapshot(a), snapshot(b))
    assert "files/one: uid 0 != 1" in problems
    assert "files/one: gid 0 != 2" in problems
    assert any(p.startswith("special/null: rdev") for p in problems), problems


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl not installed")
def test_diff_detects_acl_change(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    subprocess.run(["setfacl", "-m", "u:4321:r", b / "files/4097"], check=True)
    assert diff(snapshot(a), snapshot(b)) == [
        "files/4097: xattrs differ: system.posix_acl_access"]


def test_sparse_only_compared_when_asked(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    dense = b / "files/sparse"
    _keep_mtime(dense, lambda: write(dense, (a / "files/sparse").read_bytes()))
    assert_same_tree(a, b)
    assert diff(snapshot(a, sparse=True), snapshot(b, sparse=True)) == [
        "files/sparse: sparse True != False"]


def test_content_skipped_when_asked(tmp_path: Path) -> None:
    a, b = _twin_trees(tmp_path)
    one = b / "files/one"
    data = bytearray(one.read_bytes())
    data[0] ^= 0xFF
    _keep_mtime(one, lambda: write(one, bytes(data)))
    assert diff(snapshot(a, content=False), snapshot(b, content=False)) == []
    assert [d.split(" ", 2)[:2] for d in diff(snapshot(a), snapshot(b))] == [
        ["files/one:", "sha256"]]


def test_paths_are_escaped(tmp_bytes: bytes) -> None:
    assert isinstance(tmp_bytes, bytes)
    a, b = os.path.join(tmp_bytes, b"a"), os.path.join(tmp_bytes, b"b")
    for root in (a, b):
        os.mkdir(root)
    write(os.path.join(a, b"new\nline\\caf\xe9"), b"")
    set_times(b, os.lstat(a).st_mtime_ns)
    assert show(b"new\nline\\caf\xe9") == "new\\x0aline\\x5ccaf\\xe9"
    with pytest.raises(AssertionError) as err:
        assert_same_tree(a, b)
    assert "new\\x0aline\\x5ccaf\\xe9: only in first tree (file)" in str(err.value)


def test_assert_same_tree_truncates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(25):
        (a / f"f{i:02d}").write_bytes(b"")
    set_times(b, os.lstat(a).st_mtime_ns)
    with pytest.raises(AssertionError, match=r"\(25 differences\)[\s\S]*and 5 more") as err:
        assert_same_tree(a, b, limit=20)
    assert "f19" in str(err.value) and "f20" not in str(err.value)


def test_rsync_copies_compare_equal_and_modified_copy_does_not(tmp_path: Path) -> None:
    src, one, two = tmp_path / "src", tmp_path / "one", tmp_path / "two"
    make_rich_tree(src)
    run_rsync("-aHAX", f"{src}/", f"{one}/", check=True)
    run_rsync("-aHAX", f"{src}/", f"{two}/", check=True)
    assert_same_tree(src, one)
    assert_same_tree(one, two)
    _keep_mtime(two / "files/big", lambda: write(two / "files/big", b"\0" * ((1 << 20) + 3)))
    with pytest.raises(AssertionError, match="files/big: sha256"):
        assert_same_tree(one, two)


def test_run_helper_checks_exit_codes() -> None:
    assert b"rsync" in run_rsync("--version", check=True).stdout
    assert run_rsync("--no-such-option", check=1).returncode == 1
    with pytest.raises(AssertionError, match="exited 1, expected 0"):
        run_rsync("--no-such-option", check=0)


def test_sshd_runs_commands(sshd) -> None:
    result = sshd.run("true")
    assert result.returncode == 0, (result.stderr, sshd.log())
    assert sshd.host == "127.0.0.1" and sshd.port > 0
    assert sshd.rsh.startswith(f"ssh -p {sshd.port} -i ")
    assert os.path.isabs(sshd.remote_fscsync)


def test_sshd_rsh_works_for_rsync(sshd, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_rich_tree(src)
    run_rsync("-aHAX", "-e", sshd.rsh, f"{src}/", f"{sshd.host}:{dst}/", check=True)
    assert_same_tree(src, dst)

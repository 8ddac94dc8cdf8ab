"""-b/--backup, --backup-dir and --suffix (issue 22): what a run replaces or deletes
is kept, with its attributes, xattrs and stored encdata, side by side with rsync.

The trees are small and built anew for each run; the backups are compared with
rsync's on the same changes (data, modes, times, xattrs, which paths), and for
encrypted-layout files the backup must still be the encrypted file it was."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import xattr
from support import needs_root, run_fscsync, run_rsync
from support.e2e import item_lines
from support.enctree import ENCDATA, EncTree, read_encdata
from support.peer import FakeSender, default_options
from support.treecmp import assert_same_tree, snapshot
from support.trees import BASE_NS, set_times, write


def _both(src: Path, dst_f: Path, dst_r: Path, *opts: str, check: bool | int = True):
    """One run of fscsync and one of rsync on the same source, each into its own
    destination; a backup dir named "{dst}" is each tool's own."""
    out = []
    for run, dst in ((run_fscsync, dst_f), (run_rsync, dst_r)):
        args = [o.replace("{dst}", str(dst)) for o in opts]
        out.append(run("-a", *args, f"{src}/", f"{dst}/", check=check))
    return out


def _retime(src: Path, run: int) -> None:
    """Whole-second times, distinct per entry and run (rsync compares whole seconds,
    fscsync nanoseconds: a change within one second would look different)."""
    for i, p in enumerate(sorted(src.rglob("*")) + [src]):
        set_times(os.fsencode(p), BASE_NS + (run * 1000 + i) * 10**9)


def _plain_tree(src: Path) -> None:
    (src / "d" / "e").mkdir(parents=True)
    write(src / "keep", b"same\n")
    write(src / "a", b"a version 1\n", 0o640)
    write(src / "d" / "b", b"b version 1\n", 0o600)
    write(src / "d" / "e" / "c", b"c version 1\n")
    os.symlink("a", src / "link")
    xattr.set(str(src / "a"), b"user.note", b"first")
    _retime(src, 0)
    os.chmod(src / "d" / "e", 0o750)


def test_backup_dir_three_runs_side_by_side(tmp_path: Path) -> None:
    """Three runs with changes and deletions into --backup-dir outside the
    destination: after each, destination and backup tree match rsync's; a path
    backed up twice holds its latest replaced version."""
    src, dst_f, dst_r = tmp_path / "src", tmp_path / "f", tmp_path / "r"
    _plain_tree(src)
    _both(src, dst_f, dst_r, "-X")
    # run 2: a and d/b change, d/e/c and link go
    write(src / "a", b"a version 2, longer\n")
    write(src / "d" / "b", b"b v2\n")
    shutil.rmtree(src / "d" / "e")
    os.unlink(src / "link")
    _retime(src, 1)
    f, r = _both(src, dst_f, dst_r, "-Xi", "--delete", "--backup-dir={dst}.bak")
    assert sorted(item_lines(f.stdout)) == sorted(item_lines(r.stdout))
    assert (tmp_path / "f.bak" / "a").read_bytes() == b"a version 1\n"
    assert xattr.get(str(tmp_path / "f.bak" / "a"), b"user.note") == b"first"
    assert os.readlink(tmp_path / "f.bak" / "link") == "a"
    assert (tmp_path / "f.bak" / "d" / "e" / "c").read_bytes() == b"c version 1\n"
    assert_same_tree(tmp_path / "f.bak", tmp_path / "r.bak", ignore_dir_mtime=True)
    # run 3: a changes again (its backup is replaced), d goes entirely
    write(src / "a", b"a version 3\n")
    shutil.rmtree(src / "d")
    _retime(src, 2)
    f, r = _both(src, dst_f, dst_r, "-Xi", "--delete", "--backup-dir={dst}.bak")
    assert sorted(item_lines(f.stdout)) == sorted(item_lines(r.stdout))
    assert (tmp_path / "f.bak" / "a").read_bytes() == b"a version 2, longer\n"
    assert (tmp_path / "f.bak" / "d" / "b").read_bytes() == b"b v2\n"
    assert_same_tree(dst_f, dst_r, ignore_dir_mtime=True)
    assert_same_tree(tmp_path / "f.bak", tmp_path / "r.bak", ignore_dir_mtime=True)


def test_backup_dir_subdirs_take_the_destination_dirs_attributes(tmp_path: Path) -> None:
    """A directory made in the backup tree has the mode (and time, as rsync sets it
    before files land in it) of the destination directory it stands for."""
    src, dst_f, dst_r = tmp_path / "src", tmp_path / "f", tmp_path / "r"
    _plain_tree(src)
    _both(src, dst_f, dst_r)
    write(src / "d" / "e" / "c", b"c version 2\n")
    _retime(src, 1)
    _both(src, dst_f, dst_r, "--backup-dir={dst}.bak")
    for tool in ("f", "r"):
        assert oct((tmp_path / f"{tool}.bak" / "d" / "e").stat().st_mode & 0o7777) == "0o750"
    assert_same_tree(tmp_path / "f.bak", tmp_path / "r.bak", ignore_dir_mtime=True)


def test_backup_without_dir_and_suffix(tmp_path: Path) -> None:
    """-b keeps a~ beside a; --suffix changes the suffix; with --delete the P *~ rule
    keeps earlier backups, as in rsync; directory times are left alone (-O)."""
    src, dst_f, dst_r = tmp_path / "src", tmp_path / "f", tmp_path / "r"
    _plain_tree(src)
    _both(src, dst_f, dst_r)
    write(src / "a", b"a version 2, longer\n")
    os.unlink(src / "d" / "b")
    _retime(src, 1)
    f, r = _both(src, dst_f, dst_r, "-bi", "--delete")
    assert sorted(item_lines(f.stdout)) == sorted(item_lines(r.stdout))
    assert (dst_f / "a~").read_bytes() == b"a version 1\n"
    assert (dst_f / "d" / "b~").read_bytes() == b"b version 1\n"
    assert_same_tree(dst_f, dst_r, ignore_dir_mtime=True)
    write(src / "a", b"a version 3\n")
    _retime(src, 2)
    f, r = _both(src, dst_f, dst_r, "-bi", "--delete", "--suffix=.old")
    assert sorted(item_lines(f.stdout)) == sorted(item_lines(r.stdout))
    assert (dst_f / "a.old").read_bytes() == b"a version 2, longer\n"
    # P *.old protects only the new suffix: a~ is deleted, so backed up as a~.old
    assert (dst_f / "a~.old").read_bytes() == b"a version 1\n"
    assert_same_tree(dst_f, dst_r, ignore_dir_mtime=True)


def test_backup_dir_inside_destination_is_protected(tmp_path: Path) -> None:
    """--backup-dir=bak inside the destination is not deleted by --delete on the next
    runs (rsync 3.5.0 would back it up into bak/bak/...): it keeps growing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _plain_tree(src)
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    write(src / "a", b"a version 2, longer\n")
    out = run_fscsync("-ai", "--delete", "--backup-dir=bak", f"{src}/", f"{dst}/", check=True)
    assert b"bak" not in out.stdout
    write(src / "a", b"a version 3\n")
    os.unlink(src / "keep")
    out = run_fscsync("-ai", "--delete", "--backup-dir=bak", f"{src}/", f"{dst}/", check=True)
    assert b"bak" not in out.stdout, out.stdout
    assert (dst / "bak" / "a").read_bytes() == b"a version 2, longer\n"
    assert (dst / "bak" / "keep").read_bytes() == b"same\n"
    assert not (dst / "bak" / "bak").exists()
    assert sorted(os.listdir(dst)) == ["a", "bak", "d", "link"]


def test_backup_options_refused_as_rsync_refuses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for opts in (["-b", "--suffix="], ["--suffix=a/b"], ["--backup-dir=.", "--suffix="]):
        f = run_fscsync("-a", *opts, f"{src}/", str(tmp_path / "d"))
        r = run_rsync("-a", *opts, f"{src}/", str(tmp_path / "d"))
        assert f.returncode == r.returncode == 1, (opts, f.stderr)
        assert b"--suffix cannot" in f.stderr
    write(tmp_path / "file", b"x")
    f = run_fscsync("-a", f"--backup-dir={tmp_path / 'file'}", f"{src}/", str(tmp_path / "d"))
    assert f.returncode == 1
    assert b"The backup-dir is not a directory" in f.stderr


def test_vv_names_the_backups(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _plain_tree(src)
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    write(src / "a", b"a version 2, longer\n")
    out = run_fscsync("-avv", "--backup-dir=../bak", f"{src}/", f"{dst}/", check=True)
    assert b"(new) backup_dir is ../bak" in out.stdout
    assert b"backed up a to ../bak/a" in out.stdout


@needs_root
def test_encrypted_backups_keep_their_encdata(tmp_path: Path) -> None:
    """Encrypted-layout files replaced or deleted over three runs: each backup is the
    old encrypted file (ciphertext, stored encdata), and the backup tree's
    directories carry the destination directories' encdata too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    t = EncTree(os.fsencode(src), seed="backup")
    t.dir(b"enc", 0o700)
    t.dir(b"enc/sub")
    t.file(b"enc/f1", 5000)
    t.file(b"enc/sub/f2", 9000)
    t.file(b"enc/f3", 100)
    t.finish()
    bak = tmp_path / "bak"
    run_fscsync("-aX", f"{src}/", f"{dst}/", check=True)
    before = {rel: (open(dst / rel, "rb").read(), read_encdata(os.fsencode(dst / rel)))
              for rel in ("enc/f1", "enc/sub/f2", "enc/f3")}
    # run 2: f1 rewritten anew (new nonce, new ciphertext), sub/f2 deleted
    t.file(b"enc/f1", 6000)
    os.unlink(src / "enc" / "sub" / "f2")
    t.finish()
    run_fscsync("-aX", "--delete", f"--backup-dir={bak}", f"{src}/", f"{dst}/", check=True)
    for rel in ("enc/f1", "enc/sub/f2"):
        data, enc = before[rel]
        assert (bak / rel).read_bytes() == data
        assert read_encdata(os.fsencode(bak / rel)) == enc
    for rel in ("enc", "enc/sub"):
        assert read_encdata(os.fsencode(bak / rel)) == read_encdata(os.fsencode(dst / rel))
    assert read_encdata(os.fsencode(dst / "enc/f1")) == read_encdata(os.fsencode(src / "enc/f1"))
    # run 3: f1 again (the backup now holds run 2's copy), f3 deleted
    second = ((dst / "enc/f1").read_bytes(), read_encdata(os.fsencode(dst / "enc/f1")))
    t.file(b"enc/f1", 7000)
    os.unlink(src / "enc" / "f3")
    t.finish()
    run_fscsync("-aX", "--delete", f"--backup-dir={bak}", f"{src}/", f"{dst}/", check=True)
    assert ((bak / "enc/f1").read_bytes(), read_encdata(os.fsencode(bak / "enc/f1"))) == second
    assert (bak / "enc/f3").read_bytes() == before["enc/f3"][0]
    assert read_encdata(os.fsencode(bak / "enc/f3")) == before["enc/f3"][1]
    assert sorted(snapshot(bak, xattrs=False)) == sorted(
        [b".", b"enc", b"enc/f1", b"enc/f3", b"enc/sub", b"enc/sub/f2"])
    assert xattr.get(str(bak / "enc/sub/f2"), ENCDATA)


@pytest.mark.parametrize("inplace", [False, True])
def test_big_file_update_is_backed_up_whole(tmp_path: Path, inplace: bool) -> None:
    """A big file with a few changed blocks (the in-place journal's case, or
    --inplace) still gets a backup of its whole old content."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    old = os.urandom(3 << 20)
    write(src / "big", old)
    run_fscsync("-a", f"{src}/", f"{dst}/", check=True)
    with open(src / "big", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"changed")
    extra = ["--inplace"] if inplace else []
    run_fscsync("-a", *extra, "--backup-dir=../bak", f"{src}/", f"{dst}/", check=True)
    assert (tmp_path / "bak" / "big").read_bytes() == old
    assert (dst / "big").read_bytes() == (src / "big").read_bytes()


@pytest.mark.parametrize(("option", "value"), [
    ("backup_dir", "{a}/other"), ("backup_dir", "../../other"),
    ("partial_dir", "{a}/other"), ("partial_dir", "../up")])
def test_restrict_to_refuses_a_backup_or_partial_dir_outside(tmp_path: Path, option: str,
                                                              value: str) -> None:
    """A --restrict-to server refuses, before anything is written, a --backup-dir or
    --partial-dir that would put files outside its tree (exit 3)."""
    allowed = tmp_path / "allowed"
    (allowed / "tree").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    opts = default_options(**{option: os.fsencode(value.format(a=tmp_path)),
                              "backup": option == "backup_dir"})
    peer = FakeSender(["--restrict-to", str(allowed)], timeout=30)
    ready = peer.setup(b"", opts, role="receiver", paths=[os.fsencode(allowed / "tree")])
    result = peer.finish()
    assert not ready, result.describe()
    assert result.code == 3, result.describe()
    fatal = " ".join(str(m.get("msg")) for m in result.fatal())
    assert option.replace("_", "-") in fatal and "outside the allowed tree" in fatal, fatal
    assert os.listdir(tmp_path / "other") == []


def test_one_file_copy_backs_up_under_the_destination_name(tmp_path: Path) -> None:
    """`cp a b` style (one file to a new name): the backup is b~, or bk/b for a
    backup dir taken from b's directory, as rsync names them."""
    for tool, run in (("f", run_fscsync), ("r", run_rsync)):
        top = tmp_path / tool
        top.mkdir()
        for n, opts in enumerate(([], ["-b"], ["--backup-dir=bk"])):
            write(top / "src", f"version {n}\n".encode())
            set_times(os.fsencode(top / "src"), BASE_NS + n * 10**9)
            run("-a", *opts, top / "src", top / "dst", check=True)
        assert (top / "dst~").read_bytes() == b"version 0\n"
        assert (top / "bk" / "dst").read_bytes() == b"version 1\n"
    assert_same_tree(tmp_path / "f", tmp_path / "r", ignore_dir_mtime=True)

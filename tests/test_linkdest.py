"""--link-dest, --compare-dest, --copy-dest: nightly snapshots sharing unchanged files,
side by side with rsync, over ssh, on plain and encrypted-layout trees."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import xattr
from support import needs_root, run_fscsync, run_rsync
from support.enctree import build_standard, read_encdata
from support.stats import parse_stats
from support.treecmp import assert_same_tree, diff, snapshot
from support.trees import pattern, set_times, write

from fscsync.fs.cipher import padded_size

T0 = 1_700_000_000 * 10**9  # whole seconds: rsync compares whole seconds by default


def ino(path: Path | bytes | str) -> int:
    return os.lstat(path).st_ino


def files(root: Path) -> list[str]:
    """Relative paths of the regular files below root."""
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names
                  if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))


def frozen(root: Path) -> dict:
    """Everything about a snapshot that later nights must not touch (link counts apart,
    which later links raise), xattrs included."""
    return snapshot(root)


def plain_tree(src: Path) -> None:
    """Files a to f (f is 3 blocks) in two directories, at whole-second times."""
    for i, rel in enumerate(["a", "b", "c", "d/e", "d/f", "d/g/h"]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        write(os.fsencode(src / rel), pattern(3 * 4096 if rel == "d/f" else 100 + i, rel), 0o644)
    times(src)


def times(root: Path) -> None:
    for d, dirs, names in os.walk(root):
        for n in names + dirs:
            set_times(os.path.join(d, n), T0)
    set_times(os.fsencode(root), T0)


def change_block(path: Path, block: int, seconds: int) -> int:
    """Rewrite one 4 KiB block of a file in place and move its mtime on; the bytes
    changed."""
    with open(path, "r+b") as f:
        f.seek(block * 4096)
        old = f.read(4096)
        f.seek(block * 4096)
        f.write(bytes(b ^ 0xFF for b in old))
    set_times(os.fsencode(path), T0 + seconds * 10**9)
    return len(old)


def stats_of(out: bytes) -> dict[str, int]:
    return parse_stats(out)


# ---- the three-night rotation ---------------------------------------------------------


def test_three_night_rotation_plain(tmp_path: Path) -> None:
    """day1 full; day2 and day3 link to the night before: unchanged files are one inode
    in all three, changed ones are not, older nights stay exactly as they were, and
    only the changed bytes travel."""
    src, day1, day2, day3 = (tmp_path / n for n in ("src", "day1", "day2", "day3"))
    plain_tree(src)
    run_fscsync("-a", f"{src}/", day1, check=True)
    before1 = frozen(day1)

    changed = change_block(src / "d/f", 1, 10)
    write(os.fsencode(src / "new"), b"n" * 777)
    set_times(os.fsencode(src / "new"), T0)
    times_dir = T0 + 20 * 10**9
    set_times(os.fsencode(src), times_dir)
    proc = run_fscsync("-a", "--stats", "--link-dest=../day1", f"{src}/", day2, check=True)
    s = stats_of(proc.stdout)
    assert s["literal"] == changed + 777, proc.stdout.decode()
    assert s["transferred"] == 2 and s["linked"] == 5
    assert_same_tree(src, day2)
    assert diff(before1, frozen(day1), ignore=["link"]) == []

    before2 = frozen(day2)
    (src / "b").chmod(0o600)  # attributes differ: a copy, never a link
    proc = run_fscsync("-a", "--stats", "--link-dest=../day2", f"{src}/", day3, check=True)
    s = stats_of(proc.stdout)
    assert (s["literal"], s["transferred"], s["linked"]) == (0, 0, 6)
    assert_same_tree(src, day3)
    assert diff(before1, frozen(day1), ignore=["link"]) == []
    assert diff(before2, frozen(day2), ignore=["link"]) == []

    for rel in ["a", "c", "d/e", "d/g/h"]:
        assert ino(day1 / rel) == ino(day2 / rel) == ino(day3 / rel), rel
    assert ino(day1 / "b") == ino(day2 / "b") != ino(day3 / "b")
    assert ino(day1 / "d/f") != ino(day2 / "d/f") == ino(day3 / "d/f")
    assert ino(day2 / "new") == ino(day3 / "new")
    assert os.lstat(day1 / "a").st_nlink == 3


@needs_root
def test_three_night_rotation_encrypted(tmp_path: Path) -> None:
    """The encrypted backup layout: files are linked only when their whole encdata
    text is the same; a file rewritten with a new nonce (same size, same mtime) is a
    new file, an in-place rewrite travels as its changed blocks."""
    tree = build_standard(tmp_path / "src")
    src = Path(os.fsdecode(tree.root))
    day1, day2, day3 = (tmp_path / n for n in ("day1", "day2", "day3"))
    run_fscsync("-aHX", f"{src}/", day1, check=True)
    before1 = frozen(day1)

    big, small = tree.paths["file-3145733"], tree.paths["file-4097"]
    tree.rewrite_blocks(big, [1, 400])
    mtime = os.lstat(tree.path(small)).st_mtime_ns
    tree.rewrite_anew(small)
    set_times(tree.path(small), mtime)  # same size and mtime: only the nonce tells
    proc = run_fscsync("-aHX", "--stats", "--link-dest=../day1", f"{src}/", day2, check=True)
    s = stats_of(proc.stdout)
    assert s["literal"] == 2 * 4096 + padded_size(4097), proc.stdout.decode()
    assert_same_tree(src, day2)
    assert diff(before1, frozen(day1), ignore=["link"]) == []

    before2 = frozen(day2)
    proc = run_fscsync("-aHX", "--stats", "--link-dest=../day2", f"{src}/", day3, check=True)
    assert stats_of(proc.stdout)["literal"] == 0
    assert_same_tree(src, day3)
    assert diff(before2, frozen(day2), ignore=["link"]) == []
    assert diff(before1, frozen(day1), ignore=["link"]) == []

    for rel in files(day1):
        one, two, three = (ino(d / rel) for d in (day1, day2, day3))
        if os.fsencode(rel) in (big, small):
            assert one != two == three, rel
        else:
            assert one == two == three, rel
        assert read_encdata(os.fsencode(day2 / rel)) == read_encdata(os.path.join(
            tree.root, os.fsencode(rel)))


# ---- side by side with rsync ---------------------------------------------------------------


def night_two(tmp_path: Path) -> Path:
    """A source that moved on from the day1 copy in every way the options tell apart,
    for files and symlinks (and a FIFO as root)."""
    src = tmp_path / "src"
    plain_tree(src)
    for name in ("l_same", "l_changed", "l_timed"):
        os.symlink("a", src / name)
    if os.geteuid() == 0:
        os.mkfifo(src / "d/fifo")
    times(src)
    for side in ("f", "r"):
        (tmp_path / side).mkdir()
        run_rsync("-a", f"{src}/", tmp_path / side / "day1", check=True)
    write(os.fsencode(src / "b"), pattern(101, "other"))           # same size, new data
    set_times(os.fsencode(src / "b"), T0)                           # ... and same time
    write(os.fsencode(src / "c"), pattern(150, "c"))                # grown
    (src / "d/e").chmod(0o600)                                       # attributes only
    set_times(os.fsencode(src / "d/g/h"), T0 + 5 * 10**9)           # time only
    write(os.fsencode(src / "n"), b"new file")
    os.unlink(src / "l_changed")
    os.symlink("b", src / "l_changed")
    os.symlink("c", src / "l_new")
    set_times(os.fsencode(src / "l_timed"), T0 + 7 * 10**9)
    for p in (src / "n", src / "c", src / "d", src / "l_changed", src / "l_new", src):
        set_times(os.fsencode(p), T0)
    return src


def side_by_side(tmp_path: Path, src: Path, *args: str) -> tuple[list[str], list[str]]:
    out = []
    for side, tool in (("f", run_fscsync), ("r", run_rsync)):
        proc = tool(*args, f"{src}/", "day2/", cwd=tmp_path / side, check=True)
        out.append(proc.stdout.decode().splitlines())
    return out[0], out[1]


def linked_to_day1(root: Path) -> dict[str, bool]:
    """Each non-directory of day2 (symlinks and FIFOs too): one inode with day1's?"""
    day2 = root / "day2"
    rels = [os.path.relpath(os.path.join(d, n), day2) for d, dirs, names in os.walk(day2)
            for n in names]
    return {rel: os.path.lexists(root / "day1" / rel) and ino(day2 / rel) == ino(
        root / "day1" / rel) for rel in rels}


@pytest.mark.parametrize("kind", ["link", "compare", "copy"])
@pytest.mark.parametrize("flags", ["-ai", "-aii", "-aini", "-acii"])
def test_like_rsync(tmp_path: Path, kind: str, flags: str) -> None:
    src = night_two(tmp_path)
    ours, theirs = side_by_side(tmp_path, src, flags, f"--{kind}-dest=../day1")
    assert len(ours) > 3 and ours == theirs
    f, r = tmp_path / "f", tmp_path / "r"
    if "n" in flags:
        assert not (f / "day2").exists() and not (r / "day2").exists()
        return
    assert diff(snapshot(f / "day2"), snapshot(r / "day2")) == []
    assert linked_to_day1(f) == linked_to_day1(r)
    assert diff(snapshot(f / "day1"), snapshot(r / "day1")) == []


@pytest.mark.parametrize("kind", ["link", "compare", "copy"])
def test_stats_like_rsync(tmp_path: Path, kind: str) -> None:
    """--stats counts as rsync's do: a linked, compared or locally copied file is
    neither created nor transferred; fscsync adds the count of linked files."""
    src = night_two(tmp_path)
    ours, theirs = side_by_side(tmp_path, src, "-a", "--stats", f"--{kind}-dest=../day1")
    labels = ("Number of files:", "Number of created files:",
              "Number of regular files transferred:", "Total file size:")
    assert ([line for line in ours if line.startswith(labels)]
            == [line for line in theirs if line.startswith(labels)])
    linked = 4 + (os.geteuid() == 0) if kind == "link" else 0  # a, b, d/f, l_same, d/fifo
    assert f"Number of linked files: {linked}" in ours


def test_several_dirs_searched_in_order(tmp_path: Path) -> None:
    """The first DIR with an exact copy wins; a later exact copy beats an earlier
    inexact one (rsync's match levels)."""
    src = night_two(tmp_path)
    for side in ("f", "r"):
        run_rsync("-a", f"{src}/", tmp_path / side / "day1b", check=True)
    args = ("-aii", "--link-dest=../day1", "--link-dest=../nothing", "--link-dest=../day1b")
    ours, theirs = side_by_side(tmp_path, src, *args)
    assert ours == theirs
    f = tmp_path / "f"
    assert ino(f / "day2/a") == ino(f / "day1/a")        # exact in both: the first
    assert ino(f / "day2/c") == ino(f / "day1b/c")       # exact only in the second
    assert diff(snapshot(f / "day2"), snapshot(tmp_path / "r/day2")) == []


def test_missing_dir_is_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    plain_tree(src)
    proc = run_fscsync("-a", "--link-dest=../gone", f"{src}/", tmp_path / "day2", check=True)
    assert (f"--link-dest arg does not exist: {tmp_path}/day2/../gone"
            in proc.stderr.decode()), proc.stderr
    assert_same_tree(src, tmp_path / "day2")


def test_xattrs_differ_means_a_copy(tmp_path: Path) -> None:
    """-X: a file whose xattrs differ from the DIR's copy is copied (listed as rsync
    does), the DIR's copy keeps its own."""
    src = tmp_path / "src"
    plain_tree(src)
    run_fscsync("-aX", f"{src}/", tmp_path / "day1", check=True)
    xattr.set(os.fsencode(src / "a"), b"user.tag", b"new")
    proc = run_fscsync("-aXi", "--link-dest=../day1", f"{src}/", tmp_path / "day2", check=True)
    assert "cf........x a" in proc.stdout.decode().splitlines()
    assert ino(tmp_path / "day1/a") != ino(tmp_path / "day2/a")
    assert ino(tmp_path / "day1/c") == ino(tmp_path / "day2/c")
    assert b"user.tag" not in xattr.list(os.fsencode(tmp_path / "day1/a"))
    assert_same_tree(src, tmp_path / "day2")


def test_copy_dest_keeps_a_hole_at_the_end(tmp_path: Path) -> None:
    """--copy-dest's local copy of a file that ends in a hole has the whole size (the
    hole copied as a hole, as fscsync copies ranges), as rsync's copy has."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.truncate(1 << 20)
    times(src)
    results = {}
    for side, tool in (("f", run_fscsync), ("r", run_rsync)):
        (tmp_path / side).mkdir()
        tool("-a", f"{src}/", tmp_path / side / "day1", check=True)
        os.utime(tmp_path / side / "day1", ns=(T0, T0))
        tool("-a", "--copy-dest=../day1", f"{src}/", tmp_path / side / "day2", check=True)
        got = tmp_path / side / "day2/sparse"
        results[side] = got.read_bytes() == (src / "sparse").read_bytes()
        assert ino(got) != ino(tmp_path / side / "day1/sparse")
    assert results == {"f": True, "r": True}
    assert os.lstat(tmp_path / "f/day2/sparse").st_blocks <= os.lstat(
        src / "sparse").st_blocks


def test_dry_run_shows_links_and_makes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    plain_tree(src)
    run_fscsync("-a", f"{src}/", tmp_path / "day1", check=True)
    proc = run_fscsync("-anii", "--link-dest=../day1", f"{src}/", tmp_path / "day2",
                       check=True)
    lines = proc.stdout.decode().splitlines()
    assert "hf          a" in lines and "hf          d/g/h" in lines
    assert not (tmp_path / "day2").exists()
    assert os.lstat(tmp_path / "day1/a").st_nlink == 1


@pytest.mark.parametrize("args, message", [
    (["--link-dest=a", "--copy-dest=b"], "the --copy-dest option conflicts with the "
                                         "--link-dest option"),
    ([f"--link-dest=d{i}" for i in range(21)], "at most 20 --link-dest args may be "
                                               "specified"),
])
def test_bad_option_use(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_fscsync("-a", *args, f"{tmp_path}/", tmp_path / "x", check=1)
    assert message in proc.stderr.decode()
    assert re.search(message, run_rsync("-a", *args, f"{tmp_path}/", tmp_path / "x",
                                        check=1).stderr.decode())


# ---- over ssh --------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_over_ssh(sshd, tmp_path: Path, direction: str) -> None:
    """The DIRs are on the receiver; a changed file's DIR copy is its delta basis."""
    src = tmp_path / "src"
    plain_tree(src)
    ssh = ("-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync)
    run_fscsync("-a", f"{src}/", tmp_path / "day1", check=True)
    changed = change_block(src / "d/f", 2, 10)
    if direction == "push":
        ends = (f"{src}/", f"{sshd.host}:{tmp_path}/day2/")
    else:
        ends = (f"{sshd.host}:{src}/", f"{tmp_path}/day2/")
    proc = run_fscsync("-a", "--stats", *ssh, "--link-dest=../day1", *ends, check=True)
    s = stats_of(proc.stdout)
    assert s["literal"] == changed and s["linked"] == 5
    assert_same_tree(src, tmp_path / "day2")
    assert ino(tmp_path / "day1/a") == ino(tmp_path / "day2/a")
    assert ino(tmp_path / "day1/d/f") != ino(tmp_path / "day2/d/f")
    shutil.rmtree(tmp_path / "day2")

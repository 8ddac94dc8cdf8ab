"""`-i` lines of fscsync compared with rsync's for the same change to the same tree."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import xattr
from support.trees import FOREIGN_GID, FOREIGN_UID, set_times, write
from test_local_sync import (
    T0,
    Twin,
    assert_same_items,
    dir_times_kept,
    items,
    make_plain_tree,
)

AS_ROOT = os.geteuid() == 0


def _size(src: Path) -> None:
    write(src / "a.txt", b"alpha grew longer\n")
    set_times(src / "a.txt", (T0 + 5) * 10**9)


def _same_size_new_data(src: Path) -> None:
    data = bytearray((src / "sub/b.bin").read_bytes())
    data[5000] ^= 0xFF
    write(src / "sub/b.bin", bytes(data))
    set_times(src / "sub/b.bin", (T0 + 6) * 10**9)


def _time(src: Path) -> None:
    set_times(src / "exec.sh", (T0 + 9) * 10**9)


def _perms(src: Path) -> None:
    os.chmod(src / "sub/deeper/c.txt", 0o604)
    os.chmod(src / "sub", 0o700)


def _owner(src: Path) -> None:
    os.chown(src / "a.txt", FOREIGN_UID, -1)
    os.chown(src / "exec.sh", -1, FOREIGN_GID)


def _new_entries(src: Path) -> None:
    (src / "sub/newdir").mkdir()
    write(src / "sub/newdir/n", b"n")
    write(src / "new.txt", b"new")
    os.symlink("new.txt", src / "newlink")
    for p in ("sub/newdir/n", "sub/newdir", "new.txt"):
        set_times(src / p, (T0 + 11) * 10**9)
    set_times(src / "newlink", (T0 + 11) * 10**9)


def _deletions(src: Path) -> None:
    os.unlink(src / "a.txt")
    os.unlink(src / "dangling")
    shutil.rmtree(src / "sub/deeper")


def _symlink_target(src: Path) -> None:
    os.unlink(src / "link")
    os.symlink("a.txt", src / "link")
    set_times(src / "link", (T0 + 13) * 10**9)


def _xattr(src: Path) -> None:
    xattr.set(str(src / "a.txt"), "user.itemize", b"v1")
    xattr.set(str(src / "sub"), "user.itemize", b"dir")


def _acl(src: Path) -> None:
    subprocess.run(["setfacl", "-m", f"u:{FOREIGN_UID}:r--", src / "a.txt"], check=True)


CHANGES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "size": (_size, []),
    "same-size-new-data": (_same_size_new_data, []),
    "time": (_time, []),
    "perms": (_perms, []),
    "owner-group": (_owner, []),
    "new-entries": (_new_entries, []),
    "deletions": (_deletions, ["--delete"]),
    "symlink-target": (_symlink_target, []),
    "xattr": (_xattr, ["-X"]),
    "acl": (_acl, ["-A"]),
}
NEEDS_ROOT = {"owner-group"}


@pytest.mark.parametrize("change", list(CHANGES))
def test_change_itemized_like_rsync(tmp_path: Path, change: str) -> None:
    if change in NEEDS_ROOT and not AS_ROOT:
        pytest.skip("needs root")
    if change == "acl" and shutil.which("setfacl") is None:
        pytest.skip("setfacl not installed")
    mutate, flags = CHANGES[change]
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", *flags, f"{t.src}/", "@D/dst")
    with dir_times_kept(t.src):
        mutate(t.src)
    runs = t.run("-ai", *flags, f"{t.src}/", "@D/dst")
    assert items(runs.fscsync), "the change was not itemized at all"
    # rsync prints "*deleting" when it gets to a directory, fscsync in its final pass
    assert_same_items(runs, ordered="--delete" not in flags)
    t.assert_same()
    again = t.fscsync("-ai", *flags, f"{t.src}/", "@D/dst")
    assert again.stdout == b""


def test_new_tree_in_rsync_order(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    runs = t.run("-ai", f"{t.src}/", "@D/dst")
    assert_same_items(runs, ordered=True)
    assert items(runs.fscsync)[0] == "cd+++++++++ ./"


def test_verbose_and_quiet(tmp_path: Path) -> None:
    """-q prints nothing on success; -v names every transferred file like rsync."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    quiet = t.run("-aq", f"{t.src}/", "@D/q")
    assert quiet.fscsync.stdout == b"" and quiet.fscsync.stderr == b""
    verbose = t.run("-av", f"{t.src}/", "@D/v")
    names = {"a.txt", "sub/b.bin", "sub/deeper/c.txt", "link -> sub/b.bin"}
    fout = set(verbose.fscsync.stdout.decode().splitlines())
    assert names <= set(verbose.rsync.stdout.decode().splitlines())
    assert names <= fout
    t.assert_same("q")


@pytest.mark.skipif(not AS_ROOT, reason="needs root (chown)")
@pytest.mark.parametrize("kind, src_mode", [("file", 0o4755), ("file", 0o2755),
                                            ("file", 0o755), ("fifo", 0o4755)],
                         ids=["file-4755", "file-2755", "file-755", "fifo-4755"])
def test_owner_change_of_a_setuid_entry_itemized_like_rsync(
        tmp_path: Path, kind: str, src_mode: int) -> None:
    """The destination's entry is setuid (or setgid) and owned by someone else; the data
    is the same. A chown clears those bits, so what changes is decided again after it:
    rsync itemizes the mode it then sees (.f...p.....), or nothing where the source's
    mode lacks the bits anyway, and the bits the source has are back on at the end.
    The itemize of what differs and the apply once disagreed here (".f....og...")."""
    t = Twin(tmp_path)
    make = (lambda p: write(p, b"same\n")) if kind == "file" else os.mkfifo
    make(t.src / "x")
    os.chmod(t.src / "x", src_mode)
    set_times(t.src / "x", T0 * 10**9)

    def planted(area: Path) -> None:
        (area / "dst").mkdir()
        make(area / "dst" / "x")
        os.chown(area / "dst" / "x", FOREIGN_UID, FOREIGN_GID)
        os.chmod(area / "dst" / "x", 0o4755)
        set_times(area / "dst" / "x", T0 * 10**9)
        os.utime(area / "dst", ns=(os.stat(t.src).st_mtime_ns,) * 2)

    t.each(planted)
    runs = t.run("-ai", "--specials", f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    t.assert_same()
    st = os.stat(t.f / "dst" / "x")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (src_mode, 0, 0)


@pytest.mark.skipif(not AS_ROOT, reason="needs root (chgrp to a foreign group)")
def test_times_within_the_modify_window_stay_like_rsync(tmp_path: Path) -> None:
    """--modify-window decides the time in one place: a file whose group differs gets
    only its group fixed (".f.....g..."), and neither it nor a directory within the
    window gets the source's time (the apply once compared times exactly)."""
    t = Twin(tmp_path)
    (t.src / "d").mkdir()
    write(t.src / "d" / "f", b"data\n")
    for p in (t.src / "d" / "f", t.src / "d"):
        set_times(p, T0 * 10**9)

    def planted(area: Path) -> None:
        shutil.copytree(t.src, area / "dst")
        os.chown(area / "dst" / "d" / "f", -1, FOREIGN_GID)
        for p in (area / "dst" / "d" / "f", area / "dst" / "d"):
            set_times(p, (T0 + 1) * 10**9)
        os.utime(area / "dst", ns=(os.stat(t.src).st_mtime_ns,) * 2)

    t.each(planted)
    runs = t.run("-ai", "--modify-window=2", f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    assert items(runs.fscsync) == [".f.....g... d/f"]
    for area in (t.r, t.f):
        assert os.stat(area / "dst" / "d" / "f").st_mtime_ns == (T0 + 1) * 10**9
        assert os.stat(area / "dst" / "d").st_mtime_ns == (T0 + 1) * 10**9

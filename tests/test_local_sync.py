"""Local syncs checked against real rsync: one scenario, two destinations, same tree.

The helpers at the top (`Twin`, `items`, `temp_files_under`, ...) are shared by the
other rsync-comparison modules (test_itemize, test_filters, test_cli_errors,
test_remote), which import them from here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO, needs_root, run_fscsync, run_rsync
from support.reporter import Collect
from support.treecmp import assert_same_tree, snapshot
from support.trees import FOREIGN_GID, FOREIGN_UID, make_rich_tree, pattern, set_times, write

from fscsync.engine.flist import BatchBuilder, encode_entries
from fscsync.engine.scan import RUN_MAX, PlainRun, Scanner
from fscsync.fs.inplace import is_journal_name
from fscsync.options import Options

Proc = subprocess.CompletedProcess[bytes]

ENV = {"LC_ALL": "C"}
"""rsync escapes bytes by locale; under C every non-ASCII byte becomes \\#ooo, as fscsync does."""

D = "@D"
"""Placeholder at the start of an argument: replaced by each tool's own destination area."""

T0 = 1_500_000_000
"""Whole seconds for explicit mtimes (nanoseconds 0, so rsync has no same-second quirks)."""

ITEM_RE = re.compile(r"^(?:\*deleting  |[<>ch.][fdLDS][.+?cstpoguax]{9}) ")
TEMP_RE = re.compile(rb"\..*\.~fscsync~[A-Za-z0-9]{6}", re.DOTALL)


def items(proc: Proc) -> list[str]:
    """The itemize lines (`-i`) of a run's stdout, in output order."""
    return [ln for ln in proc.stdout.decode("ascii", "replace").splitlines() if ITEM_RE.match(ln)]


def _leaderless(lines: list[str]) -> list[str]:
    """`hf+++++++++ X => Y` as `>f+++++++++ X`, plus one marker line per linked entry."""
    plain = [(">" + ln[1:].split(" => ")[0]) if ln.startswith("hf") else ln for ln in lines]
    return plain + ["(hard-linked)" for ln in lines if ln.startswith("hf")]


def assert_same_items(runs: Runs, ordered: bool = False, hard_links: bool = False) -> None:
    """fscsync's -i lines equal rsync's (as sorted lists unless `ordered`).

    hard_links: which member of a hard-link group is sent whole and which are linked to it
    is each tool's choice, so only the entries and the number of `hf` lines must agree.
    """
    f, r = items(runs.fscsync), items(runs.rsync)
    if hard_links:
        f, r = _leaderless(f), _leaderless(r)
    if not ordered:
        f, r = sorted(f), sorted(r)
    assert f == r, ("itemize lines differ\n--- fscsync:\n" + "\n".join(items(runs.fscsync))
                    + "\n--- rsync:\n" + "\n".join(items(runs.rsync)))


def err_lines(proc: Proc) -> list[str]:
    return proc.stderr.decode("utf-8", "replace").splitlines()


def assert_clean_stderr(proc: Proc) -> None:
    """fscsync never shows Python internals, whatever went wrong."""
    text = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


def settle(root: bytes | str | os.PathLike[str], base: int = T0, links: bool = True) -> None:
    """Give every entry below root a distinct mtime in whole seconds, children first.

    links=False leaves symlinks alone, so a test about something else does not also
    depend on symlink times being updated (test_symlink_mtime_change covers that).
    """
    root_b = os.fsencode(root)
    entries: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root_b, topdown=False):
        entries.extend(os.path.join(dirpath, n) for n in sorted(filenames + dirnames))
        entries.append(dirpath)
    for i, path in enumerate(entries):
        if links or not os.path.islink(path):
            set_times(path, (base + 1000 * (i + 1)) * 10**9)


def make_plain_tree(root: Path) -> None:
    """A small tree of what `-a` copies without root: files, dirs, symlinks, an empty dir."""
    (root / "sub/deeper").mkdir(parents=True)
    (root / "emptydir").mkdir()
    write(root / "a.txt", b"alpha\n")
    write(root / "empty", b"")
    write(root / "sub/b.bin", pattern(10_000, "b"))
    write(root / "sub/deeper/c.txt", b"gamma\n", 0o640)
    write(root / "exec.sh", b"#!/bin/sh\n", 0o755)
    os.symlink("sub/b.bin", root / "link")
    os.symlink("no/such/target", root / "dangling")
    settle(root)


@contextmanager
def times_kept(*paths: Path) -> Iterator[None]:
    """Restore these entries' mtimes after a change (to fool the size+mtime quick check)."""
    times = [(p, os.lstat(p).st_mtime_ns) for p in paths]
    yield
    for p, ns in times:
        set_times(p, ns)


@contextmanager
def dir_times_kept(root: Path) -> Iterator[None]:
    """Put back every surviving directory's mtime after a change (files keep their own)."""
    times = {d: os.lstat(d).st_mtime_ns for d, _, _ in os.walk(root)}
    yield
    for d, ns in times.items():
        if os.path.isdir(d) and not os.path.islink(d):
            set_times(d, ns)


def temp_files_under(root: bytes | str | os.PathLike[str]) -> list[bytes]:
    """Every fscsync temp name (or in-place journal) left anywhere below root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        found.extend(os.path.join(dirpath, n) for n in filenames + dirnames
                     if TEMP_RE.fullmatch(n) or is_journal_name(n))
    return found


def fresh_temp(directory: bytes | str | os.PathLike[str], name: bytes) -> bytes:
    """A file named like the temp file of a killed fscsync run, for cleanup tests."""
    path = os.path.join(os.fsencode(directory), b"." + name + b".~fscsync~Zq09Xy")
    write(path, b"half-written\n")
    return path


def subst(arg: str | bytes | os.PathLike[str], area: Path) -> bytes:
    arg_b = os.fsencode(arg)
    return bytes(area) + arg_b[len(D):] if arg_b.startswith(D.encode()) else arg_b


@dataclass
class Runs:
    rsync: Proc
    fscsync: Proc


class Twin:
    """One scenario run through rsync and through fscsync into two destination areas.

    `src` is the shared source; arguments starting with "@D" name a path in the
    tool's own area (`r/` for rsync, `f/` for fscsync), e.g. "@D/dst/".
    """

    def __init__(self, tmp_path: Path):
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.areas = {"rsync": tmp_path / "r", "fscsync": tmp_path / "f"}
        for area in self.areas.values():
            area.mkdir()

    @property
    def r(self) -> Path:
        return self.areas["rsync"]

    @property
    def f(self) -> Path:
        return self.areas["fscsync"]

    def each(self, change: Callable[[Path], object]) -> None:
        """Apply the same change to both destination areas."""
        for area in self.areas.values():
            change(area)

    def run(self, *args: str | bytes | os.PathLike[str], code: int | None = 0,
            timeout: float = 60) -> Runs:
        """Run both tools; both must exit with `code` (None: don't check)."""
        r = run_rsync(*(subst(a, self.r) for a in args), env=ENV, check=code, timeout=timeout)
        f = run_fscsync(*(subst(a, self.f) for a in args), env=ENV, check=code,
                        timeout=timeout)
        assert_clean_stderr(f)
        return Runs(r, f)

    def fscsync(self, *args: str | bytes | os.PathLike[str], code: int | None = 0) -> Proc:
        """Run fscsync alone on its area (for the second half of a two-tool scenario)."""
        proc = run_fscsync(*(subst(a, self.f) for a in args), env=ENV, check=code)
        assert_clean_stderr(proc)
        return proc

    def assert_same(self, rel: str = "", made: Iterable[str] = (), **kw: object) -> None:
        """The two areas hold the same tree.

        The area roots, and the directories in `made` (created by the tool itself, not
        copied from a source, so their mtime is "now"), get one mtime before comparing.
        """
        for area in self.areas.values():
            for path in (area, *(area / m for m in made)):
                os.utime(path, ns=(T0 * 10**9, T0 * 10**9))
        assert_same_tree(self.r / rel, self.f / rel, **kw)
        assert not temp_files_under(self.f)


def deleted_count(before: Iterable[bytes], root: Path) -> int:
    return sum(not os.path.lexists(os.path.join(bytes(root), p)) for p in before)


# ---- whole trees -------------------------------------------------------------------------


def test_archive_plain_tree(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst/")
    t.assert_same()
    assert os.readlink(t.f / "dst/dangling") == "no/such/target"


@needs_root
def test_archive_rich_tree_aHAX(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    built = make_rich_tree(t.src)
    assert not built.skipped, built.skipped
    assert_same_items(t.run("-aHAXi", f"{t.src}/", "@D/dst"), hard_links=True)
    t.assert_same()
    again = t.run("-aHAXi", f"{t.src}/", "@D/dst")
    assert again.fscsync.stdout == b"" and again.rsync.stdout == b""
    snap = snapshot(t.f / "dst")
    assert snap[b"special/null"].type == "chr"
    assert snap[b"files/4095"].uid == FOREIGN_UID
    assert snap[b"files/4096"].xattrs[b"trusted.fscsync"] == b"t"
    assert b"system.posix_acl_default" in snap[b"d1/d2"].xattrs


@needs_root
@pytest.mark.parametrize("flags", ["-ri", "-rlDi", "-rpgoi"])
def test_options_short_of_archive(tmp_path: Path, flags: str) -> None:
    """Without -l symlinks are skipped, without -D devices, without -p new files get the
    umask; without -t every mtime is "now" in both trees, so mtimes are not compared."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    os.mkfifo(t.src / "fifo")
    os.mknod(t.src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chown(t.src / "a.txt", FOREIGN_UID, FOREIGN_GID)
    settle(t.src)
    assert_same_items(t.run(flags, f"{t.src}/", "@D/dst"))
    t.assert_same(ignore=("mtime",))


@pytest.mark.parametrize("slash", ["", "/"], ids=["dir", "contents"])
def test_trailing_slash_rule(tmp_path: Path, slash: str) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", f"{t.src}{slash}", "@D/dst")
    t.assert_same(made=[] if slash else ["dst"])
    assert (t.f / "dst" / ("a.txt" if slash else "src/a.txt")).is_file()


@pytest.mark.parametrize("dest", ["@D/newname", "@D/", "@D"], ids=["rename", "into/", "into"])
def test_single_file(tmp_path: Path, dest: str) -> None:
    t = Twin(tmp_path)
    write(t.src / "file", b"single\n", 0o600)
    set_times(t.src / "file", T0 * 10**9 + 123_456_789)
    t.run("-a", t.src / "file", dest)
    t.assert_same()
    assert (t.f / ("newname" if dest.endswith("newname") else "file")).read_bytes() == b"single\n"


def test_multiple_sources(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", t.src / "a.txt", t.src / "sub", f"{t.src}/sub/", t.src / "link", "@D/dst")
    t.assert_same(made=["dst"])
    assert sorted(os.listdir(t.f / "dst")) == ["a.txt", "b.bin", "deeper", "link", "sub"]


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    before = snapshot(t.f / "dst")
    again = t.run("-ai", f"{t.src}/", "@D/dst")
    assert again.fscsync.stdout == b"" and again.rsync.stdout == b""
    assert snapshot(t.f / "dst") == before
    t.assert_same()


# ---- updates -----------------------------------------------------------------------------


def _synced(tmp_path: Path) -> Twin:
    """A Twin whose destinations already hold a first copy of the plain tree."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    return t


@pytest.mark.parametrize("flag", ["--delete", "--delete-after"])
def test_delete_removes_files_and_dirs(tmp_path: Path, flag: str) -> None:
    t = _synced(tmp_path)
    os.unlink(t.src / "a.txt")
    shutil.rmtree(t.src / "sub")
    os.utime(t.src, ns=(T0 * 10**9, T0 * 10**9))

    def extra(area: Path) -> None:
        (area / "dst/only-here/x").mkdir(parents=True)
        write(area / "dst/only-here/x/f", b"x")

    t.each(extra)
    runs = t.run("-ai", flag, f"{t.src}/", "@D/dst")
    t.assert_same()
    assert not (t.f / "dst/sub").exists() and not (t.f / "dst/only-here").exists()
    assert_same_items(runs)


def test_max_delete_stops_after_n(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    extras = [b"dst/x1", b"dst/x2", b"dst/x3", b"dst/x4"]
    t.each(lambda area: [write(os.path.join(bytes(area), p), b"x") for p in extras])
    for limit, deleted in ((2, 2), (0, 2)):
        runs = t.run("-a", "--delete", f"--max-delete={limit}", f"{t.src}/", "@D/dst", code=25)
        assert deleted_count(extras, t.r) == deleted_count(extras, t.f) == deleted
        assert "--max-delete limit (2 skipped)" in runs.fscsync.stderr.decode()


@pytest.mark.parametrize("flags", [[], ["--ignore-existing"], ["--size-only"], ["-c"],
                                   ["-W"], ["--no-whole-file"]],
                         ids=["default", "ignore-existing", "size-only", "checksum",
                              "whole-file", "delta"])
def test_quick_check_variants(tmp_path: Path, flags: list[str]) -> None:
    """Same size+mtime but new data, new size, new mtime: each option decides like rsync."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    big = t.src / "big"
    write(big, pattern(300_000, "big"))
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    with times_kept(t.src / "big", t.src):
        data = bytearray(big.read_bytes())
        data[150_000:150_010] = b"X" * 10
        write(big, bytes(data))                                # same size, same mtime
    write(t.src / "a.txt", b"alpha, longer now\n")             # new size
    set_times(t.src / "a.txt", (T0 + 5) * 10**9)
    write(t.src / "sub/b.bin", pattern(10_000, "other"))      # same size, new mtime
    set_times(t.src / "sub/b.bin", (T0 + 7) * 10**9)
    runs = t.run("-ai", *flags, f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs)
    got_big = (t.f / "dst/big").read_bytes()
    assert (got_big == bytes(data)) == (flags == ["-c"])


def test_symlink_mtime_change(tmp_path: Path) -> None:
    """Only the symlinks' mtimes change: rsync -a updates them (`.L..t......`)."""
    t = _synced(tmp_path)
    for name in ("link", "dangling"):
        set_times(t.src / name, (T0 + 77) * 10**9)
    runs = t.run("-ai", f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs)


def test_dry_run_changes_nothing_but_itemizes(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    write(t.src / "a.txt", b"changed\n")
    os.chmod(t.src / "sub/deeper/c.txt", 0o600)
    write(t.src / "new", b"new\n")
    os.unlink(t.src / "empty")
    settle(t.src, T0 + 10**6, links=False)
    before = snapshot(t.f)
    dry = t.run("-ain", "--delete", f"{t.src}/", "@D/dst")
    assert snapshot(t.f) == before
    assert_same_items(dry)
    real = t.run("-ai", "--delete", f"{t.src}/", "@D/dst")
    assert sorted(items(real.fscsync)) == sorted(items(dry.fscsync))
    t.assert_same()
    fresh = t.run("-ain", f"{t.src}/", "@D/new")
    assert_same_items(fresh, ordered=True)
    assert not (t.f / "new").exists()


@needs_root
@pytest.mark.parametrize("numeric", [False, True], ids=["by-name", "numeric-ids"])
def test_owners_numeric_ids(tmp_path: Path, numeric: bool) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    os.chown(t.src / "a.txt", FOREIGN_UID, FOREIGN_GID)       # ids without names
    os.chown(t.src / "sub", 65534, 65534)                     # nobody/nogroup
    os.chown(t.src / "link", 1, 1, follow_symlinks=False)     # daemon
    settle(t.src)
    t.run("-a", *(["--numeric-ids"] if numeric else []), f"{t.src}/", "@D/dst")
    t.assert_same()
    assert os.lstat(t.f / "dst/link").st_uid == 1


def test_temp_dir_and_partial(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    write(t.src / "a.txt", pattern(50_000, "new a"))
    settle(t.src, T0 + 10**6, links=False)
    t.each(lambda area: (area / "tmpd").mkdir())
    t.run("-a", "--partial", "--temp-dir", "@D/tmpd", f"{t.src}/", "@D/dst")
    t.assert_same(made=["tmpd"])
    assert os.listdir(t.f / "tmpd") == []


@pytest.mark.parametrize("hard", [True, False], ids=["-H", "no-H"])
def test_hard_links(tmp_path: Path, hard: bool) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    os.link(t.src / "a.txt", t.src / "sub/a-link")
    os.link(t.src / "a.txt", t.src / "a-link2")
    os.link(t.src / "sub/b.bin", t.src / "sub/deeper/b-link")
    settle(t.src)
    flags = "-aHi" if hard else "-ai"
    assert_same_items(t.run(flags, f"{t.src}/", "@D/dst"), hard_links=True)
    t.assert_same()
    snap = snapshot(t.f / "dst")
    assert (snap[b"sub/a-link"].link is not None) == hard
    assert snap[b"a.txt"].link == snap[b"a-link2"].link == snap[b"sub/a-link"].link
    # groups change: one member leaves, a new one joins, a new group appears
    with dir_times_kept(t.src):
        os.unlink(t.src / "a-link2")
        write(t.src / "a-link2", b"on its own now\n")
        os.link(t.src / "a.txt", t.src / "sub/deeper/a-link3")
        os.link(t.src / "empty", t.src / "empty-link")
    set_times(t.src / "a-link2", T0 * 10**9)
    assert_same_items(t.run(flags, f"{t.src}/", "@D/dst"), hard_links=True)
    t.assert_same()


ODD_NAMES = [b"caf\xe9", b"new\nline", b"n" * 255, b"\x01ctl", b"back\\#351"]
"""Printed alike by both: rsync under LC_ALL=C escapes these bytes, and a backslash
before '#' (so a literal "\\#351" cannot be mistaken for an escape). Tab and DEL are
left out: rsync prints them raw, fscsync escapes them (safer, not a bug)."""


def test_odd_names_round_trip_and_print_escaped(tmp_bytes: bytes) -> None:
    t = Twin(Path(os.fsdecode(tmp_bytes)))
    src = bytes(t.src)
    for name in ODD_NAMES:
        write(os.path.join(src, name), name)
    os.mkdir(os.path.join(src, b"dir\xff"))
    write(os.path.join(src, b"dir\xff", b"inner\n"), b"x")
    settle(src)
    runs = t.run("-ai", src + b"/", "@D/dst")
    t.assert_same()
    assert_same_items(runs)
    out = runs.fscsync.stdout.decode("ascii")    # only escaped ASCII is printed
    assert "caf\\#351" in out and "new\\#012line" in out and "dir\\#377/inner\\#012" in out
    assert "back\\#134#351" in out


EVERY_KIND = Options(recursive=True, links=True, devices=True, specials=True)


def _walked(root: bytes) -> set[bytes]:
    """Every path under root, relative to it, and "." for root itself."""
    found = {b"."}
    for top, dirs, files in os.walk(root):
        found |= {os.path.relpath(os.path.join(top, n), root) for n in dirs + files}
    return found


def test_scan_lists_from_inside_each_directory_and_comes_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk lstats bare names from inside each directory, and is back in the caller's
    working directory whenever it hands out an entry: relative sources still name the
    files, and the caller's own relative paths still work between entries."""
    make_rich_tree(tmp_path / "src")
    odd = os.path.join(bytes(tmp_path / "src"), b"dir\xff")
    os.mkdir(odd)
    write(os.path.join(odd, b"in\nner"), b"x")
    monkeypatch.chdir(tmp_path)
    reporter = Collect()
    scanner = Scanner(EVERY_KIND, reporter)
    seen = set()
    for run in scanner.scan([b"src/"]):
        assert os.getcwd() == str(tmp_path)
        for e in run:
            assert os.path.lexists(e.src), e.src
            assert e.src == (b"src/" + e.path if e.path != b"." else b"src")
            seen.add(e.path)
    assert seen == _walked(b"src")
    assert reporter.lines == []


def test_scan_beside_another_thread_keeps_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With another thread running, the walk takes whole paths and never moves the
    working directory, which that thread may be using (a scan ahead of the connection
    runs beside the thread that talks to the peer)."""
    make_rich_tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(os.getcwd())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        paths = {e.path for run in Scanner(EVERY_KIND, Collect()).scan([b"src/"])
                 for e in run}
    finally:
        stop.set()
        watcher.join()
    assert seen == {str(tmp_path)}
    assert paths == _walked(b"src")


def test_scan_hands_out_a_big_directory_in_bounded_runs(tmp_path: Path) -> None:
    """A directory's files come as runs of at most RUN_MAX entries, in name order."""
    big = tmp_path / "src" / "big"
    big.mkdir(parents=True)
    for i in range(2 * RUN_MAX + 5):
        (big / f"f{i:05d}").touch()
    runs = list(Scanner(EVERY_KIND, Collect()).scan([bytes(tmp_path / "src") + b"/"]))
    assert max(len(run) for run in runs) == RUN_MAX
    files = [e.path for run in runs for e in run if e.path.startswith(b"big/")]
    assert files == sorted(files) and len(files) == 2 * RUN_MAX + 5


def test_scan_keeps_name_order_across_plain_runs_and_other_entries(tmp_path: Path) -> None:
    """Files that cannot be encrypted (a size of no whole number of 4096-byte units)
    come as PlainRuns (lstat results, no Entry objects) when no xattrs are wanted, the
    rest as entries; between them the directory's name order holds, each file's fields
    are what lstat says, and a PlainRun packs as its entries would. An xattr does not
    matter without -X."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        write(src / f"f{i:02d}", b"x" * (8192 if i in (3, 4, 9) else i + 1))
    os.setxattr(src / "f05", "user.k", b"v")
    os.symlink("f00", src / "f06b")
    runs = list(Scanner(EVERY_KIND, Collect()).scan([bytes(src) + b"/"]))
    kinds = [(type(run) is PlainRun, [e.path for e in run]) for run in runs[1:]]
    assert kinds == [
        (True, [b"f00", b"f01", b"f02"]), (False, [b"f03", b"f04"]),
        (True, [b"f05", b"f06"]), (False, [b"f06b"]), (True, [b"f07", b"f08"]),
        (False, [b"f09"]), (True, [b"f10", b"f11"])]
    for run in runs[1:]:
        for e in run:
            st = os.lstat(e.src)
            assert (e.mode, e.size, e.mtime_ns, e.uid, e.gid) == (
                st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
        if type(run) is PlainRun:
            assert run.paths() == [e.path for e in run]
            batch = BatchBuilder()
            batch.add_stats(run.paths(), run.stats)
            assert batch.encode() == encode_entries(list(run))


def test_file_and_directory_swap_places(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    os.unlink(t.src / "a.txt")
    (t.src / "a.txt").mkdir()
    write(t.src / "a.txt/inside", b"now a dir\n")
    shutil.rmtree(t.src / "sub")
    write(t.src / "sub", b"now a file\n")
    os.unlink(t.src / "link")
    (t.src / "link").mkdir()
    settle(t.src, T0 + 10**6, links=False)
    runs = t.run("-ai", "--delete", f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs)


def test_sparse_file_stays_sparse(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    with open(t.src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    settle(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    t.assert_same()                                          # rsync without -S fills holes
    assert snapshot(t.f / "dst", sparse=True)[b"sparse"].sparse is True
    run_rsync("-aS", f"{t.src}/", t.r / "dst-S", check=True)
    assert_same_tree(t.r / "dst-S", t.f / "dst", sparse=True)


# ---- temp files ---------------------------------------------------------------------------


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    fresh_temp(t.f / "dst", b"a.txt")
    fresh_temp(t.f / "dst/sub", b"gone-file")
    fresh_temp(t.f / "dst/sub/deeper", b"c.txt")
    t.fscsync("-a", f"{t.src}/", "@D/dst")
    assert temp_files_under(t.f) == []
    t.assert_same()


@pytest.mark.parametrize("flags", [[], ["--delete"], ["--size-only"]],
                         ids=["plain", "delete", "size-only"])
def test_directory_with_the_source_time_is_not_listed(tmp_path: Path, flags: list[str]) -> None:
    """A directory whose time equals the source's had no entry made in it since that time
    was set, so a plain run does not list it: temp-named litter put there without
    changing the time stays (the killed run in the tests above always changes it).
    --delete and --size-only list every directory and remove it."""
    t = _synced(tmp_path)
    sub = t.f / "dst/sub"
    fresh_temp(sub, b"gone-file")
    os.utime(sub, ns=(os.stat(t.src / "sub").st_atime_ns, os.stat(t.src / "sub").st_mtime_ns))
    t.fscsync("-a", *flags, f"{t.src}/", "@D/dst")
    left = temp_files_under(t.f)
    assert (left == []) == bool(flags), left
    assert os.stat(sub).st_mtime_ns == os.stat(t.src / "sub").st_mtime_ns


@pytest.mark.parametrize("flags", [["-a"], ["-aX"]], ids=["quick", "xattrs"])
def test_entries_in_a_directory_the_run_made_are_not_looked_up(tmp_path: Path,
                                                               flags: list[str]) -> None:
    """Nothing can be in a directory this run made: the receiver does not lstat the new
    files there one by one to find them missing (two ENOENTs per file before). Files in
    a directory that existed are still looked up, and everything is copied. -X takes the
    general path, -a the batch loop's."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in ("old", "new", "new/deeper"):
        (src / d).mkdir(parents=True)
    names = {d: [f"{d.replace('/', '-')}-{i:02d}" for i in range(12)]
             for d in ("old", "new", "new/deeper")}
    for d, files in names.items():
        for n in files:
            write(src / d / n, pattern(100, n))
    (dst / "old").mkdir(parents=True)
    log = tmp_path / "strace"
    # -ff: a file per process, so that the sender's and the receiver's calls, made at
    # the same time, are not split into "unfinished" and "resumed" halves.
    proc = subprocess.run(
        [strace, "-ff", "-qq", "-o", str(log), "-e", "trace=newfstatat,statx,lstat,stat",
         sys.executable, "-m", "fscsync", *flags, f"{src}/", f"{dst}/"],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(src, dst, xattrs=True, ignore_dir_mtime=True)
    text = "".join(p.read_text() for p in tmp_path.glob("strace.*"))
    missing = {m.group(1) for m in re.finditer(r'^\w+\([^"\n]*"([^"\n]*)".*= -1 ENOENT',
                                               text, re.M)}
    looked_up = missing & {*names["new"], *names["new/deeper"], "deeper"}
    assert not looked_up, sorted(looked_up)
    assert set(names["old"]) <= missing, "files in an existing directory are looked up"


def test_killed_run_keeps_old_copy_and_next_run_cleans_up(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    old = (t.f / "dst/sub/b.bin").read_bytes()
    write(t.src / "sub/b.bin", pattern(4 << 20, "killed"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fscsync", "-a", "--bwlimit=256", f"{t.src}/", f"{t.f}/dst"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not temp_files_under(t.f / "dst") and proc.poll() is None:
            assert time.monotonic() < deadline, "no temp file appeared"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (t.f / "dst/sub/b.bin").read_bytes() == old
    t.fscsync("-a", f"{t.src}/", "@D/dst")
    assert temp_files_under(t.f) == []
    assert_same_tree(t.src, t.f / "dst")


# ---- --stats ------------------------------------------------------------------------------

_STAT_KEYS = ("Number of files", "Number of regular files transferred", "Total file size",
              "Literal data", "Matched data", "Total bytes sent", "Total bytes received")


def stats_of(proc: Proc) -> dict[str, int]:
    """rsync's --stats counters: 'Number of files: 1,234 (reg: ...)' -> 1234."""
    found = {}
    for ln in proc.stdout.decode().splitlines():
        key, sep, rest = ln.partition(": ")
        if sep and key in _STAT_KEYS:
            found[key] = int(rest.split()[0].replace(",", ""))
    assert set(found) == set(_STAT_KEYS), proc.stdout.decode()
    return found


def test_stats_counters(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    write(t.src / "big", pattern(1 << 20, "stats"))
    settle(t.src)
    first = t.run("-a", "--stats", f"{t.src}/", "@D/dst")
    r, f = stats_of(first.rsync), stats_of(first.fscsync)
    for key in ("Number of files", "Number of regular files transferred", "Literal data"):
        assert f[key] == r[key], key
    assert f["Matched data"] == 0
    assert f["Total bytes sent"] > f["Literal data"] > 0 and f["Total bytes received"] > 0
    with times_kept(t.src / "big"):
        data = bytearray((t.src / "big").read_bytes())
        data[500_000:500_004] = b"EDIT"
        write(t.src / "big", bytes(data))
    set_times(t.src / "big", (T0 + 1) * 10**9)
    second = t.run("-a", "--stats", f"{t.src}/", "@D/dst")
    delta = stats_of(second.fscsync)
    assert delta["Number of regular files transferred"] == 1
    assert 0 < delta["Literal data"] <= 64 << 10
    assert delta["Matched data"] >= (1 << 20) - (64 << 10)
    assert delta["Total bytes sent"] < 128 << 10
    t.assert_same()
    for run in (first, second):       # rsync counts symlink target lengths in the total
        assert stats_of(run.fscsync)["Total file size"] == stats_of(run.rsync)["Total file size"]


@needs_root
def test_owner_and_mode_changes_reach_existing_copies(tmp_path: Path) -> None:
    t = _synced(tmp_path)
    os.chown(t.src / "a.txt", FOREIGN_UID, FOREIGN_GID)
    os.chmod(t.src / "exec.sh", 0o700)
    os.chmod(t.src / "sub", 0o750)
    os.lchown(t.src / "link", FOREIGN_UID, FOREIGN_GID)
    settle(t.src, T0 + 10**6, links=False)
    t.run("-a", f"{t.src}/", "@D/dst")
    t.assert_same()
    assert stat.S_IMODE(os.stat(t.f / "dst/sub").st_mode) == 0o750


@pytest.mark.parametrize("flags", [["-a"], ["-aH"], ["-aHc"]], ids=" ".join)
def test_several_sources_merge_as_rsyncs_do(tmp_path: Path, flags: list[str]) -> None:
    """The receiver refuses an entry that repeats or comes out of order (issue 19), so
    several sources go as one list in order: the first source's entry where two give the
    same path, nothing under a path that is no directory there, top names sorted, hard
    links across sources led by the first in the list. The tree is rsync's, from the
    same arguments."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for path, data in [(a / "x", b"A"), (b / "x", b"B"), (a / "d/f", b"A"), (b / "d/f", b"B"),
                       (b / "d/g", b"B"), (a / "n", b"file in a"), (b / "n/under", b"B"),
                       (b / "m", b"B"), (c / "k/inner", b"C"), (a / "y", b"linked")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, data)
    os.link(a / "y", b / "e")
    args = [f"{a}/", f"{c}/k", f"{b}/"]
    run_rsync(*flags, *args, f"{tmp_path}/r/", check=True)
    run_fscsync(*flags, *args, f"{tmp_path}/f/", check=True)
    assert_same_tree(tmp_path / "r", tmp_path / "f", ignore_dir_mtime=True)
    assert (tmp_path / "f/x").read_bytes() == b"A"
    linked = os.stat(tmp_path / "f/e").st_ino == os.stat(tmp_path / "f/y").st_ino
    assert linked == ("H" in flags[0]), "hard links across sources"


def test_dry_run_hard_links_into_directories_it_would_make(tmp_path: Path) -> None:
    """-aHn: links whose directories the run would create are listed (hf lines, as
    rsync's), nothing is made and the run exits 0 (it used to fail them with ENOENT)."""
    src = tmp_path / "src"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
    write(src / "a" / "f", b"x")
    os.link(src / "a" / "f", src / "b" / "g")
    os.link(src / "a" / "f", src / "c" / "h")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    mine = run_fscsync("-aHni", f"{src}/", f"{ours}/")
    ref = run_rsync("-aHni", f"{src}/", f"{theirs}/", check=True)
    assert mine.returncode == 0, mine.stderr
    assert os.listdir(ours) == []

    def names(out: bytes) -> set[bytes]:  # the leader rsync picks differs: names only
        return {line.split()[1] for line in out.splitlines() if not line.startswith(b".d")}

    assert names(mine.stdout) == names(ref.stdout)
    assert sum(line.startswith(b"hf") for line in mine.stdout.splitlines()) == 2

"""--delete-before, --delete-during (--del, plain --delete), --delete-delay and
--delete-after side by side with rsync: the same trees, and the deletion lines in
rsync's order for each timing; --ignore-errors; --max-delete in every timing.

One normalisation, and why: rsync prints a transferred file's line (and every other
item line) from its sender, in the order of the generator's requests, while its
generator's deletion lines travel as messages that overtake the requests still
buffered; so in rsync's output the deletion lines drift earlier among the others,
by timing. fscsync prints both from one thread as it decides. The deletion lines
(with "cannot delete" notes) and the other lines are therefore compared each in
order, exactly, and where the timing fixes their interleaving (before: first;
delay, after: last; during: each directory's before any line of an entry inside
it) that is checked on both outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.peer import default_options
from support.treecmp import snapshot
from support.trees import write
from test_cli_errors import nocap, run_both_nocap  # noqa: F401 (the fixture)
from test_hostile import (  # noqa: F401 (the fixtures)
    DIR,
    assert_clean,
    assert_refused,
    flist,
    flist_end,
    launcher,
    reg,
    root,
    sb,
    start,
)
from test_local_sync import T0, Runs, Twin, settle

from fscsync.engine.flist import Entry
from fscsync.engine.stats import Stats, final_message
from fscsync.wire import protocol

Proc = subprocess.CompletedProcess[bytes]
WHENS = ["--delete-before", "--delete-during", "--delete-delay", "--delete-after"]
NOTES = ("*deleting", "cannot delete")
ITEMS = ("*deleting", ">f", "cd", ".d", ".f", "cL", ">L", "hf")
ROOM = "dir2file/"
"""Below the directory a file replaces: rsync removes it just before that file."""


def make_source(src: Path) -> None:
    for d in ("a/x", "b", "c", "file2dir"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for rel, data in (("f1", b"1"), ("a/f2", b"2"), ("a/x/f3", b"3"), ("b/f4", b"4"),
                      ("c/new", b"n"), ("dir2file", b"now a file"), ("file2dir/in", b"i")):
        write(src / rel, data)
    settle(src)


def make_stale(area: Path) -> None:
    """The destination of an earlier run, then changed: nested extraneous trees, a
    directory where the source has a file and a file where it has a directory,
    protected entries (*.p) at the top and deep inside an extraneous directory."""
    d = area / "dst"
    for sub in ("gone/deep/deeper", "a/x/ex", "b", "c", "dir2file/sub", "keep/inner"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for rel in ("f1", "extra", "gone/g1", "gone/zz", "gone/deep/g2", "gone/deep/deeper/g3",
                "a/extra_a", "a/x/ex/e", "dir2file/sub/q", "dir2file/q2", "file2dir",
                "b/keep.p", "b/zz", "keep/inner/held.p", "keep/inner/loose", "keep/z"):
        write(d / rel, b"1" if rel == "f1" else b"old " + rel.encode())
    settle(d, base=T0 + 10**6)


def lines(proc: Proc) -> list[str]:
    """The item lines and "cannot delete" notes of stdout, in order."""
    return [ln for ln in proc.stdout.decode("ascii", "replace").splitlines()
            if ln.startswith(ITEMS) or ln.startswith("cannot delete")]


def split(out: list[str]) -> tuple[list[str], list[str]]:
    return ([ln for ln in out if ln.startswith(NOTES)],
            [ln for ln in out if not ln.startswith(NOTES)])


def path_of(line: str) -> str:
    return line.split(maxsplit=1)[1].split(" -> ")[0] if line.startswith(ITEMS) else \
        line.rpartition(": ")[2]


def pass_deletions(out: list[str]) -> list[int]:
    """Positions of the deletion lines of the timing's own pass (not making room)."""
    return [i for i, ln in enumerate(out) if ln.startswith(NOTES)
            and not path_of(ln).startswith(ROOM) and path_of(ln) != ROOM.rstrip("/")]


def others(out: list[str]) -> list[int]:
    return [i for i, ln in enumerate(out) if not ln.startswith(NOTES)]


def assert_same_order(runs: Runs) -> tuple[list[str], list[str]]:
    r, f = lines(runs.rsync), lines(runs.fscsync)
    assert split(f) == split(r), "\n--- rsync:\n" + "\n".join(r) + "\n--- fscsync:\n" + \
        "\n".join(f)
    return r, f


def assert_timing(when: str, out: list[str]) -> None:
    """Where the timing puts the deletions among the other lines (either tool)."""
    dels, rest = pass_deletions(out), others(out)
    assert dels and rest, out
    if when == "--delete-before":
        assert max(dels) < min(rest), out
    elif when in ("--delete-delay", "--delete-after"):
        assert min(dels) > max(rest), out
    else:  # during: a directory's deletions before any line of an entry inside it
        for i in dels:
            where = _reached_dir(path_of(out[i]))
            inside = [j for j in rest if _below(path_of(out[j]), where)]
            assert not inside or i < min(inside), (out[i], out)
    room = [i for i, ln in enumerate(out) if ln.startswith(NOTES)
            and path_of(ln).startswith(ROOM)]
    assert room and max(room) < out.index(">f+++++++++ dir2file"), out


SOURCE_DIRS = ("a/x", "a", "b", "c", "file2dir")


def _reached_dir(path: str) -> str:
    """The directory whose deletions removed `path`: the deepest one the source has."""
    return next((d for d in SOURCE_DIRS if path.startswith(d + "/")), "")


def _below(path: str, directory: str) -> bool:
    """Whether the line of `path` is one of an entry inside `directory` (not its own)."""
    if path == "./" or path == directory + "/":
        return False
    return not directory or path.startswith(directory + "/")


def assert_same_trees(t: Twin) -> None:
    """Both destinations equal; a directory the deletions left (keep/, holding a
    protected file) has the time of the deletions in it, so directory times are
    compared for the source's directories only."""
    t.assert_same(ignore_dir_mtime=True)
    for d in ("", *SOURCE_DIRS):
        want = os.stat(t.src / d).st_mtime_ns
        assert os.stat(t.r / "dst" / d).st_mtime_ns == os.stat(t.f / "dst" / d).st_mtime_ns \
            == want, d


@pytest.fixture
def stale(tmp_path: Path) -> Twin:
    t = Twin(tmp_path)
    make_source(t.src)
    t.each(make_stale)
    return t


@pytest.mark.parametrize("when", WHENS)
def test_timings_like_rsync(stale: Twin, when: str) -> None:
    t = stale
    runs = t.run("-ai", when, "-f", "P *.p", f"{t.src}/", "@D/dst")
    assert_same_trees(t)
    _, f = assert_same_order(runs)
    for out in (lines(runs.rsync), f):
        assert_timing(when, out)
    assert (t.f / "dst/b/keep.p").exists() and (t.f / "dst/keep/inner/held.p").exists()
    assert "cannot delete non-empty directory: keep/inner" in f
    assert not (t.f / "dst/keep/inner/loose").exists()


def test_during_deletes_when_the_directory_is_reached(stale: Twin) -> None:
    """fscsync deletes in a/ after the root's files were decided (not in a pass
    before them), and in b/ after a/'s subtree: plain --delete and --del are
    --delete-during."""
    t = stale
    for option in ("--delete", "--del"):
        runs = t.run("-ai", option, f"{t.src}/", "@D/dst")
        f = lines(runs.fscsync)
        assert f.index("*deleting   a/extra_a") > f.index(">f+++++++++ dir2file")
        assert f.index("*deleting   b/zz") > f.index(">f+++++++++ a/x/f3")
        assert f.index("*deleting   b/zz") < f.index(">f+++++++++ b/f4")
        assert_same_trees(t)
        t.each(lambda area: shutil.rmtree(area / "dst"))
        t.each(make_stale)


@pytest.mark.parametrize("when", WHENS)
@pytest.mark.parametrize("limit", [0, 3, 9])
def test_max_delete_in_every_timing(stale: Twin, when: str, limit: int) -> None:
    """rsync counts every entry against --max-delete, deep ones too; a directory the
    limit keeps something in stays ("cannot delete non-empty directory")."""
    t = stale
    runs = t.run("-ai", when, f"--max-delete={limit}", f"{t.src}/", "@D/dst", code=None)
    assert runs.fscsync.returncode == runs.rsync.returncode, runs.fscsync.stderr
    assert runs.rsync.returncode in (23, 25)
    assert_same_trees(t)
    assert_same_order(runs)
    assert b"Deletions stopped due to --max-delete limit" in runs.fscsync.stderr


@pytest.mark.parametrize("when", WHENS)
def test_verbose_deleting_lines(stale: Twin, when: str) -> None:
    t = stale
    runs = t.run("-av", when, f"{t.src}/", "@D/dst")

    def deleting(proc: Proc) -> list[str]:
        return [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("deleting ")]
    assert deleting(runs.fscsync) == deleting(runs.rsync)
    assert "deleting gone/deep/" in deleting(runs.fscsync)
    assert_same_trees(t)


@pytest.mark.parametrize("when", WHENS)
def test_dry_run_lists_and_changes_nothing(stale: Twin, when: str) -> None:
    t = stale
    before = snapshot(t.f / "dst")
    runs = t.run("-ain", when, f"{t.src}/", "@D/dst")
    assert snapshot(t.f / "dst") == before
    r, f = assert_same_order(runs)
    if when == "--delete-before":
        for out in (r, f):
            assert max(pass_deletions(out)) < min(others(out)), out
    runs = t.run("-ain", when, f"{t.src}/", "@D/none")
    assert not (t.f / "none").exists()
    assert split(lines(runs.fscsync)) == split(lines(runs.rsync))


def test_conflicting_timings_are_refused(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    for pair in (("--delete-before", "--del"), ("--delete-after", "--delete-delay"),
                 ("--delete-before", "--delete-after")):
        runs = t.run("-r", *pair, f"{t.src}/", "@D/dst", code=1)
        for proc in (runs.rsync, runs.fscsync):
            assert b"You may not combine multiple --delete-WHEN options." in proc.stderr
    assert not (t.f / "dst").exists()
    # --delete-delay and --delete-during are one setting in rsync: the last one counts
    t.run("-r", "--delete-delay", "--delete-during", "--no-ignore-errors", f"{t.src}/",
          "@D/dst")
    assert (t.r / "dst").is_dir() and (t.f / "dst").is_dir()


# ---- the sender's I/O errors -----------------------------------------------------------


NOTE = "IO error encountered -- skipping file deletion"


def skipped_note(proc: Proc) -> bool:
    """The note is an always-shown message on stdout (rsync's FINFO), not an error."""
    assert NOTE.encode() not in proc.stderr
    return NOTE in proc.stdout.decode("ascii", "replace").splitlines()


@pytest.mark.parametrize("when", WHENS)
@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-errors"])
def test_unreadable_file(tmp_path: Path, nocap: list[str],  # noqa: F811 (the fixture)
                         when: str, ignore: bool) -> None:
    """A listed file the sender cannot open: rsync learns of it after the transfer, so
    only --delete-after keeps everything, unless --ignore-errors."""
    t = Twin(tmp_path)
    make_source(t.src)
    write(t.src / "secret", b"s")
    settle(t.src)
    os.chmod(t.src / "secret", 0)
    t.each(make_stale)
    extra = ["--ignore-errors"] if ignore else []
    runs = run_both_nocap(t, nocap, "-ai", when, *extra, f"{t.src}/", "@D/dst", code=23)
    assert_same_trees(t)
    kept = when == "--delete-after" and not ignore
    assert (t.f / "dst/gone").exists() == kept
    assert skipped_note(runs.fscsync) == skipped_note(runs.rsync) == kept
    # rsync lists a transfer once the file is sent, fscsync when it asks for it: the
    # unreadable file has a line in fscsync's output only.
    assert lines(runs.fscsync).count(">f+++++++++ secret") == 1
    got = [ln for ln in lines(runs.fscsync) if ln != ">f+++++++++ secret"]
    assert split(got) == split(lines(runs.rsync))


@pytest.mark.parametrize("when", WHENS)
@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-errors"])
def test_unreadable_directory(tmp_path: Path, nocap: list[str],  # noqa: F811 (the fixture)
                              when: str, ignore: bool) -> None:
    """A directory the sender cannot list stops every deletion; with --ignore-errors
    they go ahead, and what the destination holds in it goes too, as in rsync.

    One difference, on purpose: without --ignore-errors rsync's --delete-during (and
    -delay) has deleted in the directories its generator reached before the sender got
    to the unreadable one; fscsync knows of the error first and deletes nothing."""
    t = Twin(tmp_path)
    make_source(t.src)
    os.chmod(t.src / "b", 0)
    try:
        t.each(make_stale)
        extra = ["--ignore-errors"] if ignore else []
        # Without -p: a copied mode 000 would keep the capability-less rsync out of b/.
        runs = run_both_nocap(t, nocap, "-rlti", when, *extra, f"{t.src}/", "@D/dst", code=23)
    finally:
        os.chmod(t.src / "b", 0o755)
    assert (t.f / "dst/gone").exists() != ignore
    assert (t.f / "dst/b/zz").exists() != ignore
    assert skipped_note(runs.fscsync) != ignore
    if not ignore and when in ("--delete-during", "--delete-delay"):
        assert not (t.r / "dst/gone").exists()  # rsync: deleted before the error
        return
    assert_same_trees(t)
    assert skipped_note(runs.rsync) != ignore
    assert split(lines(runs.fscsync)) == split(lines(runs.rsync))


@pytest.mark.parametrize("args", [[], ["-v"], ["-i"], ["-q"]], ids=["plain", "v", "i", "q"])
def test_skipped_note_where_rsync_says_it(tmp_path: Path, nocap: list[str],  # noqa: F811
                                          args: list[str]) -> None:
    """The note of skipped deletions goes where rsync's goes: one line on stdout with or
    without -v or -i, in the log file too, and neither with -q (the log keeps the
    error and the items)."""
    t = Twin(tmp_path)
    make_source(t.src)
    os.chmod(t.src / "b", 0)
    try:
        t.each(make_stale)
        runs = run_both_nocap(t, nocap, "-rt", "--delete", "--delete-after", *args,
                              "--log-file", "@D/log", f"{t.src}/", "@D/dst", code=23)
    finally:
        os.chmod(t.src / "b", 0o755)
    said = "-q" not in args
    for proc, area in ((runs.rsync, t.r), (runs.fscsync, t.f)):
        out = proc.stdout.decode("ascii", "replace").splitlines()
        assert out.count(NOTE) == said and skipped_note(proc) == said, out
        logged = [ln.split("] ", 1)[1] for ln in (area / "log").read_text().splitlines()]
        assert logged.count(NOTE) == said, logged
        assert any("Permission denied" in ln for ln in logged), logged
    assert (t.f / "dst/gone").exists() and (t.r / "dst/gone").exists()


# ---- the receiver's checks ---------------------------------------------------------------


def test_ioerror_frame_is_checked(sb) -> None:  # noqa: F811 (the fixture)
    """IOERROR is empty and comes after the file list; anything else is refused."""
    for before_end, payload in ((True, b""), (False, b"x")):
        peer = start(sb)
        peer.send(*flist(root(), reg(b"new.txt")))
        if not before_end:
            peer.send(protocol.FLIST_END, flist_end(2))
        peer.send(protocol.IOERROR, payload)
        assert_refused(peer.finish(), sb, f"unexpected frame type {protocol.IOERROR}")


def test_ioerror_frame_stops_delete_after(sb) -> None:  # noqa: F811 (the fixture)
    """A sender that says it could not read a file: --delete-after keeps what the list
    does not bring (keep.txt, sub/old.txt); the same stream without IOERROR deletes."""
    for says in (True, False):
        peer = start(sb, default_options(delete=True, delete_when="after", itemize=1))
        peer.send(*flist(root(), Entry(b"sub", DIR)))
        peer.send(protocol.FLIST_END, flist_end(2))
        if says:
            peer.send(protocol.IOERROR)
        assert peer.wait_type(protocol.NOMORE) is not None
        peer.send(protocol.NOMORE_ACK)
        assert peer.wait_type(protocol.DONE) is not None
        peer.send_json(protocol.FINISHED, final_message(Stats(), 23 if says else 0))
        result = peer.finish()
        assert_clean(result)
        assert (sb.dest / "sub/old.txt").exists() == says, result.describe()
        assert ("skipping file deletion" in result.messages()) == says, result.describe()


def test_held_list_paths_are_checked_before_the_pass(sb) -> None:  # noqa: F811
    """--delete-before opens directories by the list's paths: a bad one is refused
    before anything is deleted."""
    peer = start(sb, default_options(delete=True, delete_when="before"))
    peer.send(*flist(root(), Entry(b"sub", DIR), Entry(b"sub/../../outside", DIR)))
    peer.send(protocol.FLIST_END, flist_end(3))
    assert_refused(peer.finish(), sb, "unsafe path")

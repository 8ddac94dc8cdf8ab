"""rsync's link, directory, output and --partial options, side by side: each command
line goes through rsync and fscsync on the same tree, and the trees, exit codes and
output lines must agree (issue 21)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import needs_root, run_fscsync, run_rsync
from support.trees import set_times, write
from test_local_sync import ENV, T0, Twin, assert_same_items, items, make_plain_tree, settle

from fscsync.cli import outflags


def _link_tree(t: Twin) -> None:
    """make_plain_tree's link and dangling link, plus a link to a directory, unsafe
    links that lead somewhere (relative and absolute) and nowhere, directories with
    nothing but directories below them (for -m), and one holding only a symlink."""
    make_plain_tree(t.src)
    write(t.src.parent / "outside.txt", b"outside\n")
    os.symlink("sub", t.src / "dirlink")
    os.symlink("../outside.txt", t.src / "up")
    os.symlink(f"{t.src}/a.txt", t.src / "abs")
    os.symlink("../../gone", t.src / "sub/upgone")
    (t.src / "hollow/inner/most").mkdir(parents=True)
    (t.src / "withlink/x").mkdir(parents=True)
    os.symlink("q", t.src / "withlink/x/l")
    settle(t.src)


def _argv(line: str, t: Twin) -> list[str]:
    return [{"S": f"{t.src}/", "S0": str(t.src), "D": "@D/dst"}.get(w, w) for w in line.split()]


def _without_prefix(proc: subprocess.CompletedProcess[bytes], start: str) -> list[str]:
    """The stdout and stderr lines that begin with `start` once a tool's name is off."""
    out = []
    for line in (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines():
        line = line.removeprefix("fscsync: ")
        if line.startswith(start):
            out.append(line)
    return sorted(out)


# (command line, exit code): 23 where a followed link points nowhere
LINK_LINES = [
    ("-ai -L S D", 23), ("-ai --copy-links S0 D", 23), ("-ai -k S D", 0),
    ("-ai --copy-dirlinks S0 D", 0),
    ("-ai --copy-unsafe-links S D", 23), ("-ri --copy-unsafe-links S D", 23),
    ("-ai --copy-unsafe-links --safe-links S D", 23), ("-aiv --copy-unsafe-links S D", 23),
    ("-ai --copy-unsafe-links S0 D", 0), ("-aikL S D", 23),
    ("-aiHX -L S D", 23),
]


@needs_root
@pytest.mark.parametrize(("line", "code"), LINK_LINES)
def test_symlink_options_like_rsync(tmp_path: Path, line: str, code: int) -> None:
    """-L, -k and --copy-unsafe-links, alone and with -l, --safe-links, -H and -X: the
    same tree, the same -i lines, and the same complaints about links that point
    nowhere ('symlink has no referent') and, with -v, about unsafe links followed."""
    t = Twin(tmp_path)
    _link_tree(t)
    runs = t.run(*_argv(line, t), code=code)
    assert_same_items(runs)
    for start in ("symlink has no referent", "copying unsafe symlink"):
        assert _without_prefix(runs.fscsync, start) == _without_prefix(runs.rsync, start)
    assert ("-v" not in line) or _without_prefix(runs.rsync, "copying unsafe symlink")
    t.assert_same(made=_made(line), ignore=("mtime",) if line.startswith("-r") else ())


def _made(line: str) -> tuple[str, ...]:
    """The destination directory, when the tool made it rather than copied it."""
    return ("dst",) if " S0 " in f" {line} " or "/dst/" in line else ()


DIR_LINES = [
    "-di S D", "-di S0 D", "-di S0 @D/dst/", "-ai -d --no-r S D", "-adi --no-r S0 D",
    "-di --old-d S D", "-ai --no-r --old-dirs S D", "-ai --old-d --include=/sub/b.bin S D",
    "-ai --no-r S D", "-ri --no-r S D",
    "-ai --no-r S @D/dst/", "-ai --no-d -r S D",
    "-ai -m S D", "-ri -m S D", "-ai -m S0 D", "-aim --exclude=*.txt --exclude=*.sh S D",
    "-aiH -m S D", "-di -m S D", "-ai -m --no-m S D",
]


@needs_root
@pytest.mark.parametrize("line", DIR_LINES)
def test_directory_options_like_rsync(tmp_path: Path, line: str) -> None:
    """-d (a directory without its contents; one entry goes under the destination's
    own name), --old-d (-r with --exclude='/*/*'), --no-r (nothing listed: no
    destination made unless it ends in '/') and -m (no directory whose subtree holds
    only directories; a skipped symlink still counts)."""
    t = Twin(tmp_path)
    _link_tree(t)
    runs = t.run(*_argv(line, t))
    assert_same_items(runs)
    assert os.path.lexists(t.r / "dst") == os.path.lexists(t.f / "dst")
    if os.path.lexists(t.r / "dst"):
        t.assert_same(made=_made(line) if os.path.isdir(t.r / "dst") else (),
                      ignore=("mtime",) if line.startswith(("-r", "-d")) else ())


def _stale(area: Path) -> None:
    """An older mirror with extraneous entries at several depths, files and
    directories mixed, for the order of the *deleting lines."""
    d = area / "dst"
    for rel in ("gone/g2", "gone/a1", "zz", "sub/deep/d2", "sub/deeper/old", "emptydir/e2/e3"):
        (d / rel).mkdir(parents=True)
    for rel in ("extra", "aextra", "sub/extra2", "sub/deep/x3", "sub/deep/d2/x5",
                "gone/g2/x4", "gone/g2/a4", "gone/zfile", "gone/afile", "zz/q",
                "sub/deeper/old/f"):
        write(d / rel, b"old\n")
    settle(d, base=T0 + 10**6)


@needs_root
@pytest.mark.parametrize("flags", [["-ai", "--delete"], ["-ai", "--delete-after"],
                                   ["-ai", "--delete-delay"], ["-di", "--delete"],
                                   ["-ai", "--old-d", "--delete"], ["-aim", "--delete"]])
def test_deletions_listed_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Every deleted entry has its *deleting line, deep ones too, in rsync's order: the
    directories in file-list order, in each the extraneous directories and then the
    rest, last name first, a directory's contents before it (the same in every
    deletion mode rsync has); with -d only src/'s own entries go."""
    t = Twin(tmp_path)
    _link_tree(t)
    t.each(_stale)
    runs = t.run(*flags, f"{t.src}/", "@D/dst")

    def deleting(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
        return [ln for ln in proc.stdout.decode().splitlines()
                if ln.startswith(("*deleting", "cannot delete"))]
    assert deleting(runs.fscsync) == deleting(runs.rsync)
    assert deleting(runs.rsync)
    assert_same_items(runs)
    t.assert_same(ignore=("mtime",) if flags[0] == "-di" else ())


@needs_root
def test_keep_dirlinks_like_rsync(tmp_path: Path) -> None:
    """-K: the destination's symlink to a directory stays where the source has a
    directory, and, as rsync 3.5 does, nothing is written through it: the entries
    below fail (23) and the directory it points to is untouched; the directory's
    time differs from the source's, which is listed and set on the symlink."""
    t = Twin(tmp_path)
    write(t.src / "top", b"top\n")
    (t.src / "sub").mkdir()
    write(t.src / "sub/f", b"f\n")
    settle(t.src)

    def linked(area: Path) -> None:
        (area / "real").mkdir()
        write(area / "real/stale", b"stale\n")
        (area / "dst").mkdir()
        os.symlink("../real", area / "dst/sub")
    t.each(linked)
    for _ in range(2):  # (rsync lists the time again: it sets it on the symlink)
        assert_same_items(t.run("-aiK", f"{t.src}/", "@D/dst", code=23))
    for area in (t.r, t.f):
        assert os.readlink(area / "dst/sub") == "../real"
        assert sorted(os.listdir(area / "real")) == ["stale"]
    t.assert_same("dst")


NAMES = [b"caf\xc3\xa9", b"hi\xffx", b"nl\nx", b"bs\\#123", b"\xe2\x82\xac"]


@needs_root
@pytest.mark.parametrize("flags", [["-ri"], ["-ri", "-8"], ["-rv", "-8"], ["-ri", "-8", "--no-8"]])
def test_names_escaped_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Under LC_ALL=C rsync escapes every byte from 0x80 up as \\#ooo; -8 prints those
    raw. Control characters stay escaped either way, and so does a name's own \\#."""
    t = Twin(tmp_path)
    for name in NAMES:
        write(os.path.join(bytes(t.src), name), b"x")
    runs = t.run(*flags, f"{t.src}/", "@D/dst")

    def named(proc: subprocess.CompletedProcess[bytes]) -> list[bytes]:
        return sorted(ln for ln in proc.stdout.split(b"\n")
                      if any(part in ln for part in (b"caf", b"hi", b"nl", b"bs", b"\xe2",
                                                     b"\\#342")))
    assert named(runs.fscsync) == named(runs.rsync)
    assert len(named(runs.rsync)) == len(NAMES)


@pytest.mark.parametrize("option", ["--info", "--debug"])
def test_flag_help_like_rsync(option: str) -> None:
    r = run_rsync(f"{option}=help", env=ENV, check=True)
    f = run_fscsync(f"{option}=HELP", env=ENV, check=True)
    assert f.stdout == r.stdout


@pytest.mark.parametrize("value", ["--info=bogus", "--debug=FOO2", "--info=progress2,nope",
                                   "--info=stats,", "--debug=all,x", "--info=2",
                                   "--debug=acl,deltasum9,hlink0,zzz"])
def test_flag_words_refused_like_rsync(tmp_path: Path, value: str) -> None:
    """An unknown word: rsync's own line (no program name in front, so not in
    test_cli_errors' table of "fscsync: ..." lines) and exit 1, before
    anything is touched."""
    (tmp_path / "a").mkdir()
    r = run_rsync(value, "a/", "b", cwd=tmp_path, env=ENV)
    f = run_fscsync(value, "a/", "b", cwd=tmp_path, env=ENV)
    assert r.returncode == f.returncode
    assert r.returncode in (0, 1)  # ("--info=stats," is fine: empty words are skipped)
    if r.returncode:
        assert f.stderr.decode().splitlines()[0] == r.stderr.decode().splitlines()[0]
        assert sorted(os.listdir(tmp_path)) == ["a"]


def _all_words(words: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{w.lower()}{i % 5}" for i, (w, _) in enumerate(words))


@needs_root
@pytest.mark.parametrize("flags", [
    [f"--info={_all_words(outflags.INFO_WORDS)}", f"--debug={_all_words(outflags.DEBUG_WORDS)}"],
    ["--info=ALL", "--debug=all4"], ["--info=none", "--debug=NONE"],
])
def test_every_flag_word_accepted_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Every word of rsync's --info and --debug lists, at every level: both tools run."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    t.run("-a", *flags, f"{t.src}/", "@D/dst")
    t.assert_same()


def _stats_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    labels = ("Number of files", "Total file size", "sent ", "total size is")
    return [ln.split(":")[0].split(" ")[0] for ln in proc.stdout.decode().splitlines()
            if ln.startswith(labels)]


@needs_root
@pytest.mark.parametrize("flags", [["--stats"], ["--stats", "--info=stats0"],
                                   ["--info=stats0", "--stats"], ["--info=stats2"],
                                   ["--info=stats1"], ["-v"], ["-v", "--info=stats0"],
                                   ["--info=stats3"], ["--progress", "--info=progress0"],
                                   ["--info=progress1"]])
def test_stats_and_progress_words_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """STATS and PROGRESS act as in rsync: --info=stats0 silences --stats wherever it
    stands, stats1 is -v's two-line summary, stats2 the whole --stats."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    runs = t.run("-a", *flags, f"{t.src}/", "@D/dst")
    assert _stats_lines(runs.fscsync) == _stats_lines(runs.rsync)
    progress = [b"xfr#" in p.stdout for p in (runs.rsync, runs.fscsync)]
    assert progress[0] == progress[1]


SAME_SECOND = [("a", 0.2), ("b", -0.6), ("c", 1.0), ("d", 1.5), ("e", -3.0), ("f", 0.0)]
"""Destination mtimes as offsets from the source's T0 + 0.5 s."""


@needs_root
@pytest.mark.parametrize("flags", [[], ["--modify-window=0"], ["--modify-window=-1"],
                                   ["-@1"], ["-@", "2"], ["-u", "-@0"], ["-u", "-@-1"],
                                   ["-u", "-@1"], ["-u", "-@2"], ["-c"], ["-c", "-@0"],
                                   ["-c", "-@-1"]])
def test_modify_window_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """rsync 3.5's time gaps for a window given: 0 compares whole seconds, a negative
    window nanoseconds too, N at most N seconds apart (nanoseconds left out); -u skips
    a file whose source is not newer by the window; -c, finding the data the same,
    sets the time to the nanosecond without a line. Without a window fscsync compares
    nanoseconds, as rsync does with -@-1 (rsync's own default is whole seconds, which
    would skip a file rewritten at the same size within a second); its -u then skips
    what is newer on the receiver by whole seconds, as rsync's default -u (so plain -u
    matches no single rsync line and is left to test_selection_options_like_rsync)."""
    t = Twin(tmp_path)
    base = T0 * 10**9 + 5 * 10**8
    for name, _ in SAME_SECOND:
        write(t.src / name, b"same\n")
        set_times(t.src / name, base)
    set_times(t.src, T0 * 10**9)

    def copy(area: Path) -> None:
        (area / "dst").mkdir()
        for name, off in SAME_SECOND:
            write(area / "dst" / name, b"same\n")
            set_times(area / "dst" / name, base + int(off * 10**9))
    t.each(copy)
    window = [] if any(f.startswith(("-@", "--modify")) for f in flags) else ["-@-1"]
    r = run_rsync("-ai", *flags, *window, f"{t.src}/", f"{t.r}/dst", env=ENV, check=True)
    f = t.fscsync("-ai", *flags, f"{t.src}/", "@D/dst")
    assert sorted(items(f)) == sorted(items(r))
    t.assert_same()


@needs_root
def test_partial_after_a_full_disk_like_rsync(tmp_path: Path) -> None:
    """--partial and a destination that fills up mid-file: rsync ends with 11 and keeps
    what arrived under the final name, dated 1970, in place of the old copy; so does
    fscsync (it used to keep the old copy and lose the data)."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 << 20)
    write(src / "big.bin", data)
    kept = {}
    for tool, run in (("rsync", run_rsync), ("fscsync", run_fscsync)):
        dst = tmp_path / tool
        dst.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dst],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {mounted.stderr!r}")
        try:
            write(dst / "big.bin", b"old copy\n")
            assert run("-a", "--partial", f"{src}/", f"{dst}/", env=ENV).returncode == 11
            st = os.stat(dst / "big.bin")
            body = (dst / "big.bin").read_bytes()
            assert 0 < len(body) < len(data) and data.startswith(body), (tool, len(body))
            # (rsync zeroes the seconds and keeps the source's nanoseconds)
            kept[tool] = (st.st_mtime_ns // 10**9, st.st_mode, sorted(os.listdir(dst)))
        finally:
            subprocess.run(["umount", dst], check=True)
    assert kept["fscsync"] == kept["rsync"] == (0, kept["rsync"][1], ["big.bin"])


@needs_root
def test_partial_after_failed_verification(tmp_path: Path) -> None:
    """A file that fails verification twice is 'retained' with --partial, as rsync
    words it: what arrived replaces the old copy, dated 1970 (the literals are
    corrupted on the way in through the writer's fault hook)."""
    from fscsync.engine.writer import FAULT_ENV

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    write(src / "f.bin", os.urandom(200_000))
    write(dst / "f.bin", b"old copy\n")
    proc = run_fscsync("-a", "--partial", f"{src}/", f"{dst}/", env={**ENV, FAULT_ENV: "1"})
    assert proc.returncode == 23, proc.stderr
    assert b'"f.bin" failed verification -- update retained' in proc.stderr
    assert (dst / "f.bin").stat().st_mtime_ns == 0
    assert len((dst / "f.bin").read_bytes()) == 200_000


@pytest.mark.parametrize(("words", "code"), [
    (["S/*.txt"], 0), (["S/sub/*"], 0), (["S/[ae]*"], 0), (["S/?.txt", "S/e*"], 0),
    (["S/*/"], 0), (["S/nomatch*"], 23), (["S/\\*.txt"], 23), (["S/a.tx[t"], 0),
    (["S/*.txt", "S/nomatch*"], 23),
])
def test_remote_wildcards_like_rsync(sshd, tmp_path: Path, words: list[str], code: int) -> None:
    """A remote source's *, ? and [...] are expanded on the far side as rsync's remote
    shell expands them: sorted matches, hidden names left out, the word itself when
    nothing matches (a missing source: 23), a backslashed wildcard or a lone [
    literal."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    write(t.src / ".hidden.txt", b"hidden\n")
    write(t.src / "a.tx[t", b"bracket\n")
    settle(t.src)
    remote = [f"{sshd.host}:{w.replace('S', str(t.src), 1)}" for w in words]
    r = run_rsync("-ai", "-e", sshd.rsh, *remote, f"{t.r}/dst/", env=ENV)
    f = run_fscsync("-ai", "-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync, *remote,
                    f"{t.f}/dst/", env=ENV)
    assert r.returncode == f.returncode == code, (r.stderr, f.stderr)
    assert sorted(items(f)) == sorted(items(r))
    if os.path.isdir(t.r / "dst"):  # (a remote rsync that lists nothing makes no dst/)
        t.assert_same(made=("dst",))


@needs_root
@pytest.mark.parametrize("flags", [["-aiH", "-m"], ["-aiH", "-m", "--delete"]])
def test_prune_empty_dirs_keeps_hard_links_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """-m holds directories back while it walks: the hard links found meanwhile still
    name their leaders by their place in the list (a pruned chain before them, one
    kept ahead of them), so every group comes out linked as rsync links it."""
    t = Twin(tmp_path)
    for rel in ("a/hollow/deeper", "b/c/d", "e/f", "z/y/x"):
        (t.src / rel).mkdir(parents=True)
    write(t.src / "b/c/d/leader", b"linked\n")
    os.link(t.src / "b/c/d/leader", t.src / "z/y/x/second")
    os.link(t.src / "b/c/d/leader", t.src / "top")
    write(t.src / "e/f/alone", b"alone\n")
    os.link(t.src / "e/f/alone", t.src / "e/other")
    settle(t.src)
    t.each(lambda area: (area / "dst/a/hollow/old").mkdir(parents=True))
    t.each(lambda area: settle(area / "dst/a"))  # made microseconds apart: one time each
    runs = t.run(*flags, f"{t.src}/", "@D/dst")
    assert_same_items(runs, hard_links=True)
    for area in (t.r, t.f):
        assert os.stat(area / "dst/top").st_nlink == 3
        assert os.stat(area / "dst/e/other").st_ino == os.stat(area / "dst/e/f/alone").st_ino
    t.assert_same()

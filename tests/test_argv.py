"""rsync's command-line grammar: every command line here goes through rsync and fscsync
on the same tree, and the trees, exit codes, -i lines and messages must agree."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from support import needs_root, run_fscsync, run_rsync
from support.trees import FOREIGN_GID, FOREIGN_UID, write
from test_local_sync import ENV, T0, Twin, assert_same_items, items, make_plain_tree, settle

from fscsync.cli.argv import parse_args
from fscsync.errors import UsageError


def _tree(t: Twin) -> None:
    make_plain_tree(t.src)
    write(t.src / "keep.log", b"kept\n")
    write(t.src / "sub/drop.log", b"dropped\n")
    os.chown(t.src / "a.txt", FOREIGN_UID, FOREIGN_GID)
    os.chmod(t.src / "sub/b.bin", 0o604)
    os.mkfifo(t.src / "fifo")
    settle(t.src)


# Each line is run as is by both tools (S = the source with a slash, D = the destination).
LINES = [
    "-avh S D",                      # -h is --human-readable here, not --help
    "S -a -i D",                     # options after the paths
    "-ai S -- D",
    "-aiB4096 S D",                  # a bundle ending in an option's value
    "-aiB 8192 S D",
    "--block-size=1024 -ai S D",
    "-ai --no-o --no-g S D",
    "-ai --no-owner --no-group --no-perms S D",
    "-ai --no-p --no-t S D",
    "--no-o -ai S D",                # a negation before -a is undone by it
    "-ai --no-D S D",
    "-ai --no-devices S D",
    "-ai --no-specials S D",
    "-ai --no-l S D",
    "-ai --no-links S D",
    "-ai --no-r -r S D",
    "-ai --no-recursive -r S D",
    "-aiHX --no-H --no-X S D",
    "-aiA --no-A S D",
    "-ai --no-whole-file --no-W --no-inplace --no-i-r --no-inc-recursive S D",
    "-ai --i-r --inc-recursive -s --secluded-args --protect-args S D",
    "-ai --old-args S D",
    "-ai --no-s --old-args S D",
    "-avv --no-v -i S D",
    "-ai --filter=- *.log S D",
    "-ai -f+ keep.log -f- *.log S D",
    "-ai --filter=exclude sub S D",
    "-ai -f- /sub/ -f+ *.txt -f- * S D",
]


def _argv(line: str, t: Twin) -> list[str]:
    """A LINES entry as argv: '--filter=- *.log' stays one word (as a shell quote would)."""
    out: list[str] = []
    for word in re.split(r" (?=-|S$|S |D$|\d)", line):
        out.append({"S": f"{t.src}/", "D": "@D/dst"}.get(word, word))
    return out


@needs_root
@pytest.mark.parametrize("line", LINES)
def test_command_line_like_rsync(tmp_path: Path, line: str) -> None:
    t = Twin(tmp_path)
    _tree(t)
    runs = t.run(*_argv(line, t))
    if any(w[:1] == "-" and w[1:2] != "-" and "i" in w for w in line.split()):
        assert_same_items(runs)
    t.assert_same(ignore=("mtime",) if "--no-t" in line else ())
    assert (t.f / "dst").is_dir()


def test_the_split_is_the_shell_one(tmp_path: Path) -> None:
    t = Twin(tmp_path)
    assert _argv("-ai --filter=- *.log S D", t) == ["-ai", "--filter=- *.log", f"{t.src}/",
                                                     "@D/dst"]
    assert _argv("-aiB 8192 S D", t) == ["-aiB", "8192", f"{t.src}/", "@D/dst"]


@pytest.mark.parametrize("argv", [
    ["--delete-ex", "a/", "b"],
    ["--stat", "a/", "b"],
    ["--verb", "a/", "b"],
    ["-aZ", "a/", "b"],
    ["--no-bogus", "a/", "b"],
    ["--no-stats", "a/", "b"],
    ["--archive=1", "a/", "b"],
    ["--no-p=1", "a/", "b"],
    ["-a", "a/", "b", "--rsh"],
    ["--max-delete=abc", "a/", "b"],
    ["-s", "--old-args", "a/", "b"],
    ["-aB", "big", "a/", "b"],
    ["--bwlimit=fast", "a/", "b"],
    ["a/", "b", "--frobnicate"],
    ["--delete", "-lpt", "a/", "b"],
    ["-a", "--no-r", "--delete-excluded", "a/", "b"],
])
def test_refused_like_rsync(tmp_path: Path, argv: list[str]) -> None:
    """Same exit code, same first line (the option named the way rsync names it), and
    nothing created."""
    (tmp_path / "a").mkdir()
    r = run_rsync(*argv, cwd=tmp_path, env=ENV)
    f = run_fscsync(*argv, cwd=tmp_path, env=ENV)
    assert r.returncode == f.returncode == 1
    first = r.stderr.decode().splitlines()[0].replace("rsync:", "fscsync:", 1)
    assert f.stderr.decode().splitlines() == [first,
                                             "fscsync error: syntax or usage error (code 1)"]
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_h_alone_is_help_and_daemon_is_refused() -> None:
    assert run_fscsync("-h", check=True).stdout.startswith(b"usage: fscsync ")
    proc = run_fscsync("--daemon", check=1)
    assert b"--daemon: fscsync has no daemon mode" in proc.stderr


def test_grammar() -> None:
    ns = parse_args(["-aB4096", "-essh -p 22", "src/", "-v", "--", "-dst"])
    assert (ns.block_size, ns.rsh, ns.verbose, ns.args) == (4096, "ssh -p 22", 1,
                                                            ["src/", "-dst"])
    assert parse_args(["-ahh", "x", "y"]).human_readable == 3
    assert parse_args(["-a", "--no-h", "x", "y"]).human_readable == 0
    assert parse_args(["--rsh", "ssh -x", "--rsync-path=/opt/f", "a", "b"]).remote_fscsync \
        == "/opt/f"
    a_then_no = parse_args(["-a", "--no-D", "x", "y"])
    assert not a_then_no.devices and not a_then_no.specials and a_then_no.owner
    assert parse_args(["-", "x"]).args == ["-", "x"]
    with pytest.raises(UsageError, match="^--max-delete=1x: invalid numeric value$"):
        parse_args(["--max-delete", "1x", "a", "b"])  # rsync names only "1x"


@pytest.mark.parametrize("level", ["--no-h", "", "-h", "-hh", "-hhh"])
def test_human_readable_levels(tmp_path: Path, level: str) -> None:
    """The --stats lines whose numbers do not depend on the tool print the same."""
    src = tmp_path / "src"
    src.mkdir()
    write(src / "big", os.urandom(1_234_567))
    for i in range(1100):
        write(src / f"n{i}", b"")
    args = [a for a in ("-a", "--stats", level) if a]
    r = run_rsync(*args, f"{src}/", tmp_path / "r", check=True, env=ENV)
    f = run_fscsync(*args, f"{src}/", tmp_path / "f", check=True, env=ENV)
    labels = ("Number of files:", "Number of created files:", "Total file size:",
              "Number of regular files transferred:", "total size is")

    def same(proc) -> list[str]:
        return [ln.split("  speedup")[0] for ln in proc.stdout.decode().splitlines()
                if ln.startswith(labels)]
    assert same(f) == same(r) and len(same(r)) == len(labels)
    assert not items(f)


@pytest.mark.parametrize("where", ["src", "dest"])
@pytest.mark.parametrize("daemon", ["localhost::mod/", "localhost::mod", "RSYNC://host/mod/",
                                    "rsync://host:873/mod/x"])
def test_daemon_syntax_fails_at_once(tmp_path: Path, where: str, daemon: str) -> None:
    """Exit 5 (client-server start), one clear line, no local directory, no remote shell
    started (the -e command would create a file in the cwd)."""
    (tmp_path / "a").mkdir()
    paths = ["a/", daemon] if where == "dest" else [daemon, "b"]
    proc = run_fscsync("-a", "-e", "touch started", *paths, cwd=tmp_path, check=5)
    assert proc.stderr.decode().splitlines() == [
        f"fscsync: {daemon}: fscsync has no daemon mode (rsync://, HOST::MODULE); "
        "use HOST:PATH over a remote shell"]
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_local_names_with_double_colons_stay_local(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write(tmp_path / "a/f", b"x")
    run_fscsync("-a", "a/", "./b::c", cwd=tmp_path, check=0)
    assert (tmp_path / "b::c/f").read_bytes() == b"x"


@pytest.mark.parametrize("dest", ["-oProxyCommand=touch x:dst", "u@-oProxyCommand=touch x:d",
                                  "[-oProxyCommand=touch x]:dst"])
def test_host_starting_with_dash_is_refused(tmp_path: Path, dest: str) -> None:
    """Issue 19 finding 4: rsync's refusal (exit 1) before any remote shell starts."""
    (tmp_path / "a").mkdir()
    r = run_rsync("-a", "-e", "touch started", "--", "a/", dest, cwd=tmp_path, env=ENV)
    f = run_fscsync("-a", "-e", "touch started", "--", "a/", dest, cwd=tmp_path, env=ENV)
    assert r.returncode == f.returncode == 1
    assert f.stderr.decode().splitlines()[0] == (
        "fscsync: Invalid remote host: hostnames may not start with '-'.")
    assert sorted(os.listdir(tmp_path)) == ["a"]
    run_fscsync("-a", "-e", "touch started", "a/", dest, cwd=tmp_path, check=1)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def _stale_dest(t: Twin) -> None:
    """Both destinations hold an older copy: a missing dir, a file newer than its source
    (dest/newer), one older (dest/older), one the same size and time, one 1 s off."""
    write(t.src / "small", b"s")
    write(t.src / "mid", b"m" * 2000)
    write(t.src / "big", b"b" * 5000)
    write(t.src / "newer", b"source\n")
    write(t.src / "older", b"source\n")
    write(t.src / "same", b"same\n")
    write(t.src / "offby1", b"off\n")
    (t.src / "newdir/deep").mkdir(parents=True)
    write(t.src / "newdir/deep/f", b"f")
    settle(t.src)
    st = {n: os.stat(t.src / n).st_mtime_ns for n in ("newer", "older", "same", "offby1")}

    def populate(area: Path) -> None:
        d = area / "dst"
        d.mkdir()
        write(d / "newer", b"dest!!\n")
        os.utime(d / "newer", ns=(st["newer"] + 10**10,) * 2)
        write(d / "older", b"dest!!\n")
        os.utime(d / "older", ns=(st["older"] - 10**10,) * 2)
        write(d / "same", b"SAME\n")
        os.utime(d / "same", ns=(st["same"],) * 2)
        write(d / "offby1", b"OFF\n")
        os.utime(d / "offby1", ns=(st["offby1"] + 10**9,) * 2)
        write(d / "mid", b"old")
        os.utime(d / "mid", ns=(st["same"],) * 2)
    t.each(populate)


@pytest.mark.parametrize("flags", [
    ["-u"], ["--update", "--modify-window=20"], ["--existing"], ["--ignore-non-existing"],
    ["--existing", "-u"], ["-I"], ["--ignore-times", "-u"], ["--max-size=2000"],
    ["--max-size=1.5K"], ["--min-size=2K"], ["--min-size=1KB"], ["--max-size=4K-1"],
    ["--max-size=2000", "--min-size=2000"], ["--modify-window=1"], ["-@", "2"],
    ["--modify-window=-1"], ["--size-only", "-I"],
])
def test_selection_options_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    t = Twin(tmp_path)
    _stale_dest(t)
    runs = t.run("-ai", *flags, f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    assert items(runs.fscsync), "the scenario itemizes something"
    t.assert_same()


@pytest.mark.parametrize("flags", [["-O"], ["-J"], ["-OJ"], ["--omit-dir-times"],
                                   ["--omit-link-times", "-O", "--no-O"]])
@pytest.mark.parametrize("fresh", [True, False], ids=["new", "existing"])
def test_omit_times_like_rsync(tmp_path: Path, flags: list[str], fresh: bool) -> None:
    """The -i lines carry the difference. Times of omitted kinds are whatever creating
    or filling them left, each tool's "now", so those are not compared."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    if not fresh:
        t.run("-a", f"{t.src}/", "@D/dst")
        settle(t.src, base=T0 + 10**6)
    runs = t.run("-ai", *flags, f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    omit_dirs = any("O" in f or f == "--omit-dir-times" for f in flags) and "--no-O" not in flags
    t.assert_same(ignore=("mtime",) if fresh else (), ignore_dir_mtime=omit_dirs)


@pytest.mark.parametrize("top", ["contents", "dir"])
def test_safe_links_like_rsync(tmp_path: Path, top: str) -> None:
    """Which links are unsafe depends on where the transfer's top is (src/ or src)."""
    t = Twin(tmp_path)
    (t.src / "sub").mkdir()
    for name, target in (("abs", "/etc/passwd"), ("up", "../x"), ("sub/ok", "../a"),
                         ("sub/bad", "../../a"), ("dot", "."), ("tricky", "sub/../../q"),
                         ("fine", "sub/./ok"), ("dotup", "./../x"), ("up2", "..//.."),
                         ("sub/up2", "..//.."), ("sub/dd", "./.")):
        os.symlink(target, t.src / name)
    settle(t.src)
    src = f"{t.src}/" if top == "contents" else str(t.src)
    runs = t.run("-aiv", "--safe-links", src, "@D/dst/")
    assert_same_items(runs)

    def ignored(proc) -> list[str]:
        return sorted(ln for ln in proc.stdout.decode().splitlines()
                      if ln.startswith("ignoring unsafe symlink"))
    assert ignored(runs.fscsync) == ignored(runs.rsync) and ignored(runs.rsync)
    t.assert_same(made=("dst",))


CHMODS = ["+w", "o+r", "go=", "Dg+s,Fu+x", "a-x", "ug=rwX", "F600,D700", "u=rw,go=r", "=r",
          "D+X", "Fo+X", "u+st", "D2775,F0664", "a+rX"]


@pytest.mark.parametrize("fresh", [True, False], ids=["new", "existing"])
@pytest.mark.parametrize("spec", CHMODS)
def test_chmod_like_rsync(tmp_path: Path, spec: str, fresh: bool) -> None:
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    os.chmod(t.src / "a.txt", 0o640)
    os.chmod(t.src / "sub", 0o750)
    if not fresh:
        t.run("-a", f"{t.src}/", "@D/dst")
    runs = t.run("-ai", "--chmod", spec, "--chmod=o-w", f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    t.assert_same()


@pytest.mark.parametrize("spec", ["bogus", "u+q", "9", "u+rwx-x", "Du+x,Q"])
def test_chmod_refused_like_rsync(tmp_path: Path, spec: str) -> None:
    (tmp_path / "a").mkdir()
    r = run_rsync("-a", f"--chmod={spec}", "a/", "b", cwd=tmp_path)
    f = run_fscsync("-a", f"--chmod={spec}", "a/", "b", cwd=tmp_path)
    assert r.returncode == f.returncode == 1
    assert f.stderr.decode().splitlines()[0] == r.stderr.decode().splitlines()[0].replace(
        "rsync:", "fscsync:", 1)
    assert sorted(os.listdir(tmp_path)) == ["a"]


PROGRESS_RE = re.compile(r"^ *([\d,.]+[KMGTP]?) +(\d{1,3})% +\d+\.\d\d[kMG]B/s +\d+:\d\d:\d\d"
                         r"(?:( \(xfr#\d+, to-chk=\d+/\d+\))|  )$")


def _progress_lines(out: bytes) -> list[str]:
    """The progress lines of an output, split at \\r and \\n as a terminal shows them."""
    return [p for p in re.split(r"[\r\n]", out.decode()) if PROGRESS_RE.match(p)]


def _finals(out: bytes) -> list[tuple[str, str, str]]:
    """(bytes, %, xfr/to-chk) of each file's final line, repeats of one line dropped."""
    seen: list[tuple[str, str, str]] = []
    for line in _progress_lines(out):
        m = PROGRESS_RE.match(line)
        if m.group(3) and (not seen or seen[-1] != m.groups()):
            seen.append(m.groups())
    return seen


def _progress_tree(src: Path) -> None:
    (src / "d/e").mkdir(parents=True)
    write(src / "big", os.urandom(3_000_000))
    write(src / "d/small", b"hi\n")
    write(src / "d/e/mid", os.urandom(70_000))
    write(src / "empty", b"")


@pytest.mark.parametrize("flags", [["--progress"], ["-P"], ["--info=progress2"],
                                   ["--progress", "-hh"], ["--info=progress2", "--no-h"],
                                   ["-v", "--progress"], ["-i", "--progress"]])
def test_progress_lines_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Off a terminal: every progress line has rsync's shape, and the final lines carry
    the same bytes, % and (xfr#N, to-chk=M/T) as rsync's; the names printed too."""
    src = tmp_path / "src"
    src.mkdir()
    _progress_tree(src)
    r = run_rsync("-a", "--no-i-r", *flags, f"{src}/", tmp_path / "r", check=0, env=ENV)
    f = run_fscsync("-a", *flags, f"{src}/", tmp_path / "f", check=0, env=ENV)
    assert _finals(f.stdout) == _finals(r.stdout) and _finals(r.stdout)
    lines = f.stdout.decode().splitlines()
    assert all(PROGRESS_RE.match(ln) for ln in lines if "%" in ln)
    assert "\r" not in f.stdout.decode()
    if "--info=progress2" not in flags:
        files = ("big", "d/small", "d/e/mid", "empty")
        names = [ln for ln in lines if ln.split(" ")[-1] in files]
        assert sorted(ln.split(" ")[-1] for ln in names) == sorted(files)


def test_progress_on_a_terminal_stays(tmp_path: Path) -> None:
    """On a TTY the line is rewritten in place with \\r and the last one is left on
    the screen, ended by a newline."""
    import pty
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    _progress_tree(src)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fscsync", "-a", "--info=progress2",
                             f"{src}/", str(tmp_path / "f")], stdout=follower,
                            stderr=subprocess.PIPE, env=ENV)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    text = out.decode().replace("\r\n", "\n")
    assert text.endswith("(xfr#4, to-chk=0/7)\n"), repr(text)
    assert text.startswith("\r") and "\n" not in text[:-1], repr(text)
    assert all(PROGRESS_RE.match(p) for p in text.strip("\r\n").split("\r"))


@pytest.mark.parametrize("args", [
    ["--mkpath", "S/", "D/a/b/c/"], ["--mkpath", "S/big", "D/x/y/file"],
    ["--mkpath", "S/big", "D/x/z/"], ["--mkpath", "S/big", "S/d", "D/q/r/"],
    ["--mkpath", "S/", "D/one"], ["--mkpath", "-n", "S/", "D/a/b"], ["S/", "D/a/b/c/"],
    ["S/big", "D/x/y/file"], ["--mkpath", "--no-mkpath", "S/", "D/a/b"],
    ["S/", "D/regf/sub/"], ["S/big", "D/regf/sub"], ["--mkpath", "S/", "D/regf/sub/"],
])
def test_mkpath_like_rsync(tmp_path: Path, args: list[str]) -> None:
    """Trees, exit codes and "created" lines; D/regf is a regular file (a destination
    below it is rsync's code 3)."""
    src = tmp_path / "src"
    src.mkdir()
    _progress_tree(src)
    out = {}
    for tool, run in (("r", run_rsync), ("f", run_fscsync)):
        (tmp_path / tool).mkdir()
        write(tmp_path / tool / "regf", b"")
        argv = [a.replace("S/", f"{src}/").replace("D/", f"{tool}/") for a in args]
        proc = run("-av", *argv, cwd=tmp_path, env=ENV)
        made = [ln.replace(f"{tool}/", "D/") for ln in proc.stdout.decode().splitlines()
                if ln.startswith("created ")]
        tree = sorted(str(p.relative_to(tmp_path / tool)) for p in (tmp_path / tool).rglob("*"))
        out[tool] = (proc.returncode, made, tree)
    assert out["f"] == out["r"]


def test_stats_labels_like_rsync(tmp_path: Path) -> None:
    """Every line rsync's --stats prints has its label in fscsync's, in rsync's order
    (fscsync adds its encrypted-data lines between them)."""
    src = tmp_path / "src"
    src.mkdir()
    _progress_tree(src)

    def labels(proc) -> list[str]:
        return [ln.split(":")[0] if ":" in ln else ln.split(" ")[0]
                for ln in proc.stdout.decode().splitlines() if ln.strip()]
    r = labels(run_rsync("-a", "--stats", f"{src}/", tmp_path / "r", check=0, env=ENV))
    f = labels(run_fscsync("-a", "--stats", f"{src}/", tmp_path / "f", check=0, env=ENV))
    assert "File list generation time" in r
    assert [x for x in f if x in r] == r
    timing = run_fscsync("-a", "--stats", f"{src}/", tmp_path / "g", check=0).stdout.decode()
    assert re.search(r"^File list generation time: \d+\.\d{3} seconds$", timing, re.M)
    assert re.search(r"^File list transfer time: \d+\.\d{3} seconds$", timing, re.M)


@pytest.mark.parametrize("mode", ["--delete-delay", "--delete-after"])
def test_delete_delay_like_rsync(tmp_path: Path, mode: str) -> None:
    """fscsync finds deletions while it compares and makes them at the end: rsync's
    --delete-delay, whose -i lines (deep ones too) come in the same order."""
    t = Twin(tmp_path)
    (t.src / "a").mkdir()
    (t.src / "b").mkdir()
    write(t.src / "a/f", b"1")
    write(t.src / "b/g", b"2")
    write(t.src / "new", b"n")
    settle(t.src)

    def stale(area: Path) -> None:
        d = area / "dst"
        for sub in ("a/old/deep", "c/x", "b"):
            (d / sub).mkdir(parents=True)
        for name in ("a/old/deep/q", "a/zz", "c/x/y", "oldf", "b/h"):
            write(d / name, b"z")
        settle(d, base=T0 + 10**6)
    t.each(stale)
    runs = t.run("-ai", mode, f"{t.src}/", "@D/dst")
    deleted = [ln for ln in items(runs.rsync) if ln.startswith("*deleting")]
    assert len(deleted) == 9
    assert [ln for ln in items(runs.fscsync) if ln.startswith("*deleting")] == deleted
    assert_same_items(runs)
    t.assert_same()


@pytest.mark.parametrize("extra", [[], ["--delete", "-r"]])
def test_ignore_missing_args_like_rsync(tmp_path: Path, extra: list[str]) -> None:
    """A missing `name` is skipped silently (exit 0); a missing `dir/` still fails."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    runs = t.run("-ai", "--ignore-missing-args", *extra, t.src / "a.txt", t.src / "nope",
                 t.src / "sub", "@D/dst/")
    assert_same_items(runs)
    assert runs.fscsync.stderr == b""
    t.assert_same(made=("dst",))
    t.run("-a", "--ignore-missing-args", t.src / "a.txt", f"{t.src}/gone/", "@D/dst2/",
          code=23)


@pytest.mark.parametrize("flags", [["-rtiE"], ["-rtiE", "--size-only"], ["-rti"],
                                   ["-rtipE"]])
def test_executability_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Existing files keep their modes but for execute bits, which follow the source's
    (for whoever can read); unchanged and changed files both."""
    t = Twin(tmp_path)
    modes = {"x_to_plain": 0o644, "plain_to_x": 0o755, "x_to_x": 0o700, "ro_to_x": 0o750,
             "new_x": 0o755}
    for name, mode in modes.items():
        write(t.src / name, b"same\n", mode)
    write(t.src / "changed_x", b"longer content\n", 0o711)
    settle(t.src)

    def old(area: Path) -> None:
        d = area / "dst"
        d.mkdir()
        for name, mode in (("x_to_plain", 0o775), ("plain_to_x", 0o640), ("x_to_x", 0o710),
                           ("ro_to_x", 0o400), ("changed_x", 0o604)):
            write(d / name, b"same\n" if name != "changed_x" else b"old\n", mode)
            os.utime(d / name, ns=(os.stat(t.src / name).st_mtime_ns,) * 2)
    t.each(old)
    runs = t.run(*flags, f"{t.src}/", "@D/dst")
    assert_same_items(runs)
    t.assert_same(ignore_dir_mtime=True)


@pytest.mark.parametrize("flags", [["--open-noatime"], ["--open-noatime", "-c"], []])
def test_open_noatime_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    """Source atimes older than their mtimes (so relatime updates them on a read) stay
    put with --open-noatime, and move without it, in both tools."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        write(src / name, os.urandom(5000))
        os.utime(src / name, ns=(T0 * 10**9, (T0 + 100) * 10**9))
    kept = {}
    for tool, run in (("r", run_rsync), ("f", run_fscsync)):
        for name in ("a", "b"):
            os.utime(src / name, ns=(T0 * 10**9, (T0 + 100) * 10**9))
        run("-a", *flags, f"{src}/", tmp_path / tool, check=0, env=ENV)
        kept[tool] = [os.stat(src / n).st_atime_ns == T0 * 10**9 for n in ("a", "b")]
    assert kept["f"] == kept["r"] == [bool(flags)] * 2


OWNER_MAPS = [
    ["-r", "--chown=daemon:daemon"], ["-a", "--chown=daemon:"], ["-r", "--chown=:daemon"],
    ["-a", "--usermap=nobody:bin,1000-2000:sys"], ["-a", "--usermap=no*:5", "--groupmap=*:7"],
    ["-r", "--usermap=*:daemon"], ["-a", "--numeric-ids", "--usermap=nobody:bin"],
    ["-a", "--usermap=nobody:nosuchuser,*:bin"], ["-a", "--groupmap=1234:daemon"],
    ["-a", "--chown=a:b:c"],
]


@needs_root
@pytest.mark.parametrize("flags", OWNER_MAPS)
def test_owner_maps_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write(src / "f", b"a")
    write(src / "g", b"b")
    os.chown(src / "f", 65534, 65534)
    os.chown(src / "g", FOREIGN_UID, FOREIGN_GID)
    owners = {}
    for tool, run in (("r", run_rsync), ("f", run_fscsync)):
        proc = run(*flags, f"{src}/", tmp_path / tool, env=ENV)
        owners[tool] = (proc.returncode, [(os.stat(tmp_path / tool / n).st_uid,
                                           os.stat(tmp_path / tool / n).st_gid)
                                          for n in ("f", "g")])
    assert owners["f"] == owners["r"]


@pytest.mark.parametrize("flags", [
    ["--chown=daemon", "--usermap=x:y"], ["--usermap=*:daemon", "--usermap=*:bin"],
    ["--usermap=nobody"], ["--usermap=nobody:"], ["--groupmap=,"],
])
def test_owner_maps_refused_like_rsync(tmp_path: Path, flags: list[str]) -> None:
    (tmp_path / "a").mkdir()
    r = run_rsync("-a", *flags, "a/", "b", cwd=tmp_path)
    f = run_fscsync("-a", *flags, "a/", "b", cwd=tmp_path)
    assert r.returncode == f.returncode == 1
    said = r.stderr.decode().splitlines()[0].removeprefix("rsync: ")
    assert f.stderr.decode().splitlines()[0] == f"fscsync: {said}"
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("fmt", ["%o %n %l|", "%i|%n", "[%n]", "%n%L", "%i %n%L", "%f %l",
                                 "%o %i %f", "%'l %-12n.", "%%%n%%"])
@pytest.mark.parametrize("top", ["contents", "dir"])
@pytest.mark.parametrize("again", [False, True], ids=["new", "changed"])
def test_out_format_like_rsync(tmp_path: Path, fmt: str, top: str, again: bool) -> None:
    """Same lines as rsync's, for a new tree and for one with changes and deletions."""
    t = Twin(tmp_path)
    make_plain_tree(t.src)
    src = f"{t.src}/" if top == "contents" else str(t.src)
    if again:
        t.run("-a", src, "@D/dst/")
        write(t.src / "sub/b.bin", b"changed")
        os.unlink(t.src / "a.txt")
        settle(t.src, base=T0 + 10**6)
    runs = t.run("-a", "--delete-delay", f"--out-format={fmt}", src, "@D/dst/")
    def lines(proc, area: Path) -> list[str]:
        return proc.stdout.decode().replace(str(area), "AREA").splitlines()
    assert lines(runs.fscsync, t.f) == lines(runs.rsync, t.r)
    assert runs.rsync.stdout


@pytest.mark.parametrize("fmt", ["%b", "%f"])
def test_out_format_refuses_what_it_cannot_fill(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = run_fscsync("-a", f"--out-format={fmt}", "a/", "b/", "c", cwd=tmp_path, check=1)
    assert b"%" + fmt[1:].encode() in proc.stderr
    assert not (tmp_path / "c").exists()

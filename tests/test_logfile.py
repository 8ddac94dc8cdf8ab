"""fscsync.cli.logfile: rsync's --log-file lines and --log-file-format escapes."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from fscsync import errors
from fscsync.cli.logfile import DEFAULT_FORMAT, LogFile, compile_format, parse_item
from fscsync.errors import FscsyncError

# 2024/03/05 06:07:08 local time, fixed so lines can be compared whole.
NOW = time.mktime((2024, 3, 5, 6, 7, 8, 0, 0, -1))
STAMP = "2024/03/05 06:07:08"
PREFIX = f"{STAMP} [{os.getpid()}] "
PREFIX_RE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] ")


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def bodies(path: Path) -> list[str]:
    """Log lines with the "date time [pid] " prefix checked and removed."""
    out = []
    for line in lines_of(path):
        m = PREFIX_RE.match(line)
        assert m, f"line without rsync's prefix: {line!r}"
        out.append(line[m.end():])
    return out


def make(tmp_path: Path, fmt: str | None = None, **kw) -> tuple[LogFile, Path]:
    path = tmp_path / "run.log"
    return LogFile(str(path), fmt, clock=lambda: NOW, **kw), path


ITEMS = [
    "cd+++++++++ ./",
    ">f+++++++++ dir/new file",
    ">f.st...... dir/changed",
    ".f..t...... dir/touched",
    "cL+++++++++ dir/link -> ../target",
    "hf+++++++++ dir/second => dir/new file",
    "*deleting   old/gone",
    "*deleting   old/",
]


def test_header_items_and_summary_default_format(tmp_path):
    log, path = make(tmp_path, itemized=True)
    for line in ITEMS:
        log.event("item", line)
    log.summary(1234567, 89, 10_000_000)
    log.close()
    lines = lines_of(path)
    assert lines[0] == PREFIX + "building file list"
    # With the default "%i %n%L" a logged item reads exactly like the -i line.
    assert lines[1:-1] == [PREFIX + item for item in ITEMS]
    assert lines[-1] == PREFIX + "sent 1,234,567 bytes  received 89 bytes  total size 10,000,000"


def test_real_timestamp_and_pid(tmp_path):
    path = tmp_path / "real.log"
    before = time.strftime("%Y/%m/%d")
    with LogFile(str(path), None) as log:
        log.event("info0", "hello")
    after = time.strftime("%Y/%m/%d")
    lines = lines_of(path)
    assert len(lines) == 2
    for line in lines:
        m = re.fullmatch(r"(\d{4}/\d\d/\d\d) (\d\d):(\d\d):(\d\d) \[(\d+)\] .*", line)
        assert m, line
        assert m.group(1) in (before, after)
        assert int(m.group(5)) == os.getpid()
    assert lines[1].endswith("] hello")


def test_appends_to_existing_log(tmp_path):
    path = tmp_path / "run.log"
    path.write_text("yesterday\n")
    log, _ = make(tmp_path)
    log.event("item", ">f+++++++++ a")
    log.close()
    assert lines_of(path) == ["yesterday", PREFIX + "building file list",
                              PREFIX + ">f+++++++++ a"]


def test_errors_warnings_and_info_levels(tmp_path):
    log, path = make(tmp_path, header=None)
    log.event("error", 'send_files failed to open "x": Permission denied (13)')
    log.event("warning", "policy uses inode-number based IVs")
    log.event("info0", "created directory /srv/mirror")
    log.event("info1", "deleting old")
    log.event("info2", "destination stores encdata: yes")
    log.close()
    assert bodies(path) == [
        'fscsync: send_files failed to open "x": Permission denied (13)',
        "fscsync: warning: policy uses inode-number based IVs",
        "created directory /srv/mirror",
    ]


def test_multiline_message_gets_prefix_on_each_line(tmp_path):
    log, path = make(tmp_path, header=None)
    log.event("error", "first\nsecond")
    log.close()
    assert lines_of(path) == [PREFIX + "fscsync: first", PREFIX + "second"]


def test_all_escapes(tmp_path):
    fmt = "%t|%p|%o|%n|%L|%i|%l|%b|%f|%%"
    log, path = make(tmp_path, fmt, header=None, root="/srv/mirror/")
    log.event("item", ">f+++++++++ dir/a file", length=4096, transferred=300)
    log.event("item", "cL+++++++++ dir/ln -> t", length=1)
    log.event("item", "cd+++++++++ sub/", length=4096)
    log.event("item", "*deleting   old/")
    log.event("item", ".d..t...... ./")
    log.close()
    pid = os.getpid()
    assert bodies(path) == [
        f"{STAMP}|{pid}|recv|dir/a file||>f+++++++++|4096|300|/srv/mirror/dir/a file|%",
        f"{STAMP}|{pid}|recv|dir/ln| -> t|cL+++++++++|1|0|/srv/mirror/dir/ln|%",
        f"{STAMP}|{pid}|recv|sub/||cd+++++++++|4096|0|/srv/mirror/sub|%",
        f"{STAMP}|{pid}|del.|old/||*deleting  |0|0|/srv/mirror/old|%",
        f"{STAMP}|{pid}|recv|./||.d..t......|0|0|/srv/mirror|%",
    ]


def test_full_path_without_root(tmp_path):
    log, path = make(tmp_path, "%i %f", header=None)
    for line in ("cd+++++++++ ./", "cd+++++++++ a/b/", ">f+++++++++ a/b/c"):
        log.event("item", line)
    log.close()
    assert bodies(path) == ["cd+++++++++ .", "cd+++++++++ a/b", ">f+++++++++ a/b/c"]


def test_sender_side_operation(tmp_path):
    log, path = make(tmp_path, "%o %n", header=None)
    log.event("item", "<f+++++++++ pushed")
    log.close()
    assert bodies(path) == ["send pushed"]


def test_width_and_digit_grouping(tmp_path):
    log, path = make(tmp_path, "[%-6o][%8l][%'l][%-12n]", header=None)
    log.event("item", ">f+++++++++ a", length=1234567)
    log.close()
    assert bodies(path) == ["[recv  ][ 1234567][1,234,567][a           ]"]


def test_without_itemizing_attribute_changes_are_not_logged(tmp_path):
    """rsync 3.5 (maybe_log_item): a run without -i logs transfers, deletions, what it
    made, linked or copied and directories that changed, whatever the format; a file
    whose attributes alone changed only with -i."""
    for itemized in (False, True):
        log, path = make(tmp_path, None, header=None, itemized=itemized)
        for line in ITEMS:
            log.event("item", line)
        log.close()
        assert bodies(path) == [item for item in ITEMS
                                if itemized or item != ".f..t...... dir/touched"]
        path.unlink()


def test_without_i_deletions_read_deleting(tmp_path):
    """A format without %i logs the same entries as the default (not only the
    transfers); lacking %i and %o a deletion is logged as "deleting NAME"."""
    log, path = make(tmp_path, "%n%L", header=None)
    for line in ITEMS:
        log.event("item", line)
    log.close()
    assert bodies(path) == ["./", "dir/new file", "dir/changed", "dir/link -> ../target",
                            "dir/second => dir/new file", "deleting old/gone",
                            "deleting old/"]


@pytest.mark.parametrize("args", [[], ["-i"], ["-v"], ["--log-file-format=%n%L"],
                                  ["-i", "--log-file-format=%n%L"]],
                         ids=["plain", "i", "v", "no-i-format", "i-no-i-format"])
def test_logged_entries_like_rsync(tmp_path, args):
    """Side by side with rsync 3.5: the same entries in the log, with and without -i,
    -v and a format without %i (the order aside: fscsync links after the transfer)."""
    from support import run_fscsync, run_rsync
    from support.trees import set_times, write

    t0 = 1_700_000_000 * 10**9
    logged = {}
    for side, tool in (("f", run_fscsync), ("r", run_rsync)):
        src, dst = tmp_path / side / "src", tmp_path / side / "dst"
        (src / "d").mkdir(parents=True)
        for rel in ("same", "perm", "d/b", "h1"):
            write(src / rel, rel.encode(), 0o644)
        for rel in ("same", "perm", "d/b", "h1", "d", "."):
            set_times(os.fsencode(src / rel), t0)
        run_rsync("-aH", f"{src}/", f"{dst}/", check=True)
        write(dst / "d" / "extra", b"x")
        (src / "perm").chmod(0o600)
        (src / "newdir").mkdir()
        write(src / "newdir" / "f", b"new")
        os.symlink("d", src / "newlink")
        os.link(src / "h1", src / "h2")
        for rel, when in (("newdir/f", t0), ("newdir", t0), ("d", t0 + 5 * 10**9),
                          (".", t0)):
            set_times(os.fsencode(src / rel), when)
        set_times(os.fsencode(dst / "d"), t0)
        tool("-aH", "--delete", *args, "--log-file", tmp_path / side / "log", f"{src}/",
             f"{dst}/", check=True)
        lines = [ln.split("] ", 1)[1] for ln in (tmp_path / side / "log").read_text(
            ).splitlines()]
        logged[side] = sorted(ln for ln in lines if not ln.startswith(
            ("building file list", "sent ", "total size")))
    assert logged["f"] == logged["r"]
    assert ("perm" in " ".join(logged["f"])) == ("-i" in args)


def test_without_i_but_with_o_deletions_use_the_format(tmp_path):
    log, path = make(tmp_path, "%o %n", header=None)
    log.event("item", "*deleting   x")
    log.event("item", ".f..t...... y")
    log.close()
    assert bodies(path) == ["del. x"]


def test_empty_format_logs_no_items(tmp_path):
    log, path = make(tmp_path, "")
    for line in ITEMS:
        log.event("item", line)
    log.event("error", "boom")
    log.summary(1, 2, 3)
    log.close()
    assert bodies(path) == ["building file list", "fscsync: boom",
                            "sent 1 bytes  received 2 bytes  total size 3"]


def test_encrypted_annotation_and_hard_linked_symlink(tmp_path):
    log, path = make(tmp_path, "%i|%n|%L", header=None)
    log.event("item", ">f+++++++++ =Jx\\#303 (encrypted)")
    log.event("item", "hL+++++++++ b -> t => a")
    log.event("item", "hf+++++++++ name with => arrow => leader")
    log.close()
    assert bodies(path) == [">f+++++++++|=Jx\\#303| (encrypted)", "hL+++++++++|b| -> t => a",
                            "hf+++++++++|name with => arrow| => leader"]


def test_non_item_text_given_as_item_is_logged_verbatim(tmp_path):
    log, path = make(tmp_path, "%o %n", header=None)
    log.event("item", "something the engine made up")
    log.close()
    assert bodies(path) == ["something the engine made up"]


def test_non_utf8_is_already_escaped_and_surrogates_do_not_crash(tmp_path):
    log, path = make(tmp_path, header=None)
    log.event("item", ">f+++++++++ caf\\#351")
    log.event("info0", "raw \udce9 surrogate")
    log.close()
    text = path.read_bytes()
    assert b">f+++++++++ caf\\#351" in text
    assert b"raw \\udce9 surrogate" in text


@pytest.mark.parametrize("line, expected", [
    (">f+++++++++ a", (">f+++++++++", "a", "", "recv")),
    ("<f.st...... a b", ("<f.st......", "a b", "", "send")),
    ("cL+++++++++ l -> x -> y", ("cL+++++++++", "l", " -> x -> y", "recv")),
    ("hf+++++++++ b => a", ("hf+++++++++", "b", " => a", "recv")),
    (".d          ./", (".d         ", "./", "", "recv")),
    ("*deleting   d/", ("*deleting  ", "d/", "", "del.")),
])
def test_parse_item(line, expected):
    it = parse_item(line)
    assert it is not None
    assert (it.itemize, it.name, it.link, it.op) == expected
    if not it.deleted:
        assert f"{it.itemize} {it.name}{it.link}" == line


@pytest.mark.parametrize("line", ["", "hello", "xf+++++++++ a", ">q+++++++++ a", ">f+++ a"])
def test_parse_item_rejects_other_text(line):
    assert parse_item(line) is None


@pytest.mark.parametrize("fmt", ["%i %n%L", "%t %o %f %l %b %p %%", "%-10n%'8l", "plain"])
def test_compile_accepts(fmt):
    assert compile_format(fmt)


@pytest.mark.parametrize("fmt, word", [("%M", "modification time"), ("%h", "daemon only"),
                                       ("%z", "unknown"), ("trailing %", "lone %")])
def test_bad_format_is_a_usage_error(tmp_path, fmt, word):
    with pytest.raises(FscsyncError) as info:
        LogFile(str(tmp_path / "x.log"), fmt)
    assert info.value.code == errors.SYNTAX
    assert word in str(info.value)
    assert not (tmp_path / "x.log").exists()


def test_unwritable_path_is_exit_11(tmp_path):
    with pytest.raises(FscsyncError) as info:
        LogFile(str(tmp_path / "no" / "such" / "dir.log"), None)
    assert info.value.code == errors.FILE_IO
    assert "failed to open log-file" in str(info.value)


def test_close_is_idempotent_and_later_events_are_dropped(tmp_path):
    log, path = make(tmp_path, header=None)
    log.close()
    log.close()
    log.event("error", "after close")
    assert path.read_text() == ""


def test_concurrent_writers_never_interleave_lines(tmp_path):
    log, path = make(tmp_path, header=None)

    def spam(n: int) -> None:
        for k in range(300):
            log.event("item", f">f+++++++++ t{n}/file{k}")

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    got = bodies(path)
    assert len(got) == 1200
    assert all(re.fullmatch(r">f\+{9} t\d/file\d+", line) for line in got)


def test_default_format_constant():
    assert DEFAULT_FORMAT == "%i %n%L"

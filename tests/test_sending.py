"""The sending side's modules on their own (issue 20): what the SRC arguments name
(engine/sources.py), what one source file holds (engine/srcfiles.py), the rule
grammar apart from a side's rules (engine/filterrules.py, engine/filters.py). Real
files and xattrs, no scan, sender or channel; rsync decides where rsync has a say.
The behaviour tests drive the same code through whole runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support.reporter import Collect

from fscsync.engine import filterrules
from fscsync.engine.filters import Filters
from fscsync.engine.flist import NO_CONTENT, Entry, unsafe_link
from fscsync.engine.sources import (
    files_from_names,
    in_file_list_order,
    relative_parts,
    split_source,
)
from fscsync.engine.srcfiles import SourceFiles
from fscsync.errors import MalformedEncdata
from fscsync.fs import cipher
from fscsync.fs.destfs import Confined
from fscsync.options import Options

RSYNC = shutil.which("rsync")
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
ALT = b"user.fscsync.encdata"


# ---- sources: what the SRC arguments name ---------------------------------------

@pytest.mark.parametrize("src, want", [
    (b"dir/", (b"dir", None)),
    (b"dir", (b".", b"dir")),
    (b"a/b/c", (b"a/b", b"c")),
    (b"/top", (b"/", b"top")),
    (b"/", (b"/", None)),
    (b"a/.", (b"a/.", None)),
    (b"..", (b"..", None)),
])
def test_split_source_names_the_contents_or_the_top_name(src: bytes, want) -> None:
    assert split_source(src) == want


RELATIVE = [b"a/./b/f", b"./a/b/f", b"a/b/f", b"a//b/./f", b"a/./b//./f", b"a/b/./f"]


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
@pytest.mark.parametrize("src", RELATIVE)
def test_relative_parts_name_what_rsync_R_makes(tmp_path: Path, src: bytes) -> None:
    """-R: the destination path relative_parts gives is where rsync -R puts the file."""
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/f").write_bytes(b"x")
    (tmp_path / "dst").mkdir()
    subprocess.run([RSYNC, "-R", src, "dst/"], cwd=tmp_path, check=True)
    made = sorted(os.path.relpath(os.path.join(d, n), tmp_path / "dst")
                  for d, _, names in os.walk(tmp_path / "dst") for n in names)
    base, rel = relative_parts(src)
    assert [os.fsencode(m) for m in made] == [rel]
    assert os.path.isfile(os.path.join(os.fsencode(tmp_path), base, rel))


def test_files_from_names_skip_comments_and_never_climb_out() -> None:
    data = b"# a comment\n; another\n\nsub/f\r\n/abs/x\n../up\na/../b\nd/./e\n..\n"
    assert files_from_names(data, False) == [b"sub/f", b"abs/x", b"up", b"b", b"d/./e"]
    assert files_from_names(b"one\0two\nlines\0", True) == [b"one", b"two\nlines"]


def test_several_sources_merge_into_file_list_order() -> None:
    """The first source's entry of a path wins, unless a later one is a directory (with
    contents, over an implied one); an entry whose parent was not kept is dropped;
    non-directories come before directories under each parent."""
    implied = Entry(b"d", DIR, rdev=NO_CONTENT)
    first = [[Entry(b".", DIR), Entry(b"z", FILE), implied, Entry(b"d/f", FILE)]]
    second = [[Entry(b"z", FILE, size=9), Entry(b"d", DIR), Entry(b"a", FILE),
               Entry(b"gone/x", FILE)]]
    merged = in_file_list_order(first + second)
    assert [e.path for _, e in merged] == [b".", b"a", b"z", b"d", b"d/f"]
    by_path = {e.path: (i, e) for i, e in merged}
    assert by_path[b"z"][1].size == 0  # the first source's file
    assert by_path[b"d"][1] is not implied and by_path[b"d"][0] == 5  # its walk place
    assert by_path[b"a"][0] == 6


@pytest.mark.parametrize("target, path, unsafe", [
    (b"/etc/passwd", b"l", True),
    (b"", b"l", True),
    (b"f", b"l", False),
    (b"../f", b"l", True),
    (b"../f", b"d/l", False),
    (b"sub/../..", b"d/e/l", True),
    (b"./..", b"d/l", True),
])
def test_unsafe_link_is_rsyncs_rule(target: bytes, path: bytes, unsafe: bool) -> None:
    assert unsafe_link(target, path) is unsafe


# ---- srcfiles: what one source file holds -------------------------------------

def _xattrs_work(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.probe")
    return True


def _encdata(size: int) -> bytes:
    ctx = cipher.pack_context(bytes(range(16)), bytes(16), flags=0x02)
    return cipher.format_encdata(cipher.EncData(size, ctx, b"\x01" * 32))


def _files(opts: Options, confined: Confined | None = None,
           filters: Filters | None = None) -> SourceFiles:
    return SourceFiles(opts, Collect(), confined, filters, follows=False)


def test_a_backup_file_reads_its_stored_encdata_and_padded_size(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(bytes(8192))
    if not _xattrs_work(f):
        pytest.skip("this filesystem has no user xattrs")
    os.setxattr(f, ALT, _encdata(5000))
    os.setxattr(f, "user.other", b"kept")
    files = _files(Options(xattrs=True, encdata_xattr=ALT))
    path = os.fsencode(f)
    e = Entry(b"f", FILE, src=path)
    layout = files.read_encdata(e, path, os.lstat(f), False)
    assert (layout, e.enc_alt, e.enc) == (cipher.STORED, True, _encdata(5000))
    assert [n for n, _ in e.xattrs] == [b"user.other"]
    assert files.cipher_size(e, layout) == 8192  # 5000 bytes of cleartext, two units


def test_malformed_encdata_fails_the_file_with_its_class(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(bytes(4096))
    if not _xattrs_work(f):
        pytest.skip("this filesystem has no user xattrs")
    os.setxattr(f, ALT, b"{ not encdata }")
    files = _files(Options(xattrs=True, encdata_xattr=ALT))
    e = Entry(b"f", FILE, src=os.fsencode(f))
    layout = files.read_encdata(e, os.fsencode(f), os.lstat(f), False)
    with pytest.raises(MalformedEncdata, match='malformed encdata on ".*/f"') as exc:
        files.cipher_size(e, layout)
    assert exc.value.code == 23


def test_a_plain_file_is_plain_and_x_rules_drop_xattrs(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")  # no whole unit: never asked for encdata
    if not _xattrs_work(f):
        pytest.skip("this filesystem has no user xattrs")
    os.setxattr(f, "user.keep", b"1")
    os.setxattr(f, "user.drop", b"2")
    texts = filterrules.parse_cli([("filter", b"-x user.drop")], False, False)
    files = _files(Options(xattrs=True), filters=Filters(texts, "sender"))
    e = Entry(b"f", FILE, src=os.fsencode(f))
    assert files.read_encdata(e, os.fsencode(f), os.lstat(f), False) == cipher.PLAIN
    assert (e.enc, [n for n, _ in e.xattrs]) == (None, [b"user.keep"])


def test_open_is_confined_to_the_allowed_tree(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/f").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    (tmp_path / "tree/l").symlink_to(tmp_path / "secret")
    files = _files(Options(), confined=Confined(os.fsencode(tmp_path / "tree")))
    fd, _direct = files.open_data(os.fsencode(tmp_path / "tree/f"), cipher.PLAIN)
    try:
        assert os.read(fd, 64) == b"inside"
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        files.open(os.fsencode(tmp_path / "tree/l"), os.O_RDONLY)


# ---- the grammar apart from a side's rules ------------------------------------

def test_the_grammar_keeps_every_rule_and_each_side_keeps_its_own() -> None:
    """The client parses without a side (every rule travels); each side's Filters keeps
    the rules it applies: hide/show on the sender, protect/risk on the receiver."""
    texts = filterrules.parse_cli([("filter", b"H hidden"), ("filter", b"P kept"),
                                   ("exclude", b"*.o")], False, False)
    assert texts == [b"-s hidden", b"-r kept", b"- *.o"]
    sender, receiver = Filters(texts, "sender"), Filters(texts, "receiver")
    top_s, top_r = sender.top(b"/src"), receiver.top(b"/dst")
    assert [sender.excluded(top_s, p, False) for p in (b"hidden", b"kept", b"x.o")] == [
        True, False, True]
    assert [receiver.excluded(top_r, p, False) for p in (b"hidden", b"kept", b"x.o")] == [
        False, True, True]


def test_rule_file_items_are_lines_words_or_nul_ended() -> None:
    assert filterrules.lines(b"a\r\nb\rc\nd", False, False) == [b"a", b"b", b"c", b"d"]
    assert filterrules.lines(b" a  b\tc\n", True, False) == [b"a", b"b", b"c"]
    assert filterrules.lines(b"a b\0c", False, True) == [b"a b", b"c"]

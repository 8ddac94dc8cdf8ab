"""The rule engine (fscsync.engine.filters) against rsync on the same trees: for each rule
set, the paths a walk with the engine keeps equal the paths `rsync -rn --out-format=%n`
would send. No fscsync run is involved: this checks the matching and the per-directory
merge logic themselves (test_filters compares whole runs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import run_rsync
from support.trees import write

from fscsync.engine import filterrules, filters
from fscsync.engine.filterrules import Parser, Rule, Target
from fscsync.engine.filters import Filters
from fscsync.errors import BadFilterRule, FilterFileUnreadable

NAMES = [
    "a.c", "a.h", "b.c", "notes.txt", ".hidden", "core", "q1.txt", "q22.txt", "weird[1].txt",
    "x9", "X.BAK", "f~", "#tmp", "lib/x.c", "lib/y.o", "lib/build", "lib/sub/z.c",
    "lib/sub/z.o", "lib/sub/deep/w.c", "lib/sub/deep/keep.o", "build/out.o", "build/log.txt",
    "docs/readme.md", "docs/build/page.html", "cache/c.c", "cache/sub/c.o", "CVS/Entries",
    "src/.git/config", "src/main.c", "src/main.o", "src/gen/auto.c", "src/gen/auto.tmp",
    "tmp/a/b/c.txt", "tmp/a/x.txt", "a b/c d.txt",
]


def make_tree(root: Path, merge: dict[str, str] | None = None) -> None:
    for rel in NAMES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write(root / rel, rel.encode())
    (root / "emptydir").mkdir()
    for rel, text in (merge or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def rsync_list(src: Path, args: list[str], cwd: Path | None = None) -> set[str]:
    proc = run_rsync("-rn", "--out-format=%n", *args, f"{src}/", str(src.parent / "nowhere"),
                     env={"LC_ALL": "C", "HOME": str(src.parent)}, check=0, cwd=cwd)
    return {ln.rstrip("/") for ln in proc.stdout.decode().splitlines() if ln and ln != "./"}


def engine_list(src: Path, args: list[str], cvs: bool = False,
                delete_excluded: bool = False) -> set[str]:
    """The sender's walk, as scan.py drives the engine: enter each directory, check each
    name in it with that directory's state."""
    items = []
    for arg in args:
        kind, _, value = arg.partition("=")
        items.append((kind.lstrip("-"), os.fsencode(value)))
    texts = filterrules.parse_cli(items, delete_excluded, False)
    f = Filters(texts, "sender", delete_excluded, cvs)
    base = os.fsencode(src)
    out: set[str] = set()

    def walk(rel: bytes, state: filters.DirState) -> None:
        path = os.path.join(base, rel) if rel else base
        state = f.enter(state, rel, lambda name: _read(os.path.join(path, name)))
        for name in sorted(os.listdir(path)):
            child = rel + b"/" + name if rel else name
            is_dir = os.path.isdir(os.path.join(path, name))
            if f.excluded(state, child, is_dir):
                continue
            out.add(os.fsdecode(child))
            if is_dir:
                walk(child, state)

    walk(b"", f.top(base))
    return out


def _read(path: bytes) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


RULES = {
    "star": ["--exclude=*.o"],
    "question": ["--exclude=q?.txt"],
    "class": ["--exclude=[ab].c"],
    "class-negated": ["--exclude=[!ab].c"],
    "class-posix": ["--exclude=*[[:digit:]]*"],
    "class-range": ["--exclude=[p-r]*"],
    "class-unclosed": ["--exclude=weird[1"],
    "bracket-literal": ["--exclude=weird[[]1].txt"],
    "escaped": ["--exclude=weird\\[1\\].txt"],
    "dir-only": ["--exclude=build/"],
    "anchored": ["--exclude=/build"],
    "anchored-deep": ["--exclude=/lib/sub/"],
    "with-slash": ["--exclude=lib/sub"],
    "two-slashes": ["--exclude=sub/deep/w.c"],
    "double-star": ["--exclude=lib/**"],
    "double-star-middle": ["--exclude=**/sub/*.o"],
    "double-star-prefix": ["--exclude=**/z.c"],
    "double-star-infix": ["--exclude=tmp/**/c.txt"],
    "triple-star": ["--include=/lib/***", "--exclude=*"],
    "star-no-slash": ["--exclude=lib/*"],
    "space": ["--exclude=c d.txt"],
    "only-c-files": ["--include=*/", "--include=*.c", "--exclude=*"],
    "first-match": ["--include=a.c", "--exclude=*.c"],
    "old-prefixes": ["--exclude=+ a.c", "--exclude=*.c"],
    "filter-words": ["--filter=include a.c", "--filter=exclude *.c"],
    "filter-comma": ["--filter=-,! */", "--filter=+ *"],
    "filter-underscore": ["--filter=-_*.h"],
    "negate": ["--filter=-! *.c"],
    "negate-dir": ["--filter=-! */"],
    "hide-show": ["--filter=S *.o", "--filter=H *.o", "--filter=H core"],
    "protect-risk": ["--filter=P *.o", "--filter=R *.c"],
    "receiver-side": ["--filter=-r *.o"],
    "sender-side": ["--filter=-s *.o"],
    "perishable": ["--filter=-p *.o"],
    "xattr-rule": ["--filter=-x *.o"],
    "abs-path": ["--filter=-/ /**/src/main.c"],
    "clear": ["--exclude=*.c", "--filter=!", "--exclude=*.h"],
    "cvs-rule": ["--filter=-C"],
    "cvs-merge": ["--filter=:C"],
}


@pytest.mark.parametrize("name", list(RULES))
def test_patterns_like_rsync(tmp_path: Path, name: str) -> None:
    src = tmp_path / "src"
    make_tree(src)
    assert engine_list(src, RULES[name]) == rsync_list(src, RULES[name])


MERGES = {
    "dir-merge": (["--filter=dir-merge .rules"],
                  {".rules": "- *.o\n", "lib/.rules": "+ keep.o\n- *.c\n"}),
    "inherit-order": (["--filter=: .rules"],
                      {".rules": "- *.c\n", "lib/sub/.rules": "+ z.c\n"}),
    "no-inherit": (["--filter=:n .rules"],
                   {".rules": "- *.c\n", "lib/.rules": "- *.o\n"}),
    "anchored-in-subdir": (["--filter=: .rules"],
                           {"lib/.rules": "- /sub/z.c\n- /x.c\n", ".rules": "- /a.c\n"}),
    "no-prefix-exclude": (["--filter=:- .ex"], {".ex": "*.o\n# comment\n;other\n\n*.h\n"}),
    "no-prefix-include": (["--filter=:+ .in", "--exclude=*.c"], {"src/.in": "main.c\n"}),
    "word-split": (["--filter=:w .w"], {".w": "-_*.o -_*.h\n+_a.c"}),
    "exclude-self": (["--filter=:e .rules"], {".rules": "- core\n", "lib/.rules": "- x.c"}),
    "nested-dir-merge": (["--filter=: .rules"],
                         {".rules": ": .more\n- *.h\n", "lib/.more": "- *.c\n"}),
    "clear-in-subdir": (["--filter=: .rules"],
                        {".rules": "- *.c\n- *.o\n", "lib/.rules": "!\n- y.o\n"}),
    "merge-file": (["--filter=merge {dir}/extra"], {"../extra": "- *.c\n: .rules\n",
                                                   "src/.rules": "- *.tmp\n"}),
    "cvsignore": (["--filter=:C"], {".cvsignore": "*.txt notes*\n", "lib/.cvsignore": "x.c"}),
    "dash-F": (["-F"], {".rsync-filter": "- *.o\n", "lib/sub/.rsync-filter": "- deep/\n"}),
    "dash-FF": (["-F", "-F"], {".rsync-filter": "- *.o\n", "lib/.rsync-filter": "- x.c\n"}),
    "parent-scan": (["--filter=: {dir}/.pf"], {"../.pf": "- *.h\n", ".pf": "- *.o\n"}),
    "sides-in-merge": (["--filter=:s .rules"], {".rules": "- *.c\n"}),
    "receiver-merge": (["--filter=:r .rules"], {".rules": "- *.c\n"}),
    "dedupe": (["--filter=: .rules", "--filter=:n- .rules"], {".rules": "- *.c\n"}),
}


@pytest.mark.parametrize("name", list(MERGES))
def test_merge_files_like_rsync(tmp_path: Path, name: str) -> None:
    args, files = MERGES[name]
    src = tmp_path / "src"
    make_tree(src, {rel: text for rel, text in files.items() if not rel.startswith("../")})
    for rel, text in files.items():
        if rel.startswith("../"):
            (tmp_path / rel[3:]).write_text(text)
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    assert engine_list(src, args) == rsync_list(src, args)


def test_cvs_exclude_like_rsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-C: rsync's defaults, ~/.cvsignore, $CVSIGNORE and per-directory .cvsignore files."""
    src = tmp_path / "src"
    make_tree(src, {".cvsignore": "notes.txt\n", "lib/.cvsignore": "x.c build"})
    (tmp_path / ".cvsignore").write_text("a.h\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CVSIGNORE", "q1.txt")
    got = engine_list(src, [], cvs=True)
    want = rsync_list(src, ["-C"])
    assert got == want
    assert "a.h" not in got and "q1.txt" not in got and "lib/build" not in got


def test_delete_excluded_makes_rules_sender_side() -> None:
    """With --delete-excluded a plain rule no longer protects on the receiver."""
    texts = filterrules.parse_cli([("exclude", b"*.o"), ("filter", b"P keep.o")], True, False)
    assert texts == [b"-s *.o", b"-r keep.o"]
    rx = Filters(texts, "receiver", delete_excluded=True)
    top = rx.top(b"/d")
    assert not rx.excluded(top, b"x.o", False)
    assert rx.excluded(top, b"keep.o", False)
    assert Filters(texts, "sender", delete_excluded=True).excluded(top, b"x.o", False)


def test_perishable_rules_do_not_protect_a_dying_directory() -> None:
    rx = Filters([b"-p *.o", b"- core"], "receiver")
    top = rx.top(b"/d")
    assert rx.excluded(top, b"a.o", False)
    assert not rx.excluded(top, b"a.o", False, perishable=False)
    assert rx.excluded(top, b"core", False, perishable=False)


def test_xattr_rules_match_names_of_xattrs_only() -> None:
    f = Filters([b"-x user.secret*", b"- *.o"], "sender")
    assert f.xattr_excluded(b"user.secret.key")
    assert not f.xattr_excluded(b"user.other")
    assert not f.excluded(f.top(b"/"), b"user.secret.key", False)


@pytest.mark.parametrize("rule, message", [
    ("foo", "Unknown filter rule: foo"),
    ("-z foo", "invalid modifier 'z' at position 1 in filter rule: -z foo"),
    ("!x", "'!' rule has trailing characters: !x"),
    ("-", "unexpected end of filter rule: -"),
    ("Pr foo", "invalid modifier 'r' at position 1 in filter rule: Pr foo"),
    ("-e foo", "invalid modifier 'e' at position 1 in filter rule: -e foo"),
    (":!x .f", "invalid modifier '!' at position 1 in filter rule: :!x .f"),
    ("excludes foo", "Unknown filter rule: excludes foo"),
])
def test_bad_rules_are_refused_as_rsync_refuses_them(tmp_path: Path, rule: str,
                                                     message: str) -> None:
    with pytest.raises(BadFilterRule) as info:
        filterrules.parse_cli([("filter", os.fsencode(rule))], False, False)
    assert str(info.value) == message and info.value.code == 1
    proc = run_rsync("-a", f"--filter={rule}", f"{tmp_path}/", str(tmp_path / "d"), check=1)
    assert message in proc.stderr.decode()


def test_rules_from_a_merge_file_are_not_echoed(tmp_path: Path) -> None:
    """A peer chooses which file a dir-merge reads: its lines never come back in errors."""
    (tmp_path / "rules").write_text("secret line\n")
    with pytest.raises(BadFilterRule) as info:
        filterrules.parse_cli([("filter", b"merge " + os.fsencode(tmp_path / "rules"))],
                          False, False)
    assert "secret" not in str(info.value) and "<rule from" in str(info.value)


def test_missing_rule_file_is_exit_11(tmp_path: Path) -> None:
    with pytest.raises(FilterFileUnreadable) as info:
        filterrules.parse_cli([("exclude-from", os.fsencode(tmp_path / "nope"))], False, False)
    assert info.value.code == 11
    assert str(info.value).startswith("failed to open exclude file ")


def test_rule_texts_round_trip() -> None:
    """What the client sends parses back to the same rules on the far side."""
    items = [("filter", t) for t in (b"- *.o", b"+/! x/", b"P /k", b":n- .e", b"-C",
                                     b":C", b"H,p y", b"-x user.*", b"dir-merge,e .f")]
    texts = filterrules.parse_cli(items, False, False)
    again = filterrules.parse_cli([("filter", t) for t in texts], False, False)
    assert again == texts


SEGMENT = st.sampled_from(["a", "b", "lib", "sub", "*", "**", "?", "[ab]", "[!a]", "*.c",
                           "x*", "*b*", "deep", "***"])
PATTERN = st.builds(lambda lead, parts, trail: lead + "/".join(parts) + trail,
                    st.sampled_from(["", "/"]), st.lists(SEGMENT, min_size=1, max_size=3),
                    st.sampled_from(["", "/"]))
TREE = ["a", "bb", "a.c", "lib/a", "lib/b.c", "lib/sub/a", "lib/sub/deep/b", "sub/lib/x.c",
        "ab/ba/abc", "b/a/b/a.c"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.lists(st.tuples(st.sampled_from("+-"), PATTERN), min_size=1, max_size=3))
def test_random_rules_like_rsync(tmp_path_factory: pytest.TempPathFactory,
                                 rules: list[tuple[str, str]]) -> None:
    root = tmp_path_factory.mktemp("h")
    src = root / "src"
    for rel in TREE:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    args = [f"--filter={kind} {pat}" for kind, pat in rules]
    assert engine_list(src, args) == rsync_list(src, args), args


def test_parser_reads_lines_as_rsync() -> None:
    """CR, LF and CRLF end rules; --from0 makes NUL the only separator."""
    target = Target()
    Parser("sender").parse_file(target, b"- a\r\n- b\r- c\n#- d\n", 0, 0)
    assert [r.pattern for r in target.rules] == [b"a", b"b", b"c"]
    target = Target()
    Parser("sender", from0=True).parse_file(target, b"- a b\n\0- c", 0, 0)
    assert [r.pattern for r in target.rules] == [b"a b\n", b"c"]
    assert isinstance(target.rules[0], Rule)


@settings(max_examples=200, deadline=None)
@given(rules=st.lists(st.tuples(st.sampled_from(["-", "+", "-!", "-p", "+/"]),
                                st.sampled_from(["a", "*.c", "b*", "[ab]", "x/", "*", "?",
                                                 "lib", "c\\*"])), max_size=8),
       path=st.sampled_from(["a", "lib/a", "x", "b.c", "lib/sub/bb", "c*", "q"]),
       is_dir=st.booleans())
@example(rules=[("+", "a"), ("-", "b*")], path="b.c", is_dir=False)
@example(rules=[("-", "a"), ("-", "x/")], path="x", is_dir=False)
def test_grouped_rules_answer_as_each_rule_would(rules: list[tuple[str, str]], path: str,
                                                 is_dir: bool) -> None:
    """compact() merges runs of name-only rules into one regex: the first match must
    still decide, exactly as checking the rules one by one."""
    texts = [os.fsencode(f"{kind} {pat}") for kind, pat in rules]
    f = Filters(texts, "sender")
    p, target = Parser("sender"), Target()
    for t in texts:
        p.parse(target, t)
    want = 0
    for r in target.rules:
        if r.matches(os.fsencode(path), is_dir, b"tmp"):
            want = 1 if r.flags & filterrules.INCLUDE else -1
            break
    assert f.excluded(f.top(b"/tmp"), os.fsencode(path), is_dir) == (want < 0)
    assert len(f.rules) <= len(target.rules)


def test_a_merge_rule_from_the_peer_is_refused(tmp_path: Path) -> None:
    """The client reads merge files and sends their rules: a '.' rule arriving from the
    other side would make this host read a file the peer names."""
    secret = tmp_path / "secret"
    secret.write_text("- x\n")
    with pytest.raises(BadFilterRule):
        Filters([b". " + os.fsencode(secret)], "sender")
    assert Filters([b": .rules"], "receiver").slots

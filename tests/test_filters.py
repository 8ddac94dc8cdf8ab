"""--exclude/--include rules (and --delete around them) compared with rsync on one tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.trees import set_times, write
from test_local_sync import T0, Twin, assert_same_items, settle

FILES = [
    "a.c", "a.h", "b.c", "notes.txt", ".hidden", "core", "q1.txt", "q22.txt", "weird[1].txt",
    "lib/x.c", "lib/y.o", "lib/build", "lib/sub/z.c", "lib/sub/z.o", "lib/sub/deep/w.c",
    "build/out.o", "build/log.txt", "docs/readme.md", "docs/build/page.html", "cache/c.c",
]


def make_filter_tree(root: Path) -> None:
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write(root / rel, rel.encode())
    (root / "emptydir").mkdir()
    settle(root)


RULES = {
    "star": ["--exclude", "*.o"],
    "question": ["--exclude", "q?.txt"],
    "class": ["--exclude", "[ab].c"],
    "bracket-literal": ["--exclude", "weird[[]1].txt"],
    "dir-only": ["--exclude", "build/"],
    "anchored": ["--exclude", "/build"],
    "anchored-deep": ["--exclude", "/lib/sub/"],
    "with-slash": ["--exclude", "lib/sub"],
    "double-star": ["--exclude", "lib/**"],
    "double-star-middle": ["--exclude", "**/sub/*.o"],
    "star-no-slash": ["--exclude", "lib/*"],
    "hidden-and-name": ["--exclude", ".*", "--exclude", "core"],
    "only-c-files": ["--include", "*/", "--include", "*.c", "--exclude", "*"],
    "first-match-include": ["--include", "a.c", "--exclude", "*.c"],
    "first-match-exclude": ["--exclude", "*.c", "--include", "a.c"],
    "include-dir-contents": ["--include", "/lib/", "--include", "/lib/**", "--exclude", "*"],
}


@pytest.mark.parametrize("rules", list(RULES))
def test_rules_like_rsync(tmp_path: Path, rules: str) -> None:
    t = Twin(tmp_path)
    make_filter_tree(t.src)
    runs = t.run("-ai", *RULES[rules], f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs, ordered=True)


def test_rule_files(tmp_path: Path) -> None:
    """--exclude-from/--include-from: comments and blank lines ignored, order kept."""
    t = Twin(tmp_path)
    make_filter_tree(t.src)
    inc, exc = tmp_path / "inc", tmp_path / "exc"
    inc.write_text("# keep these\n\n*/\n*.c\n")
    exc.write_text("; comment too\n*.o\n\n*\n")
    t.run("-a", f"--include-from={inc}", f"--exclude-from={exc}", f"{t.src}/", "@D/dst")
    t.assert_same()
    assert (t.f / "dst/lib/sub/deep/w.c").exists() and not (t.f / "dst/notes.txt").exists()


def _extraneous(area: Path) -> None:
    for rel in ("dst/gone.txt", "dst/keep.o", "dst/lib/old.o", "dst/lib/old.c",
                "dst/olddir/x.o", "dst/olddir/y.txt"):
        (area / rel).parent.mkdir(parents=True, exist_ok=True)
        write(area / rel, b"extra")
        set_times(area / rel, T0 * 10**9)


@pytest.mark.parametrize("extra", [[], ["--delete-excluded"]], ids=["protected", "excluded"])
def test_delete_with_excludes(tmp_path: Path, extra: list[str]) -> None:
    t = Twin(tmp_path)
    make_filter_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    t.each(_extraneous)
    settle(t.src)
    runs = t.run("-ai", "--delete", *extra, "--exclude", "*.o", f"{t.src}/", "@D/dst")
    # olddir is not in the source: both tools empty it as far as the rules allow, at
    # different moments, so its mtime is "now" in both.
    t.assert_same(made=[] if extra else ["dst/olddir"])
    assert_same_items(runs)
    kept = os.path.exists(t.f / "dst/keep.o")
    assert kept == (not extra)
    assert os.path.exists(t.f / "dst/lib/y.o") == kept
    assert not os.path.exists(t.f / "dst/gone.txt")
    assert not os.path.exists(t.f / "dst/lib/old.c")


# ---- the rule language, per-directory rules and --delete (issue 23) -------------------------

def _merge_tree(root: Path) -> None:
    make_filter_tree(root)
    (root / ".rsync-filter").write_text("- *.o\n- /cache/\n")
    (root / "lib/.rsync-filter").write_text("+ keep.o\n- build\n")
    (root / "lib/sub/.rsync-filter").write_text("- deep/\n")
    write(root / "lib/keep.o", b"k")
    settle(root)


def _dest_litter(area: Path) -> None:
    """Extraneous destination files: some the rules protect, some not."""
    for rel in ("dst/x.o", "dst/gone.txt", "dst/lib/old.o", "dst/lib/build", "dst/lib/old.c",
                "dst/lib/sub/deep/held.c", "dst/cache/c2.c", "dst/olddir/y.o",
                "dst/olddir/y.txt", "dst/lib/keep2.o"):
        (area / rel).parent.mkdir(parents=True, exist_ok=True)
        write(area / rel, b"extra")
        set_times(area / rel, T0 * 10**9)


DELETE_RULES = {
    "F": ["-F"],
    "FF": ["-F", "-F"],
    "dir-merge-n": ["--filter=:n .rsync-filter"],
    "F-delete-excluded": ["-F", "--delete-excluded"],
    "protect": ["--filter=P *.o", "--filter=P /lib/old.c"],
    "risk": ["--filter=R *.o", "--exclude=*.o"],
    "hide": ["--filter=H *.o"],
    "show": ["--filter=S *.o", "--filter=- *.o"],
    "receiver-only": ["--filter=-r *.c"],
    "sender-only": ["--filter=-s *.c"],
    "perishable": ["--filter=-p *.o"],
    "cvs": ["-C"],
    "cvs-delete-excluded": ["-C", "--delete-excluded"],
    "exclude-self": ["--filter=:e .rsync-filter"],
}


@pytest.mark.parametrize("rules", list(DELETE_RULES))
def test_delete_with_rules_like_rsync(tmp_path: Path, rules: str) -> None:
    """The receiver applies its side of the rules, and the destination's own per-directory
    files, to what --delete may remove; perishable rules hold nothing in a directory that
    is itself being deleted."""
    t = Twin(tmp_path)
    _merge_tree(t.src)
    t.run("-a", *DELETE_RULES[rules], f"{t.src}/", "@D/dst")
    t.each(_dest_litter)
    runs = t.run("-ai", "--delete", *DELETE_RULES[rules], f"{t.src}/", "@D/dst")
    made = [m for m in ("dst/olddir", "dst/cache", "dst/lib/sub/deep") if (t.r / m).exists()]
    t.assert_same(made=made)
    assert_same_items(runs)


def test_destination_rules_protect_without_source_ones(tmp_path: Path) -> None:
    """A .rsync-filter only the destination has protects its directory there."""
    t = Twin(tmp_path)
    make_filter_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")

    def plant(area: Path) -> None:
        (area / "dst/lib/.rsync-filter").write_text("P *.bak\nP .rsync-filter\n")
        write(area / "dst/lib/a.bak", b"b")
        write(area / "dst/lib/a.tmp", b"t")
        for rel in (".rsync-filter", "a.bak"):
            set_times(area / "dst/lib" / rel, T0 * 10**9)

    t.each(plant)
    runs = t.run("-ai", "--delete", "-F", f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs)
    assert (t.f / "dst/lib/a.bak").exists() and not (t.f / "dst/lib/a.tmp").exists()


@pytest.mark.parametrize("rules", [["-F"], ["--filter=merge {rules}"], ["-C"],
                                   ["--filter=. {rules}", "--filter=-! */"]],
                         ids=["F", "merge", "cvs", "merge-negate"])
def test_rules_without_delete_like_rsync(tmp_path: Path, rules: list[str]) -> None:
    t = Twin(tmp_path)
    _merge_tree(t.src)
    (tmp_path / "rules").write_text("- *.c\n+ lib/\n- notes.txt\n")
    args = [r.replace("{rules}", str(tmp_path / "rules")) for r in rules]
    runs = t.run("-ai", *args, f"{t.src}/", "@D/dst")
    t.assert_same()
    assert_same_items(runs, ordered=True)


def test_top_directory_name_is_filtered_like_rsync(tmp_path: Path) -> None:
    """SRC without a trailing slash: its own name is checked, and its .rsync-filter read
    when the walk enters it (the parent's is not)."""
    t = Twin(tmp_path)
    _merge_tree(t.src)
    (tmp_path / ".rsync-filter").write_text("- src/notes.txt\n")
    runs = t.run("-ai", "-F", "--exclude=/src/docs", str(t.src), "@D/dst")
    t.assert_same(made=["dst"])
    assert_same_items(runs, ordered=True)
    runs = t.run("-ai", "--exclude=src", str(t.src), "@D/dst2")
    assert_same_items(runs)


@pytest.mark.parametrize("when", ["--delete", "--delete-before", "--delete-delay",
                                  "--delete-after"])
def test_destination_rules_are_read_when_rsync_reads_them(tmp_path: Path, when: str) -> None:
    """--delete reads a directory's merge files before the run replaces them (rsync's
    delete-during), --delete-after the ones the run brought."""
    t = Twin(tmp_path)
    make_filter_tree(t.src)
    (t.src / "lib/.rsync-filter").write_text("- nothing\n")
    settle(t.src)

    def plant(area: Path) -> None:
        (area / "dst/lib").mkdir(parents=True)
        (area / "dst/lib/.rsync-filter").write_text("P *.bak\n")
        write(area / "dst/lib/a.bak", b"b")
        set_times(area / "dst/lib/a.bak", T0 * 10**9)

    t.each(plant)
    runs = t.run("-ai", when, "-F", f"{t.src}/", "@D/dst")
    t.assert_same(made=["dst", "dst/lib"])
    assert_same_items(runs)
    assert (t.f / "dst/lib/a.bak").exists() == (when != "--delete-after")


@pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")
def test_xattr_rules_like_rsync(tmp_path: Path) -> None:
    """'x' rules select xattr names (with -X), never paths."""
    import xattr

    t = Twin(tmp_path)
    make_filter_tree(t.src)
    for rel in ("a.c", "lib/x.c"):
        xattr.set(t.src / rel, b"user.secret.key", b"s")
        xattr.set(t.src / rel, b"user.keep", b"k")
        xattr.set(t.src / rel, b"trusted.note", b"n")
    settle(t.src)
    runs = t.run("-aiX", "--filter=-x user.secret*", "--filter=-x! user.*", f"{t.src}/",
                 "@D/dst")
    t.assert_same()
    assert_same_items(runs, ordered=True)
    assert xattr.get(t.f / "dst/a.c", b"user.keep") == b"k"
    assert b"user.secret.key" not in xattr.list(t.f / "dst/a.c")
    assert b"trusted.note" not in xattr.list(t.f / "dst/a.c")

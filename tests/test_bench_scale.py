"""The pure parts of benchmarks/scale_memory.py (issue 24's memory yardstick): its tree
spec, the changes it makes to the source, and its tables. The benchmark itself runs
for hours on loop-mounted filesystems and is never run here."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def sm():
    """benchmarks/scale_memory.py, loaded by path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("scale_memory", BENCH / "scale_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_spec_shape(sm):
    spec = sm.TreeSpec(250_500)
    assert (spec.leaves, spec.tops) == (251, 3)
    assert spec.leaf_dir(250) == "t0002/d050"
    assert len(spec.files_of(250)) == 500
    assert spec.file_path(250_499) == "t0002/d050/f00250499"
    assert {spec.size(i) for i in range(10_000)} == set(range(200))


def test_spec_changes_are_one_percent_apart_and_cross_directories(sm):
    spec = sm.TreeSpec(1_000_000)
    deleted, linked = set(spec.deleted()), set(spec.linked())
    assert len(deleted) == len(linked) == 10_000
    assert not deleted & linked
    for i in list(linked)[:500]:
        here, there = spec.file_path(i).split("/"), spec.link_path(i).split("/")
        assert here[0] != there[0]  # another top-level directory, so another directory
        assert there[-1] == f"h{i:08d}"


def test_space_needed_grows_with_the_tree(sm):
    small, big = sm.space_needed(sm.TreeSpec(100_000)), sm.space_needed(sm.TreeSpec(10**7))
    assert 3 * 100_000 * 1536 < small < big
    assert big < 80 * sm.GiB  # what this machine's root filesystem has free


def test_tree_build_change_and_restore(sm, tmp_path):
    spec = sm.TreeSpec(1_000, per_dir=100, leaves_per_top=4)
    root = str(tmp_path / "src")
    sm.build_tree(root, spec)
    names = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, files in os.walk(root) for f in files)
    assert names == sorted(spec.file_path(i) for i in range(spec.files))
    assert os.path.getsize(os.path.join(root, spec.file_path(7))) == spec.size(7)
    assert os.stat(os.path.join(root, "t0002")).st_mtime_ns == sm.trees.BASE_NS
    before = sm.treecmp.snapshot(root, xattrs=False)
    assert sm.delete_some(root, spec) == 10
    assert sm.link_some(root, spec) == 10
    assert not os.path.exists(os.path.join(root, spec.file_path(100)))
    st = os.stat(os.path.join(root, spec.link_path(150)))
    assert st.st_nlink == 2
    assert os.path.samestat(st, os.stat(os.path.join(root, spec.file_path(150))))
    sm.restore(root, spec)
    after = sm.treecmp.snapshot(root, xattrs=False)
    assert sm.treecmp.diff(before, after, ignore=("mtime",)) == []
    assert [r for r in after.values() if r.type == "dir" and r.mtime != sm.trees.BASE_NS] == []


def _result(sm, files: int, run: str, fscsync_mib: float, rsync_mib: float):
    return sm.Result(files, run, rss_kib={"fscsync": int(fscsync_mib * 1024),
                                          "rsync": int(rsync_mib * 1024)},
                     seconds={"fscsync": 10.0, "rsync": 5.0})


def test_tables(sm):
    results = [_result(sm, 100_000, "initial", 32, 16), _result(sm, 1_000_000, "initial", 50, 16),
               _result(sm, 100_000, "-H", 58, 16)]
    results[2].notes.append("rsync: exit 23")
    rows = sm.result_rows(results)
    assert rows[0] == ["100,000", "initial", "32.0 MiB", "16.0 MiB", "2.00", "-", "-", "-",
                       "10.0", "5.0", "2.00", ""]
    assert rows[2][-1] == "rsync: exit 23"
    growth = sm.growth_rows(results)
    assert growth == [["initial", "100,000 to 1,000,000", "32.0 to 50.0 MiB (+20.0 MiB per M "
                       "files)", "16.0 to 16.0 MiB (+0.0 MiB per M files)"]]
    report = sm.SizeReport(100_000, build_s=4.0, results=results[:1])
    info = {k: "x" for k in ("nproc", "memory", "kernel", "os", "load", "rsync", "fscsync",
                             "commit", "python")}
    text = sm.render([report], [["bare interpreter", "`python3 -c pass`", "8.4 MiB"]], info,
                     sm.datetime.datetime(2026, 12, 4, 19, 0), "scale_memory.py")
    assert "| 100,000 | initial | 32.0 MiB | 16.0 MiB | 2.00 |" in text
    assert "tree built in 4 s (40 s per million files)" in text
    assert "| bare interpreter | `python3 -c pass` | 8.4 MiB |" in text


@pytest.mark.parametrize(("text", "sizes"), [("100000", [100_000]),
                                             ("100_000,1,000,000", None),
                                             ("100000,1000000", [100_000, 1_000_000])])
def test_parse_files(sm, text, sizes):
    if sizes is None:
        with pytest.raises(sm.argparse.ArgumentTypeError):
            sm.parse_files(text)
    else:
        assert sm.parse_files(text) == sizes

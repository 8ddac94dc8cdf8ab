"""Bounded memory (issue 24): the sender keeps only a window of its file list, which the
receiver releases as it finishes entries (protocol.RELEASE), and the receiver keeps an
Entry only while something still needs it. A sender and a receiver run here in one
process over two pipes, with a small window, and what each holds is recorded as they go.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from support.pair import run_pair
from support.treecmp import assert_same_tree
from support.trees import pattern, write

from fscsync.engine import flist, generator, receiver, sender
from fscsync.engine.receiver import MAX_IN_FLIGHT
from fscsync.options import Options

FILES, DIRS = 2400, 12
WINDOW, STEP = 300, 40
LINKED = 2  # with -H, every second file has a second name


class Held:
    """The most each side held at once: the sender's batches (in entries), the
    receiver's Entry objects."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = 0
        self.batch = 0
        self.entries = 0
        self.releases = 0
        monkeypatch.setattr(sender, "WINDOW", WINDOW)
        monkeypatch.setattr(sender, "FLIST_BATCH", 512)  # a batch: one directory's run at most
        monkeypatch.setattr(receiver, "RELEASE_STEP", STEP)
        held = self
        add, release, batch = flist.SentList.add, flist.SentList.release, generator.Generator.batch

        def counting_add(self, payload: bytes, count: int) -> None:
            add(self, payload, count)
            held.sent = max(held.sent, self.count - self._starts[0])
            held.batch = max(held.batch, count)

        def counting_release(self, idx: int) -> None:
            release(self, idx)
            held.releases += 1

        def counting_batch(self, base: int, b: flist.Batch) -> None:
            batch(self, base, b)
            held.entries = max(held.entries, len(self.state.entries))

        monkeypatch.setattr(flist.SentList, "add", counting_add)
        monkeypatch.setattr(flist.SentList, "release", counting_release)
        monkeypatch.setattr(generator.Generator, "batch", counting_batch)


def _sync(src: Path, dest: Path, opts: Options) -> None:
    tx_rep, rx_rep = run_pair(src, dest, opts)
    assert tx_rep.exit_code == rx_rep.exit_code == 0, tx_rep.lines + rx_rep.lines


def _tree(root: Path, links: bool = False) -> None:
    for i in range(DIRS):
        (root / f"d{i:02d}").mkdir(parents=True)
    for i in range(FILES):
        d = root / f"d{i % DIRS:02d}"
        write(d / f"f{i:05d}", pattern(i % 300, i))
        if links and i % LINKED == 0:  # a second name in another directory
            os.link(d / f"f{i:05d}", root / f"d{(i + 1) % DIRS:02d}" / f"l{i:05d}")


def test_sender_keeps_a_window_and_receiver_only_what_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    opts = Options(recursive=True, times=True, perms=True)
    held = Held(monkeypatch)
    _sync(src, dest, opts)
    assert_same_tree(src, dest, ignore_dir_mtime=True)
    assert held.releases > FILES // WINDOW
    assert held.sent <= WINDOW + 2 * held.batch < FILES, (held.sent, held.batch)
    # Requested files until their data is in, directories until the final pass.
    assert held.entries <= MAX_IN_FLIGHT + held.batch + DIRS + 1, held.entries

    again = Held(monkeypatch)
    _sync(src, dest, opts)  # no change: each settled file leaves nothing behind
    assert again.sent <= WINDOW + 2 * again.batch < FILES
    assert again.entries <= DIRS + 1, again.entries


def test_hard_links_keep_their_groups_only(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src, links=True)
    opts = Options(recursive=True, times=True, perms=True, hard_links=True)
    held = Held(monkeypatch)
    _sync(src, dest, opts)
    assert_same_tree(src, dest, ignore_dir_mtime=True)
    groups = FILES // LINKED
    for i in range(0, FILES, LINKED):
        a = os.stat(dest / f"d{i % DIRS:02d}" / f"f{i:05d}")
        b = os.stat(dest / f"d{(i + 1) % DIRS:02d}" / f"l{i:05d}")
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert held.sent <= WINDOW + 2 * held.batch < FILES
    # A second name waits (with its leader) only while the leader's data is in flight.
    assert held.entries <= 2 * MAX_IN_FLIGHT + held.batch + DIRS + 1 < 2 * groups, held.entries

    again = Held(monkeypatch)
    _sync(src, dest, opts)
    # No change: each second name is settled when it is decided, and its leader (the
    # group's last name has come) forgotten: what stays is a directory's worth of
    # leaders waiting for the next directory, and the directories.
    per_dir = max(Counter(i % DIRS for i in range(0, FILES, LINKED)).values())
    assert again.entries <= per_dir + DIRS + 1, again.entries


@pytest.mark.parametrize("extra", [{"delete_when": "before"},
                                   {"delete_when": "during", "prune_empty_dirs": True}],
                         ids=["--delete-before", "--delete-during -m"])
def test_a_receiver_that_holds_the_list_gets_no_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict) -> None:
    """--delete-before (and --delete-during under -m, whose names cannot be announced)
    compares nothing before the list is whole, so the sender must not wait for
    releases (it would wait forever)."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    (dest / "gone").mkdir(parents=True)
    opts = Options(recursive=True, times=True, delete=True, **extra)
    held = Held(monkeypatch)
    _sync(src, dest, opts)
    assert_same_tree(src, dest, ignore_dir_mtime=True)
    assert held.releases == 0 and held.sent == FILES + DIRS + 1


@pytest.mark.parametrize("when", ["during", "delay"])
def test_delete_during_and_delay_keep_the_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Their names are announced (DIRNAMES), so the receiver decides as the list comes
    and releases it: the sender keeps a window, and the extraneous entries still go."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    (dest / "gone").mkdir(parents=True)
    (dest / "d03").mkdir()
    write(dest / "d03" / "stale", b"x")
    opts = Options(recursive=True, times=True, delete=True, delete_when=when)
    held = Held(monkeypatch)
    _sync(src, dest, opts)
    assert_same_tree(src, dest, ignore_dir_mtime=True)
    assert held.releases > FILES // WINDOW
    assert held.sent <= WINDOW + 2 * held.batch < FILES, (held.sent, held.batch)

"""The workdir's disk: room for the chosen scenarios, and deletions that do not slow the next run.

ext4 is slow to make files next to ones it freed minutes ago, so destinations are
set aside rather than deleted between runs, and a run waits out the previous one's
deletions before it times an initial copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import trees
from config import Config, KiB, MiB, human


def rm_rf(path: str) -> None:
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def set_aside(path: str, trash: str) -> None:
    """Move a destination out of the way (untimed) so that the next run builds it afresh;
    what was set aside is deleted when all the scenarios have run.

    Deleting it here would slow the next run's file creation, whichever tool it is:
    ext4 will not hand out an inode freed in the last 30 s, or 5.5 minutes while its
    inode-table block awaits the journal checkpoint (as it does even after `sync`),
    and each allocation in the block group walks past every such inode with one buffer
    lookup (recently_deleted and find_get_block_common in `perf`). 10,000 files made
    next to the 10,000 the previous rep had just deleted took 3 to 9 s, against 0.4 s
    in a fresh group. A deletion after S1 could still slow S4a, a few minutes later."""
    if os.path.lexists(path):
        os.makedirs(trash, exist_ok=True)
        os.rename(path, os.path.join(trash, f"{len(os.listdir(trash))}"))


def empty_trash(trash: str, root: str) -> None:
    if os.path.lexists(trash):
        rm_rf(trash)
        os.sync()
        note_deletion(root)


DELETED_STAMP = ".deleted-at"
"""Touched in the workdir root whenever the bench deletes trees there."""
SETTLE_S = 330.0
"""ext4's longest wait before it reuses freed inodes (see set_aside)."""


def note_deletion(root: str) -> None:
    Path(root, DELETED_STAMP).touch()


def settle(root: str, wait: float) -> None:
    """Let ext4 forget the previous bench run's deletions before S1, S4a or S6a is timed: two
    runs back to back would otherwise time its walk past the freed inodes, not the tools
    (S1 runs of either tool took 2 to 6 s longer in a run started 4 minutes after another)."""
    try:
        age = time.time() - os.stat(os.path.join(root, DELETED_STAMP)).st_mtime
    except FileNotFoundError:
        return
    if 0 <= age < wait:
        print(f"waiting {wait - age:.0f} s: the previous run deleted its trees {age:.0f} s ago, "
              f"and ext4 makes files slowly for up to {SETTLE_S / 60:.1f} minutes after a "
              "mass deletion (--settle 0 skips the wait)", flush=True)
        time.sleep(wait - age)


def space_needed(cfg: Config, keys: set[str], reps: dict[str, int]) -> int:
    """A generous estimate of the bytes the scenarios `keys` put on disk (S1 and S4a
    and S6a keep every run's copy until the end, see set_aside)."""
    small = cfg.small_files * 8 * KiB + cfg.small_dirs * 4 * KiB
    need = 0
    if keys & {"S1", "S1f", "S2a", "S4a", "S4b"}:
        need += cfg.big + small  # the S1 source tree
    if keys & {"S1", "S2a"}:
        need += 2 * (cfg.big + small) * (reps["S1"] + 1 if "S1" in keys else 1)
    if "S1f" in keys:
        need += 2 * (cfg.big + small) * (reps["S1f"] + 1)
    if keys & {"S4a", "S4b"}:
        need += 2 * small * (reps["S4a"] + 1 if "S4a" in keys else 1)
    if "S2b" in keys:
        need += 3 * (cfg.many_files * 8 * KiB + cfg.many_dirs * 4 * KiB)
    if "S3" in keys:
        need += 3 * cfg.big
    if "S5" in keys:
        need += 3 * (cfg.enc_big + cfg.enc_files * 8 * KiB)
    if keys & {"S6a", "S6b"}:
        tree = cfg.st_big + cfg.st_files * 8 * KiB + cfg.st_dirs * 4 * KiB
        need += tree * (1 + 2 * (reps["S6a"] + 1 if "S6a" in keys else 0)
                        + (2 if "S6b" in keys else 0))
    return int(need * 1.05) + 256 * MiB


def check_space(cfg: Config, keys: set[str], reps: dict[str, int], work: str) -> None:
    """Stop before building anything when the workdir's disk lacks the room or inodes."""
    parent = work
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "/"
    usage = shutil.disk_usage(parent)
    reusable = trees.disk_usage(work)
    need = space_needed(cfg, keys, reps)
    print(f"workdir {work}: needs about {human(need)}; {human(usage.free)} free"
          + (f" + {human(reusable)} already there from a --keep run" if reusable else ""))
    if need > usage.free + reusable:
        raise SystemExit(
            f"bench: NOT ENOUGH DISK SPACE in {parent}: the {cfg.name} benchmark needs about "
            f"{human(need)} but only {human(usage.free + reusable)} is available. "
            f"Free some space, pick another --workdir, or run --quick.")
    vfs = os.statvfs(parent)
    files = (cfg.small_files * 4 + cfg.many_files * 3 + cfg.enc_files * 3 + cfg.st_files * 16
             + 10_000)
    if vfs.f_favail and vfs.f_favail < files:
        raise SystemExit(f"bench: not enough free inodes in {parent}: need about {files:,}, "
                         f"have {vfs.f_favail:,}")


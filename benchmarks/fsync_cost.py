#!/usr/bin/env python3
"""What --fsync costs on S1's initial copy (issue 22), for fscsync and for rsync.

    .venv/bin/python benchmarks/fsync_cost.py                  # full S1 tree, 5 rounds
    .venv/bin/python benchmarks/fsync_cost.py --quick --rounds 3

Each round runs `TOOL -a SRC/ DST/` and `TOOL -a --fsync SRC/ DST/` for fscsync and
rsync into a fresh destination, in an order that rotates between rounds, so a
machine loaded by other work slows every variant alike. Before each run `sync`
flushes the previous run's pages, and finished destinations are set aside and
deleted only at the end (a mass deletion slows ext4's next creations for minutes).
Prints each run, then per variant the median and its ratio to the same tool
without --fsync. A measurement, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import trees
from config import FULL, QUICK
from tools import REPO
from workdir import rm_rf

VARIANTS = [("fscsync", []), ("fscsync", ["--fsync"]), ("rsync", []), ("rsync", ["--fsync"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick run's smaller S1 tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default="/var/tmp/fscsync-fsync-cost")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    src = os.path.join(args.workdir, "src")
    trees.ensure(src, {"big": cfg.big, "files": cfg.small_files, "dirs": cfg.small_dirs,
                       "v": 1},
                 lambda root: trees.build_s1(root, cfg.big, cfg.small_files, cfg.small_dirs))
    argv = {"fscsync": [str(REPO / ".venv" / "bin" / "fscsync")], "rsync": ["rsync"]}
    times: dict[int, list[float]] = {i: [] for i in range(len(VARIANTS))}
    trash = os.path.join(args.workdir, "trash")
    os.makedirs(trash, exist_ok=True)
    try:
        for r in range(args.rounds):
            order = [(r + k) % len(VARIANTS) for k in range(len(VARIANTS))]
            for i in order:
                tool, extra = VARIANTS[i]
                dst = os.path.join(args.workdir, "dst")
                cmd = [*argv[tool], "-a", *extra, src + "/", dst + "/"]
                subprocess.run(["sync"], check=True)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times[i].append(time.perf_counter() - t0)
                os.rename(dst, os.path.join(trash, f"{r}-{i}"))
                print(f"round {r + 1}: {' '.join([tool, '-a', *extra])}: {times[i][-1]:.2f} s",
                      flush=True)
    finally:
        rm_rf(trash)
    print(f"\nS1 ({cfg.name}: {cfg.big >> 20} MiB file + {cfg.small_files:,} files in "
          f"{cfg.small_dirs} dirs), {args.rounds} rounds, medians:")
    for i, (tool, extra) in enumerate(VARIANTS):
        med = statistics.median(times[i])
        base = statistics.median(times[VARIANTS.index((tool, []))])
        print(f"  {tool:8} -a {' '.join(extra):8} {med:7.2f} s   ×{med / base:.2f}")


if __name__ == "__main__":
    main()

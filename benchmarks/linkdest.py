"""The second night of a snapshot rotation: fscsync vs `rsync -a --link-dest`.

A tree of FILES small files (100 B - 8 KiB, benchmarks/trees.py) is copied once as
day1; then 1% of its files are rewritten (same size, new data, newer mtime) and each
tool makes day2 with --link-dest=../day1, in alternating reps (the machine is shared,
so single runs are noise; medians are reported). Measured: wall time (measure.py) and
the disk the new snapshot takes (`du -sk day1 day2`: day2's line counts only what is
not linked to day1), plus how many files each tool linked.

    python benchmarks/linkdest.py [--files 100000] [--reps 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import tools  # noqa: E402
import trees  # noqa: E402
import workdir  # noqa: E402

DIRS = 100
CHANGED = 0.01


def build(root: str, files: int) -> dict:
    total = trees.build_small_files(root, files, DIRS, "linkdest")
    trees.set_tree_times(root)
    return {"bytes": total}


def change(src: str, files: int) -> list[str]:
    """Rewrite 1% of the files (chosen by seed) with new data of the same size."""
    rng = random.Random("linkdest/changed")
    per_dir = -(-files // DIRS)
    picked = rng.sample(range(files), max(1, int(files * CHANGED)))
    paths = []
    for i in picked:
        path = os.path.join(src, f"d{i // per_dir:03d}", f"f{i:06d}.dat")
        size = os.path.getsize(path)
        trees.write_file(path, trees.random_bytes(size, f"linkdest/new/{i}"))
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + trees.NEWER_NS))
        paths.append(path)
    return paths


def du_new(day1: str, day2: str) -> int:
    """KiB that day2 adds to day1 (du counts a hard-linked inode once, at its first)."""
    out = subprocess.run(["du", "-sk", day1, day2], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return int(out[1].split()[0])


def linked(day2: str) -> int:
    return sum(1 for d, _, names in os.walk(day2) for n in names
               if os.lstat(os.path.join(d, n)).st_nlink > 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=os.environ.get("BENCH_DIR", "/var/tmp/fscsync-bench"))
    args = ap.parse_args()
    work = os.path.join(args.workdir, f"linkdest-{args.files}")
    os.makedirs(work, exist_ok=True)
    src, day1 = os.path.join(work, "src"), os.path.join(work, "day1")
    trash = os.path.join(work, "trash")
    workdir.rm_rf(trash)
    for path in (src, day1, src + ".stamp.json"):
        workdir.rm_rf(path)  # the changes below make every run's source new
    trees.ensure(src, {"files": args.files, "dirs": DIRS}, lambda root: build(root, args.files))
    subprocess.run(["rsync", "-a", f"{src}/", f"{day1}/"], check=True)
    changed = change(src, args.files)
    changed_bytes = sum(os.path.getsize(p) for p in changed)
    tool = tools.make_tools()
    tools.compile_sources()
    results: dict[str, list[tuple[float, int, int]]] = {"fscsync": [], "rsync": []}
    for rep in range(args.reps):
        order = ("fscsync", "rsync") if rep % 2 == 0 else ("rsync", "fscsync")
        for name in order:
            t = tool[name]
            day2 = os.path.join(work, f"day2-{name}")
            workdir.set_aside(day2, trash)
            subprocess.run(["sync"], check=True)
            run = measure.run_measured([*t.argv, "-a", "--stats", "--link-dest=../day1",
                                        f"{src}/", f"{day2}/"], t.env, counted=t.comms)
            if run.failure():
                print(f"{name}: {run.failure()}", file=sys.stderr)
                return 1
            got = (run.seconds, du_new(day1, day2), linked(day2))
            results[name].append(got)
            print(f"rep {rep + 1} {name}: {got[0]:.2f} s, day2 adds {got[1]:,} KiB, "
                  f"{got[2]:,} files linked", flush=True)
    workdir.rm_rf(trash)
    print(f"\n{args.files:,} files, {len(changed):,} changed ({changed_bytes:,} bytes); "
          f"medians of {args.reps} alternating reps")
    print("| tool | time s | day2 disk (du) | files linked |\n|---|---:|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.2f} "
              f"| {int(statistics.median(r[1] for r in rows)):,} KiB "
              f"| {int(statistics.median(r[2] for r in rows)):,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""fscsync vs rsync, side by side on the same trees in one run (issue 7).

    .venv/bin/python benchmarks/bench.py              # make bench: full trees, 3 or 5 reps
    .venv/bin/python benchmarks/bench.py --quick      # make bench-quick: small trees, 1 rep
    .venv/bin/python benchmarks/bench.py --only S3,S5 --reps 5 --keep

Scenarios (fscsync / rsync, medians; targets from issues 7 and 25):
  S1   initial local copy: one big file + many small files      time <= 1.0
  S1f  the same with --fsync (both tools)                         no target
  S2a  no-change rescan of the S1 tree                           time <= 2.0
  S2b  no-change rescan of a 100,000-file tree                   time <= 1.5
  S3   10 random 4 KiB blocks changed in the big file            time <= 0.5, wire <= 0.2
  S4a  S1's small files pushed over ssh to 127.0.0.1, initial    time <= 1.2
  S4b  the same, no change                                       time <= 1.2
  S5   encrypted backup-layout tree, 10 changed blocks           wire <= 0.2
  S6a  small tree (128 MiB file + 5,000 files), initial          time <= 1.2
  S6b  the same, no change                                       time <= 1.2
  every scenario: peak memory <= 2x rsync's

Method: for each scenario one untimed warm-up run of each tool, then N timed
repetitions alternating the tools (fscsync first on odd reps, rsync first on even
ones). Before every run the destination is put into the scenario's starting state
(untimed) and `sync` flushes dirty pages so no run pays for the previous one's
writeback. Page caches are not dropped: both tools run warm. Wall time is
perf_counter around the whole command; wire bytes are the "Total bytes sent" +
"Total bytes received" of each tool's --stats; peak memory is the largest sum of
RSS over the tool's whole process tree (client, local server children and,
over ssh, the remote-side processes, but not ssh/sshd themselves), sampled from
/proc/PID/statm every 20 ms by the same code for both tools (PSS, which needs a
page-table walk, every 100 ms). Missed targets
are reported, never fatal: the exit status is non-zero only when a run crashed
or the harness could not run.

This file only reads the options and runs the chosen scenarios in order; the
measuring is in measure.py, the scenarios and their trees in scenarios.py and
trees.py, a scenario's reps and verdict in runner.py, the tables and README
section in render.py, the workdir's disk in workdir.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

from config import FULL, QUICK
from measure import Limits
from render import (
    README,
    describe_reps,
    machine_info,
    render_markdown,
    summary_rows,
    text_table,
    update_readme,
)
from runner import Outcome, run_scenario
from scenarios import SCENARIOS, Bench, InitialCopy, select
from tools import REPO, compile_sources, engine_fingerprint, make_tools
from workdir import SETTLE_S, check_space, empty_trash, note_deletion, settle

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = "/var/tmp/fscsync-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Scenarios: " + ", ".join(s.key for s in SCENARIOS))
    p.add_argument("--quick", action="store_true",
                   help="small trees and 1 repetition (under two minutes)")
    p.add_argument("--only", metavar="LIST",
                   help="comma-separated scenarios or prefixes, e.g. S3,S5 or S2 (= S2a,S2b)")
    p.add_argument("--reps", type=int, metavar="N",
                   help="timed repetitions per tool (default 5, and 3 for S3 and S5; 1 "
                        "with --quick)")
    p.add_argument("--keep", action="store_true",
                   help="keep trees and destinations (and reuse kept trees next time)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help=f"where trees go (default {DEFAULT_WORKDIR}); a 'full' or 'quick' "
                        "subdirectory is used and removed afterwards unless --keep")
    p.add_argument("--results", default=str(HERE / "results.md"),
                   help="Markdown results file (default benchmarks/results.md)")
    p.add_argument("--stall", type=float, metavar="S",
                   help="kill a run whose processes use no CPU for S seconds, e.g. two peers "
                        "deadlocked on full pipes (default 30, or 10 with --quick)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="kill a run after S seconds (default 1800, or 300 with --quick)")
    p.add_argument("--settle", type=float, metavar="S",
                   help="before S1, S4a or S6a, wait until the previous run's deletions are S "
                        f"seconds old (default {SETTLE_S:.0f}, or 0 with --quick: ext4 makes "
                        "files slowly for that long after a mass deletion)")
    p.add_argument("--profile", metavar="DIR",
                   help="after each scenario, one more untimed fscsync run under cProfile "
                        "(client and server); .prof files go to DIR")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # trees.py imports fscsync.fs.cipher for S5
    cfg = QUICK if args.quick else FULL
    limits = Limits(args.stall or (10.0 if args.quick else 30.0),
                    args.timeout or (300.0 if args.quick else 1800.0))
    chosen = select(args.only)
    reps = {cls.key: args.reps or (cfg.more_reps if cls.more_reps else cfg.reps)
            for cls in chosen}
    work = os.path.join(os.path.abspath(args.workdir), cfg.name)
    check_space(cfg, set(reps), reps, work)
    os.makedirs(work, exist_ok=True)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
    bench = Bench(cfg, work, make_tools(), limits)
    info = machine_info(work, bench.tools["fscsync"])
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    print(f"fscsync benchmark ({cfg.name}): {', '.join(s.key for s in chosen)}; "
          f"{describe_reps(reps)} + a warm-up\n{cfg.describe()}", flush=True)
    load = float(info["load"].split()[0]) if info["load"] != "?" else 0.0
    if load > 0.5:
        print(f"warning: load average {info['load']}: other work is running on this machine; "
              "times will be noisy", flush=True)
    outcomes: list[Outcome] = []
    crashed = False
    root = os.path.dirname(work)
    try:
        if any(issubclass(cls, InitialCopy) for cls in chosen):
            settle(root, args.settle if args.settle is not None
                   else 0.0 if args.quick else SETTLE_S)
        sources = compile_sources()
        for cls in chosen:
            outcomes.append(run_scenario(bench, cls, reps[cls.key], args.profile))
            now = compile_sources()
            if now != sources:
                sources = now
                outcomes[-1].notes.append(
                    "fscsync's sources changed while this scenario ran: its runs mix code "
                    "versions and recompiled the edited modules at every start")
                print(f"   warning: {outcomes[-1].notes[-1]}", flush=True)
    except KeyboardInterrupt:
        print("\nbench: interrupted; reporting what ran", file=sys.stderr)
        crashed = True
    finally:
        if bench.sshd is not None:
            bench.sshd.stop()
        empty_trash(bench.path("trash"), root)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            note_deletion(root)
    elapsed = time.perf_counter() - t0
    if not outcomes:
        return 1
    rows = summary_rows(outcomes)
    print(f"\nfscsync / rsync, medians of {describe_reps(reps)}, {cfg.name} trees "
          f"({elapsed / 60:.1f} min):\n")
    print(text_table(rows))
    markdown = render_markdown(outcomes, cfg, reps, args.reps, info, started, elapsed,
                               args.only)
    Path(args.results).write_text(markdown)
    print(f"\nwrote {args.results}")
    if (cfg.name == "full" and not args.only and min(reps.values()) >= 3 and not crashed
            and update_readme(markdown)):
        print(f"updated the results section of {README}")
    if engine_fingerprint() != info["engine"]:
        print("warning: the fscsync sources changed while the benchmark ran; see results.md")
    if args.keep:
        print(f"kept trees in {work}")
    return 1 if crashed or any(o.crashed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

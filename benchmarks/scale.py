"""Scale scenario of issue 24: many small files, initial copy and no-change, with
fscsync at N = 1, 2, 4 streams (`--parallel N`; N = 1 is a plain run) beside rsync
and fpsync -n N (Debian's fpart package: `apt install fpart`), locally and pushed
over the tests' sshd on 127.0.0.1.

    .venv/bin/python benchmarks/scale.py [--files 100000] [--dirs 100] [--reps 3]
        [--only local,ssh] [--workdir /var/tmp/fscsync-scale] [--cm]

Reps alternate between the tools (rep 1 of every tool, then rep 2, ...) and the
table shows medians, so a load spike from another process lands on every tool
alike rather than on one. Initial copies go to a fresh destination each rep (its
removal is not timed); no-change runs go into a copy made once by rsync -a, which
every tool finds up to date. `--cm` adds fscsync --parallel 4 through one ssh
ControlMaster connection (ControlPersist) beside one ssh connection a stream.
Not part of `make bench`: it takes minutes and is not in CI.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trees  # noqa: E402
from measure import run_measured  # noqa: E402
from scenarios import _support  # noqa: E402
from tools import compile_sources, make_tools  # noqa: E402

NS = (1, 2, 4)
FPSYNC_OPTS = "-lptgoD --numeric-ids"
"""rsync's -a without -r, which fpsync refuses (it hands each rsync a list of files)."""


def commands(where: str, src: str, dst: str, sshd, cm: bool) -> dict[str, tuple[list, dict]]:
    """Label -> (argv, env) of every tool run for one place ('local' or 'ssh')."""
    tools = make_tools()
    fs, rs = tools["fscsync"], tools["rsync"]
    target = dst if where == "local" else f"{sshd.host}:{dst}"
    ssh = [] if where == "local" else ["-e", sshd.rsh]
    remote = [] if where == "local" else ["--remote-fscsync", fs.remote_program]
    out: dict[str, tuple[list, dict]] = {}
    for n in NS:
        par = [] if n == 1 else ["--parallel", str(n)]
        out[f"fscsync N={n}"] = ([*fs.argv, "-a", *ssh, *remote, *par, f"{src}/", target],
                                 fs.env)
    if cm and where == "ssh":
        sock = os.path.join(tempfile.gettempdir(), "scale-bench-cm-%p")
        rsh = sshd.rsh + f" -o ControlMaster=auto -o ControlPath={sock} -o ControlPersist=60"
        out["fscsync N=4 (ControlMaster)"] = (
            [*fs.argv, "-a", "-e", rsh, *remote, "--parallel", "4", f"{src}/", target], fs.env)
    out["rsync"] = ([*rs.argv, "-a", *ssh, f"{src}/", target], rs.env)
    fpsync = shutil.which("fpsync")
    if fpsync:
        env = dict(rs.env)
        if where == "ssh":
            env["RSYNC_RSH"] = sshd.rsh
        for n in NS:
            out[f"fpsync -n {n}"] = ([fpsync, "-n", str(n), "-o", FPSYNC_OPTS, f"{src}/", target],
                                     env)
    return out


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def run_place(where: str, src: str, work: str, sshd, reps: int, cm: bool) -> list[str]:
    """Markdown rows for one place: initial and no-change medians of every tool."""
    dst = os.path.join(work, f"dst-{where}")
    synced = os.path.join(work, f"synced-{where}")
    rows = []
    for phase in ("initial", "no-change"):
        target = dst if phase == "initial" else synced
        cmds = commands(where, src, target, sshd, cm)
        if phase == "no-change":
            trees.remove(synced)
            subprocess.run(["rsync", "-a", f"{src}/", synced], check=True)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        rss: dict[str, list[int]] = {k: [] for k in cmds}
        for rep in range(reps):
            for label, (argv, env) in cmds.items():
                if phase == "initial":
                    trees.remove(dst)
                    os.sync()
                run = run_measured(argv, env, counted=("",))
                if run.rc != 0:
                    print(f"  {where} {phase} {label}: FAILED {run.failure()}", flush=True)
                    continue
                times[label].append(run.seconds)
                rss[label].append(run.peak_rss_kib)
                print(f"  {where} {phase} rep {rep + 1} {label}: {run.seconds:.2f} s",
                      flush=True)
        base = _median(times["rsync"])
        for label in cmds:
            t = _median(times[label])
            if t is None:
                rows.append(f"| {where} | {phase} | {label} | failed | | |")
                continue
            ratio = f"{t / base:.2f}" if base else ""
            rows.append(f"| {where} | {phase} | {label} | {t:.2f} | {ratio} | "
                        f"{_median(rss[label]) / 1024:.1f} MiB |")
    trees.remove(dst)
    trees.remove(synced)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="local,ssh")
    ap.add_argument("--workdir", default="/var/tmp/fscsync-scale")
    ap.add_argument("--cm", action="store_true", help="also one ssh ControlMaster for N=4")
    args = ap.parse_args()
    compile_sources()
    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.join(args.workdir, "src")
    t0 = time.monotonic()
    trees.ensure(src, {"files": args.files, "dirs": args.dirs, "v": 1},
                 lambda root: {"bytes": trees.build_small_files(root, args.files, args.dirs,
                                                                "scale")})
    print(f"tree: {args.files:,} files in {args.dirs} dirs ({time.monotonic() - t0:.0f} s "
          f"to build or check)", flush=True)
    sshd = None
    rows = []
    try:
        for where in args.only.split(","):
            if where == "ssh":
                module = _support("sshd")
                reason = module.missing_prerequisite()
                if reason:
                    print(f"ssh skipped: {reason}")
                    continue
                sshd_dir = Path(args.workdir) / "sshd"
                shutil.rmtree(sshd_dir, ignore_errors=True)
                sshd_dir.mkdir()
                sshd = module.start_sshd(sshd_dir)
            rows += run_place(where, src, args.workdir, sshd, args.reps, args.cm)
    finally:
        if sshd is not None:
            sshd.stop()
    print(f"\n{args.files:,} files of 100 B-8 KiB in {args.dirs} dirs, {args.reps} "
          f"alternating reps, medians; ratio = time / rsync's; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| where | run | tool | s | ratio | peak RSS (tree) |")
    print("|---|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\ncommand: {shlex.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

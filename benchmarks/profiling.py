"""--profile: one more untimed fscsync run under cProfile, and its top functions.

profile_hook/sitecustomize.py does the profiling inside every fscsync process of
that run: the directory goes first on PYTHONPATH, so Python imports the hook at start.
"""

from __future__ import annotations

import glob
import os
import pstats
import shlex
from pathlib import Path

from scenarios import Scenario
from tools import Tool

HOOK_DIR = str(Path(__file__).resolve().parent / "profile_hook")


def _top(path: str, label: str, n: int) -> list[str]:
    stats = pstats.Stats(path)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    lines = [f"  {label}: {path} (total {stats.total_tt:.2f} s); top functions by own time:"]
    for (filename, line, func), (_, ncalls, tt, ct, _) in rows:
        where = f"{os.path.basename(filename)}:{line}" if line else filename
        lines.append(f"    {tt:7.2f}s own {ct:7.2f}s cum {ncalls:>9,} calls  {func} ({where})")
    return lines


def profile_run(sc: Scenario, tool: Tool, outdir: str) -> list[str]:
    """One more untimed fscsync run with cProfile in the client and its server."""
    prefix = os.path.join(outdir, sc.key)
    for old in glob.glob(glob.escape(prefix) + "-*.prof"):
        os.unlink(old)
    env = dict(tool.env)
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, env.get("PYTHONPATH", "")])
    env["FSCSYNC_BENCH_PROFILE"] = prefix
    profiled = Tool(tool.name, tool.argv, env,
                    f"env PYTHONPATH={shlex.quote(env['PYTHONPATH'])} "
                    f"FSCSYNC_BENCH_PROFILE={shlex.quote(prefix)} {tool.remote_program}")
    sc.reset(profiled)
    os.sync()
    run = sc.measure(profiled)
    lines = [f"profile of {sc.key} ({run.seconds:.2f} s under cProfile"
             + (f", {run.failure()}" if run.failure() else "") + "):"]
    for role in ("client", "server"):
        main = f"{prefix}-{role}.prof"
        if os.path.exists(main):
            lines += _top(main, f"{role} main thread", 12)
        else:
            lines.append(f"  {role}: no profile written")
        for path in sorted(glob.glob(glob.escape(f"{prefix}-{role}-thread-") + "*.prof")):
            lines += _top(path, f"{role} thread {path.rsplit('-thread-', 1)[1][:-5]}", 6)
    return lines

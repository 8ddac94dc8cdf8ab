"""Running one scenario: warm-ups, alternating timed reps, checks, and the verdict."""

from __future__ import annotations

import os
import statistics
import time
import traceback
from dataclasses import dataclass, field

from config import TOOLS, KiB, human
from measure import Run
from profiling import profile_run
from scenarios import Bench, Scenario, Skip
from tools import Tool

MAX_FAILURES = 2
"""A tool that failed this often in one scenario gets no more runs there."""


@dataclass
class Outcome:
    key: str
    title: str
    targets: str
    scenario: Scenario | None = None
    runs: dict[str, list[Run]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    warmups: dict[str, Run] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOOLS, 0))
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOOLS, 0))
    skipped: str | None = None
    failed: bool = False

    def median(self, tool: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs[tool] if r.rc == 0 and not r.killed]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def ratio(self, attr: str) -> float | None:
        f, r = self.median("fscsync", attr), self.median("rsync", attr)
        if f is None or r is None or r == 0:
            return None
        return f / r

    def verdict(self) -> str:
        """PASS/FAIL against the targets from the medians of good runs, plus failed runs."""
        if self.skipped:
            return "SKIPPED"
        if self.failed:
            return "ERROR (harness)"
        sc = self.scenario
        misses = []
        for attr, target, label in (("seconds", sc.time_target, "time"),
                                    ("wire", sc.wire_target, "wire"),
                                    ("peak_rss_kib", sc.mem_target, "mem")):
            if target is None:
                continue
            ratio = self.ratio(attr)
            if ratio is None:
                misses.append(f"{label} n/a")
            elif ratio > target:
                misses.append(f"{label} {ratio:.2f}>{target:g}")
        crashed = [f"{t} {self.failures[t]}/{self.attempts[t]} runs failed" for t in TOOLS
                   if self.failures[t]]
        if crashed and all(self.ratio(a) is None for a in ("seconds", "wire")):
            return "ERROR (" + ", ".join(crashed) + ")"
        verdict = "PASS" if not misses else "FAIL (" + ", ".join(misses) + ")"
        return verdict + "".join(f"; {c}" for c in crashed)

    @property
    def crashed(self) -> bool:
        return self.failed or any(self.failures.values())


def _progress(tool: str, label: str, run: Run) -> None:
    wire = human(run.wire) if run.wire is not None else "-"
    status = "" if run.rc == 0 else f"  EXIT {run.rc}"
    print(f"    {label:<8} {tool:<8} {run.seconds:8.2f} s   wire {wire:>11}   "
          f"peak RSS {human(run.peak_rss_kib * KiB):>10}{status}", flush=True)


def run_scenario(bench: Bench, cls: type[Scenario], reps: int,
                 profile_dir: str | None) -> Outcome:
    """Warm-ups, then `reps` timed runs of each tool alternating which goes first; never
    raises for a broken scenario, whose error goes into the outcome's notes."""
    sc = cls(bench)
    out = Outcome(cls.key, sc.title, sc.targets(), sc)
    print(f"\n== {cls.key}: {sc.title}", flush=True)
    t0 = time.perf_counter()
    try:
        sc.setup()
    except Skip as exc:
        out.skipped = str(exc)
        print(f"   skipped: {exc}")
        return out
    except Exception as exc:
        traceback.print_exc()
        out.failed = True
        out.notes.append(f"setup failed: {type(exc).__name__}: {exc}")
        return out
    print(f"   setup {time.perf_counter() - t0:.1f} s", flush=True)
    tools = [bench.tools[t] for t in TOOLS]

    verified: set[str] = set()

    def one(tool: Tool, label: str) -> Run | None:
        if out.failures[tool.name] >= MAX_FAILURES:
            return None
        sc.reset(tool)
        os.sync()
        run = sc.measure(tool)
        _progress(tool.name, label, run)
        out.attempts[tool.name] += 1
        if run.failure():
            out.failures[tool.name] += 1
            more = (f"; no further {tool.name} runs in {sc.key}"
                    if out.failures[tool.name] >= MAX_FAILURES else "")
            out.notes.append(f"{tool.name} {label}: {run.failure()}{more}")
            return run
        out.notes += [f"{tool.name} {label}: {p}" for p in sc.check(tool, run)]
        if tool.name not in verified:  # deeper checks once, after the first good run
            verified.add(tool.name)
            out.notes += [f"{tool.name} {label}: {p}" for p in sc.verify(tool, run)]
        return run

    try:
        for tool in tools:
            out.warmups[tool.name] = one(tool, "warm-up")
        for rep in range(reps):
            for tool in tools if rep % 2 == 0 else tools[::-1]:
                run = one(tool, f"rep {rep + 1}")
                if run is not None:
                    out.runs[tool.name].append(run)
        if profile_dir:
            out.profile = profile_run(sc, bench.tools["fscsync"], profile_dir)
            print("\n".join("   " + line for line in out.profile))
        out.notes += sc.summary_notes(out)
    except Exception as exc:  # a broken scenario must not stop the others
        traceback.print_exc()
        out.failed = True
        out.notes.append(f"harness error: {type(exc).__name__}: {exc}")
    for note in dict.fromkeys(out.notes):
        print(f"   note: {note}")
    return out

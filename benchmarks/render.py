"""The report: the summary table, results.md, and the results section of benchmarks/README.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections import Counter
from pathlib import Path

from config import TOOLS, Config, KiB, human
from runner import Outcome
from tools import REPO, Tool, engine_fingerprint

README = Path(__file__).resolve().parent / "README.md"
README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"


def _fmt(x: float | None) -> str:
    """A second count or a ratio, "-" when there is none."""
    return "-" if x is None else f"{x:.2f}"


def summary_rows(outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        if o.skipped:
            rows.append([o.key, "-", "-", "-", "-", "-", "-", "-", "-", "-", o.targets,
                         f"SKIPPED: {o.skipped}"])
            continue
        mem = {t: o.median(t, "peak_rss_kib") for t in TOOLS}
        rows.append([
            o.key,
            _fmt(o.median("fscsync", "seconds")), _fmt(o.median("rsync", "seconds")),
            _fmt(o.ratio("seconds")),
            human(o.median("fscsync", "wire")), human(o.median("rsync", "wire")),
            _fmt(o.ratio("wire")),
            human(mem["fscsync"] * KiB if mem["fscsync"] else None),
            human(mem["rsync"] * KiB if mem["rsync"] else None),
            _fmt(o.ratio("peak_rss_kib")),
            o.targets, o.verdict(),
        ])
    return rows


HEADER = ["scenario", "fscsync s", "rsync s", "time ratio", "fscsync wire", "rsync wire",
          "wire ratio", "fscsync RSS", "rsync RSS", "mem ratio", "target (fscsync/rsync)",
          "verdict"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    right = set(range(1, 10))

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def md_table(header: list[str], rows: list[list[str]], left: set[int]) -> str:
    """A Markdown table; columns in `left` are left-aligned, the others right-aligned."""
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False,
                              cwd=REPO).stdout.strip()
    except OSError:
        return ""


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info(work: str, fscsync: Tool) -> dict[str, str]:
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = human(int(line.split()[1]) * KiB)
    distro = platform.system()
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    commit = _cmd("git", "rev-parse", "--short", "HEAD")
    if commit and _cmd("git", "status", "--porcelain", "--untracked-files=no", "--", "fscsync"):
        commit += " + uncommitted changes in fscsync/"
    fs = _cmd("findmnt", "-n", "-o", "FSTYPE", "-T", work)
    return {
        "nproc": _cmd("nproc") or str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "os": distro,
        "rsync": " ".join((_cmd("rsync", "--version") or "rsync ?").splitlines()[0].split()),
        "load": _loadavg(),
        "python": platform.python_version(),
        "fscsync": _cmd(*fscsync.argv, "--version"),
        "commit": commit,
        "fs": fs,
        "engine": engine_fingerprint(),
    }


def describe_reps(reps: dict[str, int]) -> str:
    """Say how many reps ran, e.g. "5 timed repetitions per tool (3 for S1, S3, S5)"."""
    (main, _), *rest = Counter(reps.values()).most_common()
    text = f"{main} timed repetition{'s' if main != 1 else ''} per tool"
    others = [f"{n} for {', '.join(k for k, m in reps.items() if m == n)}" for n, _ in rest]
    return text + (f" ({'; '.join(others)})" if others else "")


def render_markdown(outcomes: list[Outcome], cfg: Config, reps: dict[str, int],
                    reps_arg: int | None, info: dict[str, str], started: datetime.datetime,
                    elapsed: float, only: str | None) -> str:
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    changed = []
    if engine_fingerprint() != info["engine"]:
        head = _cmd("git", "rev-parse", "--short", "HEAD")
        changed = [f"- **the fscsync sources changed while this ran** (fingerprint "
                   f"{info['engine']} at the start, {engine_fingerprint()} at the end, git "
                   f"{head} at the end): later scenarios measured a different engine"]
    lines = [
        "# fscsync vs rsync",
        "",
        f"Measured {date} by `benchmarks/bench.py"
        + (" --quick" if cfg.name == "quick" else "")
        + (f" --only {only}" if only else "")
        + (f" --reps {reps_arg}" if reps_arg else "") + f"` in {elapsed / 60:.1f} min.",
        "",
        f"- machine: {info['nproc']} CPUs, {info['memory']} RAM, kernel {info['kernel']}, "
        f"{info['os']}; trees on {info['fs'] or '?'}; load average {info['load']} at the "
        f"start, {_loadavg()} at the end (other work on the machine skews times)",
        f"- {info['rsync']}; fscsync {info['fscsync'].replace('fscsync version ', '')} "
        f"(git {info['commit']}, sources {info['engine']}), Python {info['python']}",
        f"- {cfg.name} trees: {cfg.describe()}",
        *changed,
        f"- {describe_reps(reps)} after one untimed warm-up each, alternating tools; "
        "medians; ratio = fscsync / rsync",
        "",
        md_table(HEADER, summary_rows(outcomes), {0, 10, 11}),
        "",
        "Wire = Total bytes sent + received from `--stats`. RSS = peak of the summed resident "
        "set of the tool's own processes (client, local peer or remote-side processes; not ssh, "
        "sshd, the remote login shell or /usr/bin/time), sampled every 20 ms.",
        "",
        "## Every run",
        "",
    ]
    detail_header = ["scenario", "tool", "seconds (each rep)", "wire bytes",
                     "peak RSS sum", "peak PSS sum", "largest process (time %M)", "procs",
                     "files transferred"]
    rows = []
    for o in outcomes:
        if o.skipped:
            continue
        for t in TOOLS:
            runs = o.runs[t]
            if not runs:
                continue
            rows.append([
                o.key, t, ", ".join(f"{r.seconds:.2f}" + (" (killed)" if r.killed else
                                                          f" (exit {r.rc})" if r.rc else "")
                                     for r in runs),
                ", ".join(sorted({f"{r.wire:,}" if r.wire is not None else "-" for r in runs})),
                ", ".join(human(r.peak_rss_kib * KiB) for r in runs),
                ", ".join(human(r.peak_pss_kib * KiB) for r in runs),
                ", ".join(human(r.maxrss_kib * KiB) if r.maxrss_kib else "-" for r in runs),
                str(max(r.peak_procs for r in runs)),
                ", ".join(sorted({"-" if r.transferred is None else f"{r.transferred:,}"
                                  for r in runs})),
            ])
    lines += [md_table(detail_header, rows, {0, 1}), ""]
    lines += ["Scenarios:", ""]
    lines += [f"- **{o.key}** {o.title}" for o in outcomes]
    notes = [(o.key, n) for o in outcomes for n in dict.fromkeys(o.notes)]
    notes += [(o.key, f"skipped: {o.skipped}") for o in outcomes if o.skipped]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {k}: {n}" for k, n in notes]
    profiles = [line for o in outcomes for line in o.profile]
    if profiles:
        lines += ["", "## Profiles", "", "```", *profiles, "```"]
    return "\n".join(lines) + "\n"


def update_readme(markdown: str) -> bool:
    """Replace the results section of benchmarks/README.md; False when it has none."""
    try:
        text = README.read_text()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    body = markdown.split("\n", 2)[2]  # drop the "# ..." title line and the blank after it
    body = body.split("\n## Every run", 1)[0].rstrip()
    new = text[:start + len(README_START)] + "\n" + body + "\n" + text[end:]
    README.write_text(new)
    return True

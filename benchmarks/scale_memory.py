"""Peak memory against the number of files (issue 24): fscsync beside rsync on trees of
100,000, 1,000,000 and 10,000,000 small files, so that memory which grows with the file
count shows as a growing column and flat memory as a flat one.

    make bench-scale                                          # all three sizes (hours)
    .venv/bin/python benchmarks/scale_memory.py --quick       # 100,000 and 300,000 files
    .venv/bin/python benchmarks/scale_memory.py --files 100000,1000000

Trees live on fresh XFS filesystems (1 KiB blocks, inodes allocated as needed) made on
sparse files under --workdir and loop-mounted: one for the source, and one for each
tool's destination, made before its runs and deleted after them. The root
filesystem's 16.7 M inodes cannot hold 10 M files and a copy, and deleting an image
takes a second where deleting millions of files on ext4 would slow every file
creation on the machine for minutes. Everything is unmounted and deleted at the end,
after a failure or Ctrl-C too. Needs root.

Per size and tool, one measured run each (memory does not move with load; times do):
initial copy into an empty destination, no-change, `--delete` after 1% of the source's
files were deleted, and `-H` after 1% of the remaining files got a second name in
another directory (the destination gains those links). The source is put back before
the next tool; the tests' tree comparer checks every copy after the runs that change it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trees  # noqa: E402
from config import GiB, KiB, MiB, human  # noqa: E402
from measure import Limits, run_measured  # noqa: E402
from render import machine_info, md_table  # noqa: E402
from scenarios import treecmp  # noqa: E402
from tools import Tool, compile_sources, make_tools  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = "/var/tmp/fscsync-scale"
DEFAULT_RESULTS = HERE / "results-scale-memory.md"
SIZES = (100_000, 1_000_000, 10_000_000)
QUICK = (100_000, 300_000)
TOOLS = ("fscsync", "rsync")
RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("initial", ()), ("no-change", ()), ("--delete", ("--delete",)), ("-H", ("-H",)))
CHECK_MAX = 2_000_000
"""Above this many files the trees are not compared: two snapshots of 10 M entries
would take most of the machine's memory, which other work shares."""
LIMITS = Limits(stall=300.0, timeout=6 * 3600.0)
MKFS = ["mkfs.xfs", "-q", "-f", "-K", "-b", "size=1024", "-i", "maxpct=50"]


@dataclass(frozen=True)
class TreeSpec:
    """The tree of `files` files of 0-199 B: 1,000 a leaf directory, 100 leaves a
    top-level directory; which files the --delete run removes and -H links."""

    files: int
    per_dir: int = 1000
    leaves_per_top: int = 100
    max_size: int = 200

    @property
    def leaves(self) -> int:
        return -(-self.files // self.per_dir)

    @property
    def tops(self) -> int:
        return -(-self.leaves // self.leaves_per_top)

    def leaf_dir(self, leaf: int) -> str:
        return f"t{leaf // self.leaves_per_top:04d}/d{leaf % self.leaves_per_top:03d}"

    def files_of(self, leaf: int) -> range:
        return range(leaf * self.per_dir, min(self.files, (leaf + 1) * self.per_dir))

    def file_path(self, i: int) -> str:
        return f"{self.leaf_dir(i // self.per_dir)}/f{i:08d}"

    def size(self, i: int) -> int:
        """Deterministic and spread over 0..max_size-1 (a multiplicative hash)."""
        return (i * 2_654_435_761 >> 7) % self.max_size

    def deleted(self) -> range:
        """1% of the files, removed from the source before the --delete run."""
        return range(0, self.files, 100)

    def linked(self) -> range:
        """1% of the files (none deleted), each given a second name before the -H run."""
        return range(50, self.files, 100)

    def link_path(self, i: int) -> str:
        """The second name: half the tree away, so in another directory (and, from
        200 leaves on, another top-level directory)."""
        leaf = (i // self.per_dir + self.leaves // 2) % self.leaves
        return f"{self.leaf_dir(leaf)}/h{i:08d}"

    def disk_bytes(self) -> int:
        """What one copy of the tree takes on the XFS: a 512-byte inode and a 1 KiB
        block a file (all but the empty ones), directory blocks, and 1/3 of slack
        for metadata and the log."""
        per_file = 512 + KiB * (self.max_size - 1) // self.max_size
        return (self.files * per_file + self.leaves * 48 * KiB) * 4 // 3


def space_needed(spec: TreeSpec) -> int:
    """The disk that the sparse images really take at once: the source and one copy."""
    return 2 * spec.disk_bytes() + 256 * MiB


def check_space(sizes: list[int], workdir: str) -> None:
    """Refuse, before building anything, when the largest size cannot fit."""
    parent = workdir
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "/"
    free = shutil.disk_usage(parent).free
    need = max(space_needed(TreeSpec(n)) for n in sizes)
    print(f"workdir {workdir}: the largest tree needs about {human(need)}; "
          f"{human(free)} free", flush=True)
    if need > free:
        raise SystemExit(
            f"bench-scale: NOT ENOUGH DISK SPACE in {parent}: {max(sizes):,} files (the "
            f"source and a copy) need about {human(need)} but only "
            f"{human(free)} is free. Free some space, pick another --workdir, or ask "
            f"for fewer --files.")


# --------------------------------------------------------------------------- the filesystem


class LoopXfs:
    """A fresh XFS on a sparse file, loop-mounted; `close` unmounts and deletes it, which
    is also how a tree of millions of files goes away in a second."""

    def __init__(self, workdir: str, name: str, spec: TreeSpec):
        self.image = os.path.join(workdir, f"{name}.img")
        self.mnt = os.path.join(workdir, name)
        self.size = max(4 * GiB, 2 * spec.disk_bytes())
        self.mounted = False
        self.allocated = 0
        """What the image took on disk when it was closed."""

    def open(self) -> str:
        os.makedirs(self.mnt, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        subprocess.run([*MKFS, self.image], check=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.mnt], check=True)
        self.mounted = True
        return self.mnt

    def close(self) -> None:
        """Unmount and delete the image. A tool still running after an interruption (its
        /usr/bin/time was killed, not it) holds the mount: it is killed (fuser -k), and
        the unmount is lazy only if that fails."""
        if self.mounted:
            for attempt in range(5):
                if subprocess.run(["umount", self.mnt], capture_output=True).returncode == 0:
                    break
                if shutil.which("fuser"):
                    subprocess.run(["fuser", "-s", "-k", "-m", self.mnt], check=False)
                time.sleep(1 + attempt)
            else:
                subprocess.run(["umount", "-l", self.mnt], check=False)
            self.mounted = False
        if os.path.exists(self.image):
            self.allocated = os.stat(self.image).st_blocks * 512
            os.unlink(self.image)
        if os.path.isdir(self.mnt):
            os.rmdir(self.mnt)


# --------------------------------------------------------------------------- the tree


POOL = trees.random_bytes(1 << 16, "scale-memory")
"""File contents are slices of one seeded pool, so building costs syscalls only."""


def _make_files(dfd: int, spec: TreeSpec, indices: Iterable[int]) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for i in indices:
        fd = os.open(f"f{i:08d}", flags, 0o644, dir_fd=dfd)
        try:
            size = spec.size(i)
            if size:
                off = (i * 40_503) % (len(POOL) - spec.max_size)
                os.write(fd, POOL[off:off + size])
        finally:
            os.close(fd)


def build_tree(root: str, spec: TreeSpec) -> None:
    for leaf in range(spec.leaves):
        path = os.path.join(root, spec.leaf_dir(leaf))
        os.makedirs(path)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _make_files(dfd, spec, spec.files_of(leaf))
        finally:
            os.close(dfd)
    set_dir_times(root, spec, 0)


def set_dir_times(root: str, spec: TreeSpec, hours: int) -> None:
    """Every directory's mtime to a fixed time `hours` after trees.BASE_NS.

    A directory whose source mtime is in the second its copy was made in keeps its
    creation time under rsync (which compares the seconds first), and the tree
    comparer sees that; times in the past, moved on after each change of the source,
    are also what a real tree's directories look like."""
    ns = trees.BASE_NS + hours * 3600 * 10**9
    tops = {spec.leaf_dir(leaf).split("/")[0] for leaf in range(spec.leaves)}
    for rel in [*(spec.leaf_dir(leaf) for leaf in range(spec.leaves)), *sorted(tops), "."]:
        os.utime(os.path.join(root, rel), ns=(ns, ns))


def delete_some(root: str, spec: TreeSpec) -> int:
    for i in spec.deleted():
        os.unlink(os.path.join(root, spec.file_path(i)))
    return len(spec.deleted())


def link_some(root: str, spec: TreeSpec) -> int:
    for i in spec.linked():
        os.link(os.path.join(root, spec.file_path(i)), os.path.join(root, spec.link_path(i)))
    return len(spec.linked())


def restore(root: str, spec: TreeSpec) -> None:
    """Undo link_some and delete_some (the deleted files come back with their content,
    not their mtimes), so that the next tool starts from the same source."""
    for i in spec.linked():
        os.unlink(os.path.join(root, spec.link_path(i)))
    for leaf in range(spec.leaves):
        mine = spec.files_of(leaf)
        gone = range(-(-mine.start // 100) * 100, mine.stop, 100)  # spec.deleted()'s
        dfd = os.open(os.path.join(root, spec.leaf_dir(leaf)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            _make_files(dfd, spec, gone)
        finally:
            os.close(dfd)
    set_dir_times(root, spec, 0)


# --------------------------------------------------------------------------- runs


@dataclass
class Result:
    """One run of both tools at one size."""

    files: int
    run: str
    rss_kib: dict[str, int] = field(default_factory=dict)
    pss_kib: dict[str, int] = field(default_factory=dict)
    """Shared pages divided among their sharers: fairer to forked processes (fscsync's
    local server, rsync's receiver and generator), sampled every 100 ms."""
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class SizeReport:
    files: int
    build_s: float = 0.0
    image_bytes: int = 0
    """The disk that the source's and one copy's images took at most."""
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compare(src: str, dst: str, content: bool) -> str | None:
    problems = treecmp.diff(treecmp.snapshot(src, xattrs=False, content=content),
                            treecmp.snapshot(dst, xattrs=False, content=content))
    if not problems:
        return None
    return f"{len(problems):,} differences from the source (first: {problems[0]})"


def run_size(spec: TreeSpec, workdir: str, check: bool, report: SizeReport,
             build_only: bool = False) -> None:
    """Build the source on its own XFS, then per tool the four runs into a destination
    on a fresh XFS of its own, which goes when the tool is done; the source is put
    back between the tools."""
    tools = make_tools()
    results = {name: Result(spec.files, name) for name, _ in RUNS}
    report.results = [] if build_only else list(results.values())
    if check and spec.files > CHECK_MAX and not build_only:
        report.notes.append(f"trees not compared: over {CHECK_MAX:,} files")
        check = False
    src_fs = LoopXfs(workdir, f"src-{spec.files}", spec)
    try:
        src = os.path.join(src_fs.open(), "src")
        t0 = time.monotonic()
        build_tree(src, spec)
        os.sync()
        report.build_s = time.monotonic() - t0
        print(f"  built {spec.files:,} files in {spec.leaves:,} directories in "
              f"{report.build_s:.0f} s ({report.build_s * 1e6 / spec.files:.0f} s per "
              "million files, sync included)", flush=True)
        report.image_bytes = os.stat(src_fs.image).st_blocks * 512
        for tool_name in () if build_only else TOOLS:
            dst_fs = LoopXfs(workdir, f"dst-{spec.files}-{tool_name}", spec)
            try:
                dst = os.path.join(dst_fs.open(), "dst")
                for k, (name, extra) in enumerate(RUNS):
                    if name == "--delete":
                        delete_some(src, spec)
                    elif name == "-H":
                        link_some(src, spec)
                    if extra:
                        set_dir_times(src, spec, k)
                    _measure(tools[tool_name], extra, src, dst, results[name], check)
            finally:
                dst_fs.close()
                report.image_bytes = max(report.image_bytes,
                                         dst_fs.allocated + os.stat(src_fs.image).st_blocks * 512)
            restore(src, spec)
    finally:
        src_fs.close()


def _measure(tool: Tool, extra: tuple[str, ...], src: str, dst: str, result: Result,
             check: bool) -> None:
    """One measured run of one tool, and its checks."""
    argv = [*tool.argv, "-a", "--stats", *extra, f"{src}/", dst]
    os.sync()
    run = run_measured(argv, tool.env, counted=tool.comms, limits=LIMITS)
    os.sync()
    result.rss_kib[tool.name] = run.peak_rss_kib
    result.pss_kib[tool.name] = run.peak_pss_kib
    result.seconds[tool.name] = run.seconds
    print(f"  {result.files:,} {result.run} {tool.name}: {run.seconds:.1f} s, peak RSS "
          f"{run.peak_rss_kib / KiB:.1f} MiB ({run.peak_procs} processes)", flush=True)
    failure = run.failure()
    if failure:
        result.notes.append(f"{tool.name}: {failure}")
    elif result.run == "no-change" and run.transferred != 0:
        result.notes.append(f"{tool.name}: transferred {run.transferred} files")
    elif check and result.run != "no-change":
        t0 = time.monotonic()
        problem = compare(src, dst, content=result.run == "initial")
        if problem:
            result.notes.append(f"{tool.name}: {problem}")
        print(f"  compared the copy with the source in {time.monotonic() - t0:.0f} s",
              flush=True)


# --------------------------------------------------------------------------- interpreters


CLIENT_START = "fscsync.cli.main, fscsync.cli.argv, fscsync.cli.progress, fscsync.run.endpoint"
"""What the client imports before a run starts (cli.main's _main)."""
WHOLE_RUN = f"{CLIENT_START}, fscsync.run.session, fscsync.engine.sender, fscsync.engine.receiver"
"""Every fscsync module a local run imports (-X importtime), client and server together."""


def interpreter_rows(reps: int = 5) -> list[list[str]]:
    """Peak RSS of one interpreter at start-up (issue 25), medians of `reps` runs:
    /usr/bin/time's %M for one process (exact), and for a whole run of one file the
    sampled sum over its processes, beside rsync's."""
    tools = make_tools()
    fs, rs = tools["fscsync"], tools["rsync"]
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="scale-interp-") as tmp:
        os.mkdir(os.path.join(tmp, "src"))
        trees.write_random_file(os.path.join(tmp, "src", "one"), MiB, "scale-interp")
        one = ["--bwlimit=1024", f"{tmp}/src/", f"{tmp}/dst"]  # a second: no sampling gap
        cases = [
            ("bare interpreter", [py, "-c", "pass"], fs, False),
            ("the entry point", [py, "-c", "import fscsync.cli.main"], fs, False),
            ("client start-up (cli.main, argv, progress, endpoint)",
             [py, "-c", f"import {CLIENT_START}"], fs, False),
            ("every module of a local run", [py, "-c", f"import {WHOLE_RUN}"], fs, False),
            ("server start-up: `fscsync --server` until EOF", [*fs.argv, "--server"], fs,
             False),
            ("a local run of one 1 MiB file: both processes, summed",
             [*fs.argv, "-a", *one], fs, True),
            ("rsync's local run of the same: its 3 processes, summed",
             [*rs.argv, "-a", *one], rs, True),
        ]
        rows = []
        for label, argv, tool, whole in cases:
            peaks = []
            for _ in range(reps):
                trees.remove(os.path.join(tmp, "dst"))
                run = run_measured(argv, tool.env, counted=tool.comms)
                peaks.append(run.peak_rss_kib if whole else run.maxrss_kib)
            name = "python3" if argv[0] == py else tool.name
            shown = [name, *argv[1:]] if not whole else [name, "-a", *one[:1], "SRC/", "DST"]
            rows.append([label, f"`{shlex.join(shown)}`",
                         f"{statistics.median(peaks) / KiB:.1f} MiB"])
    return rows


# --------------------------------------------------------------------------- the report


def _mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / KiB:.1f} MiB"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def result_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        fr, rr = r.rss_kib.get("fscsync"), r.rss_kib.get("rsync")
        fp, rp = r.pss_kib.get("fscsync"), r.pss_kib.get("rsync")
        fs, rs = r.seconds.get("fscsync"), r.seconds.get("rsync")
        rows.append([f"{r.files:,}", r.run, _mib(fr), _mib(rr), _ratio(fr, rr),
                     _mib(fp), _mib(rp), _ratio(fp, rp),
                     "-" if fs is None else f"{fs:.1f}", "-" if rs is None else f"{rs:.1f}",
                     _ratio(fs, rs), "; ".join(r.notes)])
    return rows


RESULT_HEADER = ["files", "run", "fscsync peak RSS", "rsync peak RSS", "RSS ratio",
                 "fscsync PSS", "rsync PSS", "PSS ratio", "fscsync s", "rsync s", "time ratio",
                 "notes"]


def growth_rows(results: list[Result]) -> list[list[str]]:
    """Per run, each tool's peak RSS from the smallest size to the largest, and the
    slope: what a million more files cost."""
    rows = []
    for name, _ in RUNS:
        mine = sorted((r for r in results if r.run == name), key=lambda r: r.files)
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        cells = [name, f"{lo.files:,} to {hi.files:,}"]
        for tool in TOOLS:
            a, b = lo.rss_kib.get(tool), hi.rss_kib.get(tool)
            if not a or not b:
                cells.append("-")
                continue
            slope = (b - a) / KiB / ((hi.files - lo.files) / 1e6)
            cells.append(f"{a / KiB:.1f} to {b / KiB:.1f} MiB ({slope:+.1f} MiB per M files)")
        rows.append(cells)
    return rows


def render(reports: list[SizeReport], interp: list[list[str]], info: dict[str, str],
           started: datetime.datetime, command: str) -> str:
    results = [r for rep in reports for r in rep.results]
    lines = [
        "# Peak memory against the number of files (issue 24)",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        f"- machine: {info['nproc']} CPUs (`nproc`), {info['memory']} RAM, kernel "
        f"{info['kernel']}, {info['os']}; load average {info['load']} at the start, "
        f"{_loadavg()} at the end",
        f"- {info['rsync']}; {info['fscsync']} (git {info['commit']}; fscsync/ last "
        f"changed in {engine_commit()}), Python {info['python']}",
        "- trees: N files of 0-199 B, 1,000 a directory, 100 directories a top-level "
        "directory; the source on a loop-mounted XFS (1 KiB blocks), each tool's "
        "destination on a fresh one of its own; one run per tool and run, all of "
        "fscsync's, then all of rsync's",
        "- runs: initial copy into an empty destination; no-change; `--delete` after 1% "
        "of the source's files were deleted; `-H` after 1% of the remaining files got a "
        "second name in another directory (both tools `-a --stats`, plus the option)",
        "- peak RSS: the sum over the tool's whole process tree (fscsync's client and "
        "server; rsync's sender, receiver and generator), sampled every 20 ms from /proc "
        "(benchmarks/measure.py); peak PSS likewise every 100 ms (shared pages divided "
        "among the processes sharing them: a forked server's pages count once)",
        "- **memory figures are robust under load; times are not**: the machine is shared "
        "with other work, so a time ratio says little unless it is far from 1",
        "",
    ]
    for rep in reports:
        images = "the source's and a copy's XFS images" if rep.results else "its XFS image"
        lines.append(f"- {rep.files:,} files: tree built in {rep.build_s:.0f} s "
                     f"({rep.build_s * 1e6 / rep.files:.0f} s per million files), "
                     f"{images} took {human(rep.image_bytes)} of disk"
                     + "".join(f"; {n}" for n in rep.notes))
    lines.append("")
    if results:
        lines += [md_table(RESULT_HEADER, result_rows(results), {1, 11}), ""]
    growth = growth_rows(results)
    if growth:
        lines += ["Growth with the file count:", "",
                  md_table(["run", "files", "fscsync", "rsync"], growth, {0, 1, 2, 3}), ""]
    lines += [
        "## One interpreter's cost (issue 25)",
        "",
        "Peak RSS of one process at start-up, `/usr/bin/time`'s `%M` (exact for one "
        "process), and for the two runs of one file the sum over their processes, sampled "
        "every 20 ms as above; medians of 5 runs. A local fscsync run is two interpreters "
        "(the server is a forked copy of the client, so some of its pages are shared; RSS "
        "counts them twice, as it does for rsync's forks).",
        "",
        md_table(["what", "command", "peak RSS"], interp, {0, 1}),
        "",
    ]
    return "\n".join(lines)


def engine_commit() -> str:
    """The commit that last changed fscsync/: the engine measured, whatever the branch."""
    out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", "fscsync"],
                         cwd=HERE.parent, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_files(text: str) -> list[int]:
    sizes = [int(x.replace("_", "").replace(",", "")) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError("a comma-separated list of file counts, each >= 1000")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=parse_files, metavar="N[,N...]",
                   help="file counts (default 100000,1000000,10000000)")
    p.add_argument("--quick", action="store_true", help="100,000 and 300,000 files")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help=f"where the XFS images go (default {DEFAULT_WORKDIR})")
    p.add_argument("--results", default=str(DEFAULT_RESULTS),
                   help="Markdown results file (default benchmarks/results-scale-memory.md)")
    p.add_argument("--no-check", action="store_true",
                   help="do not compare the copies with the source")
    p.add_argument("--build-only", action="store_true",
                   help="only build (and time) each source tree, run nothing")
    args = p.parse_args(argv)
    if args.files and args.quick:
        p.error("--files and --quick do not go together")
    args.sizes = args.files or list(QUICK if args.quick else SIZES)
    return args


def _terminated(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench-scale: needs root, to loop-mount its XFS")
    if shutil.which("mkfs.xfs") is None:
        raise SystemExit("bench-scale: mkfs.xfs is missing (apt-get install xfsprogs)")
    check_space(args.sizes, args.workdir)
    signal.signal(signal.SIGTERM, _terminated)  # so that `finally` unmounts
    started = datetime.datetime.now(datetime.UTC)
    command = shlex.join(["benchmarks/scale_memory.py", *(sys.argv[1:] if argv is None
                                                            else argv)])
    compile_sources()
    os.makedirs(args.workdir, exist_ok=True)
    info = machine_info(args.workdir, make_tools()["fscsync"])
    interp = interpreter_rows()
    for row in interp:
        print(f"  {row[0]}: {row[2]}", flush=True)
    reports: list[SizeReport] = []
    for n in args.sizes:
        spec = TreeSpec(n)
        report = SizeReport(n)
        reports.append(report)
        print(f"{n:,} files:", flush=True)
        run_size(spec, args.workdir, not args.no_check, report, args.build_only)
        Path(args.results).write_text(render(reports, interp, info, started, command))
    print(f"\n{render(reports, interp, info, started, command)}\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""fscsync vs rsync, side by side on the same trees in one run (issue 7).

    .venv/bin/python benchmarks/bench.py              # make bench: full trees, 3 or 5 reps
    .venv/bin/python benchmarks/bench.py --quick      # make bench-quick: small trees, 1 rep
    .venv/bin/python benchmarks/bench.py --only S3,S5 --reps 5 --keep

Scenarios (fscsync / rsync, medians; targets from issue 7):
  S1   initial local copy: one big file + many small files      time <= 1.0
  S2a  no-change rescan of the S1 tree                           time <= 2.0
  S2b  no-change rescan of a 100,000-file tree                   time <= 1.5
  S3   10 random 4 KiB blocks changed in the big file            time <= 0.5, wire <= 0.2
  S4a  S1's small files pushed over ssh to 127.0.0.1, initial    time <= 1.2
  S4b  the same, no change                                       time <= 1.2
  S5   encrypted backup-layout tree, 10 changed blocks           wire <= 0.2
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
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import glob
import hashlib
import importlib.util
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import trees

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_WORKDIR = "/var/tmp/fscsync-bench"
GNU_TIME = "/usr/bin/time"
SAMPLE_INTERVAL = 0.02
PSS_EVERY = 5
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TOOLS = ("fscsync", "rsync")
TOOL_COMMS = {"fscsync": ("fscsync", "python"), "rsync": ("rsync",)}
"""Process names (prefixes) whose memory counts for each tool: the client, a local peer
(`python -m fscsync --server`, rsync's forks) and the remote-side program. Not counted:
/usr/bin/time, ssh, sshd and the remote login shell with whatever its rc files run."""
README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    name: str
    big: int
    small_files: int
    small_dirs: int
    many_files: int
    many_dirs: int
    enc_big: int
    enc_files: int
    enc_dirs: int
    changed_blocks: int
    reps: int
    more_reps: int
    """Reps of the scenarios whose medians need more of them (Scenario.more_reps) to
    ride out the VM's noisier moments."""

    def describe(self) -> str:
        return (f"S1: {human(self.big)} file + {self.small_files:,} files of 100 B-8 KiB in "
                f"{self.small_dirs} dirs; S2b: {self.many_files:,} files in {self.many_dirs} "
                f"dirs; S3: {human(self.big)} file, {self.changed_blocks} changed 4 KiB blocks; "
                f"S5: encrypted {human(self.enc_big)} file + {self.enc_files:,} encrypted "
                f"files in {self.enc_dirs} dirs, {self.changed_blocks} changed blocks")


FULL = Config("full", big=1 * GiB, small_files=10_000, small_dirs=100, many_files=100_000,
              many_dirs=1_000, enc_big=1 * GiB, enc_files=1_000, enc_dirs=10,
              changed_blocks=10, reps=3, more_reps=5)
QUICK = Config("quick", big=128 * MiB, small_files=2_000, small_dirs=20, many_files=10_000,
               many_dirs=100, enc_big=128 * MiB, enc_files=200, enc_dirs=4,
               changed_blocks=10, reps=1, more_reps=1)


def human(n: float | None, unit: str = "B") -> str:
    if n is None:
        return "-"
    for prefix, size in (("Gi", GiB), ("Mi", MiB), ("Ki", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {prefix}{unit}"
    return f"{int(n)} {unit}"


# --------------------------------------------------------------------------- measuring


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss(pid: int) -> int:
    """RSS of one process in KiB from statm (cheap: no page-table walk); 0 once gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB from smaps_rollup; zeros once it is gone.

    smaps_rollup walks the process's page tables under its mmap lock, so it is read
    only every PSS_EVERY samples: at every sample it would slow the tool it measures."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss


@dataclass(frozen=True)
class Limits:
    """When a run is killed: no CPU used by its whole tree for `stall` s, or `timeout` s."""

    stall: float = 30.0
    timeout: float = 1800.0


class TreeSampler(threading.Thread):
    """Every 20 ms, sum RSS (and every 100 ms PSS) over all descendants of `roots`;
    keep the peaks.

    /proc has no children lists on this kernel, so each sample lists /proc and reads
    the parent of each pid it has not seen yet. Only processes whose name starts with
    one of `counted` add to the sums; the others (ssh, sshd, shells, /usr/bin/time) are
    walked through. The sampler also watches
    the tree's CPU time: a tree that uses none for `limits.stall` seconds (two peers
    blocked writing to each other) or runs past `limits.timeout` is killed.
    """

    def __init__(self, roots: list[int], counted: tuple[str, ...], limits: Limits):
        super().__init__(daemon=True)
        self.roots = roots
        self.counted = counted
        self.limits = limits
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.samples = 0
        self.killed: str | None = None
        self._ppids: dict[int, int] = {}
        self._cpu: dict[int, int] = {}
        self._tree: set[int] = set()
        self._done = threading.Event()
        self._start = self._progress = time.monotonic()
        self._last_cpu = -1

    def run(self) -> None:
        while True:
            self.sample()
            if self.killed is None:
                self._watchdog()
            if self._done.wait(SAMPLE_INTERVAL):
                break

    def finish(self) -> None:
        self._done.set()
        self.join()

    def sample(self) -> None:
        children: dict[int, list[int]] = defaultdict(list)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            ppid = self._ppids.get(pid)
            if ppid is None:
                fields = _stat_fields(pid)
                if fields is None:
                    continue
                ppid = self._ppids[pid] = int(fields[1])
            children[ppid].append(pid)
        rss = pss = procs = 0
        todo = list(self.roots)
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(children.get(pid, ()))
            if pid in self.roots[1:]:
                continue  # an extra root (the sshd listener) is only a way into the tree
            fields = _stat_fields(pid)
            if fields is not None and len(fields) > 12:
                self._cpu[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            if not _comm(pid).startswith(self.counted):
                continue
            r, p = _rss_pss(pid) if self.samples % PSS_EVERY == 0 else (_rss(pid), 0)
            if r:
                rss, pss, procs = rss + r, pss + p, procs + 1
        self._tree = seen
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, procs)

    def _watchdog(self) -> None:
        now = time.monotonic()
        cpu = sum(self._cpu.values())
        if cpu != self._last_cpu:
            self._last_cpu, self._progress = cpu, now
        if now - self._progress > self.limits.stall:
            self._kill(f"stalled: its processes used no CPU for {self.limits.stall:g} s "
                       "(deadlock?)")
        elif now - self._start > self.limits.timeout:
            self._kill(f"timed out after {self.limits.timeout:g} s")

    def _kill(self, reason: str) -> None:
        """SIGKILL every process of the tree except extra roots and sshd processes."""
        self.killed = reason
        for pid in self._tree:
            if pid in self.roots[1:] or _comm(pid).startswith("sshd"):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_STAT_RE = {
    "sent": re.compile(r"^Total bytes sent:\s*([\d,]+)", re.M),
    "received": re.compile(r"^Total bytes received:\s*([\d,]+)", re.M),
    "transferred": re.compile(r"^Number of regular files transferred:\s*([\d,]+)", re.M),
}


def _stat(name: str, text: str) -> int | None:
    m = _STAT_RE[name].search(text)
    return int(m.group(1).replace(",", "")) if m else None


@dataclass
class Run:
    seconds: float
    rc: int
    stdout: str
    stderr: str
    peak_rss_kib: int
    peak_pss_kib: int
    peak_procs: int
    maxrss_kib: int
    """/usr/bin/time's %M: the largest single process of the tree (no sampling gaps)."""
    samples: int
    killed: str | None = None

    @property
    def sent(self) -> int | None:
        return _stat("sent", self.stdout)

    @property
    def received(self) -> int | None:
        return _stat("received", self.stdout)

    @property
    def wire(self) -> int | None:
        s, r = self.sent, self.received
        return None if s is None or r is None else s + r

    @property
    def transferred(self) -> int | None:
        return _stat("transferred", self.stdout)

    def failure(self) -> str | None:
        if self.killed:
            return f"killed, {self.killed}"
        if self.rc == 0:
            return None
        tail = " / ".join((self.stderr.strip() or self.stdout.strip())[-600:].splitlines())
        return f"exit {self.rc}: {tail}"


LIMITS = Limits()
MAX_FAILURES = 2
"""A tool that failed this often in one scenario gets no more runs there."""


def run_measured(argv: list[str], env: dict[str, str], extra_roots: list[int] | None = None,
                 counted: tuple[str, ...] = ("",)) -> Run:
    """Run argv once: wall time, exit code, output, and process-tree peak memory.

    The command runs under /usr/bin/time (when installed) only for its max-RSS figure:
    wait4's ru_maxrss of a child forked straight from this (large) Python process would
    report this process's own size. The time process itself is not counted.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r") as maxrss_file:
        wrapped = argv
        if os.access(GNU_TIME, os.X_OK):
            wrapped = [GNU_TIME, "-f", "%M", "-o", maxrss_file.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env)
        sampler = TreeSampler([proc.pid, *(extra_roots or [])], counted, LIMITS)
        sampler.start()
        try:
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            sampler.finish()
            raise
        seconds = time.perf_counter() - t0
        sampler.finish()
        out.seek(0)
        err.seek(0)
        maxrss = 0
        lines = maxrss_file.read().split()
        if lines and lines[-1].isdigit():
            maxrss = int(lines[-1])
        return Run(seconds, proc.returncode, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), sampler.peak_rss, sampler.peak_pss,
                   sampler.peak_procs, maxrss, sampler.samples, sampler.killed)


# --------------------------------------------------------------------------- checks


def _listing(root: str, xattrs: bool) -> dict[bytes, tuple]:
    rootb = os.fsencode(root)
    out: dict[bytes, tuple] = {}

    def add(path: bytes) -> None:
        st = os.lstat(path)
        rel = os.path.relpath(path, rootb)
        is_dir = os.path.isdir(path) and not os.path.islink(path)
        enc = None
        if xattrs:
            try:
                enc = os.getxattr(path, trees.ENCDATA_XATTR, follow_symlinks=False)
            except OSError:
                enc = None
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, 0 if is_dir else st.st_size,
                    st.st_mtime_ns, enc)

    add(rootb)
    for dirpath, dirnames, filenames in os.walk(rootb):
        for name in dirnames + filenames:
            add(os.path.join(dirpath, name))
    return out


def _same_content(a: bytes, b: bytes) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


FIELDS = ("mode", "uid", "gid", "size", "mtime_ns", "encdata")


def compare_trees(src: str, dst: str, xattrs: bool = False, content: bool = True) -> list[str]:
    """Differences between two trees (metadata, optionally content); [] when identical."""
    a, b = _listing(src, xattrs), _listing(dst, xattrs)
    problems: list[str] = []
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    if missing:
        problems.append(f"{len(missing)} missing in dest (e.g. {missing[0]!r})")
    if extra:
        problems.append(f"{len(extra)} extra in dest (e.g. {extra[0]!r})")
    differ: dict[str, list[bytes]] = defaultdict(list)
    for rel in sorted(set(a) & set(b)):
        for i, name in enumerate(FIELDS):
            if a[rel][i] != b[rel][i]:
                differ[name].append(rel)
        if content and os.path.isfile(os.path.join(os.fsencode(src), rel)) and \
                a[rel][3] == b[rel][3] and not _same_content(
                    os.path.join(os.fsencode(src), rel), os.path.join(os.fsencode(dst), rel)):
            differ["content"].append(rel)
    for name, rels in differ.items():
        problems.append(f"{len(rels)} entries differ in {name} (e.g. {rels[0]!r})")
    return problems


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    argv: list[str]
    env: dict[str, str]
    remote_program: str = ""

    @property
    def comms(self) -> tuple[str, ...]:
        return TOOL_COMMS[self.name]


def compile_sources() -> tuple:
    """Compile fscsync's bytecode and return what its sources look like now.

    fscsync is measured as installed, with its bytecode compiled: where
    PYTHONDONTWRITEBYTECODE is set, every run would otherwise recompile any module
    edited since the last .pyc was written (15 ms and 2.4 MiB of peak RSS a run)."""
    compileall.compile_dir(str(REPO / "fscsync"), quiet=1)
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in (REPO / "fscsync").glob("*.py")))


def make_tools() -> dict[str, Tool]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    venv_script = REPO / ".venv" / "bin" / "fscsync"
    if venv_script.exists():
        fscsync = [str(venv_script)]
        remote = str(venv_script)
    else:
        fscsync = [sys.executable, "-m", "fscsync"]
        remote = f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m fscsync"
    rsync = shutil.which("rsync")
    if rsync is None:
        raise SystemExit("bench: rsync is not installed (make install)")
    return {"fscsync": Tool("fscsync", fscsync, env, remote),
            "rsync": Tool("rsync", [rsync], dict(os.environ))}


# --------------------------------------------------------------------------- scenarios


class Skip(Exception):
    """The scenario cannot run on this machine; the message says why."""


@dataclass
class Bench:
    cfg: Config
    work: str
    tools: dict[str, Tool]
    sshd: object = None
    ssh_seconds: float | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    # ---- trees (built once, reused across scenarios and, with --keep, across runs)

    def s1_tree(self) -> dict:
        c = self.cfg
        return trees.ensure(self.path("s1", "src"),
                            {"big": c.big, "files": c.small_files, "dirs": c.small_dirs, "v": 1},
                            lambda root: trees.build_s1(root, c.big, c.small_files, c.small_dirs))

    def many_tree(self) -> dict:
        c = self.cfg
        return trees.ensure(self.path("many", "src"),
                            {"files": c.many_files, "dirs": c.many_dirs, "v": 1},
                            lambda root: trees.build_many(root, c.many_files, c.many_dirs))

    def s3_tree(self) -> dict:
        c = self.cfg
        side = self.path("s3", "old-blocks.bin")
        return trees.ensure(self.path("s3", "src"),
                            {"big": c.big, "changed": c.changed_blocks, "v": 1},
                            lambda root: trees.build_big_changed(root, c.big, c.changed_blocks,
                                                                 side))

    def s5_tree(self) -> dict:
        c = self.cfg
        side = self.path("s5", "old-blocks.bin")
        return trees.ensure(
            self.path("s5", "src"),
            {"big": c.enc_big, "files": c.enc_files, "dirs": c.enc_dirs,
             "changed": c.changed_blocks, "v": 1},
            lambda root: trees.build_encrypted(root, c.enc_big, c.enc_files, c.enc_dirs,
                                               c.changed_blocks, side))

    def ssh_baseline(self) -> float:
        """Median wall time of `ssh HOST true` through the test sshd: the fixed cost of S4."""
        if self.ssh_seconds is None:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([*self.sshd.ssh_argv, self.sshd.host, "true"], check=True,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
                times.append(time.perf_counter() - t0)
            self.ssh_seconds = statistics.median(times)
        return self.ssh_seconds

    def start_sshd(self):
        if self.sshd is not None:
            return self.sshd
        spec = importlib.util.spec_from_file_location("fscsync_bench_sshd",
                                                      REPO / "tests" / "support" / "sshd.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        reason = module.missing_prerequisite()
        if reason:
            raise Skip(f"no test sshd: {reason}")
        sshd_dir = self.path("sshd")
        trees.remove(sshd_dir)
        os.makedirs(sshd_dir)
        self.sshd = module.start_sshd(Path(sshd_dir))
        return self.sshd


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
    """Let ext4 forget the previous bench run's deletions before S1 or S4a is timed: two
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


class Scenario:
    key = ""
    title = ""
    time_target: float | None = None
    wire_target: float | None = None
    mem_target = 2.0
    more_reps = False
    """Config.more_reps of it: its runs take a second or less, so more cost little, or
    its times move most with the VM's disk (S1 writes a GiB a run)."""

    def __init__(self, bench: Bench):
        self.b = bench

    def setup(self) -> None:
        """Build trees and the destinations' starting state (untimed, once)."""

    def command(self, tool: Tool) -> list[str]:
        raise NotImplementedError

    def reset(self, tool: Tool) -> None:
        """Put tool's destination into the starting state (untimed, before every run)."""

    def verify(self, tool: Tool, run: Run) -> list[str]:
        """Deeper checks after the warm-up run: problems found, [] if none."""
        return []

    def check(self, tool: Tool, run: Run) -> list[str]:
        """Cheap checks after every run."""
        return []

    def extra_roots(self) -> list[int]:
        return []

    def summary_notes(self, out: Outcome) -> list[str]:
        """Notes computed from all runs once the scenario is done."""
        return []

    def targets(self) -> str:
        parts = []
        if self.time_target is not None:
            parts.append(f"time ≤ {self.time_target:g}")
        if self.wire_target is not None:
            parts.append(f"wire ≤ {self.wire_target:g}")
        parts.append(f"mem ≤ {self.mem_target:g}")
        return ", ".join(parts)

    def dest(self, tool: Tool) -> str:
        return self.b.path(self.key.lower(), f"dst-{tool.name}")

    def populate(self, src: str, dests: dict[str, str], problems: list[str],
                 xattrs: bool = False) -> None:
        """Bring each tool's destination up to date with its own untimed run.

        If fscsync cannot (it failed or stalled), its destination is filled by rsync
        instead, so the no-change rescan can still be measured; that goes into the notes.
        """
        for tool in self.b.tools.values():
            run = run_measured(self.command(tool), tool.env, self.extra_roots(), tool.comms)
            if run.failure():
                rsync = self.b.tools["rsync"]
                problems.append(f"{tool.name}: its own initial copy failed ({run.failure()}); "
                                f"its destination was populated with rsync -a instead")
                stand_in = Tool(tool.name, rsync.argv, rsync.env)
                again = run_measured(self.command(stand_in), rsync.env, self.extra_roots(),
                                     rsync.comms)
                if again.failure():
                    raise RuntimeError(f"could not populate {dests[tool.name]}: "
                                       f"{again.failure()}")
            problems += [f"{tool.name}: after populating: {p}"
                         for p in compare_trees(src, dests[tool.name], xattrs, content=False)]


class InitialCopy(Scenario):
    """A copy into nothing: each run starts from a removed destination, and the
    warm-up's result is compared with the source."""

    def reset(self, tool: Tool) -> None:
        set_aside(self.dest(tool), self.b.path("trash"))

    def verify(self, tool: Tool, run: Run) -> list[str]:
        return compare_trees(self.src, self.dest(tool))


class S1(InitialCopy):
    key, time_target = "S1", 1.0
    more_reps = True

    @property
    def title(self) -> str:
        c = self.b.cfg
        return (f"initial local copy: {human(c.big)} file + {c.small_files:,} small files "
                f"in {c.small_dirs} dirs")

    def setup(self) -> None:
        self.b.s1_tree()
        self.src = self.b.path("s1", "src")

    def command(self, tool: Tool) -> list[str]:
        return [*tool.argv, "-a", "--stats", self.src + "/", self.dest(tool) + "/"]


class NoChange(Scenario):
    """A no-change rescan of a tree the destination already mirrors."""

    more_reps = True

    which = ""

    def setup(self) -> None:
        if self.which == "s1":
            self.b.s1_tree()
            self.src = self.b.path("s1", "src")
        else:
            self.b.many_tree()
            self.src = self.b.path("many", "src")
        self.problems: list[str] = []
        self.populate(self.src, {t: self.dest(self.b.tools[t]) for t in TOOLS}, self.problems)

    def dest(self, tool: Tool) -> str:
        return self.b.path(self.which, f"dst-{tool.name}")

    def command(self, tool: Tool) -> list[str]:
        return [*tool.argv, "-a", "--stats", self.src + "/", self.dest(tool) + "/"]

    def verify(self, tool: Tool, run: Run) -> list[str]:
        return [p.split(": ", 1)[1] for p in self.problems if p.startswith(tool.name + ":")]

    def check(self, tool: Tool, run: Run) -> list[str]:
        if run.transferred:
            return [f"a no-change run transferred {run.transferred} files"]
        return []


class S2a(NoChange):
    key, which, time_target = "S2a", "s1", 2.0

    @property
    def title(self) -> str:
        return f"no-change rescan of the S1 tree ({self.b.cfg.small_files + 1:,} files)"


class S2b(NoChange):
    key, which, time_target = "S2b", "many", 1.5

    @property
    def title(self) -> str:
        c = self.b.cfg
        return f"no-change rescan of {c.many_files:,} files in {c.many_dirs} dirs"


class Delta(Scenario):
    """A big file with a few changed blocks against a destination holding the old version."""

    rsync_flags: tuple[str, ...] = ()
    encrypted = False

    def setup(self) -> None:
        info = self.tree()
        self.src = self.b.path(self.key.lower(), "src")
        self.rel = info["file"]
        self.changes = trees.ChangeSet.from_json(info["changes"])
        for tool in self.b.tools.values():
            dest = self.dest(tool)
            rm_rf(dest)
            subprocess.run(["cp", "-a", "--reflink=auto", self.src, dest], check=True)
            trees.restore_old(os.path.join(dest, self.rel), self.changes)

    def tree(self) -> dict:
        raise NotImplementedError

    def command(self, tool: Tool) -> list[str]:
        flags = ["-a"] if tool.name == "fscsync" else list(self.rsync_flags)
        return [*tool.argv, *flags, "--stats", self.src + "/", self.dest(tool) + "/"]

    def reset(self, tool: Tool) -> None:
        trees.restore_old(os.path.join(self.dest(tool), self.rel), self.changes)

    def verify(self, tool: Tool, run: Run) -> list[str]:
        return compare_trees(self.src, self.dest(tool), xattrs=self.encrypted)

    def check(self, tool: Tool, run: Run) -> list[str]:
        problems = []
        if run.rc == 0 and not trees.blocks_match(os.path.join(self.dest(tool), self.rel),
                                                  os.path.join(self.src, self.rel),
                                                  self.changes):
            problems.append("the changed blocks did not arrive")
        if run.transferred not in (None, 1):
            problems.append(f"transferred {run.transferred} files, expected 1")
        return problems


class S3(Delta):
    key, time_target, wire_target = "S3", 0.5, 0.2
    rsync_flags = ("-a", "--no-whole-file")

    @property
    def title(self) -> str:
        c = self.b.cfg
        return f"{c.changed_blocks} random 4 KiB blocks changed in a {human(c.big)} file"

    def tree(self) -> dict:
        return self.b.s3_tree()


class S5(Delta):
    key, wire_target = "S5", 0.2
    rsync_flags = ("-aX", "--no-whole-file")
    encrypted = True

    @property
    def title(self) -> str:
        c = self.b.cfg
        return (f"encrypted backup layout ({human(c.enc_big)} file + {c.enc_files:,} files), "
                f"{c.changed_blocks} changed blocks; rsync -aX")

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise Skip("needs root (security.encdata is a security.* xattr)")
        super().setup()

    def tree(self) -> dict:
        return self.b.s5_tree()


class Remote(Scenario):
    """S1's small files pushed over the test sshd on 127.0.0.1."""

    more_reps = True

    def setup(self) -> None:
        self.sshd = self.b.start_sshd()
        self.b.s1_tree()
        self.src = self.b.path("s1", "src", "small")
        os.makedirs(self.b.path("s4"), exist_ok=True)
        self.baseline = self.b.ssh_baseline()

    def summary_notes(self, out: Outcome) -> list[str]:
        f, r = out.median("fscsync", "seconds"), out.median("rsync", "seconds")
        base = self.baseline
        text = (f"`ssh 127.0.0.1 true` alone takes {base:.2f} s here (median of 3: connection "
                f"plus the remote login shell's rc files), and both tools pay it")
        if f is not None and r is not None and r > base:
            text += (f"; without it fscsync {f - base:.2f} s vs rsync {r - base:.2f} s, "
                     f"ratio {(f - base) / (r - base):.2f}")
        return [text]

    def dest(self, tool: Tool) -> str:
        return self.b.path("s4", f"dst-{tool.name}")

    def command(self, tool: Tool) -> list[str]:
        target = f"{self.sshd.host}:{self.dest(tool)}/"
        if tool.remote_program:
            return [*tool.argv, "-a", "--stats", "-e", self.sshd.rsh,
                    "--remote-fscsync", tool.remote_program, self.src + "/", target]
        return [*tool.argv, "-a", "--stats", "-e", self.sshd.rsh, self.src + "/", target]

    def extra_roots(self) -> list[int]:
        return [self.sshd.proc.pid]


class S4a(Remote, InitialCopy):
    key, time_target = "S4a", 1.2

    @property
    def title(self) -> str:
        return f"{self.b.cfg.small_files:,} small files over ssh to 127.0.0.1, initial"


class S4b(Remote):
    key, time_target = "S4b", 1.2

    @property
    def title(self) -> str:
        return f"{self.b.cfg.small_files:,} small files over ssh to 127.0.0.1, no change"

    def setup(self) -> None:
        super().setup()
        self.problems: list[str] = []
        self.populate(self.src, {t: self.dest(self.b.tools[t]) for t in TOOLS}, self.problems)

    def verify(self, tool: Tool, run: Run) -> list[str]:
        return [p.split(": ", 1)[1] for p in self.problems if p.startswith(tool.name + ":")]

    def check(self, tool: Tool, run: Run) -> list[str]:
        if run.transferred:
            return [f"a no-change run transferred {run.transferred} files"]
        return []


SCENARIOS: list[type[Scenario]] = [S1, S2a, S2b, S3, S4a, S4b, S5]


def select(only: str | None) -> list[type[Scenario]]:
    if not only:
        return list(SCENARIOS)
    wanted = [w.strip().upper() for w in only.split(",") if w.strip()]
    chosen = [s for s in SCENARIOS if any(s.key.upper().startswith(w) for w in wanted)]
    unknown = [w for w in wanted if not any(s.key.upper().startswith(w) for s in SCENARIOS)]
    if unknown or not chosen:
        raise SystemExit(f"bench: unknown scenario(s) {', '.join(unknown) or only!r}; "
                         f"choose from {', '.join(s.key for s in SCENARIOS)}")
    return chosen


# --------------------------------------------------------------------------- space


def space_needed(cfg: Config, chosen: list[type[Scenario]], reps: dict[str, int]) -> int:
    """A generous estimate of the bytes the chosen scenarios put on disk (S1 and S4a
    keep every run's copy until the end, see set_aside)."""
    small = cfg.small_files * 8 * KiB + cfg.small_dirs * 4 * KiB
    keys = {s.key for s in chosen}
    need = 0
    if keys & {"S1", "S2a", "S4a", "S4b"}:
        need += cfg.big + small  # the S1 source tree
    if keys & {"S1", "S2a"}:
        need += 2 * (cfg.big + small) * (reps["S1"] + 1 if "S1" in keys else 1)
    if keys & {"S4a", "S4b"}:
        need += 2 * small * (reps["S4a"] + 1 if "S4a" in keys else 1)
    if "S2b" in keys:
        need += 3 * (cfg.many_files * 8 * KiB + cfg.many_dirs * 4 * KiB)
    if "S3" in keys:
        need += 3 * cfg.big
    if "S5" in keys:
        need += 3 * (cfg.enc_big + cfg.enc_files * 8 * KiB)
    return int(need * 1.05) + 256 * MiB


def check_space(cfg: Config, chosen: list[type[Scenario]], reps: dict[str, int],
                work: str) -> None:
    parent = work
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "/"
    usage = shutil.disk_usage(parent)
    reusable = trees.disk_usage(work)
    need = space_needed(cfg, chosen, reps)
    print(f"workdir {work}: needs about {human(need)}; {human(usage.free)} free"
          + (f" + {human(reusable)} already there from a --keep run" if reusable else ""))
    if need > usage.free + reusable:
        raise SystemExit(
            f"bench: NOT ENOUGH DISK SPACE in {parent}: the {cfg.name} benchmark needs about "
            f"{human(need)} but only {human(usage.free + reusable)} is available. "
            f"Free some space, pick another --workdir, or run --quick.")
    vfs = os.statvfs(parent)
    files = cfg.small_files * 4 + cfg.many_files * 3 + cfg.enc_files * 3 + 10_000
    if vfs.f_favail and vfs.f_favail < files:
        raise SystemExit(f"bench: not enough free inodes in {parent}: need about {files:,}, "
                         f"have {vfs.f_favail:,}")


# --------------------------------------------------------------------------- profiling

PROFILE_HOOK = '''\
"""Written by benchmarks/bench.py --profile: cProfile every fscsync process of one run.

The main thread's profile goes to PREFIX-ROLE.prof, each other thread's (cProfile sees
one thread only) to PREFIX-ROLE-thread-NAME.prof when that thread finishes. A local
server is a forked client: it starts a profiler of its own after the fork.
"""
import os
import re
import sys

_out = os.environ.get("FSCSYNC_BENCH_PROFILE")
if _out:
    import atexit
    import cProfile
    import threading

    _role = "server" if "--server" in sys.argv else "client"
    _prof = cProfile.Profile()
    _prof.enable()

    def _dump():
        _prof.disable()
        _prof.dump_stats(f"{_out}-{_role}.prof")

    atexit.register(_dump)

    # A local server is a fork of the client that leaves through os._exit (no
    # atexit): give it its own profiler and dump that on the way out.
    def _forked():
        global _prof, _role
        _prof.disable()
        _prof, _role = cProfile.Profile(), "server"
        _prof.enable()

    os.register_at_fork(after_in_child=_forked)
    _real_exit = os._exit

    def _exit(code):
        _dump()
        _real_exit(code)

    os._exit = _exit
    _thread_run = threading.Thread.run

    def _profiled_run(self):
        prof = cProfile.Profile()
        prof.enable()
        try:
            _thread_run(self)
        finally:
            prof.disable()
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            prof.dump_stats(f"{_out}-{_role}-thread-{name}.prof")

    threading.Thread.run = _profiled_run
'''


def _top(path: str, label: str, n: int) -> list[str]:
    import pstats

    stats = pstats.Stats(path)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    lines = [f"  {label}: {path} (total {stats.total_tt:.2f} s); top functions by own time:"]
    for (filename, line, func), (_, ncalls, tt, ct, _) in rows:
        where = f"{os.path.basename(filename)}:{line}" if line else filename
        lines.append(f"    {tt:7.2f}s own {ct:7.2f}s cum {ncalls:>9,} calls  {func} ({where})")
    return lines


def profile_run(sc: Scenario, tool: Tool, outdir: str, hook_dir: str) -> list[str]:
    """One more untimed fscsync run with cProfile in the client and its server."""
    prefix = os.path.join(outdir, sc.key)
    for old in glob.glob(glob.escape(prefix) + "-*.prof"):
        os.unlink(old)
    env = dict(tool.env)
    env["PYTHONPATH"] = os.pathsep.join([hook_dir, env.get("PYTHONPATH", "")])
    env["FSCSYNC_BENCH_PROFILE"] = prefix
    profiled = Tool(tool.name, tool.argv, env,
                    f"env PYTHONPATH={shlex.quote(env['PYTHONPATH'])} "
                    f"FSCSYNC_BENCH_PROFILE={shlex.quote(prefix)} {tool.remote_program}")
    sc.reset(profiled)
    os.sync()
    run = run_measured(sc.command(profiled), env, sc.extra_roots(), tool.comms)
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


# --------------------------------------------------------------------------- running


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
                 profile_dir: str | None, hook_dir: str | None) -> Outcome:
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
        run = run_measured(sc.command(tool), tool.env, sc.extra_roots(), tool.comms)
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
        if profile_dir and hook_dir:
            out.profile = profile_run(sc, bench.tools["fscsync"], profile_dir, hook_dir)
            print("\n".join("   " + line for line in out.profile))
        out.notes += sc.summary_notes(out)
    except Exception as exc:  # a broken scenario must not stop the others
        traceback.print_exc()
        out.failed = True
        out.notes.append(f"harness error: {type(exc).__name__}: {exc}")
    for note in dict.fromkeys(out.notes):
        print(f"   note: {note}")
    return out


# --------------------------------------------------------------------------- reporting


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_s(x: float | None) -> str:
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
            _fmt_s(o.median("fscsync", "seconds")), _fmt_s(o.median("rsync", "seconds")),
            _fmt_ratio(o.ratio("seconds")),
            human(o.median("fscsync", "wire")), human(o.median("rsync", "wire")),
            _fmt_ratio(o.ratio("wire")),
            human(mem["fscsync"] * KiB if mem["fscsync"] else None),
            human(mem["rsync"] * KiB if mem["rsync"] else None),
            _fmt_ratio(o.ratio("peak_rss_kib")),
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


def engine_fingerprint() -> str:
    """A hash of the engine's sources, to notice an engine edited while the benchmark ran."""
    digest = hashlib.sha1()
    for path in sorted((REPO / "fscsync").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    return digest.hexdigest()[:12]


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
    readme = HERE / "README.md"
    try:
        text = readme.read_text()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    body = markdown.split("\n", 2)[2]  # drop the "# ..." title line and the blank after it
    body = body.split("\n## Every run", 1)[0].rstrip()
    new = text[:start + len(README_START)] + "\n" + body + "\n" + text[end:]
    readme.write_text(new)
    return True


# --------------------------------------------------------------------------- main


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
                   help="before S1 or S4a, wait until the previous run's deletions are S "
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
        sys.path.insert(0, str(REPO))  # trees.py imports fscsync.cipher for S5
    cfg = QUICK if args.quick else FULL
    global LIMITS
    LIMITS = Limits(args.stall or (10.0 if args.quick else 30.0),
                    args.timeout or (300.0 if args.quick else 1800.0))
    chosen = select(args.only)
    reps = {cls.key: args.reps or (cfg.more_reps if cls.more_reps else cfg.reps)
            for cls in chosen}
    work = os.path.join(os.path.abspath(args.workdir), cfg.name)
    check_space(cfg, chosen, reps, work)
    os.makedirs(work, exist_ok=True)
    hook_dir = None
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        args.profile = os.path.abspath(args.profile)
        hook_dir = os.path.join(work, "profile-hook")
        os.makedirs(hook_dir, exist_ok=True)
        Path(hook_dir, "sitecustomize.py").write_text(PROFILE_HOOK)
    bench = Bench(cfg, work, make_tools())
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
            outcomes.append(run_scenario(bench, cls, reps[cls.key], args.profile, hook_dir))
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
        print(f"updated the results section of {HERE / 'README.md'}")
    if engine_fingerprint() != info["engine"]:
        print("warning: the fscsync sources changed while the benchmark ran; see results.md")
    if args.keep:
        print(f"kept trees in {work}")
    return 1 if crashed or any(o.crashed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

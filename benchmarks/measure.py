"""Measuring one run: wall time, exit code, output and the peak memory of its process tree.

The same code measures both tools, so their figures compare: peak RSS (and PSS) is
summed over every process of the tool's tree, sampled from /proc, and the wire bytes
come from each tool's own --stats.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

GNU_TIME = "/usr/bin/time"
SAMPLE_INTERVAL = 0.02
PSS_EVERY = 5


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


def run_measured(argv: list[str], env: dict[str, str], extra_roots: list[int] | None = None,
                 counted: tuple[str, ...] = ("",), limits: Limits = Limits()) -> Run:
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
        sampler = TreeSampler([proc.pid, *(extra_roots or [])], counted, limits)
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

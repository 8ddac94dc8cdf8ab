"""The scenarios S1 to S5: their trees, commands, starting states and checks."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import trees
from config import Config, human
from measure import Limits, Run, run_measured
from tools import REPO, Tool
from workdir import rm_rf, set_aside

if TYPE_CHECKING:
    from runner import Outcome


def _support(name: str) -> ModuleType:
    """Load tests/support/NAME.py by its path: that package's __init__ imports pytest."""
    spec = importlib.util.spec_from_file_location(f"fscsync_bench_{name}",
                                                  REPO / "tests" / "support" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


treecmp = _support("treecmp")


def compare_trees(src: str, dst: str, xattrs: bool = False, content: bool = True) -> list[str]:
    """The tests' tree comparison of a destination with its source, as one note; [] when
    they match."""
    problems = treecmp.diff(treecmp.snapshot(src, xattrs=xattrs, content=content),
                            treecmp.snapshot(dst, xattrs=xattrs, content=content))
    if not problems:
        return []
    many = "s" if len(problems) > 1 else ""
    return [f"{len(problems)} difference{many} from the source (first: {problems[0]})"]


class Skip(Exception):
    """The scenario cannot run on this machine; the message says why."""


@dataclass
class Bench:
    """What the scenarios of one run share: sizes, workdir, tools, limits, the sshd."""

    cfg: Config
    work: str
    tools: dict[str, Tool]
    limits: Limits = Limits()
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

    def s6_tree(self) -> dict:
        c = self.cfg
        return trees.ensure(self.path("s6", "src"),
                            {"big": c.st_big, "files": c.st_files, "dirs": c.st_dirs, "v": 1},
                            lambda root: trees.build_s1(root, c.st_big, c.st_files, c.st_dirs))

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
        """The tests' throwaway sshd on 127.0.0.1, started once for S4a and S4b."""
        if self.sshd is not None:
            return self.sshd
        module = _support("sshd")
        reason = module.missing_prerequisite()
        if reason:
            raise Skip(f"no test sshd: {reason}")
        sshd_dir = self.path("sshd")
        trees.remove(sshd_dir)
        os.makedirs(sshd_dir)
        self.sshd = module.start_sshd(Path(sshd_dir))
        return self.sshd


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

    def measure(self, tool: Tool) -> Run:
        """One run of tool's command, measured."""
        return run_measured(self.command(tool), tool.env, self.extra_roots(), tool.comms,
                            self.b.limits)


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


class S1f(S1):
    """S1 with --fsync on both sides (issue 22): each file synced before its rename.
    No target: it shows what durability costs next to rsync's; fsync_cost.py sets it
    against S1 itself."""

    key, time_target = "S1f", None
    more_reps = False  # each run syncs 10,000 files: a run takes three times S1's

    @property
    def title(self) -> str:
        return f"{super().title}, --fsync"

    def setup(self) -> None:
        super().setup()
        os.makedirs(self.b.path("s1f"), exist_ok=True)

    def command(self, tool: Tool) -> list[str]:
        return [*tool.argv, "-a", "--fsync", "--stats", self.src + "/", self.dest(tool) + "/"]


class Populated(Scenario):
    """A rescan of a tree each destination already mirrors: setup populates them."""

    more_reps = True

    def populate(self) -> None:
        """Bring each tool's destination up to date with its own untimed run.

        If fscsync cannot (it failed or stalled), its destination is filled by rsync
        instead, so the no-change rescan can still be measured; that goes into the notes.
        """
        self.problems: list[str] = []
        for tool in self.b.tools.values():
            run = self.measure(tool)
            if run.failure():
                rsync = self.b.tools["rsync"]
                self.problems.append(f"{tool.name}: its own initial copy failed "
                                     f"({run.failure()}); its destination was populated "
                                     "with rsync -a instead")
                again = self.measure(Tool(tool.name, rsync.argv, rsync.env))
                if again.failure():
                    raise RuntimeError(f"could not populate {self.dest(tool)}: "
                                       f"{again.failure()}")
            self.problems += [f"{tool.name}: after populating: {p}"
                              for p in compare_trees(self.src, self.dest(tool), content=False)]

    def verify(self, tool: Tool, run: Run) -> list[str]:
        return [p.split(": ", 1)[1] for p in self.problems if p.startswith(tool.name + ":")]

    def check(self, tool: Tool, run: Run) -> list[str]:
        if run.transferred:
            return [f"a no-change run transferred {run.transferred} files"]
        return []


class NoChange(Populated):
    """A no-change local rescan."""

    which = ""
    """The tree: Bench's `<which>_tree` builds it in `<which>/src`."""

    def setup(self) -> None:
        getattr(self.b, f"{self.which}_tree")()
        self.src = self.b.path(self.which, "src")
        self.populate()

    def dest(self, tool: Tool) -> str:
        return self.b.path(self.which, f"dst-{tool.name}")

    def command(self, tool: Tool) -> list[str]:
        return [*tool.argv, "-a", "--stats", self.src + "/", self.dest(tool) + "/"]


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


class S6a(S1):
    """S1's shape at a twentieth of its bytes: what a user syncing a small project feels,
    start-up included (issue 25)."""

    key, time_target = "S6a", 1.2

    @property
    def title(self) -> str:
        c = self.b.cfg
        return (f"small tree, initial: {human(c.st_big)} file + {c.st_files:,} small files "
                f"in {c.st_dirs} dirs")

    def setup(self) -> None:
        self.b.s6_tree()
        self.src = self.b.path("s6", "src")
        os.makedirs(self.b.path("s6a"), exist_ok=True)


class S6b(NoChange):
    key, which, time_target = "S6b", "s6", 1.2

    @property
    def title(self) -> str:
        return f"small tree, no change ({self.b.cfg.st_files + 1:,} files)"


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


class S4b(Remote, Populated):
    key, time_target = "S4b", 1.2

    @property
    def title(self) -> str:
        return f"{self.b.cfg.small_files:,} small files over ssh to 127.0.0.1, no change"

    def setup(self) -> None:
        super().setup()
        self.populate()


SCENARIOS: list[type[Scenario]] = [S1, S1f, S2a, S2b, S3, S4a, S4b, S5, S6a, S6b]


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

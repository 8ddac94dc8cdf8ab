"""The two tools under test: how each is started and which processes count as its own."""

from __future__ import annotations

import compileall
import hashlib
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOL_COMMS = {"fscsync": ("fscsync", "python"), "rsync": ("rsync",)}
"""Process names (prefixes) whose memory counts for each tool: the client, a local peer
(`python -m fscsync --server`, rsync's forks) and the remote-side program. Not counted:
/usr/bin/time, ssh, sshd and the remote login shell with whatever its rc files run."""


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
    return tuple(sorted((str(p.relative_to(REPO)), p.stat().st_mtime_ns)
                        for p in (REPO / "fscsync").rglob("*.py")))


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


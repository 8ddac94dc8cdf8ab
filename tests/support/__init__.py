"""Shared test helpers: run the CLI and rsync as subprocesses, root-only markers.

Tests import these as `from support import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _expected_code(check: bool | int | None) -> int | None:
    """None/False: don't check; True: exit 0; an int: exactly that exit code."""
    if check is None or check is False:
        return None
    return 0 if check is True else check


def _run(
    argv: list[Arg], *, input: bytes | None, check: bool | int | None,
    env: Mapping[str, str] | None, cwd: Arg | None, timeout: float,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv capturing output; PYTHONPATH points at this checkout so peers run its code."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    proc = subprocess.run(argv, input=input, capture_output=True, env=full_env, cwd=cwd,
                          timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    expected = _expected_code(check)
    if expected is not None and proc.returncode != expected:
        raise AssertionError(
            f"{argv!r} exited {proc.returncode}, expected {expected}\n"
            f"--- stdout:\n{proc.stdout.decode(errors='replace')}"
            f"--- stderr:\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def run_fscsync(
    *args: Arg, input: bytes | None = None, check: bool | int | None = None,
    env: Mapping[str, str] | None = None, cwd: Arg | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run this checkout's fscsync (`python -m fscsync ARGS`) in a subprocess."""
    return _run([sys.executable, "-m", "fscsync", *args], input=input, check=check, env=env,
                cwd=cwd, timeout=timeout)


def run_rsync(
    *args: Arg, input: bytes | None = None, check: bool | int | None = None,
    env: Mapping[str, str] | None = None, cwd: Arg | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run the system rsync (the reference behaviour); skips the test if it is missing."""
    rsync = shutil.which("rsync")
    if rsync is None:
        pytest.skip("rsync not installed")
    return _run([rsync, *args], input=input, check=check, env=env, cwd=cwd, timeout=timeout)

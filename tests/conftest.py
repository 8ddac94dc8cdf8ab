"""Project-wide fixtures: byte tmp paths, CLI runners, and a real sshd on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import run_fscsync, run_rsync
from support.sshd import Sshd, missing_prerequisite, start_sshd


@pytest.fixture
def tmp_bytes(tmp_path: Path) -> bytes:
    """tmp_path as bytes, for tests that build paths with non-UTF-8 names."""
    return bytes(tmp_path)


@pytest.fixture(name="run_fscsync")
def run_fscsync_fixture() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """support.run_fscsync, for tests that prefer a fixture to an import."""
    return run_fscsync


@pytest.fixture(name="run_rsync")
def run_rsync_fixture() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """support.run_rsync; the helper itself skips the test when rsync is missing."""
    return run_rsync


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One sshd for the whole session on 127.0.0.1; skips without root or openssh."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()

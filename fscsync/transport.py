"""Starting the peer process: `ssh host fscsync --server` or a local `fscsync --server`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from fscsync.endpoint import Endpoint
from fscsync.errors import STARTUP, FscsyncError


class Peer:
    """The spawned other side: its pipes and its process."""

    def __init__(self, proc: subprocess.Popen, argv: list[str]):
        self.proc = proc
        self.argv = argv
        self.rfd = proc.stdout.fileno()
        self.wfd = proc.stdin.fileno()

    def close(self, timeout: float = 30.0) -> int:
        """Close our ends and wait for the peer; returns its exit status."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def local_server_command() -> list[str]:
    return [sys.executable, "-m", "fscsync", "--server"]


def remote_command(ep: Endpoint, rsh: str, remote_program: str | None) -> list[str]:
    try:
        argv = shlex.split(rsh)
    except ValueError as exc:
        raise FscsyncError(f"cannot parse --rsh {rsh!r}: {exc}", 1) from None
    if not argv:
        raise FscsyncError("empty --rsh command", 1)
    if ep.user:
        argv += ["-l", ep.user]
    argv.append(ep.host)
    program = remote_program or "fscsync"
    argv += [program, "--server"]
    return argv


def spawn(argv: list[str]) -> Peer:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                close_fds=True, env=dict(os.environ))
    except OSError as exc:
        raise FscsyncError(f"failed to exec {argv[0]}: {exc.strerror}", STARTUP) from None
    return Peer(proc, argv)

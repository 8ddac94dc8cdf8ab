"""Starting the peer process: `ssh host fscsync --server`, or the local server."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable

from fscsync.endpoint import Endpoint
from fscsync.errors import SIGNAL, STARTUP, FscsyncError


class Peer:
    """The spawned other side: its pipes and its process."""

    def __init__(self, proc, argv: list[str]):
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
        import subprocess

        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()


class ForkedPeer:
    """The local server as a forked copy of this process: the same `--server` code on
    the same kind of pipes, without starting and importing a second interpreter
    (about a tenth of a second, which is most of a small no-change run)."""

    def __init__(self, pid: int, rfd: int, wfd: int):
        self.pid = pid
        self.rfd = rfd
        self.wfd = wfd
        self._status: int | None = None

    def close(self, timeout: float = 30.0) -> int:
        """Close our ends and wait for the peer; returns its exit status (minus the
        signal number when a signal ended it, as subprocess reports it)."""
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rfd = self.wfd = -1
        deadline = time.monotonic() + timeout
        while self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                self.kill()
                self._status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            else:
                time.sleep(0.005)
        return self._status

    def kill(self) -> None:
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def local_server_command() -> list[str]:
    return [sys.executable, "-m", "fscsync", "--server"]


def fork_server(serve: Callable[[int, int], int]) -> ForkedPeer | Peer:
    """Run `serve(rfd, wfd)` in a forked child as the local peer. A process that
    already runs threads cannot fork safely, so it spawns `fscsync --server`."""
    if threading.active_count() > 1:
        return spawn(local_server_command())
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            os.close(down_w)
            os.close(up_r)
            code = serve(down_r, up_w)
        except BaseException:
            code = SIGNAL
        finally:
            os._exit(code)
    os.close(down_r)
    os.close(up_w)
    return ForkedPeer(pid, up_r, down_w)


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
    # Imported here: a local run never spawns, and subprocess costs it 1 MB.
    import subprocess

    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                close_fds=True, env=dict(os.environ))
    except OSError as exc:
        raise FscsyncError(f"failed to exec {argv[0]}: {exc.strerror}", STARTUP) from None
    return Peer(proc, argv)

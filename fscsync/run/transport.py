"""Starting the peer process: `ssh host fscsync --server`, or the local server."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable

from fscsync.errors import SIGNAL, ExecFailed, UsageError, escape_peer
from fscsync.run.endpoint import Endpoint

STOP_GRACE_S = 5.0
"""How long a peer told to stop may take to clean up before it is killed."""
RELAY_DRAIN_S = 2.0
"""How long a peer's last stderr lines may take to arrive once it has ended."""
RELAY_LINE = 64 << 10
"""Bytes of one stderr line held at most before they are shown."""


class Peer:
    """The other side as a child process and its two pipes: `fscsync --server` (or the
    remote shell that starts it) spawned from a command line, or a forked copy of this
    process running the same server code without starting and importing a second
    interpreter (about a tenth of a second, which is most of a small no-change run)."""

    def __init__(self, pid: int, rfd: int, wfd: int, argv: list[str] | None = None,
                 relay: threading.Thread | None = None):
        self.pid = pid
        self.rfd = rfd
        self.wfd = wfd
        self.argv = argv
        """The command line, or None for a forked server."""
        self.relay = relay
        """The thread that copies a spawned peer's stderr to ours (relay_stderr)."""
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
        nap = 0.0005  # the peer usually ends within a few ms of its last frame
        while self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                self.kill()
                self._status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            else:
                time.sleep(nap)
                nap = min(nap * 2, 0.05)
        if self.relay is not None:  # its last lines (why ssh failed) before ours
            self.relay.join(RELAY_DRAIN_S)
            self.relay = None
        return self._status

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """End the peer before the exchange is over: SIGTERM first, which a server
        handles as SIGINT (its temp files removed, the partial file kept with
        --partial; ssh ends and so the remote server sees the end of its input), and
        SIGCONT, in case it was stopped (a peer frozen with SIGSTOP is what --timeout
        gives up on); then our ends of the pipes close; SIGKILL only if it is still
        there after `grace`."""
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                os.kill(self.pid, signal.SIGCONT)  # a stopped peer could not clean up
            except ProcessLookupError:
                pass
        return self.close(grace)

    def kill(self) -> None:
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def local_server_command() -> list[str]:
    return [sys.executable, "-m", "fscsync", "--server"]


def fork_server(serve: Callable[[int, int], int]) -> Peer:
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
    return Peer(pid, up_r, down_w)


def remote_command(ep: Endpoint, rsh: str, remote_program: str | None) -> list[str]:
    try:
        argv = shlex.split(rsh)
    except ValueError as exc:
        raise UsageError(f"cannot parse --rsh {rsh!r}: {exc}") from None
    if not argv:
        raise UsageError("empty --rsh command")
    if ep.user:
        argv += ["-l", ep.user]
    argv.append(ep.host)
    program = remote_program or "fscsync"
    argv += [program, "--server"]
    return argv


def spawn(argv: list[str]) -> Peer:
    """Start argv on three new pipes as its stdin, stdout and stderr (posix_spawn:
    subprocess would cost every remote run its import, a few milliseconds before ssh
    starts); its stderr reaches ours through relay_stderr."""
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        # A client started with stdin closed gets down_r as 0: a dup2 action onto the
        # same number clears close-on-exec (POSIX, Austin Group issue 411; glibc, musl).
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, down_r, 0),
                                            (os.POSIX_SPAWN_DUP2, up_w, 1),
                                            (os.POSIX_SPAWN_DUP2, err_w, 2)],
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        for fd in (down_r, down_w, up_r, up_w, err_r, err_w):
            os.close(fd)
        raise ExecFailed(program=os.fsencode(argv[0]), reason=exc) from None
    for fd in (down_r, up_w, err_w):
        os.close(fd)
    relay = threading.Thread(target=relay_stderr, args=(err_r,), name="peer-stderr",
                             daemon=True)
    relay.start()
    return Peer(pid, up_r, down_w, argv, relay)


def relay_stderr(fd: int) -> None:
    """Copy the peer's stderr (ssh's messages, the remote shell's, the remote server's)
    to ours line by line, escaped as the peer's frames are: a hostile server must not
    reach the terminal this way either. ssh ends its lines with \\r\\n: the \\r goes."""
    pending = b""
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        if len(pending) > RELAY_LINE:  # a line without end is shown in pieces
            lines.append(pending)
            pending = b""
        _relay_lines(lines)
    _relay_lines([pending] if pending else [])
    os.close(fd)


def _relay_lines(lines: list[bytes]) -> None:
    if not lines or sys.stderr is None:  # None: started with descriptor 2 closed
        return
    text = "".join(escape_peer(ln[:-1] if ln.endswith(b"\r") else ln) + "\n" for ln in lines)
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # our stderr is closed, or gone
        pass

"""Issue 22: --timeout and --contimeout, for runs nobody watches.

A far side frozen with SIGSTOP in the middle of a big file, locally and through the
test sshd: --timeout=3 ends the run with rsync's exit 30 and its line, the file being
built is removed, every file under its final name is one whole version (the old copy
or the new), and the frozen process does not stay behind. A frozen client is given
up on by the server the same way. --contimeout bounds the wait for the handshake
(exit 35). The checks are of outcomes only; the subprocess timeouts are hang guards.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import run_fscsync
from support.peer import default_options
from support.treecmp import assert_same_tree
from test_kill import (
    ENV,
    T_A,
    T_B,
    MiB,
    _alive,
    _children,
    _holders,
    _local_rsh,
    _partial,
    _popen,
    _put,
    _wait_gone,
)
from test_kill import temp_files as _temp_files

from fscsync.errors import IoTimeout
from fscsync.wire import protocol
from fscsync.wire.protocol import Channel

T_OLD, T_NEW = T_A, T_B
HANG_GUARD_S = 60
"""Generous bounds on waits that only guard against a hang, never timed."""


# ---- helpers ---------------------------------------------------------------------------


def _versions(tmp: Path) -> tuple[Path, Path, dict[str, set[str]]]:
    """src (new) and dst (old copies of the same names), and each name's two digests."""
    src, dst = tmp / "src", tmp / "dst"
    rnd = random.Random(22)
    allowed: dict[str, set[str]] = {}
    files = {"big": 8 * MiB, **{f"d/f{i:02d}": rnd.randrange(1, 4000) for i in range(40)}}
    for name, size in files.items():
        for root, ns in ((dst, T_OLD), (src, T_NEW)):
            data = rnd.randbytes(size)
            _put(root / name, data, ns)
            allowed.setdefault(name, set()).add(hashlib.sha256(data).hexdigest())
    return src, dst, allowed


def _check_dest(dst: Path, allowed: dict[str, set[str]]) -> None:
    """No temp file; every file whole, old or new; none missing."""
    assert not _temp_files(dst), _temp_files(dst)
    for name, digests in allowed.items():
        got = hashlib.sha256((dst / name).read_bytes()).hexdigest()
        assert got in digests, f"{name} is neither the old nor the new copy"



def _wait_until(what: str, proc: subprocess.Popen[bytes], cond) -> object:
    """Poll cond() until it is truthy (its value) while proc runs."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        time.sleep(0.005)
    raise AssertionError(f"no {what} within {HANG_GUARD_S} s")


class Frozen:
    """Processes stopped by a test; teardown lets them go on, then kills what is left."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def stop(self, pid: int) -> None:
        self.pids.append(pid)
        os.kill(pid, signal.SIGSTOP)

    def release(self) -> None:
        for pid in self.pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass


@pytest.fixture
def frozen():
    f = Frozen()
    try:
        yield f
    finally:
        f.release()


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text
    return proc.returncode, text


# ---- the far side frozen ----------------------------------------------------------------


@pytest.mark.parametrize("compress", [[], ["-z"]], ids=["plain", "compressed"])
def test_frozen_local_server_ends_the_run_with_exit_30(tmp_path: Path, frozen: Frozen,
                                                        compress: list[str]) -> None:
    """The forked receiver is stopped with the big file half written: the sending client
    gives up with exit 30, and reaps the server (which removes its temp file)."""
    src, dst, allowed = _versions(tmp_path)
    proc = _popen("-a", "--timeout=3", "--bwlimit=2M", *compress, f"{src}/", dst)
    _wait_until("the big file half written", proc, lambda: _partial(dst, "big"))
    server = _children(proc.pid)[0]
    frozen.stop(server)
    code, err = _finish(proc)
    assert code == 30, err
    assert "[sender] io timeout after 3 seconds -- exiting" in err, err
    assert not _alive(server), "the frozen server was left behind"
    _check_dest(dst, allowed)


def test_frozen_sender_of_a_pull_ends_the_run_with_exit_30(tmp_path: Path,
                                                            frozen: Frozen) -> None:
    """A pull: the server sends, the client receives and builds the files; the server is
    stopped mid-file, the receiving client ends with exit 30 and cleans up."""
    src, dst, allowed = _versions(tmp_path)
    proc = _popen("-a", "--timeout=3", "--bwlimit=2M", "-e", _local_rsh(tmp_path),
                  f"localhost:{src}/", dst)
    _wait_until("the big file half written", proc, lambda: _partial(dst, "big"))
    server = _children(proc.pid)[0]
    frozen.stop(server)
    code, err = _finish(proc)
    assert code == 30, err
    assert "[receiver] io timeout after 3 seconds -- exiting" in err, err
    assert not _alive(server), "the frozen server was left behind"
    _check_dest(dst, allowed)


def test_frozen_local_client_is_given_up_by_the_server(tmp_path: Path,
                                                       frozen: Frozen) -> None:
    """The client (sender) is stopped: its forked server ends by itself after the
    timeout (it does not linger), removing its temp file; the client, let go on, reads
    the server's reason and ends with exit 30 too."""
    src, dst, allowed = _versions(tmp_path)
    proc = _popen("-a", "--timeout=3", "--bwlimit=2M", f"{src}/", dst)
    _wait_until("the big file half written", proc, lambda: _partial(dst, "big"))
    server = _children(proc.pid)[0]
    frozen.stop(proc.pid)
    assert not _wait_gone([server], HANG_GUARD_S), "the server lingers after its client froze"
    _check_dest(dst, allowed)
    os.kill(proc.pid, signal.SIGCONT)
    code, err = _finish(proc)
    assert code == 30, err
    assert "[receiver] io timeout after 3 seconds -- exiting" in err, err


def test_frozen_remote_server_over_ssh(sshd, tmp_path: Path, frozen: Frozen) -> None:
    """A push through the test sshd; the remote receiver is stopped mid-file. The client
    ends with exit 30 (ssh, its child, is reaped); the remote server, let go on, finds
    its client gone, removes its temp file and ends."""
    src, dst, allowed = _versions(tmp_path)
    remote = ["-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync]
    proc = _popen("-a", "--timeout=3", "--bwlimit=2M", *remote, f"{src}/", f"{sshd.host}:{dst}")
    _wait_until("the big file half written", proc, lambda: _partial(dst, "big"))
    server = _holders(dst)[0]
    kids = _children(proc.pid)
    frozen.stop(server)
    code, err = _finish(proc)
    assert code == 30, err
    assert "[sender] io timeout after 3 seconds -- exiting" in err, err
    assert not [k for k in kids if _alive(k)], "ssh was left behind"
    os.kill(server, signal.SIGCONT)
    assert not _wait_gone([server], HANG_GUARD_S), "the remote server did not end once let go on"
    _check_dest(dst, allowed)


def test_frozen_client_over_ssh_is_given_up_by_the_remote_server(sshd, tmp_path: Path,
                                                                 frozen: Frozen) -> None:
    """The pushing client is stopped (ssh goes on): the remote server ends by itself
    after the timeout, with its temp file removed."""
    src, dst, allowed = _versions(tmp_path)
    remote = ["-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync]
    proc = _popen("-a", "--timeout=3", "--bwlimit=2M", *remote, f"{src}/", f"{sshd.host}:{dst}")
    _wait_until("the big file half written", proc, lambda: _partial(dst, "big"))
    server = _holders(dst)[0]
    frozen.stop(proc.pid)
    left = _wait_gone([server], HANG_GUARD_S)
    assert not left, "the remote server lingers after its client froze"
    _check_dest(dst, allowed)
    os.kill(proc.pid, signal.SIGCONT)
    code, err = _finish(proc)
    assert code == 30, err


# ---- runs that go well --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["push", "pull", "push-z", "ssh"])
def test_runs_with_a_timeout_complete(request, tmp_path: Path, how: str) -> None:
    """--timeout changes nothing in a run whose sides answer: deltas against old copies,
    the round trips of block hashes, compression, a remote shell; exit 0, same tree."""
    src, dst, _ = _versions(tmp_path)
    base = bytearray((dst / "big").read_bytes())  # the new big differs in a few blocks
    for off in range(0, len(base), 1 << 20):
        base[off : off + 10] = b"0123456789"
    _put(src / "big", bytes(base), T_NEW)
    args = ["-a", "--timeout=2", f"{src}/", str(dst)]
    if how == "pull":
        args[-2:] = ["-e", _local_rsh(tmp_path), f"localhost:{src}/", str(dst)]
    elif how == "push-z":
        args.insert(0, "-z")
    elif how == "ssh":
        sshd = request.getfixturevalue("sshd")
        args[-1:] = ["-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync,
                     f"{sshd.host}:{dst}"]
    proc = run_fscsync(*args, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(src, dst)
    assert not _temp_files(dst)


# ---- the handshake ------------------------------------------------------------------------


def test_contimeout_ends_a_remote_shell_that_never_answers(tmp_path: Path) -> None:
    """The "remote shell" only sleeps: --contimeout=2 ends the run with exit 35, and the
    shell is not left behind."""
    marker = f"fscsync-contimeout-{os.getpid()}"
    rsh = f"sh -c 'sleep 60; : {marker}'"
    proc = run_fscsync("-a", "--contimeout=2", "-e", rsh, f"{tmp_path}/", "host:/nowhere/",
                       timeout=HANG_GUARD_S)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 35, err
    assert "did not answer the handshake in 2 seconds" in err, err
    left = [pid for pid in filter(str.isdigit, os.listdir("/proc"))
            if _alive(int(pid)) and marker.encode() in _cmdline(pid)]
    assert not left, f"the remote shell was left behind: {left}"


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_timeout_bounds_the_handshake_too_as_in_rsync(tmp_path: Path, run_rsync) -> None:
    """Without --contimeout, --timeout covers the handshake: rsync's io timeout line and
    exit 30, side by side with rsync (which leaves its remote shell running: the sleep
    gets a stderr of its own so that the run's output ends with rsync, and is killed
    after)."""
    seconds = f"60.{os.getpid()}"
    rsh = f"sh -c 'exec sleep {seconds} 2>/dev/null'"
    try:
        ours = run_fscsync("-a", "--timeout=2", "-e", rsh, f"{tmp_path}/", "host:/nowhere/",
                           timeout=HANG_GUARD_S)
        theirs = run_rsync("-a", "--timeout=2", "-e", rsh, f"{tmp_path}/", "host:/nowhere/",
                           timeout=HANG_GUARD_S)
    finally:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if seconds.encode() in _cmdline(pid):
                os.kill(int(pid), signal.SIGKILL)
    assert ours.returncode == theirs.returncode == 30, (ours.stderr, theirs.stderr)
    assert "[sender] io timeout after 2 seconds -- exiting" in ours.stderr.decode()
    # rsync counts the seconds that passed (3 on a loaded machine); fscsync names its limit
    assert re.search(r"\[sender\] io timeout after \d+ seconds -- exiting", theirs.stderr.decode())


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "100000001"])
def test_bad_timeout_values_are_usage_errors(tmp_path: Path, value: str) -> None:
    for option in ("--timeout", "--contimeout"):
        proc = run_fscsync("-a", f"{option}={value}", f"{tmp_path}/", f"{tmp_path}/d/")
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert f"{option}={value}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["3", -1, 10**9, True])
def test_a_server_refuses_a_malformed_timeout(tmp_path: Path, value: object) -> None:
    """The value travels in the setup frame: a server checks it as it checks the rest."""
    opts = default_options().to_wire()
    opts["timeout"] = value
    server = subprocess.Popen([sys.executable, "-m", "fscsync", "--server"], env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        chan = Channel(server.stdout.fileno(), server.stdin.fileno())
        protocol.send_hello(chan, "client")
        protocol.recv_hello(chan, "server")
        protocol.send_json(chan, protocol.SETUP, {"role": "receiver", "options": opts,
                                                  "paths": [bytes(tmp_path).hex()]})
        chan.flush()
        ftype, payload = chan.recv(timeout=HANG_GUARD_S)
        assert ftype == protocol.FATAL
        assert protocol.load_json(payload) == {"msg": "malformed setup frame", "code": 5}
        assert server.wait(HANG_GUARD_S) == 5
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# ---- the channel itself -------------------------------------------------------------------


def _pair() -> tuple[Channel, int, int]:
    """A channel whose peer is the test: (channel, the fd we write to it, the fd we read
    what it sends)."""
    to_chan_r, to_chan_w = os.pipe2(os.O_CLOEXEC)
    from_chan_r, from_chan_w = os.pipe2(os.O_CLOEXEC)
    return Channel(to_chan_r, from_chan_w), to_chan_w, from_chan_r


def test_a_silent_peer_times_out_a_read() -> None:
    chan, _w, _r = _pair()
    chan.set_timeout(1, "receiver", keepalive=False)
    with pytest.raises(IoTimeout, match=r"\[receiver\] io timeout after 1 seconds"):
        chan.recv()


def test_a_peer_that_never_reads_times_out_a_write() -> None:
    """Nothing reads the pipe and nothing comes back: the write gives up, not blocks."""
    chan, _w, _r = _pair()
    chan.set_timeout(1, "sender", keepalive=False)
    with pytest.raises(IoTimeout, match=r"\[sender\] io timeout"):
        for _ in range(64):
            chan.send(protocol.DATA, bytes(1 << 20))
            chan.flush()


def test_keepalives_keep_a_waiting_peer_from_giving_up() -> None:
    """One side is busy (silent) for 2.5 times the timeout; its keepalives keep the side
    waiting for it from timing out, and the frame it sends at last arrives."""
    a_r, b_w = os.pipe2(os.O_CLOEXEC)
    b_r, a_w = os.pipe2(os.O_CLOEXEC)
    busy, waiting = Channel(a_r, a_w), Channel(b_r, b_w)
    busy.set_timeout(1, "sender", keepalive=True)
    waiting.set_timeout(1, "receiver", keepalive=False)

    def done() -> None:
        busy.send(protocol.DONE)
        busy.flush()

    timer = threading.Timer(2.5, done)
    timer.start()
    try:
        assert waiting.recv() == (protocol.DONE, b"")
    finally:
        timer.cancel()
        busy.stop_keepalive()


def test_keepalives_are_sent_while_this_side_is_silent_and_skipped_by_recv() -> None:
    """A side that sends nothing still sends NOOP frames under --timeout; the reader
    skips any number of them."""
    chan, w, r = _pair()
    chan.set_timeout(1, "sender", keepalive=True)
    try:
        ready, _, _ = select.select([r], [], [], HANG_GUARD_S)
        assert ready, "no keepalive came"
        assert os.read(r, 5) == struct.pack(">BI", protocol.NOOP, 0)
    finally:
        chan.stop_keepalive()
    os.write(w, struct.pack(">BI", protocol.NOOP, 0) * 1000 + struct.pack(">BI", protocol.DONE, 0))
    assert chan.recv(timeout=HANG_GUARD_S) == (protocol.DONE, b"")

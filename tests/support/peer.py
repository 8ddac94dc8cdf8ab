"""A fake fscsync client that plays the sender against a real `fscsync --server`.

Issue 9's tests feed the receiver streams a real sender never produces. `FakeSender`
does the handshake and the setup frame (role "receiver", a sandbox destination),
then lets the test send any frame or raw bytes, wait for the server's requests,
and finally collects the exit code, stderr and every frame the server sent back.
Every wait has a deadline: a server that hangs is killed and reported, never waited
for forever.

The server runs with FSCSYNC_DEBUG=1, so an exception that reaches the top prints
its traceback on stderr, where tests look for it.

Two ways to start the server:
- `spawn_server` (the default): `python -m fscsync --server ARGS`, a fresh interpreter;
- `ForkServer`: a helper process that has imported fscsync once and forks a child per
  run which calls the same entry point (`fscsync.cli.main.main(["--server", ...])`); it
  saves the interpreter start-up (~0.25 s) per run, for the fuzz test.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fscsync.engine import flist
from fscsync.options import Options
from fscsync.wire import protocol
from support import REPO

HDR = struct.Struct(">BI")
SERVER_ENV = {"PYTHONPATH": str(REPO), "FSCSYNC_DEBUG": "1", "LC_ALL": "C"}
DEFAULT_TIMEOUT = 10.0

NAMES = {v: k for k, v in vars(protocol).items()
         if k.isupper() and isinstance(v, int) and k not in ("MAX_FRAME",)
         and not k.startswith("_")}


def frame(ftype: int, payload: bytes = b"") -> bytes:
    """One frame as bytes on the wire (no size check: tests send oversized ones too)."""
    return HDR.pack(ftype, len(payload)) + payload


def hello_payload(role: str = "client", version: int | None = None) -> bytes:
    body = json.dumps({"role": role, "program": "fake-peer",
                       "capabilities": list(protocol.CAPABILITIES)}).encode()
    ver = protocol.PROTOCOL_VERSION if version is None else version
    return protocol.MAGIC + struct.pack(">H", ver) + body


def default_options(**changes) -> Options:
    """What `fscsync -a` asks for (plus any changes)."""
    opts = Options(recursive=True, links=True, perms=True, times=True, group=True,
                   owner=True, devices=True, specials=True)
    for k, v in changes.items():
        setattr(opts, k, v)
    return opts


FLIST_COMPRESSED = hasattr(flist, "pack_batch")
"""Whether FLIST payloads are zlib-compressed batches (flist.pack_batch) or plain ones."""


def flist_payload(entries: list[flist.Entry]) -> bytes:
    """An FLIST payload for these entries, packed the way the engine's sender packs it."""
    if FLIST_COMPRESSED:
        return flist.pack_batch(entries)
    return flist.encode_entries(entries)


def flist_payload_raw(raw: bytes) -> bytes:
    """An FLIST payload around hand-made entry bytes (which the encoder cannot produce)."""
    return zlib.compress(raw, 1) if FLIST_COMPRESSED else raw


def flist_entries(payload: bytes) -> list[flist.Entry]:
    """The entries of an FLIST payload (ProtocolError if it is malformed)."""
    if FLIST_COMPRESSED:
        return flist.unpack_batch(payload).entries()
    return flist.decode_entries(payload)


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Frames in a byte stream, and any trailing bytes that are not a whole frame."""
    out = []
    pos = 0
    while len(data) - pos >= HDR.size:
        ftype, length = HDR.unpack_from(data, pos)
        if length > protocol.MAX_FRAME or len(data) - pos - HDR.size < length:
            break
        out.append((ftype, data[pos + HDR.size: pos + HDR.size + length]))
        pos += HDR.size + length
    return out, data[pos:]


# ---- starting the server ---------------------------------------------------------------


class ServerProc:
    """A running server: its pid, our ends of its stdin/stdout/stderr, wait and kill."""

    pid: int
    stdin: int
    stdout: int
    stderr: int

    def wait(self, timeout: float) -> int | None:
        """Exit status (negative: killed by that signal), None if still running."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def close_stdin(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Popened(ServerProc):
    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc
        self.pid = proc.pid
        self.stdin = proc.stdin.fileno()
        self.stdout = proc.stdout.fileno()
        self.stderr = proc.stderr.fileno()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close_stdin(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def spawn_server(args: Iterable[str] = (), env: dict[str, str] | None = None,
                 cwd: str | None = None) -> ServerProc:
    """`python -m fscsync --server ARGS` in a fresh interpreter."""
    proc = subprocess.Popen([sys.executable, "-m", "fscsync", "--server", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **SERVER_ENV, **(env or {})})
    return _Popened(proc)


_MEASURE = r"""
import json, os, resource, sys
report, limit = int(sys.argv[1]), int(sys.argv[2])
pid = os.fork()
if pid == 0:
    os.close(report)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
_, status, usage = os.wait4(pid, 0)
os.write(report, json.dumps([usage.ru_maxrss, usage.ru_utime + usage.ru_stime]).encode())
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""
"""Runs the server as its child and reports the child's wait4 usage. A process forked
from pytest and then exec'd would count pytest's own peak in its ru_maxrss; one forked
from this small launcher starts from the launcher's few MB."""


class Measured(_Popened):
    """A spawned server whose peak RSS and CPU time are known once it exited, for the
    tests that bound what a hostile peer can make it spend."""

    def __init__(self, proc: subprocess.Popen[bytes], report: int):
        super().__init__(proc)
        self._report = report
        self.peak_rss: int | None = None
        """Bytes."""
        self.cpu: float | None = None
        """Seconds, user and system."""

    def wait(self, timeout: float) -> int | None:
        code = super().wait(timeout)
        if code is not None and self.peak_rss is None:
            data = os.read(self._report, 1 << 12)
            if data:
                maxrss, self.cpu = json.loads(data)
                self.peak_rss = maxrss * 1024
        return code

    def kill(self) -> None:
        """The launcher and the server with it (a process group of their own)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        super().close()
        os.close(self._report)


def measured_server(address_space: int = 1 << 30) -> Callable[..., Measured]:
    """A launcher like spawn_server whose servers are Measured and run under an
    address-space limit: a test of a memory bound must not take the machine's memory
    when the bound is missing."""

    def launch(args: Iterable[str] = (), env: dict[str, str] | None = None,
               cwd: str | None = None) -> Measured:
        report_r, report_w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(report_w), str(address_space), "-m",
             "fscsync", "--server", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env={**os.environ, **SERVER_ENV, **(env or {})},
            pass_fds=[report_w], start_new_session=True)
        os.close(report_w)
        return Measured(proc, report_r)

    return launch


_ZYGOTE = r"""
import json, os, signal, socket, sys, traceback
import fscsync.cli.main, fscsync.run.session  # everything a server needs, imported once
sock = socket.socket(fileno=int(sys.argv[1]))
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
while True:
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    except OSError:
        break
    if not msg:
        break
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for i, fd in enumerate(fds[:3]):
                os.dup2(fd, i)
            status = fds[3]
            for fd in fds[:3]:
                os.close(fd)
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            try:
                code = fscsync.cli.main.main(["--server", *req["args"]])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:
                    pass
            os.write(status, bytes([code & 0xFF]))
        finally:
            os._exit(code & 0xFF)
    for fd in fds:
        os.close(fd)
    sock.send(json.dumps({"pid": pid}).encode())
"""


class _Forked(ServerProc):
    def __init__(self, pid: int, stdin: int, stdout: int, stderr: int, status: int):
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._status = status
        self._code: int | None = None
        self._killed = False
        self._stdin_open = True

    def wait(self, timeout: float) -> int | None:
        if self._code is not None:
            return self._code
        ready, _, _ = select.select([self._status], [], [], timeout)
        if not ready:
            return None
        data = os.read(self._status, 1)
        # No byte: the child died without reaching its exit (we killed it, or a signal).
        self._code = data[0] if data else (-signal.SIGKILL if self._killed else -1)
        return self._code

    def kill(self) -> None:
        if self._code is None:
            self._killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)

    def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            os.close(self.stdin)

    def close(self) -> None:
        self.close_stdin()
        for fd in (self.stdout, self.stderr, self._status):
            try:
                os.close(fd)
            except OSError:
                pass


class ForkServer:
    """A process with fscsync imported that forks one `fscsync --server` per `start`."""

    def __init__(self, env: dict[str, str] | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, str(theirs.fileno())], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, env={**os.environ, **SERVER_ENV, **(env or {})})
        theirs.close()
        self._lock = threading.Lock()

    def __call__(self, args: Iterable[str] = (), env: dict[str, str] | None = None,
                 cwd: str | None = None) -> ServerProc:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        for fd in (in_w, out_r, err_r, st_r):
            os.set_inheritable(fd, False)
        req = {"args": list(args), "env": env or {}, "cwd": cwd or os.getcwd()}
        try:
            with self._lock:
                socket.send_fds(self._sock, [json.dumps(req).encode()],
                                [in_r, out_w, err_w, st_w])
                answer = self._sock.recv(1 << 12)
        finally:
            for fd in (in_r, out_w, err_w, st_w):
                os.close(fd)
        if not answer:
            raise RuntimeError("the fork server is gone")
        return _Forked(json.loads(answer)["pid"], in_w, out_r, err_r, st_r)

    def close(self) -> None:
        self._sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def server_launcher() -> Iterator[Callable[..., ServerProc]]:
    """A ForkServer for a test module (closed after it), or plain `spawn_server` when
    FSCSYNC_TEST_SPAWN=1 asks for a fresh interpreter per server (slower, exact)."""
    if os.environ.get("FSCSYNC_TEST_SPAWN") == "1":
        yield spawn_server
        return
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


# ---- the fake sender ------------------------------------------------------------------


@dataclass
class Result:
    """How a server run ended."""

    code: int | None
    """Exit status; negative: killed by that signal (-9 when it hung and we killed it)."""
    stderr: bytes
    frames: list[tuple[int, bytes]]
    """Every whole frame the server wrote, its HELLO included."""
    hung: bool = False
    """The server did not exit within the deadline and was killed."""
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def of_type(self, ftype: int) -> list[bytes]:
        return [p for t, p in self.frames if t == ftype]

    def fatal(self) -> list[dict]:
        out = []
        for p in self.of_type(protocol.FATAL):
            try:
                out.append(json.loads(p))
            except ValueError:
                out.append({"msg": repr(p)})
        return out

    def messages(self) -> str:
        """Everything the server said: its FATAL and LOG lines, then stderr."""
        lines = [f"FATAL({m.get('code')}): {m.get('msg')}" for m in self.fatal()]
        for p in self.of_type(protocol.LOG):
            try:
                m = json.loads(p)
                lines.append(f"{m.get('kind')}: {m.get('msg')}")
            except ValueError:
                lines.append(f"LOG {p!r}")
        return "\n".join(lines + [self.text])

    def describe(self) -> str:
        types = [NAMES.get(t, str(t)) for t, _ in self.frames]
        hung = " (HUNG, killed)" if self.hung else ""
        return (f"exit {self.code} after {self.elapsed:.2f}s{hung}"
                f"\nframes from the server: {types}\n{self.messages()}"
                + ("\nnotes: " + "; ".join(self.notes) if self.notes else ""))


class FakeSender:
    """Plays the client (and sender) against a real server; see the module docstring."""

    def __init__(self, args: Iterable[str] = (), *, launcher: Callable[..., ServerProc] | None
                 = None, env: dict[str, str] | None = None, cwd: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.started = time.monotonic()
        self.proc = (launcher or spawn_server)(list(args), env=env, cwd=cwd)
        os.set_blocking(self.proc.stdin, False)
        self.notes: list[str] = []
        self.write_failed = False
        self._frames: list[tuple[int, bytes]] = []
        self._eof = False
        self._stderr = bytearray()
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    # ---- background readers ----

    def _read_stdout(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = os.read(self.proc.stdout, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()
                return
            buf += data
            frames, rest = split_frames(bytes(buf))
            if frames:
                buf = bytearray(rest)
                with self._cond:
                    self._frames.extend(frames)
                    self._cond.notify_all()

    def _read_stderr(self) -> None:
        while True:
            try:
                data = os.read(self.proc.stderr, 1 << 16)
            except OSError:
                data = b""
            if not data:
                return
            self._stderr += data

    # ---- sending ----

    def send_raw(self, data: bytes, timeout: float | None = None) -> bool:
        """Write bytes to the server's stdin; False if it stopped reading (closed the pipe,
        or did not take the bytes within the deadline)."""
        if self.write_failed:
            return False
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                self.notes.append(f"server stopped reading with {len(view)} bytes unsent")
                self.write_failed = True
                return False
            _, ready, _ = select.select([], [self.proc.stdin], [], min(left, 0.2))
            if not ready:
                continue
            try:
                n = os.write(self.proc.stdin, view[: 1 << 16])
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EBADF):
                    raise
                self.write_failed = True
                return False
            view = view[n:]
        return True

    def send(self, ftype: int, payload: bytes = b"") -> bool:
        return self.send_raw(frame(ftype, payload))

    def send_json(self, ftype: int, obj: object) -> bool:
        return self.send(ftype, json.dumps(obj).encode())

    def close_input(self) -> None:
        self.proc.close_stdin()
        self.write_failed = True

    # ---- receiving ----

    @property
    def frames(self) -> list[tuple[int, bytes]]:
        with self._cond:
            return list(self._frames)

    @property
    def exited_output(self) -> bool:
        """The server closed its stdout (it exited or is exiting)."""
        with self._cond:
            return self._eof

    def wait_for(self, pred: Callable[[int, bytes], bool], timeout: float | None = None,
                 start: int = 0) -> tuple[int, bytes] | None:
        """The first frame (from index `start`) matching pred; None at EOF or deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for f in self._frames[start:]:
                    if pred(*f):
                        return f
                start = len(self._frames)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(left)

    def wait_count(self, pred: Callable[[int, bytes], bool], count: int,
                   timeout: float | None = None) -> bool:
        """Wait until `count` frames match pred; False at EOF or deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                if sum(1 for f in self._frames if pred(*f)) >= count:
                    return True
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return False
                self._cond.wait(left)

    def wait_type(self, ftype: int, timeout: float | None = None) -> bytes | None:
        got = self.wait_for(lambda t, p: t == ftype, timeout)
        return None if got is None else got[1]

    def requested(self) -> list[int]:
        """Entry indexes the server asked for (REQ frames so far)."""
        return [struct.unpack_from(">I", p)[0] for t, p in self.frames
                if t == protocol.REQ and len(p) >= 4]

    def wait_request(self, idx: int, timeout: float | None = None) -> bool:
        got = self.wait_for(lambda t, p: t == protocol.REQ and p[:4] == struct.pack(">I", idx),
                            timeout)
        return got is not None

    # ---- the protocol's opening ----

    def handshake(self, role: str = "client") -> bool:
        """Our HELLO, then the server's; False if the server did not answer."""
        self.send(protocol.HELLO, hello_payload(role))
        return self.wait_type(protocol.HELLO) is not None

    def setup(self, dest: bytes | str, options: Options | None = None, *,
              role: str = "receiver", paths: list[bytes] | None = None,
              compress: str | None = None, item_dir: str = "<") -> bool:
        """The setup frame; True when the server answered READY (False: FATAL or EOF)."""
        if not self.handshake():
            return False
        dest_b = os.fsencode(dest)
        opts = options if options is not None else default_options()
        self.send_json(protocol.SETUP, {
            "role": role, "options": opts.to_wire(),
            "paths": [p.hex() for p in (paths if paths is not None else [dest_b])],
            "item_dir": item_dir, "compress": compress,
        })
        got = self.wait_for(lambda t, p: t in (protocol.READY, protocol.FATAL))
        return got is not None and got[0] == protocol.READY

    def start_flist(self, single_file: bool = False) -> bool:
        return self.send_json(protocol.FLIST_START, {"single_file": single_file})

    # ---- the end ----

    def finish(self, timeout: float | None = None) -> Result:
        """Close our end and wait for the server to exit; kill it at the deadline."""
        self.close_input()
        code = self.proc.wait(self.timeout if timeout is None else timeout)
        hung = code is None
        if hung:
            self.proc.kill()
            code = self.proc.wait(10)
        for t in self._threads:
            t.join(5)
        self.proc.close()
        return Result(code, bytes(self._stderr), self.frames, hung,
                      time.monotonic() - self.started, self.notes)

    def kill(self) -> None:
        self.proc.kill()

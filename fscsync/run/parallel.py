"""`--parallel N`: one run as N sender/receiver pairs, then one final pass.

The coordinator (this module, in the client) forks every stream: each is a whole
client run (run_client) with its own peer, a forked local server or its own ssh
connection, sending the part of the tree its Partition gives it. Three steps:

1. directories: one stream lists every directory and nothing else, so each is
   made, compared and itemized once, before any file lands in it;
2. files: N streams list the directories as implied and share the files
   (run.partition: slices drawn from a shared ticket counter, hard-link groups
   routed by inode);
3. the final pass (run.finalpass), a server role on the receiving host: every
   stream's spooled Decisions merged, then deletions and directory attributes,
   once, and only if every stream ended well and no sender missed anything
   (the same rule that skips deletions after source errors in one run).

The streams' lines come here as the peer's LOG frames do, one whole line a
frame, and only this process prints them (never interleaved mid-line); their
counters are summed into one --stats and their exit codes into one.
It knows nothing of the terminal: lines go to the Reporter it is given.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from collections.abc import Callable

from fscsync import errors
from fscsync.engine.report import Reporter
from fscsync.engine.stats import Stats, final_message, read_final
from fscsync.errors import (
    FscsyncError,
    PeerClosed,
    ProtocolError,
    StartupFailed,
    StreamEnded,
    UsageError,
)
from fscsync.options import Options
from fscsync.run.endpoint import Plan
from fscsync.run.partition import Partition, Tickets
from fscsync.run.session import (
    FrameReporter,
    Outcome,
    control_handler,
    fatal,
    run_client,
    run_server,
)
from fscsync.run.transport import Peer, fork_server
from fscsync.wire import protocol
from fscsync.wire.protocol import Channel

PROGRESS = 200
RESULT = 201
LISTED = 202
"""Frame types between a stream and the coordinator only (never on a peer's wire)."""

Connect = Callable[[], "Peer | None"]
"""Starts one stream's peer: the remote shell, or None for a forked local server."""


class _StreamReporter(FrameReporter):
    """A stream's reporter: each line goes to the coordinator at once, whole."""

    def error(self, message: str, code: int = errors.PARTIAL) -> None:
        super().error(message, code)
        self.chan.flush()

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        super().emit(kind, message, length)
        self.chan.flush()

    def progress(self, path: bytes, done: int, total: int, idx: int = -1) -> None:
        protocol.send_json(self.chan, PROGRESS, {"p": path.hex(), "d": done, "t": total})
        self.chan.flush()

    def listed(self, count: int, size: int) -> None:
        protocol.send_json(self.chan, LISTED, {"n": count, "s": size})
        self.chan.flush()


def usable(opts: Options, p: Plan) -> bool:
    """Whether --parallel can split this run; a run it cannot split runs as one stream
    (one file, no recursion, a listing). A command line it must refuse raises."""
    if not p.client_sends:
        raise UsageError("--parallel needs the source on this side (a local copy or a push)")
    if opts.files_from is not None or opts.files_from_remote is not None:
        raise UsageError("--parallel does not take --files-from")
    if opts.prune_empty_dirs:
        raise UsageError("--parallel does not take --prune-empty-dirs (-m)")
    for taken, name in ((opts.backup, "--backup (-b)"), (opts.partial_dir, "--partial-dir"),
                        (opts.delay_updates, "--delay-updates"),
                        (opts.remove_source_files, "--remove-source-files"),
                        (opts.alt_dest, "--link-dest, --compare-dest or --copy-dest")):
        if taken:
            raise UsageError(f"--parallel does not take {name} yet")
    if not opts.recursive or opts.list_only:
        return False
    return any(src.endswith(b"/") or os.path.isdir(src) for src in p.sources)


def run_parallel(opts: Options, p: Plan, reporter: Reporter, n: int, connect: Connect
                 ) -> Outcome:
    started = time.monotonic()
    from fscsync.engine.receiver import Receiver  # noqa: F401  (once, before the forks)
    from fscsync.engine.sender import Sender  # noqa: F401

    token = secrets.token_hex(8).encode()
    run = _Run(opts, p, reporter, connect, token)
    tickets = Tickets()
    gate_r = gate_w = -1
    final = None
    try:
        # Every connection starts now: the streams and the final pass wait, connected,
        # while the directories' step runs (ssh and the remote start-up take longest).
        # A local final pass is forked first (it must not hold the gate open), ssh
        # after the streams' forks (its stderr thread must not be running in a fork).
        if p.peer is None:
            final = run.connect_final()
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        run.not_inherited = [gate_w, *((final.rfd, final.wfd) if final else ())]
        dirs = run.start([Partition(0, 1, None, opts.hard_links, dirs_only=True)])
        files = run.start([Partition(i, n, tickets, opts.hard_links) for i in range(n)],
                          gate_r)
        if final is None:
            final = run.connect_final()
        os.close(gate_r)
        gate_r = -1
        run.collect(dirs, first=True)
        if run.fatal is None:
            os.write(gate_w, b"go" * n)
        os.close(gate_w)
        gate_w = -1
        run.collect(files, first=False)
        if run.conclude(final, "--parallel", "stream"):
            final = None
    finally:
        if final is not None:
            final.stop()
        for fd in (gate_r, gate_w):
            if fd >= 0:
                os.close(fd)
        tickets.close()
    code = errors.worst(reporter.exit_code, run.code)
    return Outcome(code, run.stats, run.sent, run.received, time.monotonic() - started)


class _NotStarted(Exception):
    """The directories' step failed: a waiting stream ends without a transfer."""


class _Run:
    """The coordinator's state: what the streams reported so far."""

    def __init__(self, opts: Options, p: Plan, reporter: Reporter, connect: Connect,
                 token: bytes):
        self.opts = opts
        self.p = p
        self.reporter = reporter
        self.connect = connect
        self.token = token
        self.stats = Stats()
        self.sent = self.received = 0
        self.code = errors.OK
        self.fatal: str | None = None
        self.digests: set[bytes] = set()
        self.on_control = control_handler(reporter)
        self.not_inherited: list[int] = []  # the coordinator's fds a stream closes
        self._listed: dict[tuple[bool, int], tuple[int, int]] = {}
        self._said: set[str] = set()
        """Lines that each stream would say again (_repeats)."""

    def start(self, parts: list[Partition], gate: int = -1) -> list[tuple[int, int]]:
        """Fork one stream per partition; each waits for two bytes from `gate` (when
        given) once connected. Returns (pid, the fd its frames come on) of each."""
        return [self._fork(i, part, gate) for i, part in enumerate(parts)]

    def collect(self, kids: list[tuple[int, int]], first: bool) -> None:
        """Print the streams' lines as they come, and gather their results."""
        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_read, args=(i, rfd, lines), daemon=True)
                   for i, (_, rfd) in enumerate(kids)]
        for t in readers:
            t.start()
        results: set[int] = set()
        try:
            open_streams = len(kids)
            while open_streams:
                i, ftype, payload = lines.get()
                if ftype is None:
                    open_streams -= 1
                elif not self._frame(i, ftype, payload, first):
                    results.add(i)
        except BaseException:
            for pid, _ in kids:
                _signal(pid)
            raise
        finally:
            for t in readers:
                t.join()
            statuses = [_wait(pid) for pid, _ in kids]
            for _, rfd in kids:
                os.close(rfd)
        for i, status in enumerate(statuses):
            if i not in results and self.fatal is None:
                why = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
                err = StreamEnded(index=i + 1, why=why)
                self.reporter.failed(err)
                self._failed(str(err), err.code)

    def _frame(self, i: int, ftype: int, payload: bytes, first: bool) -> bool:
        """Handle one frame of stream `i`; False once it sent its result."""
        if ftype == protocol.LOG:
            if self._repeats(payload, first):
                return True
            try:
                self.on_control(ftype, payload)
            except ProtocolError as exc:
                self._failed(str(exc), errors.STREAM)
            return True
        if ftype == protocol.FATAL:
            try:
                self.on_control(ftype, payload)
            except FscsyncError as exc:
                self.reporter.failed(exc)
                self._failed(str(exc), exc.code)
            return True
        if ftype == PROGRESS:
            msg = protocol.load_json(payload)
            self.reporter.progress(bytes.fromhex(msg["p"]), msg["d"], msg["t"])
            return True
        if ftype == LISTED:  # progress counts against every stream's list
            msg = protocol.load_json(payload)
            self._listed[first, i] = (msg["n"], msg["s"])
            self.reporter.listed(sum(n for n, _ in self._listed.values()),
                                 sum(s for _, s in self._listed.values()))
            return True
        if ftype == RESULT:
            msg = protocol.load_json(payload)
            stats, code = read_final(msg["final"])
            if not first:
                stats.files.pop("dir", None)  # implied here: the first step counted them
            self.stats.merge(stats)
            self.code = errors.worst(self.code, code)
            self.sent += msg["sent"]
            self.received += msg["received"]
            self.digests.add(bytes.fromhex(msg["digest"]))
            return False
        self._failed(f"unexpected frame {ftype} from stream {i + 1}", errors.STREAM)
        return True

    def _repeats(self, payload: bytes, first: bool) -> bool:
        """Whether a line was said already by another stream: what the directories'
        step said of the root or of the destination's abilities, and errors of the
        walk (a source or directory that cannot be read), which every stream meets.
        Only those lines are kept to compare, never one line per file."""
        msg = protocol.load_json(payload)
        kind, text = str(msg.get("kind")), msg.get("msg")
        if type(text) is not str or kind == "item" or (kind.startswith("info") and not first):
            return text in self._said
        if text in self._said:
            return True
        self._said.add(text)
        return False

    def _failed(self, why: str, code: int) -> None:
        self.code = errors.worst(self.code, code)
        if self.fatal is None:
            self.fatal = why

    def _fork(self, i: int, part: Partition, gate: int) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = errors.SSH
            try:
                for fd in (r, *self.not_inherited):
                    os.close(fd)  # the gate's write end: else a closed gate never shows
                code = self._stream(i, part, w, gate)
            finally:
                os._exit(code)
        os.close(w)
        return pid, r

    def _stream(self, i: int, part: Partition, wfd: int, gate: int) -> int:
        """One stream, in its own process: a whole client run over its partition."""
        self.opts.spool = self.token + (b"/dirs" if part.dirs_only else b"/files%d" % i)

        def wait() -> None:
            if gate >= 0 and len(os.read(gate, 2)) < 2:
                raise _NotStarted()

        return self.run_stream(Channel(wfd, wfd), part, i, wait)

    def run_stream(self, chan, part: Partition, i: int, wait=None, before_result=None
                   ) -> int:
        """Run one stream, its lines and result sent as frames on `chan` (a pipe to the
        coordinator, or run.mpi's frames to rank 0); `before_result` runs after the
        transfer, before the result is sent."""
        reporter = _StreamReporter(chan)
        try:
            outcome = run_client(self.opts, self.p, reporter, self.connect(), part, wait)
            if before_result is not None:
                before_result()
            protocol.send_json(chan, RESULT, {
                "final": final_message(outcome.stats, outcome.exit_code),
                "sent": outcome.bytes_sent, "received": outcome.bytes_received,
                "digest": part.digest.hexdigest()})
            chan.flush()
            return outcome.exit_code
        except _NotStarted:
            return errors.OK
        except (Exception, KeyboardInterrupt) as exc:
            return fatal(chan, exc, f" in stream {i + 1}")

    def connect_final(self) -> Peer:
        """The final pass's peer, started and greeted now, set up once the streams are
        done (a server waits for its setup frame as long as it takes)."""
        peer = self.connect()
        if peer is None:
            peer = fork_server(run_server)
        chan = Channel(peer.rfd, peer.wfd)
        protocol.send_hello(chan, "client")
        chan.flush()
        return peer

    def conclude(self, final: Peer, what: str, unit: str) -> bool:
        """After every stream: the one final pass, unless a stream (`unit`) failed (then
        a local run's spool goes); no deletions if the streams saw the source
        differently. True: it ran."""
        if self.fatal is not None:
            self.reporter.warning(f"a {unit} of {what} failed: no deletions, no directory "
                                  "attributes")
            if self.p.peer is None:  # a remote final pass removes its own spool
                from fscsync.engine import spool

                spool.remove(self.token)
            return False
        if len(self.digests) > 1:
            self.reporter.error(f"the source changed while {what} walked it -- skipping file "
                                "deletion", errors.PARTIAL)
            self.opts.delete = False
        self.final_pass(final)
        return True

    def final_pass(self, peer: Peer) -> None:
        """Deletions and directory attributes, once, where the streams received."""
        chan = Channel(peer.rfd, peer.wfd)
        host = self.p.peer.host if self.p.peer is not None else None
        on_control = control_handler(self.reporter, host)
        try:
            protocol.recv_hello(chan, "server")
            protocol.send_json(chan, protocol.SETUP, {
                "role": "finalize", "options": self.opts.to_wire(),
                "paths": [self.p.dest.hex(), self.token.hex()], "compress": None})
            chan.flush()
            while True:
                ftype, payload = chan.recv()
                if ftype == protocol.READY or on_control(ftype, payload):
                    continue
                if ftype != protocol.STATS:
                    raise StartupFailed(f"unexpected frame {ftype} from the final pass")
                stats, code = read_final(protocol.load_json(payload))
                break
        except PeerClosed:
            peer.close()
            raise
        except BaseException:
            peer.stop()
            raise
        peer.close()
        self.stats.merge(stats)
        self.code = errors.worst(self.code, code)
        self.sent += chan.bytes_sent
        self.received += chan.bytes_received


def _read(i: int, rfd: int, lines: queue.Queue) -> None:
    """Stream `i`'s frames into `lines`, then (i, None, None) at its end."""
    chan = Channel(rfd, rfd)
    try:
        while True:
            ftype, payload = chan.recv()
            lines.put((i, ftype, payload))
    except (ProtocolError, OSError):
        pass
    lines.put((i, None, None))


def _signal(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

"""One run from either end: the client starts its peer and plays sender or receiver;
the server (`fscsync --server`) learns its role and paths from the setup frame.

Sender and receiver (most of the engine's import time) are imported when a run
needs them: a client starts ssh first and imports them while it connects."""

from __future__ import annotations

import os
import time

from fscsync import errors
from fscsync.engine.report import KINDS, Reporter
from fscsync.engine.stats import Stats, final_message, read_final
from fscsync.errors import (
    AllowedTreeUnusable,
    ConnectTimeout,
    DirOptionOutsideAllowedTree,
    FilesFromUnreadable,
    FscsyncError,
    InternalError,
    IoTimeout,
    NoAnswer,
    OutsideAllowedTree,
    PeerClosed,
    PeerFailed,
    PeerKilled,
    ProtocolError,
    SshFailed,
    StartupFailed,
    TempDirOutsideAllowedTree,
    escape_peer,
)
from fscsync.fs.destfs import Confined, temp_dir_path
from fscsync.options import MAX_TIMEOUT, Options
from fscsync.record import Record
from fscsync.run.endpoint import Plan
from fscsync.run.transport import Peer, fork_server
from fscsync.wire import protocol
from fscsync.wire.protocol import Channel

LAST_WORDS_S = 5.0
"""How long a client waits for the reason a peer closed the connection."""
HANDSHAKE_S = 60
"""How long either side waits for the other's handshake without --contimeout, and a
server for the setup frame (it learns the run's --timeout only from that frame)."""

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.engine.sender import Sender


class FrameReporter(Reporter):
    """The server's reporter: every line travels to the client as a LOG frame."""

    def __init__(self, chan: Channel):
        super().__init__()
        self.chan = chan

    def error(self, message: str, code: int = errors.PARTIAL) -> None:
        """The code travels too: the client counts what it is told, not only the
        exit code this side claims at the end."""
        self.note_code(code)
        protocol.send_json(self.chan, protocol.LOG,
                           {"kind": "error", "msg": message, "code": code})

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        msg = {"kind": kind, "msg": message}
        if length is not None:
            msg["len"] = length
        protocol.send_json(self.chan, protocol.LOG, msg)


def control_handler(reporter: Reporter, host: str | None = None):
    """Client side: print the peer's lines (errors tagged with a remote peer's host,
    and counted towards the exit code), stop on its fatal errors. Every field is
    checked and every text escaped: the peer may be hostile."""
    tag = f"[{host}] " if host else ""

    def handle(ftype: int, payload: bytes) -> bool:
        if ftype == protocol.LOG:
            kind, text, length, code = _log_fields(protocol.load_json(payload))
            if kind == "error":
                reporter.error(tag + text, code)
            else:
                reporter.emit(kind, tag + text if kind == "warning" else text, length)
            return True
        if ftype == protocol.FATAL:
            msg = protocol.load_json(payload)
            text = msg.get("msg", "fatal error on the other side")
            if type(text) is not str:
                raise ProtocolError("malformed fatal error frame from the other side")
            code = errors.peer_code(msg.get("code", errors.PARTIAL))
            raise PeerFailed(tag + escape_peer(text), code or errors.STREAM)
        return False

    return handle


def _log_fields(msg: dict) -> tuple[str, str, int | None, int]:
    """(kind, escaped text, length, code) of a LOG frame, or a protocol error."""
    kind, text = msg.get("kind"), msg.get("msg")
    length = msg.get("len")
    valid = (type(kind) is str and kind in KINDS and type(text) is str
             and (length is None or (type(length) is int and 0 <= length < 1 << 63))
             and (kind == "error" or "code" not in msg))
    if not valid:
        raise ProtocolError(f"malformed log frame from the other side: "
                            f"{escape_peer(str(msg)):.100}")
    code = errors.peer_code(msg.get("code", errors.PARTIAL)) or errors.STREAM
    return kind, escape_peer(text), length, code


class Outcome(Record):
    exit_code: int
    stats: Stats
    bytes_sent: int = 0
    bytes_received: int = 0
    elapsed: float = 0.0


def run_client(opts: Options, p: Plan, reporter: Reporter, peer: Peer | None = None,
               partition=None, wait=None) -> Outcome:
    """Run the client's side against `peer`, the remote shell the command line started
    (as early as it could: connecting takes longest), or against a local server forked
    here when it is None. `partition`: the part of the tree a stream of --parallel
    sends (run.partition.Partition); `wait`, called once the peer has answered the
    handshake, holds the setup back (a stream connects while another step runs)."""
    started = time.monotonic()
    from fscsync.engine.receiver import Receiver  # noqa: F401  (before a fork)
    from fscsync.engine.sender import Sender

    if peer is None:
        peer = fork_server(run_server)
    chan = Channel(peer.rfd, peer.wfd)
    on_control = control_handler(reporter, p.peer.host if p.peer is not None else None)
    sender = None
    if p.client_sends:
        sender = Sender(chan, opts, reporter, p.sources, on_control)
        sender.scanner.partition = partition
        if p.peer is not None and opts.files_from_remote is None:
            sender.scan_ahead()  # ssh and the remote start-up take long enough to scan
    try:
        stats, peer_code = _client_exchange(chan, opts, p, reporter, on_control, sender, wait)
    except PeerClosed as exc:
        try:
            _last_words(chan, on_control)
        finally:
            chan.stop_keepalive()
            status = peer.close()
        if p.peer is not None and status == 255:
            raise SshFailed() from None
        if status is not None and status < 0:
            raise PeerKilled(closed=str(exc), signal=-status) from None
        raise exc from None
    except BaseException:
        chan.stop_keepalive()
        peer.stop()
        raise
    chan.stop_keepalive()
    status = peer.close()
    code = errors.worst(reporter.exit_code, peer_code)
    if status not in (0, None) and code == errors.OK:
        code = status if 0 < status < 256 else errors.IPC
    return Outcome(code, stats, chan.bytes_sent, chan.bytes_received,
                   time.monotonic() - started)


def _server_hello(chan: Channel, opts: Options, side: str) -> protocol.Hello:
    """The server's handshake, waited for as long as --contimeout says (exit 35), else
    as --timeout says (exit 30, rsync's io timeout), else HANDSHAKE_S."""
    wait, error = HANDSHAKE_S, None
    if opts.contimeout:
        wait, error = opts.contimeout, ConnectTimeout(seconds=opts.contimeout)
    elif opts.timeout:
        wait, error = opts.timeout, IoTimeout(side=side, seconds=opts.timeout)
    try:
        return protocol.recv_hello(chan, "server", wait)
    except NoAnswer:
        if error is None:
            raise
        raise error from None


def _last_words(chan: Channel, on_control) -> None:
    """A peer that stopped may have said why just before: a write that met its closed
    pipe leaves those frames unread. They go to on_control, which raises the peer's
    fatal error (with its exit code) in place of "connection closed"."""
    try:
        while True:
            on_control(*chan.recv(timeout=LAST_WORDS_S))
    except ProtocolError:  # the end of the stream (PeerClosed), or silence
        return


def _client_exchange(chan: Channel, opts: Options, p: Plan, reporter: Reporter,
                     on_control, sender: Sender | None, wait=None) -> tuple[Stats, int]:
    protocol.send_hello(chan, "client")
    side = "sender" if p.client_sends else "receiver"
    hello = _server_hello(chan, opts, side)
    chan.set_timeout(opts.timeout, side, "keepalive" in hello.capabilities)
    if wait is not None:
        wait()
    kind = None
    if opts.compress:
        kind = "zstd" if "zstd" in hello.capabilities and "zstd" in protocol.CAPABILITIES \
            else "zlib"
    paths = [p.dest] if p.client_sends else p.sources
    item_dir = "<" if p.peer is not None and p.client_sends else ">"
    protocol.send_json(chan, protocol.SETUP, {
        "role": "receiver" if p.client_sends else "sender",
        "options": opts.to_wire(),
        "paths": [x.hex() for x in paths],
        "item_dir": item_dir,
        "compress": kind,
    })
    chan.flush()
    ftype, payload = chan.recv()
    if ftype == protocol.FATAL or ftype == protocol.LOG:
        on_control(ftype, payload)
        ftype, payload = chan.recv()
        on_control(ftype, payload)
    if ftype != protocol.READY:
        raise StartupFailed(f"unexpected frame {ftype} instead of READY")
    if sender is not None and opts.files_from_remote is not None:
        opts.files_from = _listed_names(payload)
    chan.set_compression(kind)
    if opts.bwlimit:
        chan.set_bwlimit(opts.bwlimit)
    if sender is not None:
        stats = sender.run()
        while True:
            ftype, payload = chan.recv()
            if on_control(ftype, payload):
                continue
            if ftype != protocol.STATS:
                raise ProtocolError(f"unexpected frame {ftype} at the end of the run")
            peer_stats, peer_code = read_final(protocol.load_json(payload))
            stats.merge(peer_stats)
            return stats, peer_code
    from fscsync.engine.receiver import Receiver  # imported already by run_client

    rx = Receiver(chan, opts, reporter, p.dest, item_dir, on_control)
    stats = rx.run()
    peer_code = 0
    if rx.sender_stats is not None:
        stats.merge(rx.sender_stats)
        peer_code = rx.sender_exit_code
    return stats, peer_code


def run_server(rfd: int = 0, wfd: int = 1, restrict_to: bytes | None = None) -> int:
    """The server's side of a run. It imports only the end its role needs (a forked
    local server has both already): a remote sender spares the receiver's modules
    (generator, writer, finalize, backup: 5 ms), a remote receiver the sender's."""
    chan = Channel(rfd, wfd)
    reporter = FrameReporter(chan)
    try:
        protocol.send_hello(chan, "server")
        hello = protocol.recv_hello(chan, "client", HANDSHAKE_S)
        ftype, payload = chan.recv(HANDSHAKE_S)
        if ftype != protocol.SETUP:
            raise StartupFailed("expected the setup frame")
        setup = protocol.load_json(payload)
        try:
            opts = Options.from_wire(setup["options"])
            paths = [bytes.fromhex(x) for x in setup["paths"]]
            role = setup["role"]
            item_dir = setup.get("item_dir", ">")
            kind = setup.get("compress")
        except (KeyError, TypeError, ValueError):
            raise StartupFailed("malformed setup frame") from None
        if (role not in ("sender", "receiver", "finalize") or not paths
                or kind not in (None, *protocol.COMPRESSIONS)
                or not all(type(t) is int and 0 <= t <= MAX_TIMEOUT
                           for t in (opts.timeout, opts.contimeout))):
            raise StartupFailed("malformed setup frame")
        chan.set_timeout(opts.timeout, role, "keepalive" in hello.capabilities)
        confined = None
        if restrict_to is not None:
            confined = _confine(restrict_to)
            _check_restricted(confined, role, paths[:1] if role == "finalize" else paths, opts)
        if role == "sender":  # what rsync's remote shell would expand
            from fscsync.run.wildcards import expand

            paths = [match for word in paths for match in expand(word)]
            if confined is not None:
                _check_restricted(confined, role, paths, opts)
        if role == "receiver" and opts.files_from_remote is not None:
            names = _read_files_from(opts.files_from_remote, confined, opts.from0)
            protocol.send_json(chan, protocol.READY, {"files_from": [n.hex() for n in names]})
        else:
            chan.send(protocol.READY)
        chan.flush()
        chan.set_compression(kind)
        if opts.bwlimit:
            chan.set_bwlimit(opts.bwlimit)
        if role == "finalize":  # the one final pass of a --parallel run
            from fscsync.run.finalpass import finalize

            if len(paths) != 2:
                raise StartupFailed("malformed setup frame")
            stats = finalize(opts, reporter, paths[0], paths[1], confined)
            protocol.send_json(chan, protocol.STATS, final_message(stats, reporter.exit_code))
        elif role == "receiver":
            from fscsync.engine.receiver import Receiver

            rx = Receiver(chan, opts, reporter, paths[0], item_dir, confined=confined)
            stats = rx.run()
            protocol.send_json(chan, protocol.STATS, final_message(stats, reporter.exit_code))
        else:
            from fscsync.engine.sender import Sender

            Sender(chan, opts, reporter, paths, confined=confined).run()
        chan.flush()
        return reporter.exit_code
    except PeerClosed:
        return errors.STREAM
    except (Exception, KeyboardInterrupt) as exc:
        return fatal(chan, exc, " on the server")
    finally:
        chan.stop_keepalive()


def _read_files_from(path: bytes, confined: Confined | None, from0: bool) -> list[bytes]:
    """--files-from=HOST:FILE of a push: the remote receiver reads the list (inside
    --restrict-to's tree, if any) and hands it to the sending client with READY."""
    from fscsync.engine.sources import files_from_names

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if confined is None else \
            confined.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FilesFromUnreadable(path=path, reason=exc) from None
    return files_from_names(data, from0)


def _listed_names(payload: bytes) -> list[bytes]:
    """The names a receiver read for --files-from=HOST:FILE, checked as a list of ours
    would be (no leading slash, no ..)."""
    from fscsync.engine.sources import files_from_names

    try:
        names = [bytes.fromhex(n) for n in protocol.load_json(payload)["files_from"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise StartupFailed("malformed files-from list from the other side") from None
    return files_from_names(b"\0".join(names), True)


def fatal(chan: Channel, exc: BaseException, where: str) -> int:
    """How an exception ends a run whose lines go to a client as frames (a server, a
    stream of --parallel): its message in a FATAL frame, its code as the exit code.
    A signal says which (the client may still be listening); anything unexpected is
    an InternalError, `where` naming the side (FSCSYNC_DEBUG=1 prints the traceback
    too). Called from the except clause."""
    if isinstance(exc, FscsyncError):
        return send_fatal(chan, str(exc), exc.code)
    if isinstance(exc, KeyboardInterrupt):
        return send_fatal(chan, str(exc) or "received SIGINT", errors.SIGNAL)
    if os.environ.get("FSCSYNC_DEBUG"):
        import traceback

        traceback.print_exc()
    bug = InternalError(exc, where)
    return send_fatal(chan, str(bug), bug.code)


def send_fatal(chan: Channel, message: str, code: int) -> int:
    """Tell the client why the server stops (it may no longer be listening)."""
    try:
        protocol.send_json(chan, protocol.FATAL, {"msg": message, "code": code})
        chan.flush()
    except (OSError, FscsyncError):
        pass
    return code


def _confine(root: bytes) -> Confined:
    try:
        return Confined(root)
    except OSError as exc:
        raise AllowedTreeUnusable(root=root, reason=exc) from None


def _check_restricted(confined: Confined, role: str, paths: list[bytes], opts: Options
                      ) -> None:
    """Refuse at once what lies outside; what passes is still opened only through
    `confined` (Receiver, Sender), so nothing planted after this check can lead out."""
    for path in paths:
        if not confined.inside(path):
            raise OutsideAllowedTree(path=path, root=confined.root)
    if (opts.temp_dir is not None and role == "receiver"
            and not confined.inside(temp_dir_path(paths[0], opts.temp_dir))):
        raise TempDirOutsideAllowedTree()
    if role != "receiver":
        return
    if opts.backup_dir and not confined.inside(temp_dir_path(paths[0], opts.backup_dir)):
        raise DirOptionOutsideAllowedTree(option="backup-dir")
    pdir = opts.partial_dir
    if pdir and (b".." in pdir.split(b"/") or pdir.startswith(b"/")
                 and not confined.inside(pdir)):
        raise DirOptionOutsideAllowedTree(option="partial-dir")

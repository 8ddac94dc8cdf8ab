"""The command line: runs what the options ask for and reports it the rsync way
(messages, exit codes); the option table itself is in argv.py."""

from __future__ import annotations

import os
import signal
import sys

from fscsync import __version__, errors
from fscsync.errors import FscsyncError, InternalError, Interrupted, UsageError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run() -> None:
    """The command's entry point: main(), then leave without tearing the interpreter
    down. Nothing is left to clean up by then, and module teardown would add about
    20 ms to every run, a tenth of a small no-change one."""
    catch_signals()
    code = main()
    _ignore_signals()  # the outcome is decided: a late signal changes nothing
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def catch_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP all raise Interrupted in the main thread, wherever the
    run is (a forked local server inherits this). A signal the caller ignores (nohup,
    SIGINT in a background job) stays ignored."""
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupted)


def _interrupted(signum: int, frame) -> None:
    _ignore_signals()  # a second signal must not cut the clean-up short
    raise Interrupted(signal.Signals(signum).name)


def _ignore_signals() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        return _main(args)
    except FscsyncError as exc:
        _say(sys.stderr, str(exc) if exc.bare else f"fscsync: {exc}")
        if exc.code == errors.SYNTAX:
            _final_error(exc.code)
        return exc.code
    except Exception as exc:
        if os.environ.get("FSCSYNC_DEBUG"):
            raise
        bug = InternalError(exc)
        _say(sys.stderr, f"fscsync: {bug}")
        return bug.code
    except KeyboardInterrupt:
        _final_error(errors.SIGNAL)
        return errors.SIGNAL


def _say(stream, line: str) -> None:
    """Print a line; a reader that went away (`| head -1`) takes nothing more, and the
    run goes on to its own exit code, as rsync's does."""
    if stream is None:  # started with that descriptor closed
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError:
        pass


def _server_args(args: list[str]) -> tuple[bool, str | None]:
    """(True, --restrict-to PATH or None) for the two command lines a server is started
    with; anything else (False, None) goes through the option parser."""
    if args == ["--server"]:
        return True, None
    if len(args) == 3 and args[:2] == ["--server", "--restrict-to"] and args[2]:
        return True, args[2]
    return False, None


def _main(args: list[str]) -> int:
    server, restrict_to = _server_args(args)
    if not server:
        from fscsync.cli.argv import options_from, parse_args
        from fscsync.cli.outflags import HelpWanted, levels

        try:
            ns = parse_args(args)
        except HelpWanted as answer:
            _say(sys.stdout, str(answer))
            return 0
        server, restrict_to = ns.server, ns.restrict_to
    if server:
        from fscsync.run.session import run_server

        return run_server(restrict_to=os.fsencode(restrict_to) if restrict_to else None)
    from fscsync.cli.progress import ConsoleReporter
    from fscsync.run.endpoint import parse_endpoint, plan

    if ns.help:
        from fscsync.cli.argv import help_text

        _say(sys.stdout, help_text().rstrip("\n"))
        return 0
    if ns.version:
        _say(sys.stdout, f"fscsync version {__version__}  protocol version "
                         f"{__import__('fscsync').PROTOCOL_VERSION}")
        return 0
    opts = options_from(ns)
    paths = [os.fsencode(x) for x in ns.args]
    if len(paths) == 1 or (ns.list_only and paths):
        opts.list_only = True
        opts.devices = opts.specials = True
        if len(paths) == 1:
            paths.append(b".")
    if len(paths) < 2:
        raise UsageError("need at least one SRC and a DEST (try --help)")
    endpoints = [parse_endpoint(x) for x in paths]
    p = plan(endpoints[:-1], endpoints[-1])
    if ns.files_from_arg is not None and len(p.sources) != 1:
        raise UsageError("--files-from takes one SRC (the names are relative to it) and a DEST")
    if opts.files_from_remote is not None and p.peer is None:
        raise UsageError("--files-from=HOST:FILE is read on the remote host: it needs a "
                         "remote SRC or DEST")
    info = levels("--info", ns.info)
    progress_mode = "progress2" if info.get("PROGRESS") == 2 else (
        "progress" if opts.progress else None)
    stats_level = info.get("STATS", 2 if opts.stats else int(opts.verbose > 0))
    mpi_rank = None
    if ns.mpi:
        from fscsync.run.mpi import world_rank

        _parallel(opts, p)
        mpi_rank = world_rank()
    out_format = None
    if ns.out_format is not None:  # -i is --out-format='%i %n%L', in rsync's words
        from fscsync.cli.logfile import ItemFormat

        out_format = ItemFormat(ns.out_format, "--out-format", every=True,
                                op="send" if p.client_sends else None,
                                prefix=_sender_prefix(p, "%f" in ns.out_format))
        if "%i" in ns.out_format:
            opts.itemize = max(opts.itemize, 1)
        else:
            opts.log_items = True
    log = None
    if ns.log_file and not mpi_rank:  # (rank 0 writes the log of an MPI run)
        from fscsync.cli.logfile import LogFile

        log = LogFile(ns.log_file, ns.log_file_format, itemized=opts.itemize > 0)
        opts.log_items = True
    reporter = ConsoleReporter(verbose=opts.verbose, quiet=ns.quiet, progress=progress_mode,
                               log=log, itemize=bool(opts.itemize),
                               human=ns.human_readable, out_format=out_format,
                               eight_bit=ns.eight_bit)
    if ns.lock_file:
        _lock(ns.lock_file, reporter)
    if not 0 <= ns.parallel <= 64:
        raise UsageError("--parallel takes a number of streams from 1 to 64")
    parallel = ns.parallel > 0 and not ns.mpi and _parallel(opts, p)
    peer = None
    if p.peer is not None and not (parallel or ns.mpi):  # connecting takes longest
        peer = _connect(p, ns)()
    from fscsync.run.session import run_client

    try:
        if ns.mpi:
            from fscsync.run.mpi import run_mpi

            outcome = run_mpi(opts, p, reporter, _connect(p, ns))
        elif parallel:
            from fscsync.run.parallel import run_parallel

            outcome = run_parallel(opts, p, reporter, ns.parallel, _connect(p, ns))
        else:
            outcome = run_client(opts, p, reporter, peer)
    except (FscsyncError, KeyboardInterrupt) as exc:
        if log is not None:
            code = exc.code if isinstance(exc, FscsyncError) else errors.SIGNAL
            if code != errors.SIGNAL:
                log.event("error", str(exc))
            log.write(errors.closing_line(code))
            log.close()
        raise
    finally:
        reporter.close()
    if mpi_rank:  # rank 0 says how the run went
        return outcome.exit_code
    if log is not None:
        log.summary(outcome.bytes_sent, outcome.bytes_received, outcome.stats.total_size)
        if outcome.exit_code != errors.OK:
            log.write(errors.closing_line(outcome.exit_code))
        log.close()
    if stats_level >= 2 or (stats_level and not ns.quiet):
        from fscsync.engine.stats import format_stats, summary

        if stats_level >= 2:
            lines = format_stats(outcome.stats, outcome.bytes_sent, outcome.bytes_received,
                                 outcome.elapsed, ns.human_readable)
        else:
            lines = ["", *summary(outcome.bytes_sent, outcome.bytes_received,
                                  outcome.stats.total_size, outcome.elapsed,
                                  ns.human_readable)]
        for line in lines:
            _say(sys.stdout, line)
    if outcome.exit_code not in (errors.OK,):
        _final_error(outcome.exit_code)
    return outcome.exit_code


def _lock(path: str, reporter) -> None:
    """--lock-file: an exclusive flock on FILE (made if missing, never removed: removing
    a lock file races with the next run opening it), held until this process ends. A
    second run waits for the first, so overlapping cron jobs run one after the other;
    the wait is interruptible (SIGINT, SIGTERM: exit 20)."""
    import fcntl

    from fscsync.errors import LockFileUnusable

    where = os.fsencode(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LockFileUnusable(path=where, reason=exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.info(f"waiting for the lock on {errors.escape(where)} (another run "
                          "holds it)", 1)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise LockFileUnusable(path=where, reason=exc) from None
def _parallel(opts, p) -> bool:
    """--parallel N: whether this run splits (it refuses what it cannot do)."""
    from fscsync.run.parallel import usable

    return usable(opts, p)


def _connect(p, ns):
    """What starts one connection to the remote peer (None: the run is local)."""
    if p.peer is None:
        return lambda: None
    from fscsync.run.transport import remote_command, spawn

    rsh = ns.rsh or os.environ.get("FSCSYNC_RSH") or "ssh"
    argv = remote_command(p.peer, rsh, ns.remote_fscsync)
    return lambda: spawn(argv)


def _sender_prefix(p, wanted: bool) -> str | None:
    """--out-format's %f: the sender's path of an entry is its source's directory (the
    source itself when it ends in '/') plus its name; known here for one source the
    client sends. rsync prints it without a leading '/'."""
    if not wanted:
        return None
    if not p.client_sends or len(p.sources) != 1:
        raise UsageError("--out-format's %f needs a single source sent from this side")
    src = os.fsdecode(p.sources[0]).lstrip("/")
    if src.endswith("/"):
        return src
    head = src.rpartition("/")[0]
    return head + "/" if head else ""


def _final_error(code: int) -> None:
    _say(sys.stderr, errors.closing_line(code))

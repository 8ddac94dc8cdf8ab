"""`mpirun -np N fscsync --mpi ...`: the streams of --parallel as MPI ranks (mpi4py,
the optional extra `fscsync[mpi]`, imported only here), for a source and a
destination mounted on every node (dsync's model) or a destination every rank
reaches over ssh.

Rank 0 coordinates as run.parallel does for forked streams: it runs the
directories' step, then serves the ranks' tickets and prints their lines (whole:
mpirun's own forwarding cuts lines of different ranks into each other), and runs
the one final pass. Ranks 1 to N-1 each run one stream. A rank's frames to rank 0
are the ones a forked stream writes on its pipe; a local destination's spool file
travels with them (node-local temporary directories), a remote one's stays on the
remote host, where the final pass reads it. A rank that dies ends the job through
mpirun (MPI's default error handler), never a hang.
"""

from __future__ import annotations

import os

from fscsync import errors
from fscsync.engine import spool
from fscsync.engine.report import Reporter
from fscsync.errors import UsageError
from fscsync.options import Options
from fscsync.run.endpoint import Plan
from fscsync.run.parallel import RESULT, Connect, _Run, _StreamReporter
from fscsync.run.partition import Partition
from fscsync.run.session import Outcome

FRAME, TICKET, END = 1, 2, 3
"""MPI tags: a stream's frame, a ticket asked for, a stream's end."""
SPOOL = 203


class _Tickets:
    """The ticket counter of run.partition, held by rank 0."""

    def __init__(self, comm):
        self.comm = comm

    def draw(self) -> int:
        self.comm.send(None, dest=0, tag=TICKET)
        return self.comm.recv(source=0, tag=TICKET)


class _Frames:
    """What a stream's reporter writes to: frames to rank 0 instead of a pipe."""

    def __init__(self, comm):
        self.comm = comm

    def send(self, ftype: int, *parts) -> None:
        self.comm.send((ftype, b"".join(bytes(p) for p in parts)), dest=0, tag=FRAME)

    def flush(self) -> None:
        pass


def world_rank() -> int:
    """This process's rank (0 prints the run's lines, --stats and the log file)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


def run_mpi(opts: Options, p: Plan, reporter: Reporter, connect: Connect) -> Outcome:
    """Every rank's part of one run; all ranks return rank 0's outcome."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        raise UsageError("--mpi needs at least 2 ranks (one coordinates)")
    if rank == 0:
        outcome = _coordinate(comm, size, opts, p, reporter, connect)
    else:
        _stream(comm, rank, size, opts, p, connect)
        outcome = None
    outcome = comm.bcast(outcome, root=0)
    MPI.Finalize()  # now: the command line ends with os._exit, past mpi4py's atexit
    return outcome


def _coordinate(comm, size: int, opts: Options, p: Plan, reporter: Reporter,
                connect: Connect) -> Outcome:
    import secrets
    import time

    started = time.monotonic()
    token = secrets.token_hex(8).encode()
    run = _Run(opts, p, reporter, connect, token)
    final = run.connect_final()
    run.not_inherited = [final.rfd, final.wfd]
    try:
        run.collect(run.start([Partition(0, 1, None, opts.hard_links, dirs_only=True)]),
                    first=True)
        go = run.fatal is None
        comm.bcast(token if go else None, root=0)
        if go:
            _serve(comm, size, run, token)
        if run.conclude(final, "--mpi", "rank"):
            final = None
    finally:
        if final is not None:
            final.stop()
    code = errors.worst(reporter.exit_code, run.code)
    return Outcome(code, run.stats, run.sent, run.received, time.monotonic() - started)


def _serve(comm, size: int, run: _Run, token: bytes) -> None:
    """Tickets, lines and results of ranks 1..size-1 until each has ended."""
    from mpi4py import MPI

    status = MPI.Status()
    ticket = 0
    ended = 0
    results: set[int] = set()
    while ended < size - 1:
        msg = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
        src, tag = status.Get_source(), status.Get_tag()
        if tag == TICKET:
            comm.send(ticket, dest=src, tag=TICKET)
            ticket += 1
        elif tag == END:
            ended += 1
        elif msg[0] == SPOOL:
            path = spool.spool_dir(token, make=True)
            with open(os.path.join(path, b"rank%d" % src), "wb") as f:  # (not the rank's
                # own name: on rank 0's node that rank removes it once sent)
                f.write(msg[1])
        else:
            if msg[0] == RESULT:
                results.add(src)
            run._frame(src - 1, msg[0], msg[1], False)
    if len(results) < size - 1 and run.fatal is None:
        run._failed("a rank of --mpi ended without its result", errors.STREAM)


def _stream(comm, rank: int, size: int, opts: Options, p: Plan, connect: Connect) -> None:
    token = comm.bcast(None, root=0)
    if token is None:
        return
    chan = _Frames(comm)
    part = Partition(rank - 1, size - 1, _Tickets(comm), opts.hard_links)
    name = b"files%d" % rank
    opts.spool = token + b"/" + name
    run = _Run(opts, p, _StreamReporter(chan), connect, token)
    try:
        run.run_stream(chan, part, rank - 1,
                       before_result=lambda: _ship_spool(comm, p, token, name))
    finally:
        comm.send(None, dest=0, tag=END)


def _ship_spool(comm, p: Plan, token: bytes, name: bytes) -> None:
    """A local destination's spool file goes to rank 0 (it may be on another node)."""
    if p.peer is not None:
        return
    path = os.path.join(spool.spool_dir(token), name)
    with open(path, "rb") as f:
        comm.send((SPOOL, f.read()), dest=0, tag=FRAME)
    os.unlink(path)

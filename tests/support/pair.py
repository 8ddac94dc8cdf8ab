"""A sender and a receiver in one process, over two pipes, as two processes would run
them: for tests that watch what each side holds (monkeypatched) while a run goes on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fscsync.engine.receiver import Receiver
from fscsync.engine.sender import Sender
from fscsync.options import Options
from fscsync.wire.protocol import Channel
from support.reporter import Collect


def run_pair(src: Path, dest: Path, opts: Options) -> tuple[Collect, Collect]:
    """Push src/ into dest/ (the receiver in a thread); the sender's and the receiver's
    reporters. Either side's exception is raised here, after both have stopped: the
    receiver's end closes when it stops, so a sender writing to it cannot hang."""
    to_rx, from_tx = os.pipe()
    to_tx, from_rx = os.pipe()
    tx_rep, rx_rep = Collect(), Collect()
    rx = Receiver(Channel(to_rx, from_rx), opts, rx_rep, bytes(dest) + b"/")
    failure: list[BaseException] = []

    def receive() -> None:
        try:
            rx.run()
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(from_rx)

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        Sender(Channel(to_tx, from_tx), opts, tx_rep, [bytes(src) + b"/"]).run()
    finally:
        os.close(from_tx)
        thread.join()
        for fd in (to_rx, to_tx):
            os.close(fd)
    if failure:
        raise failure[0]
    return tx_rep, rx_rep

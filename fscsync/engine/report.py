"""How the engine tells the outside world what happened, without knowing the terminal.

The engine calls a Reporter; the client's reporter prints (cli/progress), a
server's reporter turns the calls into LOG frames for its client.
Exit codes accumulate here so that one bad file never stops the rest.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from fscsync import errors

KINDS = frozenset({"error", "warning", "item", "info0", "info1", "info2"})
"""What emit() is given: the LOG frames' kinds."""


class Reporter(ABC):
    def __init__(self) -> None:
        self.exit_code = errors.OK
        self._lock = threading.Lock()

    def note_code(self, code: int) -> None:
        with self._lock:
            self.exit_code = errors.worst(self.exit_code, code)

    def error(self, message: str, code: int = errors.PARTIAL) -> None:
        """A per-file failure: printed, counted, the run goes on."""
        self.note_code(code)
        self.emit("error", message)

    def failed(self, err: errors.FscsyncError) -> None:
        """A per-file failure named by its class: its line, its code."""
        self.error(str(err), err.code)

    def warning(self, message: str) -> None:
        self.emit("warning", message)

    def info(self, message: str, level: int = 1) -> None:
        """level 0 = always shown (unless -q), 1 = -v, 2 = -vv."""
        self.emit(f"info{level}", message)

    def itemize(self, line: str, length: int | None = None) -> None:
        """An itemize line; `length` (the file's size) feeds --log-file-format's %l."""
        self.emit("item", line, length)

    def progress(self, path: bytes, done: int, total: int,  # noqa: B027 (optional hook)
                 idx: int = -1) -> None:
        """Bytes of file-list entry `idx` handled so far; the default ignores it."""

    def listed(self, count: int, size: int) -> None:  # noqa: B027 (optional hook)
        """The file list is complete: `count` entries, `size` bytes of files and links
        (what progress counts its to-chk and whole-transfer % against)."""

    @abstractmethod
    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        """Deliver one line: print it (client) or send it to the client (server)."""


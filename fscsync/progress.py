"""What the user sees: messages, itemize lines, and progress (rich on a TTY, plain
lines otherwise)."""

from __future__ import annotations

import sys
import time

from fscsync.errors import escape
from fscsync.report import Reporter


class ConsoleReporter(Reporter):
    """Prints engine events the way rsync does: data lines on stdout, errors on stderr."""

    def __init__(self, verbose: int = 0, quiet: bool = False, progress: str | None = None,
                 prefix: str = "fscsync", log=None, itemize: bool = True):
        super().__init__()
        self.itemize_lines = itemize
        self.verbose = verbose
        self.quiet = quiet
        self.prefix = prefix
        self.log = log
        self.out = sys.stdout
        self.err = sys.stderr
        self.bar = None
        self._closed: set = {s for s in (self.out, self.err) if s is None}
        """Streams that take no more output: None (started with that descriptor
        closed), or a pipe whose reader went away (`| head -1`)."""
        if progress and self.out is not None:
            self.bar = (RichProgress(progress) if self.out.isatty()
                        else PlainProgress(progress, self.out))

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        if self.log is not None:
            self.log.event(kind, message, length=length)
        if kind == "error":
            self._write(self.err, f"{self.prefix}: {message}")
        elif kind == "warning":
            if not self.quiet:
                self._write(self.err, f"{self.prefix}: warning: {message}")
        elif kind == "item":
            if not self.quiet and self.itemize_lines:
                self._write(self.out, message)
        elif kind.startswith("info"):
            level = int(kind[4:] or 0)
            if not self.quiet and level <= self.verbose:
                self._write(self.out, message)

    def _write(self, stream, line: str) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.interrupt()
            if stream in self._closed:
                return
            try:
                stream.write(line + "\n")
                stream.flush()
            except BrokenPipeError:
                self._closed.add(stream)

    def progress(self, path: bytes, done: int, total: int) -> None:
        if self.bar is not None and self.out not in self._closed:
            with self._lock:
                try:
                    self.bar.update(path, done, total)
                except BrokenPipeError:
                    self._closed.add(self.out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PlainProgress:
    """rsync-like progress lines for logs and pipes: one line per file when it ends."""

    def __init__(self, mode: str, out):
        self.mode = mode
        self.out = out
        self.start = time.monotonic()
        self.total_done = 0
        self._file_start = self.start
        self._current: bytes | None = None

    def update(self, path: bytes, done: int, total: int) -> None:
        if path != self._current:
            self._current = path
            self._file_start = time.monotonic()
        if done >= total:
            self.total_done += total
            elapsed = max(time.monotonic() - self._file_start, 1e-6)
            if self.mode == "progress2":
                whole = max(time.monotonic() - self.start, 1e-6)
                self.out.write(f"{self.total_done:>15,} {self.total_done / whole / 1e6:8.2f}MB/s "
                               f"{whole:8.2f}s\n")
            else:
                self.out.write(f"{escape(path)}\n{total:>15,} 100% "
                               f"{total / elapsed / 1e6:8.2f}MB/s {elapsed:8.2f}s\n")
            self.out.flush()

    def interrupt(self) -> None:
        """Plain lines need no redraw around other output."""

    def close(self) -> None:
        """Nothing is left on screen to clear."""


class RichProgress:
    """A live rich progress bar on a terminal."""

    def __init__(self, mode: str):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.mode = mode
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task("", total=None)
        self.done = 0
        self._current: bytes | None = None
        self._base = 0

    def update(self, path: bytes, done: int, total: int) -> None:
        if path != self._current:
            self._current = path
            self._base = self.done
        self.done = self._base + done
        self.progress.update(self.task, description=escape(path)[-40:], completed=self.done)

    def interrupt(self) -> None:
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()

"""What the user sees: messages, itemize lines, and rsync's progress lines."""

from __future__ import annotations

import re
import sys
import time

from fscsync.engine.report import Reporter
from fscsync.errors import escape

_HIGH = re.compile(r"\\#([23][0-7]{2})")


def raw_high(text: str) -> str:
    """-8: the escapes of bytes from 0x80 up (\\#200 to \\#377) back to those bytes, as
    surrogates the streams write raw; control bytes stay escaped, and a name's own
    backslash-hash (printed \\#134#...) is never one of them."""
    return _HIGH.sub(lambda m: chr(0xDC00 + int(m.group(1), 8)), text)


class ConsoleReporter(Reporter):
    """Prints engine events the way rsync does: data lines on stdout, errors on stderr."""

    def __init__(self, verbose: int = 0, quiet: bool = False, progress: str | None = None,
                 prefix: str = "fscsync", log=None, itemize: bool = True, human: int = 1,
                 out_format=None, eight_bit: bool = False):
        super().__init__()
        self.eight_bit = eight_bit  # -8: bytes from 0x80 up printed as they are
        self.out_format = out_format  # --out-format's ItemFormat: item lines through it
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
        if eight_bit:
            for stream in (self.out, self.err):
                if stream is not None and hasattr(stream, "reconfigure"):
                    stream.reconfigure(errors="surrogateescape")
        if progress and self.out is not None:
            self.bar = Progress(progress, self.out, self.out.isatty(), human,
                                names=not (verbose or itemize), eight_bit=eight_bit)

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        if self.log is not None and not (self.quiet and kind == "info0"):  # rsync: -q
            self.log.event(kind, message, length=length)  # drops FINFO, from the log too
        if kind == "error":
            self._write(self.err, f"{self.prefix}: {message}")
        elif kind == "warning":
            if not self.quiet:
                self._write(self.err, f"{self.prefix}: warning: {message}")
        elif kind == "item":
            if self.quiet:
                return
            if self.out_format is not None:
                text = self.out_format.line(message, length or 0, 0)
                if text is not None:
                    self._write(self.out, text)
            elif self.itemize_lines:
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
            if self.eight_bit:
                line = raw_high(line)
            try:
                stream.write(line + "\n")
                stream.flush()
            except BrokenPipeError:
                self._closed.add(stream)

    def progress(self, path: bytes, done: int, total: int, idx: int = -1) -> None:
        if self.bar is not None and self.out not in self._closed:
            with self._lock:
                try:
                    self.bar.update(path, done, total, idx)
                except BrokenPipeError:
                    self._closed.add(self.out)

    def listed(self, count: int, size: int) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.listed(count, size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Progress:
    """rsync's progress lines (progress.c), for one file (--progress) or the whole
    transfer (--info=progress2):
    `      3,000,000 100%  257.25MB/s    0:00:01 (xfr#1, to-chk=2/4)`.
    On a terminal the line is redrawn in place (\\r) while data moves and the last
    one stays; off it, only each file's final line is written, one per line."""

    def __init__(self, mode: str, out, tty: bool, human: int = 1, names: bool = True,
                 eight_bit: bool = False):
        self.whole = mode == "progress2"
        self.eight_bit = eight_bit
        self.out = out
        self.tty = tty
        self.human = human
        self.names = names and not self.whole  # no -v/-i line names the file
        self.count = 0  # entries in the file list, once it is complete
        self.size = 0
        self.xfr = 0
        self.finished = 0  # bytes of files done (progress2)
        self.start = time.monotonic()
        self._file_start = self._seen = self.start
        self._path: bytes | None = None
        self._drawn = 0.0
        self._open = False  # a redrawn line is on screen, its newline not yet written

    def listed(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def update(self, path: bytes, done: int, total: int, idx: int = -1) -> None:
        now = time.monotonic()
        if path != self._path:  # its data began to move after the last report
            self._path = path
            self._file_start = self._seen
            if self.names:
                self._end_line()
                name = escape(path)
                self.out.write(f"{raw_high(name) if self.eight_bit else name}\n")
        self._seen = now
        last = done >= total
        if last:
            self.xfr += 1
        if self.whole:
            ofs, start = self.finished + done, self.start
            size = max(self.size, ofs)
            if last:
                self.finished += total
        else:
            ofs, size, start = done, total, self._file_start
        if not last and (not self.tty or now - self._drawn < 0.2):
            return
        self._drawn = now
        line = "\r" + self.line(ofs, size, now - start, last, idx)
        if last and not (self.whole and self.tty):
            line += "\n"
            self._open = False
        else:
            self._open = True
        self.out.write(line if self.tty else line.lstrip("\r"))
        self.out.flush()

    def line(self, ofs: int, size: int, elapsed: float, last: bool, idx: int) -> str:
        """One progress line, without its \\r: the rate and time so far while the file
        moves (time left), or its whole time at the end, as rsync shows them."""
        from fscsync.engine.stats import human

        rate = ofs / elapsed / 1024 if elapsed > 0 else 0.0
        if last:
            remain = elapsed
            left = max(self.count - idx - 1, 0) if idx >= 0 else 0
            tail = f" (xfr#{self.xfr}, to-chk={left}/{self.count})"
        else:
            remain = (size - ofs) / 1024 / rate if rate else 0.0
            tail = "  "
        units = "kB/s"
        for bigger in ("MB/s", "GB/s"):
            if rate > 1024:
                rate /= 1024
                units = bigger
        pct = 100 if ofs == size else int(100 * ofs / size)
        secs = int(remain)
        return (f"{human(ofs, self.human):>15} {pct:3d}% {rate:7.2f}{units} "
                f"{secs // 3600:4d}:{secs // 60 % 60:02d}:{secs % 60:02d}{tail}")

    def _end_line(self) -> None:
        if self._open:
            self.out.write("\n")
            self._open = False

    def interrupt(self) -> None:
        """Another line is about to be printed: finish the one being redrawn."""
        self._end_line()

    def close(self) -> None:
        """The last line stays on the screen, ended."""
        self._end_line()
        self.out.flush()

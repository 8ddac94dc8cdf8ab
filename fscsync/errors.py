"""rsync's exit codes and the exceptions that carry them to the top."""

from __future__ import annotations

OK = 0
SYNTAX = 1
PROTOCOL_INCOMPATIBLE = 2
FILE_SELECT = 3
UNSUPPORTED = 4
STARTUP = 5
SOCKET_IO = 10
FILE_IO = 11
STREAM = 12
IPC = 14
SIGNAL = 20
PARTIAL = 23
VANISHED = 24
MAX_DELETE = 25
SSH = 255
CODES = frozenset({OK, SYNTAX, PROTOCOL_INCOMPATIBLE, FILE_SELECT, UNSUPPORTED, STARTUP,
                   SOCKET_IO, FILE_IO, STREAM, IPC, SIGNAL, PARTIAL, VANISHED, MAX_DELETE, SSH})
"""The exit codes fscsync ends with; a peer claiming any other gets STREAM."""
PER_FILE = frozenset({PARTIAL, VANISHED, MAX_DELETE})
"""The codes of errors that fail a file and let the run go on."""


class FscsyncError(Exception):
    """A fatal error: one line for the user and the exit code to end with."""

    bare = False
    """Printed without the "fscsync: " in front (where rsync prints its line bare)."""

    def __init__(self, message: str, code: int = FILE_IO):
        super().__init__(message)
        self.code = code


class UsageError(FscsyncError):
    def __init__(self, message: str):
        super().__init__(message, SYNTAX)


class UnknownOutputWord(UsageError):
    """An --info or --debug word rsync does not know (rsync's line has no name in front)."""

    bare = True


class ProtocolError(FscsyncError):
    def __init__(self, message: str, code: int = STREAM):
        super().__init__(message, code)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread as Python raises Ctrl-C:
    the run unwinds the same way for all three (temp files removed, the partial file
    kept with --partial, the far side told to end) and exits with SIGNAL, as rsync."""

    def __init__(self, name: str):
        super().__init__(f"received {name}")


def escape(path: bytes | str) -> str:
    """Print a byte path the way rsync does: printable ASCII as is, other bytes as \\#ooo."""
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    out = []
    for i, b in enumerate(path):
        if b == 0x5C and path[i + 1 : i + 2] == b"#":
            out.append("\\#134")
        elif 32 <= b < 127:
            out.append(chr(b))
        else:
            out.append(f"\\#{b:03o}")
    return "".join(out)


def escape_peer(text: str | bytes) -> str:
    """Text from the peer, made safe for the terminal and the log file: every character
    outside printable ASCII (terminal escapes, OSC sequences, \\r, newlines that would
    forge a line) becomes \\#ooo per UTF-8 byte, as escape() prints names. The peer's
    names arrive escaped already, so a backslash is kept as it is: the names read as
    the peer printed them, never escaped twice."""
    if isinstance(text, str):
        if text.isascii() and text.isprintable():
            return text
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = text
    return "".join(chr(b) if 32 <= b < 127 else f"\\#{b:03o}" for b in data)


def peer_code(value: object) -> int:
    """An exit code the peer sent: an int (a code fscsync does not know is a protocol
    error, 12, so no claim can wrap past 255 to 0); anything else is malformed."""
    if type(value) is not int:
        raise ProtocolError(f"malformed exit code from the other side: {value!r:.40}")
    return value if value in CODES else STREAM


def worst(a: int, b: int) -> int:
    """Combine two exit codes: any fatal code beats partial-transfer codes."""
    if a == OK:
        return b
    if b == OK:
        return a
    if a in PER_FILE and b in PER_FILE:
        return PARTIAL if PARTIAL in (a, b) else max(a, b)
    if a in PER_FILE:
        return b
    return a

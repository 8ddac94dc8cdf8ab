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


class FscsyncError(Exception):
    """A fatal error: one line for the user and the exit code to end with."""

    def __init__(self, message: str, code: int = FILE_IO):
        super().__init__(message)
        self.code = code


class UsageError(FscsyncError):
    def __init__(self, message: str):
        super().__init__(message, SYNTAX)


class ProtocolError(FscsyncError):
    def __init__(self, message: str, code: int = STREAM):
        super().__init__(message, code)


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


def worst(a: int, b: int) -> int:
    """Combine two exit codes: any fatal code beats partial-transfer codes."""
    if a == OK:
        return b
    if b == OK:
        return a
    partial = (PARTIAL, VANISHED, MAX_DELETE)
    if a in partial and b in partial:
        return PARTIAL if PARTIAL in (a, b) else max(a, b)
    if a in partial:
        return b
    return a

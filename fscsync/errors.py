"""rsync's exit codes, what each means, and one error class per condition.

Every layer imports this module and nothing above it. A class is the line the user
reads and the code the run ends with; raised, it ends the run (cli/main.py prints
it, a server sends it as FATAL); given to Reporter.failed, it fails one file and the
run goes on. Anything else that reaches the top is InternalError: a bug."""

from __future__ import annotations

import errno
import os

OK = 0
SYNTAX = 1
PROTOCOL_INCOMPATIBLE = 2
FILE_SELECT = 3
STARTUP = 5
FILE_IO = 11
STREAM = 12
IPC = 14
INTERNAL = 15
SIGNAL = 20
PARTIAL = 23
VANISHED = 24
MAX_DELETE = 25
TIMEOUT = 30
CONTIMEOUT = 35
SSH = 255
MEANING = {
    OK: "success",
    SYNTAX: "syntax or usage error",
    PROTOCOL_INCOMPATIBLE: "protocol incompatibility",
    FILE_SELECT: "errors selecting input/output files, dirs",
    STARTUP: "error starting client-server protocol",
    FILE_IO: "error in file IO",
    STREAM: "error in fscsync protocol data stream",
    IPC: "error in IPC code",
    INTERNAL: "internal error (a bug in fscsync)",
    SIGNAL: "received SIGINT, SIGTERM, or SIGHUP",
    PARTIAL: "some files/attrs were not transferred (see previous errors)",
    VANISHED: "some files vanished before they could be transferred",
    MAX_DELETE: "the --max-delete limit stopped deletions",
    TIMEOUT: "timeout in data send/receive",
    CONTIMEOUT: "timeout waiting for the other side's handshake",
    SSH: "unexplained error (ssh exited with 255)",
}
"""What each code means, in rsync's words where rsync has the code: the closing
"fscsync error: ... (code N)" line. INTERNAL is rsync's 15 ("sibling process
crashed"): the nearest of rsync's codes to a process that stopped on a bug."""
CODES = frozenset(MEANING)
"""The exit codes fscsync ends with; a peer claiming any other gets STREAM."""
PER_FILE = frozenset({PARTIAL, VANISHED, MAX_DELETE})
"""The codes of errors that fail a file and let the run go on."""
REPORT_TO = "see BUGS in fscsync(1)"
"""Where an internal error tells the user to report it."""


def closing_line(code: int) -> str:
    """rsync's last line of a run that did not succeed."""
    return f"fscsync error: {MEANING.get(code, 'error')} (code {code})"


def os_reason(exc: OSError, with_errno: bool = True) -> str:
    """The one way an OS error is shown, rsync's: "Permission denied (13)" (without the
    number where rsync's line has none). An error without an errno (raised by Python
    itself, or a condition fscsync names) shows its text."""
    if exc.errno is None:
        return str(exc) or type(exc).__name__
    text = exc.strerror or os.strerror(exc.errno)
    return f"{text} ({exc.errno})" if with_errno else text


OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A full disk or quota: rsync reports it as an error in file I/O (11), not 23."""


class FscsyncError(Exception):
    """An error: one line for the user and the exit code it leads to.

    A subclass names one condition, as borg's errors do: its `template` is the line
    and its `code` the exit code, so raising code says what happened, never a number.
    It is raised with the template's fields by name; a bytes field (a path) is shown
    escaped, an OSError field as os_reason() shows it. The base classes also take a
    ready line and a code, for conditions that have no class of their own."""

    template = "{message}"
    code = FILE_IO
    bare = False
    """Printed without the "fscsync: " in front (where rsync prints its line bare)."""
    errno_shown = True
    """An OSError field shows its number (False where rsync's line has none)."""

    def __init__(self, message: str | None = None, code: int | None = None,
                 **fields: object):
        if message is not None:
            fields["message"] = message
        self.fields = fields
        if code is not None:
            self.code = code
        super().__init__(self.template.format_map(
            {k: _shown(v, self.errno_shown) for k, v in fields.items()}))


def _shown(value: object, errno_shown: bool) -> object:
    if isinstance(value, bytes):
        return escape(value)
    if isinstance(value, OSError):
        return os_reason(value, errno_shown)
    return value


class UsageError(FscsyncError):
    """A command line fscsync cannot run."""

    code = SYNTAX

    def __init__(self, message: str | None = None, **fields: object):
        super().__init__(message, **fields)


class UnknownOutputWord(UsageError):
    """An --info or --debug word rsync does not know (rsync's line has no name in front)."""

    template = 'Unknown {option} item: "{word}"'
    bare = True


class ProtocolError(FscsyncError):
    """The other side sent what the protocol does not allow, or nothing in time."""

    code = STREAM


class StartupFailed(ProtocolError):
    """The two sides could not begin: the peer is not fscsync, or the handshake or the
    setup frame is malformed (rsync's "error starting client-server protocol")."""

    code = STARTUP


class NoAnswer(StartupFailed):
    """The peer said nothing within the time a step of the run allows."""

    template = "no answer from the other side in {seconds:.0f} s"


class IoTimeout(ProtocolError):
    """--timeout: nothing came from the other side, and nothing could be sent to it,
    for that long (rsync's line; `side` is this end's role)."""

    template = "[{side}] io timeout after {seconds} seconds -- exiting"
    code = TIMEOUT


class ConnectTimeout(StartupFailed):
    """--contimeout: the other side did not answer the handshake in time."""

    template = "timeout: the other side did not answer the handshake in {seconds} seconds"
    code = CONTIMEOUT


class LockFileUnusable(FscsyncError):
    """--lock-file names a file that cannot be opened or locked."""

    template = "cannot lock {path} (--lock-file): {reason}"
    code = FILE_IO


class VersionMismatch(ProtocolError):
    template = ("protocol version mismatch: we speak {ours}, the other side ({program}) "
                "speaks {theirs}")
    code = PROTOCOL_INCOMPATIBLE


class PeerClosed(ProtocolError):
    """The peer went away: the stream ended before the exchange did."""

    template = "connection closed by the other side"


class ClosedBeforeHandshake(PeerClosed):
    """Nothing at all came back: most often no fscsync on the other side's PATH."""

    template = ("connection closed before the handshake (is fscsync installed on the other "
                "side?)")
    code = STARTUP


class NotFscsync(StartupFailed):
    template = "the other side is not fscsync (it said {said!r})"


class WrongRole(StartupFailed):
    template = "the other side answered as {role!r}, not as an fscsync {want}"


class PeerKilled(ProtocolError):
    template = "{closed} (the other side was killed by signal {signal})"


class StreamEnded(ProtocolError):
    """A stream of --parallel ended without its result (a kill, a crash)."""

    template = "stream {index} of --parallel ended before its transfer did ({why})"


class SshFailed(FscsyncError):
    """ssh ends with 255 when it cannot connect or log in: rsync's code for that."""

    template = "connection unexpectedly closed (ssh exited with 255)"
    code = SSH


class PeerFailed(FscsyncError):
    """The other side stopped on a fatal error: its line (escaped) and its code."""


class NoDaemonMode(FscsyncError):
    template = ("{arg}: fscsync has no daemon mode (rsync://, HOST::MODULE); use HOST:PATH "
                "over a remote shell")
    code = STARTUP


class ExecFailed(FscsyncError):
    """The remote shell could not be started."""

    template = "failed to exec {program}: {reason}"
    code = STARTUP


class FilterFileUnreadable(FscsyncError):
    """--exclude-from/--include-from or a merge rule names a file that cannot be read
    (rsync's line and code: kind is "exclude" or "include")."""

    template = "failed to open {kind} file {path}: {reason}"
    code = FILE_IO


class FilesFromUnreadable(UsageError):
    """--files-from names a file that cannot be read (rsync's line: the reason without
    its errno, and a usage error's code)."""

    template = "failed to open files-from file {path}: {reason}"
    errno_shown = False


class BadFilterRule(UsageError):
    """A filter rule rsync would refuse (its own line), or merge files nested too deep."""


class LogFileUnopenable(FscsyncError):
    """--log-file names a file that cannot be opened for appending."""

    template = "failed to open log-file {path}: {reason}"


class AllowedTreeUnusable(FscsyncError):
    """The server's --restrict-to tree cannot be opened."""

    template = 'cannot open the allowed tree "{root}": {reason}'
    code = FILE_SELECT


class OutsideAllowedTree(FscsyncError):
    """A client asked a --restrict-to server for a path outside its tree."""

    template = 'path "{path}" is outside the allowed tree "{root}" (--restrict-to)'
    code = FILE_SELECT


class BackupDirNotDirectory(FscsyncError):
    template = "The backup-dir is not a directory: {path}"
    code = SYNTAX


class TempDirOutsideAllowedTree(FscsyncError):
    template = "--temp-dir outside the allowed tree (--restrict-to)"
    code = FILE_SELECT


class TempDirUnusable(FscsyncError):
    """-T DIR cannot be opened as a directory from the destination."""

    template = 'cannot use --temp-dir "{path}": {reason}'
    code = FILE_IO


class DestinationUnusable(FscsyncError):
    """The destination cannot be looked at or opened (rsync's code 3): `what` is the
    step, "stat" or "open"."""

    template = 'cannot {what} destination "{path}": {reason}'
    code = FILE_SELECT


class DestinationNotADirectory(FscsyncError):
    """Several files, or a directory, sent to a destination that is a file."""

    template = 'destination "{path}" is not a directory'
    code = FILE_SELECT


class DirOptionOutsideAllowedTree(FscsyncError):
    """--backup-dir or --partial-dir naming a place outside a --restrict-to tree."""

    template = "--{option} outside the allowed tree (--restrict-to)"
    code = FILE_SELECT


# ---- one file fails, the run goes on (Reporter.failed) -------------------------------


class OSFailed(FscsyncError):
    """rsync's line for an operation on a path that the OS refused:
    'mkdir "dst/a" failed: Permission denied (13)'. It fails one file (23), unless
    raised with a fatal code."""

    template = '{what} "{path}" failed: {reason}'
    code = PARTIAL

    def __init__(self, what: str, path: bytes | str, reason: OSError, code: int | None = None):
        if code is None and reason.errno in OUT_OF_SPACE:
            code = FILE_IO
        super().__init__(code=code, what=what, path=os.fsencode(path), reason=reason)


class JournalUnrecoverable(FscsyncError):
    """The redo journal a killed in-place update left cannot be applied; the file is
    compared as it is (the journal is litter for the final pass)."""

    template = 'cannot recover "{path}": {reason}'
    code = PARTIAL


class EncdataUnsettable(FscsyncError):
    """The destination inode refuses the entry's encdata (already encrypted with
    another context, say): the entry fails, its previous copy stays."""

    template = 'cannot set encdata on "{path}": {reason}'
    code = PARTIAL


class DirEncdataUnsettable(EncdataUnsettable):
    template = 'cannot set encdata on directory "{path}": {reason}'


class ListTooBigToHold(FscsyncError):
    """--delete-before and --delete-during compare nothing until the whole file list
    is in; past the receiver's bound a run stops rather than exhaust its memory."""

    template = ("the file list is too big to hold for --delete-{when} ({size} bytes "
                "compressed); use --delete-delay or --delete-after")
    code = FILE_IO


class Vanished(FscsyncError):
    """A source file listed, then gone before it was read: rsync's own code for it."""

    template = 'file has vanished: "{path}"'
    code = VANISHED


class NoReferent(FscsyncError):
    """-L, -k or --copy-unsafe-links met a symlink that points nowhere (rsync's line)."""

    template = 'symlink has no referent: "{path}"'
    code = PARTIAL


class SendOpenFailed(FscsyncError):
    template = 'send_files failed to open "{path}": {reason}'
    code = PARTIAL


class ReadFailed(FscsyncError):
    template = 'read errors mapping "{path}": {reason}'
    code = PARTIAL


class ChangedWhileSent(FscsyncError):
    """The file's size or mtime moved while it was read: what was sent may be torn."""

    template = ('"{path}" changed while it was being sent; the destination keeps its '
                "previous copy")
    code = PARTIAL


class MalformedEncdata(FscsyncError):
    template = 'malformed encdata on "{path}": {why}'
    code = PARTIAL


class NoKeylessRead(FscsyncError):
    """An encrypted source file on a kernel that cannot hand out its ciphertext."""

    template = 'cannot read "{path}" without its key: {why}'
    code = PARTIAL


class InternalError(FscsyncError):
    """An exception no code expected: a bug. The user learns that, and where to say
    so, in one line (FSCSYNC_DEBUG=1 shows the traceback instead); its own exit code
    tells a script it is no fault of the files or the connection."""

    template = ("internal error{where}: {kind}: {detail} (a bug in fscsync: please "
                "report it with the command line, " + REPORT_TO + ")")
    code = INTERNAL

    def __init__(self, exc: BaseException, where: str = ""):
        super().__init__(where=where, kind=type(exc).__name__, detail=escape_peer(str(exc)))


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

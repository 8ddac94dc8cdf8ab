"""The error classes: each names one condition with its line and rsync's exit code; OS
errors are shown one way; a bug ends as an internal error, not as a protocol error."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

from fscsync import errors
from fscsync.errors import (
    AllowedTreeUnusable,
    BackupDirNotDirectory,
    BadFilterRule,
    ChangedWhileSent,
    ClosedBeforeHandshake,
    ConnectTimeout,
    DestinationNotADirectory,
    DestinationUnusable,
    DirEncdataUnsettable,
    DirOptionOutsideAllowedTree,
    EncdataUnsettable,
    ExecFailed,
    FilesFromUnreadable,
    FilterFileUnreadable,
    FscsyncError,
    InternalError,
    IoTimeout,
    JournalUnrecoverable,
    ListTooBigToHold,
    LockFileUnusable,
    LogFileUnopenable,
    MalformedEncdata,
    NoAnswer,
    NoDaemonMode,
    NoKeylessRead,
    NoReferent,
    NotFscsync,
    OSFailed,
    OutsideAllowedTree,
    PeerClosed,
    PeerFailed,
    PeerKilled,
    ProtocolError,
    ReadFailed,
    SendOpenFailed,
    SshFailed,
    StartupFailed,
    StreamEnded,
    TempDirOutsideAllowedTree,
    TempDirUnusable,
    UnknownOutputWord,
    UsageError,
    Vanished,
    VersionMismatch,
    WrongRole,
)

EACCES = PermissionError(errno.EACCES, os.strerror(errno.EACCES))


ENOENT = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
CLASSES = [
    (FilterFileUnreadable(kind="exclude", path=b"rules", reason=EACCES),
     "failed to open exclude file rules: Permission denied (13)", 11),
    (BadFilterRule("Unknown filter rule: foo"), "Unknown filter rule: foo", 1),
    (FilesFromUnreadable(path=b"/nonexist", reason=ENOENT),
     "failed to open files-from file /nonexist: No such file or directory", 1),
    (LogFileUnopenable(path=b"/no/log", reason=ENOENT),
     "failed to open log-file /no/log: No such file or directory (2)", 11),
    (ExecFailed(program=b"nossh", reason=ENOENT),
     "failed to exec nossh: No such file or directory (2)", 5),
    (AllowedTreeUnusable(root=b"/srv", reason=EACCES),
     'cannot open the allowed tree "/srv": Permission denied (13)', 3),
    (OutsideAllowedTree(path=b"/etc", root=b"/srv"),
     'path "/etc" is outside the allowed tree "/srv" (--restrict-to)', 3),
    (TempDirOutsideAllowedTree(), "--temp-dir outside the allowed tree (--restrict-to)", 3),
    (DirOptionOutsideAllowedTree(option="backup-dir"),
     "--backup-dir outside the allowed tree (--restrict-to)", 3),
    (BackupDirNotDirectory(path=b"/srv/b\xff"),
     "The backup-dir is not a directory: /srv/b\\#377", 1),
    (NoDaemonMode(arg=b"host::mod"), "host::mod: fscsync has no daemon mode (rsync://, "
     "HOST::MODULE); use HOST:PATH over a remote shell", 5),
    (StartupFailed("malformed setup frame"), "malformed setup frame", 5),
    (NoAnswer(seconds=60.0), "no answer from the other side in 60 s", 5),
    (IoTimeout(side="receiver", seconds=3), "[receiver] io timeout after 3 seconds -- exiting",
     30),
    (ConnectTimeout(seconds=5),
     "timeout: the other side did not answer the handshake in 5 seconds", 35),
    (LockFileUnusable(path=b"/run/x.lock", reason=EACCES),
     "cannot lock /run/x.lock (--lock-file): Permission denied (13)", 11),
    (NotFscsync(said="SSH-2.0"), "the other side is not fscsync (it said 'SSH-2.0')", 5),
    (WrongRole(role="client", want="server"),
     "the other side answered as 'client', not as an fscsync server", 5),
    (VersionMismatch(ours=4, program="fscsync 9", theirs=9),
     "protocol version mismatch: we speak 4, the other side (fscsync 9) speaks 9", 2),
    (PeerClosed(), "connection closed by the other side", 12),
    (ClosedBeforeHandshake(), "connection closed before the handshake (is fscsync "
     "installed on the other side?)", 5),
    (PeerKilled(closed="connection closed by the other side", signal=9),
     "connection closed by the other side (the other side was killed by signal 9)", 12),
    (StreamEnded(index=2, why="killed by signal 9"),
     "stream 2 of --parallel ended before its transfer did (killed by signal 9)", 12),
    (SshFailed(), "connection unexpectedly closed (ssh exited with 255)", 255),
    (PeerFailed("[host] no room", 11), "[host] no room", 11),
    (OSFailed("change_dir", b"src", EACCES), 'change_dir "src" failed: Permission denied (13)',
     23),
    (OSFailed("mkdir", b"dst/a", EACCES, errors.FILE_IO),
     'mkdir "dst/a" failed: Permission denied (13)', 11),
    (OSFailed("write", b"f", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
     'write "f" failed: No space left on device (28)', 11),
    (JournalUnrecoverable(path=b"d/.f.~fscsync~redo", reason=EACCES),
     'cannot recover "d/.f.~fscsync~redo": Permission denied (13)', 23),
    (EncdataUnsettable(path=b"f", reason=OSError("already encrypted with another context")),
     'cannot set encdata on "f": already encrypted with another context', 23),
    (DirEncdataUnsettable(path=b"d", reason=EACCES),
     'cannot set encdata on directory "d": Permission denied (13)', 23),
    (DestinationUnusable(what="stat", path=b"dst/x", reason=EACCES),
     'cannot stat destination "dst/x": Permission denied (13)', 3),
    (DestinationNotADirectory(path=b"dst"), 'destination "dst" is not a directory', 3),
    (TempDirUnusable(path=b"tmp", reason=ENOENT),
     'cannot use --temp-dir "tmp": No such file or directory (2)', 11),
    (Vanished(path=b"d/f"), 'file has vanished: "d/f"', 24),
    (ListTooBigToHold(when="before", size=3 << 30),
     "the file list is too big to hold for --delete-before (3221225472 bytes compressed); "
     "use --delete-delay or --delete-after", 11),
    (NoReferent(path=b"src/l\xff"), 'symlink has no referent: "src/l\\#377"', 23),
    (UnknownOutputWord(option="--info", word="bogus"), 'Unknown --info item: "bogus"', 1),
    (SendOpenFailed(path=b"f", reason=EACCES),
     'send_files failed to open "f": Permission denied (13)', 23),
    (ReadFailed(path=b"f", reason=OSError(errno.EIO, os.strerror(errno.EIO))),
     'read errors mapping "f": Input/output error (5)', 23),
    (ChangedWhileSent(path=b"f"),
     '"f" changed while it was being sent; the destination keeps its previous copy', 23),
    (MalformedEncdata(path=b"f", why=ValueError("no size")), 'malformed encdata on "f": no size',
     23),
    (NoKeylessRead(path=b"f", why="no O_CIPHERTEXT"),
     'cannot read "f" without its key: no O_CIPHERTEXT', 23),
    (InternalError(ValueError("boom")), "internal error: ValueError: boom (a bug in fscsync: "
     "please report it with the command line, see BUGS in fscsync(1))", 15),
]


@pytest.mark.parametrize("exc, line, code", CLASSES,
                         ids=[type(c[0]).__name__ for c in CLASSES])
def test_each_class_is_its_line_and_code(exc: FscsyncError, line: str, code: int) -> None:
    assert str(exc) == line
    assert exc.code == code


def test_every_class_is_checked_above() -> None:
    """A class added to errors.py without a line here could hold a template its fields
    do not fill: that would only show when it is raised."""
    named = {cls for cls in vars(errors).values() if isinstance(cls, type)
             and issubclass(cls, FscsyncError) and cls not in (FscsyncError, ProtocolError,
                                                              UsageError)}
    assert named == {type(c[0]) for c in CLASSES}


def test_the_base_classes_take_a_line_and_a_code() -> None:
    """What other modules raise while they move to named classes."""
    assert (str(FscsyncError("no room", errors.FILE_SELECT)), FscsyncError("x").code) == (
        "no room", errors.FILE_IO)
    assert FscsyncError("no room", errors.FILE_SELECT).code == errors.FILE_SELECT
    assert (str(UsageError("bad")), UsageError("bad").code) == ("bad", errors.SYNTAX)
    assert ProtocolError("late").code == errors.STREAM
    assert ProtocolError("late", errors.STARTUP).code == errors.STARTUP
    assert isinstance(OSFailed("mkdir", b"a", EACCES), FscsyncError)


def test_os_errors_show_their_paths_escaped() -> None:
    """A byte path that is not UTF-8 or holds a newline shows as rsync prints it, so a
    name can never forge a second line."""
    exc = OSFailed("mkdir", b"caf\xe9\nfscsync: forged", EACCES)
    assert str(exc) == 'mkdir "caf\\#351\\#012fscsync: forged" failed: Permission denied (13)'
    assert str(OSFailed("open", "na\udcffme", EACCES)).startswith('open "na\\#377me"')


def test_os_reason_is_rsyncs_shape() -> None:
    assert errors.os_reason(EACCES) == "Permission denied (13)"
    assert errors.os_reason(OSError(errno.ENOSPC, "")) == "No space left on device (28)"
    assert errors.os_reason(OSError("no errno here")) == "no errno here"
    assert errors.os_reason(EACCES, with_errno=False) == "Permission denied"


def test_every_code_is_documented_and_has_its_closing_line() -> None:
    """The codes fscsync ends with are the ones the man page's EXIT VALUES explains."""
    source = (REPO / "man/fscsync.1").read_text()
    section = source.split(".SH EXIT VALUES\n", 1)[1].split(".SH ", 1)[0]
    documented = {int(ln.split()[1]) for ln in section.splitlines() if ln.startswith(".B ")
                  and ln.split()[1].isdigit()}
    assert documented == errors.CODES
    assert errors.closing_line(23) == (
        "fscsync error: some files/attrs were not transferred (see previous errors) (code 23)")
    assert errors.peer_code(errors.INTERNAL) == errors.INTERNAL


def test_internal_error_says_it_is_a_bug_and_where_to_report() -> None:
    exc = InternalError(KeyError("x\n\x1b[2J"), " on the server")
    line = str(exc)
    assert exc.code == errors.INTERNAL == 15
    assert line.startswith("internal error on the server: KeyError: ")
    assert "\n" not in line and "\x1b" not in line
    assert "a bug in fscsync" in line and "BUGS in fscsync(1)" in line


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "FSCSYNC_DEBUG"])
def test_an_unexpected_exception_ends_as_an_internal_error(tmp_path: Path, debug: bool
                                                           ) -> None:
    """A failure no code handles (here pipe2 failing as the local server is started,
    injected with strace): one line and exit 15, no traceback; FSCSYNC_DEBUG=1 shows
    the traceback instead."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}
    env.pop("FSCSYNC_DEBUG", None)
    if debug:
        env["FSCSYNC_DEBUG"] = "1"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=pipe2",
         "-e", "inject=pipe2:error=EMFILE", sys.executable, "-m", "fscsync", "-a",
         f"{src}/", f"{tmp_path}/dst/"],
        capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    text = proc.stderr.decode()
    if debug:
        assert "Traceback" in text and "OSError" in text, text
        return
    assert proc.returncode == 15, text
    assert text.splitlines() == [
        "fscsync: internal error: OSError: [Errno 24] Too many open files (a bug in "
        "fscsync: please report it with the command line, see BUGS in fscsync(1))"], text
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("exc, code, message", [
    (IoTimeout(side="receiver", seconds=5), 30, "[receiver] io timeout after 5 seconds -- "
                                                "exiting"),
    (errors.Interrupted("SIGTERM"), 20, "received SIGTERM"),
    (KeyboardInterrupt(), 20, "received SIGINT"),
    (KeyError("x"), 15, "internal error in stream 2: KeyError: 'x' (a bug in fscsync: "),
])
def test_a_fatal_exception_becomes_one_frame_and_its_code(exc: BaseException, code: int,
                                                          message: str) -> None:
    """A server's or a stream's end (session.fatal): its line in one FATAL frame for the
    client, its code as the exit status."""
    from fscsync.run.session import fatal
    from fscsync.wire import protocol

    r, w = os.pipe()
    try:
        assert fatal(protocol.Channel(r, w), exc, " in stream 2") == code
        ftype, payload = protocol.Channel(r, w).recv()
    finally:
        os.close(r)
        os.close(w)
    msg = protocol.load_json(payload)
    assert ftype == protocol.FATAL and msg["code"] == code
    assert msg["msg"].startswith(message)

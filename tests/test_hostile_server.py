"""Issue 19: the client never trusts the server either.

test_hostile.py plays a hostile client against the real server; here a scripted
server (tests/support/fake_server.py, on fscsync's own frame codec) is the real
client's remote shell. Its text reaches the terminal and the --log-file escaped
(finding 5); its FATAL, STATS and FINISHED fields are checked, so no claim turns a
failure into exit 0 or an internal error (finding 12).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from support import REPO, run_fscsync
from support.fake_server import SCRIPT_ENV

STREAM = 12
PARTIAL = 23
VANISHED = 24
RSH = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'tests/support/fake_server.py'))}"
HOSTILE = ("evil \x1b]0;owned\x07 \x1b[2J\x9b31m \r\nfscsync: forged line \\#033 "
           "\ud800 \u202e end")
"""An OSC title, a clear-screen, a C1 CSI, a carriage return and a newline that would
forge a line of its own, a lone surrogate, a right-to-left override."""
UNSAFE = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f-\xff]")
"""Bytes that must never reach the terminal or the log (newlines end fscsync's lines)."""


def run(steps: list[dict], *args: str, pull: bool = True, tmp_path: Path) -> tuple:
    """The real client against the scripted server: a pull into tmp_path/dst (or a
    push of tmp_path/src); (exit code, stdout, stderr, log file)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_bytes(b"data\n")
    log = tmp_path / "run.log"
    ends = ["h:src/", f"{tmp_path}/dst/"] if pull else [f"{src}/", "h:dst/"]
    proc = run_fscsync("-a", "-v", f"--log-file={log}", "-e", RSH, *args, *ends,
                       env={SCRIPT_ENV: json.dumps(steps)}, timeout=60)
    text = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in text and "internal error" not in text, text
    return proc.returncode, proc.stdout, proc.stderr, log.read_bytes() if log.exists() else b""


def files(io_error: bool = False) -> dict:
    return {"do": "files", "files": {"f.txt": "data\n"}, "io_error": io_error}


def serve(exit_code: object = 0, **stats: object) -> dict:
    return {"do": "serve", "finished": {"exit_code": exit_code, **stats}}


def log(kind: object, msg: object, **more: object) -> dict:
    return {"do": "frame", "type": "LOG", "json": {"kind": kind, "msg": msg, **more}}


def fatal(msg: object = "it broke", code: object = PARTIAL) -> dict:
    return {"do": "frame", "type": "FATAL", "json": {"msg": msg, "code": code}}


# ---- finding 5: the peer's text is escaped ------------------------------------------------


@pytest.mark.parametrize("end", ["finished", "fatal"])
def test_peer_text_reaches_the_terminal_and_the_log_escaped(tmp_path: Path, end: str) -> None:
    """Every kind of line a server sends, and its fatal error, carry terminal escapes,
    \\r and a newline: printed and logged as \\#ooo, one line each, the server's own
    escaped names (\\#033 as text) shown as they came."""
    steps = [files(), log("error", HOSTILE), log("warning", HOSTILE), log("info0", HOSTILE),
             log("item", ">f+++++++++ " + HOSTILE, len=5)]
    steps.append(serve(PARTIAL) if end == "finished" else fatal(HOSTILE))
    code, out, err, logged = run(steps, "-i", tmp_path=tmp_path)
    assert code == PARTIAL, err
    for where, data in (("stdout", out), ("stderr", err), ("log", logged)):
        assert not UNSAFE.findall(data), f"{where}: {data!r}"
        assert not re.search(rb"^fscsync: forged", data, re.M), f"{where}: {data!r}"
    seen = (out + err).decode()
    shown = (r"evil \#033]0;owned\#007 \#033[2J\#302\#23331m \#015\#012fscsync: forged line "
             r"\#033 \#355\#240\#200 \#342\#200\#256 end")
    assert seen.count(shown) == 4 + (end == "fatal"), seen
    assert logged.count(rb"\#033]0;owned") >= 3, logged


# ---- finding 12: the peer's fields are checked ----------------------------------------------


MALFORMED = {
    "fatal code is a string": [files(), fatal(code="23")],
    "fatal code is a list": [files(), fatal(code=[23])],
    "fatal message is a list": [files(), fatal(msg=["x"])],
    "log kind unknown": [files(), log("info9", "x")],
    "log kind is a list": [files(), log(["error"], "x")],
    "log text is a number": [files(), log("info0", 7)],
    "log length is a string": [files(), log("item", ">f+++++++++ f.txt", len="5")],
    "log error code is a string": [files(), log("error", "x", code="23")],
    "log code on a line that is no error": [files(), log("warning", "x", code=PARTIAL)],
    "finished exit code is a string": [files(), serve("0")],
    "finished counter is a string": [files(), serve(0, files_sent="1")],
    "finished counter is negative": [files(), serve(0, literal=-5)],
    "finished counter is huge": [files(), serve(0, literal=1 << 64)],
    "finished kinds are a list": [files(), serve(0, files=[1])],
    "finished kind unknown": [files(), serve(0, files={"evil": 1})],
    "finished io_error is a string": [files(), serve(0, io_error="no")],
}


@pytest.mark.parametrize("steps", MALFORMED.values(), ids=MALFORMED)
def test_malformed_control_fields_are_a_protocol_error(tmp_path: Path, steps: list) -> None:
    code, _, err, _ = run(steps, tmp_path=tmp_path)
    assert code == STREAM, err
    assert b"malformed" in err, err


PUSH_MALFORMED = {
    "stats exit code is a list": {"exit_code": [0]},
    "stats kinds are a list": {"files": [], "exit_code": 0},
    "stats counter is a string": {"files": {"reg": "many"}, "exit_code": 0},
}


@pytest.mark.parametrize("final", PUSH_MALFORMED.values(), ids=PUSH_MALFORMED)
def test_malformed_stats_of_a_receiving_server_are_a_protocol_error(tmp_path: Path,
                                                                     final: dict) -> None:
    code, _, err, _ = run([{"do": "receive", "stats": final}], pull=False, tmp_path=tmp_path)
    assert code == STREAM, err
    assert b"malformed" in err, err


@pytest.mark.parametrize("claim", [256, 512 + PARTIAL, 99, -1, 0])
@pytest.mark.parametrize("where", ["fatal", "error line", "finished", "stats"])
def test_an_exit_code_fscsync_does_not_know_becomes_12(tmp_path: Path, claim: int,
                                                       where: str) -> None:
    """256 would wrap to exit 0 after a failure: any code fscsync never ends with is 12
    (and a fatal error, or an error line, claiming 0 is still an error)."""
    if where == "stats":
        steps = [{"do": "receive", "stats": {"exit_code": claim}}]
    elif where == "error line":
        steps = [files(), log("error", "x", code=claim), serve(0)]
    else:
        steps = [files(), fatal(code=claim)] if where == "fatal" else [files(), serve(claim)]
    code, _, err, _ = run(steps, pull=where != "stats", tmp_path=tmp_path)
    if claim == 0 and where in ("finished", "stats"):
        assert code == 0, err
    else:
        assert code == STREAM, err


@pytest.mark.parametrize("case", ["error line", "vanished line", "io_error"])
def test_a_pull_exits_with_what_it_saw_not_the_servers_claim(tmp_path: Path,
                                                             case: str) -> None:
    """The server reports a file it could not read (or flags an I/O error in its file
    list, as rsync's sender does) and then claims exit 0: the client exits 23 (24 for
    a vanished file), as rsync's client does from the errors it received."""
    if case == "io_error":
        steps, want = [files(io_error=True), serve(0)], PARTIAL
    else:
        vanished = case == "vanished line"
        line = log("error", 'file has vanished: "g.txt"' if vanished else
                   'send_files failed to open "g.txt": Permission denied (13)',
                   code=VANISHED if vanished else PARTIAL)
        steps, want = [files(), line, serve(0)], VANISHED if vanished else PARTIAL
    code, _, err, _ = run(steps, tmp_path=tmp_path)
    assert code == want, err
    assert (tmp_path / "dst/f.txt").read_bytes() == b"data\n"


def test_a_well_behaved_scripted_server_gives_exit_0(tmp_path: Path) -> None:
    """The baseline: the same script without a hostile frame is a clean pull and push."""
    code, out, err, _ = run([files(), serve(0, files_sent=1)], tmp_path=tmp_path)
    assert code == 0 and not err, err
    assert (tmp_path / "dst/f.txt").read_bytes() == b"data\n"
    assert b"f.txt" in out
    final = {"files": {"reg": 1}, "files_sent": 1, "exit_code": 0}
    code, _, err, _ = run([{"do": "receive", "stats": final}], pull=False, tmp_path=tmp_path)
    assert code == 0 and not err, err


HELLO_FROM_ELSEWHERE = """\
import json, struct, sys
from fscsync.wire import protocol
role = "server" if sys.argv[1] == "version" else "\\x1b[2Jserver"
body = json.dumps({"role": role, "program": "fscsync \\x1b]0;owned\\x07\\r\\n",
                   "capabilities": []}).encode()
version = 999 if sys.argv[1] == "version" else protocol.PROTOCOL_VERSION
hello = protocol.MAGIC + struct.pack(">H", version) + body
sys.stdout.buffer.write(struct.pack(">BI", protocol.HELLO, len(hello)) + hello)
sys.stdout.flush()
sys.stdin.buffer.read()
"""


@pytest.mark.parametrize("wrong, code, shown", [("version", 2, rb"fscsync \#033]0;owned\#007"),
                                                ("role", 5, rb"\#033[2Jserver")])
def test_peer_names_in_the_handshake_are_escaped(tmp_path: Path, wrong: str, code: int,
                                                 shown: bytes) -> None:
    """The program name and the role a peer gives in its handshake reach the error line
    escaped (a version mismatch names the peer's program, a wrong role names the role)."""
    script = tmp_path / "hello.py"
    script.write_text(HELLO_FROM_ELSEWHERE)
    rsh = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {wrong}"
    proc = run_fscsync("-a", "-e", rsh, "h:src/", f"{tmp_path}/dst/", timeout=60)
    assert proc.returncode == code, proc.stderr
    assert not UNSAFE.findall(proc.stderr), proc.stderr
    assert shown in proc.stderr, proc.stderr


def test_the_peers_stderr_reaches_ours_escaped(tmp_path: Path) -> None:
    """What the remote side writes on its stderr (a remote shell's banner, the server's
    own complaints) goes through the client, escaped line by line; the \\r of ssh's
    \\r\\n line ends goes, and the run itself is unaffected."""
    wrapper = tmp_path / "rsh.sh"
    wrapper.write_text("#!/bin/sh\nprintf 'banner \\033]0;owned\\007 \\033[2J\\r\\n' >&2\n"
                       "printf 'no newline at the end \\033[5m' >&2\nshift 2\n"
                       f"exec {shlex.quote(sys.executable)} -m fscsync \"$@\"\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"data\n")
    proc = run_fscsync("-a", "-e", f"sh {shlex.quote(str(wrapper))}", f"h:{src}/",
                       f"{tmp_path}/dst/", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [rb"banner \#033]0;owned\#007 \#033[2J",
                                        rb"no newline at the end \#033[5m"], proc.stderr
    assert (tmp_path / "dst/f.txt").read_bytes() == b"data\n"


def test_every_kind_of_counter_is_checked_by_its_fields_type() -> None:
    """Stats.from_wire checks a field by the type of its default, so a time (float) a
    later Stats gains is accepted as a number and refused as anything else."""
    from fscsync.engine.stats import Stats
    from fscsync.errors import ProtocolError

    class Timed(Stats):
        scan_time: float = 0.0

    got = Timed.from_wire({"scan_time": 1.5, "literal": 7, "files": {"reg": 2},
                           "io_error": True, "exit_code": 0})
    assert (got.scan_time, got.literal, got.files, got.io_error) == (1.5, 7, {"reg": 2}, True)
    for bad in ({"scan_time": float("nan")}, {"scan_time": "1"}, {"scan_time": -1.0},
                {"literal": 1.5}, {"literal": True}, {"io_error": 1}, {"files": {"reg": -1}}):
        with pytest.raises(ProtocolError, match="malformed counter"):
            Timed.from_wire(bad)

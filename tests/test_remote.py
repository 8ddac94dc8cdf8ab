"""Push and pull over a real sshd on 127.0.0.1, compared with the local result."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import uuid
from pathlib import Path

import pytest
from support import REPO, run_fscsync
from support.sshd import Sshd
from support.treecmp import assert_same_tree, snapshot
from support.trees import make_rich_tree, pattern, set_times, write
from test_local_sync import (
    ENV,
    T0,
    Proc,
    assert_clean_stderr,
    err_lines,
    items,
    make_plain_tree,
    settle,
    temp_files_under,
)


def over_ssh(sshd: Sshd, *args: str | os.PathLike[str], program: str | None = None,
             code: int | None = 0, timeout: float = 60) -> Proc:
    """fscsync with this sshd as the remote shell; never a traceback, never a hang."""
    proc = run_fscsync("-e", sshd.rsh, "--remote-fscsync", program or sshd.remote_fscsync,
                       *args, env=ENV, check=code, timeout=timeout)
    assert_clean_stderr(proc)
    return proc


def at(sshd: Sshd, path: str | os.PathLike[str], slash: str = "") -> str:
    return f"{sshd.host}:{path}{slash}"


def _stale(root: Path) -> None:
    """What an older mirror might hold: an extraneous tree and an outdated file."""
    (root / "old/dir").mkdir(parents=True)
    write(root / "old/dir/f", b"old")
    (root / "files").mkdir()
    write(root / "files/one", b"outdated and longer")


def test_push_and_pull_rich_tree_like_local(sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_rich_tree(src)
    dests = {name: tmp_path / name for name in ("local", "pushed", "pulled")}
    for d in dests.values():
        _stale(d)
    flags = ["-aHAXi", "--delete"]
    local = run_fscsync(*flags, f"{src}/", dests["local"], env=ENV, check=True)
    push = over_ssh(sshd, *flags, f"{src}/", at(sshd, dests["pushed"]))
    pull = over_ssh(sshd, *flags, at(sshd, src, "/"), dests["pulled"])
    assert_same_tree(src, dests["local"])
    assert_same_tree(dests["local"], dests["pushed"])
    assert_same_tree(dests["local"], dests["pulled"])
    # rsync's arrows: '>' for a local copy or a pull, '<' for a push
    assert items(pull) == items(local)
    assert items(push) == pushed(items(local))


def pushed(lines: list[str]) -> list[str]:
    """A local run's -i lines as a push prints them: rsync's '<' instead of '>'."""
    return [ln.replace(">", "<", 1) if ln[0] == ">" else ln for ln in lines]


def test_dry_run_and_max_delete_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_plain_tree(src)
    run_fscsync("-a", f"{src}/", dst, check=True)
    extras = [dst / f"x{i}" for i in range(3)]
    for x in extras:
        write(x, b"extra")
    write(src / "a.txt", b"changed and longer\n")
    settle(src)
    before = snapshot(dst)
    local = run_fscsync("-ain", "--delete", f"{src}/", dst, env=ENV, check=True)
    push = over_ssh(sshd, "-ain", "--delete", f"{src}/", at(sshd, dst))
    pull = over_ssh(sshd, "-ain", "--delete", at(sshd, src, "/"), dst)
    assert snapshot(dst) == before
    assert items(local) and sorted(items(pull)) == sorted(items(local))
    assert sorted(items(push)) == sorted(pushed(items(local)))
    over_ssh(sshd, "-a", "--delete", "--max-delete=1", f"{src}/", at(sshd, dst), code=25)
    assert sum(x.exists() for x in extras) == 2


def test_host_alone_and_relative_paths_mean_remote_home(sshd: Sshd, tmp_path: Path) -> None:
    home = Path(os.path.expanduser("~root"))
    name = f"fscsync-test-{uuid.uuid4().hex[:12]}"
    src = tmp_path / name
    make_plain_tree(src)
    try:
        over_ssh(sshd, "-a", src, at(sshd, ""))                     # host:  -> ~/name
        assert_same_tree(src, home / name)
        over_ssh(sshd, "-a", f"{src}/", at(sshd, f"{name}/copy"))   # host:rel -> ~/rel
        assert_same_tree(src, home / name / "copy")
        over_ssh(sshd, "-a", at(sshd, f"{name}/copy/sub/"), tmp_path / "back")
        assert_same_tree(src / "sub", tmp_path / "back")
    finally:
        shutil.rmtree(home / name, ignore_errors=True)


def test_both_sides_remote_refused(sshd: Sshd, tmp_path: Path) -> None:
    proc = over_ssh(sshd, "-a", at(sshd, tmp_path, "/"), at(sshd, tmp_path / "x"), code=1)
    assert "remote" in proc.stderr.decode()
    assert not (tmp_path / "x").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ssh_failure_exits_255_with_ssh_message(tmp_path: Path, sshd: Sshd) -> None:
    argv = sshd.ssh_argv
    argv[argv.index("-p") + 1] = str(_closed_port())
    src = tmp_path / "src"
    make_plain_tree(src)
    proc = run_fscsync("-a", "-e", shlex.join(argv), f"{src}/", at(sshd, tmp_path / "dst"),
                       env=ENV, check=255, timeout=30)
    assert_clean_stderr(proc)
    assert "Connection refused" in proc.stderr.decode()
    assert not (tmp_path / "dst").exists()


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


OLD_PEER = f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(REPO)!r})
import fscsync
fscsync.PROTOCOL_VERSION += 1   # a peer of another protocol version
from fscsync.cli.main import main
sys.exit(main())
"""


@pytest.mark.parametrize("program, codes", [
    ("/bin/false", {5}),
    ("sh -c 'exec cat'", {2, 5}),           # echoes our own handshake back
    ("sh -c 'exec yes'", {2, 5}),           # floods the pipe with garbage
    ("sh -c 'echo Welcome to this server'", {2, 5}),
    ("old-peer", {2}),
], ids=["false", "cat", "yes", "banner", "version-mismatch"])
def test_not_fscsync_on_the_other_side(sshd: Sshd, tmp_path: Path, program: str,
                                       codes: set[int]) -> None:
    if program == "old-peer":
        program = _script(tmp_path, "old-peer", OLD_PEER)
    src = tmp_path / "src"
    make_plain_tree(src)
    proc = over_ssh(sshd, "-a", f"{src}/", at(sshd, tmp_path / "dst"), program=program,
                    code=None, timeout=30)
    assert proc.returncode in codes, (proc.returncode, proc.stderr)
    lines = [ln for ln in err_lines(proc) if ln.startswith("fscsync")]
    assert lines and len(lines) <= 2, err_lines(proc)
    if program.endswith("old-peer"):
        assert "version" in lines[0]
    assert not (tmp_path / "dst").exists() or os.listdir(tmp_path / "dst") == []


def test_remote_per_file_error_counts_and_is_shown(sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_plain_tree(src)
    proc = over_ssh(sshd, "-a", at(sshd, src / "a.txt"), at(sshd, src / "missing"),
                    at(sshd, src / "sub"), tmp_path / "dst", code=23)
    bad = [ln for ln in err_lines(proc) if "missing" in ln]
    assert len(bad) == 1 and "No such file or directory" in bad[0], err_lines(proc)
    assert sshd.host in bad[0], f"remote error not tagged with the host: {bad[0]!r}"
    assert (tmp_path / "dst/a.txt").exists() and (tmp_path / "dst/sub/deeper/c.txt").exists()


def test_push_scans_ahead_and_reports_source_errors_once(sshd: Sshd, tmp_path: Path) -> None:
    """A push scans while ssh connects (Sender.scan_ahead): its errors are still shown
    once, counted into 23, and every readable source arrives as a local run sends it."""
    src = tmp_path / "src"
    make_plain_tree(src)
    args = ["-ai", src / "a.txt", src / "missing", src / "sub"]
    local = run_fscsync(*args, tmp_path / "local", env=ENV, check=23)
    proc = over_ssh(sshd, *args, at(sshd, tmp_path / "pushed"), code=23)
    bad = [ln for ln in err_lines(proc) if "missing" in ln]
    assert len(bad) == 1 and "No such file or directory" in bad[0], err_lines(proc)
    assert items(proc) == pushed(items(local))
    for made in ("local", "pushed"):  # both tools made these roots: their times are "now"
        os.utime(tmp_path / made, ns=(T0 * 10**9, T0 * 10**9))
    assert_same_tree(tmp_path / "local", tmp_path / "pushed")


KILLER = f"""#!{sys.executable}
# The real server, killed -9 as soon as its first temp file shows up in the destination.
import os, signal, subprocess, sys, time
server = subprocess.Popen([{{real!r}}, *sys.argv[1:]])
deadline = time.monotonic() + 30
while time.monotonic() < deadline and server.poll() is None:
    if any(".~fscsync~" in n for _, _, names in os.walk({{dest!r}}) for n in names):
        server.send_signal(signal.SIGKILL)
        break
    time.sleep(0.02)
sys.exit(server.wait() and 137)
"""


def test_killed_remote(sshd: Sshd, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_plain_tree(src)
    over_ssh(sshd, "-a", f"{src}/", at(sshd, dst))
    old = (dst / "sub/b.bin").read_bytes()
    write(src / "sub/b.bin", pattern(4 << 20, "killed remote"))
    settle(src)
    killer = _script(tmp_path, "killer", KILLER.format(real=sshd.remote_fscsync, dest=str(dst)))
    proc = over_ssh(sshd, "-a", "--bwlimit=512", f"{src}/", at(sshd, dst), program=killer,
                    code=None)
    assert proc.returncode not in (0, None), proc.stderr
    assert proc.stderr.strip(), "killed remote but nothing said"
    assert (dst / "sub/b.bin").read_bytes() == old
    over_ssh(sshd, "-a", f"{src}/", at(sshd, dst))
    assert temp_files_under(dst) == []
    assert_same_tree(src, dst)


def test_remote_killed_at_start(sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_plain_tree(src)
    proc = over_ssh(sshd, "-a", f"{src}/", at(sshd, tmp_path / "dst"),
                    program="sh -c 'kill -9 $$'", code=None, timeout=30)
    assert proc.returncode != 0 and proc.stderr.strip()


@pytest.mark.parametrize("flags", [["-z"], ["--bwlimit=20000"]], ids=["compress", "bwlimit"])
def test_compress_and_bwlimit(sshd: Sshd, tmp_path: Path, flags: list[str]) -> None:
    src = tmp_path / "src"
    make_plain_tree(src)
    write(src / "text", b"compressible line of text\n" * 40_000)
    write(src / "random", pattern(300_000, "random"))
    settle(src)
    over_ssh(sshd, "-a", *flags, f"{src}/", at(sshd, tmp_path / "mirror"))
    assert_same_tree(src, tmp_path / "mirror")
    write(src / "text", b"changed line of text\n" * 40_000)
    set_times(src / "text", (T0 + 1) * 10**9)
    over_ssh(sshd, "-a", *flags, at(sshd, src, "/"), tmp_path / "mirror")
    assert_same_tree(src, tmp_path / "mirror")


def test_many_small_files_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in range(20):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(100):
            write(src / f"d{d:02}/f{f:03}", b"%d/%d\n" % (d, f) * (f % 7))
    settle(src)
    over_ssh(sshd, "-a", f"{src}/", at(sshd, dst), timeout=90)
    assert_same_tree(src, dst)
    assert over_ssh(sshd, "-ai", f"{src}/", at(sshd, dst)).stdout == b""

"""examples/: every example runs as shipped, with local paths or the test sshd for backup01."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from support import REPO
from support.treecmp import assert_same_tree
from support.trees import make_rich_tree, write

from fscsync.engine import filterrules, filters

EXAMPLES = REPO / "examples"
SCRIPTS = ("demo.sh", "demo-encrypted.sh", "restore.sh", "snapshot-rotation.sh")
FSCSYNC = f"{shlex.quote(sys.executable)} -m fscsync"
# What the shipped command lines name, and what a test puts in their place.
HOME = "/home/"
BACKUP = "backup01:/srv/mirror/home/"
LOG = "/var/log/fscsync-home.log"


def run(argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run with this checkout on PYTHONPATH; text output with undecodable bytes escaped."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    return subprocess.run(argv, capture_output=True, text=True, errors="backslashreplace",
                          env=full, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"{proc.args!r} exited {proc.returncode}\n--- stdout:\n{proc.stdout}"
            f"--- stderr:\n{proc.stderr}")


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (comments and blanks dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_argv() -> list[str]:
    (exec_start,) = unit_sections(EXAMPLES / "nightly-mirror.service")["Service"]["ExecStart"]
    assert "%" not in exec_start, "unit specifiers would need expanding"
    return shlex.split(exec_start)


def cron_job() -> tuple[dict[str, str], list[str], str, str]:
    """(environment lines, the 5 time fields, user, command) of nightly-mirror.cron."""
    env: dict[str, str] = {}
    jobs = []
    for line in (EXAMPLES / "nightly-mirror.cron").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        jobs.append(line.split(None, 6))
    assert len(jobs) == 1, jobs
    (*times, user, command), = jobs
    return env, times, user, command


def localize(argv: list[str], src: Path, dest: str, log: Path) -> list[str]:
    """The shipped fscsync argv with /home/, backup01: and the log moved to test paths."""
    out = []
    for arg in argv:
        if arg == HOME:
            arg = f"{src}/"
        elif arg == BACKUP:
            arg = dest
        elif arg == f"--log-file={LOG}":
            arg = f"--log-file={log}"
        out.append(arg)
    assert out != argv
    return out


def home_tree(root: Path) -> None:
    """A /home stand-in: the rich tree (every kind of entry) plus user-looking files."""
    make_rich_tree(root / "ann")
    (root / "bob" / "projects").mkdir(parents=True)
    write(root / "bob" / "projects" / "report.txt", b"quarterly numbers\n")


# -- all examples ------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_strict(script):
    path = EXAMPLES / script
    proc = run(["bash", "-n", str(path)])
    assert proc.returncode == 0, explain(proc)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_readme_indexes_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    for path in sorted(EXAMPLES.iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}`" in readme, f"examples/README.md does not mention {path.name}"


# -- demo.sh -----------------------------------------------------------------------------


def test_demo(tmp_path):
    work = tmp_path / "demo"
    proc = run(["bash", str(EXAMPLES / "demo.sh")],
               env={"DEMO_DIR": str(work), "FSCSYNC": FSCSYNC})
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout
    assert "mirror matches the source (diff -r): yes" in out
    assert "hard link kept: yes" in out
    assert r">f+++++++++ docs/caf\#351.txt" in out, "non-UTF-8 name not itemized escaped"
    assert "cL+++++++++ data/readme-link -> ../docs/README" in out
    literal = re.search(r"second run: literal data ([\d,]+) bytes, matched ([\d,]+) bytes", out)
    assert literal, out
    sent, matched = (int(x.replace(",", "")) for x in literal.groups())
    assert sent < 16 * 1024, f"second run sent {sent} literal bytes for a 4 KiB change"
    assert matched >= 1000 * 1024
    assert_same_tree(work / "src", work / "mirror")


def test_demo_reuses_its_directory(tmp_path):
    work = tmp_path / "again"
    env = {"DEMO_DIR": str(work), "FSCSYNC": FSCSYNC}
    for _ in range(2):
        proc = run(["bash", str(EXAMPLES / "demo.sh")], env=env)
        assert proc.returncode == 0, explain(proc)
    assert "created directory" in proc.stdout


# -- nightly-mirror.service / .timer / .cron ---------------------------------------------


def test_systemd_units_have_what_they_need():
    service = unit_sections(EXAMPLES / "nightly-mirror.service")
    timer = unit_sections(EXAMPLES / "nightly-mirror.timer")
    assert service["Service"]["Type"] == ["oneshot"]
    argv = service_argv()
    assert os.path.basename(argv[0]) == "fscsync" and os.path.isabs(argv[0])
    assert argv[1:] == ["-aHAX", "--delete", "--numeric-ids", f"--log-file={LOG}", HOME, BACKUP]
    assert "network-online.target" in service["Unit"]["After"][0]
    assert timer["Timer"]["Unit"] == ["nightly-mirror.service"]
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (the keys are checked above)")
    for name in ("nightly-mirror.service", "nightly-mirror.timer"):
        text = (EXAMPLES / name).read_text()
        # verify insists that ExecStart's program exists; the unit names the installed path.
        if not os.access("/usr/local/bin/fscsync", os.X_OK):
            text = text.replace("/usr/local/bin/fscsync", shutil.which("true") or "/bin/true")
        (tmp_path / name).write_text(text)
    units = [str(tmp_path / "nightly-mirror.service"), str(tmp_path / "nightly-mirror.timer")]
    proc = run([tool, "verify", "--man=no", *units], timeout=60)
    assert proc.returncode == 0, explain(proc)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "nightly-mirror" in line]
    assert not complaints, explain(proc)
    (calendar,) = unit_sections(EXAMPLES / "nightly-mirror.timer")["Timer"]["OnCalendar"]
    proc = run([tool, "calendar", calendar], timeout=60)
    assert proc.returncode == 0 and "Next elapse" in proc.stdout, explain(proc)


def test_service_command_over_ssh(tmp_path, sshd):
    """ExecStart as shipped, /home/ -> a temp tree, backup01: -> the test sshd."""
    src, dest, log = tmp_path / "home", tmp_path / "mirror", tmp_path / "fscsync-home.log"
    home_tree(src)
    dest.mkdir()
    argv = localize(service_argv(), src, f"127.0.0.1:{dest}/", log)
    argv = [sys.executable, "-m", "fscsync", *argv[1:], "-e", sshd.rsh,
            "--remote-fscsync", sshd.remote_fscsync]
    proc = run(argv)
    assert proc.returncode == 0, explain(proc)
    assert_same_tree(src, dest)

    # Next night: something deleted, something new; --delete mirrors both.
    (src / "bob" / "projects" / "report.txt").unlink()
    write(src / "bob" / "projects" / "new.txt", b"new\n")
    proc = run(argv)
    assert proc.returncode == 0, explain(proc)
    assert_same_tree(src, dest)
    lines = log.read_text(errors="replace").splitlines()
    prefix = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] "
    assert all(re.match(prefix, line) for line in lines), lines
    bodies = [re.sub(prefix, "", line, count=1) for line in lines]
    assert bodies.count("building file list") == 2
    assert "*deleting   bob/projects/report.txt" in bodies
    assert any(b.endswith(" bob/projects/new.txt") and b.startswith("<f+++++++++")
               for b in bodies), bodies
    assert sum(b.startswith("sent ") and " total size " in b for b in bodies) == 2


def test_timer_and_cron_agree_on_the_time():
    _, times, user, _ = cron_job()
    (calendar,) = unit_sections(EXAMPLES / "nightly-mirror.timer")["Timer"]["OnCalendar"]
    minute, hour, dom, month, dow = times
    assert (dom, month, dow) == ("*", "*", "*")
    assert calendar == f"*-*-* {int(hour):02d}:{int(minute):02d}:00"
    assert user == "root"


def test_cron_line_over_ssh(tmp_path, sshd):
    """The cron job as shipped (flock and all), FSCSYNC_RSH pointing at the test sshd."""
    env, _, _, command = cron_job()
    argv = shlex.split(command)
    i = argv.index("fscsync")
    lock = tmp_path / "fscsync-home.lock"
    assert argv[:i] == ["flock", "-n", "/run/lock/fscsync-home.lock"]
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) not installed")
    src, dest, log = tmp_path / "home", tmp_path / "mirror", tmp_path / "cron.log"
    home_tree(src)
    dest.mkdir()
    fscsync = localize(argv[i:], src, f"127.0.0.1:{dest}/", log)
    assert "-q" in fscsync
    job = ["flock", "-n", str(lock), sys.executable, "-m", "fscsync", *fscsync[1:],
           "--remote-fscsync", sshd.remote_fscsync]
    assert env["FSCSYNC_RSH"].startswith("ssh ")
    proc = run(job, env={**env, "PATH": f"{env['PATH']}:{os.environ['PATH']}",
                         "FSCSYNC_RSH": sshd.rsh})
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "", "cron would mail this output"
    assert_same_tree(src, dest)
    assert "building file list" in log.read_text(errors="replace")


# -- restore.sh --------------------------------------------------------------------------


def restore_env(sshd, **kw: str) -> dict[str, str]:
    return {"FSCSYNC": FSCSYNC, "FSCSYNC_RSH": sshd.rsh, "REMOTE_FSCSYNC": sshd.remote_fscsync,
            "BACKUP_HOST": "127.0.0.1", **kw}


def test_restore_over_ssh(tmp_path, sshd):
    backup, dest = tmp_path / "srv-mirror-home", tmp_path / "restore"
    home_tree(backup)
    env = restore_env(sshd, SRC=f"{backup}/", DEST=str(dest))
    proc = run(["bash", str(EXAMPLES / "restore.sh")], env=env)
    assert proc.returncode == 0, explain(proc)
    assert "restore.sh: done" in proc.stderr
    assert_same_tree(backup, dest)

    # A second restore into the now non-empty directory is refused without FORCE=1.
    proc = run(["bash", str(EXAMPLES / "restore.sh")], env=env)
    assert proc.returncode == 1 and "FORCE=1" in proc.stderr, explain(proc)
    write(backup / "bob" / "late.txt", b"late\n")
    proc = run(["bash", str(EXAMPLES / "restore.sh")], env={**env, "FORCE": "1"})
    assert proc.returncode == 0, explain(proc)
    assert (dest / "bob" / "late.txt").read_bytes() == b"late\n"


def test_restore_dry_run_and_local_source(tmp_path, sshd):
    backup, dest = tmp_path / "backup", tmp_path / "restore"
    backup.mkdir()
    write(backup / "f", b"data\n")
    env = restore_env(sshd, SRC=f"{backup}/", DEST=str(dest), DRY_RUN="1")
    proc = run(["bash", str(EXAMPLES / "restore.sh")], env=env)
    assert proc.returncode == 0, explain(proc)
    assert ">f+++++++++ f" in proc.stdout
    assert not (dest / "f").exists()
    # BACKUP_HOST empty: SRC is a local path (a backup disk mounted here).
    proc = run(["bash", str(EXAMPLES / "restore.sh")],
               env={**env, "BACKUP_HOST": "", "DRY_RUN": "0"})
    assert proc.returncode == 0, explain(proc)
    assert (dest / "f").read_bytes() == b"data\n"


def test_restore_defaults(tmp_path):
    """Without settings: backup01:/srv/mirror/home/ into a fresh /srv/restore/home-DATE."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BACKUP_HOST", "SRC", "DEST", "DRY_RUN", "FORCE", "REMOTE_FSCSYNC")}
    env["FSCSYNC"] = "printf <%s>\\n"
    proc = subprocess.run(["bash", str(EXAMPLES / "restore.sh")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, explain(proc)
    args = re.findall(r"<(.*?)>", proc.stdout)
    assert args[:3] == ["-aHAX", "--numeric-ids", BACKUP]
    assert re.fullmatch(r"/srv/restore/home-\d{8}-\d{6}", args[-1]), args


# -- excludes.txt ------------------------------------------------------------------------

EXCLUDED = [
    "ann/.cache/pip/wheel.whl", "ann/.thumbnails/normal/x.png", "ann/src/__pycache__/m.pyc",
    "ann/src/mod.pyc", "ann/web/node_modules/left-pad/index.js", "ann/.npm/_cacache/index",
    "ann/.cargo/registry/cache/crate", "ann/.mozilla/firefox/abc.default/cache2/entry",
    "ann/.local/share/Trash/files/old.txt", ".Trash-1000/files/x", "lost+found/#1234",
    "ann/build/out.tmp", "ann/.notes.txt.swp", "ann/notes.txt~", "ann/.#notes.txt",
    "ann/isos/debian.iso", "ann/vm/disk.qcow2",
]
KEPT = [
    "ann/notes.txt", "ann/cache/data.txt", "ann/.cachet", "ann/src/mod.py",
    "ann/.mozilla/firefox/abc.default/prefs.js", "ann/.local/share/recently-used.xbel",
    "ann/Trash-talk.txt", "ann/template.tmpl", "ann/report.tmp.d/keep.txt",
    "ann/.npm/config", "ann/isos/debian.iso.sha256", "ann/lost+found.txt",
]


def excludes_rules() -> list[filters.Filters]:
    """Each rule of the file on its own."""
    texts = filterrules.parse_cli([("exclude-from", os.fsencode(EXAMPLES / "excludes.txt"))],
                              False, False)
    return [filters.Filters([text], "sender") for text in texts]


def test_every_exclude_pattern_is_exercised():
    """Each rule in excludes.txt matches some path of EXCLUDED (so the test below covers it)."""
    rules = excludes_rules()
    assert len(rules) >= 10
    for rule in rules:
        hit = False
        for path in EXCLUDED:
            parts = path.split("/")
            for n in range(1, len(parts) + 1):
                is_dir = n < len(parts)
                if rule.excluded(rule.top(b"/"), "/".join(parts[:n]).encode(), is_dir):
                    hit = True
        assert hit, f"no test path for rule {rule.rules[0].text()!r}"


@pytest.mark.parametrize("tool", ["fscsync", "rsync"])
def test_excludes_file_excludes_what_it_says(tmp_path, tool):
    """fscsync honours the file, and rsync reads it the same way (it says fscsync or rsync)."""
    src, dest = tmp_path / "home", tmp_path / "mirror"
    for rel in EXCLUDED + KEPT:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        write(src / rel, rel.encode())
    if tool == "fscsync":
        argv = [sys.executable, "-m", "fscsync"]
    else:
        rsync = shutil.which("rsync")
        if rsync is None:
            pytest.skip("rsync not installed")
        argv = [rsync]
    argv += ["-a", f"--exclude-from={EXAMPLES / 'excludes.txt'}", f"{src}/", f"{dest}/"]
    proc = run(argv)
    assert proc.returncode == 0, explain(proc)
    leaked = [rel for rel in EXCLUDED if (dest / rel).exists()]
    lost = [rel for rel in KEPT if not (dest / rel).exists()]
    assert not leaked, f"{tool} copied excluded paths: {leaked}"
    assert not lost, f"{tool} dropped paths it should keep: {lost}"
    # Excluded directories are not even created.
    for d in ("ann/.cache", "ann/src/__pycache__", "ann/web/node_modules", ".Trash-1000",
              "lost+found"):
        assert not (dest / d).exists(), d


# -- demo-encrypted.sh -------------------------------------------------------------------


def _encrypted_demo_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (security.* xattrs, FUSE allow_other)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 (fuse3) not installed"
    if not (REPO / "fscsync" / "testfs" / "__main__.py").exists():
        return "fscsync.testfs has no command line yet"
    try:
        import fscsync.testfs.fusefs  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"testfs FUSE layer unusable: {exc}"
    return None


def mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line for line in f if f" {path}/" in line or f" {path} " in line]


def test_demo_encrypted(tmp_path):
    reason = _encrypted_demo_missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "encdemo"
    proc = run(["bash", str(EXAMPLES / "demo-encrypted.sh")],
               env={"DEMO_DIR": str(work), "PYTHON": sys.executable})
    try:
        assert proc.returncode == 0, explain(proc)
        assert "round trip OK" in proc.stdout
        assert "B matches the original plaintext" in proc.stdout
        assert "C matches the original plaintext too" in proc.stdout
        assert "Required key not available" in proc.stdout
        assert "(encrypted)" in proc.stdout
    finally:
        assert not mounts_under(work), "demo-encrypted.sh left mounts behind"


# -- snapshot-rotation.sh / .service / .timer ---------------------------------------------


def rotate(src: Path, snaps: Path, stamp: str, **kw: str) -> subprocess.CompletedProcess[str]:
    env = {"SRC": f"{src}/", "SNAPSHOTS": str(snaps), "STAMP": stamp, "KEEP": "2",
           "FSCSYNC": FSCSYNC, **kw}
    return run(["bash", str(EXAMPLES / "snapshot-rotation.sh")], env=env)


def test_snapshot_rotation(tmp_path):
    """Three nights with KEEP=2: each snapshot a whole tree, unchanged files one inode
    across the nights, the changed one not, the oldest night pruned, latest -> newest."""
    src, snaps = tmp_path / "home", tmp_path / "snapshots"
    home_tree(src)
    report = src / "bob" / "projects" / "report.txt"
    nights = ["2026-12-01-031500", "2026-12-02-031500", "2026-12-03-031500"]
    for n, stamp in enumerate(nights):
        if n == 2:
            write(report, b"new numbers\n")
        proc = rotate(src, snaps, stamp)
        assert proc.returncode == 0, explain(proc)
        assert_same_tree(src, snaps / stamp)
    assert "unchanged files linked to 2026-12-02-031500" in proc.stdout
    assert sorted(p.name for p in snaps.iterdir()) == [*nights[1:], "latest"]
    assert os.readlink(snaps / "latest") == nights[2]
    two, three = (snaps / stamp / "bob" / "projects" for stamp in nights[1:])
    assert os.stat(two / "report.txt").st_ino != os.stat(three / "report.txt").st_ino
    unchanged = [p.relative_to(snaps / nights[2]) for p in (snaps / nights[2]).rglob("*")
                 if p.is_file() and not p.is_symlink() and p.name != "report.txt"]
    assert unchanged
    for rel in unchanged:
        assert os.stat(snaps / nights[1] / rel).st_ino == os.stat(snaps / nights[2] / rel).st_ino


def test_snapshot_rotation_failed_run_is_no_snapshot(tmp_path):
    src, snaps = tmp_path / "home", tmp_path / "snapshots"
    home_tree(src)
    assert rotate(src, snaps, "2026-12-01-031500").returncode == 0
    proc = rotate(tmp_path / "missing", snaps, "2026-12-02-031500")
    assert proc.returncode == 23, explain(proc)
    assert "is not a snapshot" in proc.stderr
    assert os.readlink(snaps / "latest") == "2026-12-01-031500"
    proc = rotate(src, snaps, "2026-12-03-031500")
    assert proc.returncode == 0, explain(proc)
    assert sorted(p.name for p in snaps.iterdir()) == [
        "2026-12-01-031500", "2026-12-03-031500", "latest"]
    assert rotate(src, snaps, "2026-12-03-031500").returncode == 1, "an existing name"
    assert rotate(src, snaps, "x", KEEP="0").returncode == 2


def test_snapshot_units():
    service = unit_sections(EXAMPLES / "snapshot-rotation.service")
    timer = unit_sections(EXAMPLES / "snapshot-rotation.timer")
    assert service["Service"]["Type"] == ["oneshot"]
    env = dict(v.strip('"').split("=", 1) for v in service["Service"]["Environment"])
    assert env["SRC"] == HOME and env["KEEP"] == "14"
    assert env["SNAPSHOTS"].startswith(service["Service"]["ReadWritePaths"][0])
    assert timer["Timer"]["Unit"] == ["snapshot-rotation.service"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        (calendar,) = timer["Timer"]["OnCalendar"]
        proc = run([tool, "calendar", calendar], timeout=60)
        assert proc.returncode == 0 and "Next elapse" in proc.stdout, explain(proc)

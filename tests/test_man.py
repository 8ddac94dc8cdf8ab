"""man/fscsync.1: documents every option of `fscsync --help` and renders without warnings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from support import REPO, run_fscsync

MANPAGE = REPO / "man" / "fscsync.1"
OPTION_RE = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")
# Options the issue asks for explicitly, whatever --help shows today.
REQUIRED = ("--log-file", "--log-file-format", "--list-only")
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENCRYPTED TREES", "FILTER RULES",
            "THREAT MODEL", "EXIT VALUES", "ENVIRONMENT", "EXAMPLES", "SEE ALSO")
EXIT_CODES = ("0", "1", "2", "3", "5", "11", "12", "14", "15", "20", "23", "24", "25", "30", "35",
              "255")


def help_options(text: str) -> set[str]:
    """Option names from argparse's help: the invocation column of lines like
    `  -B SIZE, --block-size SIZE   delta block size`."""
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^ {2}(-\S.*?)(?: {2,}|$)", line)
        if m:
            names.update(OPTION_RE.findall(m.group(1)))
    return names


def plain(roff: str) -> str:
    """Roff source with the escapes that matter for option names undone."""
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\&|\\%", "", roff)
    return text.replace("\\-", "-").replace('"', "")


def sections(source: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in source.splitlines():
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def documented_options(source: str) -> set[str]:
    """Options that have an entry (a .TP tag line) in the OPTIONS section."""
    lines = sections(source)["OPTIONS"]
    names: set[str] = set()
    for prev, line in zip(lines, lines[1:], strict=False):
        if prev.startswith(".TP"):
            names.update(OPTION_RE.findall(plain(line)))
    return names


@pytest.fixture(scope="module")
def source() -> str:
    return MANPAGE.read_text()


@pytest.fixture(scope="module")
def help_text() -> str:
    return run_fscsync("--help", check=True).stdout.decode()


def test_help_parser_finds_options():
    sample = ("options:\n  -h, --help            show this help\n"
              "  -B SIZE, --block-size SIZE\n                        delta block size\n"
              "  -D                    same as --devices --specials\n")
    assert help_options(sample) == {"-h", "--help", "-B", "--block-size", "-D"}


def test_every_help_option_is_documented(source, help_text):
    options = help_options(help_text)
    assert {"--help", "--archive", "-a", "--rsh"} <= options, "could not parse --help"
    missing = sorted(options - documented_options(source))
    assert not missing, f"options of fscsync --help without an entry in {MANPAGE}: {missing}"


def test_issue_options_are_documented(source):
    missing = [o for o in REQUIRED if o not in documented_options(source)]
    assert not missing, missing


def test_no_documented_option_is_unknown_to_the_cli(source, help_text):
    """An entry for an option the CLI does not have would mislead users."""
    stale = sorted(documented_options(source) - help_options(help_text))
    assert not stale, f"{MANPAGE} documents options fscsync --help does not show: {stale}"


def test_sections_and_exit_codes(source):
    secs = sections(source)
    for name in SECTIONS:
        assert name in secs, f"missing section {name}"
    tags = {line.split(None, 1)[1] for line in secs["EXIT VALUES"]
            if line.startswith(".B ")}
    assert set(EXIT_CODES) <= tags
    assert "FSCSYNC_RSH" in "\n".join(secs["ENVIRONMENT"])
    see_also = plain("\n".join(secs["SEE ALSO"]))
    assert "rsync (1)" in see_also and "ssh (1)" in see_also


def test_encrypted_section_covers_the_design(source):
    text = plain("\n".join(sections(source)["ENCRYPTED TREES"]))
    for word in ("O_CIPHERTEXT", "security.encdata", "encoding: base64url", "enc_ctx",
                 "enc_name", "CAP_SYS_ADMIN", "IV_INO_LBLK", "--refuse-ino-policies",
                 "--encdata-xattr", "ENOKEY", "plain filesystem"):
        assert word in text, word


def test_threat_model_covers_each_adversary(source):
    """Issue 19: what a hostile sender, a hostile receiver, a restricted client and a
    local user who can write into the destination can and cannot do, and what
    --restrict-to promises."""
    secs = sections(source)
    subsections = [line[4:] for line in secs["THREAT MODEL"] if line.startswith(".SS ")]
    assert subsections == ["A hostile sender", "A hostile receiver", "A restricted client",
                           "A local user who can write into the destination"], subsections
    text = plain(" ".join(re.sub(r"^\.[A-Z]+ ", "", line) for line in secs["THREAT MODEL"]))
    for word in ("What --restrict-to promises", "opened once", "O_NOFOLLOW",
                 "RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS", "authorized_keys", "escaped",
                 "exit 0", "bounded", "fstat", "not a chroot", "fs.protected_hardlinks"):
        assert word in text, word


def test_synopsis_matches_usage(source, help_text):
    usage = help_text.splitlines()[0]
    assert usage == "usage: fscsync [OPTION]... SRC [SRC]... DEST"
    synopsis = "\n".join(sections(source)["SYNOPSIS"])
    assert ".RI [ USER @] HOST : DEST" in synopsis and ".RI [ USER @] HOST : SRC" in synopsis


def test_groff_has_no_warnings():
    if shutil.which("groff") is None:
        pytest.skip("groff not installed")
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(MANPAGE)], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode(errors="replace")


def test_man_renders(source):
    if shutil.which("man") is None:
        pytest.skip("man-db not installed")
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "PAGER": "cat"}
    proc = subprocess.run(["man", "-l", str(MANPAGE)], capture_output=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stderr == b"", proc.stderr.decode(errors="replace")
    out = proc.stdout.decode(errors="replace")
    assert out.startswith("FSCSYNC(1)")
    assert "ENCRYPTED TREES" in out and "EXIT VALUES" in out
    assert max(len(line) for line in out.splitlines()) <= 80


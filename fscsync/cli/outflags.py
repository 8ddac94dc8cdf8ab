"""--info=FLAGS and --debug=FLAGS: rsync's flag words, read as rsync reads them.

Scripts pass rsync's words (`--info=progress2,stats0`, `--debug=del2`): every word
rsync knows is accepted, an unknown one ends the run before anything is touched
with rsync's message and exit 1, and `help` prints rsync's list. Of the --info
words fscsync acts on PROGRESS and STATS (see fscsync(1)); the others, and every
--debug word, name rsync internals fscsync does not have and change nothing.
"""

from __future__ import annotations

import re

from fscsync.errors import UnknownOutputWord

MAX_LEVEL = 4
"""rsync's MAX_OUT_LEVEL: a larger level is taken as this one."""

INFO_WORDS = (
    ("BACKUP", "Mention files backed up"),
    ("COPY", "Mention files copied locally on the receiving side"),
    ("DEL", "Mention deletions on the receiving side"),
    ("FLIST", "Mention file-list receiving/sending (levels 1-2)"),
    ("MISC", "Mention miscellaneous information (levels 1-2)"),
    ("MOUNT", "Mention mounts that were found or skipped"),
    ("NAME", "Mention 1) updated file/dir names, 2) unchanged names"),
    ("NONREG", "Mention skipped non-regular files (default 1, 0 disables)"),
    ("PROGRESS", "Mention 1) per-file progress or 2) total transfer progress"),
    ("REMOVE", "Mention files removed on the sending side"),
    ("SKIP", "Mention files skipped due to transfer overrides (levels 1-2)"),
    ("STATS", "Mention statistics at end of run (levels 1-3)"),
    ("SYMSAFE", "Mention symlinks that are unsafe"),
)
INFO_BY_LEVEL = ("0) NONREG", "1) COPY,DEL,FLIST,MISC,NAME,STATS,SYMSAFE",
                 "2) BACKUP,MISC2,MOUNT,NAME2,REMOVE,SKIP")

DEBUG_WORDS = (
    ("ACL", "Debug extra ACL info"),
    ("BACKUP", "Debug backup actions (levels 1-2)"),
    ("BIND", "Debug socket bind actions"),
    ("CHDIR", "Debug when the current directory changes"),
    ("CONNECT", "Debug connection events (levels 1-2)"),
    ("CMD", "Debug commands+options that are issued (levels 1-2)"),
    ("DEL", "Debug delete actions (levels 1-3)"),
    ("DELTASUM", "Debug delta-transfer checksumming (levels 1-4)"),
    ("DUP", "Debug weeding of duplicate names"),
    ("EXIT", "Debug exit events (levels 1-3)"),
    ("FILTER", "Debug filter actions (levels 1-3)"),
    ("FLIST", "Debug file-list operations (levels 1-4)"),
    ("FUZZY", "Debug fuzzy scoring (levels 1-2)"),
    ("GENR", "Debug generator functions"),
    ("HASH", "Debug hashtable code"),
    ("HLINK", "Debug hard-link actions (levels 1-3)"),
    ("ICONV", "Debug iconv character conversions (levels 1-2)"),
    ("IO", "Debug I/O routines (levels 1-4)"),
    ("NSTR", "Debug negotiation strings"),
    ("OWN", "Debug ownership changes in users & groups (levels 1-2)"),
    ("PROTO", "Debug protocol information"),
    ("RECV", "Debug receiver functions"),
    ("SEND", "Debug sender functions"),
    ("TIME", "Debug setting of modified times (levels 1-2)"),
)
DEBUG_BY_LEVEL = (
    "2) BIND,CONNECT,CMD,DEL,DELTASUM,DUP,FILTER,FLIST,ICONV",
    "3) ACL,BACKUP,CONNECT2,DEL2,DELTASUM2,EXIT,FILTER2,FLIST2,FUZZY,GENR,OWN,RECV,SEND,"
    "TIME",
    "4) CMD2,DEL3,DELTASUM3,EXIT2,FLIST3,ICONV2,OWN2,PROTO,TIME2",
    "5) CHDIR,DELTASUM4,FLIST4,FUZZY2,HASH,HLINK",
)
_KINDS = {"--info": (INFO_WORDS, INFO_BY_LEVEL), "--debug": (DEBUG_WORDS, DEBUG_BY_LEVEL)}


class HelpWanted(Exception):  # noqa: N818 (not an error: the answer to `help`)
    """`--info=help` or `--debug=help`: rsync prints the word list and exits 0 while it
    parses, whatever follows on the line."""


def levels(option: str, values: list[str]) -> dict[str, int]:
    """The level each word of `option` ends at after these values, in order (a word
    never named is absent); UsageError for a word rsync does not know, HelpWanted
    for `help`. rsync's grammar: WORD, WORDn, ALLn, NONE; case does not matter."""
    words = _KINDS[option][0]
    out: dict[str, int] = {}
    for value in values:
        for item in value.split(","):
            if not item:
                continue
            name = item if item[:1].isdigit() else item.rstrip("0123456789")
            digits = re.match(r"\d*", item[len(name):]).group()
            level = min(int(digits), MAX_LEVEL) if digits else 1
            key = name.upper()
            if key == "HELP":
                raise HelpWanted(help_text(option))
            if key in ("NONE", "ALL"):
                level = 0 if key == "NONE" else level
                out.update((w, level) for w, _ in words)
            elif any(key == w for w, _ in words):
                out[key] = level
            else:
                raise UnknownOutputWord(option=option, word=name)
    return out


def help_text(option: str) -> str:
    """rsync's `--info=help` / `--debug=help` list, word for word."""
    words, by_level = _KINDS[option]
    row = "{:<10} {}".format
    return "\n".join([
        "Use OPT or OPT1 for level 1 output, OPT2 for level 2, etc.; OPT0 silences.", "",
        *(row(w, h) for w, h in words), "",
        row("ALL", f"Set all {option} options (e.g. all{MAX_LEVEL})"),
        row("NONE", f"Silence all {option} options (same as all0)"),
        row("HELP", "Output this help message"), "",
        "Options added at each level of verbosity:", *by_level])

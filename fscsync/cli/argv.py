"""The command line, with rsync's grammar: one option table, read left to right.

rsync users paste their command lines, so the grammar is rsync's (popt's), which
argparse cannot express: short options bundle with a value at the end (`-aB4096`,
`-e'ssh -p 22'`), options come anywhere before `--`, long names are exact (no
abbreviations, only rsync's own aliases), `--no-OPTION` turns a boolean off at its
place in the line, and `-h` is --help only when it is the only argument. Apart from
cli.py so that `fscsync --server`, which every remote run starts, builds no table.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Callable
from types import SimpleNamespace

from fscsync.cli import outflags
from fscsync.engine import chmod, filterrules, idmap, sources
from fscsync.errors import FilesFromUnreadable, UsageError
from fscsync.options import MAX_TIMEOUT, Options

USAGE = "fscsync [OPTION]... SRC [SRC]... DEST"
INC = object()
"""A `sets` value: add one (-v, -i, -h), cleared to 0 by the negation."""


class BadValue(ValueError):
    """A value an option cannot take; the parser names the option."""


class Opt(namedtuple("Opt", "names help sets dest convert metavar neg hidden",
                     defaults=(None, "", None, "", (), False))):
    """One row of the table (a namedtuple: typing's NamedTuple costs every run 2.5 ms
    to import).

    names: the spellings ("-a --archive"); sets: what a flag does (dest -> value, INC
    to count); dest/convert: where a value goes and how it is read (a list dest
    extends); neg: the dests `--no-NAME` clears, for every NAME in names."""

    __slots__ = ()
    names: str
    help: str
    sets: dict | None
    dest: str
    convert: Callable | None
    metavar: str
    neg: tuple[str, ...]
    hidden: bool


def _int(text: str) -> int:
    if not re.fullmatch(r"-?\d+", text):
        raise BadValue("invalid numeric value")
    return int(text)


def _size(text: str) -> int:
    """rsync's sizes: 100, 100K, 1.5M, 1G (powers of 1024), 1KB (of 1000), 1K+1 / 1K-1."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:([KMGTPkmgtp])(i?[Bb])?|[Bb])?([+-]1)?", text)
    if not m:
        raise BadValue("is invalid")
    unit = m.group(2) or ""
    base = 1000 if (m.group(3) or "").lower() == "b" else 1024
    mult = base ** " kmgtp".index(unit.lower()) if unit else 1
    return int(float(m.group(1)) * mult) + int(m.group(4) or 0)


def _seconds(text: str) -> int:
    """--timeout, --contimeout: whole seconds, 0 for none (rsync's reading of a
    negative value as none is refused here: it is a typo, not a wish)."""
    value = _int(text)
    if not 0 <= value <= MAX_TIMEOUT:
        raise BadValue(f"must be from 0 (none) to {MAX_TIMEOUT} seconds")
    return value


def _bwlimit(text: str) -> int:
    """--bwlimit: a bare number is KiB/s, as in rsync."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * 1024)
    return _size(text)


def _chmod(text: str) -> list[str]:
    """--chmod values join in order; each is checked here, before anything runs."""
    chmod.parse(text, umask=0)
    return [text]


def _words(option: str, text: str) -> list[str]:
    """--info/--debug: each value is checked as it comes (help prints and exits then)."""
    outflags.levels(option, [text])
    return [text]


def _rules(kind: str) -> Callable[[str], list]:
    """A rule option's text, kept in order until options_from parses them all."""
    return lambda text: [(kind, os.fsencode(text))]


_ARCHIVE = dict(recursive=True, links=True, perms=True, times=True, group=True,
                owner=True, devices=True, specials=True)

TABLE: tuple[Opt, ...] = (
    Opt("--help", "show this help (-h is help only on its own)", {"help": True}),
    Opt("--version -V", "print the version and exit", {"version": True}),
    Opt("--verbose -v", "increase verbosity", {"verbose": INC}, neg=("verbose",)),
    Opt("--human-readable -h", "output numbers in a human-readable format (-hh: units of "
        "1000, -hhh: of 1024)", {"human_readable": INC}, neg=("human_readable",)),
    Opt("--info", "fine-grained informational verbosity (PROGRESS and STATS act)",
        dest="info", convert=lambda t: _words("--info", t), metavar="FLAGS"),
    Opt("--quiet -q", "suppress non-error messages", {"quiet": True}),
    Opt("--checksum -c", "skip based on checksum, not mod-time & size",
        {"checksum": True}, neg=("checksum",)),
    Opt("--archive -a", "archive mode is -rlptgoD (no -A,-X,-H)", _ARCHIVE),
    Opt("--no-OPTION", "turn off an implied OPTION (e.g. --no-D)", {}),
    Opt("--recursive -r", "recurse into directories", {"recursive": True, "recurse_asked": True},
        neg=("recursive", "recurse_asked")),
    Opt("--inc-recursive --i-r", "accepted: the file list always streams, as with "
        "rsync's incremental recursion", {}, neg=("inc_recursive",)),
    Opt("--links -l", "copy symlinks as symlinks", {"links": True}, neg=("links",)),
    Opt("--safe-links", "ignore symlinks that point outside the tree", {"safe_links": True}),
    Opt("--perms -p", "preserve permissions", {"perms": True}, neg=("perms",)),
    Opt("--executability -E", "preserve executability", {"executability": True}),
    Opt("--chmod", "affect file and/or directory permissions", dest="chmod",
        convert=_chmod, metavar="CHMOD"),
    Opt("--acls -A", "preserve ACLs (implies --perms)", {"acls": True, "perms": True},
        neg=("acls",)),
    Opt("--xattrs -X", "preserve extended attributes", {"xattrs": True}, neg=("xattrs",)),
    Opt("--owner -o", "preserve owner (super-user only)", {"owner": True}, neg=("owner",)),
    Opt("--group -g", "preserve group", {"group": True}, neg=("group",)),
    Opt("--devices", "preserve device files (super-user only)", {"devices": True},
        neg=("devices",)),
    Opt("--specials", "preserve special files", {"specials": True}, neg=("specials",)),
    Opt("-D", "same as --devices --specials", {"devices": True, "specials": True},
        neg=("devices", "specials")),
    Opt("--open-noatime", "avoid changing the atime on opened files",
        {"open_noatime": True}, neg=("open_noatime",)),
    Opt("--times -t", "preserve modification times", {"times": True}, neg=("times",)),
    Opt("--omit-dir-times -O", "omit directories from --times", {"omit_dir_times": True},
        neg=("omit_dir_times",)),
    Opt("--omit-link-times -J", "omit symlinks from --times", {"omit_link_times": True},
        neg=("omit_link_times",)),
    Opt("--hard-links -H", "preserve hard links", {"hard_links": True},
        neg=("hard_links",)),
    Opt("--sparse -S", "keep sparse files sparse (always on)", {}),
    Opt("--dry-run -n", "perform a trial run with no changes made", {"dry_run": True}),
    Opt("--whole-file -W", "copy files whole (w/o delta-xfer algorithm)",
        {"whole_file": True}, neg=("whole_file",)),
    Opt("--inplace", "update destination files in-place, unjournaled (plain files)",
        {"inplace": True}, neg=("inplace",)),
    Opt("--block-size -B", "delta block size, a power of two (default 4096)",
        dest="block_size", convert=_size, metavar="SIZE"),
    Opt("--rsh -e", "specify the remote shell to use", dest="rsh", metavar="COMMAND"),
    Opt("--remote-fscsync --rsync-path", "the fscsync program to run on the remote machine",
        dest="remote_fscsync", metavar="PROGRAM"),
    Opt("--secluded-args -s --protect-args", "accepted: paths always travel inside the "
        "protocol, never through the remote shell", {"secluded": True}, neg=("secluded",)),
    Opt("--old-args", "accepted: paths never pass through the remote shell",
        {"old_args": True}),
    Opt("--update -u", "skip files that are newer on the receiver", {"update": True}),
    Opt("--existing --ignore-non-existing", "skip creating new files on receiver",
        {"existing": True}),
    Opt("--mkpath", "create destination's missing path components", {"mkpath": True},
        neg=("mkpath",)),
    Opt("--ignore-existing", "skip updating files that exist on receiver",
        {"ignore_existing": True}),
    Opt("--ignore-missing-args", "ignore missing source arguments without error",
        {"ignore_missing_args": True}),
    Opt("--max-size", "don't transfer any file larger than SIZE", dest="max_size",
        convert=_size, metavar="SIZE"),
    Opt("--min-size", "don't transfer any file smaller than SIZE", dest="min_size",
        convert=_size, metavar="SIZE"),
    Opt("--ignore-times -I", "don't skip files that match size and time",
        {"ignore_times": True}),
    Opt("--modify-window -@", "set the accuracy for mod-time comparisons (seconds)",
        dest="modify_window", convert=_int, metavar="NUM"),
    Opt("--delete", "delete extraneous files from dest dirs", {"delete": True}),
    Opt("--delete-before", "receiver deletes before xfer, not during",
        {"delete": True, "when_before": True}),
    Opt("--delete-during --del", "receiver deletes during the transfer",
        {"delete": True, "when_during": "during"}),
    Opt("--delete-delay", "find deletions during, delete after",
        {"delete": True, "when_during": "delay"}),
    Opt("--delete-after", "receiver deletes after transfer, not during",
        {"delete": True, "when_after": True}),
    Opt("--delete-excluded", "also delete excluded files from dest dirs (implies --delete)",
        {"delete": True, "delete_excluded": True}),
    Opt("--ignore-errors", "delete even if there are I/O errors", {"ignore_errors": True},
        neg=("ignore_errors",)),
    Opt("--max-delete", "don't delete more than NUM files", dest="max_delete",
        convert=_int, metavar="NUM"),
    Opt("--partial", "keep partially transferred files", {"partial": True},
        neg=("partial",)),
    Opt("--partial-dir", "put a partially transferred file into DIR", dest="partial_dir",
        metavar="DIR"),
    Opt("--delay-updates", "put all updated files into place at transfer's end",
        {"delay_updates": True}, neg=("delay_updates",)),
    Opt("--remove-source-files", "sender removes synchronized files (non-dirs)",
        {"remove_source_files": True}, neg=("remove_source_files",)),
    Opt("--backup -b", "make backups (see --suffix & --backup-dir)", {"backup": True},
        neg=("backup",)),
    Opt("--backup-dir", "make backups into hierarchy based in DIR", dest="backup_dir",
        metavar="DIR"),
    Opt("--suffix", "backup suffix (default ~ w/o --backup-dir)", dest="backup_suffix",
        metavar="SUFFIX"),
    Opt("--usermap", "custom username mapping (implies --owner)", dest="usermap",
        convert=lambda t: [t], metavar="STRING"),
    Opt("--groupmap", "custom groupname mapping (implies --group)", dest="groupmap",
        convert=lambda t: [t], metavar="STRING"),
    Opt("--chown", "simple username/groupname mapping", dest="chown",
        convert=lambda t: [t], metavar="USER:GROUP"),
    Opt("--numeric-ids", "don't map uid/gid values by user/group name",
        {"numeric_ids": True}, neg=("numeric_ids",)),
    Opt("--size-only", "skip files that match in size", {"size_only": True}),
    Opt("--temp-dir -T", "create temporary files in directory DIR", dest="temp_dir",
        metavar="DIR"),
    Opt("--fsync", "fsync every written file", {"fsync": True}),
    Opt("--compress -z", "compress file data during the transfer", {"compress": True},
        neg=("compress",)),
    # ---- file selection (issue 23) ----
    Opt("--filter -f", "add a file-filtering RULE", dest="filter_rules",
        convert=_rules("filter"), metavar="RULE"),
    Opt("-F", "same as --filter='dir-merge /.rsync-filter'; repeated: "
        "--filter='- .rsync-filter'", {"filter_rules": [("F", b"")]}),
    Opt("--exclude", "exclude files matching PATTERN", dest="filter_rules",
        convert=_rules("exclude"), metavar="PATTERN"),
    Opt("--exclude-from", "read exclude patterns from FILE", dest="filter_rules",
        convert=_rules("exclude-from"), metavar="FILE"),
    Opt("--include", "don't exclude files matching PATTERN", dest="filter_rules",
        convert=_rules("include"), metavar="PATTERN"),
    Opt("--include-from", "read include patterns from FILE", dest="filter_rules",
        convert=_rules("include-from"), metavar="FILE"),
    Opt("--cvs-exclude -C", "auto-ignore files in the same way CVS does",
        {"cvs_exclude": True}, neg=("cvs_exclude",)),
    Opt("--from0 -0", "all *-from/filter files are delimited by 0s", {"from0": True},
        neg=("from0",)),
    Opt("--one-file-system -x", "don't cross filesystem boundaries (-xx: omit mount "
        "points too)", {"one_file_system": INC}, neg=("one_file_system",)),
    Opt("--relative -R", "use relative path names", {"relative": True}, neg=("relative",)),
    Opt("--implied-dirs --i-d", "send the implied directories of -R paths (the default)",
        {"implied_dirs": True}, neg=("implied_dirs",)),
    Opt("--files-from", "read list of source-file names from FILE ('-': stdin, "
        "[HOST]:FILE: on the remote host)", dest="files_from_arg", metavar="FILE"),
    # ---- end of file selection ----
    Opt("--compare-dest", "also compare destination files relative to DIR",
        dest="alt_dests", convert=lambda t: [("compare", os.fsencode(t))], metavar="DIR"),
    Opt("--copy-dest", "... and include copies of unchanged files", dest="alt_dests",
        convert=lambda t: [("copy", os.fsencode(t))], metavar="DIR"),
    Opt("--link-dest", "hardlink to files in DIR when unchanged", dest="alt_dests",
        convert=lambda t: [("link", os.fsencode(t))], metavar="DIR"),
    Opt("--stats", "give some file-transfer stats", {"stats": True}),
    Opt("--progress", "show progress during transfer", {"progress": True},
        neg=("progress",)),
    Opt("-P", "same as --partial --progress", {"partial": True, "progress": True}),
    Opt("--itemize-changes -i", "output a change-summary for all updates",
        {"itemize": INC}, neg=("itemize",)),
    Opt("--out-format --log-format", "output updates using the specified FORMAT",
        dest="out_format", metavar="FORMAT"),
    Opt("--log-file", "log what we're doing to the specified FILE", dest="log_file",
        metavar="FILE"),
    Opt("--log-file-format", "log updates using the specified FMT",
        dest="log_file_format", metavar="FMT"),
    Opt("--list-only", "list the files instead of copying them", {"list_only": True}),
    Opt("--bwlimit", "limit socket I/O bandwidth (KiB/s, or with a K/M/G suffix)",
        dest="bwlimit", convert=_bwlimit, metavar="RATE"),
    Opt("--timeout", "set I/O timeout in seconds", dest="timeout", convert=_seconds,
        metavar="SECONDS"),
    Opt("--no-timeout", "no I/O timeout (the default)", {"timeout": 0}, hidden=True),
    Opt("--contimeout", "set the handshake timeout in seconds", dest="contimeout",
        convert=_seconds, metavar="SECONDS"),
    Opt("--no-contimeout", "the default handshake timeout", {"contimeout": 0}, hidden=True),
    Opt("--lock-file", "hold an exclusive lock on FILE for the run (a second run waits)",
        dest="lock_file", metavar="FILE"),
    Opt("--encdata-xattr", "xattr that holds encdata on this run's plain-filesystem side",
        dest="encdata_xattr", metavar="NAME"),
    Opt("--refuse-ino-policies", "fail files whose policy uses inode-number based IVs "
        "instead of warning", {"refuse_ino_policies": True}),
    # -- issue 21, second part: links, dirs, -m, -8, --info/--debug words --
    Opt("--dirs -d", "transfer directories without recursing", {"dirs": True},
        neg=("dirs",)),
    Opt("--old-dirs --old-d", "works like --dirs when talking to old rsync (-r with "
        "--exclude='/*/*')", {"old_dirs": True}),
    Opt("--prune-empty-dirs -m", "prune empty directory chains from file-list",
        {"prune_empty_dirs": True}, neg=("prune_empty_dirs",)),
    Opt("--copy-links -L", "transform symlink into referent file/dir", {"copy_links": True}),
    Opt("--copy-unsafe-links", "only \"unsafe\" symlinks are transformed",
        {"copy_unsafe_links": True}),
    Opt("--copy-dirlinks -k", "transform symlink to dir into referent dir",
        {"copy_dirlinks": True}),
    Opt("--keep-dirlinks -K", "treat symlinked dir on receiver as dir",
        {"keep_dirlinks": True}),
    Opt("--8-bit-output -8", "leave high-bit chars unescaped in output", {"eight_bit": True},
        neg=("eight_bit",)),
    Opt("--debug", "fine-grained debug verbosity (rsync's words, accepted)", dest="debug",
        convert=lambda t: _words("--debug", t), metavar="FLAGS"),
    Opt("--parallel", "run N sender/receiver pairs at once (a local copy or a push)",
        dest="parallel", convert=_int, metavar="N"),
    Opt("--mpi", "run as the ranks of mpirun: rank 0 coordinates, each other rank is "
        "a stream (needs fscsync[mpi])", {"mpi": True}),
    Opt("--server", "", {"server": True}, hidden=True),
    Opt("--restrict-to", "", dest="restrict_to", metavar="PATH", hidden=True),
)

_CLI_ONLY = dict(help=False, version=False, human_readable=1, info=[], quiet=False,
                 inc_recursive=True, rsh=None, remote_fscsync=None, secluded=False,
                 old_args=False, chmod=[], usermap=[], groupmap=[], chown=[],
                 log_file=None, out_format=None, log_file_format=None, server=False,
                 restrict_to=None, compress=False, encdata_xattr="security.encdata",
                 debug=[], old_dirs=False, eight_bit=False,
                 relative=None, recurse_asked=False, files_from_arg=None, alt_dests=[],
                 when_before=False, when_during="", when_after=False, lock_file=None,
                 parallel=0, mpi=False)
DEFAULTS = {**{name: getattr(Options, name) for name in Options.fields}, **_CLI_ONLY}
"""Where parsing starts: the engine's defaults, and the settings only the CLI reads."""

_COUNTS = ("verbose", "itemize", "human_readable", "one_file_system")
_NOT_HERE = {"--daemon": "fscsync has no daemon mode (use a remote shell: HOST:PATH)"}


def _index() -> tuple[dict[str, Opt], dict[str, tuple[str, ...]]]:
    """Every spelling -> its row, and every `--no-` spelling -> the dests it clears."""
    names: dict[str, Opt] = {}
    negations: dict[str, tuple[str, ...]] = {}
    for opt in TABLE:
        if opt.names == "--no-OPTION":
            continue
        for name in opt.names.split():
            names[name] = opt
            if opt.neg:
                negations["--no-" + name.lstrip("-")] = opt.neg
    return names, negations


def parse_args(args: list[str]) -> SimpleNamespace:
    """The options and paths of a command line, applied left to right; UsageError,
    naming the option, for anything rsync would refuse."""
    state = {k: list(v) if isinstance(v, list) else v for k, v in DEFAULTS.items()}
    paths: list[str] = []
    if args == ["-h"]:
        state["help"] = True
        args = []
    names, negations = _index()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            paths.extend(args[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in negations:
                if eq:
                    raise UsageError(f"{arg}: option does not take an argument")
                for dest in negations[name]:
                    state[dest] = 0 if dest in _COUNTS else False
                continue
            opt = names.get(name)
            if opt is None:
                raise UsageError(f"{name}: {_NOT_HERE.get(name, 'unknown option')}")
            if opt.dest and not eq:
                if i >= len(args):
                    raise UsageError(f"{name}: missing argument")
                value, i = args[i], i + 1
            elif eq and not opt.dest:
                raise UsageError(f"{arg}: option does not take an argument")
            _apply(state, opt, value)
        elif arg.startswith("-") and arg != "-":
            for pos in range(1, len(arg)):
                name = "-" + arg[pos]
                opt = names.get(name)
                if opt is None:
                    raise UsageError(f"{arg}: unknown option")
                if opt.dest:
                    value = arg[pos + 1:]
                    if not value:
                        if i >= len(args):
                            raise UsageError(f"{name}: missing argument")
                        value, i = args[i], i + 1
                    _apply(state, opt, value)
                    break
                _apply(state, opt, "")
        else:
            paths.append(arg)
    if state["secluded"] and state["old_args"]:
        raise UsageError("--secluded-args conflicts with --old-args.")
    state["args"] = paths
    return SimpleNamespace(**state)


def _apply(state: dict, opt: Opt, value: str) -> None:
    """One option's effect; a bad value is named by the option's long name, as in rsync."""
    if not opt.dest:
        for dest, v in (opt.sets or {}).items():
            state[dest] = state[dest] + 1 if v is INC else state[dest] + v \
                if isinstance(v, list) else v
        return
    try:
        v = opt.convert(value) if opt.convert else value
    except BadValue as exc:
        sep = ": " if str(exc).startswith("invalid") else " "
        raise UsageError(f"{opt.names.split()[0]}={value}{sep}{exc}") from None
    if isinstance(state[opt.dest], list):
        state[opt.dest].extend(v)
    else:
        state[opt.dest] = v


def _owner_maps(ns: SimpleNamespace, o: Options) -> None:
    """--usermap/--groupmap (each once) or --chown, rsync's way: --chown U:G is
    --usermap=*:U --groupmap=*:G; a map implies preserving what it maps."""
    for name in ("usermap", "groupmap", "chown"):
        if len(getattr(ns, name)) > 1:
            raise UsageError(f"You can only specify --{name} once.")
    usermap, groupmap = ns.usermap[:1], ns.groupmap[:1]
    if ns.chown:
        if usermap or groupmap:
            raise UsageError(f"--{'usermap' if usermap else 'groupmap'} conflicts with "
                             "prior --chown.")
        user, _, group = ns.chown[0].partition(":")
        usermap = [f"*:{user}"] if user else []
        groupmap = [f"*:{group}"] if group else []
    o.usermap = usermap[0] if usermap else ""
    o.groupmap = groupmap[0] if groupmap else ""
    for text, option in ((o.usermap, "--usermap"), (o.groupmap, "--groupmap")):
        if text:
            idmap.parse(text, option)
    o.owner = o.owner or bool(o.usermap)
    o.group = o.group or bool(o.groupmap)


def _files_from(ns: SimpleNamespace, o: Options) -> None:
    """--files-from, rsync's way: it implies -R (unless --no-relative) and --dirs, and
    recursion only when -r itself was given (-a's does not count). A local list (or
    stdin) is read here and travels in the options; [HOST]:FILE is read by the remote
    side."""
    arg = ns.files_from_arg
    o.relative = bool(ns.relative) if ns.relative is not None else arg is not None
    if not o.relative:
        o.implied_dirs = False
    if arg is None:
        return
    if not ns.recurse_asked:
        o.recursive = False
    from fscsync.run.endpoint import parse_endpoint

    where = parse_endpoint(os.fsencode(arg)) if not arg.startswith(":") else None
    if arg.startswith(":") or (where is not None and where.remote):
        o.files_from_remote = os.fsencode(arg[1:]) if where is None else where.path
        return
    try:
        if arg == "-":
            import sys

            data = sys.stdin.buffer.read()
        else:
            with open(arg, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise FilesFromUnreadable(path=os.fsencode(arg), reason=exc) from None
    o.files_from = sources.files_from_names(data, o.from0)


MAX_BASIS_DIRS = 20


def _alt_dests(ns: SimpleNamespace, o: Options) -> None:
    """--link-dest, --compare-dest, --copy-dest: one kind per run, at most 20 DIRs (rsync's
    limits and messages)."""
    for kind, path in ns.alt_dests:
        if o.alt_dest and o.alt_dest != kind:
            raise UsageError(f"the --{kind}-dest option conflicts with the --{o.alt_dest}-dest "
                             "option")
        if len(o.alt_dest_dirs) >= MAX_BASIS_DIRS:
            raise UsageError(f"at most {MAX_BASIS_DIRS} --{kind}-dest args may be specified")
        o.alt_dest = kind
        o.alt_dest_dirs.append(path)


def _backups(ns: SimpleNamespace, o: Options) -> None:
    """-b, --backup-dir and --suffix, checked as rsync checks them; --backup adds its
    protect rule after the line's own (engine.backup.protect_rules)."""
    from fscsync.engine import backup

    suffix = os.fsencode(ns.backup_suffix) if ns.backup_suffix is not None else None
    if suffix is not None and b"/" in suffix:
        raise UsageError(f"--suffix cannot contain slashes: {ns.backup_suffix}")
    bdir = os.fsencode(ns.backup_dir) if ns.backup_dir is not None else None
    if bdir is not None:
        o.backup = True  # --backup-dir implies --backup
        while bdir.startswith(b"./"):
            bdir = bdir[2:]
        bdir = None if bdir in (b"", b".") else bdir
        if bdir is None and suffix == b"":
            raise UsageError("--suffix cannot be empty when --backup-dir is the same as the "
                             "dest dir")
    elif suffix == b"":
        raise UsageError("--suffix cannot be empty without a --backup-dir")
    o.backup_dir, o.backup_suffix = bdir, suffix
    if o.backup and not bdir:
        o.omit_dir_times = True  # rsync forces -O: the backups would move dir times
    ns.filter_rules.extend(("filter", rule) for rule in backup.protect_rules(o))


def _partial_dir(ns: SimpleNamespace, o: Options) -> None:
    """--partial-dir implies --partial; --delay-updates writes into .~tmp~ unless a
    partial dir is given; neither goes with --inplace. A relative DIR is excluded from
    the transfer (a perishable rule, so it never blocks deleting its directory)."""
    if o.delay_updates and not o.partial_dir:
        o.partial_dir = b".~tmp~"
    if o.partial_dir is None:
        return
    pdir = os.fsencode(o.partial_dir) if isinstance(o.partial_dir, str) else o.partial_dir
    pdir = os.path.normpath(pdir) if pdir else b""
    if pdir in (b"", b"."):
        o.partial_dir = None
        return
    if o.inplace:
        raise UsageError(f"--inplace cannot be used with "
                         f"--{'delay-updates' if o.delay_updates else 'partial-dir'}")
    o.partial_dir, o.partial = pdir, True
    if not pdir.startswith(b"/"):
        ns.filter_rules.append(("filter", b"-p " + pdir + b"/"))


def _delete_when(ns: SimpleNamespace, o: Options) -> None:
    """rsync's --delete-WHEN: at most one (--delete-during and --delete-delay are one
    setting, the last given wins); plain --delete (or --delete-excluded) deletes
    during the transfer, as rsync does with a protocol-30 peer."""
    if ns.when_before + bool(ns.when_during) + ns.when_after > 1:
        raise UsageError("You may not combine multiple --delete-WHEN options.")
    o.delete_when = ("before" if ns.when_before else "after" if ns.when_after
                     else ns.when_during or "during")


def help_text() -> str:
    """--help, from the table: rsync's layout (long name first, then its short one)."""
    lines = [f"usage: {USAGE}", "",
             "Mirror directory trees like rsync -a; fscrypt-encrypted trees are copied "
             "as ciphertext without their keys.", "", "Options"]
    for opt in TABLE:
        if opt.hidden:
            continue
        names = opt.names.split()
        if opt.metavar:
            names[0] += f"={opt.metavar}"
        tag = ", ".join(names)
        if opt.names == "--help":
            tag = "--help, -h (*)"
        lines.append(f"  {tag:<27} {opt.help}" if len(tag) < 28 else f"  {tag}\n"
                     f"  {'':<27} {opt.help}")
    return "\n".join(lines)


def options_from(ns: SimpleNamespace) -> Options:
    """The engine's Options from a parsed command line (checks that need all of it)."""
    o = Options()
    for name in Options.fields:
        setattr(o, name, getattr(ns, name))
    _files_from(ns, o)
    listed = o.files_from is not None or o.files_from_remote is not None
    _delete_when(ns, o)
    if o.delete and not (o.recursive or o.dirs or ns.old_dirs or listed):
        raise UsageError("--delete does not work without --recursive (-r) or --dirs (-d).")
    o.chmod = ",".join(ns.chmod)
    _owner_maps(ns, o)
    _alt_dests(ns, o)
    o.temp_dir = os.fsencode(ns.temp_dir) if ns.temp_dir else None
    _backups(ns, o)
    _partial_dir(ns, o)
    b = ns.block_size
    if b < 512 or b & (b - 1) or b > 1 << 24:
        raise UsageError(f"--block-size must be a power of two from 512 to 16M, not {b}")
    o.block_size = b
    if ns.old_dirs:  # rsync's --old-d: -r with --exclude='/*/*' after the line's rules
        o.recursive = True
        ns.filter_rules.append(("exclude", b"/*/*"))
    o.filter_rules = filterrules.parse_cli(ns.filter_rules, o.delete_excluded, o.from0)
    o.encdata_xattr = os.fsencode(ns.encdata_xattr)
    o.compress = "auto" if ns.compress else None
    info = outflags.levels("--info", ns.info)
    o.progress = info.get("PROGRESS", int(ns.progress)) > 0
    o.stats = info.get("STATS", 2 if ns.stats else 0) >= 2
    return o

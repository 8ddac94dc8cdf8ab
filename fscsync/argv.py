"""The option table: rsync's options, parsed with argparse and mapped onto the
engine's Options. Apart from cli.py so that `fscsync --server`, which every remote
run starts, does not import argparse or build the table (about 15 ms)."""

from __future__ import annotations

import argparse
import os
import re
import sys

from fscsync.errors import UsageError
from fscsync.filters import EXCLUDE, INCLUDE, read_rule_file
from fscsync.options import Options

USAGE = "fscsync [OPTION]... SRC [SRC]... DEST"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse builds a formatter for every option it adds, and without a width
        # each one imports shutil to ask the terminal: 5 ms of every run.
        return self.formatter_class(prog=self.prog, width=_terminal_width() - 2)


def _terminal_width() -> int:
    """shutil.get_terminal_size's answer: $COLUMNS, else the terminal, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class _Rule(argparse.Action):
    """Keeps --exclude/--include/--*-from in command-line order (first match wins)."""

    def __call__(self, parser, namespace, value, option_string=None):
        rules = getattr(namespace, "filter_rules", None) or []
        kind = EXCLUDE if "exclude" in self.dest else INCLUDE
        if self.dest.endswith("_from"):
            rules.extend(read_rule_file(value, kind))
        else:
            rules.append((kind, os.fsencode(value)))
        namespace.filter_rules = rules


def _size(text: str) -> int:
    """rsync-style sizes: 100, 100K, 1.5M, 1G (KiB units for --bwlimit)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGkmg]?)(i?[Bb]?)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def _bwlimit(text: str) -> int:
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text) * 1024)
    return _size(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fscsync", usage=USAGE, add_help=False,
                description="Mirror directory trees like rsync -a; fscrypt-encrypted trees "
                            "are copied as ciphertext without their keys.")
    a = p.add_argument
    a("-h", "--help", action="store_true", help="show this help")
    a("--version", action="store_true", help="print the version and exit")
    a("-v", "--verbose", action="count", default=0, help="increase verbosity")
    a("-q", "--quiet", action="store_true", help="suppress non-error messages")
    a("-a", "--archive", action="store_true", help="archive mode: -rlptgoD")
    a("-r", "--recursive", action="store_true", help="recurse into directories")
    a("-l", "--links", action="store_true", help="copy symlinks as symlinks")
    a("-p", "--perms", action="store_true", help="preserve permissions")
    a("-t", "--times", action="store_true", help="preserve modification times")
    a("-g", "--group", action="store_true", help="preserve group")
    a("-o", "--owner", action="store_true", help="preserve owner (root only)")
    a("-D", dest="devspec", action="store_true", help="same as --devices --specials")
    a("--devices", action="store_true", help="preserve device files (root only)")
    a("--specials", action="store_true", help="preserve special files")
    a("-H", "--hard-links", action="store_true", help="preserve hard links")
    a("-X", "--xattrs", action="store_true", help="preserve extended attributes")
    a("-A", "--acls", action="store_true", help="preserve ACLs (implies -p)")
    a("-S", "--sparse", action="store_true", help="keep sparse files sparse (always on)")
    a("--numeric-ids", action="store_true", help="don't map uid/gid values by user/group name")
    a("--delete", action="store_true", help="delete extraneous files from dest dirs")
    a("--delete-after", action="store_true", help="delete after transferring (implies --delete)")
    a("--delete-excluded", action="store_true",
      help="also delete excluded files from dest dirs (implies --delete)")
    a("--max-delete", type=int, default=-1, metavar="NUM",
      help="don't delete more than NUM files (exit 25 when the limit stops deletions)")
    a("--partial", action="store_true", help="keep partially transferred files")
    a("--exclude", dest="rule_exclude", action=_Rule, metavar="PATTERN",
      help="exclude files matching PATTERN")
    a("--include", dest="rule_include", action=_Rule, metavar="PATTERN",
      help="don't exclude files matching PATTERN")
    a("--exclude-from", dest="rule_exclude_from", action=_Rule, metavar="FILE",
      help="read exclude patterns from FILE")
    a("--include-from", dest="rule_include_from", action=_Rule, metavar="FILE",
      help="read include patterns from FILE")
    a("-n", "--dry-run", action="store_true", help="perform a trial run with no changes made")
    a("-i", "--itemize-changes", action="count", default=0,
      help="output a change-summary for all updates")
    a("--stats", action="store_true", help="give some file-transfer stats")
    a("--progress", action="store_true", help="show progress during transfer")
    a("-P", dest="partial_progress", action="store_true", help="same as --partial --progress")
    a("--info", action="append", default=[], metavar="FLAGS",
      help="fine-grained informational verbosity (progress2 supported)")
    a("-c", "--checksum", action="store_true", help="skip based on checksum, not mod-time & size")
    a("--size-only", action="store_true", help="skip files that match in size")
    a("--ignore-existing", action="store_true", help="skip updating files that exist on receiver")
    a("-W", "--whole-file", dest="whole_file", action="store_true", default=None,
      help="copy files whole (without delta-xfer algorithm)")
    a("--no-whole-file", dest="whole_file", action="store_false",
      help="always use the delta-transfer algorithm")
    a("--inplace", action="store_true", default=None,
      help="update destination files in-place, unjournaled (plain files)")
    a("--no-inplace", dest="inplace", action="store_false",
      help="always build a new copy and rename it, big files too")
    a("-B", "--block-size", type=_size, default=4096, metavar="SIZE",
      help="delta block size, a power of two (default 4096, the encryption unit)")
    a("-T", "--temp-dir", metavar="DIR", help="create temporary files in directory DIR")
    a("-e", "--rsh", default=None, metavar="COMMAND", help="specify the remote shell to use")
    a("--remote-fscsync", metavar="PROGRAM",
      help="the fscsync program to run on the remote machine")
    a("-z", "--compress", action="store_true", help="compress file data during the transfer")
    a("--bwlimit", type=_bwlimit, default=0, metavar="RATE",
      help="limit socket I/O bandwidth (KiB/s, or with a K/M/G suffix)")
    a("--encdata-xattr", default="security.encdata", metavar="NAME",
      help="xattr that holds encdata on this run's plain-filesystem side")
    a("--refuse-ino-policies", action="store_true",
      help="fail files whose policy uses inode-number based IVs instead of warning")
    a("--log-file", metavar="FILE", help="log what we're doing to the specified FILE")
    a("--log-file-format", metavar="FMT", help="log updates using the specified FMT")
    a("--list-only", action="store_true", help="list the files instead of copying them")
    a("--server", action="store_true", help=argparse.SUPPRESS)
    a("--restrict-to", metavar="PATH", help=argparse.SUPPRESS)
    a("args", nargs="*", help=argparse.SUPPRESS)
    return p


def options_from(ns: argparse.Namespace) -> Options:
    o = Options()
    arch = ns.archive
    o.recursive = ns.recursive or arch
    o.links = ns.links or arch
    o.perms = ns.perms or arch or ns.acls
    o.times = ns.times or arch
    o.group = ns.group or arch
    o.owner = ns.owner or arch
    o.devices = ns.devices or ns.devspec or arch
    o.specials = ns.specials or ns.devspec or arch
    o.hard_links = ns.hard_links
    o.xattrs = ns.xattrs
    o.acls = ns.acls
    o.numeric_ids = ns.numeric_ids
    o.delete = ns.delete or ns.delete_after or ns.delete_excluded
    o.delete_after = ns.delete_after
    o.delete_excluded = ns.delete_excluded
    o.max_delete = ns.max_delete
    o.partial = ns.partial or ns.partial_progress
    o.dry_run = ns.dry_run
    o.itemize = ns.itemize_changes
    o.verbose = ns.verbose
    o.checksum = ns.checksum
    o.size_only = ns.size_only
    o.ignore_existing = ns.ignore_existing
    o.whole_file = ns.whole_file
    o.inplace = ns.inplace
    o.temp_dir = os.fsencode(ns.temp_dir) if ns.temp_dir else None
    if ns.block_size < 512 or ns.block_size & (ns.block_size - 1) or ns.block_size > 1 << 24:
        raise UsageError(f"--block-size must be a power of two from 512 to 16M, "
                         f"not {ns.block_size}")
    o.block_size = ns.block_size
    o.filter_rules = list(getattr(ns, "filter_rules", None) or [])
    o.encdata_xattr = os.fsencode(ns.encdata_xattr)
    o.refuse_ino_policies = ns.refuse_ino_policies
    o.compress = "auto" if ns.compress else None
    o.bwlimit = ns.bwlimit
    o.stats = ns.stats
    for info in ns.info:
        for flag in info.split(","):
            if flag not in ("progress2", "progress1", "progress0", "stats", "name", "name0",
                            "name1", "none"):
                raise UsageError(f"unknown --info flag {flag!r}")
    o.progress = ns.progress or ns.partial_progress or "progress1" in ",".join(ns.info)
    return o

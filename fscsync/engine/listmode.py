"""How much of the file list each side holds, decided by both ends from the same
options: whether the sender announces directories' names (protocol.DIRNAMES), whether
the receiver holds the whole list before it compares, and whether it releases what it
is done with (protocol.RELEASE) so that both keep only a window of it. Kept apart from
deltiming.py, whose deleter only the receiver needs: the sender asks these too.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from fscsync.options import Options


def names_announced(opts: Options) -> bool:
    """Whether the sender announces each directory's names ahead of its entries
    (protocol.DIRNAMES) and the receiver deletes by them: --delete-during and
    --delete-delay, but not in one stream of --parallel (it deletes nothing, and sees
    only part of each directory), nor under -m (a directory the sender prunes later
    would already be announced). Both ends decide it from the same options."""
    return (opts.delete and opts.delete_when in ("during", "delay") and not opts.list_only
            and opts.spool is None and not opts.prune_empty_dirs)


def holds_list(opts: Options) -> bool:
    """Whether the receiver must have the whole file list before it compares:
    --delete-before, and --delete-during where no names are announced (-m)."""
    return (opts.delete and opts.delete_when in ("before", "during") and not opts.list_only
            and opts.spool is None and not names_announced(opts))


def announced_dir(opts: Options, path: bytes, no_content: bool) -> bool:
    """Whether the directory of file-list path `path` gets its names announced when
    names_announced(opts): every directory whose contents the list brings and the
    receiver compares (with -d and no -r, the top one only)."""
    return not no_content and (opts.recursive or path == b".")


def releases_list(opts: Options) -> bool:
    """Whether the receiver tells the sender which entries it is done with, so that
    both hold a window of the file list, not all of it (protocol.RELEASE): not when
    it holds the whole list first, nor when --remove-source-files may name an entry
    long after it was done (a delayed update, a hard link)."""
    return not (holds_list(opts) or opts.remove_source_files)

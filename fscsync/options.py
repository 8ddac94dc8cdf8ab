"""What a run was asked to do, as the engine sees it (no CLI, no terminal).

The client sends these to its peer inside the setup frame, so both sides agree
on one set of settings; `to_wire`/`from_wire` keep that a plain JSON object.
"""

from __future__ import annotations

import stat

from fscsync.record import Record

DEFAULT_BLOCK = 4096
MAX_TIMEOUT = 10**8
"""The longest --timeout or --contimeout in seconds (about three years), so that every
wait stays within what select takes."""
_BYTES_LISTS = ("filter_rules", "files_from", "alt_dest_dirs")


class Options(Record):
    recursive: bool = False
    links: bool = False
    safe_links: bool = False
    copy_links: bool = False  # -L: every symlink sent as what it points to
    copy_unsafe_links: bool = False  # only those pointing outside the transfer
    copy_dirlinks: bool = False  # -k: symlinks to directories sent as directories
    keep_dirlinks: bool = False  # -K: a destination symlink to a directory is that directory
    dirs: bool = False  # -d: directories named on the command line, without their contents
    prune_empty_dirs: bool = False  # -m: directories with no files below them are left out
    perms: bool = False
    executability: bool = False
    chmod: str = ""  # --chmod clauses, comma-joined in command-line order
    times: bool = False
    omit_dir_times: bool = False
    omit_link_times: bool = False
    group: bool = False
    owner: bool = False
    devices: bool = False
    specials: bool = False
    hard_links: bool = False
    xattrs: bool = False
    acls: bool = False
    numeric_ids: bool = False
    usermap: str = ""  # --usermap (or --chown's user), rules for fscsync.engine.idmap
    groupmap: str = ""
    delete: bool = False
    delete_excluded: bool = False
    delete_when: str = "during"  # before, during, delay or after (engine/deltiming.py)
    ignore_errors: bool = False  # delete even after the sender's I/O errors
    max_delete: int = -1
    partial: bool = False
    partial_dir: bytes | None = None  # --partial-dir (and --delay-updates' .~tmp~)
    delay_updates: bool = False
    remove_source_files: bool = False
    backup: bool = False  # -b: what is replaced or deleted is kept (engine.backup)
    backup_dir: bytes | None = None
    backup_suffix: bytes | None = None  # None: rsync's default (engine.backup.suffix_of)
    dry_run: bool = False
    mkpath: bool = False
    itemize: int = 0
    verbose: int = 0
    checksum: bool = False
    size_only: bool = False
    ignore_existing: bool = False
    open_noatime: bool = False
    ignore_missing_args: bool = False
    existing: bool = False  # --existing: create nothing new, update what is there
    update: bool = False  # -u: leave files that are newer at the destination
    ignore_times: bool = False
    max_size: int = -1
    min_size: int = 0
    modify_window: int | None = None
    """--modify-window as rsync 3.5 reads it (0: whole seconds, N: at most N seconds
    apart, negative: nanoseconds too). None, fscsync's default, compares nanoseconds:
    rsync's default of whole seconds would skip a file rewritten at the same size
    within the second of its last copy."""
    whole_file: bool | None = None
    inplace: bool | None = None  # None: big files with few changes go through a redo journal
    temp_dir: bytes | None = None
    fsync: bool = False  # --fsync: each file before its rename, changed directories at the end
    block_size: int = DEFAULT_BLOCK
    filter_rules: list[bytes] = []  # rule texts (fscsync.engine.filters), merge files read
    cvs_exclude: bool = False
    from0: bool = False
    relative: bool = False  # -R (and --files-from): names keep their path
    implied_dirs: bool = True
    files_from: list[bytes] | None = None  # --files-from's names, read by the client
    files_from_remote: bytes | None = None  # --files-from=:FILE, read on the sending side
    one_file_system: int = 0  # -x: 1 keeps mount points as empty directories, -xx omits them
    alt_dest: str = ""  # "link", "compare" or "copy": which --*-dest option gave alt_dest_dirs
    alt_dest_dirs: list[bytes] = []  # searched in order; relative ones from the destination
    encdata_xattr: bytes = b"security.encdata"
    refuse_ino_policies: bool = False
    compress: str | None = None
    bwlimit: int = 0
    timeout: int = 0  # --timeout: seconds of silence that end the run (0: none)
    contimeout: int = 0  # --contimeout: seconds the handshake may take (0: the default)
    stats: bool = False
    progress: bool = False
    log_items: bool = False
    list_only: bool = False
    spool: bytes | None = None
    """One stream of --parallel: TOKEN/NAME of the file (engine.spool) the receiver
    leaves its final pass in, for the run's one final pass."""

    def keeps_time(self, mode: int) -> bool:
        """Whether an entry of this mode gets its source mtime (-t, less -O and -J)."""
        if stat.S_ISDIR(mode):
            return self.times and not self.omit_dir_times
        if stat.S_ISLNK(mode):
            return self.times and not self.omit_link_times
        return self.times

    def same_time(self, a_ns: int, b_ns: int) -> bool:
        """rsync 3.5's same_time for the window given (see modify_window); without one,
        exact."""
        window = self.modify_window
        if window is None or window < 0:
            return a_ns == b_ns
        return abs(a_ns // 10**9 - b_ns // 10**9) <= window

    def to_wire(self) -> dict:
        out = {}
        for name in self.fields:
            v = getattr(self, name)
            if isinstance(v, bytes):
                v = {"b": v.hex()}
            elif name in _BYTES_LISTS and v is not None:
                v = [text.hex() for text in v]
            out[name] = v
        return out

    @classmethod
    def from_wire(cls, data: dict) -> Options:
        kwargs = {}
        for name, v in data.items():
            if name not in cls.fields:
                continue
            if isinstance(v, dict) and "b" in v:
                v = bytes.fromhex(v["b"])
            elif name in _BYTES_LISTS and v is not None:
                v = [bytes.fromhex(text) for text in v]
            kwargs[name] = v
        return cls(**kwargs)

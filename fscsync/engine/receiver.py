"""The receiving side: reads the stream, feeds the generator, runs the writer,
then the finalisation pass (the stages share an RxState, never the receiver).

One thread reads the channel and does all the work; its writes go through the
channel's writing thread, so it never blocks on a full pipe while the sender
does. Requests for a batch go out as soon as the batch is decided, while data
for earlier requests keeps arriving.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections import deque

from fscsync import errors
from fscsync.engine import idmap
from fscsync.engine.backup import Backups
from fscsync.engine.deltiming import ListNames
from fscsync.engine.finalize import Finalizer
from fscsync.engine.flist import Batch, unpack_batch
from fscsync.engine.generator import Generator
from fscsync.engine.listmode import holds_list, releases_list
from fscsync.engine.partial import PartialDirs
from fscsync.engine.report import Reporter
from fscsync.engine.rxstate import RxState
from fscsync.engine.stats import Stats, read_final
from fscsync.engine.writer import Writer
from fscsync.errors import (
    DestinationNotADirectory,
    DestinationUnusable,
    ListTooBigToHold,
    OSFailed,
    ProtocolError,
    TempDirUnusable,
    escape,
)
from fscsync.fs.destfs import (
    Confined,
    DestTree,
    check_paths,
    sync_parents,
    temp_dir_path,
)
from fscsync.fs.meta import IdMapper
from fscsync.fs.probe import DestAbilities, probe_dest
from fscsync.options import Options
from fscsync.wire import dirnames, protocol
from fscsync.wire.protocol import Channel

MAX_ENTRIES = 50_000_000
MAX_IN_FLIGHT = 256
"""Requested files not yet complete before the next file-list batch is decided."""
MAX_BACKLOG = 64 << 20
"""Bytes of file-list frames held while requests are in flight (about 6 million
entries). The sender's window (protocol.RELEASE) keeps the backlog far below this;
without one (listmode.releases_list) past it the oldest frames are decided at once:
stopping to read would deadlock with the sender, which then sends its whole list before
it serves a request, and a protocol error would refuse a big list; -z made a few bytes
on the wire a full frame held here."""
RELEASE_STEP = 4 << 10
"""Entries done with between two RELEASE frames: one frame every few batches, well
inside the sender's window (sender.WINDOW)."""
MAX_HELD = 2 << 30
"""Bytes of file-list frames held for --delete-before (and --delete-during under -m),
which compare nothing before the list is complete (about 200 million entries)."""


class Receiver:
    def __init__(self, chan: Channel, opts: Options, reporter: Reporter, dest: bytes,
                 item_dir: str = ">", on_control=None, confined: Confined | None = None):
        self.chan = chan
        self.confined = confined
        self.opts = opts
        self.reporter = reporter
        self.dest = dest
        self.item_dir = item_dir
        self.on_control = on_control
        self.ids = IdMapper(opts.numeric_ids,
                            idmap.rules(opts.usermap, "--usermap", reporter.warning),
                            idmap.rules(opts.groupmap, "--groupmap", reporter.warning))
        self.stats = Stats()
        self.state = RxState(reporter, self.stats, None)
        self.leaders: set[int] = set()
        """-H: the entries that lead a hard-link group whose last name has not come yet,
        which later names may link to (one int a group, for checking the list only)."""
        self.released = 0  # what the last RELEASE told the sender (protocol.RELEASE)
        self.dir_paths: dict[bytes, tuple[bool, bytes] | None] = {b"": None}
        """Each directory listed so far, with the last child entry it got (its place in
        the directory's order)."""
        self.root_fd: int | None = None
        self.root_path = b""  # the destination directory's path, for -T DIR relative to it
        self._abilities: DestAbilities | None = None
        self.root_created = False
        self.made_levels = 0  # directories made for the destination, from it upwards
        self.root_seen = False
        self.io_error = False
        self.sender_stats: Stats | None = None
        self.sender_exit_code = 0
        self.started_ns = time.time_ns()  # --fsync syncs the directories changed since

    # ---- setup -----------------------------------------------------------------

    def open_root(self, single_file: bool) -> None:
        """Find or create the destination root (rsync's rules for DST)."""
        if self.opts.list_only:
            return
        dest = self.dest
        trailing = dest.endswith(b"/")
        path = dest.rstrip(b"/") or b"/"
        fs = self.confined
        try:
            st = os.stat(path) if fs is None else fs.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:  # below a regular file, say: rsync's code 3 ...
            if not (self.opts.mkpath and exc.errno == errno.ENOTDIR):
                raise DestinationUnusable(what="stat", path=dest, reason=exc) from None
            st = None  # ... unless --mkpath's mkdir is to fail on it, with rsync's 11
        if single_file and not trailing and (st is None or not stat.S_ISDIR(st.st_mode)):
            head, _, name = path.rpartition(b"/")
            self.state.single_name = name  # the destination's name for a one-file list
            path = head or (b"/" if path.startswith(b"/") else b".")
            if st is None and self.opts.mkpath:
                self.made_levels = self._make_path(path)
                self._report_made(path, self.made_levels)
        elif st is None:
            made = self._make_path(path) if self.opts.mkpath else 1
            if self.opts.dry_run:
                self.root_created = True
                self._report_made(path, made)
                if self.opts.mkpath:  # rsync 3.5 says both in a dry run
                    self.reporter.info(f"created directory {escape(path)}",
                                       0 if self.opts.itemize else 1)
                return
            if not self.opts.mkpath:
                made = int(self._mkdir(path))
            self.root_created = made > 0
            self.made_levels = made
            self._report_made(path, made)
        elif not stat.S_ISDIR(st.st_mode):
            raise DestinationNotADirectory(path=dest)
        self.root_path = path
        try:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            self.root_fd = os.open(path, flags) if fs is None else fs.open(path, flags)
        except OSError as exc:
            raise DestinationUnusable(what="open", path=path, reason=exc) from None

    def abilities(self) -> DestAbilities:
        """What the destination can store, probed the first time an encrypted entry is
        about to be written: a run that writes none (a no-change run into a read-only
        mirror, --dry-run) probes nothing."""
        if self._abilities is None:
            try:
                self._abilities = probe_dest(self.root_fd, self.opts.encdata_xattr)
            except OSError as exc:
                self._abilities = DestAbilities(
                    encdata=False,
                    encdata_why=f"the destination is not writable: {errors.os_reason(exc)}")
            for line in self._abilities.lines():
                self.reporter.info(line, 1)
        return self._abilities

    def _make_path(self, path: bytes) -> int:
        """--mkpath: make the missing directories of `path` (none in a dry run), as
        rsync does for the destination; how many were missing."""
        missing = []
        while path not in (b"", b"/", b".") and not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        if not self.opts.dry_run:
            for path in reversed(missing):
                self._mkdir(path, confined=False)
        return len(missing)

    def _mkdir(self, path: bytes, confined: bool = True) -> bool:
        """Make a directory of the destination's path; False when another run into the
        same destination made it first (two overlapping cron jobs both complete)."""
        fs = self.confined if confined else None
        try:
            if fs is None:
                os.mkdir(path, 0o777)
            else:
                fs.mkdir(path, 0o777)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                try:
                    if stat.S_ISDIR((os.stat(path) if fs is None else fs.stat(path)).st_mode):
                        return False
                except OSError:
                    pass
            raise OSFailed("mkdir", path, exc, errors.FILE_IO) from None
        return True

    def _report_made(self, path: bytes, made: int) -> None:
        """rsync's line for a destination it made (counted with --mkpath)."""
        if not made:
            return
        what = "directory" if not self.opts.mkpath else (
            f"{made} {'directory' if made == 1 else 'directories'} for")
        self.reporter.info(f"created {what} {escape(path)}", 0 if self.opts.itemize else 1)

    def tree(self) -> DestTree | None:
        return DestTree(self.root_fd) if self.root_fd is not None else None

    def open_temp_dir(self, tree: DestTree | None) -> int | None:
        """-T DIR, from the destination directory; within --restrict-to's tree only."""
        opts = self.opts
        if not opts.temp_dir or tree is None or opts.dry_run:
            return None
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            if self.confined is not None:
                return self.confined.open(temp_dir_path(self.root_path, opts.temp_dir), flags)
            return os.open(opts.temp_dir, flags, dir_fd=tree.root_fd)
        except OSError as exc:
            raise TempDirUnusable(path=opts.temp_dir, reason=exc) from None

    # ---- the stream -----------------------------------------------------------------

    def _add_entries(self, batch: Batch) -> None:
        """Check a batch's place in the list and count its entries, which the generator
        then decides."""
        dir_paths = self.dir_paths
        base = self.state.count
        paths = batch.paths
        check_paths(paths)
        for path, mode in zip(paths, batch.modes, strict=True):
            is_dir = mode & 0o170000 == stat.S_IFDIR
            if path == b".":
                if not is_dir or self.root_seen:
                    raise ProtocolError("misplaced root entry in the file list")
                self.root_seen = True
                continue
            head, _, name = path.rpartition(b"/")
            if head not in dir_paths:
                raise ProtocolError(f"entry {path[:100]!r} arrived before its directory")
            # A directory's entries come in order, non-directories first: a path that
            # is not past the one before it repeats an entry (or is out of place).
            place = (is_dir, name)
            last = dir_paths[head]
            if last is not None and place <= last:
                raise ProtocolError(f"entry {path[:100]!r} repeats or is out of order")
            dir_paths[head] = place
            if is_dir:
                dir_paths[path] = None
        for i, e in batch.special.items():
            if e.link < 0:
                continue
            if not self.opts.hard_links:
                raise ProtocolError(f"hard link entry {e.path[:100]!r} in a run without -H")
            if not e.is_reg:
                raise ProtocolError(f"hard link entry {e.path[:100]!r} is no regular file")
            if e.link == base + i:
                self.leaders.add(e.link)
            elif e.link not in self.leaders:
                raise ProtocolError("hard link to an entry that leads no group before it")
            elif e.link_last:  # no later name may name this leader
                self.leaders.discard(e.link)
        self.state.count += len(paths)
        if self.state.count > MAX_ENTRIES:
            raise ProtocolError("file list too long")

    def run(self) -> Stats:
        chan = self.chan
        ftype, payload = chan.recv()
        if ftype != protocol.FLIST_START:
            raise ProtocolError(f"expected the file list, got frame type {ftype}")
        single = bool(protocol.load_json(payload).get("single_file"))
        self.open_root(single)
        state = self.state
        live = self.root_fd is not None and not self.opts.dry_run
        if self.opts.backup and live:
            state.backups = Backups(self.opts, self.reporter, self.root_fd, self.confined,
                                    self.root_path)
        if self.opts.partial_dir and live:
            state.partials = PartialDirs(self.opts, self.confined)
        if self.opts.remove_source_files and live:
            state.successes = []
        chan.start_async()
        tree = self.tree()
        gen = Generator(state, self.opts, self.ids, tree, chan.send, self.abilities,
                        self.item_dir, self.root_created,
                        self.root_path or self.dest.rstrip(b"/") or b"/")
        wtree = self.tree()
        writer = Writer(state, self.opts, self.ids, wtree, chan.send, self.open_temp_dir(wtree))
        backlog: deque[bytes | dirnames.DirNames] = deque()
        held = 0
        announced = None
        flist_done = gen_acked = done_sent = finished = False
        hold = holds_list(self.opts) and state.single_name is None
        release = releases_list(self.opts)
        try:
            while not finished:
                # File-list batches wait, still compressed, while enough requests are
                # in flight: a big initial copy would otherwise hold a request and an
                # entry for every file at once (and, for --delete-before, until the list
                # is complete). Directories' names (DIRNAMES) wait with them, in order.
                while backlog and (flist_done or not hold) and (
                        len(state.pending) < MAX_IN_FLIGHT or held > MAX_BACKLOG):
                    item = backlog.popleft()
                    if type(item) is dirnames.DirNames:  # names ahead of their directory's batch
                        held -= item.size
                        gen.deleter.announce(item)
                        continue
                    held -= len(item)
                    batch = unpack_batch(item)
                    base = state.count
                    self._add_entries(batch)
                    gen.batch(base, batch)
                if flist_done and not backlog and not gen.sent_nomore:
                    if announced != state.count:
                        raise ProtocolError(f"file list count mismatch: {state.count} "
                                            f"entries, {announced!r} announced")
                    gen.finish()
                if gen_acked and not done_sent and state.completed == state.requested:
                    if state.partials is not None and state.partials.delayed:
                        self._commit_delayed()
                    if gen.waiting and tree is not None:
                        gen.link_waiting()  # every file is in: none waits for the final pass
                    self._send_successes()
                    chan.send(protocol.DONE)
                    done_sent = True
                if state.successes:
                    self._send_successes()
                if release and state.count - self.released >= RELEASE_STEP:
                    self._release()
                chan.flush_before_wait()
                ftype, payload = chan.recv()
                if ftype == protocol.FILE:
                    writer.file(payload)
                elif ftype == protocol.DATA:
                    writer.data(payload)
                elif ftype == protocol.DATA_END:
                    writer.end(payload)
                elif ftype == protocol.SIGREQ:
                    writer.sigreq(payload)
                elif ftype == protocol.FLIST and not flist_done:
                    backlog.append(payload)
                    held += len(payload)
                    if hold and held > MAX_HELD:
                        raise ListTooBigToHold(when=self.opts.delete_when, size=held)
                elif ftype == protocol.DIRNAMES and not flist_done and gen.deleter.names:
                    backlog.append(dirnames.decode(payload))
                    held += len(payload)
                elif ftype == protocol.IDNAME and not flist_done:
                    self._idname(payload)
                elif ftype == protocol.FLIST_END and not flist_done:
                    info = protocol.load_json(payload)
                    announced = info.get("count")
                    self.io_error = info.get("io_error", False)
                    if type(self.io_error) is not bool:
                        raise ProtocolError("malformed end of the file list")
                    if self.io_error:  # the sender could not read all it was asked to
                        self.reporter.note_code(errors.PARTIAL)
                    if isinstance(announced, int):
                        self.reporter.listed(announced, self.stats.total_size)
                    flist_done = True
                    gen.deleter.list_error = gen.deleter.list_error or self.io_error
                    if hold:
                        gen.deleter.list_complete(tree, self._names(backlog, announced))
                elif ftype == protocol.IOERROR and flist_done and not payload:
                    gen.deleter.send_error = True
                elif ftype == protocol.NOMORE_ACK and gen.sent_nomore and not gen_acked:
                    gen_acked = True
                elif ftype == protocol.FINISHED and done_sent:
                    self.sender_stats, self.sender_exit_code = read_final(
                        protocol.load_json(payload))
                    finished = True
                elif self.on_control is not None and self.on_control(ftype, payload):
                    continue
                else:
                    raise ProtocolError(f"unexpected frame type {ftype} at the receiver")
        except BaseException:
            writer.abort()
            raise
        finally:
            if tree is not None:
                tree.close()
            gen.close()
            chan.stop_async()
        writer.close()
        final = Finalizer(self.opts, self.ids, self.reporter, self.stats, state.single_name,
                          self.started_ns, state.backups)
        tree = self.tree()
        try:
            if self.opts.spool is None:
                final.run(tree, gen.decisions())
            else:  # one stream of --parallel: the rest is done once, for every stream
                from fscsync.engine import spool

                token, _, name = self.opts.spool.partition(b"/")
                spool.write(token, name, gen.decisions(),
                            (self.ids.user_names, self.ids.group_names), self.io_error)
        finally:
            if tree is not None:
                tree.close()
            if state.backups is not None:
                state.backups.close()
            if state.partials is not None:
                state.partials.close()
        if self.opts.fsync and self.made_levels and not self.opts.dry_run:
            self._sync_made_root()
        self.stats.io_error = self.io_error
        return self.stats

    def _sync_made_root(self) -> None:
        """--fsync: a destination directory this run made (and --mkpath's parents) must
        keep its name too."""
        try:
            sync_parents(self.root_path, self.made_levels)
        except OSError as exc:
            self.reporter.failed(OSFailed("fsync of directory", self.root_path, exc))

    def _commit_delayed(self) -> None:
        """--delay-updates: all data is in; every delayed file goes into its place."""
        state = self.state

        def failed(path: bytes, what: str, exc: OSError) -> None:
            self.reporter.failed(OSFailed(what, path, exc))

        for idx, st in state.partials.commit(state.backups, failed):
            state.succeeded(idx, st)

    def _release(self) -> None:
        """Tell the sender it may forget the entries before the oldest one still in flight
        (after any SUCCESS naming them, which goes first on the same stream)."""
        state = self.state
        low = min(state.pending, default=state.count)
        if low - self.released >= RELEASE_STEP:
            self.chan.send(protocol.RELEASE, protocol.encode_release(low))
            self.released = low

    def _send_successes(self) -> None:
        """--remove-source-files: tell the sender which entries are in place."""
        items = self.state.successes
        if not items:
            return
        for at in range(0, len(items), protocol.MAX_SUCCESSES):
            self.chan.send(protocol.SUCCESS,
                           protocol.encode_successes(items[at:at + protocol.MAX_SUCCESSES]))
        items.clear()

    @staticmethod
    def _names(backlog: deque[bytes], announced: object) -> ListNames:
        """The names of the whole held file list, for the deleter; its paths and count
        are checked here, before anything is deleted by them."""
        names = ListNames()
        count = 0
        for payload in backlog:
            batch = unpack_batch(payload)
            check_paths(batch.paths)
            names.add(batch)
            count += len(batch)
            if count > MAX_ENTRIES:
                raise ProtocolError("file list too long")
        if announced != count:
            raise ProtocolError(f"file list count mismatch: {count} entries, {announced!r} "
                                "announced")
        return names

    def _idname(self, payload: bytes) -> None:
        if len(payload) < 5 or payload[:1] not in (b"u", b"g") or len(payload) > 5 + 255:
            raise ProtocolError("malformed id-name frame")
        (ident,) = struct.unpack_from(">I", payload, 1)
        names = self.ids.user_names if payload[:1] == b"u" else self.ids.group_names
        names[ident] = payload[5:]

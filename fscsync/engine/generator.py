"""The generator: compares each incoming entry with the destination and decides.

Up-to-date files get their attributes fixed in place; changed files get a
request (with the signature of the old copy as the delta basis); directories,
symlinks and special files are made here directly. Runs in the receiver's
reading thread. What only the final pass can do (hard links, deletions, directory
attributes) it hands on as Decisions.
"""

from __future__ import annotations

import errno
import os
import stat

from fscsync.engine import chmod, delta, filters, itemize
from fscsync.engine.altdest import SETTLED, AltDests, unchanged
from fscsync.engine.basis import DestCopies, cleartext_size
from fscsync.engine.deltiming import Deleter
from fscsync.engine.encpolicy import EncPolicy
from fscsync.engine.existing import DestListing
from fscsync.engine.flist import IMPLIED, Batch, Entry, rel_dir, unsafe_link
from fscsync.engine.hardlinks import Linker
from fscsync.engine.listmode import names_announced
from fscsync.engine.rxstate import BasisAt, Decisions, Pending, RxState, Status
from fscsync.engine.stats import tally
from fscsync.errors import EncdataUnsettable, escape
from fscsync.fs import cipher, meta
from fscsync.fs.destfs import DestTree, lstat_at, place
from fscsync.fs.meta import Target
from fscsync.wire import protocol

TYPE_CHECKING = False  # typing costs every run 5 ms to import; checkers know this name
if TYPE_CHECKING:
    from collections.abc import Callable

    from fscsync.fs.meta import IdMapper
    from fscsync.fs.probe import DestAbilities
    from fscsync.options import Options

_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR
_S_IFLNK = stat.S_IFLNK
_KIND_DESC = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
              stat.S_IFCHR: "device file", stat.S_IFBLK: "device file"}
"""rsync's words for what a removed directory made way for."""
_LOOK = object()
"""process()'s "no one has looked at the destination entry yet"."""


class Generator:
    """Decides, entry by entry as the file list arrives, what the destination needs,
    and asks the sender for it (requests are pipelined, never awaited).

    It runs in the receiver's reading thread, a batch of entries at a time: a
    thread of its own bought no parallelism under the GIL (its work is Python, not
    waiting) and traded the GIL with the reader on every system call.
    """

    def __init__(self, state: RxState, opts: Options, ids: IdMapper, tree: DestTree | None,
                 send: Callable[[int, bytes], None], abilities: Callable[[], DestAbilities],
                 item_dir: str = ">", root_created: bool = False, alt_root: bytes = b""):
        """`send` puts a frame on the way to the sender; `abilities` probes what the
        destination can store (asked only before an encrypted entry is written);
        `item_dir` is the itemize letter of a transfer (> or <); `root_created`: this
        run made the destination directory; `alt_root`: the destination directory's
        path, which relative --link-dest/--compare-dest/--copy-dest DIRs start from."""
        self.state = state
        self.opts = opts
        self.ids = ids
        self.tree = tree
        self.send = send
        self.item_dir = item_dir
        self.root_created = root_created
        announced = names_announced(opts)
        self.children: dict[bytes, set[bytes]] = {}
        """The names the list brings to each directory, for --delete-before, -after and
        the final pass of --parallel; with names announced (listmode.names_announced)
        the deleter has each directory's names from the sender, and this stays empty."""
        self._keeps_names = opts.delete and not announced
        self.listing = DestListing(opts, state.reporter)
        self.delete_rules = filters.delete_filter(opts, tree, self.listing.existing)
        self.deleter = Deleter(opts, state.reporter, state.stats, self.delete_rules,
                               self.listing.existing, self.children, state.backups,
                               announced)
        self.dirs: list[tuple[int, bool]] = []
        self.fresh: set[bytes] = set()  # directories this run made: nothing to look up in them
        self.waiting: dict[int, list[int]] = {}
        """-H: leader -> the later names decided while its data was in flight, linked
        once it is in (link_waiting; a dry run into a destination that does not exist
        yet lists none)."""
        self.linker = Linker(opts, state.reporter, state.stats, state.single_name,
                             state.backups)
        self.copies = DestCopies(opts)
        self.enc = EncPolicy(state, opts, abilities)
        self.alt = AltDests(opts, ids, self.copies, alt_root, state.reporter) \
            if opts.alt_dest_dirs else None
        o = self.opts
        self._quick = tree is not None and state.single_name is None and not (
            o.list_only or o.checksum or o.size_only or o.ignore_existing or o.xattrs
            or o.acls or o.ignore_times or o.chmod or o.executability or o.alt_dest_dirs
            or o.partial_dir)
        self._chmod = chmod.parse(o.chmod) if o.chmod else None
        self.sent_nomore = False

    def batch(self, base: int, batch: Batch) -> None:
        """Handle one file-list batch whose first entry has index `base`, putting each
        entry it does not settle outright into the receiver's list.

        The no-change rescan's common case is settled in this loop, from the batch's
        columns: a plain regular file whose destination has the same size, time, mode
        and owners is done, with no Entry ever built for it. Anything else, or any
        doubt, goes through process(), which would do nothing more for such a file: no
        request, no itemize line, no attribute change."""
        tree = self.tree
        state = self.state
        all_entries = state.entries
        if self.waiting and tree is not None:
            self.link_waiting()
        if self.deleter.names is not None:
            self.deleter.names.brought(batch)
        if not self._quick:
            for idx, e in enumerate(batch.entries(), base):
                all_entries[idx] = e
                self.process(tree, idx, e)
            return
        opts = self.opts
        perms, owner, group = opts.perms, opts.owner and meta.IS_ROOT, opts.group
        # A batch holds few owners: map each once (the names they map by came first).
        local_uid = {u: self.ids.uid(u) for u in set(batch.uids)} if owner else {}
        local_gid = {g: self.ids.gid(g) for g in set(batch.gids)} if group else {}
        children = self.children if self._keeps_names else None
        incoming = self.listing.incoming
        dirfd, lstat, fresh = tree.dirfd, os.stat, self.fresh
        done = total = 0
        for idx, path, mode, size, mtime_ns, uid, gid, flags in zip(
                range(base, base + len(batch)), batch.paths, batch.modes, batch.sizes,
                batch.mtimes, batch.uids, batch.gids, batch.flags, strict=True):
            st = _LOOK
            if not flags and mode & _S_IFMT == _S_IFREG:
                head, _, name = path.rpartition(b"/")
                if head in fresh:
                    st = None
                else:
                    try:
                        st = lstat(name, dir_fd=dirfd(head), follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    except OSError:
                        pass  # process() looks again, and reports what it finds
                    else:
                        if (st.st_mode & _S_IFMT == _S_IFREG
                                and st.st_size == size and st.st_mtime_ns == mtime_ns
                                and size % cipher.UNIT
                                and not (perms and (st.st_mode ^ mode) & 0o7777)
                                and not (owner and local_uid[uid] != st.st_uid)
                                and not (group and local_gid[gid] != st.st_gid)):
                            done += 1
                            total += size
                            if children is not None:
                                children.setdefault(head, set()).add(name)
                            if incoming and head in incoming:
                                incoming[head].add(name)
                            state.succeeded(idx, st)  # and no Entry, no status kept
                            continue
            e = all_entries[idx] = batch.entry(idx - base)
            self.process(tree, idx, e, st)
        if done:
            tally(state.stats.files, itemize.kind_name(_S_IFREG), done)
            state.stats.total_size += total

    def close(self) -> None:
        if self.alt is not None:
            self.alt.close()

    def finish(self) -> None:
        """The file list is complete: tell the sender no more requests will come."""
        if self.deleter.names is not None:
            self.deleter.names.end()
        self.sent_nomore = True
        self.send(protocol.NOMORE)

    def decisions(self) -> Decisions:
        """What the final pass is to do, once every requested file is in: by value, with
        each hard link's leader found in place or not, and only the directories that
        are still fine."""
        state = self.state
        entries, status = state.entries, state.status
        out = Decisions()
        ok = Status.OK
        out.dirs = [(entries[idx], new) for idx, new in self.dirs if status.get(idx) == ok]
        out.existing, out.children = self.listing.existing, self.children
        out.litter, out.incoming = self.listing.litter, self.listing.incoming
        out.rules = self.delete_rules
        out.deleter = self.deleter
        return out

    # ---- per entry --------------------------------------------------------------

    def process(self, tree: DestTree | None, idx: int, e: Entry, st=_LOOK) -> None:
        """Decide what entry `e` needs; `st` is the destination entry's lstat when the
        caller has made it (None: nothing there)."""
        state = self.state
        opts = self.opts
        fmt = e.mode & _S_IFMT
        if self._chmod is not None:
            e.mode = chmod.apply(self._chmod, e.mode)
        self._count(fmt, e)
        if opts.list_only:
            state.reporter.info(itemize.listing(e, show_target=opts.links), 0)
            state.status[idx] = Status.OK
            return
        if fmt not in (_S_IFREG, _S_IFDIR) and not self._kind_wanted(e):
            state.fail(idx, f'refusing "{escape(e.path)}": this run does not copy that kind of '
                            "file")
            return
        incoming = self.listing.incoming
        if (self._keeps_names or incoming) and e.path != b"." \
                and state.single_name is None:
            head, _, name = e.path.rpartition(b"/")
            if self._keeps_names:
                self.children.setdefault(head, set()).add(name)
            if head in incoming:
                incoming[head].add(name)
        if e.enc is not None and not self.enc.accepted(idx, e):
            return
        if tree is None:
            pfd, name, st = -1, b"", None
        else:
            try:
                pfd, name = state.locate(tree, e)
            except OSError as exc:
                if opts.existing and exc.errno == errno.ENOENT:
                    state.status[idx] = Status.OK  # below a directory --existing did not create
                    return
                if opts.dry_run and exc.errno in (errno.ENOENT, errno.ENOTDIR):  # not made
                    pfd, name, st = -1, b"", None
                else:
                    state.os_fail(idx, "open parent of", exc)
                    return
            else:
                if st is _LOOK:
                    if not name:
                        st = os.fstat(pfd)
                    elif state.single_name is None and e.path.rpartition(b"/")[0] in self.fresh:
                        st = None
                    else:
                        st = lstat_at(pfd, name)
        try:
            if st is None and opts.existing:
                state.status[idx] = Status.OK
            elif fmt == _S_IFREG:
                self.regular(idx, e, pfd, name, st)
            elif fmt == _S_IFDIR:
                self.directory(tree, idx, e, pfd, name, st)
            elif fmt == _S_IFLNK:
                self.symlink(idx, e, pfd, name, st)
            else:
                self.special(idx, e, pfd, name, st)
        except meta.EncdataConflict as exc:
            state.failed(idx, EncdataUnsettable(path=e.path, reason=exc))
        except OSError as exc:
            state.os_fail(idx, "update of", exc)
        if state.status.get(idx):
            state.done_with(idx)

    def _count(self, fmt: int, e: Entry) -> None:
        """--stats: one more entry of its kind, and its size for files and links."""
        tally(self.state.stats.files, itemize.kind_name(fmt))
        if fmt in (_S_IFREG, _S_IFLNK):
            self.state.stats.total_size += e.size

    def _kind_wanted(self, e: Entry) -> bool:
        """The receiver enforces the run's options itself: a sender may not make it
        create symlinks, devices or special files it was not asked for."""
        fmt = stat.S_IFMT(e.mode)
        if fmt in (stat.S_IFREG, stat.S_IFDIR):
            return True
        if fmt == stat.S_IFLNK:
            return self.opts.links and e.target is not None
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return self.opts.devices
        if fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            return self.opts.specials
        return False

    def _item(self, update: str, e: Entry, changes: str = "", new: bool = False,
              suffix: str = "") -> None:
        itemize.tell(self.state.reporter, self.opts,
                     lambda: itemize.line(update, e, changes, new, suffix),
                     (lambda: itemize.display_name(e)) if update != "." or e.is_dir else None,
                     e.size)

    def _item_made(self, e: Entry, was: str | None) -> None:
        """List an entry this run makes: as new, or (`was`) as changed from its copy in
        a --link-dest/--compare-dest/--copy-dest DIR, which rsync lists only at -ii
        when nothing differs."""
        if was is None:
            self._count_created(e)
            self._item("c", e, new=True)
        elif was:
            self._item("c", e, was)
        else:
            unchanged(self.opts, self.state.reporter, "c", e)

    def _count_created(self, e: Entry) -> None:
        tally(self.state.stats.created, itemize.kind_name(e.mode))

    def _make_way(self, idx: int, e: Entry, pfd: int, name: bytes,
                  st: os.stat_result) -> bool:
        """Remove what stands where a different kind of entry must go (a dry run lists
        what a directory there holds, as rsync does)."""
        if self.opts.dry_run:
            return not (stat.S_ISDIR(st.st_mode) and self.opts.delete) or self._remove_tree(
                idx, pfd, name, e)
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(name, dir_fd=pfd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not self.opts.delete:
                    self.state.fail(idx, f'cannot delete non-empty directory: "{escape(e.path)}"; '
                                         "could not make way for it (use --delete)")
                    return False
                return self._remove_tree(idx, pfd, name, e)
            return True
        self.deleter.unlink(pfd, name, self.state.dest_path(e))  # or into the backup, -b
        return True

    def _remove_tree(self, idx: int, pfd: int, name: bytes, e: Entry) -> bool:
        """Remove the destination directory where `e` goes (its contents itemized, as
        rsync's --delete does); False, with the entry failed, when something stays."""
        if self.tree is not None and self.deleter.make_room(self.tree, pfd, name, e.path):
            return True
        kind = _KIND_DESC.get(stat.S_IFMT(e.mode), "special file")
        self.state.fail(idx, f"could not make way for new {kind}: {escape(e.path)}")
        return False

    # ---- directories ------------------------------------------------------------

    def directory(self, tree, idx: int, e: Entry, pfd: int, name: bytes, st) -> None:
        state = self.state
        opts = self.opts
        if opts.keep_dirlinks and st is not None and stat.S_ISLNK(st.st_mode):
            there = _dir_behind(pfd, name)
            if there is not None:
                self._kept_dirlink(idx, e, pfd, name, st, there)
                return
        if e.rdev == IMPLIED:  # --no-implied-dirs: made if missing, else left alone
            if st is None:
                if not opts.dry_run:
                    os.mkdir(name, 0o777, dir_fd=pfd)
                self.fresh.add(rel_dir(e))
            state.status[idx] = Status.OK
            return
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not self._make_way(idx, e, pfd, name, st):
                return
            st = None
        if st is None:
            if self.enc.writable(idx, e):
                self._new_dir(idx, e, pfd, name, make=True)
            return
        have = self.copies.encdata(pfd, name, e) if e.enc is not None else None
        if have is not None and meta.ctx_of(have) != meta.ctx_of(e.enc):
            if not opts.delete:
                state.fail(idx, f'directory "{escape(e.path)}" was recreated with a new encryption '
                                "context; use --delete to replace the old one")
                return
            if not self.enc.writable(idx, e):
                return
            if not opts.dry_run and not self._remove_tree(idx, pfd, name, e):
                return
            self._new_dir(idx, e, pfd, name, make=True)
            return
        if e.enc is not None and have is None and not self.enc.writable(idx, e):
            return
        if e.path == b"." and self.root_created:
            self._new_dir(idx, e, pfd, name, make=False)
            return
        self.dirs.append((idx, False))
        state.status[idx] = Status.OK
        self._narrow_dir(e, pfd, name, st)
        changes = meta.differences(opts, self.ids, e, st, Target(pfd, name)).letters()
        if changes:
            self._item(".", e, changes)
        if opts.delete or opts.size_only or st.st_mtime_ns != e.mtime_ns:
            self.listing.scan(tree, rel_dir(e), e.path == b".", self.delete_rules)
            self.deleter.reached(tree, rel_dir(e), e.no_content)

    def _kept_dirlink(self, idx: int, e: Entry, pfd: int, name: bytes, st, there) -> None:
        """-K: the symlink stays. As in rsync 3.5 nothing is written through it (entries
        below fail, never land elsewhere); its directory's time is compared with the
        source's, and a difference listed and set on the symlink itself."""
        self.state.status[idx] = Status.OK
        if self.opts.keeps_time(e.mode) and not self.opts.same_time(there.st_mtime_ns,
                                                                      e.mtime_ns):
            self._item(".", e, "t")
            if not self.opts.dry_run:
                os.utime(name, ns=(st.st_atime_ns, e.mtime_ns), dir_fd=pfd,
                         follow_symlinks=False)

    def _narrow_dir(self, e: Entry, pfd: int, name: bytes, st) -> None:
        """An existing directory loses at once the group and other bits the source's
        lacks, so files landing in it are never more exposed than in the source; bits
        are only added (and the exact mode set) in the final pass."""
        if not self.opts.perms or self.opts.dry_run:
            return
        mode = stat.S_IMODE(st.st_mode)
        narrow = mode & (stat.S_IMODE(e.mode) | 0o7700)
        if narrow != mode:
            t = Target(pfd, name)
            t.pin(st)
            try:
                t.chmod(narrow)
            finally:
                t.unpin()

    def _new_dir(self, idx: int, e: Entry, pfd: int, name: bytes, make: bool) -> None:
        """A directory that is new at the destination (made here unless it exists
        already, as a freshly created root does); attributes come in the final pass."""
        self._item_made(e, self.alt.dir_changes(e) if self.alt is not None else None)
        if make and not self.opts.dry_run:
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:  # made just now by another run into this destination
                st = lstat_at(pfd, name)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    raise
        self.fresh.add(rel_dir(e))
        self.dirs.append((idx, True))
        self.state.status[idx] = Status.OK

    # ---- regular files --------------------------------------------------------------

    def _later_name(self, idx: int, e: Entry) -> None:
        """-H: a later name of a group is linked now if its leader is settled (in place,
        or failed), else once the leader's data is in. The leader is forgotten after its
        group's last name (Entry.link_last) is linked."""
        leader = e.link
        if self.tree is None or leader in self.state.pending or leader in self.waiting:
            self.waiting.setdefault(leader, []).append(idx)
            return
        self._link(idx, e)

    def _link(self, idx: int, e: Entry) -> None:
        state = self.state
        leader = e.link
        state.succeeded(idx, self.linker.link(self.tree, e, state.entries[leader],
                                              state.status.get(leader) == Status.OK))
        state.status[idx] = Status.OK
        if e.link_last:
            del state.entries[leader]
            state.status.pop(leader, None)

    def link_waiting(self) -> None:
        """The names whose leader's data has come in since: linked now (before each
        batch, and once every file is in, before DONE, so that --remove-source-files
        hears of each)."""
        state = self.state
        for leader in [k for k in self.waiting if k not in state.pending]:
            for idx in self.waiting.pop(leader):
                self._link(idx, state.entries[idx])
                state.done_with(idx)

    def regular(self, idx: int, e: Entry, pfd: int, name: bytes, st) -> None:
        state = self.state
        opts = self.opts
        if e.link >= 0 and e.link != idx:
            self._later_name(idx, e)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._make_way(idx, e, pfd, name, st):
                return
            st = None
        if (st is not None and opts.ignore_existing) or self._left_alone(e, st):
            state.status[idx] = Status.OK
            return
        basis = None
        if self.alt is not None:
            basis = self.alt.regular(idx, e, state.single_name or e.path, pfd, name, st, self)
            if basis is SETTLED:
                return
        dest_enc = None
        is_file = st is not None and st.st_mode & _S_IFMT == _S_IFREG
        if is_file and self.copies.may_hold_encdata(e, pfd, st):
            dest_enc = self.copies.encdata(pfd, name, e)
        partial = state.partials.find(pfd, name) if state.partials is not None else None
        if is_file and self.copies.same(e, pfd, name, st, dest_enc):
            if partial is not None:
                state.partials.drop(partial)
            self._existing_attrs(idx, e, Target(pfd, name), st)
            return
        if not self.enc.writable(idx, e):
            return
        new = st is None or not stat.S_ISREG(st.st_mode)
        where = (pfd, name, None if new else st, dest_enc)
        if new and basis is not None:  # listed and built as a change of the DIR's copy
            where = (basis.dirfd, basis.name, basis.st, basis.enc)
            self._item(self.item_dir, e, self._changes(e, *where))
        elif new:
            self._count_created(e)
            self._item(self.item_dir, e, new=True)
        else:
            self._item(self.item_dir, e, self._changes(e, *where))
        if opts.dry_run:
            state.status[idx] = Status.OK
            return
        self._request(idx, e, st if not new else None, where, partial)

    def _changes(self, e: Entry, pfd: int, name: bytes, st, dest_enc) -> str:
        """The itemize letters of a file to be transferred over the copy at (pfd, name)."""
        opts = self.opts
        changes = "s" if cleartext_size(dest_enc, st.st_size) != cleartext_size(
            e.enc, e.size) else ""
        if opts.checksum:
            changes = "c" + changes
        changes += meta.differences(opts, self.ids, e, st, Target(pfd, name)).letters()
        return changes if opts.times else changes.replace("t", "")

    def _left_alone(self, e: Entry, st) -> bool:
        """--max-size, --min-size and -u: files the run must not touch at all (rsync's
        generator checks them before the quick check; -u compares whole seconds)."""
        opts = self.opts
        if 0 <= opts.max_size < e.size or e.size < opts.min_size:
            return True
        return (opts.update and st is not None and stat.S_ISREG(st.st_mode)
                and e.mtime_ns // 10**9 - st.st_mtime_ns // 10**9 < (opts.modify_window or 0))

    def _request(self, idx: int, e: Entry, replaced, where,
                 partial: BasisAt | None = None) -> None:
        """Ask for file `e` with the copy `where` (pfd, name, stat, encdata) as its basis,
        or, when an earlier run left one, its --partial-dir file; `replaced`: the stat of
        the file it replaces, if any."""
        state = self.state
        if partial is not None:
            layout = cipher.PLAIN
            req = self.copies.delta_request(idx, partial.dirfd, partial.name, layout)
        else:
            req, layout = self.copies.request(idx, e, *where)
        pending = Pending(idx, layout, req.kind != delta.WHOLE)
        pending.chunk = req.chunk
        pending.basis_size = req.basis_size
        if replaced is not None:
            pending.replaced_mode = replaced.st_mode
        if partial is not None:
            pending.basis_at = partial
        elif replaced is None and pending.has_basis:  # a --link-dest/--copy-dest DIR copy
            pending.basis_at = BasisAt(os.dup(where[0]), where[1], partial=False)
        state.pending[idx] = pending
        state.requested += 1
        self.send(protocol.REQ, req.encode())

    # ---- symlinks and special files ---------------------------------------------------

    def symlink(self, idx: int, e: Entry, pfd: int, name: bytes, st) -> None:
        state = self.state
        if self.opts.safe_links and unsafe_link(e.target, e.path):
            state.reporter.info(f'ignoring unsafe symlink "{escape(e.path)}" -> '
                                f'"{escape(e.target)}"', 1)
            state.status[idx] = Status.OK
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._make_way(idx, e, pfd, name, st):
                return
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            same_enc = self.copies.encdata(pfd, name, e) == e.enc
            if os.readlink(name, dir_fd=pfd) == e.target and same_enc:
                self._existing_attrs(idx, e, Target(pfd, name, is_link=True), st)
                return
            if not self.enc.writable(idx, e):
                return
            changes = "c"
            if self.opts.keeps_time(e.mode) and not self.opts.same_time(st.st_mtime_ns,
                                                                        e.mtime_ns):
                changes += "t"
            self._item("c", e, changes)
        else:
            was = self._from_alt(idx, e, pfd, name, st)
            if was is SETTLED or not self.enc.writable(idx, e):
                return
            self._item_made(e, was)
        if self.opts.dry_run:
            state.status[idx] = Status.OK
            return
        self._place(idx, e, pfd, name, lambda tmp: os.symlink(e.target, tmp, dir_fd=pfd),
                    is_link=True)

    def special(self, idx: int, e: Entry, pfd: int, name: bytes, st) -> None:
        state = self.state
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._make_way(idx, e, pfd, name, st):
                return
            st = None
        if (st is not None and stat.S_IFMT(st.st_mode) == stat.S_IFMT(e.mode)
                and (st.st_rdev == e.rdev or not e.rdev)
                and self.copies.encdata(pfd, name, e) == e.enc):
            self._existing_attrs(idx, e, Target(pfd, name), st)
            return
        was = self._from_alt(idx, e, pfd, name, st)
        if was is SETTLED:
            return
        self._item_made(e, was)
        if self.opts.dry_run:
            state.status[idx] = Status.OK
            return
        self._place(idx, e, pfd, name,
                    lambda tmp: os.mknod(tmp, stat.S_IFMT(e.mode) | 0o600, e.rdev, dir_fd=pfd),
                    is_link=False)

    def _from_alt(self, idx: int, e: Entry, pfd: int, name: bytes, st) -> object:
        """A symlink or special file with nothing of its own at the destination: what
        the DIRs make of it (altdest.AltDests.other)."""
        if self.alt is None or st is not None:
            return None
        return self.alt.other(idx, e, self.state.single_name or e.path, pfd, name, self)

    def _existing_attrs(self, idx: int, e: Entry, t: Target, st) -> None:
        """An entry whose data is in place: its attributes brought in line, itemized as
        rsync does it, with what apply_attrs found to change (a dry run: what differs)."""
        self.state.status[idx] = Status.OK
        diff = meta.differences(self.opts, self.ids, e, st, t)
        # -c found the data the same: rsync then sets the time to the nanosecond, unlisted
        exact = (self.opts.checksum and e.is_reg and not diff.time
                 and self.opts.keeps_time(e.mode) and st.st_mtime_ns != e.mtime_ns)
        if not diff and not exact:
            self.state.succeeded(idx, st)
            return
        if self.opts.dry_run:
            changes = diff.letters()
        else:
            changes = meta.apply_attrs(self.opts, self.ids, e, t, st, new=False,
                                       accurate_time=exact)
            if exact:
                changes = changes.replace("t", "")
        self.state.succeeded(idx, st)
        if changes:
            self._item(".", e, changes)

    def _place(self, idx: int, e: Entry, pfd: int, name: bytes, make, is_link: bool) -> None:
        """make(tmp) the entry under a temp name, its attributes on it (encdata last but
        times), then rename it in. The temp entry is made inside the try: a signal
        landing just after it was made still removes it."""
        state = self.state
        held: list[os.stat_result] = []

        def build(tmp: bytes) -> None:
            make(tmp)
            t = Target(pfd, tmp, is_link=is_link)
            held.append(t.hold())
            meta.apply_attrs(self.opts, self.ids, e, t, held[0], new=True)
            if state.backups is not None:  # -b: the old entry kept just before it goes
                state.backups.keep(pfd, name, state.dest_path(e))

        place(pfd, name, build)
        state.status[idx] = Status.OK
        state.succeeded(idx, held[0])


def _dir_behind(pfd: int, name: bytes) -> os.stat_result | None:
    """The stat of the directory a symlink leads to, or None."""
    try:
        there = os.stat(name, dir_fd=pfd)
    except OSError:
        return None
    return there if stat.S_ISDIR(there.st_mode) else None


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
from fscsync.engine.flist import IMPLIED, Batch, Entry
from fscsync.engine.rxstate import Decisions, Pending, RxState, Status
from fscsync.engine.stats import tally
from fscsync.errors import escape
from fscsync.fs import cipher, meta
from fscsync.fs.destfs import (
    TEMP_MARK,
    DestTree,
    is_temp_name,
    listdir,
    lstat_at,
    proc_path,
    remove_tree,
    temp_name,
)
from fscsync.fs.fileio import BlockReader, digest_fd
from fscsync.fs.inplace import is_journal_name, recover
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
_INO_IV_MEANS = ("its ciphertext is bound to the inode numbers of the source, so a copy on "
                 "another inode or filesystem cannot be decrypted, even with the key")
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
                 item_dir: str = ">", root_created: bool = False):
        """`send` puts a frame on the way to the sender; `abilities` probes what the
        destination can store (asked only before an encrypted entry is written);
        `item_dir` is the itemize letter of a transfer (> or <); `root_created`: this
        run made the destination directory."""
        self.state = state
        self.opts = opts
        self.ids = ids
        self.tree = tree
        self.send = send
        self.abilities = abilities
        self.item_dir = item_dir
        self.root_created = root_created
        self.children: dict[bytes, set[bytes]] = {}
        self.existing: dict[bytes, list[bytes]] = {}
        self.delete_rules = filters.delete_filter(opts, tree, self.existing)
        self.dirs: list[tuple[int, bool]] = []
        self.fresh: set[bytes] = set()  # directories this run made: nothing to look up in them
        self.hardlinks: list[int] = []
        self.litter: dict[bytes, list[bytes]] = {}  # names like our temp files, per directory
        self.incoming: dict[bytes, set[bytes]] = {}  # the names the list brings there
        self._warned_policies: set[bytes] = set()
        self._enc_dir_key: tuple[int, bytes] | None = None
        self._enc_dir = False
        self.finder = cipher.EncdataFinder(self.opts.encdata_xattr)
        o = self.opts
        self._quick = tree is not None and state.single_name is None and not (
            o.list_only or o.checksum or o.size_only or o.ignore_existing or o.xattrs
            or o.acls or o.ignore_times or o.chmod or o.executability)
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
        children = self.children if opts.delete else None
        keep = state.keep_entries  # else finished entries are dropped (RxState.done_with)
        status, ok = state.status, Status.OK
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
                            if self.incoming and head in self.incoming:
                                self.incoming[head].add(name)
                            status[idx] = ok
                            if keep:
                                all_entries[idx] = batch.entry(idx - base)
                            continue
            e = all_entries[idx] = batch.entry(idx - base)
            self.process(tree, idx, e, st)
        if done:
            tally(state.stats.files, itemize.kind_name(_S_IFREG), done)
            state.stats.total_size += total

    def finish(self) -> None:
        """The file list is complete: tell the sender no more requests will come."""
        self.sent_nomore = True
        self.send(protocol.NOMORE)

    def decisions(self) -> Decisions:
        """What the final pass is to do, once every requested file is in: by value, with
        each hard link's leader found in place or not, and only the directories that
        are still fine."""
        state = self.state
        entries, status = state.entries, state.status
        out = Decisions()
        out.dirs = [(entries[idx], new) for idx, new in self.dirs if status[idx] == Status.OK]
        out.links = [(entries[idx], entries[entries[idx].link],
                      status[entries[idx].link] == Status.OK) for idx in self.hardlinks]
        out.existing, out.children = self.existing, self.children
        out.litter, out.incoming = self.litter, self.incoming
        out.rules = self.delete_rules
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
        if (opts.delete or self.incoming) and e.path != b"." and state.single_name is None:
            head, _, name = e.path.rpartition(b"/")
            if opts.delete:
                self.children.setdefault(head, set()).add(name)
            if head in self.incoming:
                self.incoming[head].add(name)
        if e.enc is not None and not self._encryption_ok(idx, e):
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
                if opts.dry_run and exc.errno == errno.ENOENT:
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
            state.fail(idx, f'cannot set encdata on "{escape(e.path)}": {exc.strerror}')
        except OSError as exc:
            state.os_fail(idx, "update of", exc)
        if state.status[idx]:
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

    def _encryption_ok(self, idx: int, e: Entry) -> bool:
        state = self.state
        try:
            enc = cipher.parse_encdata(e.enc)
        except cipher.EncdataError as exc:
            state.fail(idx, f'malformed encdata for "{escape(e.path)}" from the sender: {exc}')
            return False
        if enc.ino_based_iv:
            if self.opts.refuse_ino_policies:
                state.fail(idx, f'"{escape(e.path)}" uses a policy with '
                                f"{enc.ino_policy_flag()} (flags 0x{enc.flags:02x}): "
                                f"{_INO_IV_MEANS} (--refuse-ino-policies)")
                return False
            self._warn_once(enc, f"policy with key {enc.master_key_id.hex()} sets "
                                 f"{enc.ino_policy_flag()} (flags 0x{enc.flags:02x}): "
                                 f"{_INO_IV_MEANS}; the copy is only a backup of the ciphertext")
        if e.is_reg:
            self.state.stats.encrypted_files += 1
        return True

    def _warn_once(self, enc: cipher.EncData, text: str) -> None:
        """One warning per policy, however many of its entries the run meets."""
        if enc.policy not in self._warned_policies:
            self._warned_policies.add(enc.policy)
            self.state.reporter.warning(text)

    def _writable_encrypted(self, idx: int, e: Entry) -> bool:
        """Can the destination take entry `e`'s encdata? Asked only just before an
        encrypted entry is written, so a run that writes none probes nothing."""
        if e.enc is None or self.opts.dry_run:
            return True
        state = self.state
        ab = self.abilities()
        if not ab.encdata:
            state.fail(idx, f'cannot store "{escape(e.path)}" encrypted: {ab.encdata_why}')
            return False
        enc = cipher.parse_encdata(e.enc)  # _encryption_ok has parsed it already
        if enc.is_v2:
            return True
        if ab.encdata_virtual and not e.enc_alt:
            state.fail(idx, f'cannot restore "{escape(e.path)}" key-less: its fscrypt '
                            f"context is v{enc.enc_ctx[0]} ({len(enc.enc_ctx)} bytes), and "
                            f"security.encdata installs only {cipher.CTX_V2_LEN}-byte v2 contexts")
            return False
        self._warn_once(enc, f"policy with key descriptor {enc.master_key_id.hex()} is "
                             "fscrypt v1: its entries are stored as they are on this plain "
                             "backup, but no encdata interface can restore them key-less")
        return True

    def _item(self, update: str, e: Entry, changes: str = "", new: bool = False,
              suffix: str = "") -> None:
        state = self.state
        if self.opts.itemize or self.opts.log_items:
            state.reporter.itemize(itemize.line(update, e, changes, new, suffix), e.size)
        if not self.opts.itemize and self.opts.verbose and (update != "." or e.is_dir):
            state.reporter.info(itemize.display_name(e), 1)

    def _count_created(self, e: Entry) -> None:
        tally(self.state.stats.created, itemize.kind_name(e.mode))

    def _make_way(self, idx: int, e: Entry, pfd: int, name: bytes,
                  st: os.stat_result) -> bool:
        """Remove what stands where a different kind of entry must go."""
        if self.opts.dry_run:
            return True
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
                self._remove_tree(pfd, name, e.path)
            return True
        os.unlink(name, dir_fd=pfd)
        return True

    def _remove_tree(self, pfd: int, name: bytes, path: bytes) -> None:
        """Remove a destination subtree, itemizing each entry as rsync's --delete does."""
        head = path.rpartition(b"/")[0]
        prefix = head + b"/" if head else b""

        def removed(rel: bytes, is_dir: bool) -> None:
            if rel == name:
                return
            tally(self.state.stats.deleted, "dir" if is_dir else "reg")
            if self.opts.itemize or self.opts.log_items:
                self.state.reporter.itemize(itemize.deleting(prefix + rel, is_dir))
            if not self.opts.itemize and self.opts.verbose:
                self.state.reporter.info(f"deleting {escape(prefix + rel)}", 1)

        if self.tree is not None:
            self.tree.forget(path)
        remove_tree(pfd, name, removed)

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
            if self._writable_encrypted(idx, e):
                self._new_dir(idx, e, pfd, name, make=True)
            return
        have = self._dest_encdata(pfd, name, e) if e.enc is not None else None
        if have is not None and meta.ctx_of(have) != meta.ctx_of(e.enc):
            if not opts.delete:
                state.fail(idx, f'directory "{escape(e.path)}" was recreated with a new encryption '
                                "context; use --delete to replace the old one")
                return
            if not self._writable_encrypted(idx, e):
                return
            if not opts.dry_run:
                self._remove_tree(pfd, name, e.path)
            self._new_dir(idx, e, pfd, name, make=True)
            return
        if e.enc is not None and have is None and not self._writable_encrypted(idx, e):
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
            self._scan_existing(tree, e)

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
        self._count_created(e)
        self._item("c", e, new=True)
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

    def _may_hold_encdata(self, e: Entry, pfd: int, st) -> bool:
        """Can the regular destination file in the way of entry `e` be encrypted?

        Asking every file costs a listxattr per entry, the largest single cost of a
        no-change run. A plain source entry skips it when the destination file's size
        is no whole number of encryption units (ciphertext always is) or its
        directory carries no encdata (fscrypt files inherit their directory's
        policy, and the backup layout keeps that shape)."""
        if e.enc is not None:
            return True
        if st.st_size % cipher.UNIT:
            return False
        key = (pfd, e.path.rpartition(b"/")[0])
        if self._enc_dir_key != key:
            self._enc_dir_key = key
            self._enc_dir = self._dest_encdata(pfd, b"", e) is not None
        return self._enc_dir

    def _dest_encdata(self, pfd: int, name: bytes, e: Entry) -> bytes | None:
        """The destination entry's encdata, under the name this entry's would be stored
        (for a plain source entry: under either name)."""
        path = proc_path(pfd, name) if name else pfd
        names = (meta.encdata_target(self.opts, e),) if e.enc is not None else None
        return self.finder.ask(path, names)[0]

    def _dest_layout(self, pfd: int, name: bytes, st, e: Entry, dest_enc: bytes | None) -> int:
        """How to read the destination file as a basis or for -c: as this entry's kind
        of data (a plain basis is never used for an encrypted entry, nor the reverse)."""
        if dest_enc is None or e.enc is None:
            return cipher.PLAIN
        return self.finder.learn(proc_path(pfd, name), st.st_dev, meta.encdata_target(self.opts, e))

    def _scan_existing(self, tree: DestTree, e: Entry) -> None:
        """List an existing destination directory once: clean up temp files a killed
        run left behind, finish its committed in-place updates, and remember the
        names for --delete.

        Without --delete, a directory whose time still equals the source's is not
        listed (a tenth of a no-change run's receiver time): making a temp file or a
        journal in it set its time to that moment, and a killed run never gets as far
        as setting it back. What such a directory can still hold is what a finished
        run failed to remove: litter, or the committed journal of an update that
        failed half applied, whose file then carries the time of those writes and is
        sent again; only --size-only could miss that, and it lists."""
        rel = rel_dir(e)
        try:
            fd = tree.dirfd(rel)
            names = listdir(fd)
        except OSError:
            return
        # -d without -r lists the contents of `src/` only: no other directory's rest goes
        deletes = self.opts.delete and (self.opts.recursive or e.path == b".")
        if self.delete_rules is not None and not self.opts.delete_after:
            self.delete_rules.state(rel, tree.dirfd, fd)  # its merge files as they are now
        if TEMP_MARK not in b"/".join(names):  # one search instead of a match per name
            if deletes:
                self.existing[rel] = names
            return
        keep = []
        litter = []
        for n in names:
            if is_journal_name(n) and not self.opts.dry_run and self._recover(fd, rel, n):
                continue
            if is_temp_name(n) or is_journal_name(n):
                litter.append(n)
                continue
            keep.append(n)
        if litter:
            self.litter[rel] = litter
            self.incoming.setdefault(rel, set())
        if deletes:
            self.existing[rel] = keep

    def _recover(self, fd: int, rel: bytes, jname: bytes) -> bool:
        """Finish an in-place update a killed run committed, before any entry of this
        directory is compared; True when the journal is gone. Anything else of that name
        is litter for the final pass, unless the file list brings that name."""
        path = rel + b"/" + jname if rel else jname
        try:
            applied = recover(fd, jname, drop_invalid=False)
        except OSError as exc:
            self.state.reporter.error(f'cannot recover "{escape(path)}": {exc.strerror} '
                                      f"({exc.errno})")
            return True
        if applied:
            self.state.reporter.info(f'finished the interrupted update of "{escape(path)}"', 0)
        return applied is not None

    # ---- regular files --------------------------------------------------------------

    def regular(self, idx: int, e: Entry, pfd: int, name: bytes, st) -> None:
        state = self.state
        opts = self.opts
        if e.link >= 0:
            self.hardlinks.append(idx)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._make_way(idx, e, pfd, name, st):
                return
            st = None
        if (st is not None and opts.ignore_existing) or self._left_alone(e, st):
            state.status[idx] = Status.OK
            return
        dest_enc = None
        is_file = st is not None and st.st_mode & _S_IFMT == _S_IFREG
        if is_file and self._may_hold_encdata(e, pfd, st):
            dest_enc = self._dest_encdata(pfd, name, e)
        if is_file and self._same(e, pfd, name, st, dest_enc):
            self._existing_attrs(idx, e, Target(pfd, name), st)
            return
        if not self._writable_encrypted(idx, e):
            return
        new = st is None or not stat.S_ISREG(st.st_mode)
        if new:
            self._count_created(e)
            self._item(self.item_dir, e, new=True)
        else:
            changes = "s" if _cleartext_size(dest_enc, st.st_size) != _cleartext_size(
                e.enc, e.size) else ""
            if opts.checksum:
                changes = "c" + changes
            changes += meta.differences(opts, self.ids, e, st, Target(pfd, name)).letters()
            if not opts.times:
                changes = changes.replace("t", "")
            self._item(self.item_dir, e, changes)
        if opts.dry_run:
            state.status[idx] = Status.OK
            return
        self._request(idx, e, pfd, name, st, dest_enc, new)

    def _same(self, e: Entry, pfd: int, name: bytes, st, dest_enc: bytes | None) -> bool:
        """rsync's quick check, made encryption-aware: cleartext size from encdata, and
        a different context (new nonce) always means a new file."""
        opts = self.opts
        if e.enc is not None:
            if dest_enc is None:
                return False
            try:
                mine = cipher.parse_encdata(e.enc)
                theirs = cipher.parse_encdata(dest_enc)
            except cipher.EncdataError:
                return False
            if mine.enc_ctx != theirs.enc_ctx or mine.size != theirs.size:
                return False
        elif dest_enc is not None or st.st_size != e.size:
            return False
        if opts.checksum:
            layout = self._dest_layout(pfd, name, st, e, dest_enc)
            return self._dest_digest(pfd, name, layout) == e.checksum
        if opts.size_only:
            return True
        return not opts.ignore_times and opts.same_time(st.st_mtime_ns, e.mtime_ns)

    def _left_alone(self, e: Entry, st) -> bool:
        """--max-size, --min-size and -u: files the run must not touch at all (rsync's
        generator checks them before the quick check; -u compares whole seconds)."""
        opts = self.opts
        if 0 <= opts.max_size < e.size or e.size < opts.min_size:
            return True
        return (opts.update and st is not None and stat.S_ISREG(st.st_mode)
                and e.mtime_ns // 10**9 - st.st_mtime_ns // 10**9 < (opts.modify_window or 0))

    @staticmethod
    def _dest_digest(pfd: int, name: bytes, layout: int) -> bytes | None:
        try:
            fd, direct = cipher.open_data(name, layout, dir_fd=pfd)
        except OSError:
            return None
        reader = BlockReader(fd, direct)
        try:
            return digest_fd(reader)
        finally:
            reader.close()
            os.close(fd)

    def _request(self, idx: int, e: Entry, pfd: int, name: bytes, st, dest_enc, new) -> None:
        state = self.state
        opts = self.opts
        use_basis = not new and not opts.whole_file
        if use_basis and (e.enc is None) != (dest_enc is None):
            use_basis = False
        if use_basis and e.enc is not None:
            try:
                same_ctx = (cipher.parse_encdata(e.enc).enc_ctx
                            == cipher.parse_encdata(dest_enc).enc_ctx)
            except cipher.EncdataError:
                same_ctx = False
            use_basis = same_ctx
        layout = self._dest_layout(pfd, name, st, e, dest_enc) if use_basis else cipher.PLAIN
        req = None
        if use_basis:
            try:
                fd, direct = cipher.open_data(name, layout, dir_fd=pfd)
            except OSError:
                fd = None
            if fd is not None:
                reader = BlockReader(fd, direct)
                try:
                    size = os.fstat(fd).st_size
                    req = delta.make_request(idx, reader, size, opts.block_size)
                except OSError:
                    req = None
                finally:
                    reader.close()
                    os.close(fd)
        if req is None:
            req = delta.Request(idx, delta.WHOLE)
        pending = Pending(idx, layout, req.kind != delta.WHOLE)
        pending.chunk = req.chunk
        pending.basis_size = req.basis_size
        if not new:
            pending.replaced_mode = st.st_mode
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
            same_enc = self._dest_encdata(pfd, name, e) == e.enc
            if os.readlink(name, dir_fd=pfd) == e.target and same_enc:
                self._existing_attrs(idx, e, Target(pfd, name, is_link=True), st)
                return
            if not self._writable_encrypted(idx, e):
                return
            changes = "c"
            if self.opts.keeps_time(e.mode) and not self.opts.same_time(st.st_mtime_ns,
                                                                        e.mtime_ns):
                changes += "t"
            self._item("c", e, changes)
        else:
            if not self._writable_encrypted(idx, e):
                return
            self._count_created(e)
            self._item("c", e, new=True)
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
                and self._dest_encdata(pfd, name, e) == e.enc):
            self._existing_attrs(idx, e, Target(pfd, name), st)
            return
        self._count_created(e)
        self._item("c", e, new=True)
        if self.opts.dry_run:
            state.status[idx] = Status.OK
            return
        self._place(idx, e, pfd, name,
                    lambda tmp: os.mknod(tmp, stat.S_IFMT(e.mode) | 0o600, e.rdev, dir_fd=pfd),
                    is_link=False)

    def _existing_attrs(self, idx: int, e: Entry, t: Target, st) -> None:
        """An entry whose data is in place: its attributes brought in line, itemized as
        rsync does it, with what apply_attrs found to change (a dry run: what differs)."""
        self.state.status[idx] = Status.OK
        diff = meta.differences(self.opts, self.ids, e, st, t)
        # -c found the data the same: rsync then sets the time to the nanosecond, unlisted
        exact = (self.opts.checksum and e.is_reg and not diff.time
                 and self.opts.keeps_time(e.mode) and st.st_mtime_ns != e.mtime_ns)
        if not diff and not exact:
            return
        if self.opts.dry_run:
            changes = diff.letters()
        else:
            changes = meta.apply_attrs(self.opts, self.ids, e, t, st, new=False,
                                       accurate_time=exact)
            if exact:
                changes = changes.replace("t", "")
        if changes:
            self._item(".", e, changes)

    def _place(self, idx: int, e: Entry, pfd: int, name: bytes, make, is_link: bool) -> None:
        """make(tmp) the entry under a temp name, its attributes on it (encdata last but
        times), then rename it in. The temp entry is made inside the try: a signal
        landing just after it was made still removes it."""
        state = self.state
        tmp = temp_name(name)
        try:
            make(tmp)
            t = Target(pfd, tmp, is_link=is_link)
            meta.apply_attrs(self.opts, self.ids, e, t, t.hold(), new=True)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=pfd)
            except OSError:
                pass
            raise
        state.status[idx] = Status.OK


def rel_dir(e: Entry) -> bytes:
    """The destination-relative directory path of a directory entry."""
    return b"" if e.path == b"." else e.path


def _dir_behind(pfd: int, name: bytes) -> os.stat_result | None:
    """The stat of the directory a symlink leads to, or None."""
    try:
        there = os.stat(name, dir_fd=pfd)
    except OSError:
        return None
    return there if stat.S_ISDIR(there.st_mode) else None


def unsafe_link(target: bytes, path: bytes) -> bool:
    """rsync's unsafe_symlink: an absolute target, a '..' after any other component,
    even '.' or an empty one (rsync 3.4's rule: `sub/../..`, `./..` and `..//..` are
    unsafe however deep the link sits), or leading '..' steps that climb above the
    transfer's top from the link's directory (`path` is transfer-relative)."""
    if not target or target.startswith(b"/"):
        return True
    depth = path.count(b"/")
    named = False
    for part in target.split(b"/"):
        if part == b"..":
            depth -= 1
            if named or depth < 0:
                return True
        else:
            named = True
    return False


def _cleartext_size(enc: bytes | None, plain_size: int) -> int:
    """Size as the user sees it: from encdata for encrypted entries (-1 if malformed)."""
    if enc is None:
        return plain_size
    try:
        return cipher.parse_encdata(enc).size
    except cipher.EncdataError:
        return -1

"""The end-to-end proof of the mission (issue 6), on the fscrypt stand-in (fscsync.testfs).

Plaintext written through an unlocked view of A; fscsync mirrors the *locked*
view of A (no key anywhere: ciphertext read with O_CIPHERTEXT, encdata set
last) to a locked view of B, directly or through a plain backup directory over
ssh; the unlocked view of the copy shows the original byte for byte: names,
contents, sizes, symlink targets, modes, owners, hard links and mtimes.

Layout (see support/e2e.py): backing roots are plain, `vault/` is the encrypted
directory (made with mkpolicy), destinations start as empty plain backing
directories, and the syncs are `A/ -> B/`. Every comparison is made three ways:
plaintext (unlocked copy == the original tree), encrypted metadata (unlocked A
== unlocked B including the security.encdata text: same nonces, same raw names)
and ciphertext (backing A == backing B: the copy is exact on disk).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xattr
from support import REPO, run_fscsync
from support.e2e import (
    BIG_SIZE,
    KEY,
    MIB_SIZE,
    VAULT,
    World,
    build_original,
    item_lines,
    locked_twin,
    read,
    replicate,
    same_times,
    write,
)
from support.sshd import Sshd
from support.stats import parse_stats
from support.treecmp import assert_same_tree
from support.trees import pattern, set_times, set_tree_times
from testfs_fixtures import encdata_of, needs_fuse, read_ciphertext

from fscsync.errors import escape
from fscsync.fs.cipher import (
    ENCDATA_XATTR,
    O_CIPHERTEXT,
    UNIT,
    EncData,
    escape_name,
    format_encdata,
    padded_size,
    parse_encdata,
    unescape_name,
)
from fscsync.testfs import model

pytestmark = needs_fuse
join = os.path.join
ENV = {"LC_ALL": "C"}
BIG = join(VAULT, b"big.img")
T_NEW = 1_700_000_000_987_654_321


@dataclass
class Source:
    """The original plaintext tree and A (its backing directory and both views)."""

    orig: bytes
    backing: bytes
    unlocked: bytes
    locked: bytes


@pytest.fixture(params=[False], ids=["faithful"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """Views as the real interface behaves; a test parametrized indirectly with True
    also runs against the kinder stand-in that lists encdata."""
    w = World(tmp_path, list_encdata=request.param)
    try:
        yield w
    finally:
        w.close()  # unmounts every view, also when the test failed


@pytest.fixture
def source(world: World) -> Source:
    orig = os.fsencode(world.base / "orig")
    os.mkdir(orig)
    build_original(orig)
    backing = world.backing("A", encrypted_vault=True)
    unlocked = world.view(backing, KEY)
    replicate(orig, unlocked)
    return Source(orig, backing, unlocked, world.view(backing))


def fscsync(*args: str | bytes, check: int = 0) -> subprocess.CompletedProcess[bytes]:
    proc = run_fscsync(*args, env=ENV, check=check, timeout=60)
    text = proc.stderr.decode(errors="replace")
    assert "Traceback" not in text and "internal error" not in text, text
    return proc


def slash(path: bytes | Path) -> bytes:
    return os.fsencode(path) + b"/"


def assert_round_trip(source: Source, dest_backing: bytes, world: World) -> None:
    """The copy is exact on disk, and its unlocked view is the original plaintext."""
    assert_same_tree(source.backing, dest_backing)  # ciphertext, names, encdata, modes, times
    assert b"files" not in os.listdir(join(dest_backing, VAULT)), "names stored in plaintext"
    with world.mounted_view(dest_backing, KEY) as unlocked:
        assert_same_tree(source.orig, unlocked, xattrs=False)
        assert_same_tree(source.unlocked, unlocked)  # plus the security.encdata texts
        assert encdata_of(join(unlocked, VAULT)) is not None
        assert os.stat(join(unlocked, VAULT, b"files", b"u4097")).st_nlink == 2


def change_both(source: Source, change: Callable[[bytes], None]) -> None:
    """Apply the same change (a function of a tree root) to the original and to unlocked A."""
    change(source.orig)
    change(source.unlocked)


# ---- 1. locked A -> locked B --------------------------------------------------------------


@pytest.mark.parametrize("world", [False, True], ids=["faithful", "listed"], indirect=True)
def test_locked_to_locked_round_trip(world: World, source: Source) -> None:
    """Plaintext -> unlocked A; locked A -> fscsync -aH -> locked B; unlocked B == original."""
    assert_same_tree(source.orig, source.unlocked, xattrs=False)  # the stand-in holds it
    assert b"files" not in os.listdir(join(source.locked, VAULT)), "A is not locked"
    b = world.backing("B")
    with world.mounted_view(b) as locked_b:
        fscsync("-aH", slash(source.locked), slash(locked_b))
    assert_round_trip(source, b, world)


def overlong_name(locked_dir: bytes) -> bytes:
    """A 250-byte plaintext name whose escaped ciphertext name exceeds NAME_MAX (255)."""
    enc = parse_encdata(encdata_of(locked_dir))
    key = model.file_key(KEY, enc.nonce)
    return next(name for name in (b"N" * 247 + b"%03d" % i for i in range(1000))
                if len(escape_name(model.encrypt_name(key, name, enc.flags))) > 255)


def test_escaped_name_longer_than_name_max(world: World, tmp_path: Path) -> None:
    """A 250-byte name is a 255-byte raw ciphertext name, shown escaped in more than 255
    bytes by the locked view (as Lustre's escape can): still mirrored locked to locked."""
    a = world.backing("A", encrypted_vault=True)
    unlocked = world.view(a, KEY)
    locked = world.view(a)
    name = overlong_name(join(locked, VAULT))
    write(join(unlocked, VAULT, name), b"long name\n", 0o640)
    set_tree_times(unlocked)
    (shown,) = os.listdir(join(locked, VAULT))
    assert len(shown) > 255
    b = world.backing("B")
    with world.mounted_view(b) as locked_b:
        fscsync("-aH", slash(locked), slash(locked_b))
    with world.mounted_view(b, KEY) as unlocked_b:
        assert_same_tree(unlocked, unlocked_b)
        assert read(join(unlocked_b, VAULT, name)) == b"long name\n"


# ---- 2. via a plain backup server over ssh ------------------------------------------------


def test_via_plain_backup_over_ssh(world: World, source: Source, sshd: Sshd) -> None:
    """locked A -> push over sshd -> plain directory (the encrypted backup layout) ->
    pull over sshd -> locked C (empty backing); unlocked C == original."""
    ssh = ("-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync)
    backup = world.base / "backup"  # an ordinary directory on the local (ext4/tmpfs) disk
    fscsync(*ssh, "-aH", slash(source.locked), f"{sshd.host}:{backup}/")
    # security.encdata is a real xattr there, ciphertext stays padded to the unit
    vault = parse_encdata(xattr.get(bytes(backup / "vault"), ENCDATA_XATTR, nofollow=True))
    assert vault.size == 0 and len(vault.enc_ctx) == 40
    sizes = [os.lstat(join(d, f)).st_size for d, _, fs in os.walk(bytes(backup / "vault"))
             for f in fs if stat.S_ISREG(os.lstat(join(d, f)).st_mode)]
    assert sizes and all(size % UNIT == 0 for size in sizes), sizes
    # a key-less copy of a locked view on a plain filesystem is A's own backing layout
    assert_same_tree(source.backing, backup)
    c = world.backing("C")
    with world.mounted_view(c) as locked_c:
        fscsync(*ssh, "-aH", f"{sshd.host}:{backup}/", slash(locked_c))
    assert_round_trip(source, c, world)


# ---- 3. and 4. incremental runs -----------------------------------------------------------


def initial_copy(world: World, source: Source) -> tuple[bytes, bytes]:
    """(backing, locked view) of B after a first full copy of locked A."""
    b = world.backing("B")
    locked_b = world.view(b)
    fscsync("-aH", slash(source.locked), slash(locked_b))
    return b, locked_b


def differing_units(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i // UNIT for i in range(0, len(a), UNIT) if a[i:i + UNIT] != b[i:i + UNIT]]


def test_changed_blocks_only_travel(world: World, source: Source) -> None:
    """Three 4 KiB blocks of big.img written in place through unlocked A (first unit, the
    unit after the first 1 MiB chunk, the partial last unit): exactly those three
    ciphertext units travel, and unlocked B shows the change."""
    b, locked_b = initial_copy(world, source)
    locked_big = locked_twin(source.unlocked, source.locked, BIG)
    before = read_ciphertext(locked_big)
    last = BIG_SIZE // UNIT

    def rewrite(root: bytes) -> None:
        with open(join(root, BIG), "r+b") as f:
            for unit in (0, 256, last):
                f.seek(unit * UNIT)
                f.write(pattern(min(UNIT, BIG_SIZE - unit * UNIT), f"changed {unit}"))
        set_times(join(root, BIG), T_NEW)

    change_both(source, rewrite)
    after = read_ciphertext(locked_big)
    assert differing_units(before, after) == [0, 256, last]  # the stand-in's AES-XTS units
    proc = fscsync("-aH", "--no-whole-file", "--stats", "-i", slash(source.locked),
                   slash(locked_b))
    s = parse_stats(proc.stdout)
    assert s["transferred"] == 1, proc.stdout.decode(errors="replace")
    assert s["literal"] == 3 * UNIT
    assert s["matched"] == padded_size(BIG_SIZE) - 3 * UNIT
    assert [flags[:2] for flags, _ in item_lines(proc.stdout)] == [">f"]
    assert_round_trip(source, b, world)


def test_rewritten_file_is_sent_whole(world: World, source: Source) -> None:
    """big.img rewritten through unlocked A as a new file + rename (a new nonce: all-new
    ciphertext although only one plaintext block differs) is sent whole."""
    b, locked_b = initial_copy(world, source)
    old = parse_encdata(encdata_of(locked_twin(source.unlocked, source.locked, BIG)))
    data = bytearray(read(join(source.orig, BIG)))
    data[5 * UNIT:6 * UNIT] = pattern(UNIT, "new block")
    write(join(source.orig, BIG), bytes(data))
    tmp = join(source.unlocked, VAULT, b".big.img.new")
    write(tmp, bytes(data), 0o644)
    os.rename(tmp, join(source.unlocked, BIG))
    for root in (source.orig, source.unlocked):
        set_times(join(root, BIG), T_NEW)
    same_times(source.orig, source.unlocked)  # the rename touched vault/'s mtime
    new = parse_encdata(encdata_of(locked_twin(source.unlocked, source.locked, BIG)))
    assert new.nonce != old.nonce and new.enc_name == old.enc_name
    proc = fscsync("-aH", "--no-whole-file", "--stats", slash(source.locked), slash(locked_b))
    s = parse_stats(proc.stdout)
    assert (s["transferred"], s["matched"], s["literal"]) == (1, 0, padded_size(BIG_SIZE)), s
    assert_round_trip(source, b, world)


def test_rewrite_keeping_size_and_mtime_is_still_sent(world: World, source: Source) -> None:
    """The same plaintext rewritten as new file + rename with the old mtime restored (what
    `cp -p` or `rsync -a` into the unlocked view do): size and mtime match, but the
    nonce in enc_ctx changed, so the mirror's ciphertext and encdata are stale."""
    b, locked_b = initial_copy(world, source)
    path = join(source.unlocked, VAULT, b"files", b"u4096")
    st = os.lstat(path)
    tmp = join(source.unlocked, VAULT, b"files", b".u4096.new")
    write(tmp, read(path), stat.S_IMODE(st.st_mode))
    os.rename(tmp, path)
    same_times(source.orig, source.unlocked)
    locked = locked_twin(source.unlocked, source.locked, join(VAULT, b"files", b"u4096"))
    assert parse_encdata(encdata_of(locked)).enc_ctx != parse_encdata(
        encdata_of(join(b, os.path.relpath(locked, source.locked)))).enc_ctx
    proc = fscsync("-aH", "--stats", slash(source.locked), slash(locked_b))
    assert parse_stats(proc.stdout)["transferred"] == 1, proc.stdout.decode(errors="replace")
    assert_round_trip(source, b, world)


# ---- 5. --delete after removals and renames --------------------------------------------------


def relpaths(root: bytes) -> dict[bytes, bool]:
    """Every path below root -> whether it is a directory (names only: no file is read)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_ISDIR(os.lstat(path).st_mode)
    return out


def test_delete_after_removals_and_renames(world: World, source: Source) -> None:
    """Removals and renames through unlocked A (a file, a tree, a renamed file and a renamed
    directory, one name of a hard-link pair, a replaced symlink, a plain file) plus a new
    file; `--delete` deletes exactly the entries gone from locked A (each listed once by
    -i) and unlocked B equals the changed original."""
    b, locked_b = initial_copy(world, source)
    before = relpaths(locked_b)

    def change(root: bytes) -> None:
        v = join(root, VAULT)
        os.unlink(join(v, b"files", b"one"))
        shutil.rmtree(join(v, b"deep"))
        os.rename(join(v, b"names", b"caf\xe9"), join(v, b"names", b"caf\xe9-renamed"))
        os.rename(join(v, b"special"), join(v, b"special-moved"))  # holds the FIFO and owner
        os.unlink(join(v, b"links", b"hard-u4097"))                 # the link group dissolves
        os.unlink(join(v, b"links", b"rel"))
        os.symlink(b"../files/u4096", join(v, b"links", b"rel"))
        write(join(v, b"names", b"fresh\xfe"), b"new file\n", 0o600)
        os.unlink(join(root, b"README"))                            # a plain entry too
        set_tree_times(root)  # times depend on the path only: both trees agree

    change_both(source, change)
    proc = fscsync("-aH", "--delete", "-i", slash(source.locked), slash(locked_b))
    deleting = [rest for flags, rest in item_lines(proc.stdout) if flags.startswith("*del")]
    gone = before.keys() - relpaths(source.locked).keys()
    assert len(gone) == 14 and b"README" in gone
    assert sorted(deleting) == sorted(escape(rel) + "/" * before[rel] for rel in gone)
    assert_same_tree(source.backing, b)
    with world.mounted_view(b, KEY) as unlocked_b:
        assert_same_tree(source.orig, unlocked_b, xattrs=False)
        assert_same_tree(source.unlocked, unlocked_b)
        assert os.stat(join(unlocked_b, VAULT, b"files", b"u4097")).st_nlink == 1


# ---- 6. itemized output ---------------------------------------------------------------------


def _names(rest: str, shown: str, is_link: bool) -> bool:
    """Does an itemize line's name part name exactly this entry? Ciphertext names may
    start with a space, so a bare prefix test is ambiguous."""
    base = rest.removesuffix(" (encrypted)")
    if is_link:
        return base.startswith(shown + " -> ")
    return base == shown or base.startswith(shown + " => ")


def test_itemize_marks_encrypted_entries_and_rerun_is_silent(world: World,
                                                              source: Source) -> None:
    """-i: every entry with security.encdata in locked A (files, dirs, symlinks, the hard
    link) is marked "(encrypted)", the plain ones and the FIFO (encrypted name, never
    encdata) are not; a second run prints nothing and exits 0."""
    b = world.backing("B")
    locked_b = world.view(b)
    proc = fscsync("-aHi", slash(source.locked), slash(locked_b))
    lines = item_lines(proc.stdout)
    out = proc.stdout.decode(errors="replace")
    encrypted_count = 0
    for dirpath, dirnames, filenames in os.walk(source.locked):
        for name in dirnames + filenames:
            path = join(dirpath, name)
            rel = os.path.relpath(path, source.locked)
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
            shown = escape(rel) + ("/" if is_dir else "")
            hits = [rest for _, rest in lines if _names(rest, shown, os.path.islink(path))]
            assert len(hits) == 1, f"{shown!r}: {hits}\n{out}"
            encrypted = encdata_of(path) is not None
            encrypted_count += encrypted
            assert hits[0].endswith(" (encrypted)") == encrypted, f"{hits[0]}\n{out}"
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                assert not encrypted
    assert encrypted_count >= 30
    again = fscsync("-aHi", slash(source.locked), slash(locked_b))
    assert (again.returncode, again.stdout, again.stderr) == (0, b"", b"")


# ---- 7. the engine really took the key-less path -------------------------------------------

OPENAT_RE = re.compile(r'openat\((?:AT_FDCWD|\d+)(?:<(?P<dir>(?:\\x[0-9a-f]{2})*)>)?, '
                       r'"(?P<name>(?:\\x[0-9a-f]{2})*)", (?P<flags>[A-Z_|]+)')
"""An openat line of `strace -xx -y` (the call may end on a later `<... resumed>` line)."""


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


CIPHERTEXT_OPEN = {"O_RDONLY", "O_NOCTTY", "O_NONBLOCK", "O_DSYNC", "O_DIRECT"}
"""O_CIPHERTEXT | O_DIRECT as strace shows it (O_NDELAY is O_NONBLOCK)."""


def trace_opens(world: World, args: list[bytes | str], under: bytes
                ) -> tuple[dict[bytes, list[set[str]]], str]:
    """Run fscsync under `strace -e openat`: the flag sets of every open below `under`,
    and the whole trace."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    trace = world.base / f"trace-{len(list(world.base.glob('trace-*')))}"
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["strace", "-f", "-qq", "-xx", "-y", "-e", "trace=openat",
                           "-o", str(trace), sys.executable, "-m", "fscsync", *args],
                          capture_output=True, env=env, timeout=60, check=False)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.decode().strip()}")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = trace.read_text()
    opens: dict[bytes, list[set[str]]] = {}
    for m in map(OPENAT_RE.search, text.splitlines()):
        if m:
            path = join(unhex(m.group("dir") or ""), unhex(m.group("name")))
            if path.startswith(under + b"/"):
                opens.setdefault(path, []).append(set(m.group("flags").split("|")))
    return opens, text


def test_engine_reads_ciphertext_with_o_ciphertext(world: World, source: Source) -> None:
    """A plain open of a locked file fails with ENOKEY; strace of a sync from locked A shows
    every encrypted regular file opened O_RDONLY|O_NOCTTY|O_NONBLOCK|O_DSYNC|O_DIRECT
    (O_CIPHERTEXT: the kernel strips O_NOCTTY before FUSE, strace sees the syscall),
    and no open failing with ENOKEY."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    locked_big = locked_twin(source.unlocked, source.locked, BIG)
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_DIRECT):
        with pytest.raises(OSError) as info:
            os.open(locked_big, flags)
        assert info.value.errno == errno.ENOKEY
    os.close(os.open(locked_big, os.O_RDONLY | O_CIPHERTEXT))

    dest = world.base / "plain-dest"
    opens, text = trace_opens(world, ["-aH", slash(source.locked), slash(dest)], source.locked)
    assert_same_tree(source.backing, dest)
    assert "ENOKEY" not in text, [ln for ln in text.splitlines() if "ENOKEY" in ln]
    assert opens, text[:2000]
    files = {}  # inode -> paths of the encrypted, non-empty regular files of locked A
    for dirpath, _, filenames in os.walk(source.locked):
        for name in filenames:
            path = join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size and encdata_of(path) is not None:
                files.setdefault(st.st_ino, []).append(path)
    assert len(files) == 17
    for paths in files.values():
        flags = [f for p in paths for f in opens.get(p, [])]
        assert flags, f"{paths[0]!r} never opened"
        assert all(f >= CIPHERTEXT_OPEN for f in flags), (paths[0], flags)


# ---- 8. the real interface: encdata answered by name, never listed ---------------------------


def test_faithful_view_lists_no_encdata(source: Source) -> None:
    """The stand-in is no kinder than the real interface: no encrypted entry of locked A
    lists security.encdata, each answers it by name, and every encrypted inode's size
    is a whole number of units."""
    kinds = set()
    for dirpath, dirnames, filenames in os.walk(join(source.locked, VAULT)):
        for name in dirnames + filenames:
            path = join(dirpath, name)
            st = os.lstat(path)
            assert ENCDATA_XATTR not in xattr.list(path, nofollow=True), path
            if stat.S_ISFIFO(st.st_mode):
                continue  # the kernel encrypts no FIFO's contents: name only
            assert xattr.get(path, ENCDATA_XATTR, nofollow=True), path
            assert st.st_size % UNIT == 0, (path, st.st_size)
            kinds.add(stat.S_IFMT(st.st_mode))
    assert kinds == {stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK}


def test_locked_to_locked_with_xattrs(world: World, source: Source) -> None:
    """-X lists every xattr: encdata, which no listing shows, is still asked by name."""
    b = world.backing("B")
    with world.mounted_view(b) as locked_b:
        fscsync("-aHX", slash(source.locked), slash(locked_b))
    assert_round_trip(source, b, world)


def test_encrypted_entries_in_a_plain_directory(world: World, source: Source) -> None:
    """fscrypt lets an encrypted file or symlink move into an unencrypted directory:
    there, with nothing listed and no encrypted parent, fscsync still finds them (a
    locked file's size is whole units; symlinks are always asked) and mirrors them as
    ciphertext with their encdata; the unlocked copy reads the plaintext back."""
    def change(root: bytes) -> None:
        os.rename(join(root, VAULT, b"files", b"mib"), join(root, b"plain", b"moved"))
        os.rename(join(root, VAULT, b"links", b"rel"), join(root, b"plain", b"moved-link"))

    change_both(source, change)
    same_times(source.orig, source.unlocked)
    moved = join(source.locked, b"plain", b"moved")
    assert parse_encdata(encdata_of(moved)).size == MIB_SIZE
    assert ENCDATA_XATTR not in xattr.list(moved)
    b = world.backing("B")
    with world.mounted_view(b) as locked_b:
        fscsync("-aH", slash(source.locked), slash(locked_b))
    for name in (b"moved", b"moved-link"):
        stored = parse_encdata(xattr.get(join(b, b"plain", name), ENCDATA_XATTR, nofollow=True))
        assert stored == parse_encdata(encdata_of(join(source.locked, b"plain", name)))
    assert_round_trip(source, b, world)


def test_symlink_encdata_size_is_its_on_disk_length(source: Source) -> None:
    """A symlink's encdata size is i_size, 2 + the ciphertext length, and travels as is."""
    link = locked_twin(source.unlocked, source.locked, join(VAULT, b"links", b"abs"))
    enc = parse_encdata(encdata_of(link))
    assert enc.size == 2 + len(unescape_name(os.readlink(link)))
    assert os.lstat(link).st_size == UNIT


def test_virtual_encdata_is_read_with_o_ciphertext_o_direct_both_ends(
        world: World, source: Source) -> None:
    """An incremental run between locked views: the sender's reads of A and the
    receiver's basis reads of B both open O_CIPHERTEXT | O_DIRECT."""
    b, locked_b = initial_copy(world, source)
    change_both(source, lambda root: write_at(join(root, BIG), UNIT, b"x" * 10))
    same_times(source.orig, source.unlocked)
    opens, _ = trace_opens(world, ["-aH", "--no-whole-file", slash(source.locked),
                                   slash(locked_b)], locked_b)
    big_b = join(locked_b, os.path.relpath(locked_twin(source.unlocked, source.locked, BIG),
                                           source.locked))
    basis = [f for f in opens.get(big_b, []) if "O_RDONLY" in f]
    assert basis, sorted(opens)
    assert all(f >= CIPHERTEXT_OPEN for f in basis), basis
    assert_round_trip(source, b, world)


def write_at(path: bytes, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_probes_leave_no_trace(world: World, source: Source, tmp_path: Path) -> None:
    """The destination is probed only when an encrypted entry must be written, never
    under --dry-run or in a no-change run, and on a filesystem with O_TMPFILE (here the
    plain backup directory) through an unnamed inode: no probe entry is ever created."""
    backup = tmp_path / "backup"
    created = trace_creates(world, ["-aH", "-v", slash(source.locked), slash(backup)], backup)
    assert created and not [n for n in created if b"probe" in os.path.basename(n)], created
    for args in (["-aH", "-n"], ["-aH"]):
        created = trace_creates(world, [*args, slash(source.locked), slash(backup)], backup,
                                tmpfile=True)
        assert created == [], (args, created)


def trace_creates(world: World, args: list, under: Path, tmpfile: bool = False) -> list[bytes]:
    """Names fscsync creates below `under` (O_CREAT opens, mknod, mkdir), plus the
    O_TMPFILE opens when asked."""
    opens, _ = trace_opens(world, args, os.fsencode(under))
    return [path for path, flags in opens.items()
            if any("O_CREAT" in f or (tmpfile and "O_TMPFILE" in f) for f in flags)]


def test_v1_context_fails_alone_on_the_encdata_interface(world: World, tmp_path: Path) -> None:
    """A v1-encrypted entry of a plain backup cannot be restored key-less (the interface
    installs only 40-byte v2 contexts): it fails alone, naming why, exit 23; its
    neighbours arrive."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "old-v1").write_bytes(os.urandom(UNIT))
    v1_ctx = bytes([1, 1, 4, 0]) + bytes(8) + os.urandom(16)
    xattr.set(bytes(src / "old-v1"), ENCDATA_XATTR, format_encdata(EncData(100, v1_ctx, b"")))
    (src / "plain").write_bytes(b"plain\n")
    b = world.backing("B")
    with world.mounted_view(b) as locked_b:
        proc = fscsync("-a", slash(src), slash(locked_b), check=23)
        assert read(join(locked_b, b"plain")) == b"plain\n"
        assert not os.path.lexists(join(locked_b, b"old-v1"))
    err = proc.stderr.decode(errors="replace")
    (line,) = [line for line in err.splitlines() if "old-v1" in line]
    assert "v1" in line and "40-byte v2" in line and "key-less" in line, err


def test_hard_link_leader_reelected_across_sources_reads_ciphertext(
        source: Source, tmp_path: Path) -> None:
    """-aHc with two sources given in reverse order: the file list is merged in rsync's
    order, so the hard-link group's leader changes to the member of the second source;
    its -c checksum is then taken anew, and must be taken of the ciphertext (a locked
    file opened plainly answers ENOKEY)."""
    dirs = [locked_twin(source.unlocked, source.locked, join(VAULT, name))
            for name in (b"files", b"links")]
    first, second = sorted(dirs, key=os.path.basename, reverse=True)
    dest = os.fsencode(tmp_path / "backup")
    for _ in range(2):
        proc = fscsync("-aHc", "-i", first, second, slash(dest))
    assert proc.stdout == b"", proc.stdout  # the second run: nothing differs
    vault = os.path.dirname(dirs[0])
    orig, other = (locked_twin(source.unlocked, source.locked, join(VAULT, rel))
                   for rel in (b"files/u4097", b"links/hard-u4097"))
    leader, member = (join(dest, os.path.relpath(p, vault)) for p in (orig, other))
    assert os.lstat(leader).st_ino == os.lstat(member).st_ino
    assert read(leader) == read_ciphertext(orig)

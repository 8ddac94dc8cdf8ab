"""Encrypted trees without keys (issue 5), in the backup layout on a plain filesystem.

Encrypted entries here are ciphertext files padded to 4096 plus `security.encdata`
stored as an ordinary xattr (see support/enctree.py), which is exactly what a
mirror on a stock kernel holds and what fscsync must reproduce byte for byte:
ciphertext, encdata text, modes, times, symlink targets and hard links, locally
and over ssh, on full and incremental runs. Building such trees needs root.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import xattr
from support import REPO, run_fscsync
from support.enctree import (
    ENCDATA,
    FLAG_IV_INO_LBLK_32,
    FLAG_IV_INO_LBLK_64,
    FLAG_PAD_32,
    USER_ENCDATA,
    EncTree,
    build_standard,
    encdata_text,
    make_ctx,
    read_encdata,
)
from support.stats import parse_stats
from support.treecmp import assert_same_tree, diff, show, snapshot

from fscsync.errors import escape
from fscsync.fs.cipher import UNIT, padded_size

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="encrypted trees store security.encdata, which needs root")

def sync(src: Path | bytes, dst: Path | bytes, *opts: str, check: bool | int = True,
         ) -> tuple[subprocess.CompletedProcess[bytes], dict[str, int]]:
    proc = run_fscsync(*opts, "--stats", os.fsencode(src) + b"/", os.fsencode(dst) + b"/",
                       check=check)
    return proc, parse_stats(proc.stdout)


def encrypted_entries(root: Path | bytes, name: bytes = ENCDATA) -> dict[bytes, bytes]:
    """relative path -> encdata text of every entry that has it."""
    root_b = os.fsencode(root)
    out = {}
    for rel in snapshot(root_b, xattrs=False):
        path = root_b if rel == b"." else os.path.join(root_b, rel)
        text = read_encdata(path, name)
        if text is not None:
            out[rel] = text
    return out


def without(problems: list[str], *paths: bytes) -> list[str]:
    """Drop tree differences about the given paths."""
    shown = [show(p) for p in paths]
    return [p for p in problems if not any(p.startswith(s + ":") for s in shown)]


@pytest.fixture
def tree(tmp_path: Path) -> EncTree:
    return build_standard(tmp_path / "src")


# ---- full copies -------------------------------------------------------------------


def test_local_copy_is_exact(tree: EncTree, tmp_path: Path) -> None:
    """-aHX: ciphertext, encdata text, modes, times, targets, links all exact;
    -i marks every encrypted entry; --stats counts encrypted files and bytes."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    proc, s = sync(src, dst, "-aHX", "-i")
    assert_same_tree(src, dst)

    enc = encrypted_entries(src)
    assert encrypted_entries(dst) == enc
    assert tree.paths["subdir"] in enc and b"enc" in enc, "directories carry encdata"
    for key in ("symlink", "fifo"):
        assert tree.paths[key] in enc
    a, b = (dst / os.fsdecode(tree.paths[k]) for k in ("hardlink-a", "hardlink-b"))
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
    assert os.readlink(os.path.join(bytes(dst), tree.paths["symlink"])) == os.readlink(
        tree.path(tree.paths["symlink"]))
    for rel, text in enc.items():
        st = os.lstat(os.path.join(bytes(dst), rel))
        if stat.S_ISREG(st.st_mode):
            size = int(re.search(rb"size: (\d+)", text).group(1))
            assert st.st_size == padded_size(size), "ciphertext stays padded to the unit"

    # -i: encrypted entries marked, plain ones not
    lines = proc.stdout.decode(errors="replace").splitlines()
    items = {}
    for line in lines:
        m = re.match(r"^([<>ch.][fdLDS][.+a-z]{9}) (.*)$", line)
        if m:
            items[m.group(2)] = m.group(1)
    for rel in snapshot(src, xattrs=False):
        if rel == b".":
            continue
        name = escape(rel) + ("/" if os.path.isdir(os.path.join(tree.root, rel))
                              and not os.path.islink(os.path.join(tree.root, rel)) else "")
        hits = [text for text in items if text == name or text.startswith(name + " ")]
        assert hits, f"no itemize line for {name!r}:\n" + "\n".join(lines)
        marked = [text.endswith(" (encrypted)") for text in hits]
        assert marked == [rel in enc] * len(hits), f"{name!r}: {hits}"

    files = [rel for rel, text in enc.items()
             if stat.S_ISREG(os.lstat(os.path.join(tree.root, rel)).st_mode)]
    inodes = {os.lstat(os.path.join(tree.root, rel)).st_ino: rel for rel in files}
    assert s["encrypted"] == len(files)
    assert s["encrypted_bytes"] == sum(
        os.lstat(os.path.join(tree.root, rel)).st_size for rel in inodes.values())


def test_archive_without_xattrs_still_carries_encdata(tree: EncTree, tmp_path: Path) -> None:
    """-a alone: encdata is part of an encrypted entry, not an optional xattr."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    xattr.set(tree.path(tree.paths["plain-file"]), b"user.other", b"not copied without -X")
    sync(src, dst, "-a")
    assert encrypted_entries(dst) == encrypted_entries(src)
    problems = diff(snapshot(src), snapshot(dst), ignore=["link"])
    assert problems == [f"{tree.paths['plain-file'].decode()}: xattrs differ: user.other"]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_over_ssh(sshd, tree: EncTree, tmp_path: Path, direction: str) -> None:
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    ssh = ("-e", sshd.rsh, "--remote-fscsync", sshd.remote_fscsync)

    def run() -> dict[str, int]:
        if direction == "push":
            args = (f"{src}/", f"{sshd.host}:{dst}/")
        else:
            args = (f"{sshd.host}:{src}/", f"{dst}/")
        proc = run_fscsync("-aHX", "--stats", *ssh, *args, check=True)
        return parse_stats(proc.stdout)

    run()
    assert_same_tree(src, dst)
    tree.rewrite_blocks(tree.paths["file-3145733"], [1, 400, 768])
    s = run()
    assert_same_tree(src, dst)
    assert s["literal"] == 3 * 4096
    assert s["transferred"] == 1


# ---- incremental runs ----------------------------------------------------------------


def test_incremental_sends_changed_blocks_only(tree: EncTree, tmp_path: Path) -> None:
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    _, s = sync(src, dst, "-aHX")
    assert (s["transferred"], s["literal"], s["matched"]) == (0, 0, 0), "nothing changed"

    big, small = tree.paths["file-3145733"], tree.paths["file-10000"]
    tree.rewrite_blocks(big, [0, 256, 768])     # first block, a chunk boundary, the last
    tree.rewrite_blocks(small, [2])             # the (padded) last block
    tree.rewrite_blocks(tree.paths["hardlink-a"], [1])
    _, s = sync(src, dst, "-aHX")
    assert_same_tree(src, dst)                  # hard links are linked again
    assert s["transferred"] == 3
    assert s["literal"] == 5 * 4096
    assert s["matched"] == padded_size(3145733) + padded_size(10000) + padded_size(9000) - 5 * 4096
    assert s["sent"] + s["received"] < 5 * 4096 + 16384, s


def test_rewritten_file_is_sent_whole(tree: EncTree, tmp_path: Path) -> None:
    """A new nonce means all-new ciphertext: no delta against the old copy."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    big = tree.paths["file-3145733"]
    old = tree.encdata(big)
    tree.rewrite_anew(big)
    assert tree.encdata(big).nonce != old.nonce
    _, s = sync(src, dst, "-aHX", "--no-whole-file")
    assert_same_tree(src, dst)
    assert (s["transferred"], s["matched"], s["literal"]) == (1, 0, padded_size(3145733))


def test_quick_check_uses_the_cleartext_size(tree: EncTree, tmp_path: Path) -> None:
    """Same ciphertext length (8192), same mtime, same context: only the cleartext size
    in encdata differs (4097 -> 5000). The quick check must see it."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    rel = tree.paths["file-4097"]
    path = tree.path(rel)
    enc = tree.encdata(rel)
    st = os.lstat(path)
    xattr.set(path, ENCDATA, encdata_text(5000, enc.enc_ctx, enc.enc_name), nofollow=True)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc, s = sync(src, dst, "-aHX", "-i")
    assert s["transferred"] == 1, proc.stdout.decode(errors="replace")
    line = [x for x in proc.stdout.decode(errors="replace").splitlines()
            if x.endswith(escape(rel) + " (encrypted)")]
    assert line and line[0][:4] == ">f.s", line
    assert s["literal"] == 0, "same context, same ciphertext: everything matches"
    assert_same_tree(src, dst)


def test_verification_failure_keeps_the_encrypted_copy(tree: EncTree, tmp_path: Path
                                                        ) -> None:
    """Literals corrupted on the receiver (FSCSYNC_FAULT_CORRUPT_LITERALS): the file
    fails verification twice, exit 23; the old copy keeps inode, ciphertext, encdata."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    rel = tree.paths["file-3145733"]
    tree.rewrite_blocks(rel, [3, 500])
    old = dst / os.fsdecode(rel)
    before, data, enc = os.lstat(old), old.read_bytes(), read_encdata(old)
    proc = run_fscsync("-aHX", "--no-whole-file", f"{src}/", f"{dst}/", check=23,
                       env={"FSCSYNC_FAULT_CORRUPT_LITERALS": "1"})
    assert b"verification" in proc.stderr
    after = os.lstat(old)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert old.read_bytes() == data and read_encdata(old) == enc
    assert not list(dst.rglob("*~fscsync~*"))


def test_plain_and_encrypted_swap(tree: EncTree, tmp_path: Path) -> None:
    """A plain file that became encrypted and an encrypted one that became plain."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    plain, enc = tree.paths["plain-file"], tree.paths["file-4096"]
    os.unlink(tree.path(plain))
    tree.file(plain, 6000)
    os.unlink(tree.path(enc))
    tree.file(enc, 4096, encrypted=False)
    _, s = sync(src, dst, "-aHX", "--no-whole-file")
    assert_same_tree(src, dst)
    assert s["matched"] == 0, "no delta across encrypted and plain"


def kind_path(kind: str) -> str:
    return {"symlink": "d/l", "fifo": "d/p", "dir": "d"}[kind]


def _recreate(t: EncTree, kind: str) -> None:
    """Delete and recreate one entry of the same kind and name: a new nonce."""
    rel = os.fsencode(kind_path(kind))
    path = t.path(rel)
    if kind == "symlink":
        target = os.readlink(path)
        os.unlink(path)
        t.symlink(rel, target)
    elif kind == "fifo":
        os.unlink(path)
        t.fifo(rel)
    else:
        os.rename(path, t.path(b"old-d"))
        t.dir(rel)
        for name in os.listdir(t.path(b"old-d")):
            os.rename(os.path.join(t.path(b"old-d"), name), os.path.join(path, name))
        os.rmdir(t.path(b"old-d"))
    t.finish(base_ns=1_700_000_000_000_000_000)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_entry_recreated_with_new_context(tmp_path: Path, kind: str) -> None:
    """An entry deleted and made again under the same name has a new nonce (for a
    directory that also means its children's names are encrypted with another key):
    the mirror must follow, not keep the old context nor stop with an error."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    t = EncTree(os.fsencode(src), seed=kind)
    t.dir(b"d")
    t.file(b"d/f", 100)
    t.symlink(b"d/l", b"\xfftarget")
    t.fifo(b"d/p")
    t.finish()
    sync(src, dst, "-aHX")
    before = read_encdata(src / kind_path(kind))
    _recreate(t, kind)
    assert read_encdata(src / kind_path(kind)) != before
    proc, _ = sync(src, dst, "-aHX", "--delete", check=None)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert_same_tree(src, dst)


def test_receiver_order_for_encrypted_entries(tmp_path: Path) -> None:
    """Traced on the receiver: ciphertext -> owner -> mode -> other xattrs ->
    security.encdata -> times -> rename into place; a directory gets its encdata after
    its entries exist, then its times."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    t = EncTree(os.fsencode(src), seed="order")
    t.dir(b"d", 0o750)
    f = t.file(b"d/f", 3 * 4096 + 5, 0o640)
    xattr.set(f, b"user.note", b"v")
    xattr.set(f, b"trusted.note", b"w")
    os.chown(f, 1234, 2345)
    os.chmod(f, 0o640)
    t.file(b"d/g", 10)
    t.finish()
    log = tmp_path / "trace"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [strace, "-f", "-y", "-qq", "-s", "256", "-o", str(log), "-e",
         "trace=pwrite64,write,copy_file_range,ftruncate,fchown,fchownat,fchmod,fchmodat,"
         "fsetxattr,setxattr,lsetxattr,utimensat,renameat,renameat2,rename",
         sys.executable, "-m", "fscsync", "-aHX", f"{src}/", f"{dst}/"],
        capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert_same_tree(src, dst)

    events = []   # (syscall, line) in trace order, resumed halves dropped
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+\s+(\w+)\(", line)
        if m:
            events.append((m.group(1), line))
    ddir = f"{dst}/d"
    tmp = re.search(r"/d/(\.f\.~fscsync~\w+)>", "\n".join(x for _, x in events))
    assert tmp, "no temp file for d/f in the trace"
    tname = tmp.group(1)

    def first(pred) -> int:
        hits = [i for i, (call, line) in enumerate(events) if pred(call, line)]
        assert hits, "event not found"
        return hits[0]

    def last(pred) -> int:
        hits = [i for i, (call, line) in enumerate(events) if pred(call, line)]
        assert hits, "event not found"
        return hits[-1]

    on_tmp = f"{ddir}/{tname}>"
    data = last(lambda c, x: c in ("pwrite64", "write", "copy_file_range", "ftruncate")
                and on_tmp in x)
    chown = first(lambda c, x: c.startswith("fchown") and tname in x)
    chmod = first(lambda c, x: c.startswith("fchmod") and tname in x)
    other = last(lambda c, x: "setxattr" in c and tname in x and '"security.encdata"' not in x)
    enc = first(lambda c, x: "setxattr" in c and tname in x and '"security.encdata"' in x)
    times = first(lambda c, x: c == "utimensat" and tname in x)
    rename = first(lambda c, x: c.startswith("rename") and f'"{tname}"' in x)
    order = [("ciphertext", data), ("owner", chown), ("mode", chmod),
             ("other xattrs", other), ("encdata", enc), ("times", times), ("rename", rename)]
    assert [n for n, _ in sorted(order, key=lambda p: p[1])] == [n for n, _ in order], order

    on_dir = f"{ddir}>"
    children = last(lambda c, x: c.startswith("rename") and on_dir in x)
    dir_enc = first(lambda c, x: "setxattr" in c and on_dir in x and "security.encdata" in x)
    dir_times = last(lambda c, x: c == "utimensat" and on_dir in x and '"' not in x)
    assert children < dir_enc < dir_times, (children, dir_enc, dir_times)


# ---- --encdata-xattr -------------------------------------------------------------------


def _user_xattr_tree(root: Path, name: bytes) -> EncTree:
    """Files, directories and hard links only: user.* xattrs cannot go on symlinks or
    FIFOs, so a user.* backup layout has none of those encrypted."""
    t = EncTree(os.fsencode(root), seed="user", xattr_name=name)
    t.dir(b"plain", encrypted=False)
    t.file(b"plain/p", 3000, encrypted=False)
    t.dir(b"e")
    for i, size in enumerate((0, 5, 4096, 70000, (1 << 20) + 9)):
        t.file(b"e/f%d" % i, size)
    t.dir(b"e/\xe9sub=@")
    t.file(b"e/\xe9sub=@/g", 12345, 0o600)
    t.hardlink(b"e/f3", b"e/\xe9sub=@/f3-link")
    t.finish()
    return t


def test_encdata_xattr_round_trip(tmp_path: Path) -> None:
    """security.encdata tree -> backup holding user.fscsync.encdata (a server where
    security.* is not allowed) -> restored tree with security.encdata, equal to the
    original. Both runs name the backup's xattr with the same option; both treat the
    entries as encrypted (marked by -i, counted by --stats), and so does an
    incremental backup run."""
    orig = tmp_path / "orig"
    t = _user_xattr_tree(orig, ENCDATA)
    backup, restored = tmp_path / "backup", tmp_path / "restored"
    opt = ("--encdata-xattr", USER_ENCDATA.decode())
    want = encrypted_entries(orig)
    assert len(want) == 9

    proc, s = sync(orig, backup, "-aH", "-i", *opt)
    assert encrypted_entries(backup, USER_ENCDATA) == want, (
        "the backup must hold the encdata under user.fscsync.encdata")
    assert encrypted_entries(backup, ENCDATA) == {}, "and not as security.encdata"
    assert s["encrypted"] == 7
    out = proc.stdout.decode(errors="replace")
    assert re.search(r"^>f\+{9} e/f4 \(encrypted\)$", out, re.M), out

    t.rewrite_blocks(b"e/f4", [100])
    _, s = sync(orig, backup, "-aH", *opt)
    assert (s["literal"], s["transferred"]) == (4096, 1)
    assert encrypted_entries(backup, USER_ENCDATA) == encrypted_entries(orig)

    proc, s = sync(backup, restored, "-aH", "-i", *opt)
    assert encrypted_entries(restored, USER_ENCDATA) == {}
    assert_same_tree(orig, restored)
    assert s["encrypted"] == 7
    out = proc.stdout.decode(errors="replace")
    assert re.search(r"^>f\+{9} e/f4 \(encrypted\)$", out, re.M), out


# ---- failures, one file at a time ---------------------------------------------------

def _b64u(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_V1_CTX = bytes([1, 1, 4, 0, 0, 0, 0, 0]) + bytes(32)
_V2_CTX = make_ctx(bytes(16), bytes(16))
MALFORMED = {
    b"enc/bad-version": b"{ encoding: base64url, size: 10, enc_ctx: %s, enc_name:  }"
                        % _b64u(_V1_CTX),
    b"enc/bad-padding": b"{ encoding: base64url, size: 10, enc_ctx: %s==, enc_name:  }"
                        % _b64u(_V2_CTX),
    b"enc/garbage": b"\xff\x00not encdata at all",
    b"enc/short-ctx": b"{ encoding: base64url, size: 10, enc_ctx: AgEE, enc_name:  }",
}


def test_malformed_encdata_fails_only_that_file(tree: EncTree, tmp_path: Path) -> None:
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    # an existing copy whose source goes bad must stay as it was
    keep = tree.paths["file-4097"]
    before = os.lstat(dst / os.fsdecode(keep))
    before_enc = read_encdata(dst / os.fsdecode(keep))
    xattr.set(tree.path(keep), ENCDATA, b"{ encoding: base64url, size: -1, enc_ctx: , "
                                        b"enc_name:  }", nofollow=True)
    tree.rewrite_blocks(keep, [0])
    for rel, text in MALFORMED.items():
        tree.file(rel, 10)
        xattr.set(tree.path(rel), ENCDATA, text, nofollow=True)
    tree.file(b"enc/fine", 20000)
    bad_link = b"enc/bad-link"
    os.symlink(b"\xfftarget", tree.path(bad_link))
    xattr.set(tree.path(bad_link), ENCDATA, MALFORMED[b"enc/bad-version"], nofollow=True)

    proc, _ = sync(src, dst, "-aHX", check=23)
    err = proc.stderr.decode(errors="replace")
    for rel in (*MALFORMED, bad_link, keep):
        assert escape(rel) in err, f"no error names {rel!r}:\n{err}"
        assert not os.path.lexists(dst / os.fsdecode(rel)) or rel == keep
    after = os.lstat(dst / os.fsdecode(keep))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert read_encdata(dst / os.fsdecode(keep)) == before_enc
    assert "malformed" in err
    problems = without(diff(snapshot(src), snapshot(dst)), *MALFORMED, bad_link, keep)
    assert problems == [], "everything else is copied:\n" + "\n".join(problems)


def _ino_tree(root: Path) -> tuple[EncTree, dict[bytes, int]]:
    t = EncTree(os.fsencode(root), seed="ino")
    keys = {b"\x64" * 16: FLAG_IV_INO_LBLK_64, b"\x32" * 16: FLAG_IV_INO_LBLK_32,
            b"\x65" * 16: FLAG_IV_INO_LBLK_64 | FLAG_PAD_32}
    k64, k32, k64b = keys
    t.dir(b"ino64", key_id=k64, flags=keys[k64])
    for i in range(3):
        t.file(b"ino64/f%d" % i, 5000 * i, key_id=k64, flags=keys[k64])
    t.dir(b"ino32", key_id=k32, flags=keys[k32])
    t.file(b"ino32/f", 100, key_id=k32, flags=keys[k32])
    t.file(b"ino32/g", 200, key_id=k32, flags=keys[k32])
    t.dir(b"normal")
    t.file(b"normal/f", 300)
    t.file(b"normal/other-key", 300, key_id=k64b, flags=keys[k64b])
    t.file(b"plain", 10, encrypted=False)
    t.finish()
    return t, keys


def test_ino_based_policies_warn_once_each(tmp_path: Path) -> None:
    t, keys = _ino_tree(tmp_path / "src")
    proc, _ = sync(tmp_path / "src", tmp_path / "dst", "-aHX")
    assert_same_tree(tmp_path / "src", tmp_path / "dst")
    err = proc.stderr.decode(errors="replace").splitlines()
    for key in keys:
        hits = [line for line in err if key.hex() in line]
        assert len(hits) == 1, f"key {key.hex()}: {hits}\n" + "\n".join(err)
        assert "warning" in hits[0].lower()
    assert t.key_id.hex() not in "\n".join(err), "no warning for an ordinary policy"
    assert len([line for line in err if "warning" in line.lower()]) == len(keys)


def test_refuse_ino_policies(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _ino_tree(src)
    proc, _ = sync(src, dst, "-aHX", "--refuse-ino-policies", check=23)
    err = proc.stderr.decode(errors="replace")
    refused = (b"ino64", b"ino32", b"normal/other-key")
    for rel in refused:
        (line,) = [line for line in err.splitlines() if f'"{escape(rel)}"' in line]
        assert re.search(r"IV_INO_LBLK_(64|32) \(flags 0x[0-9a-f]{2}\)", line), line
        assert "inode numbers" in line and "cannot be decrypted" in line, line
        assert not (dst / os.fsdecode(rel)).exists()
    for rel in (b"normal/f", b"plain"):
        assert (dst / os.fsdecode(rel)).read_bytes() == (src / os.fsdecode(rel)).read_bytes()
    assert read_encdata(dst / "normal/f") == read_encdata(src / "normal/f")


V1_CTX = bytes([1, 1, 4, 0]) + bytes(range(0x50, 0x58)) + bytes(range(16))
"""A v1 context: version, modes, flags, an 8-byte key descriptor, the nonce."""


def v1_tree(root: Path) -> EncTree:
    """A plain-backup tree with one v1-encrypted file beside v2 and plain files."""
    t = EncTree(os.fsencode(root), seed="v1")
    t.dir(b"enc")
    t.file(b"enc/v2", 5000)
    t.file(b"plain", 10, encrypted=False)
    v1 = t.path(b"old-v1")
    with open(v1, "wb") as f:
        f.write(os.urandom(UNIT))
    xattr.set(v1, ENCDATA, encdata_text(300, V1_CTX, b"r" * 16))
    t.finish()
    return t


def test_v1_context_is_stored_on_a_plain_backup_with_a_warning(tmp_path: Path) -> None:
    """The encdata interface installs only v2 contexts; on a plain backup a v1 entry is
    stored as it is (it is ordinary data there), with a warning that says so."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    v1_tree(src)
    proc, _ = sync(src, dst, "-aHX")
    err = proc.stderr.decode(errors="replace")
    (line,) = [line for line in err.splitlines() if "v1" in line]
    assert "warning" in line.lower() and "plain backup" in line and "key-less" in line, err
    assert read_encdata(dst / "old-v1") == read_encdata(src / "old-v1")
    assert_same_tree(src, dst)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A scratch dir every user can traverse (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="fscsync-nobody-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_receiver_without_root_fails_encrypted_files_only(world_tmp: Path,
                                                          tmp_path: Path) -> None:
    """The receiving side runs as nobody (a backup account without root): it may not
    write security.encdata. Each encrypted entry fails with a clear reason, exit 23,
    plain files are copied, and no encrypted file lands as bare ciphertext.

    The receiver is started through --rsh with a wrapper that drops to nobody (the
    client stays root and reads the source); running the whole client as nobody does
    not work here because the venv's interpreter cannot be exec'd again as nobody."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    src, dst = tmp_path / "src", world_tmp / "dst"
    t = EncTree(os.fsencode(src), seed="nobody")
    t.file(b"plain-a", 5000, encrypted=False)
    t.dir(b"plain-dir", encrypted=False)
    t.file(b"plain-dir/b", 9000, encrypted=False)
    t.dir(b"enc")
    t.file(b"enc/x", 100)
    t.file(b"enc/y", 70000)
    t.file(b"top-enc", 1)
    t.finish()
    dst.mkdir()
    os.chown(dst, 65534, 65534)
    probe = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import xattr, fscsync"],
                           capture_output=True, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode != 0:
        pytest.skip("this interpreter cannot run as nobody (installed under a private "
                    "directory)")
    rsh = world_tmp / "as-nobody"
    rsh.write_text("#!/bin/sh\n# called as: as-nobody HOST PROGRAM --server\nshift 2\n"
                   f"exec {setpriv} --reuid=65534 --regid=65534 --clear-groups "
                   f'{sys.executable} -m fscsync "$@"\n')
    rsh.chmod(0o755)
    proc = run_fscsync("-rlpt", "-v", "-e", str(rsh), f"{src}/", f"localhost:{dst}/")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 23, err
    assert re.search(r"^destination stores encdata: no", proc.stdout.decode(errors="replace"),
                     re.M), proc.stdout
    for rel in ("enc", "top-enc"):
        lines = [line for line in err.splitlines() if rel in line]
        assert lines, f"no error for {rel}:\n{err}"
        assert re.search(r"root|CAP_SYS_ADMIN|EPERM|not permitted", " ".join(lines)), lines
        assert not (dst / rel).exists()
    assert "Traceback" not in err and "internal error" not in err
    for rel in ("plain-a", "plain-dir/b"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
        assert (dst / rel).stat().st_uid == 65534
    assert not list(dst.rglob("*~fscsync~*"))


def _strace_run(args: list[str], *strace_opts: str) -> subprocess.CompletedProcess[bytes]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([strace, "-f", "-qq", "-o", "/dev/null", *strace_opts,
                           sys.executable, "-m", "fscsync", *args],
                          capture_output=True, env=env, timeout=120)


def test_no_keyless_access_fails_that_file(tree: EncTree, tmp_path: Path) -> None:
    """A stock kernel answers ENOKEY even with O_CIPHERTEXT (injected here for one
    file with strace): that file fails clearly, exit 23, its previous copy stays."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    rel = tree.paths["file-4097"]
    tree.rewrite_blocks(rel, [1])
    tree.rewrite_blocks(tree.paths["file-1"], [0])
    before = os.lstat(dst / os.fsdecode(rel))
    old = (dst / os.fsdecode(rel)).read_bytes()
    proc = _strace_run(["-aHX", f"{src}/", f"{dst}/"], "-P", os.fsdecode(tree.path(rel)),
                       "-e", "trace=openat,open", "-e", "inject=openat,open:error=ENOKEY")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 23, err
    lines = [line for line in err.splitlines() if escape(rel) in line]
    assert lines and re.search(r"key", lines[0], re.I), err
    after = os.lstat(dst / os.fsdecode(rel))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (dst / os.fsdecode(rel)).read_bytes() == old
    problems = without(diff(snapshot(src), snapshot(dst)), rel)
    assert problems == [], "everything else is copied:\n" + "\n".join(problems)


def test_destination_without_xattrs(tree: EncTree, tmp_path: Path) -> None:
    """Every setxattr on the receiver fails with EOPNOTSUPP (injected with strace): the
    probe says so with -v, each encrypted entry fails clearly (exit 23), plain files are
    copied, and no encrypted file lands as bare ciphertext without its encdata."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    proc = _strace_run(["-a", "-v", f"{src}/", f"{dst}/"],
                       "-e", "trace=fsetxattr,setxattr,lsetxattr",
                       "-e", "inject=fsetxattr,setxattr,lsetxattr:error=EOPNOTSUPP")
    err = proc.stderr.decode(errors="replace")
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 23, err
    assert re.search(r"^destination stores encdata: no", out, re.M), out
    enc = encrypted_entries(src)
    for rel in enc:
        assert not os.path.lexists(os.path.join(bytes(dst), rel)), rel
    assert re.search(r"xattr|not supported", err), err
    for rel in (b"plain/readme.txt", b"plain/sub/data.bin"):
        assert (dst / os.fsdecode(rel)).read_bytes() == (src / os.fsdecode(rel)).read_bytes()
    assert "Traceback" not in err and "internal error" not in err


def test_probe_findings_are_shown_with_v(tree: EncTree, tmp_path: Path) -> None:
    """The pre-flight probe of each side: key-less reads at the source, encdata, xattrs,
    owners and device nodes at the destination, shown with -v."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    proc, _ = sync(src, dst, "-aHX", "-v")
    out = proc.stdout.decode(errors="replace")
    for what in ("encdata", "xattrs", "owners"):
        assert re.search(rf"^destination .*{what}: yes", out, re.M), (what, out)
    assert re.search(r"^destination stores encdata: yes \(as an ordinary xattr", out, re.M), out
    assert re.search(r"^source .*key-?less.*: yes", out, re.M | re.I), out


def test_checksum_compares_ciphertext(tree: EncTree, tmp_path: Path) -> None:
    """-c on encrypted files: a damaged block in the copy (same size, mtime, encdata)
    is found by the ciphertext checksum and repaired with one block of literal data."""
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    sync(src, dst, "-aHX")
    rel = os.fsdecode(tree.paths["file-3145733"])
    st = os.lstat(dst / rel)
    with open(dst / rel, "r+b") as f:
        f.seek(700 * 4096)
        f.write(bytes(4096))
    os.utime(dst / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, s = sync(src, dst, "-aHX")
    assert s["transferred"] == 0
    _, s = sync(src, dst, "-aHX", "-c", "--no-whole-file")
    assert (s["transferred"], s["literal"]) == (1, 4096)
    assert_same_tree(src, dst)


# ---- how encrypted files are opened ----------------------------------------------------


def _openat_flags(trace: str, path: str) -> list[set[str]]:
    """Flag sets of every openat of exactly `path` (as passed: full path for the
    sender, a bare name relative to a directory fd for the receiver)."""
    return [set(m.group(2).split("|"))
            for m in re.finditer(r'openat\([^,]+, "([^"]*)", ([A-Z_|]+)', trace)
            if m.group(1) == path]


def test_stored_ciphertext_is_read_as_ordinary_data(tree: EncTree, tmp_path: Path) -> None:
    """On a plain backup the ciphertext is ordinary data and its encdata an ordinary
    xattr: the sender reads it buffered, without O_CIPHERTEXT or O_DIRECT, and so does
    the receiver reading its old copy as the basis of an incremental run. (The encdata
    interface's O_CIPHERTEXT | O_DIRECT reads are checked on the faithful test
    filesystem in test_e2e_testfs.py.)"""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    src, dst = Path(os.fsdecode(tree.root)), tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    special = {"O_NOCTTY", "O_NONBLOCK", "O_DSYNC", "O_DIRECT"}
    big = os.fsdecode(tree.paths["file-3145733"]).rsplit("/", 1)[1]

    def traced(log: Path) -> str:
        proc = subprocess.run([strace, "-f", "-qq", "-s", "4096", "-e", "trace=openat",
                               "-o", str(log), sys.executable, "-m", "fscsync", "-aHX",
                               "--no-whole-file", f"{src}/", f"{dst}/"],
                              capture_output=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return log.read_text(errors="replace")

    trace = traced(tmp_path / "first.trace")
    opens = _openat_flags(trace, f"{src}/enc/{big}")
    assert opens, "the sender never opened the encrypted file"
    for flags in opens:
        assert not flags & special, f"opened with {sorted(flags)}"
        assert "O_RDONLY" in flags
    plain = _openat_flags(trace, f"{src}/plain/readme.txt")
    assert plain and all(not flags & special for flags in plain)

    tree.rewrite_blocks(tree.paths["file-3145733"], [5])
    trace = traced(tmp_path / "second.trace")
    basis = [f for f in _openat_flags(trace, big) if "O_RDONLY" in f]
    assert basis, "the receiver never read its old copy"
    for flags in basis:
        assert not flags & special, f"basis opened with {sorted(flags)}"
    assert_same_tree(src, dst)

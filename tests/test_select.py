"""File selection beside rsync (issue 23): -R with /./ anchors and --no-implied-dirs,
--files-from (a file, stdin, --from0, a remote list), -x/-xx with a tmpfs inside the
source, and the same runs as a push and a pull over ssh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import needs_root, run_fscsync, run_rsync
from support.sshd import Sshd
from support.treecmp import assert_same_tree
from support.trees import set_times, write
from test_local_sync import ENV, T0, Runs, Twin, assert_same_items, items, settle, subst
from test_remote import at, over_ssh, pushed

FILES = ["a/b/c/f", "a/b/g", "a/h", "x/y", "x/z/deep", "top", "sp ace/q"]


def make_tree(root: Path) -> None:
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write(root / rel, rel.encode())
    (root / "a/empty").mkdir()
    os.chmod(root / "a", 0o750)
    settle(root)


def _stale(area: Path) -> None:
    for rel in ("dst/a/old", "dst/a/b/old", "dst/a/b/c/old", "dst/x/old", "dst/x/z/old"):
        (area / rel).parent.mkdir(parents=True, exist_ok=True)
        write(area / rel, b"old")
        set_times(area / rel, T0 * 10**9)


RELATIVE = {
    "anchor": ["-aiR", "{src}/./a/b/c/f", "{src}/./x", "@D/dst/"],
    "anchor-dir": ["-aiR", "{src}/./a/b", "@D/dst/"],
    "anchor-deep": ["-aiR", "{src}/a/./b/c", "{src}/./top", "@D/dst/"],
    "no-implied-dirs": ["-aiR", "--no-implied-dirs", "{src}/./a/b/c/f", "{src}/./x/z",
                        "@D/dst/"],
    "delete": ["-aiR", "--delete", "{src}/./a/b", "{src}/./x/z/deep", "@D/dst/"],
    "overlap": ["-aiR", "{src}/./a/b/c", "{src}/./a", "@D/dst/"],
    "no-relative": ["-ai", "-R", "--no-relative", "{src}/./a/b", "@D/dst/"],
    "filters": ["-aiR", "--exclude=g", "--exclude=/x/z", "{src}/./a", "{src}/./x", "@D/dst/"],
}


@pytest.mark.parametrize("case", list(RELATIVE))
def test_relative_like_rsync(tmp_path: Path, case: str) -> None:
    t = Twin(tmp_path)
    make_tree(t.src)
    t.each(_stale)
    runs = t.run(*(a.replace("{src}", str(t.src)) for a in RELATIVE[case]))
    t.assert_same(made=["dst"] + [d for d in ("dst/a", "dst/a/b", "dst/a/b/c", "dst/x",
                                               "dst/x/z") if (t.r / d).exists()])
    assert_same_items(runs)


def test_no_implied_dirs_leaves_existing_components(tmp_path: Path) -> None:
    """An existing path component keeps its own mode and time; a missing one is made
    with default attributes and no itemize line (rsync's words: left unchanged; its
    time moves only as entries are made in it)."""
    t = Twin(tmp_path)
    make_tree(t.src)

    def plant(area: Path) -> None:
        (area / "dst/a").mkdir(parents=True)
        os.chmod(area / "dst/a", 0o700)
        os.utime(area / "dst/a", ns=(T0 * 10**9, T0 * 10**9))

    t.each(plant)
    runs = t.run("-aiR", "--no-implied-dirs", f"{t.src}/./a/b/c/f", "@D/dst/")
    assert_same_items(runs, ordered=True)
    assert os.stat(t.f / "dst/a").st_mode & 0o777 == 0o700
    t.assert_same(made=["dst", "dst/a", "dst/a/b", "dst/a/b/c"])


LIST = "a/b/c/f\n# a comment\n\nx\n;another\n/top\nsp ace/q\nx/../a/h\n"


@pytest.mark.parametrize("case", ["archive", "recursive", "no-relative-file", "delete",
                                  "from0", "stdin"])
def test_files_from_like_rsync(tmp_path: Path, case: str) -> None:
    """--files-from implies -R and --dirs but not -a's -r: listed directories come
    without contents unless -r is given too."""
    t = Twin(tmp_path)
    make_tree(t.src)
    t.each(_stale)
    lst = tmp_path / "list"
    lst.write_text(LIST)
    args = ["-ai", f"--files-from={lst}"]
    stdin = None
    if case == "recursive":
        args += ["-r"]
    elif case == "delete":
        args += ["-r", "--delete"]
    elif case == "no-relative-file":
        lst.write_text("a/b/g\ntop\n")
        args += ["--no-relative"]
    elif case == "from0":
        lst.write_text("a/b/c/f\0x/z\0\0top\0")
        args += ["-0"]
    elif case == "stdin":
        stdin = LIST.encode()
        args = ["-ai", "--files-from=-"]
    args += [f"{t.src}", "@D/dst/"]
    runs = t.run(*args) if stdin is None else _run_with_input(t, args, stdin)
    t.assert_same(made=["dst"] + [d for d in ("dst/a", "dst/a/b", "dst/a/b/c", "dst/x",
                                               "dst/x/z") if (t.r / d).exists()])
    assert_same_items(runs)


def _run_with_input(t: Twin, args: list[str], stdin: bytes) -> Runs:
    r = run_rsync(*(subst(a, t.r) for a in args), input=stdin, env=ENV, check=0)
    f = run_fscsync(*(subst(a, t.f) for a in args), input=stdin, env=ENV, check=0)
    return Runs(r, f)


def test_files_from_errors_like_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    for tool in (run_rsync, run_fscsync):
        proc = tool("-a", f"--files-from={tmp_path}/nope", f"{src}", tmp_path / "d", env=ENV,
                    check=1)
        assert (f"failed to open files-from file {tmp_path}/nope: No such file or "
                "directory") in proc.stderr.decode()


# ---- -x and -xx ---------------------------------------------------------------------------

@pytest.fixture
def mounted(tmp_path: Path):
    """A source with a tmpfs mounted at mnt/ (and its own files), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    src = tmp_path / "msrc"
    make_tree(src)
    mnt = src / "mnt"
    mnt.mkdir()
    write(mnt / "under", b"hidden below the mount")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        (mnt / "inner").mkdir()
        write(mnt / "inner/file", b"on the tmpfs")
        write(mnt / "onmnt", b"on the tmpfs")
        os.chmod(mnt, 0o711)
        os.utime(mnt, ns=(T0 * 10**9, T0 * 10**9))
        settle(src)
        yield src
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_root
@pytest.mark.parametrize("flags", [["-x"], ["-xx"], ["-x", "--delete"], ["-xx", "--delete"],
                                   []], ids=["x", "xx", "x-delete", "xx-delete", "crossing"])
def test_one_file_system_like_rsync(tmp_path: Path, mounted: Path, flags: list[str]) -> None:
    """-x keeps the mount point as an empty directory with the mounted directory's
    attributes, -xx leaves it out; the top directory itself is always sent."""
    t = Twin(tmp_path)
    t.src = mounted
    runs = t.run("-ai", *flags, f"{mounted}/", "@D/dst")
    t.assert_same(made=["dst"])
    assert_same_items(runs)
    assert (t.f / "dst/mnt/onmnt").exists() == (not flags)
    assert (t.f / "dst/mnt").exists() == ("-xx" not in flags)


@needs_root
def test_no_deletions_across_a_destination_mount(tmp_path: Path) -> None:
    """-x with --delete: a mount point in the destination is neither deleted nor
    emptied, as rsync leaves it ("cannot delete mount point")."""
    t = Twin(tmp_path)
    make_tree(t.src)
    t.run("-a", f"{t.src}/", "@D/dst")
    mounts = []
    try:
        for area in t.areas.values():
            mnt = area / "dst/extra"
            mnt.mkdir()
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                  capture_output=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
            mounts.append(mnt)
            write(mnt / "kept", b"on the mount")
            write(area / "dst/a/gone", b"extraneous")
        runs = t.run("-ai", "-x", "--delete", f"{t.src}/", "@D/dst")
        assert_same_items(runs)
        assert (t.f / "dst/extra/kept").exists() and not (t.f / "dst/a/gone").exists()
        assert (t.r / "dst/extra/kept").exists()
    finally:
        for mnt in mounts:
            subprocess.run(["umount", str(mnt)], check=True)


# ---- over ssh --------------------------------------------------------------------------------

SSH_CASES = {
    "relative": (["-aiR", "--delete"], ["{src}/./a/b", "{src}/./x"]),
    "no-implied-dirs": (["-aiR", "--no-implied-dirs"], ["{src}/./a/b/c/f"]),
    "filter-F": (["-ai", "--delete", "-F", "--filter=P *.keep"], ["{src}/"]),
    "cvs": (["-ai", "--delete", "-C"], ["{src}/"]),
    "files-from": (["-ai", "--files-from={list}"], ["{src}"]),
}


def _ssh_tree(root: Path) -> None:
    make_tree(root)
    (root / ".rsync-filter").write_text("- *.o\n")
    (root / "x/.rsync-filter").write_text("- deep\n")
    for rel in ("obj.o", "x/z/core", "a/b/tags"):
        write(root / rel, b"junk")
    settle(root)


@pytest.mark.parametrize("case", list(SSH_CASES))
def test_selection_over_ssh_like_rsync(sshd: Sshd, tmp_path: Path, case: str) -> None:
    """Push and pull give the tree and -i lines a local rsync run gives."""
    src = tmp_path / "src"
    _ssh_tree(src)
    lst = tmp_path / "list"
    lst.write_text(LIST)
    dests = {name: tmp_path / name for name in ("rsync", "pushed", "pulled")}
    for d in dests.values():
        for rel in ("a/old.keep", "a/old", "x/z/old", "junk.o"):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            write(d / rel, b"old")
            set_times(d / rel, T0 * 10**9)
    flags, sources = ([a.replace("{src}", str(src)).replace("{list}", str(lst)) for a in part]
                      for part in SSH_CASES[case])
    ref = run_rsync(*flags, *sources, f"{dests['rsync']}/", env=ENV, check=0)
    push = over_ssh(sshd, *flags, *sources, at(sshd, dests["pushed"], "/"))
    pull = over_ssh(sshd, *flags, *(at(sshd, x) for x in sources), f"{dests['pulled']}/")
    for d in dests.values():
        os.utime(d, ns=(T0 * 10**9, T0 * 10**9))
    assert_same_tree(dests["rsync"], dests["pushed"], ignore_dir_mtime=True)
    assert_same_tree(dests["rsync"], dests["pulled"], ignore_dir_mtime=True)
    assert sorted(items(pull)) == sorted(items(ref))
    assert sorted(items(push)) == sorted(pushed(items(ref)))


def test_remote_files_from_is_read_by_the_remote_sender(sshd: Sshd, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    lst = tmp_path / "remote-list"
    lst.write_text("a/b/g\ntop\n")
    ref = run_rsync("-ai", f"--files-from={lst}", f"{src}", f"{tmp_path}/r/", env=ENV,
                    check=0)
    pull = over_ssh(sshd, "-ai", f"--files-from={sshd.host}:{lst}", at(sshd, src),
                    f"{tmp_path}/f/")
    assert_same_tree(tmp_path / "r", tmp_path / "f", ignore_dir_mtime=True)
    assert sorted(items(pull)) == sorted(items(ref))
    short = over_ssh(sshd, "-ai", f"--files-from=:{lst}", at(sshd, src), f"{tmp_path}/g/")
    assert sorted(items(short)) == sorted(items(ref))


# ---- the encrypted backup layout -----------------------------------------------------------

ENC_A = b"\x8f\xa1=Q\xee" + b"x" * 11  # names as a locked directory shows them: opaque bytes
ENC_B = b"\xc3(\x01junk" + b"y" * 9


def _enc_tree(root: Path) -> None:
    from support.enctree import EncTree

    t = EncTree(os.fsencode(root), seed="select")
    t.dir(b"vault")
    t.dir(b"vault/" + ENC_A)
    t.file(b"vault/" + ENC_A + b"/" + ENC_B, 5000)
    t.file(b"vault/" + ENC_B, 100)
    t.file(b"vault/" + ENC_A + b"/keep", 3)
    t.file(b"plain.o", 10, encrypted=False)
    os.makedirs(root / "plain")
    with open(root / ".rsync-filter", "wb") as f:
        f.write(b"- " + ENC_B + b"\n- *.o\n")
    with open(root / "list", "wb") as f:
        f.write(b"vault/" + ENC_A + b"/keep\n" + b"vault/" + ENC_B + b"\n")
    settle(root)


@needs_root
@pytest.mark.parametrize("case", ["F", "relative", "files-from", "x"])
def test_encrypted_layout_selection_like_rsync(tmp_path: Path, case: str) -> None:
    """Rules match the opaque names of a locked tree byte for byte, and what is selected
    keeps its ciphertext and encdata (rsync -X copies the stored xattr the same way)."""
    t = Twin(tmp_path)
    _enc_tree(t.src)
    flags = {"F": ["-F", "--delete"], "relative": ["-R"], "x": ["-x"],
             "files-from": [f"--files-from={t.src}/list"]}[case]
    source = {"relative": f"{t.src}/./vault/{os.fsdecode(ENC_A)}",
              "files-from": str(t.src)}.get(case, f"{t.src}/")
    runs = t.run("-aiX", *flags, source, "@D/dst/")
    made = [d for d in ("dst", "dst/vault") if (t.r / d).exists()]
    t.assert_same(made=made)
    marked = [ln.removesuffix(" (encrypted)") for ln in items(runs.fscsync)]
    assert sorted(marked) == sorted(items(runs.rsync))  # fscsync marks encrypted entries
    selected = {os.fsencode(p.relative_to(t.f / "dst")) for p in (t.f / "dst").rglob("*")}
    assert (b"vault/" + ENC_B in selected) == (case in ("files-from", "x"))


def test_remote_files_from_in_a_push_is_read_by_the_receiver(sshd: Sshd,
                                                             tmp_path: Path) -> None:
    """--files-from=HOST:FILE with a remote DEST: the receiving host reads the list and
    hands it to the sending client, as rsync's receiver does."""
    src = tmp_path / "src"
    make_tree(src)
    lst = tmp_path / "remote-list"
    lst.write_text("a/b/g\n../../etc/passwd\nx/z\n")
    ref = run_rsync("-ai", f"--files-from={lst}", f"{src}", f"{tmp_path}/r/", env=ENV,
                    check=23)  # ../../etc/passwd is src/etc/passwd, which is missing
    push = over_ssh(sshd, "-ai", f"--files-from={sshd.host}:{lst}", src,
                    at(sshd, tmp_path / "f", "/"), code=23)
    assert "src/etc/passwd" in push.stderr.decode()
    assert_same_tree(tmp_path / "r", tmp_path / "f", ignore_dir_mtime=True)
    assert sorted(items(push)) == sorted(pushed(items(ref)))
    missing = over_ssh(sshd, "-a", f"--files-from={sshd.host}:{tmp_path}/nope", src,
                       at(sshd, tmp_path / "g", "/"), code=1)
    assert "failed to open files-from file" in missing.stderr.decode()


@needs_root
@pytest.mark.parametrize("flags", [["-x"], ["-xx"]], ids=["x", "xx"])
def test_one_file_system_over_ssh(sshd: Sshd, tmp_path: Path, mounted: Path,
                                  flags: list[str]) -> None:
    ref = run_rsync("-ai", *flags, f"{mounted}/", f"{tmp_path}/rsync/", env=ENV, check=0)
    push = over_ssh(sshd, "-ai", *flags, f"{mounted}/", at(sshd, tmp_path / "pushed", "/"))
    pull = over_ssh(sshd, "-ai", *flags, at(sshd, mounted, "/"), f"{tmp_path}/pulled/")
    for name in ("pushed", "pulled"):
        assert_same_tree(tmp_path / "rsync", tmp_path / name, ignore_dir_mtime=True)
    assert sorted(items(pull)) == sorted(items(ref))
    assert sorted(items(push)) == sorted(pushed(items(ref)))
    assert not (tmp_path / "pulled/mnt/onmnt").exists()

"""Power cuts at random moments of a real `fscsync --fsync` run over a previous copy.

The destination is an ext4 (with its journal, delalloc on) on a loop device. This
kernel has no device-mapper, so instead of dm-log-writes the loop device sits on a
file of a small FUSE server (tests/support/logdisk.py) that records every block write
and every flush in order. After the run the log is replayed onto the filesystem as it
was before the run, cut at random records; writes after the last flush before the cut
are each kept or lost at random, as by a disk with a volatile cache. Each such disk is
then mounted (ext4 replays its journal), checked, unmounted and checked with
`e2fsck -fn`.

What must hold: every file is its old copy or its new one, never torn, empty or short;
a file that both copies have never goes missing; once fscsync has exited, every file is
the new copy. The next run over the cut disk brings it to the source (a committed redo
journal is finished, litter removed).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, logdisk, run_fscsync

from fscsync.fs import inplace
from fscsync.fs.destfs import is_temp_name

CUTS_DURING = 6
"""Random cut points while fscsync runs (each costs about a second)."""
SEED = int(os.environ.get("FSCSYNC_POWERCUT_SEED", "0")) or random.randrange(1, 1 << 30)
T0 = 1_700_000_000


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
    return proc


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for loop devices, mount and FUSE"
    for tool in ("losetup", "mount", "umount", "mkfs.ext4", "e2fsck", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control)"
    return None


class Loop:
    """An ext4 image (or the logging disk's file) attached and mounted."""

    def __init__(self, backing: Path, mnt: Path):
        self.dev = _run("losetup", "--find", "--show", str(backing)).stdout.strip()
        self.mnt = mnt
        try:
            _run("mount", "-t", "ext4", self.dev, str(mnt))
        except BaseException:
            _run("losetup", "-d", self.dev, check=False)
            raise

    def close(self) -> None:
        _run("umount", str(self.mnt))
        _run("losetup", "-d", self.dev)

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def _trees(old: Path, new: Path) -> None:
    """A previous copy and the next version: rewritten, grown, shrunk, emptied, new and
    deleted files, a deleted and a new directory, and a big file with a few changed
    blocks (updated in place under the redo journal)."""
    rng = random.Random(7)
    big = bytearray(rng.randbytes(inplace.MIN_SIZE + 12288))
    _write(old / "big.bin", bytes(big), T0)
    for _ in range(5):
        at = rng.randrange(len(big) // 4096) * 4096
        big[at : at + 4096] = rng.randbytes(4096)
    _write(new / "big.bin", bytes(big), T0 + 100)
    mid = rng.randbytes(3 << 20)
    _write(old / "mid.bin", mid, T0)
    _write(new / "mid.bin", mid[: 1 << 20] + rng.randbytes(2 << 20), T0 + 100)
    _write(old / "empty-then-full", b"", T0)
    _write(new / "empty-then-full", rng.randbytes(9000), T0 + 100)
    _write(old / "full-then-empty", rng.randbytes(9000), T0)
    _write(new / "full-then-empty", b"", T0 + 100)
    for i in range(60):
        name = Path(f"d{i % 4}") / f"f{i:02}"
        data = rng.randbytes(rng.choice((100, 4096, 5000, 70000)))
        _write(old / name, data, T0)
        kind = i % 6
        if kind == 0:
            continue  # deleted
        if kind in (1, 2):
            data = rng.randbytes(len(data) + rng.choice((-50, 0, 3000)))
        elif kind == 3:
            data = data[: len(data) // 2]
        _write(new / name, data, T0 + (100 if kind in (1, 2, 3) else 0))
    for i in range(5):
        _write(old / "gone" / f"g{i}", rng.randbytes(3000), T0)
        _write(new / "fresh" / f"n{i}", rng.randbytes(6000), T0 + 100)


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _check(dst: Path, old: dict[str, str], new: dict[str, str], after_exit: bool) -> list[str]:
    """What is wrong with a cut destination: [] when every file is its old or new
    copy (only the new one once fscsync had exited)."""
    problems = []
    seen = _digests(dst) if dst.is_dir() else {}
    for rel, digest in seen.items():
        if is_temp_name(os.fsencode(Path(rel).name)) or inplace.is_journal_name(
                os.fsencode(Path(rel).name)):
            if after_exit:
                problems.append(f"{rel}: litter after the run had finished")
            continue
        allowed = {new.get(rel)} if after_exit else {old.get(rel), new.get(rel)}
        if digest not in allowed - {None}:
            problems.append(f"{rel}: neither the old nor the new copy" if not after_exit
                            else f"{rel}: not the new copy")
    for rel in set(old) & set(new) if not after_exit else set(new):
        if rel not in seen:
            problems.append(f"{rel}: missing")
    if after_exit:
        problems += [f"{rel}: deleted file still there" for rel in set(old) - set(new)
                     if rel in seen]
    return problems


@pytest.fixture
def work() -> Iterator[Path]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path("/tmp")
    root = Path(os.path.realpath(tempfile.mkdtemp(prefix="fscsync-powercut-", dir=base)))
    try:
        yield root
    finally:
        for mnt in (root / "mnt", root / "fuse"):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        for line in _run("losetup", "-a", check=False).stdout.splitlines():
            if str(root) in line:
                subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True,
                               check=False)
        shutil.rmtree(root, ignore_errors=True)


def _logged_run(work: Path, old: Path, new: Path) -> tuple[Path, list, int]:
    """The base image (the old copy, unmounted clean), the log of the --fsync run over
    it and the index of the mark set when fscsync exited."""
    image, base, log = work / "disk.img", work / "base.img", work / "log"
    mnt, fuse = work / "mnt", work / "fuse"
    mnt.mkdir()
    fuse.mkdir()
    with open(image, "wb") as f:
        f.truncate(192 << 20)
    _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
         str(image))
    with Loop(image, mnt):
        run_fscsync("-a", f"{old}/", f"{mnt}/dst/", check=True)
    shutil.copyfile(image, base)
    server = subprocess.Popen([sys.executable, str(REPO / "tests/support/logdisk.py"),
                               str(image), str(log), str(fuse)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (fuse / "disk").exists():
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "the logging disk did not come up"
            time.sleep(0.05)
        with Loop(fuse / "disk", mnt):
            run_fscsync("-a", "--delete", "--fsync", f"{new}/", f"{mnt}/dst/", check=True)
            (fuse / "mark").write_bytes(b"exit")
    finally:
        subprocess.run(["umount", str(fuse)], capture_output=True, check=False)
        server.wait(timeout=30)
    records = logdisk.read_log(str(log))
    return base, records, logdisk.mark_index(str(log), records, b"exit")


@pytest.mark.slow
def test_power_cut_leaves_old_or_new_copies(work: Path) -> None:
    old, new = work / "old", work / "new"
    _trees(old, new)
    olds, news = _digests(old), _digests(new)
    base, records, exit_at = _logged_run(work, old, new)
    log = str(work / "log")
    rng = random.Random(SEED)
    cuts = sorted(rng.sample(range(1, exit_at), min(CUTS_DURING, exit_at - 1)))
    cuts += [exit_at, rng.randrange(exit_at, len(records) + 1)]
    scratch, mnt = work / "cut.img", work / "mnt"
    for cut in cuts:
        shutil.copyfile(base, scratch)
        dropped = logdisk.replay(log, records, str(scratch), cut, rng)
        where = (f"seed {SEED} (FSCSYNC_POWERCUT_SEED), cut at record {cut} of "
                 f"{len(records)} (fscsync exited at {exit_at}), {dropped} unflushed "
                 "sectors dropped")
        with Loop(scratch, mnt):
            problems = _check(mnt / "dst", olds, news, after_exit=cut >= exit_at)
        assert not problems, f"{where}: {problems}"
        fsck = _run("e2fsck", "-fn", str(scratch), check=False)
        assert fsck.returncode == 0, f"{where}: e2fsck -fn: {fsck.stdout}"
        with Loop(scratch, mnt):
            run_fscsync("-a", "--delete", f"{new}/", f"{mnt}/dst/", check=True)
            assert _digests(mnt / "dst") == news, f"{where}: the next run did not recover"

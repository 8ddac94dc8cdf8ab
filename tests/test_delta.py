"""Delta transfer on aligned blocks (issue 4), checked through `--stats` and the bytes.

The model every expectation is computed from: a block of the new file travels as
literal data unless the old destination copy holds exactly the same bytes at
the same offset (same length too, so a partial last block that changed size is
literal). Files up to one chunk (256 blocks, 1 MiB by default) get block-level
signatures, larger ones a chunk level first.

Local runs default to whatever the README says is fastest; delta tests pass
`--no-whole-file` explicitly so they test the delta path whatever the default.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, run_fscsync
from support.procwatch import when_opened
from support.stats import parse_stats
from support.treecmp import assert_same_tree

BLOCK = 4096
MiB = 1 << 20
OLD_NS = 1_500_000_000_000_000_000
NEW_NS = 1_600_000_000_000_000_000

def sync(src: Path, dst: Path, *opts: str, check: bool | int = True,
         env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[bytes],
                                                     dict[str, int]]:
    proc = run_fscsync("-a", "--stats", *opts, f"{src}/", f"{dst}/", check=check, env=env)
    return proc, parse_stats(proc.stdout)


def rand(n: int, seed: int | str) -> bytes:
    return random.Random(seed).randbytes(n)


def expected_literal(old: bytes, new: bytes, block: int = BLOCK) -> int:
    """Bytes of `new` that an aligned-block delta against `old` must send literally."""
    return sum(len(new[off : off + block]) for off in range(0, len(new), block)
               if old[off : off + block] != new[off : off + block])


def put(path: Path, data: bytes, ns: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(ns, ns))


def make_pair(tmp_path: Path, old: bytes, new: bytes, name: str = "f") -> tuple[Path, Path]:
    """src/<name> holds `new`, dst/<name> the older copy `old` (different mtimes)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(exist_ok=True)
    dst.mkdir(exist_ok=True)
    put(src / name, new, NEW_NS)
    put(dst / name, old, OLD_NS)
    return src, dst


def assert_file_copied(src: Path, dst: Path) -> None:
    assert dst.read_bytes() == src.read_bytes(), f"{dst} differs from {src}"
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns


def no_temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if "~fscsync~" in p.name]


def flip(data: bytes, *offsets: int) -> bytes:
    out = bytearray(data)
    for off in offsets:
        out[off] ^= 0x5A
    return bytes(out)


# ---- the shapes of change ------------------------------------------------------------

SMALL = 75 * BLOCK + 1000           # single chunk, partial last block
SMALL_ALIGNED = 75 * BLOCK
BIG = 3 * MiB + 1000                # four chunks, partial last block
BIG_ALIGNED = 3 * MiB


def _cases() -> list[tuple[str, int, callable]]:
    cases = []
    for label, size, aligned in (("1chunk", SMALL, SMALL_ALIGNED), ("chunks", BIG, BIG_ALIGNED)):
        cases += [
            (f"{label}-append", size, lambda d: d + rand(10_000, "tail")),
            (f"{label}-append-aligned", aligned, lambda d: d + rand(3 * BLOCK, "tail")),
            (f"{label}-truncate", size, lambda d: d[:-10_000]),
            (f"{label}-truncate-to-block", size, lambda d: d[: len(d) // BLOCK * BLOCK - BLOCK]),
            (f"{label}-first-block", size, lambda d: flip(d, 0)),
            (f"{label}-last-block", aligned, lambda d: flip(d, len(d) - 1)),
            (f"{label}-partial-last-block", size, lambda d: flip(d, len(d) - 1)),
            (f"{label}-straddles-blocks", size, lambda d: flip(d, 5 * BLOCK - 1, 5 * BLOCK)),
            (f"{label}-scattered", size, lambda d: flip(d, 7, 20 * BLOCK + 9, 70 * BLOCK)),
        ]
    cases += [
        ("chunks-chunk-boundary", BIG, lambda d: flip(d, MiB - 1, MiB, 2 * MiB)),
        ("chunks-grow-from-one-chunk", MiB, lambda d: d + rand(MiB + 5, "grow")),
        ("chunks-shrink-to-one-chunk", BIG, lambda d: d[: MiB // 2]),
    ]
    return cases


CASES = _cases()


def _run_cases(tmp_path: Path, cases: dict[str, tuple[bytes, bytes]], *opts: str,
               block: int = BLOCK, prepared: bool = False) -> dict[str, int]:
    """Sync every (old, new) pair as one file each in one run; check contents and the
    summed literal/matched figures. When the sums are off, each case is run alone so
    the failure names the cases that are wrong."""
    if not prepared:
        for name, (old, new) in cases.items():
            make_pair(tmp_path, old, new, name=name)
    src, dst = tmp_path / "src", tmp_path / "dst"
    _, s = sync(src, dst, *opts)
    for name in cases:
        assert_file_copied(src / name, dst / name)
    want = {name: expected_literal(old, new, block) for name, (old, new) in cases.items()}
    literal = sum(want.values())
    total = sum(len(new) for _, new in cases.values())
    if (s["literal"], s["matched"]) != (literal, total - literal):
        wrong = []
        for name, (old, new) in cases.items():
            one = tmp_path / "alone" / name
            one.mkdir(parents=True)
            make_pair(one, old, new)
            _, s1 = sync(one / "src", one / "dst", *opts)
            if (s1["literal"], s1["matched"]) != (want[name], len(new) - want[name]):
                wrong.append(f"{name}: literal {s1['literal']:,} matched {s1['matched']:,}, "
                             f"expected {want[name]:,} and {len(new) - want[name]:,}")
        pytest.fail(f"literal {s['literal']:,} / matched {s['matched']:,}, expected "
                    f"{literal:,} / {total - literal:,}; cases run alone:\n  "
                    + "\n  ".join(wrong or ["(all right alone: only wrong together)"]))
    assert not no_temp_files(dst)
    return s


def test_delta_sends_only_changed_blocks(tmp_path: Path) -> None:
    """Every shape of change at once (one file each, one run, pipelined)."""
    cases = {}
    for name, size, change in CASES:
        old = rand(size, name)
        cases[name] = (old, change(old))
    s = _run_cases(tmp_path, cases, "--no-whole-file")
    literal = sum(expected_literal(old, new) for old, new in cases.values())
    assert s["transferred"] == len(cases)
    # on the wire: the literal data plus a little per file, never whole files
    new_bytes = sum(len(new) for _, new in cases.values())
    old_bytes = sum(len(old) for old, _ in cases.values())
    assert s["sent"] < literal + 1024 * len(cases) + new_bytes // 1000, s
    assert s["received"] < 1024 * len(cases) + old_bytes // 100, s


def test_empty_and_non_empty(tmp_path: Path) -> None:
    sizes = {"empty-to-10000": (0, 10_000), "10000-to-empty": (10_000, 0),
             "empty-to-empty": (0, 0), "empty-to-3MiB": (0, 3 * MiB),
             "3MiB-to-empty": (3 * MiB, 0)}
    cases = {name: (rand(a, name), rand(b, name + "new")) for name, (a, b) in sizes.items()}
    s = _run_cases(tmp_path, cases, "--no-whole-file")
    assert s["matched"] == 0
    assert (tmp_path / "dst" / "3MiB-to-empty").stat().st_size == 0


def test_unchanged_file_is_not_sent(tmp_path: Path) -> None:
    data = rand(BIG, 3)
    src, dst = make_pair(tmp_path, data, data)
    os.utime(dst / "f", ns=(NEW_NS, NEW_NS))
    _, s = sync(src, dst, "--no-whole-file")
    assert (s["literal"], s["matched"], s["transferred"]) == (0, 0, 0)


def test_file_replaced_by_directory_and_back(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    put(src / "x", rand(50_000, "x"), NEW_NS)
    put(src / "keep", b"keep\n", NEW_NS)
    sync(src, dst, "--delete")
    assert_same_tree(src, dst)

    (src / "x").unlink()
    (src / "x").mkdir()
    put(src / "x" / "inner", rand(70_000, "inner"), NEW_NS)
    (src / "x" / "sub").mkdir()
    put(src / "x" / "sub" / "deep", b"deep\n", NEW_NS)
    os.utime(src / "x" / "sub", ns=(NEW_NS, NEW_NS))
    os.utime(src / "x", ns=(NEW_NS, NEW_NS))
    sync(src, dst, "--delete")
    assert_same_tree(src, dst)

    shutil.rmtree(src / "x")
    put(src / "x", rand(60_000, "x again"), NEW_NS + 5)
    # rsync's rule: a non-empty directory only makes way for a file with --delete
    proc = run_fscsync("-a", f"{src}/", f"{dst}/", check=23)
    assert re.search(rb'(^|[\s"/])x($|[\s":;])', proc.stderr, re.M), proc.stderr
    assert (dst / "x").is_dir()
    _, s = sync(src, dst, "--delete")
    assert_same_tree(src, dst)
    assert s["literal"] == 60_000
    assert not no_temp_files(dst)


def test_large_file_few_changed_blocks(tmp_path: Path) -> None:
    """64 MiB, 10 random 4 KiB blocks changed: exactly 40960 literal bytes, and the
    whole exchange (signatures, ops, framing) under changed + 0.1 % of the size."""
    size = 64 * MiB
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    put(dst / "big", os.urandom(size), OLD_NS)
    shutil.copyfile(dst / "big", src / "big")
    rng = random.Random(64)
    blocks = rng.sample(range(size // BLOCK), 10)
    with open(src / "big", "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK))
    os.utime(src / "big", ns=(NEW_NS, NEW_NS))
    _, s = sync(src, dst, "--no-whole-file")
    changed = 10 * BLOCK
    assert s["literal"] == changed
    assert s["matched"] == size - changed
    bound = changed + size // 1000   # 40960 + 67108 bytes
    assert s["sent"] + s["received"] < bound, s
    assert_file_copied(src / "big", dst / "big")


def test_chunk_level_signatures_on_multi_chunk_files(tmp_path: Path) -> None:
    """8 MiB with one changed block: a flat block signature alone would be 16 KiB; the
    two-level scheme sends 8 chunk hashes plus the block hashes of one chunk."""
    old = rand(8 * MiB, 8)
    new = flip(old, 5 * MiB + 3)
    src, dst = make_pair(tmp_path, old, new)
    _, s = sync(src, dst, "--no-whole-file")
    assert_file_copied(src / "f", dst / "f")
    assert s["literal"] == BLOCK
    assert s["received"] < 8 * 1024, s


def test_single_chunk_file_uses_block_signatures(tmp_path: Path) -> None:
    """Exactly one chunk (1 MiB): 256 block hashes, no second round."""
    old = rand(MiB, 9)
    new = flip(old, 100 * BLOCK)
    src, dst = make_pair(tmp_path, old, new)
    _, s = sync(src, dst, "--no-whole-file")
    assert_file_copied(src / "f", dst / "f")
    assert s["literal"] == BLOCK
    assert s["received"] < 256 * 8 + 2048, s


def test_block_size_8192(tmp_path: Path) -> None:
    cases = {}
    for size in (SMALL, BIG, 5 * MiB):
        old = rand(size, "b8")
        cases[f"f{size}"] = (old, flip(old, 3 * BLOCK + 1, size // 2))
    s = _run_cases(tmp_path, cases, "--no-whole-file", "--block-size", "8192", block=8192)
    assert s["literal"] == 3 * 2 * 8192


@pytest.mark.parametrize("bad", ["1000", "32M"])
def test_block_size_must_be_a_power_of_two_in_range(tmp_path: Path, bad: str) -> None:
    (tmp_path / "src").mkdir()
    proc = run_fscsync("-a", "--block-size", bad, f"{tmp_path}/src/", f"{tmp_path}/dst/",
                       check=1)
    assert b"block-size" in proc.stderr


def test_whole_file_sends_everything_literal(tmp_path: Path) -> None:
    old = rand(BIG, "w")
    new = flip(old, 10)
    src, dst = make_pair(tmp_path, old, new)
    _, s = sync(src, dst, "-W")
    assert_file_copied(src / "f", dst / "f")
    assert (s["literal"], s["matched"]) == (len(new), 0)
    assert s["received"] < 4096, "a whole-file request carries no signature"


def test_inplace_keeps_the_inode(tmp_path: Path) -> None:
    old = rand(BIG, "inplace")
    cases = {"blocks": (old, flip(old, 0, 40 * BLOCK + 3)), "shrink": (old, old[:-7000]),
             "grow": (old, old + rand(9000, "grow"))}
    for name, (o, n) in cases.items():
        make_pair(tmp_path, o, n, name=name)
    inodes = {name: (tmp_path / "dst" / name).stat().st_ino for name in cases}
    _run_cases(tmp_path, cases, "--inplace", "--no-whole-file", prepared=True)
    for name in cases:
        assert (tmp_path / "dst" / name).stat().st_ino == inodes[name], name


def test_without_inplace_the_file_is_replaced(tmp_path: Path) -> None:
    old = rand(SMALL, "replace")
    src, dst = make_pair(tmp_path, old, flip(old, 5))
    os.link(dst / "f", tmp_path / "old-copy")
    sync(src, dst, "--no-whole-file")
    assert os.stat(dst / "f").st_ino != os.stat(tmp_path / "old-copy").st_ino
    assert (tmp_path / "old-copy").read_bytes() == old, "the old inode must stay untouched"
    assert_file_copied(src / "f", dst / "f")


def test_basis_the_quick_check_misses(tmp_path: Path) -> None:
    """Same size and mtime, different content: skipped by the quick check (as rsync
    does), repaired by -c with only the differing blocks as literal data."""
    new = rand(BIG, "qc")
    old = flip(new, 17, 2 * MiB + 100)
    src, dst = make_pair(tmp_path, old, new)
    os.utime(dst / "f", ns=(NEW_NS, NEW_NS))
    _, s = sync(src, dst, "--no-whole-file")
    assert s["transferred"] == 0
    assert (dst / "f").read_bytes() == old
    _, s = sync(src, dst, "--no-whole-file", "-c")
    assert_file_copied(src / "f", dst / "f")
    assert (s["literal"], s["transferred"]) == (2 * BLOCK, 1)


def test_basis_changing_under_the_writer_is_caught_and_resent(tmp_path: Path) -> None:
    """The basis no longer holds what its signature promised when the writer copies
    from it (as when it changes mid-transfer). Made deterministic with strace: the
    receiver's first copy_file_range is not executed but reports success, so the
    rebuilt file has a hole where basis data belonged. Whole-file verification must
    catch it, ask for the file whole, and end with the right content."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    old = rand(BIG, "moving")
    new = flip(old, MiB + 5)
    src, dst = make_pair(tmp_path, old, new)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=copy_file_range",
         "-e", "inject=copy_file_range:retval=4096:when=1",
         sys.executable, "-m", "fscsync", "-a", "--stats", "--no-whole-file",
         f"{src}/", f"{dst}/"], capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert "verification" in err, f"the mismatch was not noticed:\n{err}"
    assert_file_copied(src / "f", dst / "f")
    s = parse_stats(proc.stdout)
    assert s["literal"] >= len(new), "the resend must be whole"
    assert not no_temp_files(dst)


@pytest.mark.parametrize("previous", [True, False], ids=["update", "new-file"])
def test_corrupted_literals_fail_cleanly(tmp_path: Path, previous: bool) -> None:
    """Every literal corrupted: verification fails, the whole resend fails too, exit 23,
    and the destination keeps its previous copy (same inode, same bytes), no temp files."""
    old = rand(BIG, "fault-old")
    new = flip(old, 0, 2 * MiB)
    src, dst = make_pair(tmp_path, old, new)
    put(src / "ok-empty", b"", NEW_NS)
    if not previous:
        (dst / "f").unlink()
    before = os.stat(dst / "f") if previous else None
    proc, _ = sync(src, dst, "--no-whole-file", check=23,
                   env={"FSCSYNC_FAULT_CORRUPT_LITERALS": "1"})
    err = proc.stderr.decode(errors="replace")
    assert "verification" in err
    assert "f" in err
    if previous:
        st = os.stat(dst / "f")
        assert (st.st_ino, st.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert (dst / "f").read_bytes() == old
    else:
        assert not (dst / "f").exists()
    assert (dst / "ok-empty").exists(), "other files are still copied"
    assert not no_temp_files(dst)
    assert sorted(p.name for p in dst.iterdir()) == (["f", "ok-empty"] if previous
                                                     else ["ok-empty"])


SMALL_FILE = 256 << 10
"""fscsync.engine.delta.SMALL_FILE: new files up to this size go whole in one FILE frame."""


@pytest.mark.parametrize("corrupt", [False, True], ids=["clean", "corrupted"])
def test_files_either_side_of_the_one_frame_limit(tmp_path: Path, corrupt: bool) -> None:
    """New files of 0 and 1 bytes, just under, at and just over SMALL_FILE (one FILE frame
    or DATA frames then DATA_END), one with zero units that must come out as holes:
    copied exactly. With every literal corrupted on the way in, each (but the empty
    one) fails verification, is asked for again, fails again and is not installed."""
    from fscsync.engine import delta

    assert delta.SMALL_FILE == SMALL_FILE
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    sizes = {"empty": 0, "one": 1, "under": SMALL_FILE - 1, "at": SMALL_FILE,
             "over": SMALL_FILE + 1}
    for name, size in sizes.items():
        put(src / name, rand(size, name), NEW_NS)
    _sparse(src / "holes", 10 * BLOCK, {0: rand(BLOCK, 1), 9 * BLOCK: rand(BLOCK, 2)}, NEW_NS)
    env = {"FSCSYNC_FAULT_CORRUPT_LITERALS": "1"} if corrupt else None
    proc, stats = sync(src, dst, check=23 if corrupt else True, env=env)
    err = proc.stderr.decode(errors="replace")
    if not corrupt:
        assert_same_tree(src, dst, sparse=True)
        assert stats["literal"] == sum(sizes.values()) + 10 * BLOCK
        return
    assert sorted(p.name for p in dst.iterdir()) == ["empty"], err
    for name in [*sizes, "holes"]:
        if name != "empty":
            assert f'"{name}" failed verification -- sending it again whole' in err, err
            assert f'ERROR: "{name}" failed verification -- update discarded' in err, err
    assert not no_temp_files(dst)


def _sparse(path: Path, size: int, pieces: dict[int, bytes], ns: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces.items():
            f.seek(off)
            f.write(data)
    os.utime(path, ns=(ns, ns))


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_sparse_file_stays_sparse(tmp_path: Path) -> None:
    size = 64 * MiB
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    pieces = {0: rand(BLOCK, 1), 10 * MiB: rand(3 * BLOCK, 2), size - BLOCK: rand(BLOCK, 3)}
    _sparse(src / "sparse", size, pieces, OLD_NS)
    sync(src, dst)
    assert_same_tree(src, dst, sparse=True)
    assert _allocated(dst / "sparse") < MiB, "the initial copy wrote the holes"

    pieces[30 * MiB] = rand(BLOCK, 4)
    with open(src / "sparse", "r+b") as f:
        f.seek(30 * MiB)
        f.write(pieces[30 * MiB])
    os.utime(src / "sparse", ns=(NEW_NS, NEW_NS))
    _, s = sync(src, dst, "--no-whole-file")
    assert s["literal"] == BLOCK
    assert_file_copied(src / "sparse", dst / "sparse")
    assert _allocated(dst / "sparse") < MiB, (
        f"a delta update made the sparse file dense ({_allocated(dst / 'sparse')} bytes "
        "allocated for 6 data blocks)")


# ---- files changing while they are sent ----------------------------------------------


def _popen_fscsync(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "fscsync", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def _grow(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(rand(BLOCK, "grown"))


def _shrink(path: Path) -> None:
    os.truncate(path, os.stat(path).st_size // 3)


@pytest.mark.parametrize("mutate", [_grow, _shrink], ids=["grows", "shrinks"])
def test_file_changing_while_sent_is_reported(tmp_path: Path, mutate) -> None:
    """The client (the sender) is throttled with --bwlimit so the file stays open for
    about a second; it is changed as soon as the sender has it open. The change must be
    reported, the run exit with a partial-transfer code, and the destination keep its
    previous copy."""
    size = 8 * MiB
    old = rand(size, "old")
    src, dst = make_pair(tmp_path, old, rand(size, "new"), name="moving")
    put(src / "other", b"other\n", NEW_NS)
    proc = _popen_fscsync("-a", "--whole-file", "--bwlimit", "8M", f"{src}/", f"{dst}/")
    opened = when_opened(proc, src / "moving", lambda: mutate(src / "moving"))
    out, err = proc.communicate(timeout=120)
    assert opened, "the sender never opened the file (finished too fast?)"
    text = err.decode(errors="replace")
    assert "moving" in text
    if proc.returncode == 0:
        # The change landed between the sender's open and its first fstat, before any
        # read: the file is sent whole as it is now, with a warning.
        assert "changed after the file list was made" in text, text
        assert (dst / "moving").read_bytes() == (src / "moving").read_bytes()
    else:
        assert proc.returncode in (23, 24), text
        assert (dst / "moving").read_bytes() == old, "the previous copy must stay intact"
    assert (dst / "other").read_bytes() == b"other\n"
    assert not no_temp_files(dst)


def test_file_growing_between_scan_and_send(tmp_path: Path) -> None:
    """A file that grows after the file list was made but before it is sent (while a
    big file ahead of it is still being sent): the destination ends with one complete,
    consistent version, the change is reported, and the next run converges."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    put(src / "a-big", rand(8 * MiB, "big"), NEW_NS)
    first = rand(30_000, "b1")
    put(src / "b-small", first, NEW_NS)
    grown = first + rand(5000, "b2")

    def grow() -> None:
        with open(src / "b-small", "ab") as f:
            f.write(grown[len(first):])

    proc = _popen_fscsync("-a", "--whole-file", "--bwlimit", "8M", f"{src}/", f"{dst}/")
    opened = when_opened(proc, src / "a-big", grow)
    out, err = proc.communicate(timeout=120)
    assert opened
    text = err.decode(errors="replace")
    got = (dst / "b-small").read_bytes() if (dst / "b-small").exists() else None
    assert got in (None, first, grown), "the destination holds a mixture of versions"
    assert "b-small" in text, f"the change was not reported (exit {proc.returncode}):\n{text}"
    sync(src, dst)
    assert_same_tree(src, dst)


# ---- memory ---------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_stays_flat_on_a_1gib_delta(tmp_path: Path) -> None:
    """A 1 GiB file (sparse: holes read as zeros) with 10 changed blocks: max RSS of the
    run (client and its local peer: /usr/bin/time reports the largest) stays under
    200 MB, and the exchange stays under changed + 0.1 % of the size."""
    time_bin = "/usr/bin/time"
    if not os.access(time_bin, os.X_OK):
        pytest.skip("GNU time not installed")
    size = 1 << 30
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rng = random.Random(1024)
    common = {rng.randrange(size // BLOCK) * BLOCK: rng.randbytes(BLOCK) for _ in range(64)}
    _sparse(dst / "huge", size, common, OLD_NS)
    changed = {rng.randrange(size // BLOCK) * BLOCK: rng.randbytes(BLOCK) for _ in range(10)}
    assert len(changed) == 10 and not set(changed) & set(common)
    _sparse(src / "huge", size, {**common, **changed}, NEW_NS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([time_bin, "-v", sys.executable, "-m", "fscsync", "-a",
                               "--stats", "--no-whole-file", f"{src}/", f"{dst}/"],
                              capture_output=True, env=env, timeout=300)
        _check_1gib_run(proc, dst, size, {**common, **changed})
    finally:   # pytest keeps old tmp dirs: don't leave gigabytes behind
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)


def _check_1gib_run(proc: subprocess.CompletedProcess[bytes], dst: Path,
                    size: int, blocks: dict[int, bytes]) -> None:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    assert m, err
    rss = int(m.group(1)) * 1024
    assert rss < 200_000_000, f"max RSS {rss:,} bytes"
    s = parse_stats(proc.stdout)
    assert s["literal"] == 10 * BLOCK
    assert s["sent"] + s["received"] < 10 * BLOCK + size // 1000, s
    with open(dst / "huge", "rb") as f:
        for off, data in blocks.items():
            f.seek(off)
            assert f.read(BLOCK) == data, f"block at {off}"
    st = os.stat(dst / "huge")
    assert (st.st_size, st.st_mtime_ns) == (size, NEW_NS)
    assert stat.S_ISREG(st.st_mode)


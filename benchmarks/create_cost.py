#!/usr/bin/env python3
"""What one file creation costs the kernel, the rsync way and the fscsync way (issue 25).

    .venv/bin/python benchmarks/create_cost.py                       # /var/tmp, fresh dirs
    .venv/bin/python benchmarks/create_cost.py --after-delete        # next to a mass deletion
    .venv/bin/python benchmarks/create_cost.py --where /dev/shm --files 20000 --reps 3
    .venv/bin/python benchmarks/create_cost.py --private-ext4 nojournal --after-delete   # root

Makes `--files` small files in `--dirs` directories with the syscalls, flags, temp
names and order each tool uses for an initial copy (taken from `strace -f` of
rsync 3.5 and of fscsync), nothing else: no reading, no protocol, no second
process. Per pattern and rep it prints the temp file's create (the open with
O_CREAT|O_EXCL) in microseconds (median, 90th percentile, mean) and the whole
loop's system time per file from getrusage, so a difference between the tools'
kernel time that this shows is the filesystem's and one it does not show is
the tools' own.

Patterns:
  rsync        mkdir every dir first; per file open(".NAME.XXXXXX", O_RDWR|O_CREAT|O_EXCL,
               0600), fchmod, write, close, utimensat by name, rename
  fscsync      mkdir every dir first; per file open(".NAME.~fscsync~XXXXXX", O_WRONLY|
               O_CREAT|O_EXCL|O_CLOEXEC, 0600), pwrite, fstat, fchmod, futimens, close, rename
  fscsync-name the fscsync calls with rsync's temp names (is it the name?)
  direct       open the final name (O_CREAT|O_EXCL), write, fchmod, futimens, close: no
               temp name, no rename (what a fresh destination could get)
  interleaved  the fscsync calls, each dir made just before its files

--after-delete first makes and deletes as many empty files in a sibling directory,
which is what a destination sees after a test suite or an earlier run removed its
trees: ext4 then walks past every inode freed in the last minutes of its block
group at each allocation (`recently_deleted` in `perf record -g`). Patterns take
turns in an order that alternates between reps; every rep gets fresh directories
(and its own deletion). The trees are deleted at the end, which slows creation on
that filesystem for a few minutes (see benchmarks/workdir.py).

--private-ext4 measures on a new ext4 in a RAM-backed loop image that nothing
else touches (root only; unmounted and removed at the end), with or without a
journal: ext4 checks for recently deleted inodes only when it has no journal, as
this machine's root filesystem has none (no /dev/vda entry in /proc/fs/jbd2).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

ALNUM = (string.ascii_letters + string.digits).encode()
TO_ALNUM = bytes(ALNUM[i % len(ALNUM)] for i in range(256))
PATTERNS = ("rsync", "fscsync", "fscsync-name", "direct", "interleaved")
SIZES = (100, 8000)
MTIME_NS = 1_700_000_000_000_000_000


def suffix(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).translate(TO_ALNUM)


def temp_name(pattern: str, name: bytes, rng: random.Random) -> bytes:
    if pattern in ("fscsync", "interleaved"):
        return b"." + name + b".~fscsync~" + suffix(rng, 6)
    return b"." + name + b"." + suffix(rng, 6)


def make_file(pattern: str, dfd: int, name: bytes, data: bytes,
              rng: random.Random) -> int:
    """One file the pattern's way; returns the create's nanoseconds."""
    if pattern == "direct":
        t0 = time.perf_counter_ns()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        took = time.perf_counter_ns() - t0
        os.pwrite(fd, data, 0)
        os.fchmod(fd, 0o644)
        os.utime(fd, ns=(MTIME_NS, MTIME_NS))
        os.close(fd)
        return took
    tmp = temp_name(pattern, name, rng)
    if pattern == "rsync":
        t0 = time.perf_counter_ns()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dfd)
        took = time.perf_counter_ns() - t0
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
        os.utime(tmp, ns=(MTIME_NS, MTIME_NS), dir_fd=dfd, follow_symlinks=False)
        os.chmod(tmp, 0o644, dir_fd=dfd)
    else:
        t0 = time.perf_counter_ns()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        took = time.perf_counter_ns() - t0
        os.pwrite(fd, data, 0)
        os.fstat(fd)
        os.fchmod(fd, 0o644)
        os.utime(fd, ns=(MTIME_NS, MTIME_NS))
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    return took


def build(pattern: str, root: str, files: int, dirs: int, payload: bytes) -> tuple[list[int],
                                                                                   float]:
    """The pattern's tree under root; the creates' nanoseconds and the system seconds."""
    rng = random.Random(1)
    sizes = [rng.randint(*SIZES) for _ in range(files)]
    per_dir = -(-files // dirs)
    os.mkdir(root)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    if pattern != "interleaved":
        for d in range(dirs):
            os.mkdir(f"d{d:03d}", 0o700, dir_fd=rfd)
    creates = []
    for d in range(dirs):
        if pattern == "interleaved":
            os.mkdir(f"d{d:03d}", 0o700, dir_fd=rfd)
        dfd = os.open(f"d{d:03d}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=rfd)
        for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
            creates.append(make_file(pattern, dfd, b"f%06d.dat" % i, payload[:sizes[i]], rng))
        os.chmod(dfd, 0o755)
        os.close(dfd)
    sys1 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    os.close(rfd)
    return creates, sys1 - sys0


def mass_delete(root: str, files: int) -> None:
    """Make and delete `files` empty files under root, as a test suite's cleanup would."""
    os.mkdir(root)
    for i in range(files):
        os.close(os.open(os.path.join(root, f"v{i:06d}"), os.O_WRONLY | os.O_CREAT, 0o600))
    shutil.rmtree(root)
    os.sync()


@contextmanager
def private_ext4(kind: str, files: int) -> Iterator[str]:
    """A fresh ext4 (`journal` or `nojournal`) on a loop image in /dev/shm, mounted on
    a temporary directory for the duration."""
    image = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="create-cost-", suffix=".img",
                                        delete=False).name
    mnt = tempfile.mkdtemp(prefix="create-cost-")
    try:
        os.truncate(image, 3 << 30)
        features = ["-O", "^has_journal"] if kind == "nojournal" else []
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(max(files * 30, 200_000)),
                        *features, image], check=True)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        os.rmdir(mnt)
        os.unlink(image)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--where", default="/var/tmp",
                   help="filesystem to measure (a scratch directory is made in it)")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--patterns", default="rsync,fscsync",
                   help=f"comma-separated, from {', '.join(PATTERNS)}")
    p.add_argument("--after-delete", action="store_true",
                   help="make and delete --files empty files next to each tree first")
    p.add_argument("--private-ext4", choices=("journal", "nojournal"),
                   help="measure on a new ext4 loop image in /dev/shm instead of --where")
    args = p.parse_args()
    patterns = [s.strip() for s in args.patterns.split(",") if s.strip()]
    if not patterns or any(s not in PATTERNS for s in patterns):
        p.error(f"--patterns: choose from {', '.join(PATTERNS)}")
    if args.private_ext4:
        with private_ext4(args.private_ext4, args.files) as mnt:
            return measure(args, patterns, mnt, f"a new ext4 ({args.private_ext4})")
    return measure(args, patterns, args.where, args.where)


def measure(args: argparse.Namespace, patterns: list[str], where: str, what: str) -> int:
    scratch = os.path.join(where, f"create-cost-{os.getpid()}")
    os.makedirs(scratch)
    payload = random.Random(2).randbytes(SIZES[1])
    results: dict[str, list[tuple[list[int], float, float]]] = {s: [] for s in patterns}
    print(f"{args.files:,} files in {args.dirs} dirs on {what}, "
          f"{'after a mass deletion' if args.after_delete else 'fresh directories'}")
    try:
        for rep in range(args.reps):
            for pattern in patterns if rep % 2 == 0 else patterns[::-1]:
                root = os.path.join(scratch, f"{pattern}-{rep}")
                if args.after_delete:
                    mass_delete(root + "-victim", args.files)
                os.sync()
                t0 = time.perf_counter()
                creates, sys_s = build(pattern, root, args.files, args.dirs, payload)
                wall = time.perf_counter() - t0
                results[pattern].append((creates, sys_s, wall))
                print(f"  rep {rep + 1} {pattern:<12} {wall:6.2f} s wall, "
                      f"{sys_s:6.2f} s sys, create median "
                      f"{statistics.median(creates) / 1000:7.1f} us", flush=True)
    finally:
        shutil.rmtree(scratch)
    print(f"\n{'pattern':<12} {'create med':>10} {'p90':>8} {'mean':>8} {'sys/file':>9} "
          f"{'wall':>6}   (us, us, us, us, s; medians over reps)")
    for pattern, runs in results.items():
        med = statistics.median(statistics.median(c) for c, _, _ in runs) / 1000
        p90 = statistics.median(sorted(c)[int(len(c) * 0.9)] for c, _, _ in runs) / 1000
        mean = statistics.median(statistics.fmean(c) for c, _, _ in runs) / 1000
        sys_per = statistics.median(s for _, s, _ in runs) / args.files * 1e6
        wall = statistics.median(w for _, _, w in runs)
        print(f"{pattern:<12} {med:10.1f} {p90:8.1f} {mean:8.1f} {sys_per:9.1f} {wall:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

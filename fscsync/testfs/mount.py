"""Start and stop test filesystem daemons: the Python API tests use, and the CLI's backend.

The daemon is `python -m fscsync.testfs mount --foreground` in its own session;
it writes one byte to an inherited pipe from FUSE's init callback, so start()
returns exactly when the mount is usable. A key travels through a pipe as
/dev/fd/N, never through argv or a file.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# The daemon must import this very fscsync, whatever its cwd and whether installed or not.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MountError(RuntimeError):
    """The daemon did not come up, or the mount would not go away."""


def start(backing: bytes | str, mountpoint: bytes | str, key: bytes | None = None,
          log: BinaryIO | None = None, list_encdata: bool = False) -> subprocess.Popen[bytes]:
    """Mount `backing` on `mountpoint` (locked view without `key`); returns the daemon.

    `list_encdata` makes listxattr show security.encdata, which the real interface
    never does: only for testing that fscsync copes with both.

    The daemon's stderr goes to `log`, or to an anonymous file that is shown
    in the MountError if the mount fails.
    """
    ready_r, ready_w = os.pipe()
    pass_fds = [ready_w]
    argv = [sys.executable, "-m", "fscsync.testfs", "mount", "--foreground",
            "--ready-fd", str(ready_w)]
    if key is not None:
        key_r, key_w = os.pipe()
        os.write(key_w, key)
        os.close(key_w)
        pass_fds.append(key_r)
        argv += ["--key", f"/dev/fd/{key_r}"]
    if list_encdata:
        argv.append("--list-encdata")
    argv += ["--", os.fsdecode(backing), os.fsdecode(mountpoint)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
    errors = log if log is not None else tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors, pass_fds=pass_fds, start_new_session=True,
                                env=env)
    finally:
        for fd in pass_fds:
            os.close(fd)
    try:
        ready, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
        if not (ready and os.read(ready_r, 1)):
            proc.kill()
            proc.wait()
            detail = b""
            if log is None:
                errors.seek(0)
                detail = errors.read().strip()
            raise MountError(f"testfs did not mount {os.fsdecode(mountpoint)} "
                             f"(exit {proc.returncode}): {detail.decode(errors='replace')}")
    finally:
        os.close(ready_r)
        if log is None:
            errors.close()
    return proc


def umount(mountpoint: bytes | str, lazy: bool = False) -> None:
    """Unmount a testfs mount; the daemon exits by itself once the mount is gone."""
    argv = ["fusermount3", "-u", *(["-z"] if lazy else []), os.fsdecode(mountpoint)]
    if shutil.which("fusermount3") is None:
        argv = ["umount", *(["-l"] if lazy else []), os.fsdecode(mountpoint)]
    result = subprocess.run(argv, capture_output=True, check=False)
    if result.returncode != 0:
        raise MountError(result.stderr.decode(errors="replace").strip())


def stop(proc: subprocess.Popen[bytes], mountpoint: bytes | str) -> None:
    """Unmount (lazily if busy) and reap the daemon, killing it if it hangs."""
    try:
        umount(mountpoint)
    except MountError:
        if os.path.ismount(mountpoint):
            umount(mountpoint, lazy=True)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def mounted(backing: bytes | str, mountpoint: bytes | str, key: bytes | None = None,
            list_encdata: bool = False) -> Iterator[bytes]:
    """`with mounted(backing, mnt, key) as root:` a view for the duration of the block."""
    proc = start(backing, mountpoint, key, list_encdata=list_encdata)
    try:
        yield os.fsencode(mountpoint)
    finally:
        stop(proc, mountpoint)


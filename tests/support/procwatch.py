"""Acting at the moment a running fscsync holds a given file open (for change-during-
transfer tests)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def when_opened(proc: subprocess.Popen[bytes], path: Path, action: Callable[[], object],
                pids: Callable[[], Iterable[int]] | None = None, timeout: float = 30) -> bool:
    """Run `action` as soon as one of `pids()` (default: proc itself) holds `path` open;
    False if none did before proc ended or the timeout."""
    want = str(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in (pids() if pids is not None else (proc.pid,)):
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for n in names:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{n}") == want:
                        action()
                        return True
                except OSError:
                    continue
        time.sleep(0.001)
    return False

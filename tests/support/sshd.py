"""A throwaway OpenSSH server on 127.0.0.1 for end-to-end tests over ssh.

Remote syncs must go through a real sshd (real argv quoting, a minimal PATH,
no tty), so tests start one with its own host key, config and authorized key
instead of touching the machine's sshd.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0

CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
LogLevel VERBOSE
"""


class SshdError(RuntimeError):
    """sshd could not be started; the message carries its log."""


def missing_prerequisite() -> str | None:
    """Why this machine cannot run the test sshd, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (sshd logs in as root)"
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("ssh")):
        if tool is None or not os.access(tool, os.X_OK):
            return f"openssh not installed ({tool or 'ssh/ssh-keygen'} missing)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fscsync-test",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)


@dataclass
class Sshd:
    """A running test sshd and how to reach it (`rsh` is ready for `-e`)."""

    host: str
    port: int
    key: Path
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def ssh_argv(self) -> list[str]:
        """ssh with this server's port and key, never prompting or recording host keys."""
        return ["ssh", "-p", str(self.port), "-i", str(self.key),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]

    @property
    def rsh(self) -> str:
        return shlex.join(self.ssh_argv)

    @property
    def remote_fscsync(self) -> str:
        """Absolute path of the console script: the remote shell's PATH lacks the venv.

        Prefers the script beside the running interpreter (the venv under `make test`),
        else the one on PATH (`make install` links it into /usr/local/bin).
        """
        beside = Path(sys.executable).parent / "fscsync"
        if beside.exists():
            return str(beside)
        return shutil.which("fscsync") or str(beside)

    def run(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        """Run a shell command on the server as root, capturing output."""
        return subprocess.run([*self.ssh_argv, self.host, command], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def log(self) -> str:
        return (self.workdir / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_listening(server: Sshd, deadline: float) -> None:
    """Return once the port accepts connections; raise with sshd's log if it never does."""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SshdError(f"sshd exited with {server.proc.returncode}:\n{server.log()}")
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise SshdError(f"sshd not listening on port {server.port} after {START_TIMEOUT}s:\n"
                    f"{server.log()}")


def _launch(workdir: Path, key: Path) -> Sshd:
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(CONFIG.format(port=port, dir=workdir))
    with open(workdir / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)
    server = Sshd(host="127.0.0.1", port=port, key=key, workdir=workdir, proc=proc)
    _wait_listening(server, time.monotonic() + START_TIMEOUT)
    return server


def start_sshd(workdir: Path, attempts: int = 3) -> Sshd:
    """Start sshd in workdir (keys, config, log live there); retry if the port got taken."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    _keygen(workdir / "host_ed25519")
    key = workdir / "client_ed25519"
    _keygen(key)
    (workdir / "authorized_keys").write_bytes(key.with_suffix(".pub").read_bytes())
    for _ in range(attempts - 1):
        try:
            return _launch(workdir, key)
        except SshdError as e:
            if "Address already in use" not in str(e):
                raise
    return _launch(workdir, key)

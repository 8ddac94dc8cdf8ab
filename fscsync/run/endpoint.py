"""Where a path lives: `[user@]host:path` is remote, anything else is local (rsync's rule:
a colon before the first slash makes it remote); and so which side sends."""

from __future__ import annotations

from collections import namedtuple

from fscsync.errors import NoDaemonMode, UsageError, escape
from fscsync.record import Record


class Endpoint(namedtuple("Endpoint", "path host user", defaults=(None, None))):
    """A path, and the host (and login) it lives on; host None is local."""

    __slots__ = ()

    @property
    def remote(self) -> bool:
        return self.host is not None

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else str(self.host)

    def __str__(self) -> str:
        return f"{self.login}:{escape(self.path)}" if self.remote else escape(self.path)


def parse_endpoint(arg: bytes) -> Endpoint:
    """The endpoint an argument names. rsync's daemon forms (`host::module`,
    `rsync://host/module`) fail at once (exit 5: fscsync has no daemon to connect to),
    as does a host that the remote shell would read as an option (`-oProxyCommand=...`)."""
    colon = arg.find(b":")
    slash = arg.find(b"/")
    if arg[:8].lower() == b"rsync://" or (colon > 0 and arg[colon + 1:colon + 2] == b":"
                                           and not 0 <= slash < colon):
        raise NoDaemonMode(arg=arg)
    if colon <= 0 or (0 <= slash < colon):
        return Endpoint(arg)
    where = arg[:colon].decode("utf-8", "surrogateescape")
    path = arg[colon + 1 :]
    user = None
    if "@" in where:
        user, _, where = where.rpartition("@")
    if where.startswith("[") and where.endswith("]"):
        where = where[1:-1]
    if where.startswith("-"):
        raise UsageError("Invalid remote host: hostnames may not start with '-'.")
    return Endpoint(path if path else b".", host=where, user=user or None)


class Plan(Record):
    """Who plays which role, decided from the endpoints (rsync's rules)."""

    client_sends: bool
    peer: Endpoint | None
    sources: list[bytes]
    dest: bytes


def plan(sources: list[Endpoint], dest: Endpoint) -> Plan:
    remote_src = [s for s in sources if s.remote]
    if dest.remote and remote_src:
        raise UsageError("The source and destination cannot both be remote.")
    if dest.remote:
        return Plan(True, dest, [s.path for s in sources], dest.path)
    if remote_src:
        if len(remote_src) != len(sources) or len({(s.host, s.user) for s in sources}) != 1:
            raise UsageError("all remote sources must be on the same host")
        return Plan(False, sources[0], [s.path for s in sources], dest.path)
    return Plan(True, None, [s.path for s in sources], dest.path)

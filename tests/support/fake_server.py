"""A scripted fscsync server, for tests of the client against a hostile peer.

tests/support/peer.py plays a hostile client against the real server; this plays the
server against the real client. The client starts it as its remote shell:

    fscsync -e "python fake_server.py" host:src/ dst/     (a pull: it plays the sender)
    fscsync -e "python fake_server.py" src/ host:dst/     (a push: it plays the receiver)

with the script in the environment variable FSCSYNC_FAKE_SERVER, a JSON list of
steps run after the opening (HELLO both ways, SETUP, READY):

    {"do": "frame", "type": "LOG", "json": {...}}  one frame, payload JSON
    {"do": "frame", "type": "FATAL", "text": "..."}  one frame, payload text as UTF-8
    {"do": "files", "files": {"name": "data"}, "io_error": false}
        a sender's file list: the root and these regular files
    {"do": "serve", "finished": {...}}
        a sender's requests: each file whole in a FILE frame, then FINISHED
    {"do": "receive", "stats": {...}}
        a receiver that wants nothing: reads the client's list, ends with STATS

Frames go through fscsync's own codec (fscsync.wire.protocol.Channel). The remote
shell's arguments (host, program, --server) are ignored. When the steps are done
it waits (a bounded time) for the client to close the connection.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import xxhash

from fscsync.engine import delta, flist
from fscsync.errors import PeerClosed
from fscsync.wire import protocol
from fscsync.wire.protocol import Channel

SCRIPT_ENV = "FSCSYNC_FAKE_SERVER"
T_NEW = 1_600_000_000_000_000_000
WAIT_S = 10.0


def _frame(chan: Channel, step: dict) -> None:
    ftype = getattr(protocol, step["type"])
    if "json" in step:
        protocol.send_json(chan, ftype, step["json"])
    else:
        chan.send(ftype, step.get("text", "").encode("utf-8", "surrogatepass"))


def _files(chan: Channel, step: dict, files: list[bytes]) -> None:
    entries = [flist.Entry(b".", stat.S_IFDIR | 0o755, 0, T_NEW)]
    for name, data in step["files"].items():
        files.append(data.encode())
        entries.append(flist.Entry(name.encode(), stat.S_IFREG | 0o644, len(files[-1]), T_NEW))
    protocol.send_json(chan, protocol.FLIST_START, {"single_file": False})
    chan.send(protocol.FLIST, flist.pack_batch(entries))
    protocol.send_json(chan, protocol.FLIST_END,
                       {"io_error": step.get("io_error", False), "count": len(entries)})


def _serve(chan: Channel, step: dict, files: list[bytes]) -> None:
    while True:
        chan.flush()
        ftype, payload = chan.recv(timeout=WAIT_S)
        if ftype == protocol.REQ:
            idx = delta.Request.decode(payload).idx
            data = files[idx - 1]
            end = delta.encode_end(idx, delta.END_OK, len(data), xxhash.xxh3_128_digest(data))
            chan.send(protocol.FILE, end + data)
        elif ftype == protocol.NOMORE:
            chan.send(protocol.NOMORE_ACK)
        elif ftype == protocol.DONE:
            protocol.send_json(chan, protocol.FINISHED, step["finished"])
            return


def _receive(chan: Channel, step: dict) -> None:
    wanted = protocol.FLIST_END
    while True:
        ftype, _ = chan.recv(timeout=WAIT_S)
        if ftype == protocol.FLIST_END and wanted == ftype:
            chan.send(protocol.NOMORE)
            chan.flush()
            wanted = protocol.NOMORE_ACK
        elif ftype == protocol.NOMORE_ACK and wanted == ftype:
            chan.send(protocol.DONE)
            chan.flush()
            wanted = protocol.FINISHED
        elif ftype == protocol.FINISHED and wanted == ftype:
            protocol.send_json(chan, protocol.STATS, step["stats"])
            return


def main() -> int:
    steps = json.loads(os.environ[SCRIPT_ENV])
    chan = Channel(0, 1)
    protocol.send_hello(chan, "server")
    protocol.recv_hello(chan, "client")
    ftype, _ = chan.recv(timeout=WAIT_S)
    assert ftype == protocol.SETUP, ftype
    chan.send(protocol.READY)
    chan.flush()
    files: list[bytes] = []
    try:
        for step in steps:
            if step["do"] == "frame":
                _frame(chan, step)
            elif step["do"] == "files":
                _files(chan, step, files)
            elif step["do"] == "serve":
                _serve(chan, step, files)
            elif step["do"] == "receive":
                _receive(chan, step)
            chan.flush()
        while True:
            chan.recv(timeout=WAIT_S)
    except PeerClosed:
        return 0


if __name__ == "__main__":
    sys.exit(main())

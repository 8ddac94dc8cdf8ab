"""Command line: `python -m fscsync.testfs {mount,umount,mkpolicy} ...`.

mount [--key FILE] [--list-encdata] BACKING MOUNTPOINT
                                        mount in the background, return once mounted
umount MOUNTPOINT                       unmount (the daemon then exits)
mkpolicy --key FILE [--padding N] DIR   make an empty plain backing dir encrypted

A key file holds exactly the 64 raw bytes of a v2 master key
(e.g. `head -c 64 /dev/urandom > key`).
"""

from __future__ import annotations

import argparse
import os
import sys

from fscsync.testfs.backing import make_encrypted_dir
from fscsync.testfs.model import MASTER_KEY_LEN, MasterKey
from fscsync.testfs.mount import MountError, start, umount


def _read_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read(MASTER_KEY_LEN + 1)
    except OSError as exc:
        raise SystemExit(f"testfs: {path}: {exc.strerror}") from None
    if len(key) != MASTER_KEY_LEN:
        raise SystemExit(f"testfs: {path}: a key file holds exactly {MASTER_KEY_LEN} bytes")
    return key


def _mount(args: argparse.Namespace) -> None:
    key = _read_key(args.key)
    for path in (args.backing, args.mountpoint):
        if not os.path.isdir(path):
            raise SystemExit(f"testfs: {path}: not a directory")
    if args.foreground:
        from fscsync.testfs.fusefs import serve  # loads libfuse: only the daemon needs it

        serve(os.fsencode(args.backing), os.fsencode(args.mountpoint),
              None if key is None else MasterKey(key), args.ready_fd, args.list_encdata)
        return
    log = open(args.log, "ab") if args.log else None
    try:
        start(args.backing, args.mountpoint, key, log, args.list_encdata)
    except MountError as exc:
        raise SystemExit(f"testfs: {exc}") from None


def _umount(args: argparse.Namespace) -> None:
    try:
        umount(args.mountpoint)
    except MountError as exc:
        raise SystemExit(f"testfs: {exc}") from None


def _mkpolicy(args: argparse.Namespace) -> None:
    try:
        make_encrypted_dir(os.fsencode(args.dir), _read_key(args.key), args.padding)
    except OSError as exc:
        raise SystemExit(f"testfs: {args.dir}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"testfs: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fscsync.testfs",
                                     description="fscrypt stand-in test filesystem")
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="serve BACKING on MOUNTPOINT")
    mount.add_argument("--key", help="64-byte master key file (omit for the locked view)")
    mount.add_argument("--foreground", action="store_true", help="serve until unmounted")
    mount.add_argument("--list-encdata", action="store_true",
                       help="list security.encdata in listxattr (the real interface never "
                            "does; for testing both behaviours)")
    mount.add_argument("--log", help="append the daemon's messages to this file")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.add_argument("backing")
    mount.add_argument("mountpoint")
    mount.set_defaults(run=_mount)
    umount = sub.add_parser("umount", help="unmount MOUNTPOINT")
    umount.add_argument("mountpoint")
    umount.set_defaults(run=_umount)
    mkpolicy = sub.add_parser("mkpolicy", help="make an empty backing directory encrypted")
    mkpolicy.add_argument("--key", required=True, help="64-byte master key file")
    mkpolicy.add_argument("--padding", type=int, default=32, choices=(4, 8, 16, 32),
                          help="filename padding of the policy (default 32)")
    mkpolicy.add_argument("dir")
    mkpolicy.set_defaults(run=_mkpolicy)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""fscsync: rsync-style mirroring that also copies fscrypt-encrypted trees without keys."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 6

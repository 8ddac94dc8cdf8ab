#!/usr/bin/env bash
# Restore a tree from the backup server made by nightly-mirror.service into a
# fresh directory, with everything -aHAX keeps (hard links, ACLs, xattrs, and
# encrypted entries as ciphertext + security.encdata).
#
# Settings come from the environment:
#   BACKUP_HOST     the backup server (default backup01; empty: SRC is a local path,
#                   e.g. a backup disk mounted here)
#   SRC             the tree on the backup server (default /srv/mirror/home/);
#                   a trailing slash restores its contents, as in rsync
#   DEST            where to restore (default /srv/restore/home-YYYYmmdd-HHMMSS);
#                   must not exist or be empty unless FORCE=1
#   FORCE=1         restore into a non-empty DEST, overwriting what differs
#   DRY_RUN=1       only show what would be restored (fscsync -n -i)
#   FSCSYNC         the fscsync command (default: fscsync on PATH)
#   REMOTE_FSCSYNC  fscsync's path on the backup server, if not on its PATH
#   FSCSYNC_RSH     the remote shell (read by fscsync itself), e.g. "ssh -p 2222"
#
# Examples:
#   SRC=/srv/mirror/home/ann/ DEST=/home/ann.restored ./restore.sh
#   DRY_RUN=1 ./restore.sh
#
# Encrypted home directories come back encrypted: restore as root onto a
# filesystem with the encdata interface and unlock them with the usual key.
# Restored onto a plain filesystem they are again an encrypted backup (ciphertext
# with security.encdata stored as an ordinary xattr), not readable files.
set -euo pipefail

BACKUP_HOST=${BACKUP_HOST-backup01}
SRC=${SRC:-/srv/mirror/home/}
DEST=${DEST:-/srv/restore/home-$(date +%Y%m%d-%H%M%S)}
read -r -a fscsync <<<"${FSCSYNC:-fscsync}"

source_arg=$SRC
if [[ -n "$BACKUP_HOST" ]]; then
    source_arg=$BACKUP_HOST:$SRC
fi

if [[ -d "$DEST" && -n "$(ls -A "$DEST")" && "${FORCE:-0}" != 1 && "${DRY_RUN:-0}" != 1 ]]; then
    echo "restore.sh: $DEST is not empty; set FORCE=1 to restore into it anyway" >&2
    exit 1
fi

opts=(-aHAX --numeric-ids)
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    opts+=(-n -i)
fi
if [[ -n "${REMOTE_FSCSYNC:-}" ]]; then
    opts+=(--remote-fscsync "$REMOTE_FSCSYNC")
fi

echo "restore.sh: $source_arg -> $DEST" >&2
status=0
"${fscsync[@]}" "${opts[@]}" "$source_arg" "$DEST" || status=$?
case $status in
    0) echo "restore.sh: done" >&2 ;;
    23 | 24) echo "restore.sh: finished with some files not restored (exit $status)" >&2 ;;
    *) echo "restore.sh: fscsync failed (exit $status)" >&2 ;;
esac
exit "$status"

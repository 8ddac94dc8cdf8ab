#!/usr/bin/env bash
# Dated snapshots, rsnapshot-style: each run makes SNAPSHOTS/YYYY-mm-dd-HHMMSS with
# the files that did not change hard-linked to the newest earlier snapshot
# (--link-dest), so every snapshot is a complete tree but costs only what changed.
# Then only the newest KEEP snapshots are kept. Encrypted (fscrypt) trees work the
# same, key-less: their ciphertext is linked when its encdata is identical, which is
# the only way ciphertext can be deduplicated.
#
# Settings come from the environment:
#   SRC            what to snapshot (default /home/); may be HOST:/path/ (pulled over
#                  ssh: the snapshots, and so the --link-dest DIR, are on this machine)
#   SNAPSHOTS      the directory holding the snapshots (default /srv/snapshots/home)
#   KEEP           how many snapshots to keep, the new one included (default 14)
#   STAMP          the new snapshot's name (default: the date and time, as above)
#   FSCSYNC        the fscsync command (default: fscsync on PATH)
#   FSCSYNC_OPTS   more options, word-split (e.g. "--exclude-from=/etc/fscsync/excludes.txt")
#
# A run builds STAMP.partial and renames it to STAMP only when fscsync succeeded
# (exit 0, or 24: files vanished while the tree was read), so a failed run never
# counts as a snapshot; its leftover is removed by the next run. SNAPSHOTS/latest
# is a symlink to the newest snapshot.
set -euo pipefail

SRC=${SRC:-/home/}
SNAPSHOTS=${SNAPSHOTS:-/srv/snapshots/home}
KEEP=${KEEP:-14}
STAMP=${STAMP:-$(date +%Y-%m-%d-%H%M%S)}
read -r -a fscsync <<<"${FSCSYNC:-fscsync}"
read -r -a extra <<<"${FSCSYNC_OPTS:-}"

if ! [[ "$KEEP" =~ ^[1-9][0-9]*$ ]]; then
    echo "snapshot-rotation.sh: KEEP must be a positive number, not '$KEEP'" >&2
    exit 2
fi
mkdir -p "$SNAPSHOTS"
cd "$SNAPSHOTS"

# Finished snapshots, oldest first (dated names sort by time).
snapshots() {
    find . -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
        -regex '\./[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}' -printf '%f\n' | sort
}

if [[ -e "$STAMP" ]]; then
    echo "snapshot-rotation.sh: $SNAPSHOTS/$STAMP exists already" >&2
    exit 1
fi
find . -mindepth 1 -maxdepth 1 -type d -name '*.partial' -exec rm -rf {} +

previous=$(snapshots | tail -n 1)
args=(-aHAX --numeric-ids "${extra[@]}")
if [[ -n "$previous" ]]; then
    args+=("--link-dest=../$previous")   # relative to the new snapshot, as in rsync
fi

status=0
"${fscsync[@]}" "${args[@]}" "$SRC" "$STAMP.partial/" || status=$?
if [[ $status -ne 0 && $status -ne 24 ]]; then
    echo "snapshot-rotation.sh: fscsync failed (exit $status); $STAMP.partial is not a snapshot" >&2
    exit "$status"
fi
mv "$STAMP.partial" "$STAMP"
ln -sfn "$STAMP" latest

count=$(snapshots | wc -l)
if (( count > KEEP )); then
    snapshots | head -n "$((count - KEEP))" | while read -r old; do
        rm -rf -- "$old"
    done
fi
echo "snapshot $SNAPSHOTS/$STAMP made${previous:+ (unchanged files linked to $previous)}; $(snapshots | wc -l) kept"

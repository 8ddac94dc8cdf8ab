#!/usr/bin/env bash
# fscsync in one minute (`make demo`): mirror a small tree, change it, mirror it again.
#
# Builds an example tree (directories, files, a symlink, a hard link, a name that
# is not UTF-8, a 1 MiB file), mirrors it with `fscsync -aHAX -i --stats`, changes
# one 4 KiB block of the big file plus a small file, and mirrors again: the second
# run sends only the changed block. Nothing outside the demo directory is touched.
#
#   DEMO_DIR  where to work (default: a new /tmp/fscsync-demo.XXXXXX); its src/ and
#             mirror/ are recreated, anything else in it is left alone
#   FSCSYNC   the fscsync command (default: .venv/bin/fscsync of this checkout if
#             present, else python3 -m fscsync)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${FSCSYNC:-}" ]]; then
    read -r -a fscsync <<<"$FSCSYNC"
elif [[ -x "$repo/.venv/bin/fscsync" ]]; then
    fscsync=("$repo/.venv/bin/fscsync")
else
    fscsync=(python3 -m fscsync)
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ -n "${DEMO_DIR:-}" ]]; then
    work=$DEMO_DIR
    mkdir -p "$work"
    rm -rf "$work/src" "$work/mirror"
else
    work=$(mktemp -d /tmp/fscsync-demo.XXXXXX)
fi
src=$work/src
mirror=$work/mirror

step() { printf '\n== %s\n' "$*"; }

step "building an example tree in $src"
mkdir -p "$src/docs" "$src/data" "$src/photos/2024" "$src/bin"
printf 'fscsync demo\n' >"$src/docs/README"
printf 'line %s\n' $(seq 1 200) >"$src/docs/notes.txt"
printf 'caf\xe9 in Latin-1\n' >"$src/docs/caf"$'\xe9'".txt"      # a non-UTF-8 name
printf '#!/bin/sh\necho hello\n' >"$src/bin/hello"
chmod 0750 "$src/bin/hello"
head -c $((1024 * 1024)) /dev/urandom >"$src/data/big.bin"
ln -s ../docs/README "$src/data/readme-link"                        # a symlink
ln "$src/docs/notes.txt" "$src/data/notes-hardlink.txt"             # a hard link
if command -v setfattr >/dev/null; then                              # an xattr, if supported
    setfattr -n user.demo -v "kept by -X" "$src/docs/README" 2>/dev/null || true
fi
# Old times everywhere, so the change below is newer whatever the clock resolution.
find "$src" -exec touch -h -d '2024-01-01 12:00:00' {} +

step "first run: everything is new"
"${fscsync[@]}" -aHAX -i --stats "$src/" "$mirror/" | tee "$work/run1.log"

step "changing one 4 KiB block in the middle of data/big.bin, appending to docs/notes.txt"
head -c 4096 /dev/urandom | dd of="$src/data/big.bin" bs=4096 seek=128 conv=notrunc status=none
printf 'line 201\n' >>"$src/docs/notes.txt"      # in place: the hard link stays

step "second run: only the changes travel"
"${fscsync[@]}" -aHAX -i --stats "$src/" "$mirror/" | tee "$work/run2.log"

step "summary"
if diff -r "$src" "$mirror" >/dev/null; then
    echo "mirror matches the source (diff -r): yes"
else
    echo "mirror matches the source (diff -r): NO" >&2
    exit 1
fi
links=$(stat -c %h "$mirror/docs/notes.txt")
echo "hard link kept: $([[ $links -eq 2 ]] && echo yes || echo no) (link count $links)"
echo "symlink kept: $(readlink "$mirror/data/readme-link")"
stat_of() { sed -n "s/^$1: \\(.*\\)/\\1/p" "$2"; }
echo "first run:  literal data $(stat_of 'Literal data' "$work/run1.log")," \
     "matched $(stat_of 'Matched data' "$work/run1.log")"
echo "second run: literal data $(stat_of 'Literal data' "$work/run2.log")," \
     "matched $(stat_of 'Matched data' "$work/run2.log")"
echo "the demo tree stays in $work (rm -rf it when done)"

#!/usr/bin/env bash
# The encrypted round trip (`make demo-encrypted`), on the project's test filesystem.
#
# No kernel here has the key-less ciphertext interface, so fscsync.testfs stands in
# for one: a FUSE filesystem over a backing directory, showing either the locked
# view (encoded names, ciphertext via O_CIPHERTEXT, security.encdata) or, given the
# master key, the unlocked view (plaintext).
#
#   1. make a master key and an encrypted directory "vault" in backing A
#   2. write a plaintext tree into it through an unlocked mount of A
#   3. mount A locked, mount an empty backing B locked, and fscsync -a A -> B:
#      ciphertext and encdata travel, no key is involved
#   4. mount B unlocked with the key and diff -r it against the original plaintext
#   5. the same through a backup server: mirror locked A to a plain directory (the
#      "encrypted backup" a stock kernel keeps: ciphertext + security.encdata as an
#      ordinary xattr), restore that into a locked mount of an empty backing C,
#      unlock C and diff -r again
#
# Needs root (security.* xattrs, FUSE with allow_other), /dev/fuse and fuse3, and
# the testfs Python packages (cryptography, mfusepy): `make install` sets them up.
#
#   DEMO_DIR  where to work (default: a new /tmp/fscsync-encdemo.XXXXXX); its
#             contents are recreated
#   PYTHON    the Python with fscsync and its testfs extras (default: .venv/bin/python
#             of this checkout if present, else python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then
    python=$PYTHON
elif [[ -x "$repo/.venv/bin/python" ]]; then
    python=$repo/.venv/bin/python
else
    python=python3
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fscsync=("$python" -m fscsync)
testfs=("$python" -m fscsync.testfs)

if [[ $(id -u) -ne 0 ]]; then
    echo "demo-encrypted.sh: needs root (writing security.encdata needs CAP_SYS_ADMIN)" >&2
    exit 1
fi
if [[ ! -e /dev/fuse ]]; then
    echo "demo-encrypted.sh: /dev/fuse is missing (modprobe fuse, or run the container" \
         "with --device /dev/fuse)" >&2
    exit 1
fi

if [[ -n "${DEMO_DIR:-}" ]]; then
    work=$DEMO_DIR
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/fscsync-encdemo.XXXXXX)
fi
mnt_a=$work/mnt-a
mnt_b=$work/mnt-b
mnt_c=$work/mnt-c
mounted=()

unmount() {
    local mp=$1 i
    "${testfs[@]}" umount "$mp" 2>/dev/null || fusermount3 -u -z "$mp" 2>/dev/null || true
    for i in "${!mounted[@]}"; do
        [[ ${mounted[$i]} == "$mp" ]] && unset "mounted[$i]"
    done
    return 0
}
cleanup() {
    local mp
    for mp in "${mounted[@]}"; do
        "${testfs[@]}" umount "$mp" 2>/dev/null || fusermount3 -u -z "$mp" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_view() {   # mount_view BACKING MOUNTPOINT [KEYFILE]
    "${testfs[@]}" mount ${3:+--key "$3"} "$1" "$2"
    mounted+=("$2")
}

step() { printf '\n== %s\n' "$*"; }
encdata() { "$python" -c 'import os, sys
print(os.getxattr(os.fsencode(sys.argv[1]), "security.encdata", follow_symlinks=False).decode())
' "$1"; }

make_tree() {    # the plaintext the round trip must give back, byte for byte
    local d=$1
    mkdir -p "$d/docs/drafts" "$d/photos" "$d/empty"
    printf 'the plan, in clear text\n' >"$d/docs/plan.txt"
    printf 'line %s\n' $(seq 1 500) >"$d/docs/drafts/long.txt"
    printf 'caf\xe9\n' >"$d/docs/caf"$'\xe9'".txt"                  # a non-UTF-8 name
    printf 'x%.0s' $(seq 1 10000) >"$d/photos/not-really-a-photo.raw"
    : >"$d/docs/empty-file"
    ln -s docs/plan.txt "$d/plan-link"                               # encrypted target
    ln "$d/docs/plan.txt" "$d/docs/plan-hardlink.txt"                # a hard link
    chmod 0640 "$d/docs/plan.txt"
    chmod 0700 "$d/photos"
}

fail() { echo "demo-encrypted.sh: $*" >&2; exit 1; }

check_plaintext() {   # check_plaintext MOUNTPOINT: the unlocked view matches the original
    local m=$1
    diff -r "$work/expected" "$m/vault" || fail "$m/vault differs from the original"
    cmp "$m/README" <(printf 'not encrypted\n') || fail "$m/README differs"
    [[ $(readlink "$m/vault/plan-link") == docs/plan.txt ]] || fail "symlink target in $m"
    [[ $(stat -c %h "$m/vault/docs/plan.txt") -eq 2 ]] || fail "hard link lost in $m"
    [[ $(stat -c %a "$m/vault/docs/plan.txt") == 640 ]] || fail "file mode differs in $m"
    [[ $(stat -c %a "$m/vault/photos") == 700 ]] || fail "directory mode differs in $m"
}

step "setting up in $work"
for mp in "$mnt_a" "$mnt_b" "$mnt_c"; do
    if mountpoint -q "$mp"; then unmount "$mp"; fi
done
rm -rf "$work/backing-a" "$work/backing-b" "$work/backing-c" "$work/plain-backup" \
    "$work/expected" "$mnt_a" "$mnt_b" "$mnt_c"
mkdir -p "$work/backing-a/vault" "$work/backing-b" "$work/backing-c" "$mnt_a" "$mnt_b" \
    "$mnt_c"
key=$work/master.key
head -c 64 /dev/urandom >"$key"
chmod 0600 "$key"
"${testfs[@]}" mkpolicy --key "$key" "$work/backing-a/vault"
echo "backing-a/vault is now an encrypted directory (fscrypt v2 policy, key $key)"

step "writing the plaintext tree through the unlocked view of A"
make_tree "$work/expected"
mount_view "$work/backing-a" "$mnt_a" "$key"
make_tree "$mnt_a/vault"
printf 'not encrypted\n' >"$mnt_a/README"
ls -l "$mnt_a/vault"
unmount "$mnt_a"

step "the locked view of A: encoded names, sizes rounded up to 4096, security.encdata"
mount_view "$work/backing-a" "$mnt_a"
ls -lb "$mnt_a/vault" | sed -n 1,4p
first=$(find "$mnt_a/vault" -type f -size +0 -print -quit)
echo "one file: st_size $(stat -c %s "$first"), security.encdata $(encdata "$first")"
if cat "$first" >/dev/null 2>&1; then
    fail "reading a locked file without O_CIPHERTEXT worked"
fi
echo "cat of a locked file fails, as on a real kernel:" \
     "$(cat "$first" 2>&1 >/dev/null | sed 's/.*: //')"

step "fscsync -aH from locked A to locked B: no key anywhere"
mount_view "$work/backing-b" "$mnt_b"
"${fscsync[@]}" -aH -i --stats "$mnt_a/" "$mnt_b/"

step "unlocking B with the key and comparing with the original plaintext"
unmount "$mnt_b"
mount_view "$work/backing-b" "$mnt_b" "$key"
check_plaintext "$mnt_b"
ls -l "$mnt_b/vault"
echo "B matches the original plaintext"

step "via a backup server: locked A -> plain directory (the encrypted backup layout)"
"${fscsync[@]}" -aH "$mnt_a/" "$work/plain-backup/"
plain_file=$(find "$work/plain-backup/vault" -type f -size +0 -print -quit)
echo "a file there: $(stat -c %s "$plain_file") bytes of ciphertext, and the ordinary xattr"
echo "security.encdata = $(encdata "$plain_file")"

step "restoring the plain backup into locked C, then unlocking C"
mount_view "$work/backing-c" "$mnt_c"
"${fscsync[@]}" -aH "$work/plain-backup/" "$mnt_c/"
unmount "$mnt_c"
mount_view "$work/backing-c" "$mnt_c" "$key"
check_plaintext "$mnt_c"
echo "C matches the original plaintext too"
echo
echo "round trip OK, directly and through a plain backup: names, contents, symlink,"
echo "hard link and modes are identical"
echo "(work directory: $work; the mounts are removed on exit)"

#!/bin/bash
# A stand-in `zfs` for fast host tests of zibd's engine logic (the proof with real OpenZFS is
# the guest suite). State lives in $FAKE_ZFS_DIR: one file per snapshot/bookmark holding
# "guid createtxg creation", and data/<snap> holding the bytes `send` prints.
# Knobs: FAKE_ZFS_SIZE (bytes per snapshot stream), FAKE_ZFS_RANDOM=1 (send prints fresh
# random bytes every time: a non-reproducible stream), FAKE_ZFS_FAIL_AFTER=N (send prints N
# bytes then fails), FAKE_ZFS_ESTIMATE (the size `send -nvP` reports instead of the real one),
# FAKE_ZFS_WRITTEN (what `get written@<snap>` reports; the file written/<dataset> overrides it;
# default the stream size: every run has changes), FAKE_ZFS_LOG (append each command line),
# FAKE_ZFS_INPUT (a file: every snapshot's stream is its bytes, linked, not generated; the
# benchmark's input).
# `list -H -o name DS` (no -t): a dataset exists while it has a snapshot.
set -euo pipefail
D=${FAKE_ZFS_DIR:?FAKE_ZFS_DIR not set}
mkdir -p "$D/snap" "$D/book" "$D/data"
[ -n "${FAKE_ZFS_LOG:-}" ] && echo "$*" >> "$FAKE_ZFS_LOG"
enc() { printf '%s' "$1" | sed 's#/#%2F#g'; }
txg() { local n; n=$(cat "$D/txg" 2>/dev/null || echo 100); n=$((n+1)); echo $n > "$D/txg"; echo $n; }
guid() { od -An -N7 -tu8 /dev/urandom | tr -d ' '; }
cmd=$1; shift
case "$cmd" in
  snapshot)
    full=$1; f="$D/snap/$(enc "$full")"
    [ -e "$f" ] && { echo "cannot create snapshot '$full': dataset already exists" >&2; exit 1; }
    echo "$(guid) $(txg) $(date +%s)" > "$f"
    if [ -n "${FAKE_ZFS_INPUT:-}" ]; then ln -s "$FAKE_ZFS_INPUT" "$D/data/$(enc "$full")"
    else head -c "${FAKE_ZFS_SIZE:-300000}" /dev/urandom > "$D/data/$(enc "$full")"; fi ;;
  bookmark)
    src=$1; dst=$2; [ -e "$D/snap/$(enc "$src")" ] || { echo "no such snapshot $src" >&2; exit 1; }
    read -r g t c < "$D/snap/$(enc "$src")"; echo "$g $t $c" > "$D/book/$(enc "$dst")" ;;
  destroy)
    full=$1
    case "$full" in
      *#*) f="$D/book/$(enc "$full")"
        [ -e "$f" ] || { echo "bookmark '$full' does not exist" >&2; exit 1; }
        rm -f "$f" ;;
      *) f="$D/snap/$(enc "$full")"
        [ -e "$f" ] || { echo "could not find any snapshots to destroy; check snapshot names." >&2; exit 1; }
        rm -f "$f" "$D/data/$(enc "$full")" ;;
    esac ;;
  list)
    kind=""; ds=""
    while [ $# -gt 0 ]; do case "$1" in -t) kind=$2; shift 2;; -o|-s|-d) shift 2;; -H|-p) shift;; *) ds=$1; shift;; esac; done
    if [ -z "$kind" ]; then
      compgen -G "$D/snap/$(enc "$ds")@*" > /dev/null && { echo "$ds"; exit 0; }
      echo "cannot open '$ds': dataset does not exist" >&2; exit 1
    fi
    dir=snap; sep=@; [ "$kind" = bookmark ] && { dir=book; sep='#'; }
    for f in "$D/$dir"/*; do
      [ -e "$f" ] || continue
      name=$(basename "$f" | sed 's#%2F#/#g')
      case "$name" in "$ds$sep"*) read -r g t c < "$f"; printf '%s\t%s\t%s\t%s\n' "$name" "$g" "$t" "$c";; esac
    done | sort -t$'\t' -k3 -n ;;
  send)
    est=0; last=""
    for a in "$@"; do case "$a" in -nvP) est=1;; *) last=$a;; esac; done
    data="$D/data/$(enc "$last")"
    [ -e "$data" ] || { echo "could not find snapshot $last" >&2; exit 1; }
    size=$(stat -L -c %s "$data")
    if [ $est = 1 ]; then e=${FAKE_ZFS_ESTIMATE:-$size}; printf 'full\t%s\t%s\nsize\t%s\n' "$last" "$e" "$e"; exit 0; fi
    if [ -n "${FAKE_ZFS_FAIL_AFTER:-}" ]; then head -c "$FAKE_ZFS_FAIL_AFTER" "$data"; echo "fake zfs: send broke off" >&2; exit 1; fi
    if [ "${FAKE_ZFS_RANDOM:-0}" = 1 ]; then head -c "$size" /dev/urandom; else cat "$data"; fi ;;
  get)
    # Only `get -H -p -o value written@<snap> <ds>`.
    [ "$1 $2 $3 $4" = "-H -p -o value" ] || { echo "fake zfs: unsupported get $*" >&2; exit 2; }
    prop=$5; ds=$6
    case "$prop" in
      written@*) snap=${prop#written@}
        [ -e "$D/snap/$(enc "$ds@$snap")" ] || { echo "cannot open '$ds@$snap': snapshot does not exist" >&2; exit 1; }
        w="$D/written/$(enc "$ds")"
        if [ -e "$w" ]; then cat "$w"; else echo "${FAKE_ZFS_WRITTEN:-${FAKE_ZFS_SIZE:-300000}}"; fi ;;
      *) echo "fake zfs: unsupported property $prop" >&2; exit 2 ;;
    esac ;;
  *) echo "fake zfs: unsupported command $cmd" >&2; exit 2 ;;
esac

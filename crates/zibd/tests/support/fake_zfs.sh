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
# User holds: hold/<snapshot> lists its tags, one a line; a held snapshot cannot be destroyed.
# A growing dataset: FAKE_ZFS_FULL_SIZE (bytes of a full stream of a snapshot taken now, kept
# in full/<snap>; FAKE_ZFS_SIZE stays the incremental's), FAKE_ZFS_HEADER=1 (each stream starts
# with a zfs send begin record naming the snapshot's and the base's GUIDs, as restore checks),
# ZIB_TEST_NOW (Unix seconds: the creation time of a snapshot taken now, as zibd's clock).
# A slow send: while the file slow/<dataset> exists, `send` of that dataset's snapshots streams
# 16 KiB every 0.2 s (a test keeps a run busy, and it still stops at a safe point when cancelled).
# Restore: `receive ... TARGET` marks TARGET received and becomes (exec) a `cat` of its stdin
# to recv.N (N = the receive's number, from 1), so killing it stops the reader itself;
# while the file paused-receive exists, a receive waits before it reads anything (its input
# backs up into zibd); `receive -A` succeeds; `mount` succeeds on a dataset that exists and is
# not mounted yet (as zfs, it fails on one that is; `get mounted` tells which); `get` of
# receive_resume_token, encryption or keystatus prints "-", of type "filesystem" (or "volume"
# for a target that received a volume's stream: such a receive refuses the filesystem-only
# -o/-x properties and its target does not mount, as with real zfs).
# FAKE_ZFS_RECEIVE_SNAPSHOTS=1: the receive reads the whole stream first (not exec), then, as
# zfs does, makes TARGET@<snapshot> with the GUID its begin record names (FAKE_ZFS_HEADER's
# streams), the name that of the source snapshot of that GUID. `destroy -r DS` removes a
# received DS and its snapshots (a drill's).
# `list -H -o name DS` (no -t): a dataset exists while it has a snapshot or was received.
# Trees: fs/<dataset> (an empty file) makes a filesystem that `list -r -t filesystem,volume
# -o name ROOT` shows (the root and what is below it, by name; a missing root "does not
# exist"); gone/<dataset> marks one destroyed: `snapshot` of it fails as zfs's does.
set -euo pipefail
D=${FAKE_ZFS_DIR:?FAKE_ZFS_DIR not set}
mkdir -p "$D/snap" "$D/book" "$D/data" "$D/hold" "$D/full" "$D/slow" "$D/received" "$D/fs" "$D/gone"
[ -n "${FAKE_ZFS_LOG:-}" ] && echo "$*" >> "$FAKE_ZFS_LOG"
enc() { printf '%s' "$1" | sed 's#/#%2F#g'; }
# Under a lock: concurrent runs (the daemon runs several jobs at once) read and wrote the
# counter unlocked, so it could go back, and two snapshots of one dataset could share a
# createtxg (real ZFS never does), which leaves "the newest snapshot" undefined.
txg() { local n; { flock 9; n=$(cat "$D/txg" 2>/dev/null || echo 100); n=$((n+1)); echo $n > "$D/txg"; } 9>"$D/txg.lock"; echo $n; }
guid() { od -An -N7 -tu8 /dev/urandom | tr -d ' '; }
cmd=$1; shift
case "$cmd" in
  snapshot)
    full=$1; f="$D/snap/$(enc "$full")"
    [ -e "$D/gone/$(enc "${full%%@*}")" ] && { echo "cannot open '${full%%@*}': dataset does not exist" >&2; exit 1; }
    [ -e "$f" ] && { echo "cannot create snapshot '$full': dataset already exists" >&2; exit 1; }
    echo "$(guid) $(txg) ${ZIB_TEST_NOW:-$(date +%s)}" > "$f"
    if [ -n "${FAKE_ZFS_INPUT:-}" ]; then ln -s "$FAKE_ZFS_INPUT" "$D/data/$(enc "$full")"
    else head -c "${FAKE_ZFS_SIZE:-300000}" /dev/urandom > "$D/data/$(enc "$full")"; fi
    [ -n "${FAKE_ZFS_FULL_SIZE:-}" ] && head -c "$FAKE_ZFS_FULL_SIZE" /dev/urandom > "$D/full/$(enc "$full")"
    true ;;
  bookmark)
    src=$1; dst=$2; [ -e "$D/snap/$(enc "$src")" ] || { echo "no such snapshot $src" >&2; exit 1; }
    read -r g t c < "$D/snap/$(enc "$src")"; echo "$g $t $c" > "$D/book/$(enc "$dst")" ;;
  destroy)
    if [ "$1" = -r ]; then
      ds=$2; r="$D/received/$(enc "$ds")"
      [ -e "$r" ] || { echo "cannot open '$ds': dataset does not exist" >&2; exit 1; }
      rm -f "$r" "$D/snap/$(enc "$ds")@"* "$D/mounted/$(enc "$ds")"
      exit 0
    fi
    full=$1
    case "$full" in
      *#*) f="$D/book/$(enc "$full")"
        [ -e "$f" ] || { echo "bookmark '$full' does not exist" >&2; exit 1; }
        rm -f "$f" ;;
      *) f="$D/snap/$(enc "$full")"
        [ -e "$f" ] || { echo "could not find any snapshots to destroy; check snapshot names." >&2; exit 1; }
        [ -s "$D/hold/$(enc "$full")" ] && { echo "cannot destroy snapshot $full: it's being held. Run 'zfs holds -r $full' to see holders." >&2; exit 1; }
        rm -f "$f" "$D/data/$(enc "$full")" "$D/full/$(enc "$full")" "$D/hold/$(enc "$full")" ;;
    esac ;;
  list)
    kind=""; ds=""
    while [ $# -gt 0 ]; do case "$1" in -t) kind=$2; shift 2;; -o|-s|-d) shift 2;; -H|-p|-r) shift;; *) ds=$1; shift;; esac; done
    if [ "$kind" = filesystem,volume ]; then
      [ -e "$D/fs/$(enc "$ds")" ] || { echo "cannot open '$ds': dataset does not exist" >&2; exit 1; }
      ls "$D/fs" | sed 's#%2F#/#g' | while IFS= read -r n; do
        case "$n" in "$ds"|"$ds"/*) echo "$n";; esac
      done
      exit 0
    fi
    if [ -z "$kind" ]; then
      [ -e "$D/fs/$(enc "$ds")" ] && { echo "$ds"; exit 0; }
      compgen -G "$D/snap/$(enc "$ds")@*" > /dev/null && { echo "$ds"; exit 0; }
      [ -e "$D/received/$(enc "$ds")" ] && { echo "$ds"; exit 0; }
      echo "cannot open '$ds': dataset does not exist" >&2; exit 1
    fi
    dir=snap; sep=@; [ "$kind" = bookmark ] && { dir=book; sep='#'; }
    # Only this dataset's files, and no fork per file: with 500 datasets a scan of the whole
    # directory was most of a benchmark's time.
    for f in "$D/$dir/$(enc "$ds")$sep"*; do
      [ -e "$f" ] || continue
      name=${f##*/}; name=${name//%2F//}
      read -r g t c < "$f"; printf '%s\t%s\t%s\t%s\n' "$name" "$g" "$t" "$c"
    done | sort -t$'\t' -k3 -n ;;
  send)
    est=0; last=""; from=""; prev=""
    for a in "$@"; do case "$a" in -nvP) est=1;; *) [ "$prev" = -i ] && from=$a; last=$a;; esac; prev=$a; done
    data="$D/data/$(enc "$last")"
    [ -e "$data" ] || { echo "could not find snapshot $last" >&2; exit 1; }
    [ -z "$from" ] && [ -e "$D/full/$(enc "$last")" ] && data="$D/full/$(enc "$last")"
    size=$(stat -L -c %s "$data")
    if [ $est = 1 ]; then e=${FAKE_ZFS_ESTIMATE:-$size}; printf 'full\t%s\t%s\nsize\t%s\n' "$last" "$e" "$e"; exit 0; fi
    slow="$D/slow/$(enc "${last%@*}")"
    if [ -e "$slow" ]; then
      off=0
      while [ -e "$slow" ] && [ $off -lt $size ]; do
        dd if="$data" bs=16384 skip=$((off / 16384)) count=1 status=none
        off=$((off + 16384)); sleep 0.2
      done
      [ $off -lt $size ] && tail -c +$((off + 1)) "$data"
      exit 0
    fi
    if [ -n "${FAKE_ZFS_FAIL_AFTER:-}" ]; then head -c "$FAKE_ZFS_FAIL_AFTER" "$data"; echo "fake zfs: send broke off" >&2; exit 1; fi
    if [ "${FAKE_ZFS_HEADER:-0}" = 1 ]; then
      # DRR_BEGIN, little-endian: type, length, magic, versioninfo (substream, raw and
      # compressed), creation, DMU_OST_ZFS, flags, toguid, fromguid.
      le() { local v=$1 n=$2 i; for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $(((v >> (8 * i)) & 255)))"; done; }
      read -r tog _ < "$D/snap/$(enc "$last")"; fromg=0
      if [ -n "$from" ]; then
        case "$from" in *#*) read -r fromg _ < "$D/book/$(enc "$from")";; *) read -r fromg _ < "$D/snap/$(enc "$from")";; esac
      fi
      le 0 4; le 0 4; le $((0x2F5BACBAC)) 8; le $((1 | (((1 << 24) | (1 << 22)) << 2))) 8; le 0 8; le 2 4; le 0 4
      le "$tog" 8; le "$fromg" 8
    fi
    if [ "${FAKE_ZFS_RANDOM:-0}" = 1 ]; then head -c "$size" /dev/urandom; else cat "$data"; fi ;;
  hold|release)
    tag=$1; full=$2; h="$D/hold/$(enc "$full")"
    [ -e "$D/snap/$(enc "$full")" ] || { echo "cannot $cmd '$full': dataset does not exist" >&2; exit 1; }
    has=0; [ -e "$h" ] && grep -qxF -- "$tag" "$h" && has=1
    if [ "$cmd" = hold ]; then
      [ $has = 1 ] && { echo "cannot hold snapshot '$full': tag already exists on this dataset" >&2; exit 1; }
      echo "$tag" >> "$h"
    else
      [ $has = 1 ] || { echo "cannot release hold from snapshot '$full': no such tag on this dataset" >&2; exit 1; }
      grep -vxF -- "$tag" "$h" > "$h.new" || true; mv "$h.new" "$h"
    fi ;;
  holds)
    [ "$1" = -H ] || { echo "fake zfs: unsupported holds $*" >&2; exit 2; }; shift
    for full in "$@"; do
      [ -e "$D/snap/$(enc "$full")" ] || { echo "cannot open '$full': dataset does not exist" >&2; exit 1; }
      h="$D/hold/$(enc "$full")"; [ -e "$h" ] || continue
      while read -r tag; do printf '%s\t%s\tWed Dec  2 04:00 2026\n' "$full" "$tag"; done < "$h"
    done ;;
  get)
    # Only `get -H -p -o value written@<snap> <ds>`.
    [ "$1 $2 $3 $4" = "-H -p -o value" ] || { echo "fake zfs: unsupported get $*" >&2; exit 2; }
    prop=$5; ds=$6
    case "$prop" in
      written@*) snap=${prop#written@}
        [ -e "$D/snap/$(enc "$ds@$snap")" ] || { echo "cannot open '$ds@$snap': snapshot does not exist" >&2; exit 1; }
        w="$D/written/$(enc "$ds")"
        if [ -e "$w" ]; then cat "$w"; else echo "${FAKE_ZFS_WRITTEN:-${FAKE_ZFS_SIZE:-300000}}"; fi ;;
      receive_resume_token|encryption|keystatus) echo "-" ;;
      mounted) if [ -e "$D/mounted/$(enc "$ds")" ]; then echo yes; else echo no; fi ;;
      type) if [ -e "$D/vol/$(enc "$ds")" ]; then echo volume; else echo filesystem; fi ;;
      *) echo "fake zfs: unsupported property $prop" >&2; exit 2 ;;
    esac ;;
  receive)
    [ "${1:-}" = -A ] && exit 0
    [ $# -gt 0 ] || { echo "fake zfs: receive needs a target" >&2; exit 2; }
    for a in "$@"; do last=$a; done
    target=${last%%@*}
    : > "$D/received/$(enc "$target")"
    n=$(ls "$D" | grep -c '^recv\.' || true)
    while [ -e "$D/paused-receive" ]; do sleep 0.05; done
    out="$D/recv.$((n + 1))"
    # The begin record first (exactly its bytes): a volume's stream (DMU_OST_ZVOL) refuses the
    # filesystem-only properties, as a zfs receive of one dataset's stream does.
    dd bs=56 count=1 iflag=fullblock status=none > "$out"
    if [ "$(od -An -t u4 -j 32 -N 4 "$out" | tr -d ' ')" = 3 ]; then
      mkdir -p "$D/vol"; : > "$D/vol/$(enc "${last%%@*}")"
      for a in "$@"; do case "$a" in sharenfs|sharesmb|mountpoint|mountpoint=*|canmount|canmount=*)
        echo "cannot receive: property '${a%%=*}' does not apply to datasets of this type" >&2; exit 1;; esac; done
    fi
    [ "${FAKE_ZFS_RECEIVE_SNAPSHOTS:-0}" = 1 ] || exec cat >> "$out"
    cat >> "$out"
    # DRR_BEGIN's toguid: 8 bytes, little-endian, at offset 40.
    tog=$(od -An -j40 -N8 -tu8 "$out" | tr -d ' ')
    [ -n "$tog" ] || exit 0
    for f in "$D/snap"/*; do
      [ -e "$f" ] || continue
      read -r g _ c < "$f"
      [ "$g" = "$tog" ] || continue
      name=$(basename "$f" | sed 's#%2F#/#g')
      echo "$g $(txg) $c" > "$D/snap/$(enc "$target@${name#*@}")"
      break
    done ;;
  mount)
    ds=$1
    [ -e "$D/vol/$(enc "$ds")" ] && { echo "cannot mount '$ds': operation not applicable to datasets of this type" >&2; exit 1; }
    compgen -G "$D/snap/$(enc "$ds")@*" > /dev/null || [ -e "$D/received/$(enc "$ds")" ] \
      || { echo "cannot open '$ds': dataset does not exist" >&2; exit 1; }
    [ -e "$D/mounted/$(enc "$ds")" ] && { echo "cannot mount '$ds': filesystem already mounted" >&2; exit 1; }
    mkdir -p "$D/mounted"; : > "$D/mounted/$(enc "$ds")"
    ;;
  *) echo "fake zfs: unsupported command $cmd" >&2; exit 2 ;;
esac

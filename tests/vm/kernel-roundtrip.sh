#!/usr/bin/env bash
# ThinFast -> Linux dm-thin -> ThinFast, on a real kernel (shared/vm/run-in-vm boots Debian's 6.12
# guest with dm-thin-pool). Not part of CI (it needs the guest kernel downloaded once, ~30 s a run):
#   bash tests/vm/kernel-roundtrip.sh
# 1. thinfast makes a pool, volume v1 gets 16 MiB of random data over NBD, snapshot v1s is taken;
# 2. the guest activates the pool with dmsetup, md5sums both thin devices, writes into v1 (breaking
#    sharing), creates thin 9 by message, and removes everything;
# 3. back here: thin_check, analyze.py and `thinfast pool check` pass, and ThinFast serves the
#    kernel's write and the untouched snapshot.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
shared="$root/../shared"
work=$(mktemp -d /var/tmp/thinfast-kernel-XXXXXX)
trap 'pkill -f "serve $work/pool" 2>/dev/null || true; rm -rf "$work"' EXIT
dotnet build "$root/src/ThinFast.Cli" -c Release -nologo -clp:ErrorsOnly >/dev/null
cli="$root/src/ThinFast.Cli/bin/Release/net10.0/thinfast"

"$cli" pool create "$work/pool" --data-size 64M --block-size 64K >/dev/null
"$cli" volume create "$work/pool" v1 --size 16M >/dev/null
head -c 16M /dev/urandom > "$work/pattern"
"$cli" serve "$work/pool" --socket "$work/s.sock" 2>/dev/null &
for _ in $(seq 50); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
nbdcopy --connections=1 "$work/pattern" "nbd+unix:///v1?socket=$work/s.sock"
kill %1; wait %1 || true
"$cli" volume snapshot "$work/pool" v1 v1s >/dev/null
expected=$(md5sum < "$work/pattern" | cut -d' ' -f1)

out=$(bash "$shared/vm/run-in-vm" --disk "$work/pool/metadata" --disk "$work/pool/data" -- "$root/tests/vm/guest-reads-thinfast-pool.sh" 2>&1)
echo "$out" | grep -E "thin-pool|/dev/mapper" || true
[ "$(echo "$out" | grep -c "$expected")" = 2 ] || { echo "FAIL: the kernel did not read the pattern back from v1 and v1s"; exit 1; }

thin_check -q "$work/pool/metadata"
python3 "$shared/tools/dmthin/analyze.py" "$work/pool/metadata" >/dev/null
"$cli" pool check "$work/pool"
"$cli" serve "$work/pool" --socket "$work/s.sock" 2>/dev/null &
for _ in $(seq 50); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
nbdcopy --connections=1 "nbd+unix:///v1?socket=$work/s.sock" "$work/v1"
nbdcopy --connections=1 "nbd+unix:///v1s?socket=$work/s.sock" "$work/v1s"
kill %1; wait %1 || true
[ "$(dd if="$work/v1" bs=512 skip=256 count=1 2>/dev/null | head -c 17)" = written-by-kernel ] || { echo "FAIL: the kernel's write is not in v1"; exit 1; }
[ "$(md5sum < "$work/v1s" | cut -d' ' -f1)" = "$expected" ] || { echo "FAIL: the snapshot changed"; exit 1; }
echo "PASS: ThinFast -> kernel dm-thin -> ThinFast"

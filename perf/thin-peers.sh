#!/usr/bin/env bash
# ThinFast thin volumes next to the thin/overlay peers, in one run, per
# /work/shared/design/benchmarking.md. Every system serves a writable view of the same raw base
# (non-zero content) over a unix socket, and fio's nbd engine (2 connections x QD16) measures:
#   randread4k    4 KiB random reads through the origin on a fresh volume/overlay (unprovisioned)
#   randwrite4k   4 KiB random writes to provisioned blocks: the whole range is written first
#                 (1 MiB sequential, not measured) on every system
#   firstwrite64k 64 KiB random writes (whole blocks), each block written once, into a fresh
#                 volume/overlay: every write is a first write
# Systems:
#   thinfast     `nbd-thin`: a pool over the base, 64 KiB blocks, data O_DIRECT (durable), the
#                base read through the page cache (ThinFast's default for origins)
#   thinfast-direct  the same with the base read O_DIRECT too (`--origin-direct`)
#   qemu-nbd     qcow2 overlay, cluster_size=64k, --cache=none --aio=io_uring, multi-conn
#                (--shared=0) (durable; O_DIRECT on overlay and base)
#   qsd          qemu-storage-daemon, the same qcow2 overlay O_DIRECT (durable) over the base read
#                through the page cache (cache.direct=off on the base node only): qemu's
#                configuration closest to ThinFast's default
#   nbdkit-cow   nbdkit file plugin + cow filter, cow-block-size=64K (NOT durable: the overlay is
#                a page-cached temp file and flush is a no-op)
#   nbdkit-null  no I/O at all: the NBD transport ceiling
# A fresh server and a fresh pool/overlay for every workload. Servers on CPU1, fio on CPU0, every
# server stopped by its PID. Prints every figure and ThinFast's ratio to the best durable peer.
#
# Environment: SIZE=1G RUNTIME=8 JOBS=2 IODEPTH=16
#   SYSTEMS="thinfast thinfast-direct qemu-nbd qsd nbdkit-cow nbdkit-null"
#   WORKLOADS="randread4k randwrite4k firstwrite64k"  LAB=/var/tmp (where the base and pools go)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-8}
JOBS=${JOBS:-2}
IODEPTH=${IODEPTH:-16}
SYSTEMS=${SYSTEMS:-thinfast thinfast-direct qemu-nbd qsd nbdkit-cow nbdkit-null}
WORKLOADS=${WORKLOADS:-randread4k randwrite4k firstwrite64k}
bench="$root/perf/ThinFast.Benchmarks/bin/Release/net10.0/ThinFast.Benchmarks"

for tool in fio qemu-img qemu-nbd qemu-storage-daemon nbdkit nbdinfo taskset python3 numfmt; do
  command -v "$tool" >/dev/null || { echo "thin-peers: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -x "$bench" ] || { echo "thin-peers: build the host first: dotnet build -c Release perf/ThinFast.Benchmarks" >&2; exit 1; }

size_bytes=$(numfmt --from=iec "$SIZE")
half=$((size_bytes / JOBS))
lab=$(mktemp -d "${LAB:-/var/tmp}/thin-peers.XXXXXX")
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$lab"
}
trap cleanup EXIT

echo "thin-peers: SIZE=$SIZE RUNTIME=${RUNTIME}s JOBS=$JOBS IODEPTH=$IODEPTH, servers on CPU1, fio on CPU0, lab $lab" >&2
fio --name=fill --filename="$lab/base.raw" --size="$SIZE" --rw=write --bs=1m --ioengine=psync \
    --end_fsync=1 --output=/dev/null

wait_for_socket() {
  for _ in $(seq 400); do
    [ -S "$1" ] && nbdinfo --size "nbd+unix:///?socket=$1" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "thin-peers: no server on $1" >&2
  exit 1
}

stop() {
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  pid=""
}

# start SYSTEM SOCKET: a fresh server with a fresh overlay/pool over the base; sets $pid
start() {
  local sock=$2
  rm -rf "$lab/pool" "$lab/overlay.qcow2" "$lab/cow-tmp" "$sock"
  case $1 in
    thinfast|thinfast-direct)
      local origin=()
      [ "$1" = thinfast-direct ] && origin=(--origin-direct)
      taskset -c 1 "$bench" nbd-thin --pool "$lab/pool" --base "$lab/base.raw" --socket "$sock" \
          "${origin[@]}" --pid-file "$lab/thinfast.pid" 2>>"$lab/thinfast.log" &
      pid=$! ;;
    qsd)
      qemu-img create -q -f qcow2 -b "$lab/base.raw" -F raw -o cluster_size=64k "$lab/overlay.qcow2"
      taskset -c 1 qemu-storage-daemon --daemonize --pidfile "$lab/qsd.pid" \
          --blockdev driver=file,node-name=base-file,filename="$lab/base.raw",read-only=on,aio=io_uring,cache.direct=off \
          --blockdev driver=raw,node-name=base,file=base-file,read-only=on \
          --blockdev driver=file,node-name=ovl-file,filename="$lab/overlay.qcow2",aio=io_uring,cache.direct=on \
          --blockdev driver=qcow2,node-name=ovl,file=ovl-file,backing=base,discard=unmap \
          --nbd-server addr.type=unix,addr.path="$sock" \
          --export type=nbd,id=exp0,node-name=ovl,name=,writable=on
      pid=$(cat "$lab/qsd.pid") ;;
    qemu-nbd)
      qemu-img create -q -f qcow2 -b "$lab/base.raw" -F raw -o cluster_size=64k "$lab/overlay.qcow2"
      taskset -c 1 qemu-nbd --fork --pid-file="$lab/qemu-nbd.pid" --persistent --shared=0 \
          --socket="$sock" --format=qcow2 --cache=none --aio=io_uring --discard=unmap \
          --detect-zeroes=off "$lab/overlay.qcow2"
      pid=$(cat "$lab/qemu-nbd.pid") ;;
    nbdkit-cow)
      mkdir -p "$lab/cow-tmp"
      TMPDIR="$lab/cow-tmp" taskset -c 1 nbdkit --unix "$sock" --pidfile "$lab/nbdkit.pid" --threads 16 \
          --filter=cow file file="$lab/base.raw" cow-block-size=64K
      wait_for_socket "$sock"
      pid=$(cat "$lab/nbdkit.pid") ;;
    nbdkit-null)
      taskset -c 1 nbdkit --unix "$sock" --pidfile "$lab/nbdkit.pid" --threads 16 null "$SIZE"
      wait_for_socket "$sock"
      pid=$(cat "$lab/nbdkit.pid") ;;
    *) echo "thin-peers: unknown system $1" >&2; exit 1 ;;
  esac
  wait_for_socket "$sock"
}

iops() {
  python3 -c '
import json, sys
text = sys.stdin.read()
job = json.loads(text[text.index("{"):])["jobs"][0]
print(int(job["read"]["iops"] + job["write"]["iops"]))'
}

FIO=(taskset -c 0 fio --ioengine=nbd --iodepth="$IODEPTH" --numjobs="$JOBS" --group_reporting
     --randrepeat=0 --output-format=json)

# run WORKLOAD URI -> IOPS
run() {
  local uri=$2
  case $1 in
    randread4k)
      "${FIO[@]}" --name=randread4k --uri="$uri" --rw=randread --bs=4k --size="$SIZE" \
          --time_based --runtime="$RUNTIME" --ramp_time=1 | iops ;;
    randwrite4k)
      taskset -c 0 fio --ioengine=nbd --name=prewrite --uri="$uri" --rw=write --bs=1m --iodepth=8 \
          --numjobs="$JOBS" --size="$half" --offset_increment="$half" --output=/dev/null
      "${FIO[@]}" --name=randwrite4k --uri="$uri" --rw=randwrite --bs=4k --size="$SIZE" \
          --time_based --runtime="$RUNTIME" --ramp_time=1 | iops ;;
    firstwrite64k)
      # Each job owns one half and writes every 64 KiB block of it exactly once (fio's random map).
      "${FIO[@]}" --name=firstwrite64k --uri="$uri" --rw=randwrite --bs=64k --size="$half" \
          --offset_increment="$half" | iops ;;
    *) echo "thin-peers: unknown workload $1" >&2; exit 1 ;;
  esac
}

declare -A result
for w in $WORKLOADS; do
  for s in $SYSTEMS; do
    sock="$lab/$s.sock"
    start "$s" "$sock"
    result[$s,$w]=$(run "$w" "nbd+unix:///?socket=$sock")
    stop
    echo "  $w $s ${result[$s,$w]} IOPS" >&2
  done
done

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
printf '\n%-14s' workload
for s in $SYSTEMS; do printf ' %12s' "$s"; done
printf ' %20s %14s\n' "thinfast/best-durable" "thinfast/qemu"
for w in $WORKLOADS; do
  printf '%-14s' "$w"
  for s in $SYSTEMS; do printf ' %12s' "${result[$s,$w]:-}"; done
  best=0
  for s in qemu-nbd qsd; do
    v=${result[$s,$w]:-0}
    [ "$v" -gt "$best" ] && best=$v
  done
  t=${result[thinfast,$w]:-}
  q=${result[qemu-nbd,$w]:-}
  printf ' %20s %14s\n' "$([ -n "$t" ] && [ "$best" -gt 0 ] && ratio "$t" "$best" || echo -)" \
      "$([ -n "$t" ] && [ -n "$q" ] && ratio "$t" "$q" || echo -)"
done
echo "durable: thinfast and thinfast-direct (O_DIRECT data), qemu-nbd (--cache=none), qsd (O_DIRECT overlay); best-durable = the better of qemu-nbd and qsd; not durable: nbdkit-cow (page-cached overlay, flush is a no-op); nbdkit-null does no I/O" >&2

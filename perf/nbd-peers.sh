#!/usr/bin/env bash
# ThinFast's NBD server next to its peers and the transport ceiling, in one run, per
# /work/shared/design/benchmarking.md: the same fio nbd jobs (2 connections x QD16; 4 KiB random
# reads and writes and 1 MiB sequential reads, after a sequential prefill) against
#   thinfast   ThinFast's server (default: the in-memory `nbd-memory` host; see THINFAST_CMD)
#   qemu-nbd   a raw file in page cache (--cache=writeback --aio=io_uring, --shared=0 for multi-conn)
#   nbdkit-mem nbdkit's memory plugin (an in-memory server, like nbd-memory)
#   nbdkit-null nbdkit's null plugin: no I/O at all, the NBD transport ceiling
# Prints each figure and the ratio thinfast/peer. Servers run on CPU1, fio on CPU0 (taskset), and
# every server started here is stopped by its PID.
#
# Environment:
#   SIZE=1G RUNTIME=8 JOBS=2 IODEPTH=16
#   WORKLOADS="randread:4k randwrite:4k read:1m"   fio rw:bs pairs (figures are IOPS of that bs)
#   THINFAST_CMD  command serving ThinFast on a unix socket; "{socket}" is replaced by the path and
#                 "{size}" by SIZE in bytes. Default:
#                 perf/ThinFast.Benchmarks/bin/Release/net10.0/ThinFast.Benchmarks nbd-memory --socket {socket} --size {size}
#                 (later, e.g.: THINFAST_CMD='thinfast serve --pool P --volume v --socket {socket}')
#   THINFAST_EXPORT  export name to ask for (default: empty = the default export)
#   PEERS="qemu-nbd nbdkit-mem nbdkit-null"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-8}
JOBS=${JOBS:-2}
IODEPTH=${IODEPTH:-16}
WORKLOADS=${WORKLOADS:-randread:4k randwrite:4k read:1m}
PEERS=${PEERS:-qemu-nbd nbdkit-mem nbdkit-null}
THINFAST_EXPORT=${THINFAST_EXPORT:-}
bench="$root/perf/ThinFast.Benchmarks/bin/Release/net10.0/ThinFast.Benchmarks"
THINFAST_CMD=${THINFAST_CMD:-"$bench nbd-memory --socket {socket} --size {size}"}

for tool in fio qemu-nbd nbdkit nbdinfo taskset python3; do
  command -v "$tool" >/dev/null || { echo "nbd-peers: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
if [[ "$THINFAST_CMD" == "$bench "* && ! -x "$bench" ]]; then
  echo "nbd-peers: build the host first: dotnet build -c Release perf/ThinFast.Benchmarks" >&2
  exit 1
fi

size_bytes=$(numfmt --from=iec "$SIZE")
lab=$(mktemp -d /tmp/nbd-peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$lab"
}
trap cleanup EXIT

wait_for_socket() {
  for _ in $(seq 200); do
    [ -S "$1" ] && nbdinfo --size "nbd+unix:///$2?socket=$1" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "nbd-peers: no server on $1" >&2
  exit 1
}

# fio_iops URI RW BS -> total IOPS of the job group
fio_iops() {
  local out
  out=$(taskset -c 0 fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --size="$SIZE" \
      --iodepth="$IODEPTH" --numjobs="$JOBS" --group_reporting --time_based --runtime="$RUNTIME" \
      --ramp_time=1 --randrepeat=0 --output-format=json)
  python3 -c '
import json, sys
text = sys.stdin.read()
job = json.loads(text[text.index("{"):])["jobs"][0]
print(int(job["read"]["iops"] + job["write"]["iops"]))' <<<"$out"
}

# measure NAME URI: prefill (not measured), then every workload
declare -A result
measure() {
  local name=$1 uri=$2
  if [ "$name" != nbdkit-null ]; then
    taskset -c 0 fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 \
        --size="$SIZE" --output=/dev/null
  fi
  local w line="  $name:"
  for w in $WORKLOADS; do
    result[$name,$w]=$(fio_iops "$uri" "${w%%:*}" "${w##*:}")
    line+=" $w ${result[$name,$w]} IOPS"
  done
  echo "$line" >&2
}

stop() { kill "$1" 2>/dev/null || true; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }

echo "nbd-peers: SIZE=$SIZE WORKLOADS='$WORKLOADS' JOBS=$JOBS IODEPTH=$IODEPTH RUNTIME=${RUNTIME}s, servers on CPU1, fio on CPU0" >&2

# --- ThinFast
sock="$lab/thinfast.sock"
cmd=${THINFAST_CMD//\{socket\}/$sock}
cmd=${cmd//\{size\}/$size_bytes}
taskset -c 1 $cmd 2>"$lab/thinfast.log" &
pid=$!; pids+=("$pid")
wait_for_socket "$sock" "$THINFAST_EXPORT"
measure thinfast "nbd+unix:///$THINFAST_EXPORT?socket=$sock"
stop "$pid"

for peer in $PEERS; do
  sock="$lab/$peer.sock"
  case $peer in
    qemu-nbd)
      truncate -s "$SIZE" "$lab/disk.raw"
      taskset -c 1 qemu-nbd --fork --pid-file="$lab/qemu-nbd.pid" --persistent --shared=0 \
          --socket="$sock" --format=raw --cache=writeback --aio=io_uring --discard=unmap "$lab/disk.raw"
      pid=$(cat "$lab/qemu-nbd.pid") ;;
    nbdkit-mem)
      taskset -c 1 nbdkit --unix "$sock" --pidfile "$lab/nbdkit-mem.pid" --threads 16 memory "$SIZE"
      wait_for_socket "$sock" ""; pid=$(cat "$lab/nbdkit-mem.pid") ;;
    nbdkit-null)
      taskset -c 1 nbdkit --unix "$sock" --pidfile "$lab/nbdkit-null.pid" --threads 16 null "$SIZE"
      wait_for_socket "$sock" ""; pid=$(cat "$lab/nbdkit-null.pid") ;;
    *) echo "nbd-peers: unknown peer $peer" >&2; exit 1 ;;
  esac
  pids+=("$pid")
  wait_for_socket "$sock" ""
  measure "$peer" "nbd+unix:///?socket=$sock"
  stop "$pid"
  rm -f "$lab/disk.raw"
done

printf '\n%-14s %-12s %12s %12s %8s\n' workload peer thinfast peer ratio
for w in $WORKLOADS; do
  for peer in $PEERS; do
    t=${result[thinfast,$w]}; p=${result[$peer,$w]}
    printf '%-14s %-12s %12s %12s %8s\n' "$w" "$peer" "$t" "$p" "$(python3 -c "print(f'{$t/$p:.2f}')")"
  done
done

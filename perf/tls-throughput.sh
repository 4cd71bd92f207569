#!/usr/bin/env bash
# NBD over TLS against plaintext, over TCP loopback, with the real `thinfast serve` and nbdkit's
# memory plugin as the peer: nbdcopy copies SIZE of random data into the export (write) and the
# export to null: (read), ROUNDS times each, with TLS required (a throw-away CA made with openssl,
# client certificate verified: --tls-certs / --tls=require --tls-verify-peer) and without. Prints
# MiB/s per round and the median; servers run on CPU1, nbdcopy on CPU0, and every server started
# here is stopped by its PID.
#
# Environment: SIZE=512M ROUNDS=3 LAB=/var/tmp (where the pool goes)
#   MODES="thinfast-plain thinfast-tls nbdkit-plain nbdkit-tls"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-512M}
ROUNDS=${ROUNDS:-3}
thinfast="$root/src/ThinFast.Cli/bin/Release/net10.0/thinfast"
for tool in nbdcopy nbdinfo nbdkit openssl taskset numfmt bc; do
  command -v "$tool" >/dev/null || { echo "tls-throughput: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ -x "$thinfast" ] || { echo "tls-throughput: build first: dotnet build -c Release src/ThinFast.Cli" >&2; exit 1; }

size_bytes=$(numfmt --from=iec "$SIZE")
lab=$(mktemp -d "${LAB:-/var/tmp}/tls-throughput.XXXXXX")
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$lab"
}
trap cleanup EXIT

ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1)
mkdir -p "$lab/server" "$lab/client"
openssl req -x509 "${ec[@]}" -subj "/CN=perf CA" -keyout "$lab/ca-key.pem" -out "$lab/ca-cert.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -x509 "${ec[@]}" -subj /CN=localhost -keyout "$lab/server/server-key.pem" -out "$lab/server/server-cert.pem" \
  -CA "$lab/ca-cert.pem" -CAkey "$lab/ca-key.pem" -addext extendedKeyUsage=serverAuth -addext subjectAltName=IP:127.0.0.1 2>/dev/null
openssl req -x509 "${ec[@]}" -subj /CN=client -keyout "$lab/client/client-key.pem" -out "$lab/client/client-cert.pem" \
  -CA "$lab/ca-cert.pem" -CAkey "$lab/ca-key.pem" -addext extendedKeyUsage=clientAuth 2>/dev/null
cp "$lab/ca-cert.pem" "$lab/server/"; cp "$lab/ca-cert.pem" "$lab/client/"

head -c "$size_bytes" /dev/urandom > "$lab/data.raw"
"$thinfast" pool create "$lab/pool" --data-size $((size_bytes * 2)) >/dev/null
"$thinfast" volume create "$lab/pool" vol --size "$size_bytes" >/dev/null

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# run MODE URI: ROUNDS writes then ROUNDS reads, MiB/s each
run() {
  local mode=$1 uri=$2 direction rates
  for direction in write read; do
    rates=()
    for _ in $(seq "$ROUNDS"); do
      local start end
      start=$(date +%s.%N)
      if [ "$direction" = write ]; then
        taskset -c 0 nbdcopy "$lab/data.raw" "$uri"
      else
        taskset -c 0 nbdcopy "$uri" null:
      fi
      end=$(date +%s.%N)
      rates+=("$(echo "$size_bytes / 1048576 / ($end - $start)" | bc -l | xargs printf '%.0f')")
    done
    printf '%-15s %-6s MiB/s: %s  median %s\n' "$mode" "$direction" "${rates[*]}" "$(printf '%s\n' "${rates[@]}" | median)"
  done
}

# start MODE: a server on CPU1; sets $pid and $uri
start() {
  local port
  case $1 in
    thinfast*)
      local tls=()
      [ "$1" = thinfast-tls ] && tls=(--tls-certs "$lab/server")
      taskset -c 1 "$thinfast" serve "$lab/pool" --tcp 127.0.0.1:0 "${tls[@]}" 2>"$lab/serve.log" &
      pid=$!
      for _ in $(seq 200); do grep -q 'serving ' "$lab/serve.log" && break; sleep 0.05; done
      port=$(grep -o 'tcp:127.0.0.1:[0-9]*' "$lab/serve.log" | cut -d: -f3)
      uri="nbd://127.0.0.1:$port/vol" ;;
    nbdkit*)
      port=$((20000 + RANDOM % 20000))
      local tls=off
      [ "$1" = nbdkit-tls ] && tls=require
      taskset -c 1 nbdkit -f -p "$port" -i 127.0.0.1 --tls=$tls --tls-certificates="$lab/server" --tls-verify-peer \
        memory "$size_bytes" 2>"$lab/nbdkit.log" &
      pid=$!
      for _ in $(seq 200); do nbdinfo --size "nbd://127.0.0.1:$port/" >/dev/null 2>&1 && break
        nbdinfo --size "nbds://127.0.0.1:$port/?tls-certificates=$lab/client" >/dev/null 2>&1 && break; sleep 0.05; done
      uri="nbd://127.0.0.1:$port/" ;;
  esac
  [[ $1 == *-tls ]] && uri="${uri/nbd:/nbds:}?tls-certificates=$lab/client"
  # Provision every block first, so every measured write is an overwrite in every mode.
  nbdcopy "$lab/data.raw" "$uri"
}

for mode in ${MODES:-thinfast-plain thinfast-tls nbdkit-plain nbdkit-tls}; do
  start "$mode"
  run "$mode" "$uri"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done

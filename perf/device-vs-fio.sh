#!/usr/bin/env bash
# Runs the device-vs-fio comparison: fio --ioengine=io_uring --direct=1 next to ThinFast's io_uring
# device on one preallocated 2 GiB file under /var/tmp. Extra arguments go to the run
# (--repeat N, --runtime S, --ramp S, --size-mib N, --file PATH, --keep, --spin-us N, --submit-batch N).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v fio >/dev/null || { echo "fio is required: apt-get install fio" >&2; exit 1; }
exec dotnet run -c Release --project "$root/perf/ThinFast.Benchmarks" -- device-vs-fio "$@"

#!/usr/bin/env bash
# Installs what ThinFast's build, tests and demo need on Debian 12. Idempotent: a second run
# installs nothing and takes about a second.
set -euo pipefail

packages=(
  thin-provisioning-tools   # thin_check, thin_dump, thin_restore: metadata oracles
  qemu-utils                # qemu-img, qemu-io, qemu-nbd: NBD clients and the qcow2 peer
  qemu-system-common        # qemu-storage-daemon: the qsd peer in perf/thin-peers.sh
  libnbd-bin                # nbdinfo, nbdcopy, nbdsh, and nbdfuse (Debian 12 ships it here)
  python3-libnbd           # the nbdsh binary and libnbd python module (NBD edge-case tests)
  nbdkit                    # the nbdkit peer and its null plugin (transport ceiling)
  fio                       # benchmarks and verify workloads (io_uring and nbd engines)
  e2fsprogs fuse3           # mkfs.ext4, e2fsck, debugfs; fusermount3
  python3                   # shared/tools/dmthin/analyze.py
  gcc                       # the struct-layout probe
  openssl                   # makes the throw-away CA and certificates of the NBD TLS tests
  mount                     # losetup: loop block devices for the block-device tests (IO)
  afl++                     # afl-fuzz: the fuzz campaigns of tests/ThinFast.Fuzz.Tests (docs/fuzzing.md)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v dotnet >/dev/null || { echo "install-deps: the .NET 10 SDK is required (dotnet not on PATH)" >&2; exit 1; }

# sharpfuzz instruments the assemblies afl-fuzz runs (a NuGet dotnet tool, pinned).
sharpfuzz_version=2.3.0
if ! dotnet tool list --global 2>/dev/null | grep -q "^sharpfuzz.commandline *$sharpfuzz_version"; then
  echo "install-deps: installing the sharpfuzz dotnet tool $sharpfuzz_version" >&2
  dotnet tool update --global SharpFuzz.CommandLine --version "$sharpfuzz_version" >/dev/null
fi

#!/usr/bin/env bash
# The ThinFast demo on a fresh Debian 12 machine with the .NET 10 SDK: installs the tools it uses
# (scripts/install-deps.sh), builds the thinfast CLI (Release), and runs `thinfast demo` in ./demo:
# a 64 MiB ext4 base image, two thin volumes over it (vm1, vm2) served over NBD on demo/nbd.sock
# and 127.0.0.1:10809, a self-check as an NBD client, and the commands to try. Ctrl-C stops it.
#   bash scripts/demo.sh [DIR] [thinfast demo options]
#   THINFAST_DEMO_EXIT=1 bash scripts/demo.sh     exit 0 after the self-check instead of serving
#   THINFAST_DEMO_TCP=127.0.0.1:0 ...              another TCP address/port (0 = any free port)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh
dotnet build src/ThinFast.Cli -c Release -nologo -clp:ErrorsOnly -v:quiet
exec src/ThinFast.Cli/bin/Release/net10.0/thinfast demo "$@"

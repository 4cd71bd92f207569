#!/usr/bin/env bash
# A long afl-fuzz campaign on one ThinFast fuzz target (docs/fuzzing.md). Builds the harness,
# instruments a copy of it under artifacts/fuzz/harness/TARGET (one per target, so two
# campaigns can run side by side), and fuzzes from fuzz/corpus/TARGET with
# findings in artifacts/fuzz/TARGET (an existing one is resumed). Stops after SECONDS (default:
# until interrupted).
#   scripts/fuzz.sh TARGET [SECONDS]        scripts/fuzz.sh list
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] (scripts/fuzz.sh list names the targets)}
seconds=${2:-}

command -v afl-fuzz >/dev/null || { echo "fuzz: afl-fuzz is missing: apt-get install afl++ (scripts/install-deps.sh)" >&2; exit 1; }
sharpfuzz=$(command -v sharpfuzz || echo "$HOME/.dotnet/tools/sharpfuzz")
[ -x "$sharpfuzz" ] || { echo "fuzz: sharpfuzz is missing: dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0 (scripts/install-deps.sh)" >&2; exit 1; }

dotnet build fuzz/ThinFast.Fuzz -c Release -nologo -clp:ErrorsOnly >&2
build=fuzz/ThinFast.Fuzz/bin/Release/net10.0
if [ "$target" = list ]; then exec dotnet "$build/ThinFast.Fuzz.dll" list; fi
[ -d "fuzz/corpus/$target" ] || { echo "fuzz: no target '$target' (fuzz/corpus/$target is missing)" >&2; exit 2; }

# The harness itself stays uninstrumented: only the product's branches guide afl.
harness=artifacts/fuzz/harness/$target
rm -rf "$harness"; mkdir -p "$harness"
cp -r "$build"/. "$harness"
for assembly in ThinFast.IO ThinFast.Metadata ThinFast.Engine ThinFast.Nbd; do
  "$sharpfuzz" "$harness/$assembly.dll"
done

findings=artifacts/fuzz/$target
input=(-i "fuzz/corpus/$target")
[ -d "$findings/default/queue" ] && input=(-i -)   # resume
export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export DOTNET_GCHeapHardLimit=${DOTNET_GCHeapHardLimit:-0x40000000} DOTNET_CLI_TELEMETRY_OPTOUT=1
exec afl-fuzz ${seconds:+-V "$seconds"} -t 20000 -m none "${input[@]}" -o "$findings" \
  -- "$(command -v dotnet)" "$harness/ThinFast.Fuzz.dll" run "$target"

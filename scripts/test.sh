#!/usr/bin/env bash
# Runs every ThinFast test: installs dependencies, builds the solution, runs each test project's
# xunit v3 executable with an XML report, and prints one closing line "N passed, N failed"
# summed from those reports. Exit status is non-zero if any test failed or any suite crashed.
#   scripts/test.sh [--filter-class NAME]...   extra arguments go to every test runner
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh || exit 1
dotnet build ThinFast.sln -c Release -nologo -clp:ErrorsOnly || { echo "0 passed, 1 failed"; exit 1; }

results="$root/artifacts/test-results"
rm -rf "$results"; mkdir -p "$results"
status=0
for proj in tests/*.Tests; do
  name=$(basename "$proj")
  exe="$proj/bin/Release/net10.0/$name"
  echo "=== $name" >&2
  if ! "$exe" -result-xml "$results/$name.xml" -noColor -parallelMode collections "$@"; then
    status=1
  fi
  [ -f "$results/$name.xml" ] || { echo "$name: no report (the runner crashed)" >&2; status=1; echo "<crash/>" > "$results/$name.crash"; }
done

python3 - "$results" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for f in glob.glob(sys.argv[1] + "/*.xml"):
    for a in ET.parse(f).getroot().iter("assembly"):
        passed += int(a.get("passed", 0)); failed += int(a.get("failed", 0)) + int(a.get("errors", 0) or 0)
        skipped += int(a.get("skipped", 0))
failed += len(glob.glob(sys.argv[1] + "/*.crash"))
line = f"{passed} passed, {failed} failed"
if skipped: line += f", {skipped} skipped"
print(line)
PY
exit $status

#!/usr/bin/env bash
# Wall time and peak memory of the demo study (twin + run) in a fresh temporary directory.
# Usage: bash benchmarks/demo.sh [extra `abzflux demo` options, e.g. --resolution-km 50]
set -euo pipefail
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/time -v abzflux demo --out "$out/demo" --quiet "$@" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
grep -E "Elapsed \(wall|Maximum resident|Percent of CPU" "$out/log"
python - "$out/demo/run/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("stage seconds:", {k: v.get("seconds") for k, v in r["stages"].items()})
PY

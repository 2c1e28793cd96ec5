#!/usr/bin/env bash
# Wall time and peak memory of the demo study (twins + runs of the fine and coarse model sets)
# in a fresh temporary directory (kept when DEMO_OUT names a directory to create).
# Usage: [DEMO_OUT=/tmp/demo] bash benchmarks/demo.sh [extra `abzflux demo` options]
set -euo pipefail
if [ -n "${DEMO_OUT:-}" ]; then out="$DEMO_OUT"; mkdir -p "$out"; else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
/usr/bin/time -v abzflux demo --out "$out/demo" --quiet "$@" > "$out/log" 2>&1 || { cat "$out/log"; exit 1; }
grep -E "Elapsed \(wall|Maximum resident|Percent of CPU" "$out/log"
python - "$out/demo/run/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("fine stage seconds:", {k: v.get("seconds") for k, v in r["stages"].items()})
if "coarse" in r:
    print("coarse stage seconds:", {k: v.get("seconds") for k, v in r["coarse"]["stages"].items()})
PY

#!/usr/bin/env bash
# Peak memory of a whole run with the paper's settings on the 100-km twin, stage by stage.
#
#   bash benchmarks/paper_run_memory.sh [WORKDIR] [extra [forest] lines, e.g. "mtry = 9" "cv = false"]
#
# Generates the 100-km twin (2001-2020), writes its config with the demo's [forest] lines removed
# (so abzflux's defaults, the paper's settings: 500 trees, mtry tuned by leave-one-site-out CV,
# 100 importance repeats on all rows, 20 bootstrap forests) plus any extra [forest] lines given,
# runs it under /usr/bin/time -v, and prints each stage's peak RSS from run.json (the runner's
# per-stage record) and the whole run's maximum RSS. With exact LOSO tuning the forest stage alone
# takes most of an hour on 2 cores.
set -euo pipefail
work=${1:-/tmp/paper_mem}
shift || true
py=${PYTHON:-python}
mkdir -p "$work"
[ -f "$work/twin/config.toml" ] || $py -m abzflux.cli twin --out "$work/twin" --resolution-km 100 --quiet
$py - "$work/twin/config.toml" "$work/twin/config_paper.toml" "$@" <<'EOF'
import sys
src, dst, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(src).read()
head = text[: text.index("[forest]")]
open(dst, "w").write(head + "[forest]\n" + "".join(f"{line}\n" for line in extra))
EOF
/usr/bin/time -v -o "$work/time.txt" $py -m abzflux.cli run "$work/twin/config_paper.toml" --out "$work/run" --quiet
$py - "$work/run/run.json" <<'EOF'
import json, sys
rec = json.load(open(sys.argv[1]))
for name, st in rec["stages"].items():
    mem = st.get("memory") or {}
    print(f"{name:12s} {st.get('seconds', 0):9.1f} s  peak RSS {mem.get('peak_rss_mb')} MB")
EOF
grep -E "Maximum resident|Elapsed" "$work/time.txt"

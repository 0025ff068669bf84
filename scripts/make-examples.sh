#!/usr/bin/env bash
# Regenerate docs/examples/: the report of demo job 1001 in every format (Markdown, HTML,
# JSON, CSV, with its two PNG plots) and a headless-Chromium screenshot of the HTML form.
#
#   bash scripts/make-examples.sh          # needs .venv (scripts/setup-dev.sh) and chromium
#
# The demo is a 6-hour simulation of 2 nodes x 4 GPUs on the demo's synthetic hourly grid
# intensity series (docs/reports.md); the report is built with the same carbon settings the
# demo used (zone DE, PUE 1.2), exactly as `greenwatch demo` writes it into <out>/reports/1001/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
OUT=docs/examples
JOB=1001
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "make-examples: running the demo (about 20 s) ..."
"$PY" -m greenwatch --log-level WARNING demo --out "$tmp/demo" >/dev/null 2>&1

mkdir -p "$OUT"
rm -f "$OUT"/report-"$JOB"*
"$PY" - "$tmp/demo" "$OUT" "$JOB" <<'PYEOF'
import sys
from pathlib import Path

from greenwatch.attribution import CarbonContext
from greenwatch.carbon import AnnualIntensity, ConstantPue, SeriesIntensity
from greenwatch.reports import EmbeddedSource, build_report, write_all_formats
from greenwatch.storage.embedded import EmbeddedStore

demo, out, job = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = EmbeddedStore(demo / "greenwatch.sqlite")
source = EmbeddedSource(store)
source.description = "embedded store greenwatch-demo/greenwatch.sqlite"  # not this machine's temp path
carbon = CarbonContext(SeriesIntensity(str(demo / "demo-intensity.csv"), AnnualIntensity("DE"), zone="DE"),
                       ConstantPue(1.2), None)
for name, path in write_all_formats(build_report(source, job, carbon=carbon), out, stem=f"report-{job}").items():
    print(f"make-examples: {path}")
store.close()
PYEOF

CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$CHROMIUM" ]]; then
    echo "make-examples: chromium not found; $OUT/report-$JOB.png not updated" >&2
    exit 1
fi
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/chromium" --hide-scrollbars --screenshot="$OUT/report-$JOB.png" \
    --window-size=1200,2400 "file://$PWD/$OUT/report-$JOB.html" >/dev/null 2>&1
echo "make-examples: $OUT/report-$JOB.png"

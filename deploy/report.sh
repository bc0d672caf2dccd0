#!/usr/bin/env bash
# The profiling report of a finished run directory (docs/operations.md, "Profiling
# report"): builds mimic-report if needed and runs it.
#   deploy/report.sh RUN_DIR [--out DIR] [--lenient]
# Prints where each worker's step time goes by phase, the slowest worker against the
# median and the push/pull bandwidth; writes loss.svg, images_per_s.svg and phases.svg
# into RUN_DIR/report (or DIR) to open in a browser.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: deploy/report.sh RUN_DIR [--out DIR] [--lenient]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${MIMIC_BUILD:-$here/build}/tools/mimic-report
if [ ! -x "$bin" ]; then
  cmake -S "$here" -B "${MIMIC_BUILD:-$here/build}" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "${MIMIC_BUILD:-$here/build}" --target mimic-report >/dev/null
fi
exec "$bin" "$@"

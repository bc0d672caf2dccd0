#!/usr/bin/env bash
# The 224² data path against the MAE-224 step that consumes it (issue 14, item 6):
#   bench/datapath.sh [--record] [--bench.jpegs N --bench.rounds N ...]
# One process (build/bench/bench_datapath) measures, alternating in rounds: the loader
# building MAE-224 batches (JPEG decode of 224x224 and 500x375 photo-like files,
# RandomResizedCrop, flip, normalise, masking noise) on data.threads = 1 and 2 while the
# caller only collects, and the MAE-224 training step (ViT-Tiny 192/12/3, patch 16,
# decoder 128/2/4, batch 32) with 2 OpenMP/OpenBLAS threads as a trainer runs it. It
# prints images/s per loader thread, per compute thread, their ratio and PASS/SHORT
# against the goal (>= 5x). --record appends the run to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The step at its fastest fp32 (deploy/env.sh then picks SkylakeX where the CPU has
# AVX-512), so that the ratio errs low rather than high.
unset OPENBLAS_CORETYPE
source deploy/env.sh
record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target bench_datapath >/dev/null
threads=${BENCH_THREADS:-2}
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
bf16=no
if grep -qw avx512_bf16 /proc/cpuinfo; then bf16=yes; fi
load0=$(cut -d' ' -f1-3 /proc/loadavg)
set +e
# passive: OpenMP threads sleep while they wait, so the step's CPU time is its work
out=$(OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
  ./build/bench/bench_datapath "$@")
rc=$?
set -e
load1=$(cut -d' ' -f1-3 /proc/loadavg)
report=$(cat <<TXT
CPU: $cpu, avx512_bf16: $bf16, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto}; load average before/after: $load0 / $load1
command: OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench/bench_datapath $*
$out
TXT
)
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/datapath.sh $*"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi
# 0 PASS, 3 SHORT (the goal missed), other: the bench failed
exit $rc

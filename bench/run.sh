#!/usr/bin/env bash
# MAE and MoCo v3 training steps: this project vs PyTorch, in one run on one machine.
#   bench/run.sh [--record] [CONFIG.ini]   (default deploy/mae-fmnist.ini, batch 128)
# Both sides get 2 cores: ours as one process with 2 OpenMP threads (GEMMs and
# element-wise loops share the pool); PyTorch as ../shared/BENCH.md's fair
# single-process peer: OPENBLAS_NUM_THREADS=2, OMP_NUM_THREADS=1, torch threads 1.
# Prints images/s of both, the ratio, the sgemm GFLOP/s measured on the model's own
# GEMM calls at the same thread count, and MFU. --record appends to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi
cfg=${1:-deploy/mae-fmnist.ini}
bash deploy/install-deps.sh --bench >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target bench_mae >/dev/null
threads=${BENCH_THREADS:-2}
batch=${BENCH_BATCH:-128}
ours=$(OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads ./build/bench/bench_mae "$cfg" --bench.batch "$batch")
get() { printf '%s\n' "$1" | sed -n "s/^$2=//p"; }
flags=""
for k in img_size in_chans patch_size embed_dim depth num_heads; do
  flags+=" --$k $(sed -n "s/^$k *= *//p" "$cfg" | head -1)"
done
for k in decoder_embed_dim decoder_depth decoder_num_heads; do
  flags+=" --$k $(sed -n "s/^$k *= *//p" "$cfg" | head -1)"
done
theirs=$(OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_mae_torch.py $flags --batch "$batch" --torch-threads 1)
mi=$(get "$ours" mimic_img_per_s); ti=$(get "$theirs" torch_img_per_s)
ratio=$(awk -v a="$mi" -v b="$ti" 'BEGIN{printf "%.2f", a/b}')
report=$(cat <<TXT
config: $cfg, batch $batch, $(get "$ours" gflop_per_img) train GFLOP/img
mimicps: $mi img/s  (OMP_NUM_THREADS=$threads, one process; $(get "$ours" mimic_model_gflops) model GFLOP/s)
PyTorch $(get "$theirs" torch_version): $ti img/s  (OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 torch.set_num_threads(1))
ratio mimicps/PyTorch: $ratio
sgemm on the model's GEMM calls ($threads threads): $(get "$ours" sgemm_gflops) GFLOP/s; MFU $(get "$ours" mfu)
TXT
)
# The MoCo v3 step (stages/mocov3.c) on the same ViT, batch 64, two views, momentum
# encoder, projector hidden 1024 -> 256: against PyTorch in the same fair setting.
cmake --build build -j"$(nproc)" --target bench_moco >/dev/null
mflags="--mlp_dim 1024 --dim 256"
for k in img_size in_chans patch_size embed_dim depth num_heads; do
  mflags+=" --$k $(sed -n "s/^$k *= *//p" "$cfg" | head -1)"
done
mours=$(OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads ./build/bench/bench_moco "$cfg" \
  --contrastive.mlp_dim=1024 --contrastive.dim=256 --bench.batch 64)
mtheirs=$(OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_moco_torch.py \
  $mflags --batch 64 --torch-threads 1)
mmi=$(get "$mours" mimic_img_per_s); mti=$(get "$mtheirs" torch_img_per_s)
report+=$(cat <<TXT

MoCo v3 step (batch 64, two views, momentum encoder, projector 1024 -> 256): $(get "$mours" gflop_per_img) train GFLOP/img
mimicps: $mmi img/s ($(get "$mours" mimic_model_gflops) model GFLOP/s); PyTorch: $mti img/s
ratio mimicps/PyTorch (MoCo v3): $(awk -v a="$mmi" -v b="$mti" 'BEGIN{printf "%.2f", a/b}')
TXT
)
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/run.sh $cfg"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi

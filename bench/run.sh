#!/usr/bin/env bash
# MAE and MoCo v3 training steps: this project vs PyTorch, in one run on one machine.
#   bench/run.sh [--record] [CONFIG.ini]   (default deploy/mae-fmnist.ini, batch 128)
# Both sides get 2 cores: ours as one process with 2 OpenMP threads (GEMMs and
# element-wise loops share the pool); PyTorch as ../shared/BENCH.md's fair
# single-process peer: OPENBLAS_NUM_THREADS=2, OMP_NUM_THREADS=1, torch threads 1.
# On a CPU with AVX512_BF16 the MAE step is also run in bf16 on both sides (ours:
# train.precision=bf16; PyTorch: torch.autocast, its best configuration there), and the
# report gives fp32 vs fp32, bf16 vs bf16 and best vs best.
# Prints images/s of both, the ratios, the GEMM GFLOP/s measured on the model's own
# GEMM calls at the same thread count, and MFU. --record appends to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
source bench/lib.sh
record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi
cfg=${1:-deploy/mae-fmnist.ini}
bash deploy/install-deps.sh --bench >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target bench_mae >/dev/null
threads=${BENCH_THREADS:-2}
batch=${BENCH_BATCH:-128}
get() { printf '%s\n' "$1" | sed -n "s/^$2=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
bf16=0
grep -q avx512_bf16 /proc/cpuinfo && bf16=1
flags=$(cfg_flags "$cfg" "${MAE_KEYS[@]}")
mae_ours() { # PRECISION
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads ./build/bench/bench_mae "$cfg" \
    --bench.batch "$batch" --train.precision="$1"
}
# PyTorch fp32: ../shared/BENCH.md's fair single process (BLAS threads 2, torch threads 1).
# bf16 autocast: GEMMs go to oneDNN, which follows torch's own threads, so torch gets
# $threads threads and OpenBLAS 1 (they do not fight: no fp32 GEMM is left).
mae_torch() { # fp32 | bf16
  if [ "$1" = fp32 ]; then
    OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_mae_torch.py \
      $flags --batch "$batch" --torch-threads 1
  else
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$threads /usr/bin/python3 bench/bench_mae_torch.py \
      $flags --batch "$batch" --torch-threads "$threads" --autocast
  fi
}
# fp32 pair, then (on a BF16 CPU) the bf16 pair; each pair back to back
ours=$(mae_ours fp32); theirs=$(mae_torch fp32)
mi=$(get "$ours" mimic_img_per_s); ti=$(get "$theirs" torch_img_per_s)
report=$(cat <<TXT
config: $cfg, batch $batch, $(get "$ours" gflop_per_img) train GFLOP/img; CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), AVX512_BF16 $([ $bf16 = 1 ] && echo yes || echo no)
fp32: mimicps $mi img/s (OMP_NUM_THREADS=$threads, one process; $(get "$ours" mimic_model_gflops) model GFLOP/s)
fp32: PyTorch $(get "$theirs" torch_version) $ti img/s (OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 torch.set_num_threads(1))
ratio mimicps/PyTorch fp32: $(ratio "$mi" "$ti")
sgemm on the model's GEMM calls ($threads threads): $(get "$ours" sgemm_gflops) GFLOP/s; MFU $(get "$ours" mfu)
TXT
)
if [ $bf16 = 1 ]; then
  ours16=$(mae_ours bf16); theirs16=$(mae_torch bf16)
  mb=$(get "$ours16" mimic_img_per_s); tb=$(get "$theirs16" torch_img_per_s)
  best_t=$(printf '%s\n%s\n' "$ti" "$tb" | sort -g | tail -1)
  best_m=$(printf '%s\n%s\n' "$mi" "$mb" | sort -g | tail -1)
  report+=$(cat <<TXT

bf16: mimicps $mb img/s (train.precision=bf16: oneDNN bf16 GEMMs on the linear layers; $(get "$ours16" gemm_gflops) GFLOP/s on the model's GEMM calls, MFU $(get "$ours16" mfu) of that)
bf16: PyTorch autocast $tb img/s (OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$threads torch.set_num_threads($threads), torch.autocast cpu bfloat16)
ratio mimicps/PyTorch bf16: $(ratio "$mb" "$tb"); final losses mimicps $(get "$ours16" final_loss) (fp32 $(get "$ours" final_loss)), PyTorch $(get "$theirs16" torch_final_loss) (fp32 $(get "$theirs" torch_final_loss))
best vs best: mimicps $best_m / PyTorch $best_t = $(ratio "$best_m" "$best_t")
TXT
)
fi
# The MoCo v3 step (stages/mocov3.c) on the same ViT, batch 64, two views, momentum
# encoder, projector hidden 1024 -> 256: against PyTorch in the same fair setting.
cmake --build build -j"$(nproc)" --target bench_moco >/dev/null
mflags="--mlp_dim 1024 --dim 256$(cfg_flags "$cfg" "${VIT_KEYS[@]}")"
moco_ours() { # PRECISION
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads ./build/bench/bench_moco "$cfg" \
    --contrastive.mlp_dim=1024 --contrastive.dim=256 --bench.batch 64 --train.precision="$1"
}
moco_torch() { # fp32 | bf16, threads as for the MAE step
  if [ "$1" = fp32 ]; then
    OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=1 /usr/bin/python3 bench/bench_moco_torch.py \
      $mflags --batch 64 --torch-threads 1
  else
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$threads /usr/bin/python3 bench/bench_moco_torch.py \
      $mflags --batch 64 --torch-threads "$threads" --autocast
  fi
}
mours=$(moco_ours fp32); mtheirs=$(moco_torch fp32)
mmi=$(get "$mours" mimic_img_per_s); mti=$(get "$mtheirs" torch_img_per_s)
report+=$(cat <<TXT

MoCo v3 step (batch 64, two views, momentum encoder, projector 1024 -> 256): $(get "$mours" gflop_per_img) train GFLOP/img
fp32: mimicps $mmi img/s ($(get "$mours" mimic_model_gflops) model GFLOP/s); PyTorch $mti img/s; ratio $(ratio "$mmi" "$mti")
TXT
)
if [ $bf16 = 1 ]; then
  mours16=$(moco_ours bf16); mtheirs16=$(moco_torch bf16)
  mmb=$(get "$mours16" mimic_img_per_s); mtb=$(get "$mtheirs16" torch_img_per_s)
  report+=$(cat <<TXT

bf16: mimicps $mmb img/s; PyTorch autocast $mtb img/s; ratio $(ratio "$mmb" "$mtb"); best vs best $(ratio "$(printf '%s\n%s\n' "$mmi" "$mmb" | sort -g | tail -1)" "$(printf '%s\n%s\n' "$mti" "$mtb" | sort -g | tail -1)")
TXT
)
fi
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/run.sh $cfg"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi

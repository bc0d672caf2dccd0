#!/usr/bin/env bash
# Learning quality on Fashion-MNIST (issue 11): every arm trained at the same compute
# budget, in one run, and evaluated on the full t10k test set (10 000 images); prints a
# table and writes OUT/quality.jsonl (one line per arm).
#   bench/quality.sh [--budget TFLOP] [--out DIR] [--section.key=value ...]
# (default budget 60 TFLOP per arm, OUT runs/quality; extra flags go to every command,
# e.g. --eval.test_limit=500 for a dry run). Run it under `nice -n 5` beside other work.
#
# Arms:
#   a  linear probe on raw pixels (eval.features=pixels), no training
#   b  ViT supervised from scratch: the mimic stage with mimic.w_con=0 (CE on mixup/CutMix
#      targets, the fine-tuning recipe), no init -> its own classifier
#   c  MAE -> MAE (a second schedule from the first) -> linear probe and k-NN
#   d  MAE -> MoCo v3 -> linear probe and k-NN
#   e  MAE -> MIMIC fine-tune (mimic.w_con > 0) -> its classifier (and probe, k-NN)
#   f  MAE -> plain fine-tune (the same with mimic.w_con=0): the control for MIMIC's
#      contrastive term
#
# Compute budget: every ViT arm gets the same training FLOPs, BUDGET (TFLOP), counted
# as the sum over its stages of steps * batch * the stage's training FLOPs per image
# (stage_t.flops_per_image: 2*M*N*K over the GEMMs of forward and backward, as the
# worker logs "GFLOP/img" and metrics.jsonl's "gflop_per_img"; MAE 0.72, MIMIC 2.19,
# MoCo v3 5.87 GFLOP/img for this model; read from a one-step run of each stage first).
# The MAE run of arms c-f is one shared prefix of BUDGET * MAE_SHARE: it counts in full
# toward each of them and runs once; each arm's second stage gets the rest. Steps are
# rounded to whole batches. Evaluation is not counted (it is the same for every arm:
# features of the 10 000 test images and of the first eval.train_limit training images,
# a 30-epoch probe, k-NN). Arm a trains nothing beyond its probe.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
budget=60
mae_share=0.5
out=runs/quality
flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) flags+=("$1"); shift ;;
  esac
done
cfg=bench/quality/quality.ini
W=./build/worker/mimic-worker
E=./build/eval/mimic-eval
threads=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target mimic-worker mimic-eval >/dev/null
mkdir -p "$out"
if [ -f "$out/budget" ] && [ "$(cat "$out/budget")" != "$budget $mae_share ${flags[*]:-}" ]; then
  echo "quality: $out holds a run of another budget or flags ($(cat "$out/budget")); use another --out" >&2
  exit 2
fi
echo "$budget $mae_share ${flags[*]:-}" > "$out/budget"
t_start=$(date +%s)

# Stage recipes, fixed before the measured run (lr = blr * batch / 256; warmup 10% of a
# stage's steps, then a half-cosine to 0). MAE and MoCo v3 are deploy/fmnist.ini's.
# Tuned for a budget of well under one epoch (pilots in bench/RESULTS.md): the
# supervised recipe's lr 5e-4 (at 1e-3 the loss stayed at chance for 50 steps), and a
# light augmentation (mixup/CutMix alpha 0.2, crops of at least 35% of the image) since
# heavy regularisation only slows a run this short.
MAE=(--train.stage=mae --train.batch_size=64 --train.blr=1.5e-3 --train.weight_decay=0.05
  --train.beta2=0.95 --data.scale_min=0.2)
MOCO=(--train.stage=mocov3 --train.batch_size=64 --train.blr=1.5e-4 --train.weight_decay=0.1
  --train.beta2=0.999 --data.scale_min=0.08)
# fine-tuning (arms e, f) and supervised training from scratch (b) share CE + mixup/CutMix
FT=(--train.stage=mimic --train.batch_size=64 --train.weight_decay=0.05 --train.beta2=0.999
  --data.scale_min=0.35 --mimic.alpha=0.2 --mimic.cutmix_p=0.5 --mimic.smoothing=0.1)
FT_LR=(--train.blr=2e-3)
SCRATCH_LR=(--train.blr=2e-3)

# Training GFLOP per image of each stage, from one step of batch 2.
declare -A gflop
for s in mae mocov3 mimic; do
  d=$out/flops/$s
  mkdir -p "$out/flops"
  if [ ! -f "$d/metrics.jsonl" ]; then
    $W $cfg --standalone "${flags[@]}" --train.stage=$s --train.batch_size=2 --train.steps=1 \
      --train.warmup_steps=0 --train.out_dir="$d" > "$d.log" 2>&1 || { cat "$d.log" >&2; exit 1; }
  fi
  gflop[$s]=$(jq -r 'select(.event=="start") | .gflop_per_img' "$d/metrics.jsonl")
done

# steps BATCH TFLOP STAGE: whole batches closest to TFLOP of that stage's training
steps() { awk -v b="$1" -v t="$2" -v g="${gflop[$3]}" 'BEGIN { s = int(t * 1e3 / (b * g) + 0.5); print (s < 1 ? 1 : s) }'; }

# train NAME STEPS INIT FLAGS...: one standalone stage in OUT/NAME, warmup 10% of its
# steps; skipped when its model exists (a rerun continues the script)
train() {
  local name=$1 n=$2 init=$3; shift 3
  local d=$out/$name
  if [ -f "$d/model.safetensors" ]; then echo "=== $name: done already"; return; fi
  local warm=$(( n / 10 > 1 ? n / 10 : 1 ))
  echo "=== $name: $n steps, init ${init:-none}: $*"
  local t0; t0=$(date +%s.%N)
  $W $cfg --standalone "$@" --train.steps="$n" --train.warmup_steps=$warm \
    --train.init_from="$init" --train.out_dir="$d" "${flags[@]}" 2>&1 | tee "$out/$name.log" |
    grep --line-buffered -E '^\[|GFLOP|done' || true
  [ -f "$d/model.safetensors" ] || { echo "quality: stage $name failed ($out/$name.log)" >&2; exit 1; }
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' > "$d/wall_s"
}

# evaluate ARM MODEL FLAGS...: eval of a model file (or pixels) into OUT/ARM.eval.jsonl
evaluate() {
  local arm=$1 model=$2; shift 2
  local f=$out/$arm.eval.jsonl
  if [ -s "$f" ]; then echo "=== eval $arm: done already"; return; fi
  echo "=== eval $arm: ${model:-pixels}"
  local t0; t0=$(date +%s.%N)
  $E $cfg ${model:+--encoder "$model"} --out "$f.tmp" "$@" "${flags[@]}" 2>&1 |
    tee "$out/$arm.eval.log" || true
  [ -s "$f.tmp" ] || { echo "quality: eval $arm failed ($out/$arm.eval.log)" >&2; exit 1; }
  mv "$f.tmp" "$f"
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' > "$out/$arm.eval_s"
}

prefix=$(awk -v b="$budget" -v s="$mae_share" 'BEGIN { print b * s }')
rest=$(awk -v b="$budget" -v s="$mae_share" 'BEGIN { print b * (1 - s) }')
echo "budget: $budget TFLOP per ViT arm (MAE prefix $prefix, second stage $rest); GFLOP/img:" \
  "mae ${gflop[mae]}, mocov3 ${gflop[mocov3]}, mimic ${gflop[mimic]}"

evaluate a "" --eval.features=pixels
evaluate a60k "" --eval.features=pixels --eval.train_limit=0
train scratch "$(steps 64 "$budget" mimic)" "" "${FT[@]}" "${SCRATCH_LR[@]}" --mimic.w_con=0
evaluate b "$out/scratch/model.safetensors"
train mae "$(steps 64 "$prefix" mae)" "" "${MAE[@]}"
train mae2 "$(steps 64 "$rest" mae)" "$out/mae/model.safetensors" "${MAE[@]}"
evaluate c "$out/mae2/model.safetensors"
train mocov3 "$(steps 64 "$rest" mocov3)" "$out/mae/model.safetensors" "${MOCO[@]}"
evaluate d "$out/mocov3/model.safetensors"
train mimic "$(steps 64 "$rest" mimic)" "$out/mae/model.safetensors" "${FT[@]}" "${FT_LR[@]}" \
  --mimic.w_con=1
evaluate e "$out/mimic/model.safetensors"
train finetune "$(steps 64 "$rest" mimic)" "$out/mae/model.safetensors" "${FT[@]}" "${FT_LR[@]}" \
  --mimic.w_con=0
evaluate f "$out/finetune/model.safetensors"

wall=$(( $(date +%s) - t_start ))
/usr/bin/python3 bench/quality/summary.py "$out" "$budget" "$wall" \
  "a|linear probe on raw pixels||a" \
  "b|ViT from scratch (CE + mixup)|scratch|b" \
  "c|MAE -> MAE -> probe, k-NN|mae,mae2|c" \
  "d|MAE -> MoCo v3 -> probe, k-NN|mae,mocov3|d" \
  "e|MAE -> MIMIC fine-tune|mae,mimic|e" \
  "f|MAE -> fine-tune, w_con 0|mae,finetune|f" \
  "ref|raw pixels, probe on all 60 000||a60k"

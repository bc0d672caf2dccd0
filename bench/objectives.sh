#!/usr/bin/env bash
# The objectives of the research side by side, in one run: every contrastive stage
# starts from the same MAE model and trains on the local cluster (deploy/pipeline.sh:
# 1 scheduler, 1 parameter server, 2 workers) for the step budget of its
# [pipeline.<stage>] section, then the frozen encoder is evaluated (linear probe and
# k-NN on the test set, the [eval] keys); beside them MAE alone, MAE with adversarial
# masking, and raw pixels. One config key switches the main job the same way:
# --pipeline.stages=mae,<objective>,eval.
#   bench/objectives.sh [--record] [--only obj1,obj2,...] [CONFIG.ini]
#   (default deploy/fmnist.ini; objectives: pixels, mae, mae-adv, mocov3, mocov2, mimic,
#   byol, contrawarp, crscont, densecl; --record appends the table to bench/RESULTS.md)
# Extra flags for every stage: OBJ_FLAGS="--section.key=value ...".
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
record=0
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record=1; shift ;;
    --only) only=$2; shift 2 ;;
    *) break ;;
  esac
done
cfg=${1:-deploy/fmnist.ini}
all=(pixels mae mae-adv mocov3 mocov2 mimic byol contrawarp crscont densecl)
objs=("${all[@]}")
[ -n "$only" ] && IFS=, read -r -a objs <<< "$only"
for o in "${objs[@]}"; do
  case " ${all[*]} " in *" $o "*) ;; *) echo "bench/objectives.sh: --only $o: expected one of ${all[*]}" >&2; exit 2 ;; esac
done
bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
root=runs/objectives
mkdir -p "$root"
read -r -a extra <<< "${OBJ_FLAGS:-}"
t_all=$(date +%s)
run_one() { # OBJECTIVE: its pipeline in $root/<objective>, the shared MAE stage linked in
  local o=$1 dir=$root/$1 stages
  case "$o" in
    pixels) stages=eval ;;
    mae) stages=mae,eval ;;
    mae-adv) stages=mae,eval ;;
    *) stages=mae,$o,eval ;;
  esac
  local flags=(--pipeline.stages="$stages" --train.out_dir="$dir" "${extra[@]}")
  [ "$o" = pixels ] && flags+=(--eval.features=pixels)
  [ "$o" = mae-adv ] && flags+=(--mae.mask_policy=adversarial)
  mkdir -p "$dir"
  # every objective but mae-adv starts from the one MAE run (the pipeline skips a stage
  # whose model.safetensors exists)
  if [ "$o" != mae-adv ] && [ "$o" != pixels ] && [ "$o" != mae ] && [ -f "$root/mae/0-mae/model.safetensors" ]; then
    [ -e "$dir/0-mae" ] || ln -s "$(realpath "$root/mae/0-mae")" "$dir/0-mae"
  fi
  MIMIC_CONFIG=$cfg bash deploy/pipeline.sh "${flags[@]}" > "$dir.log" 2>&1 || {
    echo "bench/objectives.sh: $o failed; see $dir.log" >&2
    tail -5 "$dir.log" >&2
    return 1
  }
}
# MAE first: the others start from its model
ordered=()
for o in "${objs[@]}"; do [ "$o" = mae ] && ordered+=(mae); done
for o in "${objs[@]}"; do [ "$o" != mae ] && ordered+=("$o"); done
failed=()
for o in "${ordered[@]}"; do
  echo "=== $o ($(( $(date +%s) - t_all )) s in)"
  run_one "$o" || failed+=("$o")
done
field() { grep -o "\"$2\":[0-9.eE+-]*" "$1" | tail -1 | cut -d: -f2; }
pct() { awk -v x="$1" 'BEGIN{ if (x == "") print "-"; else printf "%.2f", 100 * x }'; }
table="| objective | stages | linear probe top-1 % | k-NN k=20 top-1 % | k-NN k=1 top-1 % |
| --- | --- | --- | --- | --- |"
for o in "${ordered[@]}"; do
  e=$(ls "$root/$o"/*-eval/eval.jsonl 2>/dev/null | tail -1 || true)
  if [ -z "$e" ]; then
    table+="
| $o | failed | - | - | - |"
    continue
  fi
  st=$(basename "$(dirname "$e")")
  table+="
| $o | $(ls -d "$root/$o"/[0-9]-* | xargs -n1 basename | sed 's/^[0-9]*-//' | paste -sd, -) | $(pct "$(field "$e" probe_top1)") | $(pct "$(field "$e" knn20_top1)") | $(pct "$(field "$e" knn1_top1)") |"
done
report="config: $cfg$([ ${#extra[@]} -gt 0 ] && echo " ${extra[*]}"); $(( $(date +%s) - t_all )) s (stages already trained in $root are skipped, evaluations rerun); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); local cluster 1 server x 2 workers; every contrastive stage from the same MAE model ($root/mae/0-mae), budgets from [pipeline.<stage>]
$table"
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/objectives.sh $cfg"; echo; echo "$report"; } >> bench/RESULTS.md
fi
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }

#!/usr/bin/env bash
# The training pipeline on the local cluster: each training stage of the config's
# [pipeline] stages runs as one mpirun of the cluster (deploy/cluster.sh: 1 scheduler,
# S servers, W workers) and starts from the previous stage's model; an "eval" stage
# runs in one process. A stage whose model.safetensors exists is skipped, and
# --train.resume=auto continues a stage from its last checkpoint.
#   deploy/pipeline.sh [--servers S] [--workers W] [--section.key=value ...]
#   MIMIC_CONFIG=CFG.ini deploy/pipeline.sh ...       (default deploy/fmnist.ini)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
cfg=${MIMIC_CONFIG:-deploy/fmnist.ini}
cluster=()
flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --servers|--workers) cluster+=("$1" "$2"); shift 2 ;;
    *) flags+=("$1"); shift ;;
  esac
done
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
base=(--train.out_dir=runs/cluster "${flags[@]}")
mapfile -t stages < <(./build/worker/mimic-worker "$cfg" "${base[@]}" --pipeline-list)
t0=$(date +%s)
for line in "${stages[@]}"; do
  read -r i name dir <<< "$line"
  echo "=== pipeline stage $i: $name ($dir), $(( $(date +%s) - t0 )) s in"
  if [ "$name" = eval ]; then
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$(nproc)} \
      ./build/worker/mimic-worker "$cfg" "${base[@]}" --pipeline.run="$i" --standalone
  elif [ -f "$dir/model.safetensors" ]; then
    echo "stage $i ($name) is done already: $dir/model.safetensors"
  else
    MIMIC_CONFIG=$cfg bash deploy/cluster.sh "${cluster[@]}" "${base[@]}" --pipeline.run="$i"
  fi
done
echo "=== pipeline done in $(( $(date +%s) - t0 )) s; results: runs/cluster/*-eval/eval.jsonl"

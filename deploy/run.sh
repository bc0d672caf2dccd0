#!/usr/bin/env bash
# The main job on the bundled default (deploy/fmnist.ini: MAE, then MoCo v3, then a
# frozen-encoder linear probe and k-NN on Fashion-MNIST): installs dependencies, builds,
# and runs the pipeline on the local cluster, one mpirun per training stage — 1
# scheduler, 1 parameter server, 2 workers (deploy/pipeline.sh, deploy/cluster.sh).
#   deploy/run.sh [--servers S] [--workers W] [--section.key=value ...]
#   deploy/run.sh --standalone [--section.key=value ...]   (one process, no servers)
#   MIMIC_CONFIG=CFG.ini deploy/run.sh ...                  (another config)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
if [ "${1:-}" != "--standalone" ]; then exec bash deploy/pipeline.sh "$@"; fi
shift
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
exec ./build/worker/mimic-worker "${MIMIC_CONFIG:-deploy/fmnist.ini}" --standalone "$@"

#!/usr/bin/env bash
# The main job on the bundled default: installs dependencies, builds, and pre-trains
# an MAE ViT on Fashion-MNIST (deploy/mae-fmnist.ini). Extra arguments are passed to
# mimic-worker as config overrides, e.g. deploy/run.sh --train.steps=200
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
exec ./build/worker/mimic-worker deploy/mae-fmnist.ini --standalone "$@"

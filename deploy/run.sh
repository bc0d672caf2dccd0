#!/usr/bin/env bash
# The main job on the bundled default (deploy/mae-fmnist.ini: MAE pre-training on
# Fashion-MNIST): installs dependencies, builds, and runs the local cluster with one
# mpirun — 1 scheduler, 1 parameter server, 2 workers (deploy/cluster.sh).
#   deploy/run.sh [--servers S] [--workers W] [--section.key=value ...]
#   deploy/run.sh --standalone [--section.key=value ...]   (one process, no servers)
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
if [ "${1:-}" != "--standalone" ]; then exec bash deploy/cluster.sh "$@"; fi
shift
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}
exec ./build/worker/mimic-worker deploy/mae-fmnist.ini --standalone "$@"

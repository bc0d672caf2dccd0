#!/usr/bin/env bash
# The local cluster on one machine, launched the cluster way: one mpirun in MPMD form
# starts 1 scheduler, S parameter servers and W workers (default 1 and 2) on the
# bundled default (deploy/mae-fmnist.ini). MPI only gives ranks and hands the
# scheduler's address to everyone; training then runs over ZeroMQ.
#   deploy/cluster.sh [--servers S] [--workers W] [--curve] [--section.key=value ...]
# --curve (or MIMIC_CURVE=1) encrypts and authenticates every socket: a key pair per rank
# is made once in KEYS (default runs/cluster/keys, mode 0700; MIMIC_KEYS to choose) by
# mimic-keys, and each rank picks its own by its MPI rank (docs/security.md).
# Each process gets its own thread budget (deploy/mpmd.sh, shared with the multi-host
# launches deploy/hostfile.sh and deploy/slurm/mimicps.sbatch): workers share the cores,
# one OpenBLAS/OpenMP thread each (OMP_THREADS_PER_WORKER to change); the scheduler one;
# a server updates with all cores but one and leaves that to ZeroMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
S=1
W=2
curve=${MIMIC_CURVE:-0}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) S=$2; shift 2 ;;
    --workers) W=$2; shift 2 ;;
    --curve) curve=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
cfg=${MIMIC_CONFIG:-deploy/mae-fmnist.ini}
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
common=(--cluster.servers=$S --cluster.workers=$W --train.out_dir=runs/cluster)
if [ "$curve" = 1 ]; then
  keys=${MIMIC_KEYS:-runs/cluster/keys}
  ./build/proto/mimic-keys "$keys" --servers "$S" --workers "$W" >&2
  common+=(--cluster.curve=on --cluster.keys="$keys")
fi
common+=("${args[@]}")
source deploy/mpmd.sh
mimic_mpmd "$S" "$W" ./build "$cfg" "${common[@]}"
# deploy/supervise.sh runs mpirun: a SIGTERM/SIGINT to this script reaches every rank as
# SIGUSR1, on which the scheduler checkpoints the step the cluster stops at and ends
# (docs/runtime.md, "Preemption"); a cluster that fails because a process died (a
# killed server) is started again from its last checkpoint, up to MIMIC_RESTARTS (3)
# times ("Servers that come back").
exec bash deploy/supervise.sh --restarts "${MIMIC_RESTARTS:-3}" -- \
  mpirun "${root[@]}" --oversubscribe --bind-to none "${MPMD[@]}"

# Sourced by deploy/cluster.sh, deploy/hostfile.sh and deploy/slurm/mimicps.sbatch: the
# MPMD part of the one mpirun that starts a cluster (1 scheduler, S servers, W workers;
# MPI world ranks in that order, which is how a rank picks its CURVE key,
# docs/security.md), with each role's thread budget.
#   mimic_mpmd S W BIN CFG [ARGS...]   sets the array MPMD
# BIN is the build directory (its scheduler/, pserver/, worker/ binaries), CFG the INI
# file; both must have the same path on every host. ARGS go to every process.
# Threads: workers OMP_THREADS_PER_WORKER (default 1) each; the scheduler one; a server
# updates with all cores but one and leaves that to ZeroMQ (cluster.server_threads).
# With MIMIC_BIND=auto (multi-host launches) the scheduler and each server bind and
# advertise their own host's address (deploy/rank.sh) instead of cluster.bind_host.
mimic_mpmd() {
  local S=$1 W=$2 bin=$3 cfg=$4
  shift 4
  local t=${OMP_THREADS_PER_WORKER:-1} here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  local bind=()
  [ "${MIMIC_BIND:-}" = auto ] && bind=(bash "$here/rank.sh")
  MPMD=(-np 1 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
          "${bind[@]}" "$bin/scheduler/mimic-scheduler" "$cfg" "$@" :
        -np "$S" env -u OMP_NUM_THREADS OPENBLAS_NUM_THREADS=1
          "${bind[@]}" "$bin/pserver/mimic-pserver" "$cfg" "$@" :
        -np "$W" env OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t"
          "$bin/worker/mimic-worker" "$cfg" "$@")
}

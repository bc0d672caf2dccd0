#!/usr/bin/env bash
# A bare cluster from a hostfile: one mpirun in MPMD form starts 1 scheduler, S servers
# and W workers over the hosts of an Open MPI hostfile (docs/operations.md, "Launch
# recipes"). The same MPMD split as deploy/cluster.sh (deploy/mpmd.sh), with each
# scheduler and server bound to its own host's address (deploy/rank.sh) and the run
# under deploy/supervise.sh (SIGTERM: checkpoint and stop; a lost process: restart from
# the last checkpoint).
#   deploy/hostfile.sh --hostfile FILE [--servers S] [--workers W] [--keys DIR]
#                      [--dry-run] [--section.key=value ...]
# FILE: one host a line, "node1 slots=8" (mpirun fills them in order: rank 0, the
# scheduler, goes on the first host). Every host needs this tree (and its build/) at the
# same path, e.g. a shared file system or the Docker image (deploy/Dockerfile), and
# passwordless ssh from this one. --keys DIR: CURVE keys made by mimic-keys on a shared
# path (mode 0700; docs/security.md): the job runs with cluster.curve=on, which a
# cluster on a real network should. MIMIC_BIND_IFACE picks the interface to bind
# (default: each host's first address); MIMIC_CONFIG the INI (deploy/mae-fmnist.ini);
# MIMIC_BUILD the build directory (build); --dry-run prints the mpirun command only.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
source deploy/env.sh
S=1
W=2
hostfile=
keys=
dry=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) hostfile=$2; shift 2 ;;
    --servers) S=$2; shift 2 ;;
    --workers) W=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$hostfile" ] || [ ! -r "$hostfile" ]; then
  echo "hostfile.sh: give --hostfile FILE (a readable Open MPI hostfile)" >&2
  exit 2
fi
build=${MIMIC_BUILD:-$here/build}
cfg=${MIMIC_CONFIG:-$here/deploy/mae-fmnist.ini}
if [ "$dry" = 0 ] && [ ! -x "$build/worker/mimic-worker" ]; then
  bash deploy/install-deps.sh
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)"
fi
common=(--cluster.servers="$S" --cluster.workers="$W" --train.out_dir="$here/runs/hostfile")
if [ -n "$keys" ]; then
  [ "$dry" = 1 ] || [ -r "$keys/allow" ] || { echo "hostfile.sh: $keys/allow missing: run mimic-keys $keys --servers $S --workers $W" >&2; exit 2; }
  common+=(--cluster.curve=on --cluster.keys="$keys")
fi
common+=("${args[@]}")
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
export MIMIC_BIND=auto
# supervise.sh sets MIMIC_RESUME=auto when it restarts the job: -x takes it to every host
export MIMIC_RESUME=${MIMIC_RESUME:-}
source deploy/mpmd.sh
mimic_mpmd "$S" "$W" "$build" "$cfg" "${common[@]}"
cmd=(mpirun "${root[@]}" --hostfile "$hostfile" --bind-to none -x MIMIC_RESUME
     -x MIMIC_BIND_IFACE -x OPENBLAS_CORETYPE "${MPMD[@]}")
if [ "$dry" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec bash deploy/supervise.sh --restarts "${MIMIC_RESTARTS:-3}" -- "${cmd[@]}"

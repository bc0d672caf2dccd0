#!/usr/bin/env bash
# Parameter-server benchmarks, in one run on one machine (model: CONFIG, default
# deploy/mae-fmnist.ini, a 5.77M-float vector):
#  1. push+pull throughput of the whole parameter vector through a scheduler and one
#     server (bench_ps as the only worker), against raw ZeroMQ loopback round trips of
#     the same bytes; the AdamW time between push and pull (one thread, measured in the
#     client) is reported; servers pick their update threads as in deploy/cluster.sh;
#  2. distributed step overhead: the local cluster (1 server, 2 workers x batch B/2,
#     one thread each) against the standalone trainer (batch B, 2 threads), images/s
#     as the median of the logged windows after the first.
#   bench/ps.sh [--record] [CONFIG.ini]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi
cfg=${1:-deploy/mae-fmnist.ini}
bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# 1. data plane
./build/scheduler/mimic-scheduler "$cfg" --cluster.workers=1 --train.steps=1000000 \
  --train.out_dir="$tmp/ps" --endpoint-file "$tmp/ep" > "$tmp/sched.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$tmp/ep" ] && break; sleep 0.1; done
ep=$(cat "$tmp/ep")
env -u OMP_NUM_THREADS ./build/pserver/mimic-pserver "$cfg" --cluster.workers=1 --train.steps=1000000 \
  --train.out_dir="$tmp/ps" --scheduler "$ep" > "$tmp/server.log" 2>&1 &
pids+=($!)
ps_out=$(./build/bench/bench_ps "$cfg" --scheduler "$ep" --bench.iters 41)
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
pids=()
get() { printf '%s\n' "$1" | sed -n "s/^$2=//p"; }

# 2. step overhead on the same total batch
B=$(sed -n 's/^batch_size *= *//p' "$cfg" | head -1)
steps=40
median_ips() { # JSON lines file, field: median of the windows after the first
  grep -o "\"$2\":[0-9.e+-]*" "$1" | cut -d: -f2 | tail -n +2 | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}
OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 ./build/worker/mimic-worker "$cfg" --standalone \
  --train.steps=$steps --train.log_every=5 --train.out_dir="$tmp/solo" > "$tmp/solo.log" 2>&1
solo=$(median_ips "$tmp/solo/metrics.jsonl" images_per_s)
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
one=(env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
common=(--train.batch_size=$((B / 2)) --train.steps=$steps --train.log_every=5 \
        --cluster.workers=2 --train.out_dir="$tmp/cluster")
mpirun "${root[@]}" --oversubscribe --bind-to none \
  -np 1 "${one[@]}" ./build/scheduler/mimic-scheduler "$cfg" "${common[@]}" : \
  -np 1 env -u OMP_NUM_THREADS OPENBLAS_NUM_THREADS=1 \
      ./build/pserver/mimic-pserver "$cfg" "${common[@]}" : \
  -np 2 "${one[@]}" ./build/worker/mimic-worker "$cfg" "${common[@]}" > "$tmp/cluster.log" 2>&1
clus=$(median_ips "$tmp/cluster/scheduler.jsonl" img_per_s)
overhead=$(awk -v a="$clus" -v b="$solo" 'BEGIN{printf "%.1f", 100*(1-a/b)}')
report=$(cat <<TXT
vector: $(get "$ps_out" vector_floats) floats ($(get "$ps_out" vector_mb) MB)
raw ZeroMQ loopback round trip (zero-copy send, copy into params on receive): $(get "$ps_out" raw_zmq_gbps) GB/s
push+pull through scheduler + 1 server: $(get "$ps_out" ps_push_pull_gbps) GB/s = $(get "$ps_out" ratio_ps_raw) of raw
  of which server AdamW+EMA between push and pull: $(get "$ps_out" server_adamw_ms) ms; transport alone $(get "$ps_out" ps_transport_gbps) GB/s = $(get "$ps_out" ratio_transport_raw) of raw
pull only (no update in between): $(get "$ps_out" pull_only_gbps) GB/s = $(get "$ps_out" ratio_pull_raw) of raw
step on total batch $B: standalone (1 process, 2 threads) $solo img/s; cluster (1 server, 2 workers x $((B / 2)), 1 thread each) $clus img/s; overhead $overhead%
TXT
)
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/ps.sh $cfg"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi

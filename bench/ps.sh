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
# Both parts run with CURVE off and on (cluster.curve, a key directory from mimic-keys
# in the temporary dir, each process given its key file by cluster.key), in the order
# off, on, on, off so that drift and the other tenants' load hit both alike; a CURVE
# figure is the mean of its two runs (part 1) or the median of both runs' windows
# (part 2), and the on/off ratios are the cost of encryption. The standalone run sits
# in the middle of part 2. The raw ZeroMQ reference is plaintext; with CURVE bench_ps
# also times the raw round trip with CURVE on both ends (no cluster, no ZAP).
# --ab KEY compares another switch the same way (A, B, B, A), CURVE off throughout:
#   --ab prefetch: cluster.prefetch off/on (part 2 only: the data plane does not use it);
#   --ab wire: cluster.wire fp32/bf16 (push+pull time and GB/s counted in f32 bytes, so
#     the figures compare the same parameters moved; and the cluster step);
#   --ab push_slices: cluster.push_slices off/on (whole pushes, or pieces the server
#     applies as they arrive; push+pull against raw ZeroMQ, and the cluster step);
#   --ab overlap: cluster.overlap off/on (pieces pushed after or during backward; part 2).
#  3. (default run only; PS_TORCH=0 skips it) the cluster against PyTorch DDP gloo 2x1
#     pinned at the same total batch, in fp32 and, on a BF16 CPU, in bf16 (our
#     train.precision=bf16 against torch.autocast, with cluster.wire fp32 and bf16): the
#     ratios and best vs best.
#   bench/ps.sh [--record] [--ab curve|prefetch|wire|push_slices|overlap] [CONFIG.ini]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
source bench/lib.sh
record=0
if [ "${1:-}" = "--record" ]; then record=1; shift; fi
ab=curve
if [ "${1:-}" = "--ab" ]; then ab=${2:?--ab needs curve, prefetch or wire}; shift 2; fi
case $ab in
  curve) order=(off on on off) ;;
  prefetch) order=(off on on off) ;;
  wire) order=(fp32 bf16 bf16 fp32) ;;
  push_slices) order=(off on on off) ;;
  overlap) order=(off on on off) ;;
  *) echo "bench/ps.sh: --ab $ab: use curve, prefetch, wire, push_slices or overlap" >&2; exit 2 ;;
esac
cfg=${1:-deploy/mae-fmnist.ini}
bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
keys=$tmp/keys
./build/proto/mimic-keys "$keys" --servers 1 --workers 2 >/dev/null
cv=()
curve_args() { # MODE KEYFILE: the flags of the A/B switch for one process, in cv
  cv=()
  case $ab in
    curve) if [ "$1" = on ]; then cv=(--cluster.curve=on --cluster.keys="$keys" --cluster.key="$keys/$2"); fi ;;
    *) cv=("--cluster.$ab=$1") ;;
  esac
}
get() { printf '%s\n' "$1" | sed -n "s/^$2=//p"; }
mean() { printf '%s\n' "$@" | awk '{s+=$1} END{printf "%.3f", s/NR}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }
# on/off of each adjacent pair of runs (1 over 0, 2 over 3), given the 4 runs' figures
paired() { echo "$(ratio "$2" "$1"), $(ratio "$3" "$4")"; }

# 1. data plane: a fresh scheduler + server per run, bench_ps the only worker
data_plane() { # MODE RUN
  local d=$tmp/ps-$2
  mkdir -p "$d"
  curve_args "$1" scheduler.key
  ./build/scheduler/mimic-scheduler "$cfg" --cluster.workers=1 --train.steps=1000000 \
    --train.out_dir="$d" --endpoint-file "$d/ep" "${cv[@]}" > "$d/sched.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$d/ep" ] && break; sleep 0.1; done
  local ep
  ep=$(cat "$d/ep")
  curve_args "$1" server-0.key
  env -u OMP_NUM_THREADS ./build/pserver/mimic-pserver "$cfg" --cluster.workers=1 \
    --train.steps=1000000 --train.out_dir="$d" --scheduler "$ep" "${cv[@]}" \
    > "$d/server.log" 2>&1 &
  pids+=($!)
  curve_args "$1" worker-0.key
  ./build/bench/bench_ps "$cfg" --scheduler "$ep" --bench.iters 21 "${cv[@]}" > "$d/out"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pids=()
}
if [ "$ab" != prefetch ] && [ "$ab" != overlap ]; then
  for r in 0 1 2 3; do data_plane "${order[$r]}" "$r"; done
  ps1=$(cat "$tmp/ps-0/out")
fi
pp() { # FIELD MODE: the mean over the runs in that mode
  local v=()
  for r in 0 1 2 3; do
    if [ "${order[$r]}" = "$2" ]; then v+=("$(get "$(cat "$tmp/ps-$r/out")" "$1")"); fi
  done
  mean "${v[@]}"
}
runs() { # FIELD MODE: the runs' figures in order, for the spread
  local v=()
  for r in 0 1 2 3; do
    if [ "${order[$r]}" = "$2" ]; then v+=("$(get "$(cat "$tmp/ps-$r/out")" "$1")"); fi
  done
  echo "${v[*]}" | sed 's/ /, /g'
}

# 2. step overhead on the same total batch
B=$(sed -n 's/^batch_size *= *//p' "$cfg" | head -1)
B_total=$B
steps=${PS_STEPS:-40} # cluster steps per run (PS_STEPS: fewer on a loaded machine)
windows() { # JSON lines file, field: the windows after the first
  grep -o "\"$2\":[0-9.e+-]*" "$1" | cut -d: -f2 | tail -n +2
}
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
solo_run() {
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 ./build/worker/mimic-worker "$cfg" --standalone \
    --train.steps=$steps --train.log_every=5 --train.out_dir="$tmp/solo" > "$tmp/solo.log" 2>&1
}
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
one=(env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
extra=() # more flags for every process of cluster_run (part 3: the precision)
cluster_run() { # MODE RUN: mpirun as deploy/cluster.sh, each rank its key by cluster.key
  local common=(--train.batch_size=$((B / 2)) --train.steps=$steps --train.log_every=5 \
                --cluster.servers=1 --cluster.workers=2 --train.out_dir="$tmp/cluster-$2" \
                "${extra[@]}")
  local sc sv w0 w1
  curve_args "$1" scheduler.key; sc=("${cv[@]}")
  curve_args "$1" server-0.key; sv=("${cv[@]}")
  curve_args "$1" worker-0.key; w0=("${cv[@]}")
  curve_args "$1" worker-1.key; w1=("${cv[@]}")
  mpirun "${root[@]}" --oversubscribe --bind-to none \
    -np 1 "${one[@]}" ./build/scheduler/mimic-scheduler "$cfg" "${common[@]}" "${sc[@]}" : \
    -np 1 env -u OMP_NUM_THREADS OPENBLAS_NUM_THREADS=1 \
        ./build/pserver/mimic-pserver "$cfg" "${common[@]}" "${sv[@]}" : \
    -np 1 "${one[@]}" ./build/worker/mimic-worker "$cfg" "${common[@]}" "${w0[@]}" : \
    -np 1 "${one[@]}" ./build/worker/mimic-worker "$cfg" "${common[@]}" "${w1[@]}" \
    > "$tmp/cluster-$2.log" 2>&1
}
cluster_run "${order[0]}" 0
cluster_run "${order[1]}" 1
solo_run
cluster_run "${order[2]}" 2
cluster_run "${order[3]}" 3
solo=$(windows "$tmp/solo/metrics.jsonl" images_per_s | median)
step_ips() { # MODE: median of the windows of both its runs; RUNS: each run's median
  for r in 0 1 2 3; do
    if [ "${order[$r]}" = "$1" ]; then windows "$tmp/cluster-$r/scheduler.jsonl" img_per_s; fi
  done | median
}
step_runs() {
  local v=()
  for r in 0 1 2 3; do
    if [ "${order[$r]}" = "$1" ]; then
      v+=("$(windows "$tmp/cluster-$r/scheduler.jsonl" img_per_s | median)")
    fi
  done
  echo "${v[*]}" | sed 's/ /, /g'
}
step_paired() {
  local v=()
  for r in 0 1 2 3; do v+=("$(windows "$tmp/cluster-$r/scheduler.jsonl" img_per_s | median)"); done
  paired "${v[@]}"
}
pp_paired() { # FIELD
  local v=()
  for r in 0 1 2 3; do v+=("$(get "$(cat "$tmp/ps-$r/out")" "$1")"); done
  paired "${v[@]}"
}
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$ab" = curve ]; then
  clus=$(step_ips off)
  clus_cv=$(step_ips on)
  overhead=$(awk -v a="$clus" -v b="$solo" 'BEGIN{printf "%.1f", 100*(1-a/b)}')
  overhead_cv=$(awk -v a="$clus_cv" -v b="$solo" 'BEGIN{printf "%.1f", 100*(1-a/b)}')
  raw=$(pp raw_zmq_gbps off); ppo=$(pp ps_push_pull_gbps off); ppc=$(pp ps_push_pull_gbps on)
  pullo=$(pp pull_only_gbps off); pullc=$(pp pull_only_gbps on)
  rawc_raw=$(pp raw_zmq_gbps on); rawc=$(pp raw_curve_gbps on)
  adamw=$(pp server_adamw_ms off); tro=$(pp ps_transport_gbps off)
fi
ma=${order[0]} mb=${order[1]}
if [ "$ab" != curve ]; then
  solo_line="standalone (1 process, 2 threads) $solo img/s"
  stepA=$(step_ips "$ma"); stepB=$(step_ips "$mb")
  step_line="step on total batch $B_total: cluster (1 server, 2 workers x $((B_total / 2)), 1 thread each, median of both runs' windows) $ma $stepA img/s ($(step_runs "$ma")), $mb $stepB img/s ($(step_runs "$mb")); $mb/$ma $(ratio "$stepB" "$stepA") (pairs $(step_paired)); $solo_line"
  if [ "$ab" = prefetch ] || [ "$ab" = overlap ]; then
    report="load average $load_start at the start, $load_end at the end; CPU $(grep -q avx512f /proc/cpuinfo && echo 'with AVX-512' || echo 'without AVX-512'); cluster.$ab, order of runs $ma, $mb, $mb, $ma (standalone between the 2nd and 3rd)
$step_line"
  else
    report=$(cat <<TXT
load average $load_start at the start, $load_end at the end; CPU $(grep -q avx512f /proc/cpuinfo && echo 'with AVX-512' || echo 'without AVX-512'); cluster.$ab, order of runs $ma, $mb, $mb, $ma (part 2: standalone between the 2nd and 3rd)
vector: $(get "$ps1" vector_floats) floats ($(get "$ps1" vector_mb) MB in f32)
raw ZeroMQ loopback round trip of the f32 vector: $(pp raw_zmq_gbps "$ma") GB/s ($ma runs), $(pp raw_zmq_gbps "$mb") GB/s ($mb runs)
push+pull ($ma): $(pp ps_push_pull_ms "$ma") ms, $(pp ps_push_pull_gbps "$ma") GB/s ($(runs ps_push_pull_gbps "$ma")) = $(ratio "$(pp ps_push_pull_gbps "$ma")" "$(pp raw_zmq_gbps "$ma")") of raw; wire bytes per round trip $(get "$(cat "$tmp/ps-0/out")" wire_mb) MB
push+pull ($mb): $(pp ps_push_pull_ms "$mb") ms, $(pp ps_push_pull_gbps "$mb") GB/s of f32 parameters ($(runs ps_push_pull_gbps "$mb")) = $(ratio "$(pp ps_push_pull_gbps "$mb")" "$(pp raw_zmq_gbps "$mb")") of raw f32; wire bytes per round trip $(get "$(cat "$tmp/ps-1/out")" wire_mb) MB; $mb/$ma time $(ratio "$(pp ps_push_pull_ms "$mb")" "$(pp ps_push_pull_ms "$ma")") (pairs $(pp_paired ps_push_pull_ms))
pull only: $ma $(pp pull_only_gbps "$ma") GB/s, $mb $(pp pull_only_gbps "$mb") GB/s of f32 parameters
$step_line
TXT
)
  fi
else
report=$(cat <<TXT
load average $load_start at the start, $load_end at the end; CPU $(grep -q avx512f /proc/cpuinfo && echo 'with AVX-512' || echo 'without AVX-512'); order of runs off, on, on, off (part 2: standalone between the 2nd and 3rd)
vector: $(get "$ps1" vector_floats) floats ($(get "$ps1" vector_mb) MB)
CURVE off (mean of 2 runs of 21 round trips, medians):
raw ZeroMQ loopback round trip (plaintext, zero-copy send, copy into params on receive): $raw GB/s
push+pull through scheduler + 1 server: $ppo GB/s ($(runs ps_push_pull_gbps off)) = $(ratio "$ppo" "$raw") of raw
  of which server AdamW+EMA between push and pull: $adamw ms; transport alone $tro GB/s = $(ratio "$tro" "$raw") of raw
pull only (no update in between): $pullo GB/s = $(ratio "$pullo" "$raw") of raw
CURVE on (same):
raw ZeroMQ round trip with CURVE on both ends: $rawc GB/s = $(ratio "$rawc" "$rawc_raw") of plaintext raw in the same runs ($rawc_raw)
push+pull: $ppc GB/s ($(runs ps_push_pull_gbps on)) = $(ratio "$ppc" "$rawc") of raw CURVE; CURVE on/off $(ratio "$ppc" "$ppo") (pairs $(pp_paired ps_push_pull_gbps))
pull only: $pullc GB/s; CURVE on/off $(ratio "$pullc" "$pullo") (pairs $(pp_paired pull_only_gbps))
step on total batch $B: standalone (1 process, 2 threads) $solo img/s; cluster (1 server, 2 workers x $((B / 2)), 1 thread each, median of both runs' windows) CURVE off $clus img/s ($(step_runs off)), overhead $overhead%; CURVE on $clus_cv img/s ($(step_runs on)), overhead $overhead_cv%; CURVE on/off $(ratio "$clus_cv" "$clus") (pairs $(step_paired))
TXT
)
fi

# 3. against PyTorch's peer of a 2-worker cluster (../shared/BENCH.md): DDP with gloo,
# 2 ranks pinned to one core each (bench/ddp_torch.py), total batch B, in fp32 and, on
# a CPU with AVX512_BF16, with torch.autocast bf16 (its best there); our cluster in
# train.precision=fp32 and bf16 beside it (bf16 also with cluster.wire=bf16, the bytes
# halved both ways), CURVE off. PS_TORCH=0 skips this part.
if [ "$ab" = curve ] && [ "${PS_TORCH:-1}" != 0 ]; then
  bash deploy/install-deps.sh --bench >/dev/null
  tflags=$(cfg_flags "$cfg" "${MAE_KEYS[@]}")
  precs=(fp32)
  grep -q avx512_bf16 /proc/cpuinfo && precs+=(bf16)
  t3=""
  declare -A ours theirs
  for p in "${precs[@]}"; do
    extra=(--train.precision="$p")
    cluster_run off "p$p"
    extra=()
    ours[$p]=$(windows "$tmp/cluster-p$p/scheduler.jsonl" img_per_s | median)
    ac=""
    [ "$p" = bf16 ] && ac=--autocast
    # shellcheck disable=SC2086
    theirs[$p]=$(get "$(/usr/bin/python3 bench/ddp_torch.py $tflags --batch "$B" $ac)" torch_ddp_img_per_s)
    t3+="
$p: cluster (1 server, 2 workers x $((B / 2)), train.precision=$p) ${ours[$p]} img/s; PyTorch DDP gloo 2x1 pinned$([ "$p" = bf16 ] && echo ' with bf16 autocast') ${theirs[$p]} img/s; ratio $(ratio "${ours[$p]}" "${theirs[$p]}")"
    if [ "$p" = bf16 ]; then # bf16 compute with bf16 pulls and pushes (cluster.wire=auto)
      extra=(--train.precision=bf16 --cluster.wire=bf16)
      cluster_run off pwire
      extra=()
      ours[wire]=$(windows "$tmp/cluster-pwire/scheduler.jsonl" img_per_s | median)
      t3+="
bf16, cluster.wire=bf16: cluster ${ours[wire]} img/s; ratio to DDP bf16 $(ratio "${ours[wire]}" "${theirs[bf16]}")"
    fi
  done
  best_o=$(printf '%s\n' "${ours[@]}" | sort -g | tail -1)
  best_t=$(printf '%s\n' "${theirs[@]}" | sort -g | tail -1)
  report+="
against PyTorch (total batch $B, CURVE off; load $(cut -d' ' -f1-3 /proc/loadavg) at the end):$t3
best vs best: cluster $best_o / DDP $best_t = $(ratio "$best_o" "$best_t")"
fi
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/ps.sh --ab $ab $cfg"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi

#!/usr/bin/env bash
# Scaling of the BSP cluster, measured on one machine and fitted by a cost model.
#  1. loopback grid: the local cluster (elastic launch: 1 scheduler, S servers, W workers,
#     one thread each, all oversubscribed on this machine's cores) at every W of WORKERS
#     and S of SERVERS, on CONFIG (default bench/scale.ini: a small MAE ViT, per-worker
#     batch fixed, so W workers train W x batch per step);
#  2. link-limited grid: the same cluster with each process in its own network namespace,
#     one veth per process into a bridge, both directions of every veth shaped by
#     `tc tbf` to each rate of RATES (default 1gbit 10gbit): one node = one NIC at that
#     rate, as the cost model assumes. The namespaces are made here and removed on exit.
#     The kernel must have veth, bridge and sch_tbf; sch_netem (link latency) is used when
#     present (NETEM_DELAY, default 50us each way), else the run says it is absent and
#     the links have only the veth's own latency.
# A point of W workers measures STEPS x 8 / W steps (at least STEPS) after WARMUP dropped
# ones, so every point's window is about as long in wall time (a BSP step of W workers
# on 2 cores takes about W times as long): 30-40 s a point on this machine. The per-step phase times come
# from every worker-<rank>.jsonl (whatever *_s fields the worker writes), the step time
# from the scheduler's progress records, and the cores the machine's other tenants took
# during the measured steps from /proc (busy ticks minus the point's own processes').
# Then bench/scale_model.py collects the points (RUN/points.json), fits the cost model
# (RUN/fit.json) and prints measured vs predicted and the projection to 64 workers x 8
# servers into RUN/report.md (docs/scaling.md says what the model is). Run it as root
# (namespaces, tc) and under nice: a grid takes 15-30 minutes on 2 busy cores.
#   bench/scale.sh [--record] [--out RUN] [--workers "1 2 4 8"] [--servers "1 2 4"]
#                  [--rates "1gbit 10gbit"] [--net-workers "1 2 4 8"] [--net-servers "1 2"]
#                  [--steps N] [--warmup N] [CONFIG.ini] [--section.key=value ...]
# --rates "" skips part 2. Re-running with the same --out keeps the points already
# measured (those with a `done` file), so an interrupted grid can be completed; to refit
# without running: /usr/bin/python3 bench/scale_model.py collect RUN > RUN/points.json;
# /usr/bin/python3 bench/scale_model.py fit RUN/points.json.
# The whole script is one { } group, so bash parses it before running it: editing the file
# while a grid runs (hours on a busy machine) does not change the running copy.
{
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
record=0 run="" steps=35 warmup=15
workers="1 2 4 8" servers="1 2 4" rates="1gbit 10gbit" nworkers="1 2 4 8" nservers="1 2"
cfg=bench/scale.ini
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record=1; shift ;;
    --out) run=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --net-workers) nworkers=$2; shift 2 ;;
    --net-servers) nservers=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --*=*) extra+=("$1"); shift ;;
    -*) echo "bench/scale.sh: unknown option $1" >&2; exit 2 ;;
    *) cfg=$1; shift ;;
  esac
done
[ -r "$cfg" ] || { echo "bench/scale.sh: cannot read config $cfg" >&2; exit 2; }
for v in "steps $steps" "warmup $warmup"; do
  set -- $v
  [[ "$2" =~ ^[0-9]+$ ]] || { echo "bench/scale.sh: --$1 $2 is not a whole number" >&2; exit 2; }
done
for v in $workers $servers $nworkers $nservers; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "bench/scale.sh: worker/server count $v is not a positive number" >&2; exit 2; }
done
for v in $rates; do
  [[ "$v" =~ ^[0-9.]+[kmg]bit$ ]] || { echo "bench/scale.sh: --rates $v: expected NUMBER{k,m,g}bit" >&2; exit 2; }
done
[ "$steps" -gt 2 ] || { echo "bench/scale.sh: --steps $steps: at least 3 measured steps" >&2; exit 2; }
PY=/usr/bin/python3
bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 >/dev/null
run=${run:-runs/scale/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$run/points"
echo "bench/scale.sh: run directory $run" >&2

pids=()
nsp="mscale$$" # namespaces of this run: $nsp-sw (the bridge), $nsp-n<i> (one per process)
nodes=0
kill_pids() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; pids=(); }
ns_teardown() {
  local i
  for ((i = 0; i < nodes; i++)); do ip netns del "$nsp-n$i" 2>/dev/null || true; done
  [ "$nodes" -gt 0 ] && ip netns del "$nsp-sw" 2>/dev/null || true
  nodes=0
}
cleanup() { kill_pids; ns_teardown; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
netem=0

# N nodes 10.77.0.(i+1) in namespaces $nsp-n<i>, each with eth0 veth'd into the bridge
# of $nsp-sw (its peer there is v<i>)
ns_setup() {
  local n=$1 i
  ip netns add "$nsp-sw"
  nodes=$n
  ip -n "$nsp-sw" link add br0 type bridge
  ip -n "$nsp-sw" link set br0 up
  for ((i = 0; i < n; i++)); do
    ip netns add "$nsp-n$i"
    ip -n "$nsp-sw" link add "v$i" type veth peer name eth0 netns "$nsp-n$i"
    ip -n "$nsp-sw" link set "v$i" master br0 up
    ip -n "$nsp-n$i" addr add "10.77.0.$((i + 1))/24" dev eth0
    ip -n "$nsp-n$i" link set eth0 up
    ip -n "$nsp-n$i" link set lo up
  done
}
# every link at RATE both ways: tbf (+ netem delay when the kernel has it)
ns_shape() {
  local rate=$1 i bits burst
  bits=$(echo "$rate" | awk '{r=$1; m=1; if (r ~ /gbit$/) m=1e9; else if (r ~ /mbit$/) m=1e6; sub(/[a-z]+$/, "", r); print r*m}')
  # a burst of 2 ms at the rate (at least 64 KB: veth hands tbf GSO segments that big)
  burst=$(awk -v b="$bits" 'BEGIN{x=b/8*0.002; if (x < 65536) x=65536; printf "%d", x}')
  for ((i = 0; i < nodes; i++)); do
    for side in "$nsp-n$i eth0" "$nsp-sw v$i"; do
      set -- $side
      if [ "$netem" = 1 ]; then
        tc -n "$1" qdisc replace dev "$2" root handle 1: netem delay "$NETEM_DELAY"
        tc -n "$1" qdisc replace dev "$2" parent 1:1 handle 10: tbf rate "$rate" burst "$burst" latency 20ms
      else
        tc -n "$1" qdisc replace dev "$2" root tbf rate "$rate" burst "$burst" latency 20ms
      fi
    done
  done
}
NETEM_DELAY=${NETEM_DELAY:-50us}
ns_probe() { # can this kernel do it? sets netem; returns 1 without namespaces or tbf
  local t="$nsp-probe"
  ip netns add "$t" 2>/dev/null || { echo "no network namespaces (ip netns add failed)"; return 1; }
  local ok=0
  if ip -n "$t" link add pa type veth peer name pb 2>/dev/null; then
    if tc -n "$t" qdisc add dev pa root tbf rate 1gbit burst 64kb latency 20ms 2>/dev/null; then
      ok=1
      tc -n "$t" qdisc add dev pb root netem delay 50us 2>/dev/null && netem=1
    else
      echo "the kernel has no sch_tbf (tc qdisc add ... tbf failed)"
    fi
  else
    echo "no veth support"
  fi
  ip netns del "$t"
  [ "$ok" = 1 ]
}

# "wall busy ours": the time, the machine's busy CPU ticks (user nice system irq softirq
# steal) and those of this point's processes (utime + stime of every thread)
snap() {
  local f=() p
  for p in "${pids[@]}"; do f+=("/proc/$p/stat"); done
  echo "$(date +%s.%N) $(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)" \
       "$(awk '{s += $14 + $15} END{print s}' "${f[@]}" 2>/dev/null)"
}
# every process of the point still running (an exited one, even unreaped, no longer
# reports its threads' ticks)
alive() {
  local p st
  for p in "${pids[@]}"; do
    st=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || true)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ] || return 1
  done
}
# one grid point: RATE (loopback or a tc rate), W, S into DIR
point() {
  local rate=$1 W=$2 S=$3 dir=$4 i host ep pfx=()
  if [ -s "$dir/done" ]; then echo "  $dir: measured before, kept" >&2; kept=$((kept + 1)); return 0; fi
  rm -rf "$dir"; mkdir -p "$dir"
  local n=$((steps * 8 / W)); [ "$n" -ge "$steps" ] || n=$steps
  local common=("$cfg" --cluster.servers="$S" --cluster.workers="$W" --train.steps=$((warmup + n))
                --train.out_dir="$dir" "${extra[@]}")
  node_of() { if [ "$rate" = loopback ]; then pfx=(); host=127.0.0.1;
              else pfx=(ip netns exec "$nsp-n$1"); host=10.77.0.$(($1 + 1)); fi; }
  node_of 0
  "${pfx[@]}" ./build/scheduler/mimic-scheduler "${common[@]}" --cluster.bind_host="$host" \
    --endpoint-file "$dir/ep" > "$dir/scheduler.log" 2>&1 &
  local sched=$!
  pids+=("$sched")
  for _ in $(seq 200); do [ -s "$dir/ep" ] && break; sleep 0.05; done
  [ -s "$dir/ep" ] || { echo "bench/scale.sh: the scheduler wrote no endpoint ($dir/scheduler.log)" >&2; return 1; }
  ep=$(cat "$dir/ep")
  for ((i = 0; i < S; i++)); do
    node_of $((1 + i))
    "${pfx[@]}" ./build/pserver/mimic-pserver "${common[@]}" --scheduler "$ep" \
      --cluster.bind_host="$host" > "$dir/server-$i.log" 2>&1 &
    pids+=($!)
  done
  local wp=()
  for ((i = 0; i < W; i++)); do
    node_of $((1 + S + i))
    "${pfx[@]}" ./build/worker/mimic-worker "${common[@]}" --scheduler "$ep" \
      > "$dir/worker-$i.log" 2>&1 &
    pids+=($!); wp+=($!)
  done
  local rc=0 t0=$SECONDS a="" b="" last
  # CPU snapshots: a when the cluster passes the warm-up, b the last one while every
  # process still runs; the measured steps lie between them. A point that has not ended
  # within 15 minutes is stuck: its logs say why
  while kill -0 "$sched" 2>/dev/null; do
    if [ $((SECONDS - t0)) -gt 900 ]; then echo "bench/scale.sh: $dir stuck, killed" >&2; rc=1; break; fi
    last=$(grep -o '"step":[0-9]*' "$dir/scheduler.jsonl" 2>/dev/null | tail -1 | cut -d: -f2 || true)
    if [ -n "$last" ] && [ "$last" -ge "$warmup" ] && alive; then
      if [ -z "$a" ]; then a=$(snap); else last=$(snap); alive && b=$last; fi
    fi
    sleep 0.5
  done
  wait "$sched" || rc=$?
  for p in "${wp[@]}"; do wait "$p" || rc=$?; done
  kill_pids
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    echo "bench/scale.sh: point $dir failed (exit $rc); logs in $dir" >&2
    return 1
  fi
  # the cores the other tenants of this machine took while the point ran: all busy CPU
  # time minus this script's reaped children's, over the wall time
  local cores='"bg_cores":0'
  if [ -n "$b" ]; then
    cores=$(echo "$a $b" | awk -v hz="$(getconf CLK_TCK)" -v n="$(getconf _NPROCESSORS_ONLN)" '{w=$4-$1; bg=(($5-$2)-($6-$3))/hz/w;
      if (bg<0) bg=0; printf "\"cores\":%d,\"ours_cores\":%.3f,\"bg_cores\":%.3f,\"window_s\":%.1f", n, ($6-$3)/hz/w, bg, w}')
  fi
  printf '{"rate":"%s","workers":%d,"servers":%d,"warmup":%d,"load1":%s,"seconds":%d,%s}\n' \
    "$rate" "$W" "$S" "$warmup" "$(cut -d' ' -f1 /proc/loadavg)" $((SECONDS - t0)) "$cores" > "$dir/done"
  # the logs are what the model reads; the trained weights and shards (17 MB a point) go
  rm -rf "$dir/ckpt" "$dir"/*.safetensors
  echo "  $dir: $((SECONDS - t0)) s" >&2
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
kept=0
# the model's size and FLOPs per image: the standalone trainer's start record, one step
if [ ! -s "$run/model/metrics.jsonl" ]; then
  ./build/worker/mimic-worker "$cfg" "${extra[@]}" --standalone --train.steps=1 \
    --train.out_dir="$run/model" > "$run/model.log" 2>&1 ||
    { echo "bench/scale.sh: the standalone step failed ($run/model.log)" >&2; exit 1; }
fi
for S in $servers; do
  for W in $workers; do point loopback "$W" "$S" "$run/points/loopback-w$W-s$S"; done
done
netnote=""
if [ -n "$rates" ]; then
  if why=$(ns_probe); then
    maxn=1
    for S in $nservers; do for W in $nworkers; do
      [ $((1 + S + W)) -gt "$maxn" ] && maxn=$((1 + S + W)); done; done
    ns_setup "$maxn"
    [ "$netem" = 1 ] && netnote="links: tbf + netem delay $NETEM_DELAY each way" ||
      netnote="links: tbf only (this kernel has no sch_netem: no added latency)"
    echo "bench/scale.sh: $maxn namespaces; $netnote" >&2
    for rate in $rates; do
      ns_shape "$rate"
      for S in $nservers; do
        for W in $nworkers; do point "$rate" "$W" "$S" "$run/points/$rate-w$W-s$S"; done
      done
    done
    ns_teardown
  else
    netnote="link-limited runs skipped: $why"
    echo "bench/scale.sh: $netnote" >&2
  fi
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
$PY bench/scale_model.py collect "$run" > "$run/points.json"
$PY bench/scale_model.py fit "$run/points.json" --out "$run/fit.json" > "$run/report.md"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
ncores=$(getconf _NPROCESSORS_ONLN)
report=$(cat <<TXT
$cfg, $warmup warm-up steps then $steps x 8 / W measured (at least $steps); $ncores cores ($cpu), one thread per process; load average $load_start at the start, $load_end at the end$([ "$kept" -gt 0 ] && echo "; $kept points kept from an earlier run into $run (each point's load in its done file)")
${netnote:-no link-limited runs}
$(cat "$run/report.md")
TXT
)
echo "$report"
echo "$report" > "$run/report.md"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/scale.sh (run $run)"
    echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi
exit 0
}

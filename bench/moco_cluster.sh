#!/usr/bin/env bash
# The MoCo v3 step on the local cluster against the standalone step at equal total
# batch, in one run on one machine. Model: the main job's contrastive stage (CONFIG,
# default deploy/fmnist.ini: ViT 192/12/3 on 32x32, patch 4; projector and predictor
# 1024 -> 256). Cluster: deploy/cluster.sh (one mpirun: scheduler, 1 server, 2 workers
# of B/2, one thread each); standalone: one process of batch B on 2 threads with
# contrastive.bn_groups=2, so both compute the same step (docs/runtime.md, "BatchNorm in
# the contrastive heads"). The machine is shared, so the runs alternate, standalone then
# cluster, PAIRS times, and the ratio is taken within each pair; a run's figure is the
# median images/s of its logged windows (5 steps each) after the first. The load average
# at the start of each pair is printed: with other work on the cores the 2-thread
# standalone process loses more than the 1-thread workers, so compare quiet pairs.
#   bench/moco_cluster.sh [--record] [--pairs N] [--batch B] [--steps N] [CONFIG.ini]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
record=0 pairs=3 B=64 steps=25
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record=1; shift ;;
    --pairs) pairs=$2; shift 2 ;;
    --batch) B=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) break ;;
  esac
done
cfg=${1:-deploy/fmnist.ini}
bash deploy/install-deps.sh >/dev/null
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT

# the one stage alone (no [pipeline] of CONFIG), the pipeline's MoCo v3 augmentation; a
# worker starved of the cores by other work for dead_ms (default 3 s, seen at load 10)
# would be declared dead and end the run
flags=(--pipeline.stages= --train.stage=mocov3 --data.scale_min=0.08 --train.steps="$steps"
       --train.log_every=5 --train.ckpt_every=0 --cluster.ckpt_every=0 --cluster.dead_ms=30000)
median_ips() { # JSON-lines file, field: median over the windows after the first
  grep -o "\"$2\":[0-9.e+-]*" "$1" | cut -d: -f2 | tail -n +2 | sort -g |
    awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "nan"}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }

lines="" ratios=""
for i in $(seq "$pairs"); do
  load=$(cut -d' ' -f1 /proc/loadavg) # other work on the machine, 1-minute average
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 ./build/worker/mimic-worker "$cfg" --standalone \
    "${flags[@]}" --train.batch_size="$B" --contrastive.bn_groups=2 \
    --train.out_dir="$tmp/solo-$i" > "$tmp/solo-$i.log" 2>&1
  solo=$(median_ips "$tmp/solo-$i/metrics.jsonl" images_per_s)
  MIMIC_CONFIG=$cfg bash deploy/cluster.sh --servers 1 --workers 2 "${flags[@]}" \
    --train.batch_size=$((B / 2)) --train.out_dir="$tmp/cluster-$i" > "$tmp/cluster-$i.log" 2>&1
  clus=$(median_ips "$tmp/cluster-$i/scheduler.jsonl" img_per_s)
  r=$(ratio "$clus" "$solo")
  ratios+="$r"$'\n'
  line="pair $i: standalone $solo img/s, cluster $clus img/s, cluster/standalone $r (load $load)"
  lines+="$line"$'\n'
  echo "$line" >&2
done
summary=$(printf '%s' "$ratios" | sort -g |
  awk '{a[NR]=$1} END{printf "median %.3f (min %.3f, max %.3f) over %d pairs", a[int((NR+1)/2)], a[1], a[NR], NR}')
key() { sed -n "s/^$1 *= *//p" "$cfg" | head -1; }
report=$(cat <<TXT
MoCo v3 step, $cfg (ViT $(key embed_dim)/$(key depth)/$(key num_heads) on $(key img_size)x$(key img_size), patch $(key patch_size); heads $(key mlp_dim) -> $(key dim)), total batch $B, $steps steps a run
standalone: 1 process, batch $B, 2 threads, contrastive.bn_groups=2
cluster: deploy/cluster.sh, 1 server, 2 workers x $((B / 2)), 1 thread each
${lines}ratio cluster/standalone: $summary
TXT
)
echo "$report"
if [ $record -eq 1 ]; then
  { echo; echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD): bench/moco_cluster.sh $cfg"; echo '```'; echo "$report"; echo '```'; } >> bench/RESULTS.md
fi

#!/usr/bin/env bash
# SDD-FIQA on Fashion-MNIST (issue 15): does dropping the lowest quality scores of a set
# with known corrupted images help the next stage? About 4 minutes on 1 core.
#   bench/fiqa.sh [--out DIR] [--n N] [--steps S] [--train-arms] [--section.key=value ...]
# (default OUT runs/fiqa, N 6000 training images, S 200 scorer steps; extra flags go to
# every command). Prints a table and writes OUT/fiqa.txt. --train-arms adds step 5
# (about 4 x the scorer's time more).
#
# 1. The first N images of train-images-idx3-ubyte, with a known 20% corrupted
#    (seeded): 10% heavy noise (70% uniform noise over the image), 10% a wrong label.
# 2. The scorer: a small ViT trained S steps with the crscont stage on that corrupted set
#    (identity map: SupCon + CE + SimCLR on the 10 labels, i.e. a supervised contrastive
#    encoder, the kind of recognition model SDD-FIQA scores with), exported; and raw
#    pixels as a second scorer (no training).
# 3. mimic-fiqa scores every image (m 24, K 12) and writes a filtered copy without the
#    lowest 20%; reported: how many of the dropped images are the corrupted ones.
#    Filtered twice: the lowest 20% of the whole set, and the lowest 20% of each class
#    (fiqa.per_class=1, which keeps the class balance).
# 4. The next stage: a linear probe (30 epochs), 1-NN and 20-NN (mimic-eval) on the scorer's
#    frozen features, trained on (searching) the unfiltered set, the filtered sets, a
#    random 80% (the control: same size, no scores) and the oracle (the corrupted ones
#    removed), all tested on the first 5000 t10k images (clean).
# 5. (--train-arms) The next stage as training: the scorer's recipe from scratch on the
#    unfiltered set, the per-class pixel-filtered set, a random 80% and the oracle set, each encoder
#    then probed on the same clean probe set (training images N..2N-1, unseen).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/fiqa
n=6000
steps=200
train_arms=0
flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --n) n=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --train-arms) train_arms=1; shift ;;
    *) flags+=("$1"); shift ;;
  esac
done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j1 --target mimic-worker mimic-eval mimic-fiqa >/dev/null
W=./build/worker/mimic-worker
E=./build/eval/mimic-eval
F=./build/eval/mimic-fiqa
src=/usr/share/datasets/fashion-mnist
[ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "fiqa: $src missing (package dataset-fashion-mnist)" >&2; exit 2; }
mkdir -p "$out"
t0=$(date +%s)

# A small ViT at Fashion-MNIST's own 28x28 (patch 4: 49 patches), fast on one core.
model=(--model.img_size=28 --model.in_chans=1 --model.patch_size=4 --model.embed_dim=96
       --model.depth=4 --model.num_heads=3 --model.mlp_ratio=4 --data.mean=0.2860
       --data.std=0.3530 --train.seed=0 --train.precision=fp32)
test_set=(--eval.test_path=$src/t10k-images-idx3-ubyte.gz
          --eval.test_labels=$src/t10k-labels-idx1-ubyte.gz --eval.test_limit=5000)

# 1. the corrupted subset, with the ground truth (index,kind: 0 clean, 1 noise, 2 label)
/usr/bin/python3 - "$src" "$out" "$n" <<'EOF'
import gzip, sys
import numpy as np
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with gzip.open(f"{src}/train-images-idx3-ubyte.gz") as f:
    img = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n].copy()
with gzip.open(f"{src}/train-labels-idx1-ubyte.gz") as f:
    lab = np.frombuffer(f.read(), np.uint8, offset=8)[:n].copy()
rng = np.random.default_rng(15)
kind = np.zeros(n, np.int64)
pick = rng.permutation(n)
noisy, wrong = pick[: n // 10], pick[n // 10: n // 5]
kind[noisy], kind[wrong] = 1, 2
u = rng.integers(0, 256, size=(len(noisy), 28, 28))
img[noisy] = (0.3 * img[noisy] + 0.7 * u).astype(np.uint8)
lab[wrong] = (lab[wrong] + rng.integers(1, 10, size=len(wrong))) % 10
hdr = lambda *d: b"".join(int(x).to_bytes(4, "big") for x in d)
open(f"{out}/train-images-idx3-ubyte", "wb").write(hdr(0x803, n, 28, 28) + img.tobytes())
with gzip.open(f"{src}/train-images-idx3-ubyte.gz") as f:  # a clean probe set, unseen
    pimg = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[n: 2 * n]
with gzip.open(f"{src}/train-labels-idx1-ubyte.gz") as f:
    plab = np.frombuffer(f.read(), np.uint8, offset=8)[n: 2 * n]
open(f"{out}/probe-images-idx3-ubyte", "wb").write(hdr(0x803, len(pimg), 28, 28) + pimg.tobytes())
open(f"{out}/probe-labels-idx1-ubyte", "wb").write(hdr(0x801, len(plab)) + plab.tobytes())
open(f"{out}/train-labels-idx1-ubyte", "wb").write(hdr(0x801, n) + lab.tobytes())
with open(f"{out}/truth.csv", "w") as f:
    f.write("index,kind\n")
    f.writelines(f"{i},{k}\n" for i, k in enumerate(kind))
EOF
data=(--data.kind=idx --data.path=$out/train-images-idx3-ubyte
      --data.labels=$out/train-labels-idx1-ubyte)

# 2. the scorer: CRS-CONT with the identity map on the corrupted set
train() { # OUT_DIR DATA_FLAGS...: the recipe, S steps
  local dir=$1
  shift
  $W --standalone "${model[@]}" "$@" --train.stage=crscont --train.steps="$steps" \
    --train.batch_size=64 --train.blr=1e-3 --train.warmup_steps=20 --train.weight_decay=0.05 \
    --crscont.coarse_map=0,1,2,3,4,5,6,7,8,9 --crscont.weights=1,1,1,1,1,1,1,1,1,1 \
    --crscont.tau=0.1 --crscont.base_tau=0.1 --crscont.proj_dim=64 --data.scale_min=0.5 \
    --data.blur_p=0,0 --data.solarize_p=0,0 --data.threads=0 --train.log_every=50 \
    --train.ckpt_every=0 --train.out_dir="$dir" "${flags[@]}" 2>&1 |
    grep -E "step .*/$steps|^done" | tail -2
}
train "$out/scorer" "${data[@]}"
enc=$out/scorer/encoder.safetensors
t1=$(date +%s)

# 3. scores and filtered copies; 4. probes on each training set
probe() { # FLAGS...: "probe-top1 1nn-top1 20nn-top1" on the test set
  $E "${model[@]}" "${test_set[@]}" --eval.probe_epochs=30 --eval.knn_k=1,20 "$@" "${flags[@]}" |
    awk '/linear probe/ {p = $4} /k-NN k=1 / {a = $4} /k-NN k=20/ {k = $4}
         END {gsub("%", "", p); gsub("%", "", a); gsub("%", "", k); print p, a, k}'
}
summary=$out/fiqa.txt
: > "$summary"
for scorer in crscont pixels; do
  if [ "$scorer" = pixels ]; then feat=(--eval.features=pixels); else feat=(--encoder "$enc"); fi
  $F "${model[@]}" "${data[@]}" "${feat[@]}" --fiqa.drop=0.2 --fiqa.head_epochs=10 \
    --scores "$out/$scorer-scores.csv" --filtered "$out/$scorer-kept" "${flags[@]}" 2>&1 |
    grep -E "^fiqa" | tee -a "$summary"
  $F "${model[@]}" "${data[@]}" "${feat[@]}" --fiqa.drop=0.2 --fiqa.per_class=1 \
    --scores "$out/$scorer-scores-pc.csv" --filtered "$out/$scorer-pc-kept" "${flags[@]}" 2>&1 |
    grep -E "^fiqa: .* kept \(" | tee -a "$summary"
  cmp -s "$out/$scorer-scores.csv" "$out/$scorer-scores-pc.csv" ||
    { echo "fiqa: two runs of one scorer gave different scores" >&2; exit 1; }
  /usr/bin/python3 - "$out" "$scorer" <<'EOF' | tee -a "$summary"
import sys
out, scorer = sys.argv[1], sys.argv[2]
kind = {int(l.split(",")[0]): int(l.split(",")[1]) for l in open(f"{out}/truth.csv").readlines()[1:]}
rows = [l.strip().split(",") for l in open(f"{out}/{scorer}-scores.csv").readlines()[1:]]
score = {int(r[0]): float(r[2]) for r in rows}
n = len(score)
mean = lambda k: sum(s for i, s in score.items() if kind[i] == k) / max(1, sum(1 for i in score if kind[i] == k))
drop = sorted(score, key=lambda i: (score[i], i))[: int(0.2 * n)]
caught = sum(1 for i in drop if kind[i] != 0)
bad = sum(1 for k in kind.values() if k != 0)
print(f"{scorer}: mean score clean {mean(0):.1f}, heavy noise {mean(1):.1f}, wrong label "
      f"{mean(2):.1f}; the lowest 20% hold {caught} of the {bad} corrupted images "
      f"(noise {sum(1 for i in drop if kind[i] == 1)}, label {sum(1 for i in drop if kind[i] == 2)})")
EOF
done

# the control (a random 80%) and the oracle (the corrupted ones removed), as IDX copies
/usr/bin/python3 - "$out" "$n" <<'EOF'
import sys
import numpy as np
out, n = sys.argv[1], int(sys.argv[2])
img = np.fromfile(f"{out}/train-images-idx3-ubyte", np.uint8, offset=16).reshape(n, 28, 28)
lab = np.fromfile(f"{out}/train-labels-idx1-ubyte", np.uint8, offset=8)
kind = np.array([int(l.split(",")[1]) for l in open(f"{out}/truth.csv").readlines()[1:]])
hdr = lambda *d: b"".join(int(x).to_bytes(4, "big") for x in d)
for name, keep in (("random", np.sort(np.random.default_rng(7).permutation(n)[: n - n // 5])),
                   ("oracle", np.flatnonzero(kind == 0))):
    open(f"{out}/{name}-kept-images-idx3-ubyte", "wb").write(hdr(0x803, len(keep), 28, 28) + img[keep].tobytes())
    open(f"{out}/{name}-kept-labels-idx1-ubyte", "wb").write(hdr(0x801, len(keep)) + lab[keep].tobytes())
EOF
set_of() { echo "--eval.train_path=$out/$1-images-idx3-ubyte --eval.train_labels=$out/$1-labels-idx1-ubyte"; }
{
  printf '\nnext stage: linear probe, 1-NN and 20-NN on the frozen scorer encoder, top-1 %% on 5000 clean t10k images\n'
  printf '%-44s %7s %8s %8s %8s\n' "trained on / searched in" "images" "probe" "1-NN" "20-NN"
  for arm in "all (unfiltered)|train" "SDD-FIQA crscont scores, -20% overall|crscont-kept" \
             "SDD-FIQA crscont scores, -20% per class|crscont-pc-kept" \
             "SDD-FIQA pixel scores, -20% overall|pixels-kept" \
             "SDD-FIQA pixel scores, -20% per class|pixels-pc-kept" \
             "random -20% (control)|random-kept" "oracle (corrupted removed)|oracle-kept"; do
    name=${arm%%|*} set=${arm##*|}
    count=$(( ($(stat -c %s "$out/$set-labels-idx1-ubyte") - 8) ))
    # shellcheck disable=SC2046
    read -r p a k <<< "$(probe --encoder "$enc" $(set_of "$set"))"
    printf '%-44s %7d %7s%% %7s%% %7s%%\n' "$name" "$count" "$p" "$a" "$k"
  done
  printf '(scorer: crscont %d steps, %ds; whole run %ds)\n' "$steps" $((t1 - t0)) $(($(date +%s) - t0))
} | tee -a "$summary"

[ "$train_arms" = 1 ] || exit 0
{
  printf '\nnext stage as training: crscont %d steps from scratch on each set, then a linear probe\n' "$steps"
  printf 'and 1-/20-NN on the clean probe set (training images %d..%d), top-1 %% on 5000 t10k\n' "$n" $((2 * n - 1))
  printf '%-44s %7s %8s %8s %8s\n' "trained on" "images" "probe" "1-NN" "20-NN"
} | tee -a "$summary"
for arm in "all (unfiltered)|train" "SDD-FIQA pixel scores, -20% per class|pixels-pc-kept" \
           "random -20% (control)|random-kept" "oracle (corrupted removed)|oracle-kept"; do
  name=${arm%%|*} set=${arm##*|}
  count=$(( ($(stat -c %s "$out/$set-labels-idx1-ubyte") - 8) ))
  train "$out/next-$set" --data.kind=idx --data.path="$out/$set-images-idx3-ubyte" \
    --data.labels="$out/$set-labels-idx1-ubyte" > /dev/null
  # shellcheck disable=SC2046
  read -r p a k <<< "$(probe --encoder "$out/next-$set/encoder.safetensors" $(set_of probe))"
  printf '%-44s %7d %7s%% %7s%% %7s%%\n' "$name" "$count" "$p" "$a" "$k" | tee -a "$summary"
done
printf '(whole run %ds)\n' $(($(date +%s) - t0)) | tee -a "$summary"

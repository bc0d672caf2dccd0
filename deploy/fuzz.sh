#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan; MIMIC_FUZZ=ON) and runs each for a
# bounded time from its seeds and committed regression inputs. Exits non-zero when a
# target finds a crash, leak, UB, hang or broken invariant; the input is kept in
# $BUILD_FUZZ/artifacts/ and replays with the target's ctest twin:
#   build/tests/fuzz_<name>_replay build-fuzz/artifacts/<name>-crash-...
# Usage: deploy/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 20 s, all targets)
# deploy/test.sh runs it; docs/fuzzing.md has the long runs and what they found.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(proto config idx csv labellist jpeg safetensors)
BUILD_FUZZ=${BUILD_FUZZ:-build-fuzz}
CC=clang cmake -S . -B "$BUILD_FUZZ" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIMIC_FUZZ=ON >/dev/null
bins=()
for t in "${targets[@]}"; do bins+=("fuzz_$t"); [ "$t" = proto ] || bins+=("fuzz_${t}_replay"); done
bins+=(fuzz_proto_replay)
cmake --build "$BUILD_FUZZ" -j"$(nproc)" --target "${bins[@]}"
mkdir -p "$BUILD_FUZZ/artifacts"
for t in "${targets[@]}"; do
  dir=tests
  [ "$t" = proto ] && dir=proto
  corpus="$BUILD_FUZZ/corpus/$t"
  mkdir -p "$corpus"
  "$BUILD_FUZZ/$dir/fuzz_${t}_replay" --write-seeds "$corpus" >/dev/null
  extra=()
  if [ "$t" != proto ]; then
    "$BUILD_FUZZ/tests/fuzz_${t}_replay" --write-dict "$BUILD_FUZZ/corpus/$t.dict"
    extra+=(-dict="$BUILD_FUZZ/corpus/$t.dict")
    [ -d "tests/fuzz_corpus/$t" ] && extra+=("tests/fuzz_corpus/$t")
  fi
  log="$BUILD_FUZZ/artifacts/$t.log"
  if ! "$BUILD_FUZZ/$dir/fuzz_$t" "$corpus" "${extra[@]}" -max_total_time="$secs" -timeout=10 \
      -max_len=16384 -artifact_prefix="$BUILD_FUZZ/artifacts/$t-" -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: fuzz_$t failed; the input is in $BUILD_FUZZ/artifacts/ (log $log)"
    exit 1
  fi
  echo "fuzz: fuzz_$t $(grep -o 'number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$') runs in ${secs} s, nothing found"
done

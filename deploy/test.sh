#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite twice: a release build
# and an AddressSanitizer + UndefinedBehaviorSanitizer build; then runs each libFuzzer
# target for FUZZ_SECONDS (default 20; 0 skips it; deploy/fuzz.sh). Exits non-zero on
# any failure. Build trees: build/, build-asan/ and build-fuzz/ (override with BUILD /
# BUILD_ASAN / BUILD_FUZZ).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
bash deploy/install-deps.sh --test
BUILD=${BUILD:-build}
BUILD_ASAN=${BUILD_ASAN:-build-asan}
jobs=$(nproc)
BUILD=$BUILD bash deploy/build.sh
ctest --test-dir "$BUILD" --output-on-failure -j1
cmake -S . -B "$BUILD_ASAN" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIMIC_SANITIZE=ON
cmake --build "$BUILD_ASAN" -j"$jobs"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  ctest --test-dir "$BUILD_ASAN" --output-on-failure -j1 -LE slow
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$FUZZ_SECONDS" != 0 ]; then bash deploy/fuzz.sh "$FUZZ_SECONDS"; fi

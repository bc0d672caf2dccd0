#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite twice: a release build
# and an AddressSanitizer + UndefinedBehaviorSanitizer build. Exits non-zero on any
# failure. Build trees: build/ and build-asan/ (override with BUILD / BUILD_ASAN).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/env.sh
bash deploy/install-deps.sh
BUILD=${BUILD:-build}
BUILD_ASAN=${BUILD_ASAN:-build-asan}
jobs=$(nproc)
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$jobs"
ctest --test-dir "$BUILD" --output-on-failure -j1
cmake -S . -B "$BUILD_ASAN" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIMIC_SANITIZE=ON
cmake --build "$BUILD_ASAN" -j"$jobs"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  ctest --test-dir "$BUILD_ASAN" --output-on-failure -j1 -LE slow

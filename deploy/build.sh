#!/usr/bin/env bash
# The release build, as CI (deploy/test.sh) and the image (deploy/Dockerfile) make it.
#   deploy/build.sh [CMAKE_OPTIONS...]     build directory: $BUILD (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$BUILD" -j"$(nproc)"

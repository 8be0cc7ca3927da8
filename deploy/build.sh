#!/usr/bin/env bash
# deploy/build.sh [BUILD_DIR] — install what is missing, configure and build (warnings are errors).
# CUDA code is compiled when nvcc is found (KVF_CUDA=AUTO), even on a machine without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
"$root/deploy/deps.sh"
cmake -S "$root" -B "$build" -DKVF_WERROR=ON ${KVF_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"

#!/usr/bin/env bash
# deploy/test.sh — the whole test suite: dependencies, configure, build, every CTest test.
# GPU tests (label "gpu") run only where nvidia-smi sees a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${KVF_BUILD_DIR:-$root/build}
"$root/deploy/build.sh" "$build"
exclude=()
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  exclude=(-LE gpu)
fi
cd "$build"
ctest --output-on-failure "${exclude[@]}" -j"${KVF_TEST_JOBS:-2}"

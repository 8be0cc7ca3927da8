#!/usr/bin/env bash
# deploy/demo.sh — builds kvfleet and runs the demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/deploy/build.sh" "$root/build"
echo "demo: built $(ls "$root/build/bin" 2>/dev/null | tr '\n' ' ')"
echo "demo: the cluster demo arrives with kvf-coordinator and kvf-worker."

#!/usr/bin/env bash
# tests/systemd_units.sh — every unit in deploy/systemd passes `systemd-analyze verify` (a template as
# its instance @0). Exit 77 (CTest: skipped) where systemd-analyze is not installed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
command -v systemd-analyze >/dev/null 2>&1 || { echo "systemd_units: no systemd-analyze: skipped"; exit 77; }
dir=$(mktemp -d /tmp/kvf-units-XXXXXX)
trap 'rm -rf "$dir"' EXIT
cp "$root"/deploy/systemd/*.service "$dir/"
failed=0
for f in "$dir"/*.service; do
  u=$(basename "$f")
  [[ "$u" == *@.service ]] && u=${u/@.service/@0.service}
  if out=$(cd "$dir" && systemd-analyze verify "./$u" 2>&1) && [ -z "$out" ]; then
    echo "systemd_units: $u ok"
  else
    echo "systemd_units: $u FAILED: $out"; failed=1
  fi
done
exit $failed

#!/usr/bin/env bash
# tests/kbench_args.sh BIN_DIR — kvf-kbench's options without a GPU: --help names every option, and a bad
# option or value is refused with a message and exit status 2 before any device is touched.
set -uo pipefail
kb="$1/kvf-kbench"
[ -x "$kb" ] || { echo "kbench_args: no $kb (a build without CUDA): skipped"; exit 77; }
failed=0
expect() { # rc pattern args...
  local want=$1 pat=$2; shift 2
  local out rc
  out=$("$kb" "$@" 2>&1); rc=$?
  if [ "$rc" = "$want" ] && grep -q -- "$pat" <<<"$out"; then
    echo "kbench_args: $* -> $rc ok"
  else
    echo "kbench_args: $* -> $rc (want $want and '$pat'): $out" | head -5; failed=1
  fi
}
expect 0 "--sms N" --help
expect 0 "green context" --help
expect 2 "--sms: " --sms 0
expect 2 "--sms: " --sms many
expect 2 "missing value" --sms
expect 2 "--overlap-gemms: " --overlap-gemms 0
expect 0 "--settle-ms MS" --help
expect 2 "--settle-ms: " --settle-ms -5
expect 2 "--settle-ms: " --settle-ms soon
expect 0 "--decode-ctx LEN" --help
expect 2 "--decode-ctx: " --decode-ctx 0
expect 2 "--decode-ctx: " --decode-ctx 641
expect 2 "unknown option '--smss'" --smss 8
expect 2 "unknown section 'attn'" --only attn
exit $failed

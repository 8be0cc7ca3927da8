#!/bin/sh
# tests/fuzz/run.sh FUZZER SEED_DIR WORK_DIR SECONDS — one bounded fuzz run for
# CTest (tests/fuzz.cmake). The committed seeds are copied into WORK_DIR/corpus
# (libFuzzer adds what it finds there, never to the source tree); a crash leaves
# its input as WORK_DIR/crash-* and fails the test (exit 1: libFuzzer's own
# default, 77, is CTest's skip code here).
set -eu
fuzzer=$1 seeds=$2 work=$3 secs=$4
if [ ! -x "$fuzzer" ]; then
  echo "$fuzzer is not built (cmake --build <dir> --target kvf_fuzzers)" >&2
  exit 1
fi
rm -rf "$work"
mkdir -p "$work/corpus"
cp "$seeds"/* "$work/corpus/"
echo "$fuzzer: $(ls "$seeds" | wc -l) seeds, ${secs}s"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$fuzzer" -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -error_exitcode=1 -timeout_exitcode=1 \
    -print_final_stats=1 \
    -artifact_prefix="$work/" "$work/corpus"

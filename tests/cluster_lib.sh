# shellcheck shell=bash
# tests/cluster_lib.sh — shell helpers of the multi-process script tests (sourced; they call `fail`).

# run_batch BIN FRONT DIR N: N short text prompts through `kvfctl run` to DIR/out.jsonl; fails unless
# all N result lines come back.
run_batch() {
  local bin=$1 front=$2 dir=$3 n=$4 i
  for ((i = 0; i < n; i++)); do
    printf '{"id": %d, "prompt": "Once upon a time %d", "max_tokens": 16}\n' "$i" "$i"
  done >"$dir/in.jsonl"
  "$bin/kvfctl" --coordinator "$front" run "$dir/in.jsonl" -o "$dir/out.jsonl" --progress none 2>"$dir/run.log" ||
    fail "kvfctl run"
  [ "$(wc -l <"$dir/out.jsonl")" -eq "$n" ] || fail "$n result lines expected"
}

# tp_ranks LOG: the rank pids that deploy/tp-run.sh's first line names.
tp_ranks() { sed -n 's/.* pids \(.*\), logs.*/\1/p' "$1"; }

#!/usr/bin/env bash
# bench/gpu-check.sh PACK_DIR OUT_DIR — on the GPU machine: every gpu-labelled test binary
# of a gpu-pack folder, kvf-generate cuda vs cpu on the golden greedy cases, and the standard
# kvf-bench workload; a short table at the end, full logs in OUT_DIR.
#   ../shared/tools/gpu-pack build-gpu .gpu-final   (here), then on the GPU machine:
#   bash bench/gpu-check.sh .gpu-final "$OUT"
set -uo pipefail
pack=$1 out=$2
source "$pack/env.sh"
export KVF_BIN_DIR="$pack/bin"  # the tests that run kvf-bench find it there, not at the build's path
mkdir -p "$out"
nvidia-smi -L > "$out/gpu.txt" 2>&1
rows=()
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); echo "$1 $2"; }
# bounded SECS CMD...: CMD in its own process group, killed whole (forked test ranks too) after SECS
bounded() {
  local secs=$1; shift
  setsid "$@" & local pid=$!
  ( sleep "$secs"; kill -9 -"$pid" 2>/dev/null ) & local w=$!
  wait "$pid"; local rc=$?
  kill "$w" 2>/dev/null; wait "$w" 2>/dev/null
  return $rc
}
for t in test_kernels test_kernels_attn test_kernels_fp8 test_kernels_mlp test_kernels_qkv_rope test_cuda_forward test_engine_cuda test_bench_cuda test_tp_nccl \
         test_cuda_tp; do
  [ -x "$pack/bin/$t" ] || continue
  secs=300; [ "$t" = test_cuda_tp ] && secs=120
  bounded $secs "$pack/bin/$t" --jobs=1 --verbose > "$out/$t.log" 2>&1
  rc=$?
  row "$t" "rc=$rc $(grep -a 'Synthesis' "$out/$t.log" | tail -1 | sed 's/.*Synthesis: //')"
done
# kvf-generate: cuda and cpu give the same greedy ids on tiny-llama's first golden case, up to
# the first step whose golden top1-top2 margin is below 0.1 (fixtures/README.md's bf16 rule).
ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('$KVF_FIXTURES/tiny-llama/golden.json'))['cases'][0]['prompt_ids'])))")
for be in cpu cuda; do
  bounded 120 kvf-generate --model "$KVF_FIXTURES/tiny-llama" --backend $be --prompt-ids "$ids" --max-new-tokens 32 --ignore-eos --json \
    > "$out/generate_$be.json" 2> "$out/generate_$be.err"
done
same=$(python3 - "$out" "$KVF_FIXTURES" <<'PY' 2>&1
import json, sys
out, fx = sys.argv[1], sys.argv[2]
a = json.load(open(out + '/generate_cpu.json'))['output_ids']
b = json.load(open(out + '/generate_cuda.json'))['output_ids']
m = json.load(open(fx + '/tiny-llama/golden.json'))['cases'][0]['top1_minus_top2']
k = next((i for i, x in enumerate(m) if x < 0.1), len(m))
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
ok = a[:k] == b[:k]
print('%s: ids equal up to step %d (first margin < 0.1), first difference at %s' % ('ok' if ok else 'FAIL', k, first))
PY
)
row "kvf-generate cuda vs cpu" "$same"
# KVF_CHECK_B: the --max-batch-size values to run ("auto": the flag left out, the memory plan's choice).
# KVF_CHECK_TIMING=1: also a short KVF_CUDA_TIMING run (512 x 512 + 16 at B = 512; per-group device ms).
if [ "${KVF_CHECK_TIMING:-0}" = 1 ]; then
  KVF_CUDA_TIMING=1 bounded 200 kvf-bench --config "$KVF_FIXTURES/configs/llama3-8b.json" --weights dummy --num-prompts 512 \
    --input-len 512 --output-len 16 --backend cuda --max-batch-size 512 > "$out/timing.out" 2> "$out/timing.err"
  row "KVF_CUDA_TIMING 512x512+16 B=512" "rc=$? (timing.err)"
fi
for B in ${KVF_CHECK_B:-auto 512}; do
  bflag=(--max-batch-size "$B"); [ "$B" = auto ] && bflag=()
  bounded 200 kvf-bench --config "$KVF_FIXTURES/configs/llama3-8b.json" --weights dummy --num-prompts 1024 --input-len 512 \
    --output-len 128 --backend cuda "${bflag[@]}" --json > "$out/bench_B$B.json" 2> "$out/bench_B$B.err"
  row "kvf-bench 1024x512x128 B=$B" "$(python3 -c "
import json;r=json.load(open('$out/bench_B$B.json'))
f=r['roofline']['floor']
d=r.get('device_power') or {}
clk=' '.join('%s %.0f MHz %.0f W' % (k.split('_')[0], d[k]['sm_clock_mhz'], d[k]['power_w']) for k in ('prefill_steps', 'decode_steps') if d.get(k))
e=d.get('energy')
clk+=('; %.0f J, %.2f tok/J' % (e['joules'], e['total_tokens_per_j'])) if e else ''
print('elapsed %.2f s, %.0f tok/s, out %.0f, prefill %.0f, decode p50/p99 %.2f/%.2f ms, TTFT p50/p99 %.2f/%.2f s, floor %.2f s (%.1f%%), B %s; %s' % (r['elapsed_s'], r['total_tokens_per_s'], r['output_tokens_per_s'], r['prefill_tokens_per_s'], r['decode_step_ms']['p50'], r['decode_step_ms']['p99'], r['ttft_s']['p50'], r['ttft_s']['p99'], f['seconds'], 100*f['achieved'], r['engine']['max_batch_size'], clk or 'clock not sampled'))" 2>&1 | head -c 600)"
done
printf '%s\n' "${rows[@]}" > "$out/summary.txt"
# the device tool brings back at most 8 files: the logs travel as one archive
(cd "$out" && tar czf logs.tar.gz --exclude=summary.txt --exclude=logs.tar.gz -- * && \
  find . -type f ! -name summary.txt ! -name logs.tar.gz -delete)

#!/usr/bin/env bash
# bench/gpu-ab.sh PACK_DIR OUT_DIR VARIANT... — on the GPU machine: the standard kvf-bench
# workload once per VARIANT, in the order given (repeat a variant to interleave A/B runs on
# one card), then a table. VARIANT is "label" or "label:ENV=v,ENV=v" (environment for that
# run; FLAGS=a+b adds kvf-bench flags, + for spaces). KVF_AB_ARGS: kvf-bench arguments instead of
# the standard workload's.
#   bash bench/gpu-ab.sh .gpu-final "$OUT" off:KVF_CUDA_LANES=0 on off:KVF_CUDA_LANES=0 on
#   bash bench/gpu-ab.sh .gpu-final "$OUT" bf16 fp8:FLAGS=--kv-cache-dtype+fp8 bf16 fp8:FLAGS=--kv-cache-dtype+fp8
set -uo pipefail
pack=$1 out=$2; shift 2
source "$pack/env.sh"
mkdir -p "$out"
args=${KVF_AB_ARGS:---num-prompts 1024 --input-len 512 --output-len 128}
rows=()
i=0
for v in "$@"; do
  i=$((i + 1))
  label=${v%%:*} envs=""
  [ "$v" != "$label" ] && envs=${v#*:}
  flags=""
  case ",$envs" in *,FLAGS=*) flags=${envs#*FLAGS=}; flags=${flags%%,*}; flags=${flags//+/ }
    envs=$(printf '%s' "$envs" | tr ',' '\n' | grep -v '^FLAGS=' | paste -sd, -) ;; esac
  f="$out/ab_${i}_${label}"
  # shellcheck disable=SC2086
  env ${envs//,/ } timeout -s KILL 300 kvf-bench --config "$KVF_FIXTURES/configs/llama3-8b.json" --weights dummy $args \
    $flags --backend cuda --json > "$f.json" 2> "$f.err"
  rc=$?
  rows+=("$(printf '%-2d %-14s rc=%d %s' "$i" "$label" "$rc" "$(python3 -c "
import json;r=json.load(open('$f.json'))
f=r['roofline']['floor']
e=(r.get('device_power') or {}).get('energy')
en=(', %.0f J, %.2f tok/J' % (e['joules'], e['total_tokens_per_j'])) if e else ''
print('elapsed %.2f s, %.0f tok/s, prefill %.0f, decode p50/p99 %.2f/%.2f ms, TTFT p50 %.2f s, floor %.1f%%%s' % (r['elapsed_s'], r['total_tokens_per_s'], r['prefill_tokens_per_s'], r['decode_step_ms']['p50'], r['decode_step_ms']['p99'], r['ttft_s']['p50'], 100*f['achieved'], en))" 2>&1 | tail -1 | head -c 340)")")
  echo "${rows[-1]}"
done
printf '%s\n' "${rows[@]}" > "$out/ab_summary.txt"

#!/usr/bin/env bash
# deploy/demo.sh — build kvfleet, start a local cluster (a coordinator and two
# workers: CPU, or one per GPU when nvidia-smi sees GPUs), run a batch of 16
# prompts through `kvfctl run`, print the generations, the cluster status and
# the throughput, and stop everything (also on Ctrl-C or failure).
#
# The model is a small random Llama made by kvf-mkmodel (cached in
# ~/.cache/kvfleet/demo-model): its output is not meaningful text. To use a real
# Hugging Face model directory (config.json, *.safetensors, tokenizer.json):
#   KVF_DEMO_MODEL=/path/to/Llama-3.2-1B ./deploy/demo.sh
# Other knobs: KVF_DEMO_BACKEND=cpu|cuda|auto, KVF_DEMO_WORKERS=N,
# KVF_DEMO_MAX_TOKENS=N (default 32), KVF_DEMO_CPU_MEMORY=SIZE (memory budget of
# each CPU worker, default 1G), KVF_BIN_DIR=DIR (use binaries built elsewhere). Safe to run twice (fresh run dir, free ports).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${KVF_BUILD_DIR:-$root/build}

if [ -n "${KVF_BIN_DIR:-}" ]; then
  bin=$KVF_BIN_DIR  # prebuilt binaries (e.g. carried to a GPU machine): no build
else
  "$root/deploy/build.sh" "$build"
  bin=$build/bin
fi
for b in kvf-coordinator kvf-worker kvfctl kvf-mkmodel; do
  [ -x "$bin/$b" ] || { echo "demo: $bin/$b was not built" >&2; exit 1; }
done

# ---- the model
if [ -n "${KVF_DEMO_MODEL:-}" ]; then
  model=$KVF_DEMO_MODEL
  [ -f "$model/config.json" ] && [ -f "$model/tokenizer.json" ] ||
    { echo "demo: KVF_DEMO_MODEL=$model needs config.json, tokenizer.json and safetensors weights" >&2; exit 1; }
  echo "demo: model $model"
else
  model=${XDG_CACHE_HOME:-$HOME/.cache}/kvfleet/demo-model
  if [ ! -f "$model/model.safetensors" ] || [ ! -f "$model/tokenizer.json" ]; then
    mkdir -p "$(dirname "$model")"
    tmp="$model.tmp.$$"
    rm -rf "$tmp"
    "$bin/kvf-mkmodel" "$tmp" --seed 1
    rm -rf "$model"
    mv "$tmp" "$model"
  fi
  echo "demo: model $model (random weights: the generations are not meaningful text)"
fi

# ---- a local cluster on free ports
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
front_port=${KVF_DEMO_PORT:-5555}
while ! port_free "$front_port" || ! port_free $((front_port + 1)); do front_port=$((front_port + 2)); done
back_port=$((front_port + 1))

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/kvfleet-demo.XXXXXX")
node=("$root/deploy/kvf-node")
cleanup() {
  local rc=$?
  "${node[@]}" stop --run-dir "$run_dir" --timeout 10 >/dev/null 2>&1 || true
  if [ $rc -eq 0 ]; then rm -rf "$run_dir"; else echo "demo: failed; logs kept in $run_dir" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

backend=${KVF_DEMO_BACKEND:-auto}
ncpu=$(nproc 2>/dev/null || echo 2)
start_node() {  # backend workers
  local opts=(start --run-dir "$run_dir" --bin-dir "$bin" --model "$model" --backend "$1"
              --front-port "$front_port" --back-port "$back_port" --timeout 300)
  [ -n "$2" ] && opts+=(--workers "$2")
  # CPU workers: a thread share each and a small KV pool (a demo, not a benchmark).
  if [ "$1" = cpu ]; then
    opts+=(--threads $(( ncpu / 2 > 0 ? ncpu / 2 : 1 )) --memory-budget "${KVF_DEMO_CPU_MEMORY:-1G}")
  fi
  "${node[@]}" "${opts[@]}"
}
if [ "$backend" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    if ! start_node cuda "${KVF_DEMO_WORKERS:-}"; then
      echo "demo: the CUDA workers did not start; using the CPU backend" >&2
      start_node cpu "${KVF_DEMO_WORKERS:-2}"
    fi
  else
    start_node cpu "${KVF_DEMO_WORKERS:-2}"
  fi
elif [ "$backend" = cpu ]; then
  start_node cpu "${KVF_DEMO_WORKERS:-2}"
else
  start_node "$backend" "${KVF_DEMO_WORKERS:-}"
fi
export KVF_COORDINATOR="tcp://127.0.0.1:$front_port"

# ---- a batch of 16 prompts, in both input forms kvfctl accepts
max_tokens=${KVF_DEMO_MAX_TOKENS:-32}
prompts=("Once upon a time" "The capital of France is" "def fibonacci(n):" "A haiku about the sea:"
         "The three laws of robotics are" "In 1969, the first humans" "My favourite recipe for pancakes"
         "Q: What is 17 times 23? A:" "The mitochondria is" "Dear diary, today" "SELECT name FROM"
         "The best way to learn C is" "Il était une fois" "Roses are red," "Breaking news:"
         "The GPU has 141 GB of memory, so")
in="$run_dir/demo.jsonl"
out="$run_dir/demo.out.jsonl"
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
: >"$in"
for i in "${!prompts[@]}"; do
  p=$(json_str "${prompts[$i]}")
  if [ $((i % 2)) -eq 0 ]; then
    printf '{"id": "demo-%02d", "prompt": %s, "max_tokens": %d}\n' "$i" "$p" "$max_tokens" >>"$in"
  else
    printf '{"custom_id": "demo-%02d", "method": "POST", "url": "/v1/completions", "body": {"prompt": %s, "max_tokens": %d, "temperature": 0.8, "seed": %d}}\n' \
      "$i" "$p" "$max_tokens" "$i" >>"$in"
  fi
done

echo
echo "demo: kvfctl run $(basename "$in") (${#prompts[@]} prompts, up to $max_tokens new tokens each)"
"$bin/kvfctl" run "$in" -o "$out" --progress plain 2>"$run_dir/run.err" || { cat "$run_dir/run.err" >&2; exit 1; }

echo
echo "---- generations"
if command -v python3 >/dev/null 2>&1; then
  python3 - "$in" "$out" <<'EOF'
import json, sys
prompts = {}
for line in open(sys.argv[1]):
    o = json.loads(line)
    prompts[o.get("custom_id", o.get("id"))] = o.get("prompt") or o.get("body", {}).get("prompt")
for line in open(sys.argv[2]):
    o = json.loads(line)
    if "error" in o:
        print(f"{o['id']}: ERROR {o['error']['code']}: {o['error']['message']}")
        continue
    text = o["text"].replace("\n", "\\n")
    if len(text) > 160:
        text = text[:160] + "..."
    print(f"{o['id']} [{o['finish_reason']}, {o['completion_tokens']} tokens] {prompts.get(o['id'])!r} -> {text!r}")
EOF
else
  cut -c1-200 "$out"
fi

echo
echo "---- kvfctl status"
sleep 1  # one heartbeat, so that the load numbers describe the idle cluster
"$bin/kvfctl" status

echo
echo "---- throughput"
grep '^kvfctl run:' "$run_dir/run.err" | tail -n 1
echo
echo "demo: done; stopping the cluster"

#!/usr/bin/env bash
# bench/tp-e2e.sh — tensor parallelism end to end, through the real processes: a kvf-coordinator on
# loopback, one deploy/tp-run.sh group of T kvf-worker ranks, and `kvfctl run` of a JSONL batch.
#
#   bench/tp-e2e.sh --out DIR [--backend cpu|cuda] [--tp "1 2"] [--model DIR] [--bin-dir DIR]
#                   [--prompts N] [--max-tokens N] [--no-kill] [--match exact|complete]
#                   [--worker-opts "FLAGS"]   (every kvf-worker's flags; default "--max-batch-size 64")
#
# The default model is the fixtures' stories260K (trained weights, so greedy steps rarely meet a near-tie
# that a different summation order could flip: the cuda backend's TP sums in another order than TP 1).
# 1. For each T of --tp (the first must be 1; a size may repeat): a fresh coordinator and group, the batch timed,
#    then SHUTDOWN; every T's results must equal T = 1's line for line (greedy, so the same ids).
#    --match complete (the default with --backend cuda) asks less: every id once with T = 1's token
#    count, and reports how many lines are identical and where the others first differ. The cuda
#    backend's sums run in another order under TP (and its GEMMs differ with the rows of a step), so
#    a greedy near-tie can flip; test_cuda_tp checks its TP numerics teacher-forced.
# 2. Unless --no-kill, with the largest T >= 2: the batch again on a group whose last rank is
#    SIGKILLed while requests are running. The group must leave by itself (its survivors time their
#    step out: no NCCL hang), the coordinator must take the requests back, and after a TP 1 worker
#    joins (device 0) the same `kvfctl run` must finish with every line present once and equal to
#    T = 1's (the resumed requests continue from the tokens already delivered).
# A short table in DIR/summary.txt; logs beside it. Exit status 0 only when every check passed.
# On a GPU machine without the Debian libraries: bench/gpu-pack-small.sh packs kvf-coordinator,
# kvf-worker and kvfctl, and `source PACK/env.sh` sets $KVF_FIXTURES for the default model.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="" backend=cpu tps="1 2" model="" bin="${KVF_BIN_DIR:-$root/build/bin}" prompts=64 max_tokens=48 kill=1
match="" wopts="--max-batch-size 64"
die() { echo "tp-e2e: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --tp) tps=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --bin-dir) bin=$2; shift 2 ;;
    --prompts) prompts=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --no-kill) kill=0; shift ;;
    --match) match=$2; shift 2 ;;
    --worker-opts) wopts=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$out" ] || die "--out DIR is required"
[ "$backend" = cpu ] || [ "$backend" = cuda ] || die "--backend cpu|cuda"
[[ "$prompts" =~ ^[0-9]+$ && "$max_tokens" =~ ^[0-9]+$ ]] || die "--prompts and --max-tokens take numbers"
[ "${tps%% *}" = 1 ] || die "--tp: the first size must be 1 (the reference)"
[ -n "$match" ] || { match=exact; [ "$backend" = cuda ] && match=complete; }
[ "$match" = exact ] || [ "$match" = complete ] || die "--match exact|complete"
[ -n "$model" ] || model="${KVF_FIXTURES:-$root/../shared/fixtures}/stories260K"
[ -f "$model/config.json" ] || die "no model at $model (--model)"
for b in kvf-coordinator kvf-worker kvfctl; do [ -x "$bin/$b" ] || die "$bin/$b not found (--bin-dir)"; done
mkdir -p "$out"
rm -rf "$out"/out-*.jsonl "$out"/ranks-* "$out"/*.log "$out"/*.err "$out"/status-*.txt
export NCCL_NVLS_ENABLE=0
failed=0 rows=()
row() { rows+=("$(printf '%-40s %s' "$1" "$2")"); echo "tp-e2e: $1 $2"; }
now() { local t=${EPOCHREALTIME/[.,]/}; echo "${t:0:-3}"; }   # ms
secs() { local d=$(($(now) - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
older() { [ $(($(now) - $1)) -gt $(($2 * 1000)) ]; }  # older T0 S: more than S seconds since T0

# Text prompts when the model has a tokenizer (the coordinator tokenizes them), else token ids.
words=(dragon boat king cat friends rain castle river star forest robot baker)
tok=0; [ -f "$model/tokenizer.json" ] && tok=1
vocab=$(grep -o '"vocab_size": *[0-9]*' "$model/config.json" | grep -o '[0-9]*$')
for ((i = 0; i < prompts; i++)); do
  n=$((max_tokens / 2 + (i * 37) % (max_tokens / 2 + 1)))
  if [ $tok -eq 1 ]; then
    printf '{"id": %d, "prompt": "Once upon a time a %s and a %s met at place %d, and", "max_tokens": %d, "ignore_eos": true}\n' \
      "$i" "${words[$((i % 12))]}" "${words[$(((i * 7) % 12))]}" "$i" "$n"
  else
    printf '{"id": %d, "prompt_ids": [1, %d, %d, %d, %d], "max_tokens": %d, "ignore_eos": true}\n' \
      "$i" $((3 + i % (vocab - 3))) $((3 + (i * 7) % (vocab - 3))) $((3 + (i * 13) % (vocab - 3))) $((3 + i / 7 % (vocab - 3))) "$n"
  fi
done >"$out/in.jsonl"
cmodel=(); [ $tok -eq 1 ] && cmodel=(--model "$model")

# start_cluster TAG T [coordinator flags...]: a coordinator and a group of T ranks; sets front, coord_pid,
# group_pid and rank_pids. Ports below the kernel's ephemeral range.
port=$((21000 + RANDOM % 4000 * 2))
start_cluster() {
  local tag=$1 t=$2; shift 2
  port=$((port + 2)); front="tcp://127.0.0.1:$port"
  "$bin/kvf-coordinator" --front "$front" --back "tcp://127.0.0.1:$((port + 1))" "${cmodel[@]}" "$@" \
    >"$out/coord-$tag.log" 2>&1 &
  coord_pid=$!
  bash "$root/deploy/tp-run.sh" --tp "$t" --model "$model" --coordinator "tcp://127.0.0.1:$((port + 1))" \
    --backend "$backend" --bin-dir "$bin" --log-dir "$out/ranks-$tag" -- $wopts \
    >"$out/tp-run-$tag.log" 2>&1 &
  group_pid=$!
  local t0; t0=$(now)
  until "$bin/kvfctl" --coordinator "$front" --timeout 1000 status --json 2>/dev/null | grep -q '"state": "ready"'; do
    kill -0 "$group_pid" 2>/dev/null || { row "$tag start" "FAIL: the group exited (see ranks-$tag/)"; return 1; }
    older "$t0" 120 && { row "$tag start" "FAIL: not ready in 120 s"; return 1; }
    sleep 0.2
  done
  rank_pids=$(sed -n 's/.* pids \(.*\), logs.*/\1/p' "$out/tp-run-$tag.log")
}
# stop_cluster: SHUTDOWN, then wait for the group and the coordinator (killed after 30 s)
stop_cluster() {
  local ts; ts=$(now)
  "$bin/kvfctl" --coordinator "$front" shutdown >/dev/null 2>&1
  local p
  for p in $group_pid $coord_pid; do
    for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  echo "tp-e2e: stopped in $(secs "$ts") s"
  # tp-run stops its ranks; a rank that outlived it is a bug, and is killed here
  for p in $rank_pids; do kill -0 "$p" 2>/dev/null && { row "ranks stopped" "FAIL: rank pid $p outlived its group"; failed=1; kill -9 "$p"; }; done
}
# same FILE: FILE equals the TP 1 results, line for line (--match complete: see the top)
same() {
  local n d
  if [ "$match" = complete ]; then
    python3 - "$out/out-tp1.jsonl" "$1" "$prompts" <<'PY'
import json, sys
def load(f):
    return [json.loads(l) for l in open(f)]
ref, got, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
r = {x['id']: x for x in ref}
ids = [x['id'] for x in got]
bad = len(got) != n or len(set(ids)) != n or set(ids) != set(r)
bad = bad or any(len(x['output_ids']) != len(r[x['id']]['output_ids']) for x in got)
first = []
for x in got:
    a, b = r.get(x['id'], {}).get('output_ids', []), x['output_ids']
    k = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), None)
    if k is not None: first.append(k)
first.sort()
desc = '%d of %d lines identical' % (len(got) - len(first), len(got))
if first: desc += '; the others first differ at token %d (min) / %d (median)' % (first[0], first[len(first) // 2])
print(('FAIL: lost, duplicated or cut lines; ' if bad else 'ok: every line once, token counts equal; ') + desc)
PY
    return
  fi
  n=$(wc -l <"$1")
  d=$(diff <(cat "$out/out-tp1.jsonl") "$1" | grep -c '^>')
  if [ "$n" -eq "$prompts" ] && [ "$d" -eq 0 ]; then echo "ok: $n lines equal to TP 1"
  else echo "FAIL: $n of $prompts lines, $d differ from TP 1"; fi
}

for t in $tps; do
  tag="tp$t"; k=2
  while [ -e "$out/out-$tag.jsonl" ]; do tag="tp$t-run$k"; k=$((k + 1)); done  # --tp "1 1 2": TP 1 twice
  start_cluster "$tag" "$t" || { failed=1; stop_cluster; continue; }
  t0=$(now)
  "$bin/kvfctl" --coordinator "$front" run "$out/in.jsonl" -o "$out/out-$tag.jsonl" --progress none \
    2>"$out/kvfctl-$tag.err"
  rc=$? el=$(secs "$t0")
  if [ $rc -ne 0 ]; then r="FAIL: kvfctl rc=$rc"; else r=$(same "$out/out-$tag.jsonl"); fi
  [[ "$r" == ok* ]] || failed=1
  row "TP $t batch ($prompts prompts, $tag)" "$r; $el s"
  stop_cluster
done

tmax=0
for t in $tps; do [ "$t" -gt "$tmax" ] && tmax=$t; done
if [ $kill -eq 1 ] && [ "$tmax" -ge 2 ] && [ -s "$out/out-tp1.jsonl" ]; then
  tag="kill-tp$tmax"
  if start_cluster "$tag" "$tmax" --heartbeat-ms 200 --dead-after-ms 1500; then
    "$bin/kvfctl" --coordinator "$front" --timeout 60000 run "$out/in.jsonl" -o "$out/out-$tag.jsonl" \
      --progress none 2>"$out/kvfctl-$tag.err" &
    ctl=$!
    # wait until requests are running on the group, then kill its last rank
    t0=$(now)
    until "$bin/kvfctl" --coordinator "$front" --timeout 1000 status --json 2>/dev/null |
        grep -q '"running": [1-9]'; do
      older "$t0" 60 && break
      sleep 0.05
    done
    victim=${rank_pids##* }
    kill -9 "$victim"
    tk=$(now)
    for _ in $(seq 600); do kill -0 "$group_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$group_pid" 2>/dev/null; then
      row "$tag: group leaves after a rank's death" "FAIL: still up 60 s later"; failed=1
      kill -9 $rank_pids "$group_pid" 2>/dev/null
    else
      wait "$group_pid"; grc=$?
      row "$tag: group leaves after a rank's death" "ok: in $(secs "$tk") s (tp-run rc=$grc)"
      # the survivors leave with an error, not a crash (bash reports a rank's signal in tp-run's log)
      crash=$(grep -E 'Segmentation fault|Aborted|core dumped|Bus error' "$out/tp-run-$tag.log" | head -1)
      [ -z "$crash" ] || { row "$tag: survivors leave cleanly" "FAIL: ${crash#*: }"; failed=1; }
    fi
    # the coordinator marks it dead; a TP 1 worker (device 0) then takes the requests over
    dev=(); [ "$backend" = cuda ] && dev=(--device 0)
    "$bin/kvf-worker" --model "$model" --backend "$backend" "${dev[@]}" --coordinator "tcp://127.0.0.1:$((port + 1))" \
      $wopts >"$out/worker-takeover.log" 2>&1 &
    spare=$!
    for _ in $(seq 1800); do kill -0 "$ctl" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$ctl" 2>/dev/null; then
      row "$tag: batch finishes on the spare" "FAIL: kvfctl still running 180 s later"; failed=1; kill -9 "$ctl"
    else
      wait "$ctl"; rc=$?
      r=$(same "$out/out-$tag.jsonl")
      [ $rc -eq 0 ] && [[ "$r" == ok* ]] || failed=1
      row "$tag: batch finishes on the spare" "kvfctl rc=$rc, $r; $(secs "$tk") s after the kill"
    fi
    back=$(grep -o '[0-9]* requests back in the queue' "$out/coord-$tag.log" | head -1)
    [ -n "$back" ] || { back="FAIL: the batch ended before the kill (more --prompts or --max-tokens)"; failed=1; }
    row "$tag: coordinator takes them back" "$back"
    "$bin/kvfctl" --coordinator "$front" status >"$out/status-$tag.txt" 2>&1
    group_pid=$spare rank_pids=""
    stop_cluster
  else
    failed=1; stop_cluster
  fi
fi
printf '%s\n' "${rows[@]}" >"$out/summary.txt"
[ $failed -eq 0 ] && echo "tp-e2e: PASS" || echo "tp-e2e: FAIL"
exit $failed

#!/usr/bin/env bash
# tests/chaos.sh — a soak under chaos, for a person to run for minutes (CI runs
# the short version, tests/test_reliability.c).
#
#   tests/chaos.sh [--minutes N] [--prompts N] [--workers N] [--model DIR]
#                  [--bin-dir DIR] [--seed S] [--keep]
#
# Starts a node with deploy/kvf-node (CPU workers, tiny-llama by default, the
# coordinator journalling to the run dir), makes a reference output of a
# batch of N prompts (default 500, greedy) undisturbed, then runs the same
# batch again and again with `kvfctl run --batch-id` while, on a loop, random
# workers are killed (SIGKILL) and started again, and once per round the
# coordinator is killed and started again on its journal (and in odd rounds
# kvfctl is killed too and re-run with the same --batch-id and output file, so
# it resumes from the file). After each round every output line must be present
# exactly once and equal to the reference. Stops starting rounds after
# --minutes (default 3); exits 0 when every round matched, 1 on any loss or
# mismatch (the run dir is kept then), 2 on bad usage. Cleans up its processes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
minutes=3
prompts=500
workers=3
model="$root/../shared/fixtures/tiny-llama"
bin_dir=${KVF_BIN_DIR:-$root/build/bin}
seed=$$
keep=0

die() { echo "chaos: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --prompts) prompts=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$minutes" =~ ^[0-9]+$ && "$prompts" =~ ^[0-9]+$ && "$workers" =~ ^[0-9]+$ ]] || die "numbers expected"
[ "$workers" -ge 2 ] || die "--workers must be >= 2 (one must live while another restarts)"
for b in kvf-coordinator kvf-worker kvfctl; do [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is not built (--bin-dir)"; done
[ -f "$model/config.json" ] || die "no model at $model (--model)"
RANDOM=$seed

dir=$(mktemp -d /tmp/kvf-chaos-XXXXXX)
run="$dir/run"
# Below the kernel's ephemeral ports (32768 up): workers and clients reconnecting
# to a dead coordinator's ephemeral port could connect to themselves on it.
front_port=$((20000 + (RANDOM % 6000) * 2))
back_port=$((front_port + 1))
front="tcp://127.0.0.1:$front_port"
kvfctl_pid=""
failed=0

log() { echo "chaos [$(date +%H:%M:%S)] $*"; }

cleanup() {
  set +e
  [ -n "$kvfctl_pid" ] && kill -9 "$kvfctl_pid" 2>/dev/null && wait "$kvfctl_pid" 2>/dev/null
  "$root/deploy/kvf-node" stop --run-dir "$run" --timeout 5 >/dev/null 2>&1
  # Processes this script restarted by hand have their pid files in the run dir too.
  if [ $failed -eq 0 ] && [ $keep -eq 0 ]; then rm -rf "$dir"; else echo "chaos: files kept in $dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "seed $seed, $workers workers, $prompts prompts, $minutes min; files in $dir"
"$root/deploy/kvf-node" start --model "$model" --backend cpu --workers "$workers" --run-dir "$run" \
  --bin-dir "$bin_dir" --front-port "$front_port" --back-port "$back_port" \
  --coordinator-opt --heartbeat-ms --coordinator-opt 200 --coordinator-opt --dead-after-ms --coordinator-opt 1500 \
  --threads 1 --max-batch-size 16 >"$dir/node.out" 2>&1 || { cat "$dir/node.out"; failed=1; exit 1; }

# Prompts of various lengths; request i asks for 32..431 new tokens.
words=(dragon boat king cat friends rain castle river star forest robot baker)
for ((i = 0; i < prompts; i++)); do
  printf '{"id": %d, "prompt": "Once upon a time a %s and a %s met at place %d, and", "max_tokens": %d, "ignore_eos": true}\n' \
    "$i" "${words[$((i % 12))]}" "${words[$(((i * 7) % 12))]}" "$i" $((32 + (i * 37) % 400))
done >"$dir/in.jsonl"

# An array, not a function: `kvfctl &` must give the binary's own pid to kill.
kvfctl=("$bin_dir/kvfctl" --coordinator "$front")

t0=$SECONDS
"${kvfctl[@]}" run "$dir/in.jsonl" -o "$dir/ref.jsonl" --progress none 2>"$dir/ref.err" || { cat "$dir/ref.err"; failed=1; exit 1; }
t_ref=$((SECONDS - t0))
[ "$(wc -l <"$dir/ref.jsonl")" -eq "$prompts" ] || { log "reference has $(wc -l <"$dir/ref.jsonl") lines"; failed=1; exit 1; }
log "reference: $prompts prompts in ${t_ref}s"

# Kills process pid (SIGKILL) and starts it again with the same command line,
# detached, output appended to log; prints the new pid.
restart() {
  local pid=$1 out=$2 args=()
  mapfile -d '' args <"/proc/$pid/cmdline"
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do sleep 0.02; done
  sleep "0.$((RANDOM % 4 + 1))"
  setsid "${args[@]}" </dev/null >>"$out" 2>&1 &
  local new=$!
  disown "$new"  # kvf-node stop ends it, by its pid file
  echo "$new"
}

# Checks out against the reference: every id once, every line equal.
check() {
  local out=$1 n
  n=$(wc -l <"$out")
  local dups missing
  dups=$(grep -o '^{"id":[0-9]*' "$out" | sort | uniq -d | head -5 | tr '\n' ' ')
  missing=$(comm -23 <(grep -o '^{"id":[0-9]*' "$dir/ref.jsonl" | sort) <(grep -o '^{"id":[0-9]*' "$out" | sort) | head -5 | tr '\n' ' ')
  if [ -n "$dups" ] || [ -n "$missing" ] || [ "$n" -ne "$prompts" ]; then
    log "LOSS: $out has $n lines; duplicated: ${dups:-none}; missing: ${missing:-none}"
    return 1
  fi
  if ! cmp -s "$out" "$dir/ref.jsonl"; then
    log "MISMATCH: $out differs from the reference: $(cmp "$out" "$dir/ref.jsonl" | head -1)"
    return 1
  fi
}

round=0
kills=0
coord_kills=0
ctl_kills=0
deadline=$((t0 + t_ref + minutes * 60))
while [ $round -eq 0 ] || [ $SECONDS -lt $deadline ]; do  # at least one round
  round=$((round + 1))
  out="$dir/out-$round.jsonl"
  id="chaos$round"
  step_ms=$((t_ref * 1000 / 10 + 100))
  coord_at=$((RANDOM % 3 + 2))   # the coordinator dies at this kill
  kill_ctl=$((round % 2))       # odd rounds kill kvfctl with the coordinator
  "${kvfctl[@]}" run "$dir/in.jsonl" -o "$out" --batch-id "$id" --progress none 2>>"$dir/kvfctl-$round.err" &
  kvfctl_pid=$!
  n=0
  rs=$SECONDS
  while :; do
    sleep "$(awk -v ms=$((step_ms + RANDOM % step_ms)) 'BEGIN{printf "%.3f", ms/1000}')"
    if ! kill -0 "$kvfctl_pid" 2>/dev/null; then
      if wait "$kvfctl_pid"; then break; fi
      # kvfctl gave up (or was killed below): run it again, it resumes from $out.
      "${kvfctl[@]}" run "$dir/in.jsonl" -o "$out" --batch-id "$id" --progress none 2>>"$dir/kvfctl-$round.err" &
      kvfctl_pid=$!
      continue
    fi
    [ $((SECONDS - rs)) -gt $((t_ref * 20 + 120)) ] && { log "round $round did not finish"; failed=1; exit 1; }
    n=$((n + 1))
    if [ $n -eq "$coord_at" ]; then
      pid=$(cat "$run/coordinator.pid")
      if [ "$kill_ctl" -eq 1 ]; then
        kill -9 "$kvfctl_pid" 2>/dev/null || true
        wait "$kvfctl_pid" 2>/dev/null || true
        ctl_kills=$((ctl_kills + 1))
      fi
      restart "$pid" "$run/coordinator.log" >"$run/coordinator.pid"
      coord_kills=$((coord_kills + 1))
      if [ "$kill_ctl" -eq 1 ]; then  # run again: it resumes from $out and the journal
        "${kvfctl[@]}" run "$dir/in.jsonl" -o "$out" --batch-id "$id" --progress none 2>>"$dir/kvfctl-$round.err" &
        kvfctl_pid=$!
      fi
    else
      w=$((RANDOM % workers))
      pid=$(cat "$run/worker-$w.pid")
      restart "$pid" "$run/worker-$w.log" >"$run/worker-$w.pid"
      kills=$((kills + 1))
    fi
  done
  kvfctl_pid=""
  if check "$out"; then
    log "round $round ok in $((SECONDS - rs))s: $prompts lines equal to the reference (so far $kills worker kills, $coord_kills coordinator kills, $ctl_kills kvfctl kills)"
  else
    failed=1
    exit 1
  fi
done
log "PASS: $round rounds, $kills worker kills, $coord_kills coordinator kills, $ctl_kills kvfctl kills; every line present once and equal to the reference"

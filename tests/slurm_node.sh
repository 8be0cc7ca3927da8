#!/usr/bin/env bash
# tests/slurm_node.sh BIN_DIR — deploy/slurm/kvfleet-node.sh without Slurm, as srun would run it on
# two nodes, here two "nodes" on this host (cpu backend): the head (HEAD = this host's short name)
# starts the coordinator and a worker, the other (HEAD = 127.0.0.1, another KVF_NODE_NAME) joins it
# with a TP group of 2. A batch runs across both; SIGTERM stops the joined node alone (exit 0, its
# ranks gone), the coordinator's SHUTDOWN ends the head node's script by itself (exit 0).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/cluster_lib.sh
. "$root/tests/cluster_lib.sh"
bin=${1:?usage: $0 BIN_DIR}
model="${KVF_FIXTURES:-$root/../shared/fixtures}/tiny-llama"
dir=$(mktemp -d /tmp/kvf-slurm-node-XXXXXX)
fport=$((22000 + RANDOM % 3000 * 2)) bport=$((fport + 1))
front="tcp://127.0.0.1:$fport"
node_sh="$root/deploy/slurm/kvfleet-node.sh"
opts=(--model "$model" --backend cpu --bin-dir "$bin" --front-port "$fport" --back-port "$bport" --no-journal
      --threads 1 --cache-max-entry-count 64)
fail() { echo "slurm_node: FAIL: $*"; for f in "$dir"/*.out; do echo "---- $f"; tail -5 "$f"; done; exit 1; }
cleanup() {
  "$root/deploy/kvf-node" stop --run-dir "$dir/b" >/dev/null 2>&1
  "$root/deploy/kvf-node" stop --run-dir "$dir/a" >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT

"$node_sh" "$(hostname -s)" "$dir/a" "${opts[@]}" >"$dir/a.out" 2>&1 &
a=$!
for _ in $(seq 300); do grep -q "up (" "$dir/a.out" && break; kill -0 $a 2>/dev/null || fail "head node exited"; sleep 0.2; done
grep -q "up (--host 0.0.0.0)" "$dir/a.out" || fail "the head node did not start the coordinator"
KVF_NODE_NAME=second "$node_sh" 127.0.0.1 "$dir/b" "${opts[@]}" --tp 2 >"$dir/b.out" 2>&1 &
b=$!
for _ in $(seq 300); do grep -q "up (" "$dir/b.out" && break; kill -0 $b 2>/dev/null || fail "joined node exited"; sleep 0.2; done
grep -q "up (--join 127.0.0.1)" "$dir/b.out" || fail "the second node did not join"
[ ! -e "$dir/b/coordinator.pid" ] || fail "the joined node started a coordinator"

st=$("$bin/kvfctl" --coordinator "$front" status --json) || fail "status"
[ "$(grep -c '"state": "ready"' <<<"$st")" -eq 2 ] || fail "2 ready workers expected: $st"
grep -q '"id": "second-cpu0"' <<<"$st" || fail "no worker second-cpu0: $st"
run_batch "$bin" "$front" "$dir" 16

ranks=$(tp_ranks "$dir/b/worker-0.log")
[ -n "$ranks" ] || fail "no rank pids in b's tp-run log"
kill -TERM $b
wait $b || fail "the joined node's script exited $?"
sleep 0.5
for p in $ranks; do kill -0 "$p" 2>/dev/null && fail "rank $p outlived its node's stop"; done
kill -0 "$(cat "$dir/a/coordinator.pid")" 2>/dev/null || fail "the head's coordinator went with the joined node"

"$bin/kvfctl" --coordinator "$front" shutdown >/dev/null || fail "shutdown"
for _ in $(seq 150); do kill -0 $a 2>/dev/null || break; sleep 0.2; done
kill -0 $a 2>/dev/null && fail "the head node's script outlived SHUTDOWN"
wait $a || fail "the head node's script exited $?"
grep -q "stopped" "$dir/a.out" || fail "the head node did not report its stop"
echo "slurm_node: PASS"

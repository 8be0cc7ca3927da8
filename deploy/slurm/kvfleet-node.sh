#!/usr/bin/env bash
# deploy/slurm/kvfleet-node.sh — one node's part of a kvfleet cluster that lives as long as a job
# (deploy/slurm/kvfleet.sbatch runs it on every node through srun, one task a node):
#
#   kvfleet-node.sh HEAD RUN_DIR [kvf-node start options...]
#
# On the node whose short host name is HEAD (or when HEAD is this host's address) it starts the
# coordinator, bound on every interface, and this node's workers (deploy/kvf-node start --host
# 0.0.0.0); on any other node only the workers, joined to HEAD's coordinator (--join HEAD). Then it
# stays: until SIGTERM/SIGINT (srun passes scancel's on), or until this node's processes have all
# ended (the coordinator's SHUTDOWN stops them), and stops what is left (kvf-node stop). Exit status:
# kvf-node start's when the start fails, else 0. KVF_NODE_NAME: the workers' id prefix (default the
# short host name).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 2 ] || { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }
head=$1 run_dir=$2
shift 2
host_s=$(hostname -s 2>/dev/null || hostname)
node=${KVF_NODE_NAME:-$host_s}  # the workers' id prefix (two "nodes" on one host need two names)
role=(--join "$head")
if [ "$head" = "$host_s" ] || [ "$head" = "$(hostname)" ] || hostname -I 2>/dev/null | tr ' ' '\n' | grep -qxF "$head"; then
  role=(--host 0.0.0.0)
fi
mkdir -p "$run_dir"
stopping=0
on_signal() { stopping=1; }
trap on_signal TERM INT
"$here/../kvf-node" start --run-dir "$run_dir" --name "$node" "${role[@]}" "$@"
echo "kvfleet-node: $node up (${role[*]}); run dir $run_dir"
# Stay while any of this node's processes runs (their pid files, as kvf-node keeps them).
alive() {
  local f pid
  for f in "$run_dir"/coordinator.pid "$run_dir"/worker-*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}
while [ $stopping -eq 0 ] && alive; do sleep 1 & wait $! || true; done
"$here/../kvf-node" stop --run-dir "$run_dir" >/dev/null
echo "kvfleet-node: $node stopped"

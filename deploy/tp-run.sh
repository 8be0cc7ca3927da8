#!/usr/bin/env bash
# deploy/tp-run.sh — start one tensor-parallel group of T kvf-worker processes
# on this host against a coordinator, and keep it up as one unit.
#
#   deploy/tp-run.sh --tp T --model DIR --coordinator ENDPOINT
#                    [--backend cpu|cuda] [--first-device N] [--group ID]
#                    [--bin-dir DIR] [--log-dir DIR] [-- more kvf-worker flags]
#
# Rank r runs `kvf-worker --tp T --rank R --group ID` with the same flags (the
# ranks must agree on every size); with --backend cuda rank r gets --device
# first-device + r (one GPU per rank; T = 2, 4 or 8 on a node with that many).
# Only rank 0 talks to the coordinator; the ranks share a shared-memory segment
# named by the group id, which must be unique per launch (the default is).
# NCCL_NVLS_ENABLE=0 is exported (NVLink multicast objects are not used), and
# CUDA_MODULE_LOADING=EAGER unless set.
#
# The group lives and dies as one: when any rank exits, the others are stopped
# (a TP group with a missing rank cannot compute), and the script exits with the
# first failing rank's status (0 when rank 0 ended cleanly, e.g. after SHUTDOWN).
# SIGINT/SIGTERM are passed to every rank. Logs: <log-dir>/rank<R>.log.
#
# Both backends shard over the group (worker/tp_shard.h). With --backend cuda
# each rank's engine also makes an NCCL communicator (unique id sent over the
# shm group) and the backend all-reduces over it, without CUDA graphs. The collectives run on a blocking
# communicator made beside the bounded non-blocking one (KVF_TP_NCCL_BLOCKING=0: on the latter, ~3x slower).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

tp="" model="" coord="" backend=cpu first_dev=0 group="" bin="${KVF_BIN_DIR:-$root/build/bin}" log_dir=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tp) tp=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --coordinator) coord=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --first-device) first_dev=$2; shift 2 ;;
    --group) group=$2; shift 2 ;;
    --bin-dir) bin=$2; shift 2 ;;
    --log-dir) log_dir=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "tp-run: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$tp" =~ ^[0-9]+$ ]] && [ "$tp" -ge 1 ] && [ "$tp" -le 64 ] || { echo "tp-run: --tp T (1..64) is required" >&2; exit 2; }
[ -n "$model" ] && [ -n "$coord" ] || { echo "tp-run: --model and --coordinator are required" >&2; exit 2; }
[ "$backend" = cpu ] || [ "$backend" = cuda ] || { echo "tp-run: --backend cpu|cuda" >&2; exit 2; }
[[ "$first_dev" =~ ^[0-9]+$ ]] || { echo "tp-run: --first-device N" >&2; exit 2; }
[ -x "$bin/kvf-worker" ] || { echo "tp-run: $bin/kvf-worker not found (build first, or --bin-dir)" >&2; exit 1; }
if [ "$backend" = cuda ]; then
  ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  [ "$ngpu" -ge $((first_dev + tp)) ] ||
    { echo "tp-run: --tp $tp from device $first_dev needs $((first_dev + tp)) GPUs, nvidia-smi sees $ngpu" >&2; exit 1; }
fi
[ -n "$group" ] || group="tp-$(hostname -s 2>/dev/null || echo host)-$$-$(date +%s)"
[[ "$group" =~ ^[A-Za-z0-9._-]{1,63}$ ]] || { echo "tp-run: --group: 1..63 of [A-Za-z0-9._-]" >&2; exit 2; }
[ -n "$log_dir" ] || log_dir=$(mktemp -d "${TMPDIR:-/tmp}/kvf-tp-$group.XXXXXX")
mkdir -p "$log_dir"
export NCCL_NVLS_ENABLE=0
export CUDA_MODULE_LOADING=${CUDA_MODULE_LOADING:-EAGER}  # worker/tp_nccl.c: a dead peer must not block a launch

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # a rank that does not leave within 15 s is killed
  for _ in $(seq 150); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && return
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for r in $(seq 0 $((tp - 1))); do
  args=(--model "$model" --backend "$backend" --tp "$tp" --rank "$r" --group "$group")
  [ "$backend" = cuda ] && args+=(--device $((first_dev + r)))
  [ "$r" -eq 0 ] && args+=(--coordinator "$coord")
  "$bin/kvf-worker" "${args[@]}" "${extra[@]}" >"$log_dir/rank$r.log" 2>&1 &
  pids+=($!)
done
echo "tp-run: group $group, $tp ranks ($backend), pids ${pids[*]}, logs in $log_dir"

# The first rank to end decides: the others are stopped with it.
status=0
while :; do
  for i in "${!pids[@]}"; do
    p=${pids[$i]}
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p" && rc=0 || rc=$?
      [ "$rc" -ne 0 ] && echo "tp-run: rank $i exited with status $rc (see $log_dir/rank$i.log); stopping the group" >&2
      status=$rc
      stop_all
      for q in "${pids[@]}"; do [ "$q" = "$p" ] || { wait "$q" && r2=0 || r2=$?; [ $status -eq 0 ] && status=$r2; }; done
      exit $status
    fi
  done
  sleep 0.2
done

#!/usr/bin/env bash
# tests/k8s_manifest.sh BIN_DIR — deploy/kubernetes/kvfleet.yaml without a cluster: the containers'
# own commands (read from the manifest with their ConfigMap environment) run here as the pods would,
# with only what a cluster provides replaced: the Service's name -> 127.0.0.1 and free ports, the
# journal volume /data -> a temporary folder, the model volume -> the fixtures' tiny-llama, the
# image's /opt/kvfleet -> this checkout, --backend cuda -> cpu. The coordinator must pass its
# readiness probe, a worker pod with KVF_TP=2 must register as one TP-2 worker named after its pod,
# a batch must come back whole, and SIGTERM (a pod's stop) must end the worker's ranks.
# Exit 77 (CTest: skipped) when python3 cannot read YAML.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/cluster_lib.sh
. "$root/tests/cluster_lib.sh"
bin=${1:?usage: $0 BIN_DIR}
manifest="$root/deploy/kubernetes/kvfleet.yaml"
python3 -c 'import yaml' 2>/dev/null || { echo "k8s_manifest: python3 with yaml is not here: skipped"; exit 77; }
dir=$(mktemp -d /tmp/kvf-k8s-XXXXXX)
fport=$((24000 + RANDOM % 3000 * 2)) bport=$((fport + 1))
pids=()
fail() { echo "k8s_manifest: FAIL: $*"; for f in "$dir"/*.log; do echo "---- $f"; tail -5 "$f"; done; exit 1; }
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$dir"; }
trap cleanup EXIT

# The manifest's pieces, as shell assignments: the ConfigMap's data, each container's command line
# and the coordinator's readiness probe; plus structural checks a typo would break.
python3 - "$manifest" >"$dir/pieces.sh" <<'PY' || fail "the manifest does not parse or lacks a piece"
import shlex, sys, yaml
docs = {(d['kind'], d['metadata']['name']): d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
cm = docs[('ConfigMap', 'kvfleet')]['data']
svc = docs[('Service', 'kvfleet')]
assert {p['port'] for p in svc['spec']['ports']} == {5555, 5556}
co = docs[('Deployment', 'kvfleet-coordinator')]['spec']['template']['spec']['containers'][0]
wk = docs[('StatefulSet', 'kvfleet-worker')]['spec']['template']['spec']['containers'][0]
assert svc['spec']['selector'] == docs[('Deployment', 'kvfleet-coordinator')]['spec']['template']['metadata']['labels']
assert co['command'] == wk['command'] == ['/bin/sh', '-c']
assert any(v['name'] == 'shm' and v['emptyDir']['medium'] == 'Memory'
           for v in docs[('StatefulSet', 'kvfleet-worker')]['spec']['template']['spec']['volumes'])
for k, v in cm.items():
    print('export %s=%s' % (k, shlex.quote(str(v))))
print('coord_cmd=%s' % shlex.quote(co['args'][0]))
print('worker_cmd=%s' % shlex.quote(wk['args'][0]))
print('probe=(%s)' % ' '.join(shlex.quote(a) for a in co['readinessProbe']['exec']['command']))
PY
# shellcheck disable=SC1091
. "$dir/pieces.sh"
local_cmd() {  # what only a cluster provides, replaced
  sed -e "s#tcp://kvfleet:5556#tcp://127.0.0.1:$bport#g" -e "s#tcp://0.0.0.0:5555#tcp://127.0.0.1:$fport#g" \
      -e "s#tcp://0.0.0.0:5556#tcp://127.0.0.1:$bport#g" -e "s#/data/#$dir/#g" -e "s#/opt/kvfleet/#$root/#g" \
      -e "s#--backend cuda#--backend cpu#g" <<<"$1"
}
export KVF_MODEL="${KVF_FIXTURES:-$root/../shared/fixtures}/tiny-llama" KVF_TP=2 KVF_BIN_DIR="$bin"
export KVF_WORKER_OPTS="$KVF_WORKER_OPTS --threads 1 --cache-max-entry-count 64" PATH="$bin:$PATH"

/bin/sh -c "$(local_cmd "$coord_cmd")" >"$dir/coordinator.log" 2>&1 &
pids+=($!)
disown $!  # the cleanup's SIGKILL needs no job report
probe=("${probe[@]/5555/$fport}")
for _ in $(seq 100); do "${probe[@]}" >/dev/null 2>&1 && break; sleep 0.2; done
"${probe[@]}" >/dev/null 2>&1 || fail "the coordinator's readiness probe never passed"
[ -s "$dir/journal.db" ] || fail "no journal on the /data volume"

POD_NAME=kvfleet-worker-0 /bin/sh -c "$(local_cmd "$worker_cmd")" >"$dir/worker.log" 2>&1 &
wpid=$!
pids+=("$wpid")
front="tcp://127.0.0.1:$fport"
for _ in $(seq 150); do
  "$bin/kvfctl" --coordinator "$front" status --json 2>/dev/null | grep -q '"state": "ready"' && break
  kill -0 $wpid 2>/dev/null || fail "the worker pod's command exited"
  sleep 0.2
done
st=$("$bin/kvfctl" --coordinator "$front" status --json) || fail "status"
grep -q '"id": "kvfleet-worker-0"' <<<"$st" || fail "no worker named after its pod: $st"
grep -q '"tp_size": 2' <<<"$st" || fail "the worker is not a TP-2 group: $st"
run_batch "$bin" "$front" "$dir" 16

ranks=$(tp_ranks "$dir/worker.log")
[ -n "$ranks" ] || fail "tp-run named no ranks"
kill -TERM $wpid
for _ in $(seq 200); do kill -0 $wpid 2>/dev/null || break; sleep 0.1; done
kill -0 $wpid 2>/dev/null && fail "the worker pod's process outlived SIGTERM by 20 s"
sleep 0.3
for p in $ranks; do kill -0 "$p" 2>/dev/null && fail "rank $p outlived its pod's stop"; done
echo "k8s_manifest: PASS"

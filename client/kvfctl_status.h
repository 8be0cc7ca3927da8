// client/kvfctl_status.h — how `kvfctl status` shows a kvf_cluster_status_t:
// a table for people and a JSON document for scripts (deploy/kvf-node, tests).
//
// JSON (one object): {"workers": [{"id", "group", "backend", "device", "tp_rank",
// "tp_size", "state", "free_blocks", "total_blocks", "free_pct", "running",
// "waiting", "assigned", "tokens_per_s", "tokens_total", "preemptions",
// "rejected", "prefix_hits", "prefix_misses", "last_seen_ms", "block_size",
// "plan": {"weights_bytes", "workspace_bytes", "kv_bytes", "kv_blocks",
// "block_size", "tokens_fit", "full_sequences"}}, ...],
// "totals": {"workers", "ready", "dead", "free_blocks", "total_blocks",
// "running", "waiting", "tokens_per_s", "preemptions", "rejected"},
// "queue_len", "queue_cap", "requests_done", "uptime_ms"}.
// Totals of blocks, load and throughput count live (not dead) workers only.
#ifndef KVF_KVFCTL_STATUS_H
#define KVF_KVFCTL_STATUS_H

#include <jansson.h>
#include <stdio.h>

#include "client/libkvf.h"

// A new JSON object (caller decrefs) describing st as above.
json_t *kvf_ctl_status_json(const kvf_cluster_status_t *st);

// Writes the table: a row per worker, then the totals and the coordinator's queue.
void kvf_ctl_status_print(FILE *f, const kvf_cluster_status_t *st);

#endif

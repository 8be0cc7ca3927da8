// client/kvfctl_status.c — see kvfctl_status.h.
#include "kvfctl_status.h"

#include <string.h>

typedef struct {
    uint32_t workers, ready, dead;
    uint64_t free_blocks, total_blocks, running, waiting, preemptions, rejected;
    double tokens_per_s;
} s_totals_t;

static s_totals_t s_sum(const kvf_cluster_status_t *st) {
    s_totals_t t;
    memset(&t, 0, sizeof t);
    for (uint32_t i = 0; i < st->n_workers; i++) {
        const kvf_worker_info_t *w = &st->workers[i];
        t.workers++;
        t.preemptions += w->load.preemptions;
        t.rejected += w->load.rejected;
        if (w->load.state == KVF_WSTATE_DEAD) {
            t.dead++;
            continue;
        }
        if (w->load.state == KVF_WSTATE_READY) t.ready++;
        t.free_blocks += w->load.free_blocks;
        t.total_blocks += w->load.total_blocks;
        t.running += w->load.running;
        t.waiting += w->load.waiting;
        t.tokens_per_s += w->load.tokens_per_s;
    }
    return t;
}

static double s_pct(uint64_t part, uint64_t whole) {
    return whole ? 100.0 * (double)part / (double)whole : 0.0;
}

json_t *kvf_ctl_status_json(const kvf_cluster_status_t *st) {
    json_t *ws = json_array();
    for (uint32_t i = 0; i < st->n_workers; i++) {
        const kvf_worker_info_t *w = &st->workers[i];
        json_t *plan = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:s}",
                                 "weights_bytes", (json_int_t)w->plan.weights_bytes,
                                 "workspace_bytes", (json_int_t)w->plan.workspace_bytes,
                                 "kv_bytes", (json_int_t)w->plan.kv_bytes,
                                 "kv_blocks", (json_int_t)w->plan.kv_blocks,
                                 "block_size", (json_int_t)w->plan.block_size,
                                 "tokens_fit", (json_int_t)w->plan.tokens_fit,
                                 "full_sequences", (json_int_t)w->plan.full_sequences,
                                 "kv_cache_dtype", w->plan.kv_dtype == 1 ? "fp8" : "auto",
                                 "quantization", w->plan.quant == 1 ? "fp8" : "none");
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(w->worker_id));
        json_object_set_new(o, "group", json_string(w->group_id));
        json_object_set_new(o, "backend", json_string(w->backend));
        json_object_set_new(o, "model", json_string(w->model));
        json_object_set_new(o, "device", json_integer(w->device));
        json_object_set_new(o, "tp_rank", json_integer(w->tp_rank));
        json_object_set_new(o, "tp_size", json_integer(w->tp_size));
        json_object_set_new(o, "state", json_string(kvf_wstate_name(w->load.state)));
        json_object_set_new(o, "free_blocks", json_integer(w->load.free_blocks));
        json_object_set_new(o, "total_blocks", json_integer(w->load.total_blocks));
        json_object_set_new(o, "free_pct", json_real(s_pct(w->load.free_blocks, w->load.total_blocks)));
        json_object_set_new(o, "running", json_integer(w->load.running));
        json_object_set_new(o, "waiting", json_integer(w->load.waiting));
        json_object_set_new(o, "assigned", json_integer(w->assigned));
        json_object_set_new(o, "tokens_per_s", json_real(w->load.tokens_per_s));
        json_object_set_new(o, "tokens_total", json_integer((json_int_t)w->load.tokens_total));
        json_object_set_new(o, "preemptions", json_integer((json_int_t)w->load.preemptions));
        json_object_set_new(o, "rejected", json_integer((json_int_t)w->load.rejected));
        json_object_set_new(o, "prefix_hits", json_integer((json_int_t)w->load.prefix_hits));
        json_object_set_new(o, "prefix_misses", json_integer((json_int_t)w->load.prefix_misses));
        json_object_set_new(o, "last_seen_ms", json_integer((json_int_t)w->last_seen_ms));
        json_object_set_new(o, "block_size", json_integer(w->block_size));
        json_object_set_new(o, "plan", plan);
        json_array_append_new(ws, o);
    }
    s_totals_t t = s_sum(st);
    json_t *tot = json_object();
    json_object_set_new(tot, "workers", json_integer(t.workers));
    json_object_set_new(tot, "ready", json_integer(t.ready));
    json_object_set_new(tot, "dead", json_integer(t.dead));
    json_object_set_new(tot, "free_blocks", json_integer((json_int_t)t.free_blocks));
    json_object_set_new(tot, "total_blocks", json_integer((json_int_t)t.total_blocks));
    json_object_set_new(tot, "running", json_integer((json_int_t)t.running));
    json_object_set_new(tot, "waiting", json_integer((json_int_t)t.waiting));
    json_object_set_new(tot, "tokens_per_s", json_real(t.tokens_per_s));
    json_object_set_new(tot, "preemptions", json_integer((json_int_t)t.preemptions));
    json_object_set_new(tot, "rejected", json_integer((json_int_t)t.rejected));
    json_t *o = json_object();
    json_object_set_new(o, "workers", ws);
    json_object_set_new(o, "totals", tot);
    json_object_set_new(o, "queue_len", json_integer(st->queue_len));
    json_object_set_new(o, "queue_cap", json_integer(st->queue_cap));
    json_object_set_new(o, "requests_done", json_integer((json_int_t)st->requests_done));
    json_object_set_new(o, "uptime_ms", json_integer((json_int_t)st->uptime_ms));
    return o;
}

void kvf_ctl_status_print(FILE *f, const kvf_cluster_status_t *st) {
    fprintf(f, "%-20s %-8s %-5s %-9s %-20s %5s %5s %9s %10s %8s  %s\n", "WORKER", "DEVICE", "TP", "STATE",
            "FREE/TOTAL BLOCKS", "RUN", "WAIT", "TOK/S", "GENERATED", "PREEMPT", "PLAN");
    for (uint32_t i = 0; i < st->n_workers; i++) {
        const kvf_worker_info_t *w = &st->workers[i];
        char dev[32], tp[16], blocks[40], plan[96];
        if (w->device >= 0) snprintf(dev, sizeof dev, "%s:%d", w->backend, w->device);
        else snprintf(dev, sizeof dev, "%s", w->backend);
        snprintf(tp, sizeof tp, "%u/%u", w->tp_rank, w->tp_size);
        snprintf(blocks, sizeof blocks, "%u/%u (%.0f%%)", w->load.free_blocks, w->load.total_blocks,
                 s_pct(w->load.free_blocks, w->load.total_blocks));
        snprintf(plan, sizeof plan, "%u blocks x %u = %llu tokens%s%s", w->plan.kv_blocks, w->plan.block_size,
                 (unsigned long long)w->plan.tokens_fit, w->plan.kv_dtype == 1 ? ", kv fp8" : "",
                 w->plan.quant == 1 ? ", weights fp8" : "");
        fprintf(f, "%-20s %-8s %-5s %-9s %-20s %5u %5u %9.1f %10llu %8llu  %s\n", w->worker_id, dev, tp,
                kvf_wstate_name(w->load.state), blocks, w->load.running, w->load.waiting, w->load.tokens_per_s,
                (unsigned long long)w->load.tokens_total, (unsigned long long)w->load.preemptions, plan);
    }
    s_totals_t t = s_sum(st);
    fprintf(f, "cluster: %u workers (%u ready, %u dead), blocks %llu/%llu free (%.0f%%), %llu running, "
               "%llu waiting, %.1f tokens/s, %llu preemptions, %llu rejected\n",
            t.workers, t.ready, t.dead, (unsigned long long)t.free_blocks, (unsigned long long)t.total_blocks,
            s_pct(t.free_blocks, t.total_blocks), (unsigned long long)t.running, (unsigned long long)t.waiting,
            t.tokens_per_s, (unsigned long long)t.preemptions, (unsigned long long)t.rejected);
    fprintf(f, "coordinator: queue %u/%u, %llu requests done, up %.0f s\n", st->queue_len, st->queue_cap,
            (unsigned long long)st->requests_done, (double)st->uptime_ms / 1000.0);
}

// tests/test_bench.c — the roofline arithmetic (bench/roofline.h) against
// hand-computed numbers, sanity for Llama-3-8B, and CPU smoke runs of the real
// kvf-bench binary on a tiny config with dummy weights.
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/devmon.h"
#include "bench_run.h"
#include "bench/roofline.h"
#include "common/modelcfg.h"
#include "test_util.h"
#include "worker/engine.h"

// ---------------------------------------------------------------- a hand-sized config

// hidden 64, 2 layers, 4 heads x 16, 2 KV heads, MLP 128, vocab 100, tied.
// Per layer: q 64x64 + k,v 2 x 64x32 + o 64x64 + gate,up,down 3 x 64x128 = 36864.
static const char *s_small_json =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 16, \"intermediate_size\": 128,"
    " \"vocab_size\": 100, \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0,"
    " \"tie_word_embeddings\": true}";

static void s_small(kvf_modelcfg_t *cfg) {
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_parse(s_small_json, "small", cfg, &err), 0, "%s", err.msg);
}

static void s_load(const char *rel, kvf_modelcfg_t *cfg) {
    char path[4096];
    KVF_FIXTURE_PATH(path, rel);
    char *txt = kvf_test_slurp(path, NULL);
    cr_assert(txt, "cannot read %s", path);
    kvf_err_t err;
    cr_assert_eq(kvf_modelcfg_parse(txt, path, cfg, &err), 0, "%s", err.msg);
    free(txt);
}

#define NEAR(a, b) cr_assert(fabs((double)(a) - (double)(b)) <= 1e-9 * fabs((double)(b)) + 1e-15, \
                             "%s = %.12g, expected %.12g", #a, (double)(a), (double)(b))

Test(roofline, counts_of_a_small_config) {
    kvf_modelcfg_t cfg;
    s_small(&cfg);
    cr_assert_eq(kvf_roofline_layer_params(&cfg), 73728u);
    cr_assert_eq(kvf_roofline_lm_head_params(&cfg), 6400u);
    NEAR(kvf_roofline_kv_bytes_per_token(&cfg, 4), 512);  // 2 x 2 layers x 2 heads x 16 x 4 B
    NEAR(kvf_roofline_kv_bytes_per_token(&cfg, 2), 256);
    cr_assert_eq(kvf_roofline_qk_pairs(0, 10), 55);
    cr_assert_eq(kvf_roofline_qk_pairs(20, 1), 21);
    cr_assert_eq(kvf_roofline_qk_pairs(7, 3), 3 * 7 + 6);
    cr_assert_eq(kvf_roofline_qk_pairs(-1, 3), 0);
    // tied: the whole table is the lm_head, all of it streamed
    NEAR(kvf_roofline_streamed_weights(&cfg, 1e6, 4), 1e6);
    cfg.tie_word_embeddings = 0;  // untied: the embedding is only gathered
    NEAR(kvf_roofline_streamed_weights(&cfg, 1e6, 4), 1e6 - 6400 * 4);
    NEAR(kvf_roofline_streamed_weights(&cfg, 100, 4), 0);
}

Test(roofline, step_by_hand) {
    kvf_modelcfg_t cfg;
    s_small(&cfg);
    // a 10-token prefill chunk from 0 and a decode after 20 cached tokens
    kvf_roofline_step_t st = {.n_tokens = 11, .n_logit_rows = 2, .kv_tokens_read = 10 + 21, .kv_tokens_written = 11,
                              .qk_pairs = 55 + 21};
    kvf_roofline_hw_t hw = {.peak_flops = 1e9, .peak_bw = 1e9, .weight_bytes = 1e6, .kv_elem_bytes = 4};
    kvf_roofline_cost_t c;
    kvf_err_t err;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), 0, "%s", err.msg);
    // 2 x 73728 x 11 + 4 x 2 x 4 x 16 x 76 + 2 x 6400 x 2
    NEAR(c.flops, 1622016.0 + 38912.0 + 25600.0);
    NEAR(c.bytes, 1e6 + 512.0 * 42);
    NEAR(c.seconds, 1686528.0 / 1e9);  // compute-bound
    hw.peak_bw = 1e8;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), 0);
    NEAR(c.seconds, 1021504.0 / 1e8);  // memory-bound
    // an empty step costs nothing
    kvf_roofline_step_t none = {0};
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &none, &c, &err), 0);
    NEAR(c.seconds, 0);
}

Test(roofline, step_rejects_bad_input) {
    kvf_modelcfg_t cfg;
    s_small(&cfg);
    kvf_roofline_step_t st = {.n_tokens = 1, .n_logit_rows = 1, .kv_tokens_read = 1, .kv_tokens_written = 1,
                              .qk_pairs = 1};
    kvf_roofline_hw_t hw = {.peak_flops = 1e9, .peak_bw = 1e9, .weight_bytes = 1, .kv_elem_bytes = 2};
    kvf_roofline_cost_t c;
    kvf_err_t err;
    hw.peak_flops = 0;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert(strstr(err.msg, "peak FLOP/s"), "%s", err.msg);
    hw.peak_flops = 1e9;
    hw.peak_bw = NAN;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), -1);
    hw.peak_bw = 1e9;
    st.n_logit_rows = 2;  // more logit rows than tokens
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), -1);
    cr_assert(strstr(err.msg, "inconsistent"), "%s", err.msg);
    st.n_logit_rows = -1;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), -1);
    st.n_logit_rows = 1;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, NULL, &c, &err), -1);
    cfg.n_layers = 0;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, &err), -1);
}

Test(roofline, batch_from_the_pool) {
    kvf_err_t err;
    // I + O - 1 = 6 KV tokens = 2 blocks of 4: 10 blocks hold 5 sequences
    cr_assert_eq(kvf_roofline_batch(10, 4, 8, 100, 4, 3, &err), 5);
    cr_assert_eq(kvf_roofline_batch(10, 4, 2, 100, 4, 3, &err), 2);  // max_batch_size caps
    cr_assert_eq(kvf_roofline_batch(10, 4, 8, 3, 4, 3, &err), 3);    // so does N
    cr_assert_eq(kvf_roofline_batch(10, 4, 16, 100, 4, 1, &err), 10); // 4 KV tokens = 1 block
    cr_assert_eq(kvf_roofline_batch(1, 4, 8, 100, 4, 3, &err), -1);
    cr_assert(strstr(err.msg, "cannot hold one sequence"), "%s", err.msg);
    cr_assert_eq(kvf_roofline_batch(10, 0, 8, 100, 4, 3, &err), -1);
}

Test(roofline, floor_by_hand) {
    kvf_modelcfg_t cfg;
    s_small(&cfg);
    kvf_roofline_hw_t hw = {.peak_flops = 1e9, .peak_bw = 1e9, .weight_bytes = 1e6, .kv_elem_bytes = 4};
    kvf_roofline_workload_t w = {.n_prompts = 3, .input_len = 4, .output_len = 3, .batch = 2};
    kvf_roofline_floor_t f;
    kvf_err_t err;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), 0, "%s", err.msg);
    // prefill per prompt: 2 x 73728 x 4 + 512 x 10 pairs + 2 x 6400 (one logit row)
    NEAR(f.prefill_seconds, 3 * 607744.0 / 1e9);
    // decode: waves of 2 and 1 sequences, steps with contexts 5 and 6 (all memory-bound):
    // bytes = 1e6 + b x 512 x (ctx + 1)
    double wave2 = (1e6 + 2 * 3072.0) + (1e6 + 2 * 3584.0), wave1 = (1e6 + 3072.0) + (1e6 + 3584.0);
    NEAR(f.decode_seconds, (wave2 + wave1) / 1e9);
    NEAR(f.seconds, f.prefill_seconds + f.decode_seconds);
    cr_assert_eq(f.waves, 2);
    cr_assert_eq(f.decode_steps, 4);
    // compute-bound decode when bandwidth is plentiful: FLOPs = b (160256 + 512 ctx)
    hw.peak_bw = 1e15;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), 0);
    NEAR(f.decode_seconds, (2 * (162816.0 + 163328.0) + (162816.0 + 163328.0)) / 1e9);
    // one output token: no decode step at all
    w.output_len = 1;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), 0);
    NEAR(f.decode_seconds, 0);
    cr_assert_eq(f.decode_steps, 0);
    w.batch = 0;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
}

Test(roofline, floor_grows_with_the_model) {
    kvf_modelcfg_t a, b;
    s_small(&a);
    s_small(&b);
    b.n_layers = 4;
    kvf_roofline_hw_t hw = {.peak_flops = 1e9, .peak_bw = 1e9, .weight_bytes = 1e6, .kv_elem_bytes = 4};
    kvf_roofline_workload_t w = {.n_prompts = 16, .input_len = 32, .output_len = 8, .batch = 4};
    kvf_roofline_floor_t fa, fb;
    cr_assert_eq(kvf_roofline_floor(&a, &hw, &w, &fa, NULL), 0);
    cr_assert_eq(kvf_roofline_floor(&b, &hw, &w, &fb, NULL), 0);
    cr_assert_gt(fb.prefill_seconds, 1.9 * fa.prefill_seconds);
    cr_assert_gt(fb.decode_seconds, fa.decode_seconds);  // KV read doubles; weights fixed here
    // a bigger batch needs fewer waves and never more time
    w.batch = 16;
    kvf_roofline_floor_t fc;
    cr_assert_eq(kvf_roofline_floor(&a, &hw, &w, &fc, NULL), 0);
    cr_assert_eq(fc.waves, 1);
    cr_assert_lt(fc.seconds, fa.seconds);
}

// ---------------------------------------------------------------- Llama-3-8B sanity

Test(roofline, llama3_8b_on_h200) {
    kvf_modelcfg_t cfg;
    s_load("configs/llama3-8b.json", &cfg);
    double held = 2.0 * (double)kvf_modelcfg_n_params(&cfg);  // bf16
    cr_assert(held > 15.5e9 && held < 16.5e9, "weights %.3g B", held);
    double streamed = kvf_roofline_streamed_weights(&cfg, held, 2);
    cr_assert(streamed > 14.5e9 && streamed < 15.5e9, "streamed %.3g B", streamed);  // less the 1 GB embedding
    NEAR(kvf_roofline_kv_bytes_per_token(&cfg, 2), 131072);  // 128 KiB per token
    kvf_roofline_hw_t hw = {.peak_flops = 789e12, .peak_bw = 4.2e12, .weight_bytes = streamed, .kv_elem_bytes = 2};

    // A decode step of 128 sequences at 576 tokens is memory-bound, a few ms.
    kvf_roofline_step_t st = {.n_tokens = 128, .n_logit_rows = 128, .kv_tokens_read = 128 * 576,
                              .kv_tokens_written = 128, .qk_pairs = 128 * 576};
    kvf_roofline_cost_t c;
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &st, &c, NULL), 0);
    cr_assert_gt(c.bytes / hw.peak_bw, c.flops / hw.peak_flops);
    cr_assert(c.seconds > 4e-3 && c.seconds < 8e-3, "decode step %.4g s", c.seconds);
    // An 8192-token prefill step is compute-bound: ~0.12 PFLOP, ~0.15 s.
    kvf_roofline_step_t pf = {.n_tokens = 8192, .n_logit_rows = 16, .kv_tokens_read = 8192,
                              .kv_tokens_written = 8192, .qk_pairs = 16 * kvf_roofline_qk_pairs(0, 512)};
    cr_assert_eq(kvf_roofline_step(&cfg, &hw, &pf, &c, NULL), 0);
    cr_assert_gt(c.flops / hw.peak_flops, c.bytes / hw.peak_bw);

    // 1024 prompts x 512 + 128 with an H200's pool (~98 GB of KV = ~11.7k blocks
    // of 64; B capped by max_batch_size 128): the "about 12 s".
    kvf_err_t err;
    int64_t b = kvf_roofline_batch(11700, 64, 128, 1024, 512, 128, &err);
    cr_assert_eq(b, 128);
    kvf_roofline_workload_t w = {.n_prompts = 1024, .input_len = 512, .output_len = 128, .batch = b};
    kvf_roofline_floor_t f;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), 0, "%s", err.msg);
    cr_assert(f.seconds > 8 && f.seconds < 16, "floor %.3f s (prefill %.3f + decode %.3f)", f.seconds,
              f.prefill_seconds, f.decode_seconds);
    cr_assert(f.prefill_seconds > 8 && f.prefill_seconds < 11, "prefill %.3f s", f.prefill_seconds);
    cr_assert_eq(f.waves, 8);
    cr_assert_eq(f.decode_steps, 8 * 127);
    // With the whole batch at once (B = 1024) the decode half shrinks to ~2.8 s: ~12.2 s.
    w.batch = 1024;
    cr_assert_eq(kvf_roofline_floor(&cfg, &hw, &w, &f, &err), 0);
    cr_assert(f.seconds > 11.5 && f.seconds < 13, "floor %.3f s", f.seconds);
    cr_assert_eq(f.waves, 1);
}

// ---------------------------------------------------------------- the engine's two additions for kvf-bench

static void s_count_tokens(void *ud, uint64_t rid, int32_t token, int finished, kvf_finish_reason reason) {
    (void)rid, (void)finished, (void)reason;
    if (token >= 0) (*(int *)ud)++;
}

Test(engine_for_bench, dummy_weights_and_step_composition) {
    char config[2048];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    kvf_engine_opts_t o = kvf_engine_opts_default();
    o.dummy_weights = 1;
    o.n_threads = 1;
    o.block_size = 4;
    o.cache_max_entry_count = 32;
    o.session_len = 16;
    kvf_err_t err;
    kvf_engine_t *e = kvf_engine_new(config, &o, &err);  // a config file, not a directory
    cr_assert(e, "%s", err.msg);
    cr_assert_eq(kvf_engine_cfg(e)->n_layers, 5);
    cr_assert_null(kvf_engine_tokenizer(e));
    kvf_step_info_t si;
    kvf_engine_last_step(e, &si);
    cr_assert_eq(si.n_seqs, 0);

    kvf_sampling_t sp = kvf_sampling_default();
    sp.ignore_eos = 1;
    sp.max_new_tokens = 3;
    int32_t a[5] = {1, 2, 3, 4, 5}, b[3] = {7, 8, 9};
    cr_assert_eq(kvf_engine_add(e, 1, a, 5, NULL, 0, &sp, &err), 0, "%s", err.msg);
    cr_assert_eq(kvf_engine_add(e, 2, b, 3, NULL, 0, &sp, &err), 0, "%s", err.msg);
    int n_tok = 0;
    // step 1: both prompts prefilled whole
    cr_assert_eq(kvf_engine_step(e, s_count_tokens, &n_tok, &err), 2, "%s", err.msg);
    kvf_engine_last_step(e, &si);
    cr_assert_eq(si.n_seqs, 2);
    cr_assert_eq(si.n_tokens, 8);
    cr_assert_eq(si.n_decode, 0);
    cr_assert_eq(si.n_prefill_tokens, 8);
    cr_assert_eq(si.n_sampled, 2);
    cr_assert_eq(si.kv_tokens_read, 8);
    cr_assert_eq(si.attn_qk_pairs, 15 + 6);
    cr_assert_eq(si.blocks_used, 2 + 1);  // 5 tokens in blocks of 4, and 3
    // step 2: two decodes after 5 and 3 cached tokens
    cr_assert_eq(kvf_engine_step(e, s_count_tokens, &n_tok, &err), 2);
    kvf_engine_last_step(e, &si);
    cr_assert_eq(si.n_decode, 2);
    cr_assert_eq(si.n_prefill_tokens, 0);
    cr_assert_eq(si.kv_tokens_read, 6 + 4);
    cr_assert_eq(si.attn_qk_pairs, 6 + 4);
    while (kvf_engine_has_work(e)) cr_assert_geq(kvf_engine_step(e, s_count_tokens, &n_tok, &err), 0);
    cr_assert_eq(n_tok, 6);
    kvf_engine_destroy(&e);
    cr_assert_null(e);

    // a directory holding config.json works too; a missing file is an error, not a crash
    char dir[2048];
    KVF_FIXTURE_PATH(dir, "stories260K");
    e = kvf_engine_new(dir, &o, &err);
    cr_assert(e, "%s", err.msg);
    kvf_engine_destroy(&e);
    cr_assert_null(kvf_engine_new("/nonexistent/llama.json", &o, &err));
    cr_assert(strstr(err.msg, "/nonexistent"), "%s", err.msg);
}

// ---------------------------------------------------------------- kvf-bench, the binary

static const char *s_tiny_args =
    "--weights dummy --num-prompts 8 --input-len 16 --output-len 8 --threads 2 --block-size 16 "
    "--cache-max-entry-count 64 --max-batch-size 8 --seed 7 --json";

// The report of kvf-bench on config with the tiny workload and `extra` flags.
static json_t *s_bench_json_with(const char *config, const char *extra) {
    char args[8192];
    const int k = snprintf(args, sizeof args, "--config %s %s %s", config, s_tiny_args, extra);
    cr_assert(k > 0 && (size_t)k < sizeof args, "kvf-bench arguments too long");
    return s_bench_report(args);
}

static json_t *s_bench_json(const char *config) { return s_bench_json_with(config, ""); }

Test(kvf_bench, cpu_smoke_report_is_complete_and_sane, .timeout = 120) {
    char config[4096];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    json_t *j = s_bench_json(config);

    cr_assert_str_eq(json_string_value(json_object_get(j, "backend")), "cpu");
    cr_assert_eq(s_num(j, "model.n_layers"), 5);
    cr_assert_eq(s_num(j, "workload.num_prompts"), 8);
    double el = s_num(j, "elapsed_s");
    cr_assert(el > 0 && el < 60, "elapsed %g", el);
    cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
    cr_assert_eq(s_num(j, "prompt_tokens"), 8 * 16);
    cr_assert_geq(s_num(j, "tokens_computed"), 8 * (16 + 7));  // the last sampled token is never run
    cr_assert_gt(s_num(j, "steps"), 0);
    double tps = s_num(j, "total_tokens_per_s"), otps = s_num(j, "output_tokens_per_s");
    cr_assert(fabs(tps - 8 * 24 / el) <= 1e-6 * tps, "total tok/s %g vs %g", tps, 8 * 24 / el);
    cr_assert(fabs(otps - 8 * 8 / el) <= 1e-6 * otps, "output tok/s %g", otps);
    cr_assert_gt(s_num(j, "prefill_tokens_per_s"), 0);
    double d50 = s_num(j, "decode_step_ms.p50"), d99 = s_num(j, "decode_step_ms.p99");
    cr_assert(d50 > 0 && d99 >= d50, "decode p50 %g p99 %g", d50, d99);
    cr_assert_gt(s_num(j, "decode_step_ms.steps"), 0);
    double t50 = s_num(j, "ttft_s.p50"), t99 = s_num(j, "ttft_s.p99");
    cr_assert(t50 > 0 && t99 >= t50 && t99 <= el, "ttft p50 %g p99 %g", t50, t99);
    cr_assert_gt(s_num(j, "memory.peak_bytes"), 1 << 20);
    cr_assert_gt(s_num(j, "memory.weights_bytes"), 0);
    cr_assert_eq(s_num(j, "kv.blocks"), 64);
    cr_assert_eq(s_num(j, "kv.block_size"), 16);
    double peak = s_num(j, "kv.peak_blocks_used");
    cr_assert(peak >= 2 && peak <= 64, "peak blocks %g", peak);  // 8 sequences of 23 KV tokens: 2 blocks each
    cr_assert_eq(s_num(j, "preemptions"), 0);
    double step_s = s_num(j, "roofline.step.seconds"), floor_s = s_num(j, "roofline.floor.seconds");
    cr_assert_gt(step_s, 0);
    cr_assert_gt(floor_s, 0);
    // This schedule (one prefill step, then decodes) cannot beat the floor; one
    // that hides decodes inside compute-bound prefill steps could, slightly.
    cr_assert_leq(floor_s, step_s * 1.000001, "the floor %g must not exceed the steps run %g", floor_s, step_s);
    double a1 = s_num(j, "roofline.step.achieved"), a2 = s_num(j, "roofline.floor.achieved");
    cr_assert(a1 > 0 && a1 <= 1.05, "step achieved %g", a1);
    cr_assert(a2 > 0 && a2 <= 1.05, "floor achieved %g", a2);
    cr_assert_eq(s_num(j, "roofline.floor.batch"), 8);
    cr_assert_eq(s_num(j, "roofline.floor.waves"), 1);
    cr_assert_eq(s_num(j, "roofline.floor.decode_steps"), 7);
    cr_assert_eq(s_num(j, "roofline.peak_flops"), 789e12);
    cr_assert_eq(s_num(j, "roofline.kv_elem_bytes"), 4);
    // the device's clock and power are sampled for the cuda backend only
    cr_assert(json_is_null(json_object_get(j, "device_power")), "device_power on the cpu backend");
    json_decref(j);
}

// bench/devmon.h's attribution of clock/power samples to the steps that ran at their times.
Test(devmon, samples_go_to_the_step_that_holds_them) {
    const kvf_devmon_span_t spans[] = {{1.0, 2.0, 0}, {2.0, 2.5, 1}, {3.0, 4.0, 1}, {4.0, 4.1, 0}};
    const kvf_devmon_sample_t samples[] = {
        {0.5, 999, 1000},    // before the first step: none
        {1.0, 1500, 600000}, // at a step's start: that step
        {1.9, 1400, 700000},
        {2.0, 1800, 300000}, // at the boundary: the step that starts there
        {2.7, 999, 1000},    // between steps: none
        {3.5, 1600, 500000},
        {4.05, 1300, 680000},
        {4.1, 999, 1000},    // at the last step's end: none
    };
    kvf_devmon_phase_t ph[3];
    kvf_devmon_attribute(samples, sizeof samples / sizeof samples[0], spans, 4, ph, 3);
    cr_assert_eq(ph[0].samples, 3);
    cr_assert_float_eq(ph[0].sm_mhz, (1500 + 1400 + 1300) / 3.0, 1e-9);
    cr_assert_float_eq(ph[0].power_w, (600 + 700 + 680) / 3.0, 1e-9);
    cr_assert_eq(ph[1].samples, 2);
    cr_assert_float_eq(ph[1].sm_mhz, 1700, 1e-9);
    cr_assert_float_eq(ph[1].power_w, 400, 1e-9);
    cr_assert_eq(ph[2].samples, 0);
    cr_assert_float_eq(ph[2].sm_mhz, 0, 1e-12);
    kvf_devmon_attribute(samples, 8, spans, 0, ph, 2);  // no steps: nothing attributed
    cr_assert_eq(ph[0].samples + ph[1].samples, 0);
}

// Without NVML (this machine, CI) or with bad arguments the monitor says so and nothing starts.
Test(devmon, refuses_bad_arguments_and_a_missing_driver) {
    kvf_err_t err = {0};
    cr_assert_null(kvf_devmon_new(NULL, 50, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_null(kvf_devmon_new("0000:00:00.0", -1, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_null(kvf_devmon_new("0000:00:00.0", 10001, &err));
    cr_assert_eq(err.code, KVF_E_INVAL);
    kvf_devmon_t *m = kvf_devmon_new("0000:ff:1f.7", 50, &err);  // no GPU there on any machine
    cr_assert_null(m);
    cr_assert_eq(err.code, KVF_E_UNSUPPORTED, "%s", err.msg);
    fprintf(stderr, "devmon without a device: %s\n", err.msg);
    uint64_t mj = 7;
    cr_assert_eq(kvf_devmon_energy_mj(NULL, &mj, &err), -1);  // no monitor: no energy reading
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(mj, 7);
    uint32_t mhz = 9;
    cr_assert_eq(kvf_devmon_sm_mhz(NULL, &mhz, &err), -1);
    cr_assert_eq(err.code, KVF_E_INVAL);
    cr_assert_eq(mhz, 9);
    kvf_devmon_destroy(&m);  // NULL is fine
}

Test(kvf_bench, roofline_follows_the_config, .timeout = 120) {
    char config[4096];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    json_error_t je;
    json_t *c = json_load_file(config, 0, &je);
    cr_assert(c, "%s", je.text);
    json_object_set_new(c, "num_hidden_layers", json_integer(10));
    char tmp[] = "/tmp/kvf_bench_cfgXXXXXX";
    int fd = mkstemp(tmp);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(json_dump_file(c, tmp, 0), 0);
    json_decref(c);

    json_t *a = s_bench_json(config), *b = s_bench_json(tmp);
    unlink(tmp);
    cr_assert_eq(s_num(b, "model.n_layers"), 10);
    cr_assert_gt(s_num(b, "roofline.floor.seconds"), s_num(a, "roofline.floor.seconds"));
    cr_assert_gt(s_num(b, "roofline.floor.prefill_seconds"), 1.5 * s_num(a, "roofline.floor.prefill_seconds"));
    cr_assert_gt(s_num(b, "roofline.step.seconds"), s_num(a, "roofline.step.seconds"));
    cr_assert_gt(s_num(b, "memory.weights_bytes"), s_num(a, "memory.weights_bytes"));
    // same seed, same shape: the same steps and tokens
    cr_assert_eq(s_num(b, "steps"), s_num(a, "steps"));
    cr_assert_eq(s_num(b, "output_tokens"), s_num(a, "output_tokens"));
    json_decref(a);
    json_decref(b);
}

Test(kvf_bench, real_weights_and_text_report, .timeout = 120) {
    char dir[4096], args[8192];
    KVF_FIXTURE_PATH(dir, "stories260K");
    snprintf(args, sizeof args,
             "--weights %s --num-prompts 4 --input-len 8 --output-len 4 --threads 1 --block-size 16 "
             "--cache-max-entry-count 16",
             dir);
    int rc;
    char *out = s_run_bench(args, &rc);
    cr_assert_eq(rc, 0, "exit %d:\n%s", rc, out);
    cr_assert(strstr(out, "memory plan"), "%s", out);
    cr_assert(strstr(out, "real weights"), "%s", out);
    cr_assert(strstr(out, "step roofline"), "%s", out);
    cr_assert(strstr(out, "workload floor"), "%s", out);
    cr_assert(strstr(out, "4 prompts x 8 input + 4 output"), "%s", out);
    // no device on the cpu backend: the power and energy lines say why rather than printing zeros
    cr_assert(strstr(out, "device power     not sampled (the cpu backend)"), "%s", out);
    cr_assert(strstr(out, "energy           not measured (the cpu backend)"), "%s", out);
    free(out);
}

// kvf-bench on one 4-token prompt with `flags` must exit want_rc with want in its message.
static void s_expect_refused(const char *config, const char *flags, int want_rc, const char *want) {
    char args[8192];
    snprintf(args, sizeof args, "--config %s --num-prompts 1 --input-len 4 --output-len 4 %s", config, flags);
    int rc;
    char *e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, want_rc, "%s: exit %d", flags, rc);
    cr_assert(strstr(e, want), "%s: %s", flags, e);
    free(e);
}

Test(kvf_bench, bad_input_fails_with_a_message, .timeout = 60) {
    char config[2048], dir[2048], args[8192];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    KVF_FIXTURE_PATH(dir, "tiny-llama");
    int rc;
    char *e = s_run_bench_err("--weights dummy --num-prompts 1 --input-len 4 --output-len 4", &rc);
    cr_assert_eq(rc, 2);
    cr_assert(strstr(e, "--config is required"), "%s", e);
    free(e);
    snprintf(args, sizeof args, "--config %s --num-prompts 1 --input-len 4", config);
    e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, 2);
    cr_assert(strstr(e, "required"), "%s", e);
    free(e);
    snprintf(args, sizeof args, "--config %s --num-prompts 0 --input-len 4 --output-len 4", config);
    e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, 2);
    cr_assert(strstr(e, "--num-prompts"), "%s", e);
    free(e);
    snprintf(args, sizeof args, "--config %s --num-prompts 1 --input-len 4 --output-len 4 --peak-flops x", config);
    e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, 2);
    cr_assert(strstr(e, "--peak-flops"), "%s", e);
    free(e);
    e = s_run_bench_err("--config /nonexistent/config.json --num-prompts 1 --input-len 4 --output-len 4", &rc);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(e, "/nonexistent"), "%s", e);
    free(e);
    // longer than the model's max_position (512)
    snprintf(args, sizeof args, "--config %s --num-prompts 1 --input-len 600 --output-len 4", config);
    e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(e, "session"), "%s", e);
    free(e);
    // --config naming another model than --weights DIR
    snprintf(args, sizeof args, "--config %s --weights %s --num-prompts 1 --input-len 4 --output-len 4", config, dir);
    e = s_run_bench_err(args, &rc);
    cr_assert_eq(rc, 2);
    cr_assert(strstr(e, "model's own config"), "%s", e);
    free(e);
    s_expect_refused(config, "--kv-cache-dtype fp16", 2, "--kv-cache-dtype 'fp16': expected auto or fp8");
    s_expect_refused(config, "--quantization int8", 2, "--quantization 'int8': expected none or fp8");
}

// --kv-cache-dtype fp8 on the cpu: the same workload runs and the report says which cache it had.
Test(kvf_bench, fp8_kv_cache_is_reported, .timeout = 120) {
    char config[4096];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    json_t *j = s_bench_json_with(config, "--kv-cache-dtype fp8");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "kv_cache_dtype")), "fp8");
    cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
    cr_assert_eq(s_num(j, "roofline.kv_elem_bytes"), 4);  // the cpu's cache stays f32 (rounded values)
    json_decref(j);
    j = s_bench_json(config);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "kv_cache_dtype")), "auto");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "quantization")), "none");
    cr_assert_eq(s_num(j, "roofline.peak_flops"), 789e12);
    json_decref(j);
}

// --quantization fp8 on the cpu (its f32 weights and activations rounded to the E4M3 rows): the workload
// runs, the report says so, and the FLOP ceiling becomes the FP8 one unless --peak-flops is given.
Test(kvf_bench, fp8_linear_layers_are_reported, .timeout = 120) {
    char config[4096];
    KVF_FIXTURE_PATH(config, "tiny-llama/config.json");
    json_t *j = s_bench_json_with(config, "--quantization fp8");
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "quantization")), "fp8");
    cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
    cr_assert_eq(s_num(j, "roofline.peak_flops"), 1408e12);
    json_decref(j);
    j = s_bench_json_with(config, "--quantization fp8 --peak-flops 1e15");
    cr_assert_eq(s_num(j, "roofline.peak_flops"), 1e15);
    json_decref(j);
}

// Sampled requests (--temperature/--top-p/--top-k/--min-p/--repetition-penalty) run to the same token counts
// and are reported; out-of-range sampling flags are refused with exit 2.
Test(kvf_bench, sampled_run_reports_its_sampling, .timeout = 120) {
    char config[4096], args[8192];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    json_t *j = s_bench_json_with(config, "--temperature 0.8 --top-p 0.9 --top-k 40 --min-p 0.02 "
                                          "--repetition-penalty 1.1");
    cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
    cr_assert(fabs(s_num(j, "workload.temperature") - 0.8) < 1e-6);
    cr_assert(fabs(s_num(j, "workload.top_p") - 0.9) < 1e-6);
    cr_assert_eq(s_num(j, "workload.top_k"), 40);
    cr_assert(fabs(s_num(j, "workload.min_p") - 0.02) < 1e-6);
    cr_assert(fabs(s_num(j, "workload.repetition_penalty") - 1.1) < 1e-6);
    json_decref(j);
    const char *bad[] = {"--top-p 0", "--top-p 1.5", "--temperature -1", "--top-k -3", "--min-p 1",
                         "--repetition-penalty 0"};
    for (int i = 0; i < 6; i++) {
        snprintf(args, sizeof args, "--config %s %s %s", config, s_tiny_args, bad[i]);
        int rc;
        char *e = s_run_bench_err(args, &rc);
        cr_expect_eq(rc, 2, "%s: exit %d (%s)", bad[i], rc, e);
        free(e);
    }
}

// --sched prefill-first runs the same workload to the same tokens in full
// prefill steps and then whole-batch decodes; --trace writes a CSV row a step
// that adds up to the report. Bad values are refused with a message.
Test(kvf_bench, sched_policy_and_trace, .timeout = 120) {
    char config[4096], extra[4096];
    KVF_FIXTURE_PATH(config, "stories260K/config.json");
    char tmp[] = "/tmp/kvf_bench_traceXXXXXX";
    int fd = mkstemp(tmp);
    cr_assert_geq(fd, 0);
    close(fd);
    for (int pf = 0; pf <= 1; pf++) {
        // 8 prompts of 16 tokens, 32 tokens a step: mixed decodes alongside the prompts, prefill-first does not
        snprintf(extra, sizeof extra, "--max-prefill-token-num 32 --sched %s --trace %s",
                 pf ? "prefill-first" : "mixed", tmp);
        json_t *j = s_bench_json_with(config, extra);
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "sched")),
                         pf ? "prefill-first" : "mixed");
        cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
        FILE *f = fopen(tmp, "r");
        cr_assert_not_null(f);
        char line[512];
        cr_assert_not_null(fgets(line, sizeof line, f));
        cr_assert_str_eq(line, "step,ms,n_seqs,n_decode,n_prefill_tokens,kv_tokens_read,attn_qk_pairs\n");
        long rows = 0, prefill = 0, decodes = 0, mixed_rows = 0;
        double ms = 0;
        for (;;) {
            long step, seqs, dec, pre, kv, qk;
            double t;
            if (!fgets(line, sizeof line, f)) break;
            cr_assert_eq(sscanf(line, "%ld,%lf,%ld,%ld,%ld,%ld,%ld", &step, &t, &seqs, &dec, &pre, &kv, &qk), 7, "%s",
                         line);
            cr_assert_eq(step, rows + 1, "rows in step order, from 1");
            cr_assert(t > 0 && seqs >= 1 && seqs <= 8 && dec <= seqs && dec + pre <= 32 && kv >= dec + pre && qk > 0,
                      "%s", line);
            if (pf && pre > 0) cr_assert_eq(dec, 0, "prefill-first: a prefill step decodes nothing: %s", line);
            if (dec > 0 && pre > 0) mixed_rows++;
            rows++;
            prefill += pre;
            decodes += dec;
            ms += t;
        }
        fclose(f);
        cr_assert_eq(rows, s_num(j, "steps"));
        cr_assert_eq(prefill, 8 * 16);
        cr_assert_eq(decodes, 8 * 7);
        cr_assert_leq(ms, 1e3 * s_num(j, "elapsed_s") * 1.0001);
        if (pf) {
            cr_assert_eq(rows, 4 + 7, "4 full prefill steps, then 7 decodes of the whole batch");
            cr_assert_eq(s_num(j, "decode_step_ms.steps"), 7);
        } else {
            cr_assert_gt(mixed_rows, 0, "mixed: decodes ride in prefill steps");
        }
        json_decref(j);
    }
    unlink(tmp);
    // auto (the default): prefill-first when the 8 prompts fit in the batch and the pool at once, mixed when
    // the batch (4) or the pool (8 blocks of 16 tokens: 4 sequences of 24 tokens) holds fewer
    const char *autos[][2] = {
        {"", "prefill-first"}, {"--sched auto --max-batch-size 4", "mixed"}, {"--cache-max-entry-count 8", "mixed"}};
    for (int i = 0; i < 3; i++) {
        json_t *j = s_bench_json_with(config, autos[i][0]);
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "engine"), "sched")), autos[i][1],
                         "'%s'", autos[i][0]);
        cr_assert_eq(s_num(j, "output_tokens"), 8 * 8);
        json_decref(j);
    }
    s_expect_refused(config, "--sched fifo", 2, "--sched: 'fifo' is not auto, mixed or prefill-first");
    s_expect_refused(config, "--trace /nonexistent/t.csv", 1, "--trace /nonexistent/t.csv");
}

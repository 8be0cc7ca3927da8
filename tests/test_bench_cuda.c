// tests/test_bench_cuda.c — kvf-bench on the cuda backend (GPU only: LABELS gpu). A short run of
// the Llama-3-8B config with dummy weights, whose report must carry what only a device run has:
// the SM clock and board power sampled by NVML, and the energy counter read around the run, with
// tokens per joule that agree with the run's own token counts and time.
#include <math.h>

#include "bench_run.h"
#include "test_util.h"

Test(kvf_bench_cuda, report_has_clock_power_and_energy, .timeout = 300) {
    char config[4096];
    KVF_FIXTURE_PATH(config, "configs/llama3-8b.json");
    char args[8192];
    snprintf(args, sizeof args,
             "--config %s --weights dummy --num-prompts 64 --input-len 256 --output-len 64 --backend cuda --json",
             config);
    json_t *j = s_bench_report(args);
    cr_assert_str_eq(json_string_value(json_object_get(j, "backend")), "cuda");
    const double el = s_num(j, "elapsed_s");
    cr_assert_eq(s_num(j, "output_tokens"), 64 * 64);

    json_t *dev = json_object_get(j, "device_power");
    cr_assert(json_is_object(dev), "device_power is not an object: a GPU machine's driver has NVML");
    cr_assert_str_eq(json_string_value(json_object_get(dev, "source")), "nvml");
    cr_assert_gt(s_num(j, "device_power.power_limit_w"), 0);
    cr_assert_gt(s_num(j, "device_power.samples"), 0, "no samples in a %.2f s run", el);
    const char *phases[2] = {"prefill_steps", "decode_steps"};
    for (int k = 0; k < 2; k++) {  // a phase too short for a 100 ms sample may have none
        json_t *ph = json_object_get(dev, phases[k]);
        if (json_is_null(ph)) continue;
        double mhz = json_number_value(json_object_get(ph, "sm_clock_mhz"));
        double w = json_number_value(json_object_get(ph, "power_w"));
        cr_assert(mhz > 100 && mhz < 5000, "%s: SM clock %g MHz", phases[k], mhz);
        cr_assert(w > 10 && w < 5000, "%s: power %g W", phases[k], w);
    }

    const double joules = s_num(j, "device_power.energy.joules");
    const double mean_w = s_num(j, "device_power.energy.mean_power_w");
    cr_assert(joules > 0, "no energy over a %.2f s run", el);
    cr_assert(fabs(mean_w - joules / el) <= 1e-6 * mean_w, "mean power %g W, energy / elapsed %g", mean_w,
              joules / el);
    cr_assert(mean_w > 10 && mean_w < 5000, "mean power %g W", mean_w);  // a busy board, under any real limit
    const double tpj = s_num(j, "device_power.energy.total_tokens_per_j");
    const double opj = s_num(j, "device_power.energy.output_tokens_per_j");
    cr_assert(fabs(tpj - 64.0 * (256 + 64) / joules) <= 1e-6 * tpj, "total tok/J %g", tpj);
    cr_assert(fabs(opj - 64.0 * 64 / joules) <= 1e-6 * opj, "output tok/J %g", opj);
    json_decref(j);
}

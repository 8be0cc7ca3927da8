# tests/bench.cmake — the roofline arithmetic, the engine's step composition, CPU smoke
# runs of kvf-bench, and (GPU only) a cuda run's clock, power and energy.
if(TARGET kvf-bench)
  kvf_add_test(test_bench SOURCES test_bench.c LIBS kvf_roofline kvf_devmon kvf_engine PkgConfig::JANSSON TIMEOUT 180)
  add_dependencies(test_bench kvf-bench)
endif()
# kvf-bench on the cuda backend: the clock, power and energy in its report (GPU only).
if(TARGET kvf-bench AND KVF_HAVE_CUDA AND TARGET kvf_cuda)
  kvf_add_test(test_bench_cuda SOURCES test_bench_cuda.c LIBS PkgConfig::JANSSON m LABELS gpu TIMEOUT 300)
  add_dependencies(test_bench_cuda kvf-bench)
endif()

# kvf-kbench needs a GPU to measure anything; without one, --help still works and a bad
# flag is a usage error (exit 2).
if(TARGET kvf-kbench)
  add_test(NAME kvf_kbench_help COMMAND kvf-kbench --help)
  set_tests_properties(kvf_kbench_help PROPERTIES PASS_REGULAR_EXPRESSION "usage: kvf-kbench")
  add_test(NAME kvf_kbench_bad_flag
           COMMAND sh -c "\"$<TARGET_FILE:kvf-kbench>\" --no-such-flag; test $? -eq 2")
  add_test(NAME kvf_kbench_bad_only
           COMMAND sh -c "\"$<TARGET_FILE:kvf-kbench>\" --only gemm,nope; test $? -eq 2")
endif()

# kvf-tpbench: a real run of both transports with 2 ranks at one size (~1 s), --help,
# and a bad flag as a usage error (exit 2).
if(TARGET kvf-tpbench)
  add_test(NAME kvf_tpbench_smoke COMMAND kvf-tpbench --ranks 2 --sizes 4096 --iters 200)
  set_tests_properties(kvf_tpbench_smoke PROPERTIES TIMEOUT 60 PASS_REGULAR_EXPRESSION "zmq-ipc +4096 +200 ")
  add_test(NAME kvf_tpbench_help COMMAND kvf-tpbench --help)
  set_tests_properties(kvf_tpbench_help PROPERTIES PASS_REGULAR_EXPRESSION "usage: kvf-tpbench")
  add_test(NAME kvf_tpbench_bad_flag
           COMMAND sh -c "\"$<TARGET_FILE:kvf-tpbench>\" --no-such-flag; test $? -eq 2")
endif()

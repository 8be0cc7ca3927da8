# tests/bench.cmake — the roofline arithmetic, the engine's step composition, and CPU
# smoke runs of kvf-bench.
if(TARGET kvf-bench)
  kvf_add_test(test_bench SOURCES test_bench.c LIBS kvf_roofline kvf_engine PkgConfig::JANSSON TIMEOUT 180)
  add_dependencies(test_bench kvf-bench)
endif()

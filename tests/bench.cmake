# tests/bench.cmake — the roofline arithmetic and a CPU smoke run of kvf-bench.
if(TARGET kvf-bench)
  kvf_add_test(test_bench SOURCES test_bench.c LIBS kvf_roofline kvf_modelio PkgConfig::JANSSON TIMEOUT 180)
  add_dependencies(test_bench kvf-bench)
endif()

# tests/cpu.cmake — the CPU reference engine: ops, forward (golden), sampler.
kvf_add_test(test_forward SOURCES test_forward.c LIBS kvf_cpu PkgConfig::JANSSON TIMEOUT 600)

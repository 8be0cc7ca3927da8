# tests/cpu.cmake — the CPU reference engine: ops, forward (golden), sampler.
kvf_add_test(test_forward SOURCES test_forward.c LIBS kvf_cpu PkgConfig::JANSSON TIMEOUT 600)
kvf_add_test(test_cpu_ops SOURCES test_cpu_ops.c LIBS kvf_cpu)
kvf_add_test(test_sampler SOURCES test_sampler.c LIBS kvf_cpu)

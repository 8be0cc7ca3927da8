# worker/cpu.cmake — kvf_cpu: the CPU reference ops, the cpu backend and the sampler.
add_library(kvf_cpu STATIC
  ${CMAKE_CURRENT_LIST_DIR}/backend.c
  ${CMAKE_CURRENT_LIST_DIR}/cpu_ops.c
  ${CMAKE_CURRENT_LIST_DIR}/cpu_backend.c
  ${CMAKE_CURRENT_LIST_DIR}/sampler.c
)
# No fused multiply-adds: the reference gives the same bits on every x86-64
# (the AVX2 clones of the hot loops only widen the lanes).
# -Wno-psabi: the 32-byte vector helpers are static and always inlined.
target_compile_options(kvf_cpu PRIVATE -ffp-contract=off -Wno-psabi)
target_link_libraries(kvf_cpu PUBLIC kvf_modelio kvf_common Threads::Threads m)

# tests/kernels.cmake — CUDA kernels against the CPU reference ops; the cuda
# backend against the golden fixtures. GPU only (LABELS gpu; CI skips them), but for test_attn_tiles.
if(KVF_HAVE_CUDA)
  # the kernels' host helpers: no GPU needed, so CI runs it
  kvf_add_test(test_attn_tiles SOURCES test_attn_tiles.c LIBS kvf_kernels)
  kvf_add_test(test_kernels SOURCES test_kernels.c LIBS kvf_kernels kvf_cpu kvf_tp kvf_modelio m LABELS gpu TIMEOUT 600)
  kvf_add_test(test_kernels_fp8 SOURCES test_kernels_fp8.c LIBS kvf_kernels kvf_cpu kvf_modelio m
               LABELS gpu TIMEOUT 600)
  kvf_add_test(test_kernels_mlp SOURCES test_kernels_mlp.c LIBS kvf_kernels kvf_modelio m LABELS gpu TIMEOUT 300)
  kvf_add_test(test_kernels_qkv_rope SOURCES test_kernels_qkv_rope.c LIBS kvf_kernels kvf_modelio m LABELS gpu
               TIMEOUT 300)
  kvf_add_test(test_kernels_attn SOURCES test_kernels_attn.c LIBS kvf_kernels kvf_cpu kvf_modelio m LABELS gpu TIMEOUT 600)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_cuda_forward.c AND TARGET kvf_cuda)
    kvf_add_test(test_cuda_forward SOURCES test_cuda_forward.c LIBS kvf_cuda kvf_cpu kvf_modelio m LABELS gpu TIMEOUT 600)
  endif()
endif()

# worker/cuda.cmake — kvf_cuda: the cuda backend (kernels/ + cuBLASLt; cuda_backend.c start-up, cuda_step.c a
# step, cuda_weights.c the weights, cuda_internal.h their shared state), only when KVF_HAVE_CUDA.
if(KVF_HAVE_CUDA)
  add_library(kvf_cuda STATIC
    ${CMAKE_CURRENT_LIST_DIR}/cuda_backend.c
    ${CMAKE_CURRENT_LIST_DIR}/cuda_step.c
    ${CMAKE_CURRENT_LIST_DIR}/cuda_weights.c
  )
  # kvf_tp_nccl: a TP rank all-reduces over the group's NCCL communicator (tp.h)
  target_link_libraries(kvf_cuda PUBLIC kvf_kernels kvf_cpu kvf_tp_nccl kvf_modelio kvf_common m)
endif()

# worker/tp.cmake — kvf_tp: the TP-group communicator (tp.h): the shared-memory
# one for CPU processes, the group's step broadcast (tp_group.h), a rank's share
# of the model (tp_shard.h) and the vocab-parallel logits' exchange (tp_vocab.h),
# linked into kvf_cpu; kvf_tp_nccl: the NCCL one, only when KVF_HAVE_CUDA.
# Included after cpu.cmake (worker/CMakeLists.txt).
add_library(kvf_tp STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tp.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_shm.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_group.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_shard.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_vocab.c
)
target_link_libraries(kvf_tp PUBLIC kvf_common Threads::Threads rt)
if(TARGET kvf_cpu)
  target_link_libraries(kvf_cpu PUBLIC kvf_tp)
endif()

if(KVF_HAVE_CUDA)
  add_library(kvf_tp_nccl STATIC
    ${CMAKE_CURRENT_LIST_DIR}/tp_nccl.c
  )
  target_link_libraries(kvf_tp_nccl PUBLIC kvf_tp kvf_kernels CUDA::cudart ${KVF_NCCL_LIB})
  target_include_directories(kvf_tp_nccl PUBLIC ${KVF_NCCL_INCLUDE})
endif()

# worker/engine.cmake — kvf_engine: block manager, scheduler, engine (memory
# plan, batching, sampling on a small thread pool); the tools kvf-generate and
# kvf-worker.
add_library(kvf_engine STATIC
  ${CMAKE_CURRENT_LIST_DIR}/blockmgr.c
  ${CMAKE_CURRENT_LIST_DIR}/sched.c
  ${CMAKE_CURRENT_LIST_DIR}/engine.c
  ${CMAKE_CURRENT_LIST_DIR}/sample_pool.c
)
target_link_libraries(kvf_engine PUBLIC kvf_cpu kvf_modelio kvf_tokenizer kvf_common)
if(KVF_HAVE_CUDA AND TARGET kvf_cuda)
  target_link_libraries(kvf_engine PUBLIC kvf_cuda)
  target_link_libraries(kvf_engine PUBLIC kvf_tp_nccl)  # the NCCL communicator of a cuda TP group (tp.cmake)
  target_compile_definitions(kvf_engine PRIVATE KVF_HAVE_CUDA=1)
endif()

add_executable(kvf-generate ${CMAKE_CURRENT_LIST_DIR}/kvf_generate.c)
target_link_libraries(kvf-generate PRIVATE kvf_engine PkgConfig::JANSSON)

add_executable(kvf-worker ${CMAKE_CURRENT_LIST_DIR}/worker.c ${CMAKE_CURRENT_LIST_DIR}/worker_main.c)
target_link_libraries(kvf-worker PRIVATE kvf_engine kvf_proto)

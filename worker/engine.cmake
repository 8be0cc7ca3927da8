# worker/engine.cmake — kvf_engine: block manager, scheduler, engine (memory
# plan, batching, sampling); the tools kvf-generate and kvf-worker.
add_library(kvf_engine STATIC
  ${CMAKE_CURRENT_LIST_DIR}/blockmgr.c
  ${CMAKE_CURRENT_LIST_DIR}/sched.c
)
target_link_libraries(kvf_engine PUBLIC kvf_common)

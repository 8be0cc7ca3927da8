# tests/engine.cmake — block manager, scheduler, engine, kvf-generate, kvf-worker.
kvf_add_test(test_blockmgr SOURCES test_blockmgr.c LIBS kvf_engine TIMEOUT 60)
kvf_add_test(test_sched SOURCES test_sched.c LIBS kvf_engine TIMEOUT 60)
kvf_add_test(test_engine SOURCES test_engine.c LIBS kvf_engine PkgConfig::JANSSON TIMEOUT 300)
kvf_add_test(test_generate SOURCES test_generate.c LIBS PkgConfig::JANSSON TIMEOUT 300)
add_dependencies(test_generate kvf-generate)
kvf_add_test(test_worker SOURCES test_worker.c LIBS kvf_proto kvf_common PkgConfig::JANSSON TIMEOUT 300)
add_dependencies(test_worker kvf-worker)
# The engine on the cuda backend (GPU only; skipped where none can be opened).
if(KVF_HAVE_CUDA AND TARGET kvf_cuda)
  kvf_add_test(test_engine_cuda SOURCES test_engine_cuda.c LIBS kvf_engine PkgConfig::JANSSON m LABELS gpu TIMEOUT 300)
endif()
# The sampling thread pool (worker/sample_pool.h).
kvf_add_test(test_sample_pool SOURCES test_sample_pool.c LIBS kvf_engine TIMEOUT 120)
